package controlplane

import (
	"errors"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/store"
)

// applied is what applying one delivery did.
type applied struct {
	outcome string // for metrics: created, running, completed, duplicate, stale, ignored, malformed
	changed bool   // jobs or runners changed: the dispatcher should look
}

// applyDelivery applies one stored delivery inside tx and marks it processed.
func (s *Server) applyDelivery(tx store.Tx, d store.Delivery) (applied, error) {
	now := s.now().UTC()
	ev, err := github.ParseWorkflowJobEvent(d.Payload)
	if err != nil {
		// Ingest parsed it before storing; a delivery stored by an older
		// binary might still fail. It can never succeed: record why.
		return applied{outcome: "malformed"}, tx.MarkDelivery(d.GUID, now, err.Error())
	}
	res, err := s.applyEvent(tx, ev, "webhook", now)
	if err != nil {
		return res, fmt.Errorf("delivery %s (%s job %d): %w", d.GUID, ev.Action, ev.Job.ID, err)
	}
	return res, tx.MarkDelivery(d.GUID, now, "")
}

// applyEvent moves a job as a workflow_job event says. The same code applies
// webhooks and what reconcilers learn from GitHub's API (source says which).
// Events may come late, twice or out of order: each is applied only if it
// moves the job forward, so a stale event changes nothing.
func (s *Server) applyEvent(tx store.Tx, ev github.WorkflowJobEvent, source string, now time.Time) (applied, error) {
	req, ok, perr := s.cfg.Labels.Parse(ev.Job.Labels)
	if !ok && perr == nil {
		return applied{outcome: "ignored"}, nil // not a job for Tandem
	}
	if err := tx.TouchRepo(ev.Repo.FullName, ev.InstallationID, now); err != nil {
		return applied{}, err
	}
	job, err := tx.Job(ev.Job.ID)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return applied{}, err
	}
	if !known {
		job = store.Job{
			ID: ev.Job.ID, RunID: ev.Job.RunID, RunAttempt: ev.Job.RunAttempt,
			Installation: ev.InstallationID, Org: ev.Repo.Owner, Repo: ev.Repo.FullName,
			Name: ev.Job.Name, Workflow: ev.Job.WorkflowName,
			Labels: ev.Job.Labels, LabelKey: store.LabelKey(ev.Job.Labels),
			State: store.JobQueued, CreatedAt: ev.Job.CreatedAt.UTC(), QueuedAt: now, UpdatedAt: now,
		}
		if job.Org == "" {
			job.Org = ev.Org
		}
		if perr != nil {
			job.State, job.Reason, job.CompletedAt = store.JobUnschedulable, perr.Error(), now
		} else {
			job.Arch, job.VCPUs, job.MemoryMiB = req.Arch, req.VCPUs, req.MemoryMiB
			job.Reason = "waiting for a host"
		}
		reason := "queued on GitHub"
		if ev.Action != "queued" {
			reason = fmt.Sprintf("first seen as %s (the queued event was missed)", ev.Action)
		}
		if err := tx.CreateJob(job, store.Event{Source: source, Reason: reason}); err != nil {
			return applied{}, err
		}
		if source != "webhook" {
			if err := s.count(tx, source+"/jobs-found", 1); err != nil {
				return applied{}, err
			}
		}
	}
	if job.State.Terminal() {
		outcome := "stale"
		if !known {
			outcome = "unschedulable"
		}
		return applied{outcome: outcome, changed: !known}, nil
	}
	switch ev.Action {
	case "queued", "waiting":
		if known {
			return applied{outcome: "duplicate"}, nil
		}
		return applied{outcome: "created", changed: true}, nil
	case "in_progress":
		if job.State == store.JobRunning && job.RunnerName == ev.Job.RunnerName {
			return applied{outcome: "duplicate"}, nil
		}
		if job.State == store.JobRunning && ev.Job.RunnerName == "" {
			return applied{outcome: "stale"}, nil
		}
		if err := s.bindRunning(tx, job, ev.Job.RunnerName, source, now); err != nil {
			return applied{}, err
		}
		return applied{outcome: "running", changed: true}, nil
	case "completed":
		if err := s.complete(tx, job, ev.Job, source, now); err != nil {
			return applied{}, err
		}
		return applied{outcome: "completed", changed: true}, nil
	}
	return applied{outcome: "ignored"}, nil
}

// bindRunning records that runnerName took job. If that runner is ours and
// was made for another job of the same labels, the two jobs swap runners:
// the other job gets the runner this job was holding, so every queued job
// still has one VM on its way.
func (s *Server) bindRunning(tx store.Tx, job store.Job, runnerName, source string, now time.Time) error {
	held := job.RunnerName // our runner this job was holding, if any
	if held == runnerName {
		held = ""
	}
	job.State, job.RunnerName, job.HostID, job.StartedAt, job.UpdatedAt = store.JobRunning, runnerName, "", now, now
	job.Reason = "running on " + runnerName
	if runnerName == "" {
		job.Reason = "running (GitHub did not name the runner)"
	}
	var r store.Runner
	ours := false
	if runnerName != "" {
		var err error
		r, err = tx.Runner(runnerName)
		switch {
		case err == nil:
			ours = true
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if ours {
		job.HostID = r.HostID
		prev := r.JobID
		r.JobID, r.UpdatedAt = job.ID, now
		if r.State != store.RunnerEnded {
			r.State, r.BusyAt = store.RunnerBusy, now
		}
		if err := tx.PutRunner(r); err != nil {
			return err
		}
		if prev != 0 && prev != job.ID {
			if err := s.handOver(tx, prev, held, runnerName, now); err != nil {
				return err
			}
			held = ""
		}
	} else if runnerName != "" {
		job.Reason = "running on " + runnerName + ", a runner Tandem did not make"
	}
	if err := tx.UpdateJob(job, store.Event{Source: source, Reason: job.Reason}); err != nil {
		return err
	}
	if held != "" {
		return s.unbind(tx, held, job.ID, now)
	}
	return nil
}

// handOver gives job prevID, whose runner took another job, the runner
// spare (or sends it back to the queue when there is none).
func (s *Server) handOver(tx store.Tx, prevID int64, spare, taker string, now time.Time) error {
	prev, err := tx.Job(prevID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if prev.State.Terminal() || prev.State == store.JobRunning || prev.RunnerName != taker {
		if spare != "" {
			return s.unbind(tx, spare, 0, now)
		}
		return nil
	}
	if spare != "" {
		r, err := tx.Runner(spare)
		if err != nil {
			return err
		}
		if r.State != store.RunnerEnded && r.LabelKey == prev.LabelKey {
			r.JobID, r.UpdatedAt = prev.ID, now
			if err := tx.PutRunner(r); err != nil {
				return err
			}
			prev.State, prev.RunnerName, prev.HostID = jobStateFor(r), r.Name, r.HostID
			prev.Reason = fmt.Sprintf("its runner %s took another job; now waiting for %s", taker, r.Name)
			prev.UpdatedAt = now
			return tx.UpdateJob(prev, store.Event{Source: "webhook", Reason: prev.Reason})
		}
		if err := s.unbind(tx, spare, 0, now); err != nil {
			return err
		}
	}
	prev.State, prev.RunnerName, prev.HostID, prev.UpdatedAt = store.JobQueued, "", "", now
	prev.Reason = fmt.Sprintf("its runner %s took another job", taker)
	return tx.UpdateJob(prev, store.Event{Source: "webhook", Reason: prev.Reason})
}

// jobStateFor is the state of a not-yet-running job waiting for runner r.
func jobStateFor(r store.Runner) store.JobState {
	if r.GitHubID != 0 && r.State != store.RunnerAssigned {
		return store.JobLaunching
	}
	return store.JobScheduled
}

// unbind detaches one of our runners from job jobID (0: from whatever it
// holds) so the dispatcher re-assigns it to a queued job or stops it.
func (s *Server) unbind(tx store.Tx, name string, jobID int64, now time.Time) error {
	r, err := tx.Runner(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if r.State == store.RunnerEnded || r.State == store.RunnerBusy || (jobID != 0 && r.JobID != jobID) {
		return nil
	}
	r.JobID, r.UpdatedAt = 0, now
	return tx.PutRunner(r)
}

// complete ends a job as GitHub reports it. A job cancelled before any
// runner took it frees the runner VM made for it.
func (s *Server) complete(tx store.Tx, job store.Job, gj github.Job, source string, now time.Time) error {
	held := ""
	if job.State != store.JobRunning {
		held = job.RunnerName
	}
	if gj.RunnerName != "" && job.RunnerName != gj.RunnerName {
		if job.State != store.JobRunning {
			// The in_progress event was missed: bind first, so runner
			// accounting (and the swap) stays right.
			if err := s.bindRunning(tx, job, gj.RunnerName, source, now); err != nil {
				return err
			}
			var err error
			if job, err = tx.Job(job.ID); err != nil {
				return err
			}
			held = ""
		}
	}
	job.State, job.Conclusion, job.CompletedAt, job.UpdatedAt = store.JobCompleted, gj.Conclusion, now, now
	job.Reason = "completed: " + gj.Conclusion
	if gj.Conclusion == "cancelled" {
		job.State, job.Reason = store.JobCancelled, "cancelled on GitHub"
	}
	if gj.Conclusion == "" {
		job.Reason = "completed"
	}
	if err := tx.UpdateJob(job, store.Event{Source: source, Reason: job.Reason}); err != nil {
		return err
	}
	if held != "" {
		if err := s.unbind(tx, held, job.ID, now); err != nil {
			return err
		}
		if job.State == store.JobCancelled {
			return s.count(tx, "reconciler/cancelled-queued/vms-freed", 1)
		}
	}
	return nil
}
