package ghfake

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

const (
	defaultAcquireWait = 30 * time.Second
	maxAcquireWait     = 60 * time.Second
)

func runnerError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, runnerapi.Error{Message: msg})
}

// runnerSession opens the single session a JIT config allows: the runner
// comes online.
func (s *Server) runnerSession(w http.ResponseWriter, r *http.Request) {
	tok, ok := bearer(r, runnerapi.SchemeRunnerToken)
	if !ok {
		runnerError(w, http.StatusUnauthorized, "missing runner token")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.usedJIT[tok] {
		runnerError(w, http.StatusConflict, "jit config already used")
		return
	}
	rr, ok := s.runners[s.jitTokens[tok]]
	if !ok {
		runnerError(w, http.StatusUnauthorized, "unknown runner token")
		return
	}
	if !rr.sessionAt.IsZero() {
		runnerError(w, http.StatusConflict, "jit config already used")
		return
	}
	rr.sessionAt = s.now()
	st := secret("rs_")
	s.sessions[st] = &session{runnerID: rr.id, runnerName: rr.name}
	s.log.Debug("ghfake: runner online", "runner", rr.name, "id", rr.id)
	writeJSON(w, http.StatusOK, runnerapi.Session{RunnerID: rr.id, RunnerName: rr.name, Token: st})
}

// runnerAuth returns the request's session.
func (s *Server) runnerAuth(w http.ResponseWriter, r *http.Request) (*session, bool) {
	tok, ok := bearer(r, runnerapi.SchemeRunnerSession)
	if !ok {
		runnerError(w, http.StatusUnauthorized, "missing runner session")
		return nil, false
	}
	s.mu.Lock()
	sess, ok := s.sessions[tok]
	s.mu.Unlock()
	if !ok {
		runnerError(w, http.StatusUnauthorized, "unknown runner session")
		return nil, false
	}
	return sess, true
}

// runnerAcquire hands the runner a queued job it matches, waiting up to
// ?wait= for one. As on GitHub, any idle online runner whose labels and
// scope match may take any queued job, chosen at random.
func (s *Server) runnerAcquire(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.runnerAuth(w, r)
	if !ok {
		return
	}
	wait := defaultAcquireWait
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			runnerError(w, http.StatusBadRequest, "bad wait duration")
			return
		}
		wait = min(d, maxAcquireWait)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			runnerError(w, http.StatusServiceUnavailable, "server closed")
			return
		}
		rr, ok := s.runners[sess.runnerID]
		if !ok {
			s.mu.Unlock()
			runnerError(w, http.StatusNotFound, "runner is no longer registered")
			return
		}
		if j := s.pickJobLocked(rr); j != nil {
			job := runnerapi.Job{
				ID: j.id, RunID: j.run.id, Repo: j.run.repo.fullName(), Name: j.name,
				Script: j.script, RunAttempt: j.attempt, Labels: append([]string(nil), j.labels...),
			}
			s.mu.Unlock()
			writeJSON(w, http.StatusOK, job)
			return
		}
		changed := s.jobsChanged
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
	}
}

// pickJobLocked returns the runner's job: the one it already holds (a retry
// of an acquire whose answer was lost), or a newly claimed queued job, or nil.
func (s *Server) pickJobLocked(rr *runner) *job {
	if rr.jobID != 0 {
		if j := s.jobs[rr.jobID]; j.status == StatusInProgress {
			return j
		}
		return nil
	}
	var match []*job
	for _, id := range s.jobOrder {
		j := s.jobs[id]
		if j.status == StatusQueued && rr.covers(j.run.repo) && rr.matches(j.labels) && s.admitsLocked(rr, j) {
			match = append(match, j)
		}
	}
	if len(match) == 0 {
		return nil
	}
	j := match[s.rng.IntN(len(match))]
	now := s.now()
	j.status = StatusInProgress
	j.runnerID, j.runnerName = rr.id, rr.name
	j.groupID, j.groupName = s.claimGroupLocked(rr)
	j.startedAt = now
	j.heard = time.Now()
	j.claims++
	j.run.updatedAt = now
	rr.jobID = j.id
	s.log.Debug("ghfake: job claimed", "job", j.id, "runner", rr.name)
	s.emitLocked("in_progress", j)
	return j
}

// sessionJobLocked returns job {id} if it belongs to the session's runner.
func (s *Server) sessionJobLocked(r *http.Request, sess *session) (*job, bool) {
	id, ok := pathID(r, "id")
	if !ok {
		return nil, false
	}
	j, ok := s.jobs[id]
	return j, ok && j.runnerID == sess.runnerID
}

func (s *Server) runnerHeartbeat(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.runnerAuth(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.sessionJobLocked(r, sess)
	if !ok {
		runnerError(w, http.StatusNotFound, "job not found")
		return
	}
	j.heard = time.Now()
	writeJSON(w, http.StatusOK, runnerapi.Heartbeat{Cancelled: j.cancelRequested})
}

func (s *Server) runnerComplete(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.runnerAuth(w, r)
	if !ok {
		return
	}
	var c runnerapi.Completion
	if err := decodeBody(r, &c); err != nil {
		runnerError(w, http.StatusBadRequest, "bad completion body")
		return
	}
	if c.Conclusion != runnerapi.ConclusionSuccess && c.Conclusion != runnerapi.ConclusionFailure {
		runnerError(w, http.StatusUnprocessableEntity, "conclusion must be success or failure")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.sessionJobLocked(r, sess)
	switch {
	case !ok:
		runnerError(w, http.StatusNotFound, "job not found")
		return
	case sess.completedJob == j.id:
		w.WriteHeader(http.StatusNoContent) // a retried report
		return
	case j.status != StatusInProgress:
		runnerError(w, http.StatusConflict, "job is not in progress")
		return
	}
	if len(c.Output) > runnerapi.MaxOutput {
		c.Output = c.Output[len(c.Output)-runnerapi.MaxOutput:]
	}
	j.exitCode, j.output = c.ExitCode, strings.ToValidUTF8(c.Output, "\uFFFD")
	conclusion := c.Conclusion
	if j.cancelRequested {
		conclusion = ConclusionCancelled
	}
	sess.completedJob = j.id
	s.finishJobLocked(j, conclusion)
	w.WriteHeader(http.StatusNoContent)
}

// watchRunners fails the jobs whose runner has not been heard from for
// lostAfter, as GitHub does when a runner dies without a word: the job
// completes with conclusion failure and the runner is removed.
func (s *Server) watchRunners(lostAfter time.Duration) {
	defer s.senders.Done()
	t := time.NewTicker(max(lostAfter/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		for _, id := range s.jobOrder {
			j := s.jobs[id]
			if j.status == StatusInProgress && time.Since(j.heard) > lostAfter {
				j.annotation = fmt.Sprintf("The self-hosted runner: %s lost communication with the server.", j.runnerName)
				s.log.Debug("ghfake: runner lost", "job", j.id, "runner", j.runnerName)
				s.finishJobLocked(j, ConclusionFailure)
			}
		}
		s.mu.Unlock()
	}
}
