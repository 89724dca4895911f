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
