package pool

import (
	"math"
	"time"

	_ "time/tzdata" // schedules name IANA zones: a host without zoneinfo still knows them
)

// Sizing is how many idle VMs a pool holds.
type Sizing struct {
	MinIdle int
	MaxIdle int
	// Demand sizes the pool from its jobs' recent arrival rate, with
	// MinIdle as the floor.
	Demand   bool
	Schedule Schedule
}

// Target is how many idle VMs the pool should hold at now: none outside its
// schedule; else MinIdle or, in demand mode, enough for the jobs expected
// to arrive while a new VM boots (arrivals over window, times lead, the
// time a VM takes to become ready, rounded up), at least MinIdle; never
// more than MaxIdle.
func (z Sizing) Target(now time.Time, arrivals int, window, lead time.Duration) int {
	if !z.Schedule.Active(now) {
		return 0
	}
	n := z.MinIdle
	if z.Demand && arrivals > 0 && window > 0 && lead > 0 {
		want := math.Ceil(float64(arrivals) * lead.Seconds() / window.Seconds())
		if want > float64(n) {
			n = int(min(want, float64(math.MaxInt32)))
		}
	}
	return max(min(n, z.MaxIdle), 0)
}
