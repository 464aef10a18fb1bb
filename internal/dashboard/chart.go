package dashboard

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/termtext"
)

// Charts are drawn on the server as inline SVG: a polyline (and, for the
// first series, the area under it) per series, with the axes labelled. No
// script draws them and no style attribute colours them (the page's
// Content-Security-Policy allows neither): each series has a class that
// style.css colours. Every number placed in the SVG is computed here and
// kept inside the plot area; the text (titles, names, labels) reaches the
// page through html/template's escaping (templates/chart.html).

// Chart geometry, in SVG user units (the viewBox; CSS scales it).
const (
	chartW      = 640
	chartH      = 180
	chartLeft   = 64 // room for the y labels
	chartRight  = 12
	chartTop    = 10
	chartBottom = 24 // room for the x labels
)

// chart is one chart, ready for templates/chart.html.
type chart struct {
	ID, Title     string
	W, H          int
	X0, X1        float64 // the plot area, left to right
	Y0, Y1        float64 // top to bottom
	Series        []chartSeries
	YTicks        []chartTick
	XTicks        []chartTick
	Note          string // e.g. "values above the size are drawn at the top"
	Empty         bool
	EmptyText     string // what an empty chart says
	ClippedSeries bool   // some value was above the top of the chart
}

// chartSeries is one line on a chart.
type chartSeries struct {
	Name, Class string
	Line        string // polyline points: "x,y x,y …"
	Area        string // polygon points (the line down to zero), "" for a line alone
	Peak        string // the series' largest value, formatted
}

// chartTick is a labelled position on an axis.
type chartTick struct {
	X, Y   float64
	Label  string
	Anchor string // text-anchor: start, middle or end
}

// seriesIn is a series before it is placed.
type seriesIn struct {
	name, class string
	values      []float64 // one per x
	area        bool
}

// buildChart places series over xs (seconds since the start, one per
// value) on a chart spanning span seconds, from 0 to top (yfmt writes a
// value for a label). A top that is not a positive number becomes a round
// number above the largest value. Values that are not finite count as 0,
// negative ones as 0, and ones above top are drawn at the top.
func buildChart(id, title string, xs []float64, span, top float64, yfmt func(float64) string, in ...seriesIn) chart {
	c := chart{ID: id, Title: title, W: chartW, H: chartH, EmptyText: "no samples yet",
		X0: chartLeft, X1: chartW - chartRight, Y0: chartTop, Y1: chartH - chartBottom}
	peak := 0.0
	for _, s := range in {
		for _, v := range s.values {
			peak = max(peak, clean(v))
		}
	}
	if !(top > 0) || math.IsInf(top, 0) {
		top = niceCeil(peak)
	}
	if !(span > 0) || math.IsInf(span, 0) {
		span = 1
	}
	c.Empty = len(xs) == 0
	for _, f := range []float64{0, 0.5, 1} {
		c.YTicks = append(c.YTicks, chartTick{X: c.X0 - 6, Y: c.y(f*top, top), Label: yfmt(f * top), Anchor: "end"})
	}
	for i, f := range []float64{0, 0.5, 1} {
		c.XTicks = append(c.XTicks, chartTick{X: c.x(f*span, span), Y: float64(chartH) - 6,
			Label: fmtDuration(time.Duration(f * span * float64(time.Second))), Anchor: []string{"start", "middle", "end"}[i]})
	}
	if c.Empty {
		return c
	}
	for _, s := range in {
		var line strings.Builder
		sp := chartSeries{Name: s.name, Class: s.class}
		n := min(len(xs), len(s.values))
		speak := 0.0
		for i := range n {
			v := clean(s.values[i])
			speak = max(speak, v)
			if v > top {
				c.ClippedSeries = true
			}
			if i > 0 {
				line.WriteByte(' ')
			}
			line.WriteString(coord(c.x(xs[i], span)) + "," + coord(c.y(v, top)))
		}
		sp.Line, sp.Peak = line.String(), yfmt(speak)
		if s.area && n > 0 {
			sp.Area = coord(c.x(xs[0], span)) + "," + coord(c.Y1) + " " + sp.Line + " " +
				coord(c.x(xs[n-1], span)) + "," + coord(c.Y1)
		}
		c.Series = append(c.Series, sp)
	}
	if c.ClippedSeries {
		c.Note = "values above " + yfmt(top) + " are drawn at the top"
	}
	return c
}

// timeChart is buildChart over clock time: a value at each of ts, on a
// chart from start to start+span whose x labels are UTC times of day.
func timeChart(id, title string, start time.Time, span time.Duration, ts []time.Time, top float64,
	yfmt func(float64) string, in ...seriesIn) chart {
	xs := make([]float64, len(ts))
	for i, t := range ts {
		xs[i] = t.Sub(start).Seconds()
	}
	c := buildChart(id, title, xs, span.Seconds(), top, yfmt, in...)
	for i, tk := range c.XTicks {
		f := (tk.X - c.X0) / (c.X1 - c.X0)
		c.XTicks[i].Label = start.Add(time.Duration(f * float64(span))).UTC().Format("15:04")
		if i == len(c.XTicks)-1 {
			c.XTicks[i].Label += " UTC"
		}
	}
	return c
}

// x places t seconds of span on the plot, within it.
func (c chart) x(t, span float64) float64 {
	return c.X0 + (c.X1-c.X0)*min(max(clean(t)/span, 0), 1)
}

// y places v of top on the plot, within it (0 at the bottom).
func (c chart) y(v, top float64) float64 {
	return c.Y1 - (c.Y1-c.Y0)*min(max(clean(v)/top, 0), 1)
}

// clean makes a value drawable: not a number, infinite or negative → 0.
func clean(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0
	}
	return v
}

func coord(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// niceCeil is the smallest of 1, 2 and 5 times a power of ten that is at
// least v (1 for nothing to show).
func niceCeil(v float64) float64 {
	if !(v > 0) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// niceBytes is a round number of bytes (1, 2 or 5 times a power of ten of
// KiB, MiB, …) at least v.
func niceBytes(v float64) float64 {
	if !(v > 0) || math.IsInf(v, 0) {
		return 1024
	}
	unit := 1.0
	for v/unit >= 1000 && unit < 1<<50 {
		unit *= 1024
	}
	return niceCeil(v/unit) * unit
}

func fmtBytes(v float64) string {
	return termtext.Bytes(int64(min(clean(v), math.MaxInt64/2)))
}

func fmtRate(v float64) string { return fmtBytes(v) + "/s" }

func fmtCPU(v float64) string {
	return strconv.FormatFloat(math.Round(clean(v)*100)/100, 'f', -1, 64) + " vCPU"
}
