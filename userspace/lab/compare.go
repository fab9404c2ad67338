package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// Comparisons: the same storm (the same phones, models, seed and upgrade
// set) run once per variant, one after the other, each in a lab built
// afresh, and reported side by side.
//
// A variant is one or more of these changes to the lab's options, joined
// by "+" (e.g. "no-xdp+stagger"); what it does not change comes from the
// flags:
//
//	xdp       phoneboot with its XDP fast path (--voice-vlans as given)
//	no-xdp    phoneboot without it (--no-xdp; untagged)
//	all       power every port at once (--power-policy all)
//	stagger   --power-policy stagger
//	adaptive  --power-policy adaptive
//	baseline  Kea, tftpd-hpa and the CallManagers straight (baseline.go; untagged)
//
// Runs without XDP (no-xdp, baseline) are untagged whatever --voice-vlans
// says: the tagging is phoneboot's XDP and TC programs' work.
var variantChanges = map[string]func(o *Options){
	"xdp":      func(o *Options) { o.NoXDP = false },
	"no-xdp":   func(o *Options) { o.NoXDP = true },
	"all":      func(o *Options) { o.PowerPolicy = "all" },
	"stagger":  func(o *Options) { o.PowerPolicy = "stagger" },
	"adaptive": func(o *Options) { o.PowerPolicy = "adaptive" },
	"baseline": func(o *Options) { o.Baseline = true },
}

// variantNames in the order the help lists them.
var variantNames = []string{"xdp", "no-xdp", "all", "stagger", "adaptive", "baseline"}

// ParseVariants checks a --compare list: comma-separated variants, each
// changes joined by "+", none twice, no two that contradict each other.
func ParseVariants(list string) ([]string, error) {
	var out []string
	for _, v := range strings.Split(list, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			return nil, fmt.Errorf("--compare %q: an empty variant", list)
		}
		if slices.Contains(out, v) {
			return nil, fmt.Errorf("--compare %q: %s twice", list, v)
		}
		var path, policy string
		for _, c := range strings.Split(v, "+") {
			if variantChanges[c] == nil {
				return nil, fmt.Errorf("--compare: unknown variant %q (the variants: %s, joined by + to combine)", c, strings.Join(variantNames, ", "))
			}
			kind := &path
			if slices.Contains(powerPolicies, c) {
				kind = &policy
			}
			if *kind != "" {
				return nil, fmt.Errorf("--compare: %s combines %s and %s", v, *kind, c)
			}
			*kind = c
		}
		out = append(out, v)
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("--compare %q: name at least two variants to compare", list)
	}
	return out, nil
}

// variantOptions is o changed by variant v.
func variantOptions(o Options, v string) Options {
	for _, c := range strings.Split(v, "+") {
		variantChanges[c](&o)
	}
	if o.NoXDP || o.Baseline {
		o.VoiceVLANs = 0
	}
	return o
}

// Compare runs the storm once per variant (see ParseVariants) and writes
// a table per run as it ends, then a summary comparing them (o.Out);
// o.JSONPath gets a JSON array of the runs' reports and o.HTMLPath the
// HTML report with a column per run, rewritten after every run. A run
// whose storm could not run, or that was interrupted, ends the
// comparison; phones failing do not.
func Compare(ctx context.Context, o Options, variants []string) ([]Report, error) {
	var runs []Options
	for _, v := range variants {
		vo := variantOptions(o, v)
		if err := vo.normalize(); err != nil {
			return nil, fmt.Errorf("--compare %s: %w", v, err)
		}
		runs = append(runs, vo)
	}
	out := runs[0].Out // normalized: never nil
	title := fmt.Sprintf("phoneboot lab: %d phones on %d ports, compared: %s", runs[0].Phones, runs[0].Ports, strings.Join(variants, ", "))
	var reps []Report
	for i, ro := range runs {
		fmt.Fprintf(out, "\n== %s (run %d of %d) ==\n", variants[i], i+1, len(runs))
		rep, err := runOnce(ctx, ro)
		if rep.Series != nil {
			rep.Label = variants[i]
			reps = append(reps, rep)
			if werr := errors.Join(rep.WriteTable(out), writeComparisonFiles(o, title, reps)); werr != nil {
				return reps, errors.Join(err, werr)
			}
		}
		if err != nil {
			return reps, fmt.Errorf("--compare %s: %w", variants[i], err)
		}
	}
	fmt.Fprintln(out)
	return reps, WriteComparison(out, reps)
}

func writeComparisonFiles(o Options, title string, reps []Report) error {
	if o.JSONPath != "" {
		if err := writeJSONFile(o.JSONPath, reps); err != nil {
			return err
		}
	}
	if o.HTMLPath != "" {
		return WriteHTMLFile(o.HTMLPath, title, reps)
	}
	return nil
}

// The targets for phoneboot against the baseline stack.
const (
	targetStormRatio   = 0.5 // phoneboot's storm time at most half the baseline's
	targetDHCPP99Ratio = 0.1 // phoneboot's DHCP p99 with XDP at most a tenth of the baseline's
)

// stormSeconds is a run's total storm time: from the storm's start (the
// daemon's) until its last phone completed; ok is false unless every
// phone completed.
func (rep Report) stormSeconds() (s float64, ok bool) {
	return rep.AllDoneSeconds, rep.Completed == rep.Phones && rep.Phones > 0
}

// stormText is stormSeconds as the report shows it: - when not every
// phone completed.
func (rep Report) stormText() string {
	if s, ok := rep.stormSeconds(); ok {
		return fmt.Sprintf("%.1f", s)
	}
	return "-"
}

// phase returns the named phase's line of the report.
func (rep Report) phase(name string) (PhaseReport, bool) {
	for _, p := range rep.Phases {
		if p.Name == name {
			return p, true
		}
	}
	return PhaseReport{}, false
}

// baselineOf is the comparison's baseline run, if it has one.
func baselineOf(reps []Report) (Report, bool) {
	for _, r := range reps {
		if r.Mode == "baseline" {
			return r, true
		}
	}
	return Report{}, false
}

// vsBaseline is a run's ratios to the baseline's: storm time and DHCP
// p99. ok is false when either run has phones that did not complete.
type vsBaseline struct {
	storm, dhcpP99 float64
	ok             bool
}

func ratiosTo(base, rep Report) vsBaseline {
	bs, bok := base.stormSeconds()
	rs, rok := rep.stormSeconds()
	bd, _ := base.phase("dhcp")
	rd, _ := rep.phase("dhcp")
	if !bok || !rok || bs <= 0 || bd.P99ms <= 0 {
		return vsBaseline{}
	}
	return vsBaseline{storm: rs / bs, dhcpP99: rd.P99ms / bd.P99ms, ok: true}
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

// WriteComparison prints the runs side by side: per run the storm time and
// the DHCP phase's p50 and p99, and each phoneboot run's ratios to the
// baseline's with the targets.
func WriteComparison(w io.Writer, reps []Report) error {
	if len(reps) == 0 {
		return nil
	}
	r0 := reps[0]
	fmt.Fprintf(w, "comparison: %d phones on %d ports, the same phones, models, seed and upgrade set in every run\n", r0.Phones, r0.Ports)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tmode\tpower\tvoice VLANs\tcompleted\tfailed\tstorm s\tdhcp p50 ms\tdhcp p99 ms\tpeak DHCP backlog\tpeak TFTP\tpeak proxy queue\t")
	for _, r := range reps {
		d, _ := r.phase("dhcp")
		pk := r.PeakLoad
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%.1f\t%.1f\t%d\t%d\t%d\t\n", r.Label, r.Mode, r.PowerPolicy, r.voiceVLANs,
			r.Completed, r.Failed, r.stormText(), d.P50ms, d.P99ms, pk.DHCPBacklog, pk.TFTPActive, pk.ProxyQueued)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "storm s: from the daemon's start until the last phone registered (- when not every phone completed); peaks: the Go DHCP server's backlog, TFTP transfers at once and phones queued at the proxy, sampled every 50 ms (the baseline's servers have no such counters: 0)")
	base, ok := baselineOf(reps)
	if !ok {
		return nil
	}
	fmt.Fprintf(w, "against the baseline (%s: Kea and tftpd-hpa, untagged; targets: storm time at most %.1f× the baseline's, DHCP p99 with XDP at most %.1f×):\n",
		base.Label, targetStormRatio, targetDHCPP99Ratio)
	for _, r := range reps {
		if r.Mode == "baseline" {
			continue
		}
		v := ratiosTo(base, r)
		if !v.ok {
			fmt.Fprintf(w, "  %s: no ratio, not every phone completed in both runs\n", r.Label)
			continue
		}
		dhcp := "no target without XDP"
		if r.Mode == "xdp" {
			dhcp = "target " + verdict(v.dhcpP99 <= targetDHCPP99Ratio)
		}
		fmt.Fprintf(w, "  %s: storm time %.2f× (target %s), DHCP p99 %.3f× (%s)\n",
			r.Label, v.storm, verdict(v.storm <= targetStormRatio), v.dhcpP99, dhcp)
	}
	return nil
}

// comparisonRows are the HTML summary's rows comparing each run with the
// baseline's, when the report has one.
func comparisonRows(runs []Report) []summaryRow {
	base, ok := baselineOf(runs)
	if !ok {
		return nil
	}
	ratio := func(name string, f func(vsBaseline) float64) summaryRow {
		row := summaryRow{Name: name}
		for _, r := range runs {
			v := ratiosTo(base, r)
			switch {
			case r.Mode == "baseline":
				row.Values = append(row.Values, "1")
			case !v.ok:
				row.Values = append(row.Values, "—")
			default:
				row.Values = append(row.Values, fmt.Sprintf("%.3f", f(v)))
			}
		}
		return row
	}
	return []summaryRow{
		ratio(fmt.Sprintf("storm time / baseline's (target ≤ %.1f)", targetStormRatio), func(v vsBaseline) float64 { return v.storm }),
		ratio(fmt.Sprintf("DHCP p99 / baseline's (target ≤ %.1f with XDP)", targetDHCPP99Ratio), func(v vsBaseline) float64 { return v.dhcpP99 }),
	}
}

// writeJSONFile writes v as indented JSON, atomically (temp file, then
// rename).
func writeJSONFile(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
