// Package stats has the order statistics Tandem's benchmarks report, so that
// every "p50" and "p95" in docs/benchmarks.md means the same thing.
package stats

import (
	"cmp"
	"slices"
)

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of xs by nearest rank: the
// element at index round(q·(n−1)) of xs sorted. It returns the zero value
// for no xs, and leaves xs as it was.
func Quantile[T cmp.Ordered](xs []T, q float64) T {
	var zero T
	if len(xs) == 0 {
		return zero
	}
	q = min(max(q, 0), 1)
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

// P50P95 returns the median and the 95th percentile of xs (Quantile).
func P50P95[T cmp.Ordered](xs []T) (p50, p95 T) {
	return Quantile(xs, 0.50), Quantile(xs, 0.95)
}
