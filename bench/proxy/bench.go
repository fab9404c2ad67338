package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"text/tabwriter"
	"time"
)

// plan is how long and how often each measurement runs.
type plan struct {
	reps      int
	rateDur   time.Duration // closed-loop registration runs
	fixedRate int           // registrations/s for the latency runs
	fixedDur  time.Duration
	sessions  int           // keepalive runs: registered sessions ...
	kaGap     time.Duration // ... each sending a KeepAlive this often
	kaDur     time.Duration
}

func runBench(ctx context.Context, quick bool, jsonPath string, workers int, only string, cmDelay time.Duration) error {
	switch only {
	case "", "rate", "fixed", "keepalive":
	default:
		return fmt.Errorf("--only: unknown measurement %q", only)
	}
	want := func(kind string) bool { return only == "" || only == kind }
	pl := plan{reps: 5, rateDur: 8 * time.Second, fixedRate: 1000, fixedDur: 8 * time.Second,
		sessions: 500, kaGap: 100 * time.Millisecond, kaDur: 8 * time.Second}
	if quick {
		pl = plan{reps: 3, rateDur: 3 * time.Second, fixedRate: 1000, fixedDur: 3 * time.Second,
			sessions: 500, kaGap: 100 * time.Millisecond, kaDur: 3 * time.Second}
	}
	fmt.Printf("machine: %d CPUs, %s, %s\n", runtime.NumCPU(), machineNote(), runtime.Version())
	fmt.Printf("simulator answers a Register after %v\n", cmDelay)
	cm, err := startChild("cmsim", "--cm-delay="+cmDelay.String())
	if err != nil {
		return err
	}
	defer cm.stop()
	// The proxy probes its CallManager at start: start it once the
	// simulator listens.
	if err := waitListening(ctx, cmAddr); err != nil {
		return err
	}
	px, err := startChild("proxy")
	if err != nil {
		return err
	}
	defer px.stop()
	if err := waitListening(ctx, proxyAddr); err != nil {
		return err
	}
	procs := map[string]int{"proxy": px.pid(), "cmsim": cm.pid(), "loadgen": os.Getpid()}
	targets := []struct{ name, addr string }{{"direct", cmAddr}, {"proxy", proxyAddr}}
	res := map[string]map[string][]*run{"rate": {}, "fixed": {}, "keepalive": {}}
	say := func(kind, target string, rep int, r *run) {
		progress("%-9s %-6s rep %d: %7.0f/s  p50 %6.3f ms  p99 %6.3f ms  errors %d  cpu proxy %3.0f%% cmsim %3.0f%% loadgen %3.0f%%%s",
			kind, target, rep+1, r.rate(), r.pct(50), r.pct(99), r.errs, r.cpu["proxy"], r.cpu["cmsim"], r.cpu["loadgen"], errNote(r))
		res[kind][target] = append(res[kind][target], r)
	}
	// Direct and proxy alternate within each repeat, so that load from
	// other processes on the machine falls on both alike.
	for rep := range pl.reps {
		for _, t := range targets {
			if want("rate") {
				r := measured(procs, func() *run { return closedLoop(ctx, t.addr, workers, pl.rateDur) })
				say("rate", t.name, rep, r)
			}
		}
		for _, t := range targets {
			if want("fixed") {
				r := measured(procs, func() *run { return openLoop(ctx, t.addr, pl.fixedRate, pl.fixedDur) })
				say("fixed", t.name, rep, r)
			}
		}
		for _, t := range targets {
			if want("keepalive") {
				r := measured(procs, func() *run { return keepalives(ctx, t.addr, pl.sessions, pl.kaGap, pl.kaDur) })
				say("keepalive", t.name, rep, r)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	rep := summarize(res, pl, workers)
	rep.CMDelayMs = float64(cmDelay) / float64(time.Millisecond)
	rep.print(os.Stdout)
	if jsonPath != "" {
		return writeJSON(jsonPath, rep)
	}
	return nil
}

func errNote(r *run) string {
	if r.errs == 0 {
		return ""
	}
	return "  first error: " + r.firstEr
}

// stat is a median over the repeats with the spread.
type stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	All    []float64 `json:"all"`
}

func over(rs []*run, f func(*run) float64) stat {
	var v []float64
	for _, r := range rs {
		v = append(v, f(r))
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return stat{}
	}
	return stat{Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1], All: v}
}

type report struct {
	ProxyRegPerS  float64 `json:"proxy_registrations_per_s"`
	DirectRegPerS float64 `json:"direct_registrations_per_s"`
	ProxyP99      float64 `json:"proxy_p99_ms"`
	DirectP99     float64 `json:"direct_p99_ms"`
	ProxyKAP99    float64 `json:"proxy_keepalive_p99_ms"`
	DirectKAP99   float64 `json:"direct_keepalive_p99_ms"`

	CMDelayMs float64                    `json:"cm_register_delay_ms"`
	Workers   int                        `json:"workers"`
	FixedRate int                        `json:"fixed_rate_per_s"`
	Sessions  int                        `json:"keepalive_sessions"`
	KAGapMs   float64                    `json:"keepalive_gap_ms"`
	Detail    map[string]map[string]stat `json:"detail"` // measurement.target.quantity
	Errors    int                        `json:"errors"`
}

func summarize(res map[string]map[string][]*run, pl plan, workers int) *report {
	rep := &report{Workers: workers, FixedRate: pl.fixedRate, Sessions: pl.sessions,
		KAGapMs: float64(pl.kaGap) / float64(time.Millisecond), Detail: map[string]map[string]stat{}}
	for kind, byTarget := range res {
		for target, rs := range byTarget {
			d := map[string]stat{
				"per_s":       over(rs, (*run).rate),
				"p50_ms":      over(rs, func(r *run) float64 { return r.pct(50) }),
				"p99_ms":      over(rs, func(r *run) float64 { return r.pct(99) }),
				"cpu_proxy":   over(rs, func(r *run) float64 { return r.cpu["proxy"] }),
				"cpu_cmsim":   over(rs, func(r *run) float64 { return r.cpu["cmsim"] }),
				"cpu_loadgen": over(rs, func(r *run) float64 { return r.cpu["loadgen"] }),
				// CPU per operation: steadier than rates on a shared
				// machine, and what capacity follows from.
				"proxy_us_per_op":   over(rs, func(r *run) float64 { return usPerOp(r, "proxy") }),
				"cmsim_us_per_op":   over(rs, func(r *run) float64 { return usPerOp(r, "cmsim") }),
				"loadgen_us_per_op": over(rs, func(r *run) float64 { return usPerOp(r, "loadgen") }),
			}
			rep.Detail[kind+"."+target] = d
			for _, r := range rs {
				rep.Errors += r.errs
			}
		}
	}
	rep.ProxyRegPerS = rep.Detail["rate.proxy"]["per_s"].Median
	rep.DirectRegPerS = rep.Detail["rate.direct"]["per_s"].Median
	rep.ProxyP99 = rep.Detail["fixed.proxy"]["p99_ms"].Median
	rep.DirectP99 = rep.Detail["fixed.direct"]["p99_ms"].Median
	rep.ProxyKAP99 = rep.Detail["keepalive.proxy"]["p99_ms"].Median
	rep.DirectKAP99 = rep.Detail["keepalive.direct"]["p99_ms"].Median
	return rep
}

func usPerOp(r *run, proc string) float64 {
	if r.done == 0 {
		return 0
	}
	return r.cpu[proc] / 100 * r.elapsed.Seconds() / float64(r.done) * 1e6
}

func (r *report) print(w *os.File) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measurement\ttarget\trate/s (min-max)\tp50 ms\tp99 ms (min-max)\tCPU proxy\tCPU cmsim\tCPU loadgen\tCPU µs/op proxy\tcmsim\tloadgen\t")
	for _, kind := range []string{"rate", "fixed", "keepalive"} {
		for _, target := range []string{"direct", "proxy"} {
			d, ok := r.Detail[kind+"."+target]
			if !ok {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f (%.0f-%.0f)\t%.3f\t%.3f (%.3f-%.3f)\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f\t%.0f\t%.0f\t\n", kind, target,
				d["per_s"].Median, d["per_s"].Min, d["per_s"].Max, d["p50_ms"].Median,
				d["p99_ms"].Median, d["p99_ms"].Min, d["p99_ms"].Max,
				d["cpu_proxy"].Median, d["cpu_cmsim"].Median, d["cpu_loadgen"].Median,
				d["proxy_us_per_op"].Median, d["cmsim_us_per_op"].Median, d["loadgen_us_per_op"].Median)
		}
	}
	tw.Flush()
	added := func(p, d float64) string {
		if d == 0 {
			return "?"
		}
		return fmt.Sprintf("%+.0f %%", 100*(p-d)/d)
	}
	fmt.Fprintf(w, "\nregistrations/s through the proxy: %.0f (target >= 5000), direct %.0f\n", r.ProxyRegPerS, r.DirectRegPerS)
	fmt.Fprintf(w, "registration p99 at %d/s: proxy %.3f ms, direct %.3f ms: added %s (target < 10 %%)\n", r.FixedRate, r.ProxyP99, r.DirectP99, added(r.ProxyP99, r.DirectP99))
	fmt.Fprintf(w, "keepalive round trip p99 (%d sessions, one each %.0f ms): proxy %.3f ms, direct %.3f ms: added %s\n",
		r.Sessions, r.KAGapMs, r.ProxyKAP99, r.DirectKAP99, added(r.ProxyKAP99, r.DirectKAP99))
	if r.Errors > 0 {
		fmt.Fprintf(w, "errors: %d (see the per-run lines)\n", r.Errors)
	}
}
