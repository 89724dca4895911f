package benchkit

import "testing"

func TestOverAddedRatio(t *testing.T) {
	type run struct{ v float64 }
	f := func(r run) float64 { return r.v }
	c := []run{{150}, {1060}, {140}}
	base := []run{{100}, {1000}, {0}}
	if got := Over(c, f); got != (Spread{Med: 150, Lo: 140, Hi: 1060}) {
		t.Errorf("Over = %+v", got)
	}
	if got := Added(c, base, f); got != (Spread{Med: 60, Lo: 50, Hi: 140}) {
		t.Errorf("Added = %+v, want the per-round differences 50, 60, 140", got)
	}
	// The round with a zero base is left out of the ratio.
	if got := Ratio(c, base, f); got != (Spread{Med: 1.28, Lo: 1.06, Hi: 1.5}) {
		t.Errorf("Ratio = %+v", got)
	}
	if got := TotalRSS([]Memory{{RSS: 3}, {RSS: 4, Anon: 9}}); got != 7 {
		t.Errorf("TotalRSS = %d, want 7", got)
	}
}
