package stats

import (
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	xs := []int{9, 1, 8, 2, 7, 3, 6, 4, 5, 10} // 1..10, shuffled
	for _, c := range []struct {
		q    float64
		want int
	}{{0, 1}, {0.5, 6}, {0.95, 10}, {0.9, 9}, {1, 10}, {-1, 1}, {2, 10}} {
		if got := Quantile(xs, c.q); got != c.want {
			t.Errorf("Quantile(1..10, %v) = %d, want %d", c.q, got, c.want)
		}
	}
	if xs[0] != 9 {
		t.Errorf("Quantile sorted its argument: %v", xs)
	}
	if got := Quantile([]float64(nil), 0.5); got != 0 {
		t.Errorf("Quantile(nil) = %v, want 0", got)
	}
	p50, p95 := P50P95([]time.Duration{3, 1, 2})
	if p50 != 2 || p95 != 3 {
		t.Errorf("P50P95(1,2,3) = %v, %v; want 2, 3", p50, p95)
	}
	if got := Quantile([]int{7}, 0.95); got != 7 {
		t.Errorf("Quantile of one = %d, want 7", got)
	}
}
