package lifecycle

import (
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

var updateREADME = flag.Bool("update", false, "rewrite the README's lifecycle section from the table")

// allFacts enumerates every combination of facts a guard can distinguish,
// with MaxAttempts 3, Attempts 0..4 and Reopens 0..MaxReopens+1.
func allFacts() []Facts {
	var out []Facts
	for bits := 0; bits < 1<<7; bits++ {
		for attempts := 0; attempts <= 4; attempts++ {
			for reopens := 0; reopens <= MaxReopens+1; reopens++ {
				out = append(out, Facts{
					Attempts: attempts, MaxAttempts: 3, Reopens: reopens,
					RunnerNamed: bits&1 != 0, SameRunner: bits&2 != 0, Registered: bits&4 != 0,
					Spare: bits&8 != 0, Clean: bits&16 != 0, HostLeft: bits&32 != 0, HostAtFault: bits&64 != 0,
				})
			}
		}
	}
	return out
}

var allFrom = append([]JobState{New}, JobStates...)

// The table answers every question exactly once: for each state (and a job
// not yet known), each event and each set of facts, one rule applies.
func TestTableIsTotalAndUnambiguous(t *testing.T) {
	for _, from := range allFrom {
		for _, ev := range Events {
			if from == New && ev != Seen && ev != SeenInvalid && ev != SeenRefused {
				continue // nothing but GitHub's first word reaches an unknown job
			}
			if from != Queued && slices.Contains(SchedulerEvents, ev) {
				if _, err := Step(from, ev, Facts{}); !errors.Is(err, ErrNoRule) {
					t.Errorf("the scheduler's %s reaches a job in %s", ev, from)
				}
				continue
			}
			for _, f := range allFacts() {
				var match []int
				for i, r := range Jobs {
					if r.On == ev && slices.Contains(r.From, from) && r.When.holds(f) {
						match = append(match, i)
					}
				}
				if len(match) != 1 {
					t.Errorf("job %q on %s with %+v: rules %v apply, want exactly one", from, ev, f, match)
				}
			}
		}
	}
	for _, from := range RunnerStates {
		for _, ev := range RunnerEvents {
			n := 0
			for _, r := range Runners {
				if r.On == ev && slices.Contains(r.From, from) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("runner %s on %s: %d rules apply, want exactly one", from, ev, n)
			}
		}
	}
}

// Every row, on its own: Step finds it, and it keeps the promises of the
// package comment.
func TestEveryRow(t *testing.T) {
	github := []Event{Seen, SeenInvalid, SeenRefused, GHQueued, GHWaiting, GHRunning, GHCompleted, GHCancelled}
	for i, r := range Jobs {
		name := states(r.From) + " on " + string(r.On) + " when " + r.When.Name
		if r.Why == "" {
			t.Errorf("row %d (%s) does not say why", i, name)
		}
		if !slices.Contains(Events, r.On) {
			t.Errorf("row %d (%s): event not in Events", i, name)
		}
		if r.To != Unchanged && r.To != New && !r.To.Valid() {
			t.Errorf("row %d (%s): unknown state %q", i, name, r.To)
		}
		for _, e := range r.Effects {
			if !slices.Contains([]Effect{CountAttempt, RefundAttempt, AvoidHost, BindTaker, FreeRunner, Reopen, Requeue, Launch, Verify}, e) {
				t.Errorf("row %d (%s): unknown effect %q", i, name, e)
			}
		}
		for _, from := range r.From {
			reopen := from == Failed && r.Does(Reopen) && r.When.Name == ReopensLeft.Name &&
				(r.On == GHQueued || r.On == GHWaiting)
			if from.Terminal() && r.To != Unchanged && !reopen {
				t.Errorf("row %d (%s): leaves terminal state %s", i, name, from)
			}
			if n := r.Next(from); from == Waiting && (n == Scheduled || n == Launching) {
				t.Errorf("row %d (%s): a job GitHub holds back gets a runner", i, name)
			}
			if n := r.Next(from); from == Unmatched && n != from && n != Running && !n.Terminal() && r.On != Retried {
				t.Errorf("row %d (%s): an unmatched job is placed again without an operator", i, name)
			}
			if r.Next(from) == Running && from != Running && !slices.Contains(github, r.On) {
				t.Errorf("row %d (%s): only GitHub puts a job into running", i, name)
			}
		}
		if (r.Does(Launch) || r.On == GivenSpare) && (!slices.Equal(r.From, []JobState{Queued}) || !r.Does(CountAttempt)) {
			t.Errorf("row %d (%s): a launch must come from queued and count", i, name)
		}
		if r.To == Failed && r.When.Name != FailedAndOut.Name && r.On != Uninstalled {
			t.Errorf("row %d (%s): fails a job whose launches are not spent", i, name)
		}
		// Step finds this row for some facts its guard accepts.
		found := false
		for _, f := range allFacts() {
			if !r.When.holds(f) {
				continue
			}
			for _, from := range r.From {
				got, err := Step(from, r.On, f)
				if err != nil {
					t.Fatalf("row %d (%s): %v", i, name, err)
				}
				if got.Why == r.Why && got.When.Name == r.When.Name && got.To == r.To {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("row %d (%s) is never chosen", i, name)
		}
	}
	for i, r := range Runners {
		for _, from := range r.From {
			if from == RunnerEnded && r.To != RunnerUnchanged {
				t.Errorf("runner row %d: an ended runner comes back", i)
			}
			got, err := StepRunner(from, r.On)
			if err != nil || got.Why != r.Why {
				t.Errorf("runner row %d from %s: got %+v, %v", i, from, got, err)
			}
		}
	}
}

// Stories the control plane lives by, step by step.
func TestStories(t *testing.T) {
	type step struct {
		ev   Event
		f    Facts
		want JobState
		fx   []Effect
	}
	stories := map[string][]step{
		"runs on its own runner": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{Registered, Facts{}, Launching, nil},
			{GHRunning, Facts{RunnerNamed: true, SameRunner: true}, Running, []Effect{BindTaker}},
			{GHRunning, Facts{RunnerNamed: true, SameRunner: true}, Running, nil},
			{GHCompleted, Facts{}, Completed, nil},
			{GHQueued, Facts{}, Completed, nil},
		},
		"another job's runner takes it, and its own runner serves another": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{GHRunning, Facts{RunnerNamed: true}, Running, []Effect{BindTaker, FreeRunner}},
		},
		"its runner runs another job and ends before that job's in_progress": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{Attempts: 0, MaxAttempts: 3}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{Clean: true, Attempts: 1, MaxAttempts: 3}, Queued, []Effect{RefundAttempt, Verify}},
		},
		"launches fail until they are spent": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{HostAtFault: true, Attempts: 1, MaxAttempts: 2}, Queued, []Effect{AvoidHost}},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{HostAtFault: true, Attempts: 2, MaxAttempts: 2}, Failed, []Effect{AvoidHost}},
			{GHRunning, Facts{RunnerNamed: true}, Failed, nil},
		},
		"its host is revoked while it runs": {
			{Seen, Facts{}, Queued, nil},
			{GHRunning, Facts{RunnerNamed: true}, Running, []Effect{BindTaker, FreeRunner}},
			{RunnerExited, Facts{HostLeft: true}, Lost, nil},
		},
		"a registered spare serves a queued job": {
			{Seen, Facts{}, Queued, nil},
			{GivenSpare, Facts{Registered: true}, Launching, []Effect{CountAttempt}},
			{RunnerTaken, Facts{}, Queued, []Effect{RefundAttempt}},
			{GivenSpare, Facts{}, Scheduled, []Effect{CountAttempt}},
			{RunnerTaken, Facts{Spare: true, Registered: true}, Launching, nil},
		},
		"cancelled while it waits": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{GHCancelled, Facts{}, Cancelled, []Effect{FreeRunner}},
			{RunnerExited, Facts{}, Cancelled, nil},
		},
		"held for an environment's approval, then approved": {
			{Seen, Facts{}, Queued, nil},
			{GHWaiting, Facts{}, Waiting, nil},
			{GHWaiting, Facts{}, Waiting, nil},
			{GHQueued, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{GHRunning, Facts{RunnerNamed: true, SameRunner: true}, Running, []Effect{BindTaker}},
			{GHWaiting, Facts{}, Running, nil},
		},
		"failed while GitHub still has it queued: opened again, twice at most": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{HostAtFault: true, Attempts: 1, MaxAttempts: 1}, Failed, []Effect{AvoidHost}},
			{GHQueued, Facts{Reopens: 0}, Queued, []Effect{Reopen}},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{HostAtFault: true, Attempts: 1, MaxAttempts: 1}, Failed, []Effect{AvoidHost}},
			{GHWaiting, Facts{Reopens: 1}, Waiting, []Effect{Reopen}},
			{GHQueued, Facts{Reopens: 2}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{RunnerExited, Facts{HostAtFault: true, Attempts: 1, MaxAttempts: 1}, Failed, []Effect{AvoidHost}},
			{GHQueued, Facts{Reopens: 2}, Failed, nil},
		},
		"it targets another runner group: one VM, reclaimed idle, then none until an operator says": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{Registered, Facts{}, Launching, nil},
			{NotRouted, Facts{}, Unmatched, []Effect{FreeRunner}},
			{RunnerExited, Facts{}, Unmatched, nil},
			{GHQueued, Facts{}, Unmatched, nil},
			{Retried, Facts{}, Queued, []Effect{Requeue}},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{GHRunning, Facts{RunnerNamed: true, SameRunner: true}, Running, []Effect{BindTaker}},
			{Retried, Facts{}, Running, nil},
		},
		"unmatched, and another runner group's runner takes it": {
			{Seen, Facts{}, Queued, nil},
			{Placed, Facts{}, Scheduled, []Effect{CountAttempt, Launch}},
			{NotRouted, Facts{}, Unmatched, []Effect{FreeRunner}},
			{GHRunning, Facts{RunnerNamed: true}, Running, []Effect{BindTaker, FreeRunner}},
			{GHCompleted, Facts{}, Completed, nil},
		},
		"malformed labels": {
			{SeenInvalid, Facts{}, Unschedulable, nil},
			{GHQueued, Facts{}, Unschedulable, nil},
		},
	}
	for name, steps := range stories {
		s := New
		for i, st := range steps {
			r, err := Step(s, st.ev, st.f)
			if err != nil {
				t.Errorf("%s, step %d: %v", name, i, err)
				break
			}
			if got := r.Next(s); got != st.want || !slices.Equal(r.Effects, st.fx) {
				t.Errorf("%s, step %d (%s from %q): %s %v, want %s %v", name, i, st.ev, s, got, r.Effects, st.want, st.fx)
			}
			s = r.Next(s)
		}
	}
}

func TestNoRule(t *testing.T) {
	if _, err := Step(New, Placed, Facts{}); !errors.Is(err, ErrNoRule) {
		t.Errorf("placing an unknown job: %v", err)
	}
	if _, err := Step("paused", GHQueued, Facts{}); !errors.Is(err, ErrNoRule) {
		t.Errorf("a state from a newer binary: %v", err)
	}
}

// Random event sequences, as lost, duplicated and reordered webhooks, dying
// agents and revoked hosts produce them, applied to one job the way the
// control plane applies them (it keeps the attempt count by the effects).
func FuzzSequences(f *testing.F) {
	f.Add(uint64(1), uint8(20))
	f.Add(uint64(7), uint8(200))
	f.Fuzz(func(t *testing.T, seed uint64, n uint8) {
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		s, attempts, entries, reopens := New, 0, 0, 0
		ev := Seen
		switch rng.IntN(8) {
		case 0:
			ev = SeenInvalid
		case 1:
			ev = SeenRefused
		}
		for i := 0; i <= int(n); i++ {
			f := Facts{Attempts: attempts, MaxAttempts: 3, Reopens: reopens,
				RunnerNamed: rng.IntN(4) != 0, SameRunner: rng.IntN(2) == 0, Registered: rng.IntN(2) == 0,
				Spare: rng.IntN(2) == 0, Clean: rng.IntN(3) == 0, HostLeft: rng.IntN(4) == 0, HostAtFault: rng.IntN(2) == 0}
			r, err := Step(s, ev, f)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			next := r.Next(s)
			switch {
			case s.Terminal() && next != s && !(s == Failed && r.Does(Reopen)):
				t.Fatalf("step %d: left terminal %s for %s on %s", i, s, next, ev)
			case (s == Waiting || s == Unmatched) && (next == Scheduled || next == Launching):
				t.Fatalf("step %d: a %s job got a runner (%s on %s)", i, s, next, ev)
			case s == Unmatched && next == Queued && ev != Retried:
				t.Fatalf("step %d: an unmatched job was queued again by %s", i, ev)
			case next == Running && s != Running:
				entries++
				if entries > 1 {
					t.Fatalf("step %d: entered running twice", i)
				}
			case next == Failed && s != Failed && attempts < 3 && ev != Uninstalled:
				t.Fatalf("step %d: failed after %d of 3 launches", i, attempts)
			}
			if ev == RunnerExited && (next == Scheduled || next == Launching) {
				t.Fatalf("step %d: still waits for a runner that ended (%s)", i, next)
			}
			if r.Does(CountAttempt) {
				attempts++
			}
			if r.Does(RefundAttempt) {
				attempts--
			}
			if r.Does(Reopen) {
				attempts, reopens = 0, reopens+1
			}
			if r.Does(Requeue) {
				attempts = 0
			}
			if reopens > MaxReopens {
				t.Fatalf("step %d: opened again %d times", i, reopens)
			}
			if attempts > 3 || attempts < 0 {
				t.Fatalf("step %d: %d launches", i, attempts)
			}
			if (next == Scheduled || next == Launching) && attempts < 1 {
				t.Fatalf("step %d: bound to a runner with %d launches counted", i, attempts)
			}
			s = next
			if s == New {
				t.Fatalf("step %d: a stored job became unknown", i)
			}
			ev = Events[rng.IntN(len(Events))]
			for s != Queued && slices.Contains(SchedulerEvents, ev) {
				ev = Events[rng.IntN(len(Events))]
			}
		}
	})
}

// The README's lifecycle section is the table (go test -run README -update
// rewrites it).
func TestREADMEShowsTheTable(t *testing.T) {
	const path = "../../README.md"
	const begin, end = "<!-- lifecycle:begin -->\n", "<!-- lifecycle:end -->"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q … %q section", begin, end)
	}
	want := Markdown()
	if s[i+len(begin):j] == want {
		return
	}
	if !*updateREADME {
		t.Fatal("README.md's lifecycle section differs from the table: go test ./internal/lifecycle -run README -update")
	}
	if err := os.WriteFile(path, []byte(s[:i+len(begin)]+want+s[j:]), 0o644); err != nil {
		t.Fatal(err)
	}
}
