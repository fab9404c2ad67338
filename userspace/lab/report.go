package lab

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Report is the lab's result. Its JSON form is a stable schema that later
// phases extend: keep field names and meanings.
type Report struct {
	Phones      int           `json:"phones"`
	Ports       int           `json:"ports"`
	Mode        string        `json:"mode"` // xdp, userspace or baseline
	WallSeconds float64       `json:"wall_seconds"`
	Completed   int           `json:"completed"`
	Failed      int           `json:"failed"`
	Phases      []PhaseReport `json:"phases"`
	Failures    []Failure     `json:"failures"`
	// PowerPolicy is how the ports were powered; AllDoneSeconds when the
	// last phone completed, from the storm's start; PeakLoad the most the
	// services had queued meanwhile.
	PowerPolicy    string   `json:"power_policy"`
	AllDoneSeconds float64  `json:"all_done_seconds"`
	PeakLoad       PeakLoad `json:"peak_load"`
	// Label names the run in a report that compares runs (the HTML
	// report's columns); empty for a single run.
	Label string `json:"label,omitempty"`
	// Faults are the faults injected (--fault) and the phones' recovery
	// from each; Events what happened meanwhile (faults.go). Both are
	// absent from a run without faults.
	Faults []FaultReport `json:"faults,omitempty"`
	Events []Event       `json:"events,omitempty"`
	// Integrity is the lease integrity check at the end of the run
	// (integrity.go).
	Integrity *IntegrityReport `json:"integrity,omitempty"`
	// Series is what the HTML report plots; not part of the JSON.
	Series *Series `json:"-"`

	provisioned   provisioned // for the table
	voiceVLANs    int         // for the comparison's table
	baseline      *baselineSummary
	registrations registered // for the table
	// agentCounters are the agent's data-path counters at the end of the
	// storm (packets), for tests; nil if they could not be read.
	agentCounters map[string]uint64
}

// PhaseReport is one phase across all phones. Latencies are of the phones
// that finished the phase.
type PhaseReport struct {
	Name   string  `json:"name"`
	Done   int     `json:"done"`
	Failed int     `json:"failed"`
	P50ms  float64 `json:"p50_ms"`
	P95ms  float64 `json:"p95_ms"`
	P99ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
}

// Failure is one phone that did not finish.
type Failure struct {
	Phone string `json:"phone"`
	Phase string `json:"phase"`
	Error string `json:"error"`
}

// recorder collects phase outcomes from the phones' goroutines.
type recorder struct {
	phases []string

	mu        sync.Mutex
	durations map[string][]time.Duration
	doneAt    map[string][]time.Duration // since the storm's start
	failed    map[string]int
	failures  []Failure
	completed int
	lastDone  time.Time // when the last phone completed
}

func newRecorder(phases []string) *recorder {
	return &recorder{phases: phases, durations: map[string][]time.Duration{}, doneAt: map[string][]time.Duration{}, failed: map[string]int{}}
}

// done records a phone finishing phase after latency d, at since the
// storm's start.
func (r *recorder) done(phase string, d, at time.Duration) {
	r.mu.Lock()
	r.durations[phase] = append(r.durations[phase], d)
	r.doneAt[phase] = append(r.doneAt[phase], at)
	r.mu.Unlock()
}

func (r *recorder) fail(phone, phase string, err error) {
	r.mu.Lock()
	r.failed[phase]++
	r.failures = append(r.failures, Failure{Phone: phone, Phase: phase, Error: err.Error()})
	r.mu.Unlock()
}

func (r *recorder) complete() {
	r.mu.Lock()
	r.completed++
	r.lastDone = time.Now()
	r.mu.Unlock()
}

// progress returns phones done per phase, and completed and failed phones.
func (r *recorder) progress() (perPhase []int, completed, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.phases {
		perPhase = append(perPhase, len(r.durations[p]))
	}
	return perPhase, r.completed, len(r.failures)
}

func (r *recorder) report(phones, ports int, mode string, wall time.Duration) Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := Report{
		Phones:      phones,
		Ports:       ports,
		Mode:        mode,
		WallSeconds: wall.Seconds(),
		Completed:   r.completed,
		Failed:      len(r.failures),
		Failures:    slices.Clone(r.failures),
	}
	if rep.Failures == nil {
		rep.Failures = []Failure{}
	}
	sort.Slice(rep.Failures, func(i, j int) bool { return rep.Failures[i].Phone < rep.Failures[j].Phone })
	rep.Series = &Series{PhaseDone: map[string][]float64{}, LatencyMs: map[string][]float64{}}
	for _, p := range r.phases {
		ds := slices.Clone(r.durations[p])
		slices.Sort(ds)
		rep.Series.LatencyMs[p] = milliseconds(ds)
		at := slices.Clone(r.doneAt[p])
		slices.Sort(at)
		for _, d := range at {
			rep.Series.PhaseDone[p] = append(rep.Series.PhaseDone[p], d.Seconds())
		}
		rep.Phases = append(rep.Phases, PhaseReport{
			Name:   p,
			Done:   len(ds),
			Failed: r.failed[p],
			P50ms:  percentileMs(ds, 50),
			P95ms:  percentileMs(ds, 95),
			P99ms:  percentileMs(ds, 99),
			MaxMs:  percentileMs(ds, 100),
		})
	}
	return rep
}

func milliseconds(ds []time.Duration) []float64 {
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	return ms
}

// percentileMs is the nearest-rank percentile of sorted durations, in ms.
func percentileMs(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	ms := float64(sorted[rank-1]) / float64(time.Millisecond)
	return math.Round(ms*1000) / 1000
}

// WriteTable prints the report for people.
func (rep Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "phoneboot lab: %d phones on %d ports, mode %s, %.1fs wall, %d completed, %d failed\n",
		rep.Phones, rep.Ports, rep.Mode, rep.WallSeconds, rep.Completed, rep.Failed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tdone\tfailed\tp50 ms\tp95 ms\tp99 ms\tmax ms\t")
	for _, p := range rep.Phases {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t\n", p.Name, p.Done, p.Failed, p.P50ms, p.P95ms, p.P99ms, p.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	rep.writePowerSummary(w)
	rep.baseline.write(w)
	if u := rep.provisioned; u.OwnConfig+u.DefaultConfig > 0 {
		fmt.Fprintf(w, "config: %d phones from SEP<MAC>.cnf.xml, %d from XMLDefault.cnf.xml; files over HTTP 6970: %d, asked over TFTP after HTTP failed: %d (%d after %s without data)\n",
			u.OwnConfig, u.DefaultConfig, u.HTTPFetches, u.HTTPFallbacks, u.HTTPStalls, httpStall)
		fmt.Fprintf(w, "firmware: %d of %d phones that booted an older load upgraded, %.1f MB fetched and checked\n",
			u.Upgraded, u.Older, float64(u.Bytes)/1e6)
	}
	if r := rep.registrations; r.Registered > 0 || r.Failed > 0 {
		fmt.Fprintf(w, "register: %d registrations, %d registered connections lost, %d attempts failed, %d rejected; registered now: %s\n",
			r.Registered, r.Lost, r.Failed, r.Rejected, r.ByCallManager)
	}
	rep.writeFaults(w)
	const shown = 10
	for i, f := range rep.Failures {
		if i == shown {
			fmt.Fprintf(w, "... and %d more failures (see --json)\n", len(rep.Failures)-shown)
			break
		}
		fmt.Fprintf(w, "FAILED %s in %s: %s\n", f.Phone, f.Phase, f.Error)
	}
	return nil
}

// WriteJSONFile writes the report atomically (temp file, then rename).
func (rep Report) WriteJSONFile(path string) error { return writeJSONFile(path, rep) }

// progressLine is the live one-line view: phones past each phase.
func progressLine(elapsed time.Duration, phases []string, perPhase []int, phones, completed, failed int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%6.1fs]", elapsed.Seconds())
	for i, p := range phases {
		fmt.Fprintf(&b, " %s %d/%d", p, perPhase[i], phones)
	}
	fmt.Fprintf(&b, " | completed %d failed %d", completed, failed)
	return b.String()
}
