package chart

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// latency is a chart like the mesh benchmark's: five cases, four percentiles,
// latencies in µs spanning more than a decade, with spreads.
func latency(logY bool) Bars {
	groups := []string{"p50", "p90", "p99", "p99.9"}
	series := []Series{}
	for i, name := range []string{"direct", "iptables", "eBPF", "eBPF + sk_msg", "nginx"} {
		base := 90 * (1 + float64(i))
		s := Series{Name: name}
		for g := range groups {
			v := base * math.Pow(2.5, float64(g))
			s.Values = append(s.Values, v)
			s.Lo = append(s.Lo, 0.9*v)
			s.Hi = append(s.Hi, 1.15*v)
		}
		series = append(series, s)
	}
	return Bars{Title: "HTTP/1.1 at 1000 req/s", YLabel: "latency (µs)", Groups: groups, Series: series, LogY: logY}
}

// decode reads the PNG at path and checks its size.
func decode(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	if got, want := img.Bounds().Size(), (image.Point{X: 945, Y: 531}); got != want {
		t.Errorf("size = %v, want %v", got, want)
	}
	return img
}

// colours counts the distinct colours of img.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// isColour reports whether c is exactly the i-th palette colour.
func isColour(c color.Color, i int) bool {
	r, g, b, _ := c.RGBA()
	want := palette[i]
	return uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(b>>8) == want.B
}

func TestWritePNG(t *testing.T) {
	tests := []struct {
		name string
		bars Bars
	}{
		{"linear with spread", latency(false)},
		{"log with spread", latency(true)},
		{"linear without spread, negative and zero values", Bars{
			Title: "change", YLabel: "%", Groups: []string{"a", "b"},
			Series: []Series{{Name: "x", Values: []float64{-3, 0}}, {Name: "y", Values: []float64{2, 5}}},
		}},
		{"log within one decade", Bars{
			YLabel: "req/s", Groups: []string{"1", "8", "64"},
			Series: []Series{{Name: "only", Values: []float64{210, 260, 330}}},
			LogY:   true,
		}},
		{"all zero", Bars{Groups: []string{"g"}, Series: []Series{{Name: "z", Values: []float64{0}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A nested directory that does not exist yet.
			path := filepath.Join(t.TempDir(), "docs", "benchmarks", "chart.png")
			if err := tt.bars.WritePNG(path); err != nil {
				t.Fatalf("WritePNG: %v", err)
			}
			img := decode(t, path)
			if n := colours(img); n < 10 {
				t.Errorf("%d distinct colours, want a drawn chart (≥ 10 with text antialiasing)", n)
			}
			// One bar in its colour per non-zero value, and a legend swatch.
			for i, s := range tt.bars.Series {
				want := 1
				for _, v := range s.Values {
					if v != 0 {
						want++
					}
				}
				if got := len(barHeights(img, i)); got != want {
					t.Errorf("series %q: %d runs of its colour %v, want %d bars and a legend swatch", s.Name, got, palette[i], want-1)
				}
			}
		})
	}
}

func TestWritePNGDeterministic(t *testing.T) {
	dir := t.TempDir()
	var files [2][]byte
	for i := range files {
		path := filepath.Join(dir, "chart"+string(rune('a'+i))+".png")
		if err := latency(true).WritePNG(path); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[i] = b
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Error("the same chart rendered twice gave different PNG bytes")
	}
}

// TestSpread checks that Lo and Hi are drawn: error bars add pixels in the
// dark outline colour to the same chart without them.
func TestSpread(t *testing.T) {
	dark := func(b Bars) int {
		path := filepath.Join(t.TempDir(), "c.png")
		if err := b.WritePNG(path); err != nil {
			t.Fatal(err)
		}
		img := decode(t, path)
		n := 0
		for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
			for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
				if img.At(x, y) == color.Color(color.RGBA{0x20, 0x20, 0x20, 0xff}) {
					n++
				}
			}
		}
		return n
	}
	with := latency(false)
	without := latency(false)
	without.Series = nil
	for _, s := range with.Series {
		without.Series = append(without.Series, Series{Name: s.Name, Values: s.Values})
	}
	// 20 error bars, each a whisker and two caps of 1 pt (2 px) lines.
	if w, wo := dark(with), dark(without); w < wo+20*2*10 {
		t.Errorf("%d outline-coloured pixels with spreads, %d without: error bars not drawn", w, wo)
	}
}

// TestLogY checks that a logarithmic axis shows ratios, not differences: bars
// of 10, 100 and 1000 rise in equal steps, where a linear axis draws the
// second at a tenth of the third.
func TestLogY(t *testing.T) {
	values := []float64{10, 100, 1000}
	heights := func(logY bool) []int {
		b := Bars{Groups: []string{"a", "b", "c"}, Series: []Series{{Name: "s", Values: values}}, LogY: logY}
		path := filepath.Join(t.TempDir(), "c.png")
		if err := b.WritePNG(path); err != nil {
			t.Fatal(err)
		}
		hs := barHeights(decode(t, path), 0)
		// The three bars, then the legend swatch at the right.
		if len(hs) != len(values)+1 {
			t.Fatalf("%d runs of the series colour, want %d bars and a legend swatch", len(hs), len(values))
		}
		return hs[:len(values)]
	}

	lin := heights(false)
	if !(lin[0] < lin[1] && lin[1] < lin[2]) {
		t.Fatalf("linear bar heights %v px not increasing", lin)
	}
	if r := float64(lin[1]) / float64(lin[2]); r < 0.07 || r > 0.13 {
		t.Errorf("linear: 100 drawn %d px against 1000's %d, want about a tenth", lin[1], lin[2])
	}

	log := heights(true)
	if !(log[0] > 0 && log[0] < log[1] && log[1] < log[2]) {
		t.Fatalf("log bar heights %v px not increasing", log)
	}
	// Equal ratios, equal steps (within rounding to pixels).
	if d1, d2 := log[1]-log[0], log[2]-log[1]; math.Abs(float64(d1-d2)) > 2 {
		t.Errorf("log: bar heights %v px step by %d and %d for ×10 each, want equal steps", log, d1, d2)
	}
}

// barHeights finds, left to right, each run of columns holding pixels of the
// i-th palette colour and returns its tallest column's count of them.
func barHeights(img image.Image, i int) []int {
	var hs []int
	inRun := false
	for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
		n := 0
		for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
			if isColour(img.At(x, y), i) {
				n++
			}
		}
		switch {
		case n > 0 && !inRun:
			hs = append(hs, n)
		case n > 0:
			hs[len(hs)-1] = max(hs[len(hs)-1], n)
		}
		inRun = n > 0
	}
	return hs
}

func TestWritePNGInvalid(t *testing.T) {
	groups := []string{"p50", "p99"}
	one := func(s Series) []Series { return []Series{s} }
	tests := []struct {
		name string
		bars Bars
		want string
	}{
		{"no groups", Bars{Series: one(Series{Name: "a"})}, "no groups"},
		{"no series", Bars{Groups: groups}, "no series"},
		{"too many series", Bars{Groups: []string{"g"}, Series: make([]Series, 9)}, "9 series, at most 8"},
		{"values length", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1}})},
			`series "a": 1 values for 2 groups`},
		{"Lo without Hi", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{1, 2}})},
			`series "a": Lo and Hi must be both set or both nil`},
		{"Hi without Lo", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Hi: []float64{1, 2}})},
			`series "a": Lo and Hi must be both set or both nil`},
		{"Lo length", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{1}, Hi: []float64{1, 2}})},
			`series "a": Lo has 1 and Hi 2 values for 2 groups`},
		{"Hi length", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{1, 2}, Hi: []float64{}})},
			`series "a": Lo has 2 and Hi 0 values for 2 groups`},
		{"NaN value", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, math.NaN()}})},
			`series "a", group "p99": value NaN is not a finite number`},
		{"Inf value", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{math.Inf(1), 1}})},
			`series "a", group "p50": value +Inf is not a finite number`},
		{"NaN in Lo", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{math.NaN(), 2}, Hi: []float64{1, 2}})},
			`series "a", group "p50": value NaN is not a finite number`},
		{"-Inf in Hi", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{1, 2}, Hi: []float64{1, math.Inf(-1)}})},
			`series "a", group "p99": value -Inf is not a finite number`},
		{"value above spread", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{1, 3}, Lo: []float64{1, 1}, Hi: []float64{1, 2}})},
			`series "a", group "p99": value 3 is outside its spread [1, 2]`},
		{"value below spread", Bars{Groups: groups, Series: one(Series{Name: "a", Values: []float64{0.5, 2}, Lo: []float64{1, 1}, Hi: []float64{1, 2}})},
			`series "a", group "p50": value 0.5 is outside its spread [1, 1]`},
		{"log zero", Bars{Groups: groups, LogY: true, Series: one(Series{Name: "a", Values: []float64{1, 0}})},
			`series "a", group "p99": value 0 is not positive`},
		{"log negative", Bars{Groups: groups, LogY: true, Series: one(Series{Name: "a", Values: []float64{-1, 1}})},
			`series "a", group "p50": value -1 is not positive`},
		{"log non-positive Lo", Bars{Groups: groups, LogY: true, Series: one(Series{Name: "a", Values: []float64{1, 2}, Lo: []float64{0, 1}, Hi: []float64{1, 2}})},
			`series "a", group "p50": value 0 is not positive`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sub", "chart.png")
			err := tt.bars.WritePNG(path)
			if err == nil {
				t.Fatal("WritePNG succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "write chart "+path+": ") {
				t.Errorf("error %q does not name the chart", err)
			}
			if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
				t.Errorf("invalid chart created %s (stat: %v)", filepath.Dir(path), err)
			}
		})
	}
}
