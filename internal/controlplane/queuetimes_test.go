package controlplane

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

func TestHourlyQueueTimes(t *testing.T) {
	start := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	now := start.Add(3*time.Hour + 20*time.Minute)
	at := func(h, m, s int) time.Time {
		return start.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second)
	}
	jobs := []store.Job{
		// Hour 0: queue times 10 s, 20 s, … 100 s (Tandem's times), ended.
		// Hour 1: GitHub's created_at and started_at win over Tandem's.
		{ID: 100, QueuedAt: at(1, 0, 0), CreatedAt: at(0, 59, 0), StartedAt: at(1, 5, 0), GitHubStartedAt: at(1, 4, 0), CompletedAt: at(1, 30, 0)},
		// Hour 2: still running.
		{ID: 101, QueuedAt: at(2, 0, 0), StartedAt: at(2, 0, 42)},
		// Left out: not started; started before the first hour; after the
		// last; no time it was created or queued.
		{ID: 102, QueuedAt: at(2, 0, 0)},
		{ID: 103, QueuedAt: at(-2, 0, 0), StartedAt: at(-1, 0, 0), CompletedAt: at(0, 30, 0)},
		{ID: 104, QueuedAt: at(3, 0, 0), StartedAt: at(4, 0, 1)},
		{ID: 105, StartedAt: at(0, 10, 0), CompletedAt: at(0, 20, 0)},
	}
	for i := 1; i <= 10; i++ {
		st := at(0, i, 0)
		jobs = append(jobs, store.Job{ID: int64(i), QueuedAt: st.Add(-time.Duration(10*i) * time.Second), StartedAt: st, CompletedAt: st.Add(time.Minute)})
	}
	got := hourlyQueueTimes(jobs, start, 4, now)
	if len(got) != 4 {
		t.Fatalf("%d hours, want 4", len(got))
	}
	want := []struct {
		jobs     int
		p50, p95 float64
	}{{10, 50, 100}, {1, 300, 300}, {1, 42, 42}, {0, 0, 0}}
	for i, w := range want {
		h := got[i]
		if !h.Start.Equal(start.Add(time.Duration(i)*time.Hour)) || h.Jobs != w.jobs || h.P50 != w.p50 || h.P95 != w.p95 {
			t.Errorf("hour %d: %+v, want %d jobs, p50 %v, p95 %v", i, h, w.jobs, w.p50, w.p95)
		}
	}
	if got := hourlyQueueTimes(nil, start, 0, now); len(got) != 0 {
		t.Errorf("no hours: %v", got)
	}
}

// Against a brute force: each hour's percentiles are the nearest rank of
// its jobs' queue times, sorted.
func TestHourlyQueueTimesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 1, 2, 5, 0, 0, 0, time.UTC)
	now := start.Add(24 * time.Hour)
	var jobs []store.Job
	for i := range 2000 {
		created := start.Add(time.Duration(rng.Int64N(int64(26*time.Hour))) - 2*time.Hour)
		started := created.Add(time.Duration(rng.ExpFloat64() * float64(3*time.Minute)))
		j := store.Job{ID: int64(i), CreatedAt: created, QueuedAt: created.Add(time.Second), StartedAt: started}
		if rng.IntN(4) > 0 {
			j.CompletedAt = started.Add(time.Duration(rng.Int64N(int64(time.Hour))))
		}
		jobs = append(jobs, j)
	}
	got := hourlyQueueTimes(jobs, start, 24, now)
	for h := range 24 {
		var qs []float64
		for _, j := range jobs {
			if !j.StartedAt.Before(start.Add(time.Duration(h)*time.Hour)) && j.StartedAt.Before(start.Add(time.Duration(h+1)*time.Hour)) &&
				!j.StartedAt.After(now) {
				qs = append(qs, float64(j.StartedAt.UnixMilli()-j.CreatedAt.UnixMilli())/1000)
			}
		}
		slices.Sort(qs)
		rank := func(q float64) float64 {
			for i := range qs {
				if float64(i+1) >= q*float64(len(qs)) {
					return qs[i]
				}
			}
			return 0
		}
		if g := got[h]; g.Jobs != len(qs) || g.P50 != rank(0.5) || g.P95 != rank(0.95) {
			t.Errorf("hour %d: %+v, want %d jobs, p50 %v, p95 %v", h, g, len(qs), rank(0.5), rank(0.95))
		}
	}
}
