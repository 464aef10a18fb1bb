package qemu

import (
	"sync"
	"time"
)

// Under TCG, an x86 guest's TSC is the host's own cycle counter (QEMU reads
// it for RDTSC), and the guest must calibrate it against the emulated PIT.
// That calibration races the host's scheduler: about one TCG boot in fifteen
// fails it ("tsc: Marking TSC unstable due to could not calculate TSC khz")
// and the kernel then hangs before userspace (measured: 3 of 40 boots). The
// host knows the counter's rate, so it tells the guest (tsc_early_khz=) and
// the guest skips the calibration: 0 hangs in 120 boots.

func rdtsc() uint64

var (
	tscOnce sync.Once
	tscKHz  uint64
)

// hostTSCkHz measures the rate of the host's cycle counter against the
// monotonic clock, once per process: two 10 ms windows, and the result only
// if they agree within 0.1%. A busy host can stall one window: it tries up
// to five pairs (at most 100 ms) before it gives up (0: the guest
// calibrates as it would, and may hang; jobvm boots it again).
func hostTSCkHz() uint64 {
	tscOnce.Do(func() {
		measure := func() float64 {
			t0, c0 := time.Now(), rdtsc()
			time.Sleep(10 * time.Millisecond)
			c1, t1 := rdtsc(), time.Now()
			return float64(c1-c0) / (float64(t1.Sub(t0).Nanoseconds()) / 1e6)
		}
		for range 5 {
			a, b := measure(), measure()
			if a > 0 && b > 0 && abs(a-b)/a < 0.001 {
				tscKHz = uint64((a + b) / 2)
				return
			}
		}
	})
	return tscKHz
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
