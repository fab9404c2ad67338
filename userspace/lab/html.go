package lab

import (
	"fmt"
	"html/template"
	"io"
	"os"
	"slices"
	"time"
)

// Series is what a run's plots are drawn from: when each phone finished
// each phase, the latencies, and the appliance's load sampled during the
// storm. It stays out of the JSON report, whose schema is stable.
type Series struct {
	// PhaseDone holds, per phase, the seconds from the storm's start at
	// which phones finished it, ascending.
	PhaseDone map[string][]float64
	// LatencyMs holds, per phase, every phone's latency, ascending.
	LatencyMs map[string][]float64
	// Load is sampled from the appliance's counters during the storm.
	Load []LoadSample
	// Registered is how many phones were registered over time, at each
	// change.
	Registered []RegisteredSample
}

// LoadSample is the appliance's load over one sampling interval ending T
// seconds after the storm's start. A rate the run had no service for is 0.
type LoadSample struct {
	T                 float64
	DHCPFastPerS      float64 // DHCP answers sent by the XDP fast path
	DHCPGoPerS        float64 // DHCP answers sent by the Go server
	DHCPKeaPerS       float64 // DHCP answers sent by Kea (baseline)
	TFTPMBPerS        float64 // TFTP payload served
	HTTPMBPerS        float64 // HTTP 6970 payload served
	RegistrationsPerS float64 // registrations acknowledged (through the proxy; in the baseline, to the phones)
	PowerW            float64 // power drawn on the ports, the sample's end
	// The services' queues at the sample's end (the adaptive power
	// policy's signals).
	DHCPBacklog, TFTPActive, ProxyQueued int
}

// loadMetric is one plotted quantity of a LoadSample.
type loadMetric struct {
	title, unit string
	value       func(LoadSample) float64
	dash        bool
}

// loadCharts groups the load metrics into the report's charts; the DHCP
// chart draws the fast path solid and the Go server dashed.
var loadCharts = []struct {
	title, unit string
	metrics     []loadMetric
}{
	{"DHCP answers/s (solid: XDP fast path or Kea, dashed: Go server)", "answers/s", []loadMetric{
		{"fast path", "", func(s LoadSample) float64 { return s.DHCPFastPerS }, false},
		{"Go", "", func(s LoadSample) float64 { return s.DHCPGoPerS }, true},
		{"Kea", "", func(s LoadSample) float64 { return s.DHCPKeaPerS }, false},
	}},
	{"TFTP MB/s (solid) and HTTP 6970 MB/s (dashed)", "MB/s", []loadMetric{
		{"TFTP", "", func(s LoadSample) float64 { return s.TFTPMBPerS }, false},
		{"HTTP", "", func(s LoadSample) float64 { return s.HTTPMBPerS }, true},
	}},
	{"Registrations/s", "registrations/s", []loadMetric{
		{"", "", func(s LoadSample) float64 { return s.RegistrationsPerS }, false},
	}},
	{"Power drawn", "W", []loadMetric{
		{"", "", func(s LoadSample) float64 { return s.PowerW }, false},
	}},
}

// htmlRun is one column of the report.
type htmlRun struct {
	Label  string
	Color  string
	Report Report
}

// WriteHTMLFile writes the runs as one self-contained HTML page (inline
// CSS and SVG; no script, nothing fetched), atomically.
func WriteHTMLFile(path string, title string, runs []Report) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("write HTML report: %w", err)
	}
	err = WriteHTML(f, title, time.Now(), runs)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write HTML report: %w", err)
	}
	return nil
}

// WriteHTML renders the runs side by side: a summary table with a column
// per run, phones completed over time, latency distributions per phase
// and the appliance's load over time.
func WriteHTML(w io.Writer, title string, at time.Time, runs []Report) error {
	var cols []htmlRun
	for i, r := range runs {
		label := r.Label
		if label == "" {
			label = r.Mode
		}
		cols = append(cols, htmlRun{Label: label, Color: palette[i%len(palette)], Report: r})
	}
	var phases []string
	for _, r := range runs {
		for _, p := range r.Phases {
			if !slices.Contains(phases, p.Name) {
				phases = append(phases, p.Name)
			}
		}
	}
	data := struct {
		Title     string
		Generated string
		Runs      []htmlRun
		Phases    []string
		Rows      []summaryRow
		Completed template.HTML
		Recovery  template.HTML
		PerRun    []template.HTML
		Latency   []template.HTML
		Load      []template.HTML
	}{
		Title:     title,
		Generated: at.UTC().Format(time.RFC3339),
		Runs:      cols,
		Phases:    phases,
		Rows:      summaryRows(runs, phases),
	}
	spans := faultSpans(cols)
	completed := completedChart(cols)
	completed.Spans = spans
	data.Completed = template.HTML(completed.svg())
	if hasFaults(runs) {
		data.Recovery = template.HTML(registeredChart(cols, spans).svg())
	}
	for _, c := range cols {
		ch := phaseChart(c)
		ch.Spans = faultSpans([]htmlRun{c})
		data.PerRun = append(data.PerRun, template.HTML(ch.svg()))
	}
	for _, p := range phases {
		data.Latency = append(data.Latency, template.HTML(latencyChart(cols, p).svg()))
	}
	for _, lc := range loadCharts {
		ch := chart{Title: lc.title, XLabel: "seconds since the storm started", YLabel: lc.unit, Spans: spans}
		for _, c := range cols {
			if c.Report.Series == nil || len(c.Report.Series.Load) == 0 {
				continue
			}
			for _, m := range lc.metrics {
				l := chartLine{Label: c.Label, Color: c.Color, Dash: m.dash}
				if m.title != "" {
					l.Label += ": " + m.title
				}
				nonzero := false
				for _, s := range c.Report.Series.Load {
					v := m.value(s)
					nonzero = nonzero || v != 0
					l.X, l.Y = append(l.X, s.T), append(l.Y, v)
				}
				if nonzero {
					ch.Lines = append(ch.Lines, l)
				}
			}
		}
		data.Load = append(data.Load, template.HTML(ch.svg()))
	}
	return htmlPage.Execute(w, data)
}

// summaryRow is one line of the summary table: a value per run.
type summaryRow struct {
	Name   string
	Values []string
}

func summaryRows(runs []Report, phases []string) []summaryRow {
	row := func(name string, f func(Report) string) summaryRow {
		r := summaryRow{Name: name}
		for _, run := range runs {
			r.Values = append(r.Values, f(run))
		}
		return r
	}
	rows := []summaryRow{
		row("phones / ports", func(r Report) string { return fmt.Sprintf("%d / %d", r.Phones, r.Ports) }),
		row("mode", func(r Report) string { return r.Mode }),
		row("power policy", func(r Report) string { return r.PowerPolicy }),
		row("storm time (s)", Report.stormText),
		row("wall time (s)", func(r Report) string { return fmt.Sprintf("%.1f", r.WallSeconds) }),
		row("completed", func(r Report) string { return fmt.Sprint(r.Completed) }),
		row("failed", func(r Report) string { return fmt.Sprint(r.Failed) }),
		row("peak DHCP backlog / TFTP transfers / proxy queue", func(r Report) string {
			return fmt.Sprintf("%d / %d / %d", r.PeakLoad.DHCPBacklog, r.PeakLoad.TFTPActive, r.PeakLoad.ProxyQueued)
		}),
		row("lease integrity", func(r Report) string {
			switch {
			case r.Integrity == nil:
				return "—"
			case r.Integrity.Violations == 0:
				return "no violation"
			}
			return fmt.Sprintf("%d violations", r.Integrity.Violations)
		}),
	}
	if hasFaults(runs) {
		rows = append(rows,
			row("faults injected", func(r Report) string {
				if len(r.Faults) == 0 {
					return "—"
				}
				n := 0
				for _, f := range r.Faults {
					if f.Injected {
						n++
					}
				}
				return fmt.Sprintf("%d of %d", n, len(r.Faults))
			}),
			row("slowest recovery (s)", func(r Report) string {
				if len(r.Faults) == 0 {
					return "—"
				}
				slowest := 0.0
				for _, f := range r.Faults {
					if f.Recovered < f.Affected {
						return "not every phone"
					}
					slowest = max(slowest, f.RecoverySeconds)
				}
				return fmt.Sprintf("%.3f", slowest)
			}))
	}
	for _, p := range phases {
		rows = append(rows, row(p+" p50 / p99 ms", func(r Report) string {
			for _, pr := range r.Phases {
				if pr.Name == p {
					return fmt.Sprintf("%.1f / %.1f", pr.P50ms, pr.P99ms)
				}
			}
			return "—"
		}))
	}
	return append(rows, comparisonRows(runs)...)
}

// completedChart: phones that finished every phase, over time, per run.
func completedChart(cols []htmlRun) chart {
	ch := chart{Title: "Phones completed over time", XLabel: "seconds since the storm started", YLabel: "phones"}
	for _, c := range cols {
		if c.Report.Series == nil || len(c.Report.Phases) == 0 {
			continue
		}
		last := c.Report.Phases[len(c.Report.Phases)-1].Name
		x, y := cumulative(c.Report.Series.PhaseDone[last])
		ch.Lines = append(ch.Lines, chartLine{Label: c.Label, Color: c.Color, X: x, Y: y})
	}
	return ch
}

// phaseChart: phones past each phase over time, for one run.
func phaseChart(c htmlRun) chart {
	ch := chart{Title: "Phones past each phase: " + c.Label, XLabel: "seconds since the storm started", YLabel: "phones"}
	if c.Report.Series == nil {
		return ch
	}
	for i, p := range c.Report.Phases {
		x, y := cumulative(c.Report.Series.PhaseDone[p.Name])
		ch.Lines = append(ch.Lines, chartLine{Label: p.Name, Color: palette[i%len(palette)], X: x, Y: y})
	}
	return ch
}

// latencyChart: the distribution of one phase's latency, per run, as the
// share of phones done within x ms on a log axis.
func latencyChart(cols []htmlRun, phase string) chart {
	ch := chart{Title: "Latency of the " + phase + " phase", XLabel: "ms (log scale)", YLabel: "% of phones done within", LogX: true}
	for _, c := range cols {
		if c.Report.Series == nil {
			continue
		}
		lat := c.Report.Series.LatencyMs[phase]
		l := chartLine{Label: c.Label, Color: c.Color}
		for i, v := range lat {
			l.X, l.Y = append(l.X, v), append(l.Y, 100*float64(i+1)/float64(len(lat)))
		}
		ch.Lines = append(ch.Lines, l)
	}
	return ch
}

// cumulative turns ascending event times into a count over time, starting
// at zero at the first event.
func cumulative(times []float64) (x, y []float64) {
	if len(times) == 0 {
		return nil, nil
	}
	x, y = append(x, times[0]), append(y, 0)
	for i, t := range times {
		x, y = append(x, t), append(y, float64(i+1))
	}
	return x, y
}

var htmlPage = template.Must(template.New("report").Funcs(template.FuncMap{"downOrOff": downOrOff}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1340px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; border: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { width: 640px; max-width: 100%; background: #fff; border: 1px solid #eee; }
svg .grid { stroke: #eee; } svg .axis { stroke: #888; }
svg text { font: 11px system-ui, sans-serif; fill: #444; } svg .title { font-size: 13px; font-weight: 600; fill: #222; }
svg .nodata { fill: #999; text-anchor: middle; }
table.events { margin-top: 8px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p>Generated {{.Generated}}.</p>
<h2>Summary</h2>
<table id="summary">
<tr><th></th>{{range .Runs}}<th><span class="swatch" style="background:{{.Color}}"></span>{{.Label}}</th>{{end}}</tr>
{{range .Rows}}<tr><td>{{.Name}}</td>{{range .Values}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
<h2>Phones completed over time</h2>
<div class="charts">{{.Completed}}{{.Recovery}}{{range .PerRun}}{{.}}{{end}}</div>
{{range .Runs}}{{if .Report.Faults}}<h2>Faults and recovery: {{.Label}}</h2>
<p>Shaded on the time charts from each fault until every phone it hit was registered again; darker while the daemon was down or the port's power off.</p>
<table class="faults"><tr><th>fault</th><th>target</th><th>at (s)</th><th>phones hit</th><th>registered again</th><th>recovery (s)</th><th>of them registered then</th><th>those registered again after (s)</th><th>down or off (s)</th><th>fast path answers while down</th><th></th></tr>
{{range .Report.Faults}}<tr><td>{{.Trigger}}</td><td>{{.Target}}</td>{{if .Injected}}<td>{{printf "%.2f" .AtSeconds}}</td><td>{{.Affected}}</td><td>{{.Recovered}}</td><td>{{printf "%.3f" .RecoverySeconds}}</td><td>{{.RegisteredAtFault}}</td><td>{{printf "%.3f" .ReregisteredSeconds}}</td><td>{{printf "%.2f" (downOrOff .)}}</td><td>{{.FastPathAnswersWhileDown}}</td><td style="text-align:left">{{.Error}}</td>{{else}}<td colspan="9" style="text-align:left">not injected: {{.Error}}</td>{{end}}</tr>
{{end}}</table>
<table class="events"><tr><th>s</th><th>event</th><th>detail</th></tr>
{{range .Report.Events}}<tr><td>{{printf "%.3f" .AtSeconds}}</td><td style="text-align:left">{{.Kind}}</td><td style="text-align:left">{{.Detail}}</td></tr>
{{end}}</table>{{end}}{{end}}
<h2>Latency per phase</h2>
<div class="charts">{{range .Latency}}{{.}}{{end}}</div>
<h2>Appliance load over time</h2>
<div class="charts">{{range .Load}}{{.}}{{end}}</div>
{{range .Runs}}{{if .Report.Failures}}<h2>Failures: {{.Label}}</h2>
<table><tr><th>phone</th><th>phase</th><th>error</th></tr>
{{range $i, $f := .Report.Failures}}{{if lt $i 50}}<tr><td>{{$f.Phone}}</td><td>{{$f.Phase}}</td><td style="text-align:left">{{$f.Error}}</td></tr>{{end}}{{end}}
</table>{{end}}{{end}}
</body>
</html>
`))

func hasFaults(runs []Report) bool {
	return slices.ContainsFunc(runs, func(r Report) bool { return len(r.Faults) > 0 })
}

// faultSpans shades, for each run's faults, the time from the fault until
// every phone it hit was registered again (to the run's end if some never
// were), darker while the daemon was down or the port's power off.
func faultSpans(cols []htmlRun) []chartSpan {
	var spans []chartSpan
	for _, c := range cols {
		for _, f := range c.Report.Faults {
			if !f.Injected {
				continue
			}
			end := f.AtSeconds + f.RecoverySeconds
			label := map[string]string{FaultCallManager: f.Target + " stopped", FaultDaemon: "daemon killed", FaultPort: f.Target + " power-cycled"}[f.Kind]
			if f.Recovered < f.Affected {
				end = max(c.Report.WallSeconds, f.AtSeconds)
				label += " (not every phone registered again)"
			}
			if d := downOrOff(f); d > 0 {
				spans = append(spans, chartSpan{From: f.AtSeconds, To: f.AtSeconds + d, Label: label, Color: c.Color, Dark: true})
			}
			spans = append(spans, chartSpan{From: f.AtSeconds, To: end, Label: label, Color: c.Color})
		}
	}
	return spans
}

// downOrOff is how long the fault took the service away: the daemon down,
// the port's power off; 0 for a CallManager.
func downOrOff(f FaultReport) float64 { return max(f.DownSeconds, f.PowerOffSeconds) }

// registeredChart: phones registered over time, per run, with the faults
// shaded: the drops and the recoveries.
func registeredChart(cols []htmlRun, spans []chartSpan) chart {
	ch := chart{Title: "Phones registered over time", XLabel: "seconds since the storm started", YLabel: "phones", Spans: spans}
	for _, c := range cols {
		if c.Report.Series == nil || len(c.Report.Series.Registered) == 0 {
			continue
		}
		l := chartLine{Label: c.Label, Color: c.Color, X: []float64{0}, Y: []float64{0}}
		for _, s := range c.Report.Series.Registered {
			// A step: the count holds until the change.
			l.X, l.Y = append(l.X, s.T), append(l.Y, l.Y[len(l.Y)-1])
			l.X, l.Y = append(l.X, s.T), append(l.Y, float64(s.N))
		}
		l.X, l.Y = append(l.X, max(c.Report.WallSeconds, l.X[len(l.X)-1])), append(l.Y, l.Y[len(l.Y)-1])
		ch.Lines = append(ch.Lines, l)
	}
	return ch
}
