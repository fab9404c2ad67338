package lab

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// chart is one line chart of the HTML report, drawn as inline SVG on the
// server side: the page needs no script and fetches nothing, so it opens
// the same from a mail attachment, a CI artifact or a file:// URL.
type chart struct {
	Title, XLabel, YLabel string
	LogX                  bool // decades on the x axis (latency distributions)
	Lines                 []chartLine
	// Spans shade stretches of a time axis: the faults injected and the
	// phones' recovery from them. A log axis draws none.
	Spans []chartSpan
}

// chartSpan shades From to To on the x axis, with a marker line and its
// label at From; Dark is a stronger shade (the daemon down, a port's
// power off) over the lighter one of the recovery.
type chartSpan struct {
	From, To float64
	Label    string
	Color    string
	Dark     bool
}

// The shades' opacities, light and dark.
const spanOpacity, spanOpacityDark = 0.15, 0.3

// chartLine is one series. X must be ascending.
type chartLine struct {
	Label string
	Color string
	Dash  bool
	X, Y  []float64
}

// The plot area inside the SVG's view box, in its units.
const (
	chartW, chartH          = 640.0, 300.0
	chartLeft, chartRight   = 64.0, 16.0
	chartTop, chartBottom   = 28.0, 44.0
	chartLegendRowHeight    = 16.0
	maxPointsPerChartSeries = 400
)

// palette colours runs apart; a run keeps its colour in every chart.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"}

// svg renders the chart. A chart without points says so instead of
// drawing empty axes.
func (c chart) svg() string {
	var lines []chartLine
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymax := 0.0
	for _, l := range c.Lines {
		l = l.finite(c.LogX)
		if len(l.X) == 0 {
			continue
		}
		lines = append(lines, l)
		xmin = min(xmin, l.X[0])
		xmax = max(xmax, l.X[len(l.X)-1])
		for _, y := range l.Y {
			ymax = max(ymax, y)
		}
	}
	var spans []chartSpan
	if !c.LogX && len(lines) > 0 {
		for _, s := range c.Spans {
			if math.IsNaN(s.From) || math.IsNaN(s.To) || math.IsInf(s.From, 0) || math.IsInf(s.To, 0) || s.To < s.From {
				continue
			}
			spans = append(spans, s)
			xmin, xmax = min(xmin, s.From), max(xmax, s.To)
		}
	}
	var b strings.Builder
	legendRows := len(lines)
	height := chartH + chartLegendRowHeight*float64(legendRows)
	fmt.Fprintf(&b, `<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %g %g" role="img" aria-label="%s">`,
		chartW, height, html.EscapeString(c.Title))
	fmt.Fprintf(&b, `<text class="title" x="%g" y="18">%s</text>`, chartLeft, html.EscapeString(c.Title))
	if len(lines) == 0 {
		fmt.Fprintf(&b, `<text class="nodata" x="%g" y="%g">no data in this run</text></svg>`, chartW/2, chartH/2)
		return b.String()
	}
	sx := newScale(xmin, xmax, chartLeft, chartW-chartRight, c.LogX)
	sy := newScale(0, ymax, chartH-chartBottom, chartTop, false)
	// Axes, grid and tick labels.
	for _, t := range sy.ticks() {
		y := sy.at(t)
		fmt.Fprintf(&b, `<line class="grid" x1="%g" y1="%.1f" x2="%g" y2="%.1f"/>`, chartLeft, y, chartW-chartRight, y)
		fmt.Fprintf(&b, `<text class="tick" x="%g" y="%.1f" text-anchor="end">%s</text>`, chartLeft-6, y+4, tickLabel(t))
	}
	for _, t := range sx.ticks() {
		x := sx.at(t)
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%g" x2="%.1f" y2="%g"/>`, x, chartTop, x, chartH-chartBottom)
		fmt.Fprintf(&b, `<text class="tick" x="%.1f" y="%g" text-anchor="middle">%s</text>`, x, chartH-chartBottom+16, tickLabel(t))
	}
	fmt.Fprintf(&b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g"/>`, chartLeft, chartH-chartBottom, chartW-chartRight, chartH-chartBottom)
	fmt.Fprintf(&b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g"/>`, chartLeft, chartTop, chartLeft, chartH-chartBottom)
	fmt.Fprintf(&b, `<text class="label" x="%g" y="%g" text-anchor="middle">%s</text>`,
		(chartLeft+chartW-chartRight)/2, chartH-chartBottom+34, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text class="label" x="14" y="%g" text-anchor="middle" transform="rotate(-90 14 %g)">%s</text>`,
		(chartTop+chartH-chartBottom)/2, (chartTop+chartH-chartBottom)/2, html.EscapeString(c.YLabel))
	for _, s := range spans {
		x0, x1 := sx.at(s.From), sx.at(s.To)
		opacity := spanOpacity
		if s.Dark {
			opacity = spanOpacityDark
		}
		label := html.EscapeString(s.Label)
		fmt.Fprintf(&b, `<rect class="span" x="%.1f" y="%g" width="%.1f" height="%g" fill="%s" fill-opacity="%g"><title>%s</title></rect>`,
			x0, chartTop, x1-x0, chartH-chartBottom-chartTop, s.Color, opacity, label)
		if !s.Dark {
			fmt.Fprintf(&b, `<line class="mark" x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="%s" stroke-dasharray="3 3"/>`,
				x0, chartTop, x0, chartH-chartBottom, s.Color)
			fmt.Fprintf(&b, `<text class="mark" x="%.1f" y="%g">%s</text>`, x0+3, chartTop+10, label)
		}
	}
	for i, l := range lines {
		var pts strings.Builder
		for j := range l.X {
			fmt.Fprintf(&pts, "%.1f,%.1f ", sx.at(l.X[j]), sy.at(l.Y[j]))
		}
		dash := ""
		if l.Dash {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="%s" stroke-width="2"%s points="%s"><title>%s</title></polyline>`,
			l.Color, dash, strings.TrimSpace(pts.String()), html.EscapeString(l.Label))
		ly := chartH + chartLegendRowHeight*float64(i) + 4
		fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="3"%s/>`, chartLeft, ly, chartLeft+24, ly, l.Color, dash)
		fmt.Fprintf(&b, `<text class="legend" x="%g" y="%g">%s</text>`, chartLeft+30, ly+4, html.EscapeString(l.Label))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// finite drops points a chart cannot place (NaN, infinities, and x <= 0
// on a log axis) and thins the rest to at most maxPointsPerChartSeries,
// keeping the first and the last.
func (l chartLine) finite(logX bool) chartLine {
	out := l
	out.X, out.Y = nil, nil
	for i := range min(len(l.X), len(l.Y)) {
		x, y := l.X[i], l.Y[i]
		if math.IsNaN(x) || math.IsInf(x, 0) || math.IsNaN(y) || math.IsInf(y, 0) || (logX && x <= 0) {
			continue
		}
		out.X, out.Y = append(out.X, x), append(out.Y, y)
	}
	if n := len(out.X); n > maxPointsPerChartSeries {
		xs, ys := make([]float64, 0, maxPointsPerChartSeries), make([]float64, 0, maxPointsPerChartSeries)
		for k := range maxPointsPerChartSeries {
			i := k * (n - 1) / (maxPointsPerChartSeries - 1)
			xs, ys = append(xs, out.X[i]), append(ys, out.Y[i])
		}
		out.X, out.Y = xs, ys
	}
	return out
}

// scale maps data values onto SVG coordinates, linearly or by decades.
type scale struct {
	lo, hi      float64 // data range after rounding out to ticks
	from, to    float64 // SVG coordinates
	log         bool
	step        float64 // tick step (linear)
	firstDecade int     // log: 10^firstDecade .. 10^lastDecade
	lastDecade  int
}

func newScale(lo, hi, from, to float64, log bool) scale {
	s := scale{from: from, to: to, log: log}
	if log {
		s.firstDecade = int(math.Floor(math.Log10(lo)))
		s.lastDecade = int(math.Ceil(math.Log10(hi)))
		if s.lastDecade == s.firstDecade {
			s.lastDecade++
		}
		s.lo, s.hi = math.Pow(10, float64(s.firstDecade)), math.Pow(10, float64(s.lastDecade))
		return s
	}
	if hi <= lo {
		hi = lo + 1
	}
	s.step = niceStep((hi - lo) / 5)
	s.lo = math.Floor(lo/s.step) * s.step
	s.hi = math.Ceil(hi/s.step) * s.step
	return s
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func (s scale) at(v float64) float64 {
	var f float64
	if s.log {
		f = (math.Log10(v) - math.Log10(s.lo)) / (math.Log10(s.hi) - math.Log10(s.lo))
	} else {
		f = (v - s.lo) / (s.hi - s.lo)
	}
	return s.from + f*(s.to-s.from)
}

func (s scale) ticks() []float64 {
	var ts []float64
	if s.log {
		for d := s.firstDecade; d <= s.lastDecade; d++ {
			ts = append(ts, math.Pow(10, float64(d)))
		}
		return ts
	}
	for i := 0; ; i++ {
		v := s.lo + float64(i)*s.step
		if v > s.hi+s.step/1e6 {
			return ts
		}
		ts = append(ts, v)
	}
}

// tickLabel prints a tick value briefly: 0.001, 0.5, 20, 1.5k, 2M.
func tickLabel(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	default:
		return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
	}
}
