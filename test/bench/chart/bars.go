package chart

import (
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// palette is the Okabe–Ito colour-blind-safe palette, darkest first so the
// first cases of a report stand out; read only.
var palette = [...]color.RGBA{
	{0x00, 0x72, 0xb2, 0xff}, // blue
	{0xd5, 0x5e, 0x00, 0xff}, // vermillion
	{0x00, 0x9e, 0x73, 0xff}, // bluish green
	{0xe6, 0x9f, 0x00, 0xff}, // orange
	{0xcc, 0x79, 0xa7, 0xff}, // reddish purple
	{0x56, 0xb4, 0xe9, 0xff}, // sky blue
	{0xf0, 0xe4, 0x42, 0xff}, // yellow
	{0x55, 0x55, 0x55, 0xff}, // grey
}

// groupFill is the share of each group's slot on the X axis taken by its bars.
const groupFill = 0.8

// outline is the thin dark line around bars and swatches and the style of
// the error bars.
var outline = draw.LineStyle{Color: color.Gray{Y: 0x20}, Width: vg.Points(0.5)}

// groupedBars is a plot.Plotter drawing every series as one bar per group,
// side by side within the group, from base up to the value (from base down
// when the value is below it), with the spread as an error bar. Unlike
// plotter.BarChart it can start bars at the bottom of a logarithmic axis.
type groupedBars struct {
	series []Series
	base   float64
}

var (
	_ plot.Plotter     = (*groupedBars)(nil)
	_ plot.DataRanger  = (*groupedBars)(nil)
	_ plot.Thumbnailer = swatch{}
	_ plot.Ticker      = linearTicks{}
	_ plot.Ticker      = logTicks{}
)

func newGroupedBars(series []Series) *groupedBars {
	return &groupedBars{series: series}
}

// Plot implements plot.Plotter.
func (g *groupedBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	w := groupFill / float64(len(g.series))
	errStyle := outline
	errStyle.Width = vg.Points(1)
	for s, ser := range g.series {
		for i, v := range ser.Values {
			x0 := float64(i) - groupFill/2 + float64(s)*w
			left, right, mid := trX(x0), trX(x0+w), trX(x0+w/2)
			bottom, top := trY(g.base), trY(v)
			rect := []vg.Point{{X: left, Y: bottom}, {X: left, Y: top}, {X: right, Y: top}, {X: right, Y: bottom}}
			c.FillPolygon(palette[s], c.ClipPolygonY(rect))
			c.StrokeLines(outline, c.ClipLinesY(append(rect, rect[0]))...)
			if ser.Lo == nil {
				continue
			}
			lo, hi := trY(ser.Lo[i]), trY(ser.Hi[i])
			capW := (right - left) / 4
			c.StrokeLines(errStyle, c.ClipLinesY(
				[]vg.Point{{X: mid, Y: lo}, {X: mid, Y: hi}},
				[]vg.Point{{X: mid - capW, Y: lo}, {X: mid + capW, Y: lo}},
				[]vg.Point{{X: mid - capW, Y: hi}, {X: mid + capW, Y: hi}},
			)...)
		}
	}
}

// DataRange implements plot.DataRanger: one slot of width 1 per group, and
// every value and spread together with the base.
func (g *groupedBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	lo, hi := g.valueRange()
	return -0.5, float64(len(g.series[0].Values)) - 0.5, math.Min(lo, g.base), math.Max(hi, g.base)
}

// valueRange is the lowest and highest of all values and spreads.
func (g *groupedBars) valueRange() (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, s := range g.series {
		for _, vs := range [][]float64{s.Values, s.Lo, s.Hi} {
			for _, v := range vs {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	return lo, hi
}

// swatch is a series' legend entry: a bar in its colour.
type swatch struct{ color color.Color }

// Thumbnail implements plot.Thumbnailer.
func (s swatch) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{c.Min, {X: c.Min.X, Y: c.Max.Y}, c.Max, {X: c.Max.X, Y: c.Min.Y}}
	c.FillPolygon(s.color, pts)
	c.StrokeLines(outline, append(pts, pts[0]))
}

// linearTicks marks and labels about five round values (1, 2, 2.5 or 5 × 10ⁿ
// apart) on a linear axis, where plot.DefaultTicks labels about three.
type linearTicks struct{}

// Ticks implements plot.Ticker.
func (linearTicks) Ticks(lo, hi float64) []plot.Tick {
	raw := (hi - lo) / 5
	e := math.Pow10(int(math.Floor(math.Log10(raw))))
	step := 10 * e
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*e >= raw*(1-1e-9) {
			step = m * e
			break
		}
	}
	var ticks []plot.Tick
	first := math.Ceil(lo/step - 1e-9)
	for i := 0.0; ; i++ {
		v := (first + i) * step
		if v > hi+step*1e-9 {
			return ticks
		}
		if v == 0 {
			v = 0 // not -0
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 6, 64)})
	}
}

// logTicks marks 1–9 × 10ⁿ on a logarithmic axis and labels 1, 2 and 5 × 10ⁿ,
// or only the powers of ten when the axis spans more than three decades.
// Unlike plot.LogTicks it labels axes that span less than a decade.
type logTicks struct{}

// Ticks implements plot.Ticker.
func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	first, last := int(math.Floor(math.Log10(lo))), int(math.Ceil(math.Log10(hi)))
	dense := last-first <= 3
	var ticks []plot.Tick
	for e := first; e <= last; e++ {
		for m := 1; m <= 9; m++ {
			v := float64(m) * math.Pow10(e)
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || dense && (m == 2 || m == 5) {
				t.Label = strconv.FormatFloat(v, 'g', 6, 64)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// niceBelow is the largest of 1, 2 and 5 × 10ⁿ strictly below v > 0, so the
// smallest bar on a logarithmic axis still shows.
func niceBelow(v float64) float64 {
	e := math.Pow10(int(math.Floor(math.Log10(v))))
	for _, m := range []float64{5, 2, 1, 0.5} {
		if m*e < v*(1-1e-9) {
			return m * e
		}
	}
	return 0.2 * e
}

// niceAbove is the smallest of 1, 2 and 5 × 10ⁿ strictly above v > 0, so the
// tallest bar and its error cap stay inside a logarithmic axis.
func niceAbove(v float64) float64 {
	e := math.Pow10(int(math.Floor(math.Log10(v))))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e > v*(1+1e-9) {
			return m * e
		}
	}
	return 20 * e
}
