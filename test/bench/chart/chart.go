// Package chart draws the PNG charts of the benchmark reports: grouped bar
// charts (one bar per case within each group, optional min–max spread as an
// error bar, optional logarithmic Y axis) rendered with gonum.org/v1/plot.
//
// Output is deterministic: the same chart gives the same PNG bytes. Text is set
// in the Liberation fonts that gonum/plot embeds, so no system font is needed.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Size of every chart: 16×9 cm at 150 dpi (945×531 pixels), wide enough for
// five series in four groups with the legend beside the plot.
const (
	width  = 16 * vg.Centimeter
	height = 9 * vg.Centimeter
	dpi    = 150
)

// Series is one bar per group: e.g. a case ("iptables") with one value per
// group (e.g. per percentile "p50","p90","p99","p99.9"). Lo and Hi, when not nil,
// are the spread (min and max across rounds) drawn as an error bar; same length as Values.
type Series struct {
	// Name labels the series in the legend.
	Name string
	// Values holds one value per group, in the order of Bars.Groups.
	Values []float64
	// Lo and Hi are both nil or both set; when set, Lo[i] ≤ Values[i] ≤ Hi[i].
	Lo, Hi []float64
}

// Bars is a grouped bar chart: Groups along the X axis, one coloured bar per
// series within each group, a legend with series names.
type Bars struct {
	// Title is drawn above the plot.
	Title string
	// YLabel names the Y axis, with its unit (e.g. "latency (µs)").
	YLabel string
	// Groups are the X axis categories.
	Groups []string
	// Series are drawn in order within each group, each in its own colour of
	// a fixed palette of eight colours (so at most eight series).
	Series []Series
	// LogY selects a logarithmic Y axis (latencies spanning decades); values ≤ 0 are an error then.
	LogY bool
}

// WritePNG renders b to path (creating parent directories), width×height in
// centimetres is fixed at a readable size (16×9 cm at 150 dpi, 945×531
// pixels). It validates b first and writes nothing when b is invalid: no
// groups or no series, more series than palette colours, a series whose Values,
// Lo or Hi length differs from Groups, Lo without Hi or the reverse, a NaN or
// infinite value, a value outside its [Lo, Hi] spread, or, with LogY, a value
// that is not positive.
func (b Bars) WritePNG(path string) error {
	png, err := b.render()
	if err != nil {
		return fmt.Errorf("write chart %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	return nil
}

// render validates b and returns it encoded as PNG.
func (b Bars) render() (out []byte, err error) {
	if err := b.validate(); err != nil {
		return nil, err
	}
	// gonum/plot panics on input it cannot draw; validate rules out every case
	// known to do so, and this turns an unknown one into an error rather than
	// the end of a benchmark run.
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("render chart: %v", r)
		}
	}()

	p := plot.New()
	p.Title.Text = b.Title
	p.Y.Label.Text = b.YLabel
	p.NominalX(b.Groups...)

	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	grid.Horizontal.Color = color.Gray{Y: 0xcc}
	p.Add(grid)

	bars := newGroupedBars(b.Series)
	p.Y.Tick.Marker = linearTicks{}
	if b.LogY {
		lo, hi := bars.valueRange()
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		p.Y.Min, p.Y.Max = niceBelow(lo), niceAbove(hi)
		bars.base = p.Y.Min
	}
	p.Add(bars)
	if !b.LogY {
		// Bars start at zero (DataRange includes the base); leave headroom
		// above the tallest bar or error cap.
		p.Y.Max += 0.05 * (p.Y.Max - p.Y.Min)
	}

	legend := plot.NewLegend()
	legend.Top = true
	legend.Left = true
	legend.TextStyle.Font.Size = vg.Points(10)
	legend.Padding = vg.Points(2)
	for i, s := range b.Series {
		legend.Add(s.Name, swatch{palette[i]})
	}

	canvas := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(dpi))
	const gap = vg.Length(8) // points around the chart and between plot and legend
	dc := draw.Crop(draw.New(canvas), gap, -gap, gap, -gap)
	lw := legend.Rectangle(dc).Size().X
	p.Draw(draw.Crop(dc, 0, -(lw + gap), 0, 0))
	var top vg.Length // the legend starts level with the plot, below the title
	if b.Title != "" {
		top = p.Title.TextStyle.Rectangle(b.Title).Size().Y + p.Title.Padding
	}
	legend.Draw(draw.Crop(dc, dc.Size().X-lw, 0, 0, -top))

	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: canvas}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("encode png: %w", err)
	}
	return buf.Bytes(), nil
}

// validate reports the first reason b cannot be drawn.
func (b Bars) validate() error {
	if len(b.Groups) == 0 {
		return errors.New("no groups")
	}
	if len(b.Series) == 0 {
		return errors.New("no series")
	}
	if len(b.Series) > len(palette) {
		return fmt.Errorf("%d series, at most %d can be told apart", len(b.Series), len(palette))
	}
	for _, s := range b.Series {
		if len(s.Values) != len(b.Groups) {
			return fmt.Errorf("series %q: %d values for %d groups", s.Name, len(s.Values), len(b.Groups))
		}
		if (s.Lo == nil) != (s.Hi == nil) {
			return fmt.Errorf("series %q: Lo and Hi must be both set or both nil", s.Name)
		}
		if s.Lo != nil && (len(s.Lo) != len(b.Groups) || len(s.Hi) != len(b.Groups)) {
			return fmt.Errorf("series %q: Lo has %d and Hi %d values for %d groups", s.Name, len(s.Lo), len(s.Hi), len(b.Groups))
		}
		for i, v := range s.Values {
			at := fmt.Sprintf("series %q, group %q", s.Name, b.Groups[i])
			vals := []float64{v}
			if s.Lo != nil {
				vals = append(vals, s.Lo[i], s.Hi[i])
			}
			for _, x := range vals {
				if math.IsNaN(x) || math.IsInf(x, 0) {
					return fmt.Errorf("%s: value %v is not a finite number", at, x)
				}
				if b.LogY && x <= 0 {
					return fmt.Errorf("%s: value %v is not positive, as a logarithmic axis needs", at, x)
				}
			}
			if s.Lo != nil && (s.Lo[i] > v || v > s.Hi[i]) {
				return fmt.Errorf("%s: value %v is outside its spread [%v, %v]", at, v, s.Lo[i], s.Hi[i])
			}
		}
	}
	return nil
}
