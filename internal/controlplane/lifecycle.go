package controlplane

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

// Every job and runner transition goes through internal/lifecycle's tables:
// move and moveRunner look the event up and carry out the effects a row
// names. What a transaction decides to do outside the store waits in an
// afterCommit and runs only once the transaction has committed.

// afterCommit is what one transaction decided to do outside the store.
type afterCommit struct {
	launches []launch // runner VMs to boot (lifecycle.Launch)
	verify   []int64  // jobs to check with GitHub (lifecycle.Verify)
	then     []func() // logs, metrics and wake-ups, in order
}

// do queues f (a log line, a metric) to run after the commit.
func (fx *afterCommit) do(f func()) { fx.then = append(fx.then, f) }

// update runs fn in a store transaction and then, once it has committed,
// what fn queued. The store may run fn more than once (a serialisation
// retry): every run starts with an empty queue, so only the committed run's
// effects happen, and each once.
func (s *Server) update(ctx context.Context, fn func(store.Tx, *afterCommit) error) error {
	var fx *afterCommit
	err := s.st.Update(ctx, func(tx store.Tx) error {
		fx = &afterCommit{}
		if err := fn(tx, fx); err != nil {
			return err
		}
		return s.routeLaunches(tx, fx)
	})
	if err != nil {
		return err
	}
	s.runAfterCommit(fx)
	return nil
}

func (s *Server) runAfterCommit(fx *afterCommit) {
	for _, f := range fx.then {
		f()
	}
	for _, id := range fx.verify {
		s.rec.verify(id)
	}
	for _, l := range fx.launches {
		if l.routed {
			kick(s.tell[topicCommands])
			continue
		}
		// A launch is this replica's to finish, whether or not it still
		// leads: not under the leader's fence.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.launch(s.runCtx, l)
		}()
	}
}

// jobStep is one event for a job, with what its rule's guard and effects
// need to know.
type jobStep struct {
	ev    lifecycle.Event
	facts lifecycle.Facts // Attempts and MaxAttempts are filled in by move
	host  string          // lifecycle.AvoidHost: the host that failed
	run   store.Runner    // lifecycle.Launch: the runner to launch
	claim bool            // lifecycle.Launch: run is a warm VM, to configure only
}

// move applies one event to j: it finds the rule, sets j's state and the
// timestamps that go with it, and carries out the effects that concern j
// alone (attempts, hosts to avoid) or run after the commit (launch,
// verify). BindTaker and FreeRunner move runners; the caller, which knows
// them, does those. The caller writes j (tx.UpdateJob) unless the rule
// leaves it unchanged.
func (s *Server) move(fx *afterCommit, j *store.Job, st jobStep, now time.Time) (lifecycle.Rule, error) {
	st.facts.Attempts, st.facts.MaxAttempts, st.facts.Reopens = j.Attempts, s.cfg.MaxAttempts, j.Reopens
	rule, err := lifecycle.Step(j.State, st.ev, st.facts)
	if err != nil {
		return rule, fmt.Errorf("job %d: %w", j.ID, err)
	}
	if rule.To == lifecycle.Unchanged {
		return rule, nil
	}
	from := j.State
	j.State, j.UpdatedAt = rule.Next(from), now
	if j.State == store.JobRunning && from != store.JobRunning {
		j.StartedAt = now
	}
	if j.State.Terminal() {
		j.CompletedAt = now
	}
	if from.Terminal() && !j.State.Terminal() {
		j.CompletedAt = time.Time{} // opened again (lifecycle.Reopen)
	}
	if j.State.Terminal() && !from.Terminal() && from != lifecycle.New {
		// After the commit, *j is the job as the caller wrote it (with
		// GitHub's conclusion, say). A job that ends as it is first seen
		// (refused, malformed) never waited: it is not observed.
		fx.do(func() {
			s.metrics.jobEnded(*j)
			s.statuses.jobEnded(*j)
		})
	}
	for _, e := range rule.Effects {
		switch e {
		case lifecycle.CountAttempt:
			j.Attempts++
		case lifecycle.RefundAttempt:
			j.Attempts = max(j.Attempts-1, 0)
		case lifecycle.Reopen:
			j.Attempts, j.Reopens = 0, j.Reopens+1
		case lifecycle.Requeue:
			j.Attempts = 0
		case lifecycle.AvoidHost:
			if st.host != "" {
				j.AvoidHosts = appendUnique(j.AvoidHosts, st.host)
			}
		case lifecycle.Launch:
			fx.launches = append(fx.launches, launch{runner: st.run, job: *j, claim: st.claim})
		case lifecycle.Verify:
			fx.verify = append(fx.verify, j.ID)
		case lifecycle.BindTaker, lifecycle.FreeRunner:
			// The caller's: see the function comment.
		default:
			return rule, fmt.Errorf("job %d: lifecycle effect %q not carried out", j.ID, e)
		}
	}
	return rule, nil
}

// moveRunner applies one event to runner r (its state only; the caller
// sets the fields that go with it) and reports whether it changed.
func moveRunner(r *store.Runner, ev lifecycle.RunnerEvent) (bool, error) {
	rule, err := lifecycle.StepRunner(r.State, ev)
	if err != nil {
		return false, fmt.Errorf("runner %s: %w", r.Name, err)
	}
	next := rule.Next(r.State)
	changed := next != r.State
	r.State = next
	return changed, nil
}

// registered reports whether runner r has its GitHub registration and its
// host has it: a job bound to it is launching rather than scheduled.
func registered(r store.Runner) bool {
	return r.GitHubID != 0 && r.State != store.RunnerAssigned
}
