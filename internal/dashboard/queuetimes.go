package dashboard

import (
	"context"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The overview's queue-time chart: for each of the last 24 hours, the
// median and 95th percentile of how long the jobs that started in it
// waited (the Backend computes them, within the session's scope). The
// overview refreshes every 2 s and the hours change slowly, so the answer
// is kept for queueTTL per scope.

// QueueHour is an hour's queue times: of the jobs that started in it.
type QueueHour struct {
	Start    time.Time
	Jobs     int     // that started in the hour, with a known queue time
	P50, P95 float64 // seconds, nearest rank; 0 when Jobs is 0
}

const (
	queueHours = 24
	queueTTL   = time.Minute
	maxQueues  = 512 // scopes kept; past it, the cache starts again
)

// queueCache keeps recent queue hours per scope.
type queueCache struct {
	mu sync.Mutex
	m  map[string]queueEntry // guarded by mu
}

type queueEntry struct {
	at    time.Time
	hours []QueueHour
}

// queueView is what the overview shows of the queue times.
type queueView struct {
	Chart chart
	Jobs  int // started in the last 24 hours
}

// queueTimes returns the chart of the last queueHours hours for s, ending
// with the hour now is in, from the cache when it is fresh.
func (d *Dashboard) queueTimes(ctx context.Context, s Scope) (queueView, error) {
	now := d.now()
	start := now.UTC().Truncate(time.Hour).Add(-(queueHours - 1) * time.Hour)
	key := scopeKey(s)
	d.queues.mu.Lock()
	e, ok := d.queues.m[key]
	d.queues.mu.Unlock()
	if !ok || now.Sub(e.at) >= queueTTL || now.Before(e.at) || len(e.hours) == 0 || !e.hours[0].Start.Equal(start) {
		hours, err := d.be.QueueTimes(ctx, s, start, queueHours)
		if err != nil {
			return queueView{}, err
		}
		e = queueEntry{at: now, hours: hours}
		d.queues.mu.Lock()
		if d.queues.m == nil || len(d.queues.m) >= maxQueues {
			d.queues.m = map[string]queueEntry{}
		}
		d.queues.m[key] = e
		d.queues.mu.Unlock()
	}
	return makeQueueView(e.hours, start, queueHours*time.Hour), nil
}

// scopeKey names a scope's view of the data (its orgs; nil: all).
func scopeKey(s Scope) string {
	if s.Orgs == nil {
		return "*"
	}
	return "orgs:" + strings.ToLower(strings.Join(s.Orgs, ","))
}

// makeQueueView charts hours (those with jobs, each at its middle) over
// span from start.
func makeQueueView(hours []QueueHour, start time.Time, span time.Duration) queueView {
	var v queueView
	var ts []time.Time
	var p50, p95 []float64
	top := 0.0
	for _, h := range hours {
		if h.Jobs == 0 {
			continue
		}
		v.Jobs += h.Jobs
		ts = append(ts, h.Start.Add(30*time.Minute))
		p50, p95 = append(p50, h.P50), append(p95, h.P95)
		top = max(top, clean(h.P95), clean(h.P50))
	}
	v.Chart = timeChart("chart-queue", "Queue time of the jobs that started each hour", start, span, ts, niceDuration(top), fmtAxisSeconds,
		seriesIn{name: "median", class: "s-cpu", values: p50, area: true},
		seriesIn{name: "95th percentile", class: "s-p95", values: p95})
	v.Chart.EmptyText = "no job started in the last 24 hours"
	return v
}

// durationSteps are the tops a time axis takes: each half a whole number
// of a unit people read (1s, 5m, 2h, …).
var durationSteps = []float64{2, 4, 10, 20, 30, 60, 120, 240, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400}

// niceDuration is the smallest step at least s seconds (whole days past
// the last).
func niceDuration(s float64) float64 {
	s = clean(s)
	for _, st := range durationSteps {
		if s <= st {
			return st
		}
	}
	days := 86400.0
	return niceCeil(s/days) * days
}

// fmtAxisSeconds writes an axis label: 0 as "0", whole hours and minutes
// as "2h" and "5m", else a short duration.
func fmtAxisSeconds(s float64) string {
	s = clean(s)
	switch {
	case s == 0:
		return "0"
	case s >= 3600 && math.Mod(s, 3600) == 0:
		return strconv.Itoa(int(s/3600)) + "h"
	case s >= 60 && math.Mod(s, 60) == 0:
		return strconv.Itoa(int(s/60)) + "m"
	}
	return fmtSeconds(s)
}
