package lab

import (
	"bytes"
	"context"
	"encoding/xml"
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
// with every series, one without load samples (a baseline stack has no
// phoneboot counters to sample).
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
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "<xdp>") || strings.Contains(page, "<script") {
		t.Error("a label reached the page unescaped, or the page has a script")
	}
	svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(page, -1)
	// completed + 2 per-run + 3 latency + 4 load charts
	if len(svgs) != 10 {
		t.Fatalf("%d charts, want 10", len(svgs))
	}
	lines := 0
	for _, s := range svgs {
		if err := xml.Unmarshal([]byte(s), new(struct{})); err != nil {
			t.Errorf("chart is not well-formed XML: %v\n%.300s", err, s)
		}
		lines += strings.Count(s, "<polyline")
	}
	// completed 2 + per-run phases 3+3 + latency 3x2 + load: DHCP fast and
	// Go, TFTP, registrations, power of the run with samples (HTTP is 0).
	if want := 2 + 6 + 6 + 5; lines != want {
		t.Errorf("%d lines drawn, want %d", lines, want)
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
