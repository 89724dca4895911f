package benchkit

import (
	"fmt"
	"slices"
)

// Spread is the median and range of one figure across rounds.
type Spread struct{ Med, Lo, Hi float64 }

// SpreadOf returns the median and range of v (zero for none).
func SpreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Spread{Med: med, Lo: v[0], Hi: v[n-1]}
}

// Format renders "median (min – max)" with prec decimals.
func (s Spread) Format(prec int) string {
	return fmt.Sprintf("%.*f (%.*f – %.*f)", prec, s.Med, prec, s.Lo, prec, s.Hi)
}

// Over takes f from each run and returns the spread of the values.
func Over[R any](rs []R, f func(R) float64) Spread {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return SpreadOf(v)
}

// Added pairs each run of c with the run of base from the same round and
// spreads c's figure minus base's, so drift between rounds hits both alike.
func Added[R any](c, base []R, f func(R) float64) Spread {
	n := min(len(c), len(base))
	v := make([]float64, n)
	for i := range n {
		v[i] = f(c[i]) - f(base[i])
	}
	return SpreadOf(v)
}

// Ratio pairs rounds like Added and spreads c's figure divided by base's
// (rounds where base's is zero left out).
func Ratio[R any](c, base []R, f func(R) float64) Spread {
	n := min(len(c), len(base))
	v := make([]float64, 0, n)
	for i := range n {
		if b := f(base[i]); b != 0 {
			v = append(v, f(c[i])/b)
		}
	}
	return SpreadOf(v)
}
