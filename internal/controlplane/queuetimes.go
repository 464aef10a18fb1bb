package controlplane

import (
	"context"
	"time"

	"github.com/tandem-ci/tandem/internal/dashboard"
	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// The overview's queue-time chart: per hour, the median and 95th
// percentile (nearest rank) of the queue times of the jobs that started in
// that hour. A job's queue time is what statistics count
// (store.Job.RunTimes): from GitHub's created_at, where GitHub gave it,
// to its start (GitHub's, else Tandem's). It is read from the jobs
// themselves, a day's worth and queueLookback more: a job that had waited
// longer than that before the first hour is left out.

const queueLookback = 6 * time.Hour

func (b dashBackend) QueueTimes(ctx context.Context, s dashboard.Scope, start time.Time, hours int) ([]dashboard.QueueHour, error) {
	var jobs []store.Job
	err := b.a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		jobs, err = tx.Jobs(store.JobFilter{QueuedSince: start.Add(-queueLookback), Orgs: b.principal(s).scope()})
		return err
	})
	if err != nil {
		return nil, err
	}
	return hourlyQueueTimes(jobs, start, hours, b.a.now()), nil
}

// hourlyQueueTimes returns, for each of hours hours from start, the queue
// times of the jobs that started in it. A job that still runs counts (its
// queue time ended when it started); one that has not started does not.
func hourlyQueueTimes(jobs []store.Job, start time.Time, hours int, now time.Time) []dashboard.QueueHour {
	per := make([][]float64, max(hours, 0))
	for _, j := range jobs {
		if j.CompletedAt.IsZero() && j.GitHubCompletedAt.IsZero() {
			j.CompletedAt = now // RunTimes wants an end; the queue time does not depend on it
		}
		_, queue, _, queued := j.RunTimes()
		if !queued {
			continue
		}
		started := j.StartedAt
		if !j.GitHubStartedAt.IsZero() {
			started = j.GitHubStartedAt
		}
		if started.Before(start) {
			continue
		}
		if h := int(started.Sub(start) / time.Hour); h < len(per) {
			per[h] = append(per[h], queue)
		}
	}
	out := make([]dashboard.QueueHour, len(per))
	for i, qs := range per {
		out[i] = dashboard.QueueHour{Start: start.Add(time.Duration(i) * time.Hour), Jobs: len(qs),
			P50: rightsize.Quantile(qs, 0.5), P95: rightsize.P95(qs)}
	}
	return out
}
