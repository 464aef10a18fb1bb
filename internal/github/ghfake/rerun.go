package ghfake

import (
	"fmt"
	"net/http"
)

// maxReruns is how many times a workflow run may be re-run, re-runs of
// single jobs included: its attempts go up to maxReruns+1.
const maxReruns = 50

// Why GitHub refuses to re-run a job: the 403 messages.
const (
	msgNoPermission  = "Resource not accessible by integration"
	msgRunNotDone    = "This workflow is already running"
	msgAlreadyRerun  = "This job was already re-run; only its latest attempt can be re-run"
	msgTooManyReruns = "This workflow run cannot be re-run: it has been re-run the maximum of 50 times"
)

// rerunRefusal returns why job j cannot be re-run, as GitHub's 403 message,
// or "" when it can: its whole run (its latest attempt) has completed, no
// later attempt re-ran it, and the run has attempts left.
func rerunRefusal(j *job) string {
	switch st, _ := j.run.status(); {
	case st != StatusCompleted:
		return msgRunNotDone
	case j.rerunAs != nil:
		return msgAlreadyRerun
	case j.run.attempt > maxReruns:
		return msgTooManyReruns
	}
	return ""
}

// rerunLocked starts a new attempt of j's run in which j runs again as a
// new job: a new id, the same name, labels, script, runner group and
// environment, queued (or waiting for the environment's approval) with a
// workflow_job webhook, as QueueRun's jobs are. j keeps its id, attempt and
// conclusion; the run is no longer completed.
func (s *Server) rerunLocked(j *job) *job {
	rn := j.run
	now := s.now()
	rn.attempt++
	rn.startedAt, rn.updatedAt = now, now
	nj := s.addJobLocked(&job{
		run: rn, name: j.name, script: j.script, labels: append([]string(nil), j.labels...),
		group: j.group, environment: j.environment, rerunOf: j,
	})
	j.rerunAs = nj
	s.log.Debug("ghfake: job re-run", "job", j.id, "as", nj.id, "run", rn.id, "attempt", rn.attempt)
	s.emitLocked(nj.status, nj)
	s.wakeRunnersLocked()
	return nj
}

// postJobRerun is POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun:
// 201 with {} once the job's new attempt is queued. The body, optional, is
// {"enable_debug_logging": bool}; the flag is accepted and changes nothing.
// A repository the token cannot see, or a job not in it, is a 404; an
// installation without actions: write gets a 403, and so does a job that
// cannot be re-run (rerunRefusal).
func (s *Server) postJobRerun(w http.ResponseWriter, r *http.Request, inst *installation) {
	var req struct {
		EnableDebugLogging bool `json:"enable_debug_logging"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.scopeLocked(r, inst); !ok {
		notFound(w)
		return
	}
	if !inst.can("actions", "write") {
		writeError(w, http.StatusForbidden, msgNoPermission)
		return
	}
	j, ok := s.jobLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	if why := rerunRefusal(j); why != "" {
		writeError(w, http.StatusForbidden, why)
		return
	}
	s.rerunLocked(j)
	writeJSON(w, http.StatusCreated, struct{}{})
}

// RerunJob re-runs a job as a user with write access does from its run's
// page ("Re-run job"), with the rules of the REST endpoint but no App
// permission: the run gets a new attempt, in which the job runs again as a
// new job (whose id it returns), queued with a workflow_job "queued"
// webhook (none where the App is not installed; Faults apply). A job whose
// run has not completed, or that was re-run already, is an ErrInvalid.
func (s *Server) RerunJob(id int64) (newID int64, err error) {
	err = s.withJob("rerun", id, func(j *job) error {
		if s.closed {
			return ErrClosed
		}
		if why := rerunRefusal(j); why != "" {
			return fmt.Errorf("%w: %s", ErrInvalid, why)
		}
		newID = s.rerunLocked(j).id
		return nil
	})
	return newID, err
}
