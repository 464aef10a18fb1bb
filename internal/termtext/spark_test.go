package termtext

import (
	"math"
	"testing"
)

func TestSparkline(t *testing.T) {
	for _, c := range []struct {
		values []float64
		width  int
		top    float64
		want   string
	}{
		{[]float64{0, 1, 2, 3, 4, 5, 6, 7}, 8, 0, "▁▂▃▄▅▆▇█"},
		{[]float64{0, 0, 0, 9, 0, 0}, 3, 0, "▁█▁"}, // the peak survives
		{[]float64{1, 1}, 10, 2, "▅▅"},
		{[]float64{5, math.NaN(), math.Inf(1), -3}, 4, 5, "█▁▁▁"},
		{nil, 5, 0, ""},
		{[]float64{0, 0}, 2, 0, "▁▁"},
	} {
		if got := Sparkline(c.values, c.width, c.top); got != c.want {
			t.Errorf("Sparkline(%v, %d, %v) = %q, want %q", c.values, c.width, c.top, got, c.want)
		}
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 1 << 30: "1.0 GiB", 1 << 62: "4096.0 PiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
