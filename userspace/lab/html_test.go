package lab

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sampleRuns are two runs of a small storm as the lab reports them: one
// with every series and two faults, one without load samples (a baseline
// stack has no phoneboot counters to sample) or faults.
func sampleRuns() []Report {
	phases := []string{"power", "dhcp", "register"}
	mk := func(label string, scale float64, load bool) Report {
		rec := newRecorder(phases)
		for i := range 200 {
			at := time.Duration(0)
			for k, p := range phases {
				d := time.Duration(scale * float64(time.Millisecond) * float64(1+i%37) * float64(k+1))
				at += d
				rec.done(p, d, at)
			}
			rec.complete()
		}
		rec.fail("SEP001E7A000001", "dhcp", io.ErrUnexpectedEOF)
		rep := rec.report(201, 8, "xdp", 3*time.Second)
		rep.Label = label
		if load {
			for t := 0.25; t <= 3; t += 0.25 {
				rep.Series.Load = append(rep.Series.Load, LoadSample{
					T: t, DHCPFastPerS: 1000 * t, DHCPGoPerS: 50, TFTPMBPerS: 40 * t,
					RegistrationsPerS: 300, PowerW: 6.3 * t * 10,
				})
			}
			// The daemon killed at 1 s, down 0.4 s, every phone registered
			// again 1.2 s later; cm1 stopped at 2.5 s.
			rep.Faults = []FaultReport{
				{Kind: FaultDaemon, Target: "phoneboot", Trigger: "daemon@1s", Injected: true, AtSeconds: 1, Affected: 200, Recovered: 200, RecoverySeconds: 1.2, RegisteredAtFault: 120, ReregisteredSeconds: 0.9, DownSeconds: 0.4},
				{Kind: FaultCallManager, Target: "cm1", Trigger: "callmanager@register=150", Injected: true, AtSeconds: 2.5, Affected: 150, Recovered: 150, RecoverySeconds: 0.1},
				{Kind: FaultPort, Target: "p9", Trigger: "port:p9@register=999", Error: "only 200 phones finished register"},
			}
			rep.Events = []Event{{Kind: eventDaemonKilled, AtSeconds: 1}, {Kind: eventDaemonReady, AtSeconds: 1.4}}
			for i := range 200 {
				rep.Series.Registered = append(rep.Series.Registered, RegisteredSample{T: 0.5 + float64(i)/400, N: i + 1})
			}
			rep.Integrity = &IntegrityReport{Phones: 200, StoreLeases: 200}
			rep.PeakLoad = PeakLoad{DHCPBacklog: 4, TFTPActive: 47, ProxyQueued: 2, Samples: 60}
		}
		return rep
	}
	return []Report{mk("phoneboot <xdp>", 1, true), mk("baseline", 4, false)}
}

func TestWriteHTML(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, "storm & test", time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC), sampleRuns()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"<title>storm &amp; test</title>",
		"phoneboot &lt;xdp&gt;", // labels are escaped in the table and in the SVG
		"SEP001E7A000001",
		"Latency of the register phase",
		"2026-12-06T00:00:00Z",
		"Faults and recovery: phoneboot &lt;xdp&gt;",
		"<td>daemon@1s</td><td>phoneboot</td><td>1.00</td><td>200</td><td>200</td><td>1.200</td><td>120</td><td>0.900</td><td>0.40</td>",
		"not injected: only 200 phones finished register",
		"<td>lease integrity</td><td>no violation</td><td>—</td>",
		"<td>slowest recovery (s)</td><td>1.200</td><td>—</td>",
		"Phones registered over time",
		// One phone of 201 failed: no storm time, as in the terminal's table.
		"<td>storm time (s)</td><td>-</td><td>-</td>",
		"<td>wall time (s)</td><td>3.0</td><td>3.0</td>",
		"<td>peak DHCP backlog / TFTP transfers / proxy queue</td><td>4 / 47 / 2</td><td>0 / 0 / 0</td>",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "<xdp>") || strings.Contains(page, "<script") {
		t.Error("a label reached the page unescaped, or the page has a script")
	}
	svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(page, -1)
	// completed + registered + 2 per-run + 3 latency + 4 load charts
	if len(svgs) != 11 {
		t.Fatalf("%d charts, want 11", len(svgs))
	}
	lines, spans := 0, 0
	for _, s := range svgs {
		if err := xml.Unmarshal([]byte(s), new(struct{})); err != nil {
			t.Errorf("chart is not well-formed XML: %v\n%.300s", err, s)
		}
		lines += strings.Count(s, "<polyline")
		spans += strings.Count(s, `<rect class="span"`)
	}
	// completed 2 + registered 1 + per-run phases 3+3 + latency 3x2 +
	// load: DHCP fast and Go, TFTP, registrations, power of the run with
	// samples (HTTP is 0).
	if want := 2 + 1 + 6 + 6 + 5; lines != want {
		t.Errorf("%d lines drawn, want %d", lines, want)
	}
	// The daemon's two shades (down, recovery) and cm1's one, on each time
	// chart: completed, registered, the run's phases, 4 load charts.
	if want := 3 * 7; spans != want {
		t.Errorf("%d shaded spans drawn, want %d", spans, want)
	}
	for _, pts := range regexp.MustCompile(`points="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		for _, p := range strings.Fields(pts[1]) {
			x, y, ok := strings.Cut(p, ",")
			fx, errx := strconv.ParseFloat(x, 64)
			fy, erry := strconv.ParseFloat(y, 64)
			if !ok || errx != nil || erry != nil || fx < 0 || fx > chartW || fy < 0 || fy > chartH {
				t.Fatalf("point %q outside the chart", p)
			}
		}
	}
}

func TestChartEdgeCases(t *testing.T) {
	tests := []struct {
		name  string
		c     chart
		lines int
	}{
		{"no lines", chart{Title: "t"}, 0},
		{"only unplaceable points", chart{Title: "t", LogX: true, Lines: []chartLine{{X: []float64{0, -1, math.NaN()}, Y: []float64{1, 2, 3}}}}, 0},
		{"one point", chart{Title: "t", Lines: []chartLine{{X: []float64{5}, Y: []float64{5}}}}, 1},
		{"all zero", chart{Title: "t", Lines: []chartLine{{X: []float64{0, 0}, Y: []float64{0, 0}}}}, 1},
		{"log one decade", chart{Title: "t", LogX: true, Lines: []chartLine{{X: []float64{2, 3}, Y: []float64{1, 2}}}}, 1},
		{"spans without lines", chart{Title: "t", Spans: []chartSpan{{From: 1, To: 2}}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.c.svg()
			if err := xml.Unmarshal([]byte(s), new(struct{})); err != nil {
				t.Fatalf("not well-formed: %v\n%s", err, s)
			}
			if got := strings.Count(s, "<polyline"); got != tt.lines {
				t.Errorf("%d lines, want %d", got, tt.lines)
			}
			if tt.lines == 0 && !strings.Contains(s, "no data") {
				t.Error("an empty chart does not say so")
			}
			if strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
				t.Errorf("chart has NaN or Inf coordinates:\n%s", s)
			}
		})
	}
}

// TestChartSpans: a span past the data widens the axis to show it whole;
// spans a chart cannot place, and spans on a log axis, are not drawn.
func TestChartSpans(t *testing.T) {
	line := chartLine{X: []float64{0, 1, 2}, Y: []float64{0, 5, 10}}
	c := chart{Title: "t", Lines: []chartLine{line}, Spans: []chartSpan{
		{From: 1.5, To: 4, Label: "daemon <killed>", Color: "#1f77b4"},
		{From: 1.5, To: 2, Color: "#1f77b4", Dark: true},
		{From: math.NaN(), To: 1},
		{From: 3, To: 2},
	}}
	s := c.svg()
	if err := xml.Unmarshal([]byte(s), new(struct{})); err != nil {
		t.Fatalf("not well-formed: %v\n%s", err, s)
	}
	rects := regexp.MustCompile(`<rect class="span" x="([^"]+)" y="[^"]+" width="([^"]+)"`).FindAllStringSubmatch(s, -1)
	if len(rects) != 2 || strings.Count(s, `class="mark"`) != 2 || !strings.Contains(s, "daemon &lt;killed&gt;") {
		t.Fatalf("%d spans, want 2 with one marker line and label:\n%s", len(rects), s)
	}
	x, _ := strconv.ParseFloat(rects[0][1], 64)
	w, _ := strconv.ParseFloat(rects[0][2], 64)
	if x <= chartLeft || x+w > chartW-chartRight+0.1 || w <= 0 {
		t.Errorf("span from %.1f, %.1f wide: not inside the plot", x, w)
	}
	// The axis reaches 4 s: the span's end is the plot's right edge.
	if math.Abs(x+w-(chartW-chartRight)) > 0.1 {
		t.Errorf("span ends at %.1f, want the axis widened to its end at %.1f", x+w, chartW-chartRight)
	}
	c.LogX = true
	c.Lines[0].X[0] = 0.5
	if strings.Contains(c.svg(), `class="span"`) {
		t.Error("a log axis drew spans")
	}
}

func TestChartThinsLongSeries(t *testing.T) {
	l := chartLine{}
	for i := range 10000 {
		l.X, l.Y = append(l.X, float64(i)), append(l.Y, float64(i))
	}
	f := l.finite(false)
	if len(f.X) != maxPointsPerChartSeries || f.X[0] != 0 || f.X[len(f.X)-1] != 9999 {
		t.Errorf("thinned to %d points from %v to %v, want %d from 0 to 9999", len(f.X), f.X[0], f.X[len(f.X)-1], maxPointsPerChartSeries)
	}
}

// TestHTMLRendersInChromium opens the report in headless Chromium and
// looks at the screenshot: each run's colour must cover a share of the
// page, which only happens if the browser drew the plots' lines.
func TestHTMLRendersInChromium(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (.ci/deps installs it)")
		}
		t.Skip("chromium is not installed; bash .ci/deps installs it")
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	runs := sampleRuns()
	if err := WriteHTMLFile(page, "lab report", runs); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "shot.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The flags keep a headless Chromium off the network and out of the
	// machine's profile; --no-sandbox because the tests run as root.
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--hide-scrollbars", "--window-size=1400,2600", "--screenshot="+shot, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range runs {
		n := pixelsOf(img, palette[i])
		t.Logf("%s: %d pixels of %s", r.Label, n, palette[i])
		if n < 2000 {
			t.Errorf("run %s: only %d pixels in its colour %s: its plots were not drawn", r.Label, n, palette[i])
		}
	}
	// The first run's faults are shaded in its colour over white.
	shade := blend(palette[0], spanOpacity)
	if n := pixelsOf(img, shade); n < 20000 {
		t.Errorf("only %d pixels of the faults' shade %s: the spans were not drawn", n, shade)
	} else {
		t.Logf("%d pixels of the faults' shade %s", n, shade)
	}
}

// blend is the colour #rrggbb at opacity over white, as #rrggbb.
func blend(hex string, opacity float64) string {
	v, _ := strconv.ParseUint(strings.TrimPrefix(hex, "#"), 16, 32)
	out := 0
	for shift := 16; shift >= 0; shift -= 8 {
		c := float64(v >> shift & 0xff)
		out = out<<8 | int(math.Round(255-opacity*(255-c)))
	}
	return fmt.Sprintf("#%06x", out)
}

// pixelsOf counts the pixels within a small distance of the colour #rrggbb.
func pixelsOf(img image.Image, hex string) int {
	v, _ := strconv.ParseUint(strings.TrimPrefix(hex, "#"), 16, 32)
	want := [3]int{int(v >> 16 & 0xff), int(v >> 8 & 0xff), int(v & 0xff)}
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			d := abs(int(r>>8)-want[0]) + abs(int(g>>8)-want[1]) + abs(int(bl>>8)-want[2])
			if d < 24 {
				n++
			}
		}
	}
	return n
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
