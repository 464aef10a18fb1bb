package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/store"
)

// Retries of jobs lost to Tandem or its hosts (Config.RetryInfraLosses).
//
// A job that was running when its VM ended for a reason that is Tandem's
// or its host's (failure.Kind.Infrastructure: the host went offline or was
// revoked, the VM crashed, panicked or hung, the agent lost it) gets a
// store.Retry in the transaction that records the VM's end. GitHub re-runs
// only a job that has ended, of a run that has ended, so the retry waits:
// the leader's retry loop asks GitHub about it when a completed webhook of
// its run arrives, and every retryPoll until then (webhooks get lost).
// Once GitHub has failed the job, the loop asks GitHub to re-run it; the
// re-run is a new job in the run's next attempt, which GitHub queues with a
// webhook of its own, and which Tandem places as any other. A job GitHub
// ended otherwise (it succeeded after all, or was cancelled) is not re-run.
//
// A job that failed by itself is never re-run: a runner that is alive
// reports its job's end, so GitHub fails a job before its VM ends only
// when the job failed; Tandem notes a loss only for a job still running
// when its VM ended. The store keeps one retry per repository, run, job
// name and cause, so a re-run lost again for the same cause is not
// re-run again.

const (
	// retryPoll is how often the retry loop looks at pending retries that
	// nothing woke; retryBackoffMax bounds the wait between one retry's
	// looks after errors and while GitHub has not ended the job.
	retryPoll       = 10 * time.Second
	retryBackoffMax = 5 * time.Minute
	// retryGiveUp: a retry still waiting this long after the loss is
	// given up (GitHub fails a job whose runner is gone within minutes,
	// and a run ends when its jobs have).
	retryGiveUp = 24 * time.Hour
	// retryBatch is how many due retries one pass looks at; a full batch
	// asks for another pass at once.
	retryBatch = 50
)

// retries reports whether a job of org/repo lost to Tandem or its host is
// re-run.
func (s *Server) retries(org, repo string) bool {
	return s.cfg.RetryInfraLosses != nil && s.cfg.RetryInfraLosses(org, repo)
}

// noteLoss records, in the transaction that ends runner r's VM with cause,
// that job j, running on it, is to be re-run once GitHub has failed it.
func (s *Server) noteLoss(tx store.Tx, fx *afterCommit, j store.Job, r store.Runner, cause failure.Kind, now time.Time) error {
	if !cause.Infrastructure() || !s.retries(j.Org, j.Repo) || j.RunID == 0 {
		return nil
	}
	added, err := tx.AddRetry(store.Retry{JobID: j.ID, Installation: j.Installation, Org: j.Org, Repo: j.Repo,
		RunID: j.RunID, Name: j.Name, Cause: cause, State: store.RetryPending,
		Detail: "waiting for GitHub to end the job", NextAt: now, CreatedAt: now, UpdatedAt: now})
	if err != nil {
		return err
	}
	fx.do(func() {
		if !added {
			s.log.Info("lost job not re-run: it was re-run for this cause already",
				"job", j.ID, "repo", j.Repo, "run", j.RunID, "cause", cause)
			s.metrics.retried("once-only")
			return
		}
		s.log.Warn("job lost to its host or VM: it will be re-run once GitHub has failed it",
			"job", j.ID, "repo", j.Repo, "runner", r.Name, "host", r.HostID, "cause", cause)
		s.metrics.retried("noted")
		kick(s.retryKick)
	})
	return nil
}

// wakeRetries brings forward the pending retries of a job's run, in the
// transaction that applies GitHub's word that a job of that run completed:
// the lost job itself, or the last of its run (GitHub re-runs a job only
// once its run has ended).
func (s *Server) wakeRetries(tx store.Tx, fx *afterCommit, j store.Job, now time.Time) error {
	if s.cfg.RetryInfraLosses == nil || j.RunID == 0 {
		return nil
	}
	rs, err := tx.Retries(store.RetryFilter{Repo: j.Repo, RunID: j.RunID, States: []store.RetryState{store.RetryPending}})
	if err != nil || len(rs) == 0 {
		return err
	}
	for _, r := range rs {
		if r.NextAt.After(now) {
			r.NextAt = now
			if err := tx.PutRetry(r); err != nil {
				return err
			}
		}
	}
	fx.do(func() { kick(s.retryKick) })
	return nil
}

// retryLoop carries out pending retries, on the leader.
func (s *Server) retryLoop(ctx context.Context) {
	if s.cfg.RetryInfraLosses == nil {
		return
	}
	ctx = github.Background(ctx)
	t := time.NewTicker(retryPoll)
	defer t.Stop()
	for {
		if err := s.retryPass(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("retries of lost jobs: pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.retryKick:
		}
	}
}

// retryPass looks at every pending retry that is due.
func (s *Server) retryPass(ctx context.Context) error {
	var due []store.Retry
	err := s.st.View(ctx, func(tx store.ReadTx) (err error) {
		due, err = tx.Retries(store.RetryFilter{States: []store.RetryState{store.RetryPending}, DueBy: s.now(), Limit: retryBatch})
		return err
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range due {
		if ctx.Err() != nil {
			break
		}
		errs = append(errs, s.retry(ctx, r))
	}
	if len(due) == retryBatch {
		kick(s.retryKick) // more may be due
	}
	return errors.Join(errs...)
}

// retry asks GitHub about one pending retry's job and, once GitHub has
// failed it, to re-run it; it records what came of that.
func (s *Server) retry(ctx context.Context, r store.Retry) error {
	now := s.now()
	next := r
	next.Tries++
	wait := func(detail string) {
		if now.Sub(r.CreatedAt) > retryGiveUp {
			next.State, next.Detail = store.RetryRefused, fmt.Sprintf("given up %s after the loss: %s", retryGiveUp, detail)
			return
		}
		next.Detail, next.NextAt = detail, now.Add(retryBackoff(next.Tries))
	}
	gj, err := s.gh.GetJob(ctx, r.Installation, r.Repo, r.JobID)
	switch {
	case errors.Is(err, github.ErrNotFound):
		next.State, next.Detail = store.RetryRefused, "GitHub no longer shows the job to the App: "+err.Error()
	case err != nil:
		wait("asking GitHub about the job: " + err.Error())
	case gj.Status != "completed":
		wait("waiting for GitHub to end the job (it is " + gj.Status + ")")
	case gj.Conclusion != "failure":
		next.State, next.Detail = store.RetryMoot, "GitHub ended the job as "+orText(gj.Conclusion, "completed")+": nothing to re-run"
	default:
		err = s.gh.RerunJob(ctx, r.Installation, r.Repo, r.JobID)
		switch {
		case err == nil:
			next.State, next.Detail = store.RetryRequested, "GitHub is re-running the job in the run's next attempt"
		case errors.Is(err, github.ErrConflict):
			// GitHub re-runs a job only once its whole run has ended.
			wait("waiting for the job's run to end: " + err.Error())
		case errors.Is(err, github.ErrUnauthorized), errors.Is(err, github.ErrNotFound):
			next.State, next.Detail = store.RetryRefused, "GitHub refused the re-run: "+err.Error()
		default:
			wait("asking GitHub to re-run the job: " + err.Error())
		}
	}
	next.UpdatedAt = now
	if next.State == store.RetryPending && next.Tries > 1 && r.Detail == next.Detail {
		// Nothing new to say: no log line for each look.
		return s.putRetry(ctx, r, next)
	}
	if err := s.putRetry(ctx, r, next); err != nil {
		return err
	}
	switch next.State {
	case store.RetryRequested:
		s.log.Warn("lost job re-run on GitHub", "job", r.JobID, "repo", r.Repo, "run", r.RunID, "cause", r.Cause)
		s.metrics.retried("requested")
	case store.RetryRefused:
		s.log.Error("lost job not re-run", "job", r.JobID, "repo", r.Repo, "cause", r.Cause, "why", next.Detail)
		s.metrics.retried("refused")
	case store.RetryMoot:
		s.log.Info("lost job not re-run", "job", r.JobID, "repo", r.Repo, "why", next.Detail)
		s.metrics.retried("moot")
	default:
		s.log.Info("lost job's re-run waits", "job", r.JobID, "repo", r.Repo, "why", next.Detail, "next", next.NextAt)
	}
	return nil
}

// putRetry stores next unless the stored retry moved on from was (another
// pass, or a replica that led before, got there first): an outcome only
// over a retry still pending, a further wait only over the look it
// follows.
func (s *Server) putRetry(ctx context.Context, was, next store.Retry) error {
	return s.update(ctx, func(tx store.Tx, _ *afterCommit) error {
		cur, err := tx.Retries(store.RetryFilter{JobIDs: []int64{was.JobID}})
		if err != nil || len(cur) == 0 || cur[0].State != store.RetryPending ||
			(next.State == store.RetryPending && cur[0].Tries != was.Tries) {
			return err
		}
		// A webhook may have brought it forward meanwhile: keep the
		// sooner look.
		if next.State == store.RetryPending && cur[0].NextAt.Before(was.NextAt) {
			next.NextAt = earlier(cur[0].NextAt, next.NextAt)
		}
		return tx.PutRetry(next)
	})
}

// earlier is the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// retryBackoff is the wait before a pending retry's next look: 15 s,
// doubling with each look, at most retryBackoffMax.
func retryBackoff(tries int) time.Duration {
	d := 15 * time.Second
	for i := 1; i < tries && d < retryBackoffMax; i++ {
		d *= 2
	}
	return min(d, retryBackoffMax)
}
