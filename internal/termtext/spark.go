package termtext

import (
	"fmt"
	"math"
	"strings"
)

var bars = []rune("▁▂▃▄▅▆▇█")

// Sparkline draws values as one line of at most width block characters,
// scaled from 0 to top (the largest value when top <= 0): each character
// stands for an equal run of values and shows the largest of them, so no
// peak is lost. Values that are not numbers count as 0.
func Sparkline(values []float64, width int, top float64) string {
	if len(values) == 0 || width <= 0 {
		return ""
	}
	if top <= 0 {
		for _, v := range values {
			if v > top && !math.IsInf(v, 0) {
				top = v
			}
		}
	}
	n := min(width, len(values))
	var b strings.Builder
	for i := range n {
		lo, hi := i*len(values)/n, (i+1)*len(values)/n
		peak := 0.0
		for _, v := range values[lo:hi] {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				peak = max(peak, v)
			}
		}
		level := 0
		if top > 0 {
			level = int(math.Round(min(peak/top, 1) * float64(len(bars)-1)))
		}
		b.WriteRune(bars[level])
	}
	return b.String()
}

// Bytes renders a byte count in binary units: "512 B", "3.1 MiB", "1.0 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}
