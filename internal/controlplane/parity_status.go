package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// The release gate on GitHub (parity.commit_status): when a job of a
// commit ends, the App sets the commit's "tandem/parity" status to the
// gate's verdict with both architectures required — success once every
// logical job of the commit passed on both, failure once one failed or
// ran on one architecture only, pending while one is still to end — so
// that a branch protection rule or a release can require it. Statuses are
// set after the store has committed the end, a second after the last end
// of a burst, and only when the verdict or its summary changed; a failed
// call is tried again later.

// StatusContext names Tandem's commit status on GitHub.
const StatusContext = "tandem/parity"

const (
	statusDebounce   = time.Second
	statusRetryAfter = 30 * time.Second
	statusMemory     = 10000 // commits whose last status is remembered
)

type commitKey struct{ repo, sha string }

// statusPoster holds the commits whose status may have changed, and the
// last status set for each.
type statusPoster struct {
	on      bool // parity.commit_status: otherwise nothing is noted
	mu      sync.Mutex
	pending map[commitKey]int64  // → installation
	last    map[commitKey]string // state and description last set
	kick    chan struct{}
}

func newStatusPoster(on bool) *statusPoster {
	return &statusPoster{on: on, pending: map[commitKey]int64{}, last: map[commitKey]string{}, kick: make(chan struct{}, 1)}
}

// jobEnded notes that a job of a commit ended (after its commit).
func (p *statusPoster) jobEnded(j store.Job) {
	if !p.on || j.HeadSHA == "" || j.Installation <= 0 {
		return
	}
	p.mu.Lock()
	p.pending[commitKey{j.Repo, j.HeadSHA}] = j.Installation
	p.mu.Unlock()
	kick(p.kick)
}

func (p *statusPoster) take() map[commitKey]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.pending
	p.pending = map[commitKey]int64{}
	return out
}

// statusLoop sets commit statuses while ctx lasts, when the policy asks.
func (s *Server) statusLoop(ctx context.Context) {
	if !s.statuses.on {
		return
	}
	ctx = github.Background(ctx) // statuses may wait for the quota's reset; launches may not
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.statuses.kick:
		}
		select { // let a burst of ends settle
		case <-ctx.Done():
			return
		case <-time.After(statusDebounce):
		}
		s.postStatuses(ctx)
	}
}

// postStatuses sets the status of every commit noted since the last pass.
func (s *Server) postStatuses(ctx context.Context) {
	p := s.statuses
	for k, inst := range p.take() {
		var jobs []store.Job
		err := s.st.View(ctx, func(tx store.ReadTx) error {
			var err error
			jobs, err = tx.Jobs(store.JobFilter{Repo: k.repo, HeadSHA: k.sha})
			return err
		})
		if err != nil {
			s.log.Warn("commit status: reading the commit's jobs", "repo", k.repo, "sha", k.sha, "err", err)
			s.retryStatus(k, inst)
			continue
		}
		res := parity.Check(k.repo, k.sha, parity.RequireBoth, jobs)
		state := map[parity.Verdict]string{parity.Pass: "success", parity.Fail: "failure", parity.Pending: "pending"}[res.Verdict]
		seen := state + "\x00" + res.Summary
		p.mu.Lock()
		same := p.last[k] == seen
		p.mu.Unlock()
		if same {
			continue
		}
		err = s.gh.CreateCommitStatus(ctx, inst, k.repo, k.sha, github.CommitStatus{State: state, Context: StatusContext,
			Description: res.Summary})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("commit status", "repo", k.repo, "sha", k.sha, "err", err)
				s.retryStatus(k, inst)
			}
			continue
		}
		p.mu.Lock()
		if len(p.last) >= statusMemory {
			clear(p.last)
		}
		p.last[k] = seen
		p.mu.Unlock()
	}
}

// retryStatus notes a commit again, for a pass after statusRetryAfter.
func (s *Server) retryStatus(k commitKey, inst int64) {
	p := s.statuses
	p.mu.Lock()
	p.pending[k] = inst
	p.mu.Unlock()
	time.AfterFunc(statusRetryAfter, func() { kick(p.kick) })
}
