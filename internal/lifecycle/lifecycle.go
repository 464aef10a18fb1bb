// Package lifecycle is the job and runner state machines as data: which
// event moves a job (or a runner) from which state to which, under which
// condition, and what has to follow.
//
// A job's fate is reported from directions that do not agree on timing:
// GitHub's webhooks (late, twice, out of order, or never, in which case the
// reconcilers ask GitHub's API), the scheduler, and the agents that run the
// VMs. Each report becomes an Event; Step looks the job's state and the
// event up in Jobs, the table, and returns the one Rule that applies: the
// next state and the effects the control plane carries out. Nothing here
// touches a store, the network or a clock. The control plane records a
// transition and its Recorded effects in one store transaction, and runs
// the AfterCommit effects (booting a VM, asking GitHub) only once that
// transaction has committed, so that a transaction that is retried or rolled
// back leaves no trace outside the store.
//
// GitHub gives a queued job to ANY idle runner whose labels match, not to the
// runner made for it. So a job is bound to a runner of its labels while it
// waits (scheduled, launching), and the in_progress event names the runner
// that really took it; when that was another job's runner, the two jobs
// trade (BindTaker). A runner that ends cleanly without its job took another
// one whose in_progress has not arrived: its job waits again, and the launch
// is not counted against it (RefundAttempt).
//
// Invariants, checked by the tests over every row and over random event
// sequences:
//   - the table is total and unambiguous: for every state, event and set of
//     facts exactly one rule applies (the scheduler's events only for queued
//     jobs);
//   - a terminal state is never left, but for one bounded way back: a job
//     Tandem failed that GitHub still reports queued or waiting is opened
//     again (Reopen), at most MaxReopens times; every rule into a terminal
//     state says why;
//   - only GitHub moves a job to running (a job runs when GitHub says a
//     runner took it, never because Tandem expects it to);
//   - a job is launched only from queued, and counts the launch; a job
//     reaches failed only when its launches are spent, or when the App may
//     no longer act for it (Uninstalled);
//   - every job GitHub queued ends running, or in a terminal state, or
//     waits in queued for a host: it is never left holding a runner that
//     has ended;
//   - a job GitHub holds back (waiting: an environment's approval, a
//     concurrency group) holds no runner and gets no VM until GitHub
//     queues it;
//   - a job GitHub will not give to Tandem's runners (unmatched: it targets
//     another runner group, or the group's rules exclude it) gets no VM
//     again until an operator queues it again.
package lifecycle

import (
	"errors"
	"fmt"
	"slices"
)

// JobState is where a GitHub job stands from Tandem's point of view.
type JobState string

// Job states, in lifecycle order.
const (
	// New is the state of a job Tandem has not heard of; no job is stored
	// in it.
	New JobState = ""
	// Waiting: GitHub holds it back (an environment waits for approval, or
	// a concurrency group for another run); it needs no VM yet.
	Waiting JobState = "waiting"
	// Queued: GitHub queued it and it needs a VM; none is placed for it.
	Queued JobState = "queued"
	// Scheduled: a host was chosen and a runner (VM) allocated for it.
	Scheduled JobState = "scheduled"
	// Launching: the VM is booting and its JIT runner config was fetched.
	Launching JobState = "launching"
	// Unmatched: GitHub keeps it queued but will not give it to Tandem's
	// runners: it targets another runner group (runs-on: group:), or the
	// group Tandem's runners join does not allow its repository. It holds
	// no VM and gets none until an operator queues it again.
	Unmatched JobState = "unmatched"
	// Running: GitHub named the runner that took it.
	Running JobState = "running"
	// Terminal states.
	Completed     JobState = "completed"     // GitHub completed it (any conclusion but cancelled)
	Cancelled     JobState = "cancelled"     // GitHub completed it as cancelled
	Failed        JobState = "failed"        // Tandem gave up on it (launch retries exhausted)
	Unschedulable JobState = "unschedulable" // no host could ever hold it
	Lost          JobState = "lost"          // its runner vanished and GitHub never reported an end
	Refused       JobState = "refused"       // Tandem will not run it (a public repository's, by default)
)

// JobStates lists every state a stored job can be in, in lifecycle order.
var JobStates = []JobState{Waiting, Queued, Scheduled, Launching, Unmatched, Running,
	Completed, Cancelled, Failed, Unschedulable, Lost, Refused}

// Terminal reports whether no transition leaves s.
func (s JobState) Terminal() bool {
	switch s {
	case Completed, Cancelled, Failed, Unschedulable, Lost, Refused:
		return true
	}
	return false
}

// Valid reports whether s is a state a stored job can be in.
func (s JobState) Valid() bool { return slices.Contains(JobStates, s) }

// Active reports whether a job in state s holds (or is about to hold) a VM.
func (s JobState) Active() bool {
	return s == Scheduled || s == Launching || s == Running
}

// Event is something that happened to a job.
type Event string

// Job events, by who reports them.
const (
	// GitHub (a webhook, or its API when the webhook was lost).
	Seen        Event = "seen"         // first word of a job whose runs-on labels ask for Tandem
	SeenInvalid Event = "seen-invalid" // first word of a job whose Tandem labels are malformed
	SeenRefused Event = "seen-refused" // first word of a job Tandem will not run (a public repository's)
	GHQueued    Event = "gh-queued"    // status queued
	GHWaiting   Event = "gh-waiting"   // status waiting: GitHub holds it back (approval, concurrency)
	GHRunning   Event = "gh-running"   // in_progress, naming the runner that took it (or not)
	GHCompleted Event = "gh-completed" // completed with any conclusion but cancelled
	GHCancelled Event = "gh-cancelled" // completed as cancelled

	// The scheduler.
	Placed     Event = "placed"       // a host was chosen and a new runner allocated for it
	GivenSpare Event = "given-spare"  // an existing runner of its labels that no job held was bound to it
	NoHostFits Event = "no-host-fits" // no host could ever hold it

	// GitHub's answer to the runner's JIT config request.
	Registered Event = "registered"

	// The runner made for it took another job (that job's in_progress
	// named it); a spare runner of its labels may be handed over.
	RunnerTaken Event = "runner-taken"

	// Its runner's VM ended (the agent reports it, or the control plane
	// for a host that left the fleet).
	RunnerExited Event = "runner-exited"

	// A reconciler: the job runs on GitHub, but its runner's VM ended long
	// ago.
	RunnerVanished Event = "runner-vanished"

	// The App may no longer act for the job's repository: its installation
	// was suspended or deleted, or the repository removed from it.
	Uninstalled Event = "uninstalled"

	// GitHub will not give the job to the runner made for it: the runner
	// group it would join does not exist or does not allow the job's
	// repository (found before its VM boots), or the runner stayed idle
	// for the idle timeout while GitHub kept the job queued (it targets
	// another runner group).
	NotRouted Event = "not-routed"

	// An operator queues the job again (after fixing the runner group).
	Retried Event = "retried"
)

// SchedulerEvents are the scheduler's. It works on queued jobs only (a pass
// reads them in the transaction that moves them), so these events reach no
// other state: Step refuses them there (ErrNoRule), as a bug.
var SchedulerEvents = []Event{Placed, GivenSpare, NoHostFits}

// Events lists every job event.
var Events = []Event{Seen, SeenInvalid, SeenRefused, GHQueued, GHWaiting, GHRunning, GHCompleted, GHCancelled,
	Placed, GivenSpare, NoHostFits, Registered, RunnerTaken, RunnerExited, RunnerVanished, Uninstalled,
	NotRouted, Retried}

// Facts are what a guard may look at besides the state and the event.
// The caller fills in those the event's rules need (Guard.Needs).
type Facts struct {
	// Attempts is how many launches the job has had, MaxAttempts how many
	// it may have.
	Attempts, MaxAttempts int
	// RunnerNamed: GitHub's event names a runner (GHRunning).
	RunnerNamed bool
	// SameRunner: the runner the event names is the one the job is bound
	// to already (GHRunning).
	SameRunner bool
	// Registered: the runner being bound has its GitHub registration
	// (GivenSpare, RunnerTaken).
	Registered bool
	// Spare: a runner of the job's labels is handed over (RunnerTaken).
	Spare bool
	// Clean: the runner ended with exit code 0, no failure and no reason
	// to stop it (RunnerExited).
	Clean bool
	// HostLeft: the runner ended because its host went offline or was
	// revoked (RunnerExited).
	HostLeft bool
	// HostAtFault: the host failed the launch, so the next attempt should
	// go elsewhere; false when the VM was merely gone after a restart
	// (RunnerExited).
	HostAtFault bool
	// Reopens is how many times the job was opened again after Tandem
	// failed it (GHQueued, GHWaiting on a failed job); at most MaxReopens.
	Reopens int
}

// MaxReopens bounds how often a job Tandem failed is opened again because
// GitHub still reports it queued: a job no VM can run (its launches keep
// failing) gets MaxAttempts launches, MaxReopens+1 times, and no more,
// however long GitHub keeps it queued (24 hours).
const MaxReopens = 2

// Guard is a named condition on Facts. The zero Guard always holds.
type Guard struct {
	Name  string
	Holds func(Facts) bool
}

func (g Guard) holds(f Facts) bool { return g.Holds == nil || g.Holds(f) }

// Guards of the table. They come in complementary sets, so that exactly one
// rule of a state and event holds.
var (
	AttemptsLeft  = Guard{"launches left", func(f Facts) bool { return f.Attempts < f.MaxAttempts }}
	AttemptsSpent = Guard{"launches spent", func(f Facts) bool { return f.Attempts >= f.MaxAttempts }}

	SameRunner  = Guard{"the runner it holds", func(f Facts) bool { return f.RunnerNamed && f.SameRunner }}
	OtherRunner = Guard{"another runner", func(f Facts) bool { return f.RunnerNamed && !f.SameRunner }}
	NoRunner    = Guard{"no runner named", func(f Facts) bool { return !f.RunnerNamed }}

	IsRegistered  = Guard{"runner registered", func(f Facts) bool { return f.Registered }}
	NotRegistered = Guard{"runner not registered yet", func(f Facts) bool { return !f.Registered }}

	SpareRegistered   = Guard{"a registered spare", func(f Facts) bool { return f.Spare && f.Registered }}
	SpareUnregistered = Guard{"an unregistered spare", func(f Facts) bool { return f.Spare && !f.Registered }}
	NoSpare           = Guard{"no spare", func(f Facts) bool { return !f.Spare }}

	HostLeft     = Guard{"host left", func(f Facts) bool { return f.HostLeft }}
	HostStayed   = Guard{"host still there", func(f Facts) bool { return !f.HostLeft }}
	EndedClean   = Guard{"clean exit", func(f Facts) bool { return f.Clean }}
	RetryHere    = Guard{"failed, launches left, VM merely gone", func(f Facts) bool { return !f.Clean && !f.HostAtFault && f.Attempts < f.MaxAttempts }}
	RetryAway    = Guard{"failed, launches left, host at fault", func(f Facts) bool { return !f.Clean && f.HostAtFault && f.Attempts < f.MaxAttempts }}
	FailedAndOut = Guard{"failed, launches spent", func(f Facts) bool { return !f.Clean && f.Attempts >= f.MaxAttempts }}

	ReopensLeft  = Guard{"reopens left", func(f Facts) bool { return f.Reopens < MaxReopens }}
	ReopensSpent = Guard{"reopens spent", func(f Facts) bool { return f.Reopens >= MaxReopens }}
)

// Effect is something a transition obliges the control plane to do.
type Effect string

// Effects. Recorded ones are written in the transition's own transaction;
// the others run after it commits.
const (
	// CountAttempt: a runner is bound to the job, one more launch that may
	// fail (recorded). Attempts counts the failed launches, and the one in
	// progress while a runner is bound.
	CountAttempt Effect = "count-attempt"
	// RefundAttempt: the ended launch did not fail; it does not count
	// (recorded).
	RefundAttempt Effect = "refund-attempt"
	// AvoidHost: the next attempt goes to another host if one fits
	// (recorded).
	AvoidHost Effect = "avoid-host"
	// BindTaker: the runner GitHub named is busy with this job; the job it
	// was made for gets this job's runner, or goes back to the queue
	// (recorded).
	BindTaker Effect = "bind-taker"
	// FreeRunner: the runner the job held is bound to no job: the next
	// placement pass gives it to a queued job of its labels or stops it
	// (recorded).
	FreeRunner Effect = "free-runner"
	// Reopen: the job is opened again after Tandem failed it: its launches
	// start again from none, and the reopen is counted (recorded).
	Reopen Effect = "reopen"
	// Requeue: an operator queued the job again: its launches start again
	// from none (recorded).
	Requeue Effect = "requeue"
	// Launch: boot the new runner's VM and fetch its JIT config.
	Launch Effect = "launch"
	// Verify: ask GitHub what became of the job; Tandem could only guess.
	Verify Effect = "verify"
)

// Recorded reports whether e is written in the transition's transaction
// (true) or runs after it commits (false).
func (e Effect) Recorded() bool {
	switch e {
	case Launch, Verify:
		return false
	}
	return true
}

// Unchanged as a Rule's To keeps the job in the state it is in.
const Unchanged JobState = "="

// Rule is one row of the table: in any state of From, on event On, when
// the guard holds, the job moves To (Unchanged: stays) and Effects follow.
type Rule struct {
	From    []JobState
	On      Event
	When    Guard
	To      JobState
	Effects []Effect
	// Why explains the row for people (the README's table shows it).
	Why string
}

// Next is the state a job in from is in after r.
func (r Rule) Next(from JobState) JobState {
	if r.To == Unchanged {
		return from
	}
	return r.To
}

// Does reports whether r has effect e.
func (r Rule) Does(e Effect) bool { return slices.Contains(r.Effects, e) }

var (
	unclaimed = []JobState{Waiting, Queued, Scheduled, Launching, Unmatched} // GitHub has not given it to a runner
	bound     = []JobState{Scheduled, Launching}                             // a runner of ours is on its way for it
	terminal  = []JobState{Completed, Cancelled, Failed, Unschedulable, Lost, Refused}
	ended     = []JobState{Completed, Cancelled, Unschedulable, Lost, Refused} // terminal, and never reopened
	stored    = JobStates
)

// Jobs is the job state machine. Step finds the one rule that applies.
var Jobs = []Rule{
	// A job is first heard of. Whatever GitHub's event said, the job is
	// created queued, and the event is then applied to it.
	{From: []JobState{New}, On: Seen, To: Queued, Why: "GitHub queued a job for Tandem"},
	{From: []JobState{New}, On: SeenInvalid, To: Unschedulable, Why: "its Tandem labels are malformed"},
	{From: []JobState{New}, On: SeenRefused, To: Refused, Why: "Tandem does not run it: a public repository's, which the config does not allow"},
	{From: stored, On: Seen, To: Unchanged, Why: "known already"},
	{From: stored, On: SeenInvalid, To: Unchanged, Why: "known already"},
	{From: stored, On: SeenRefused, To: Unchanged, Why: "known already"},

	// GitHub's word.
	{From: []JobState{Waiting}, On: GHQueued, To: Queued, Why: "GitHub queued it (approved, or its concurrency group is free): it needs a VM"},
	{From: []JobState{Queued, Scheduled, Launching, Running}, On: GHQueued, To: Unchanged, Why: "a duplicate or late queued event"},
	{From: []JobState{Unmatched}, On: GHQueued, To: Unchanged,
		Why: "GitHub keeps it queued for runners that are not Tandem's: no VM (an operator may queue it again)"},
	{From: []JobState{Unmatched}, On: GHWaiting, To: Unchanged, Why: "it waits for runners that are not Tandem's"},
	{From: []JobState{Waiting}, On: GHWaiting, To: Unchanged, Why: "a duplicate waiting event"},
	{From: []JobState{Queued}, On: GHWaiting, To: Waiting, Why: "GitHub holds it back (an approval or a concurrency group): no VM until it is queued"},
	{From: bound, On: GHWaiting, To: Waiting, Effects: []Effect{FreeRunner},
		Why: "GitHub holds it back: the runner made for it serves another job (a late waiting event is corrected when GitHub is asked)"},
	{From: []JobState{Running}, On: GHWaiting, To: Unchanged, Why: "a stale event: a runner took it"},
	{From: unclaimed, On: GHRunning, When: OtherRunner, To: Running, Effects: []Effect{BindTaker, FreeRunner},
		Why: "a runner took it; when that runner was made for another job, the two jobs trade runners"},
	{From: unclaimed, On: GHRunning, When: SameRunner, To: Running, Effects: []Effect{BindTaker},
		Why: "the runner made for it took it"},
	{From: unclaimed, On: GHRunning, When: NoRunner, To: Running, Effects: []Effect{FreeRunner},
		Why: "GitHub did not name the runner; the runner made for it serves another job"},
	{From: []JobState{Running}, On: GHRunning, When: SameRunner, To: Unchanged, Why: "a duplicate in_progress event"},
	{From: []JobState{Running}, On: GHRunning, When: NoRunner, To: Unchanged, Why: "a stale in_progress event"},
	{From: []JobState{Running}, On: GHRunning, When: OtherRunner, To: Running, Effects: []Effect{BindTaker},
		Why: "GitHub corrects which runner runs it"},
	{From: unclaimed, On: GHCompleted, To: Completed, Effects: []Effect{FreeRunner},
		Why: "completed before any runner of ours took it; the runner made for it serves another job"},
	{From: []JobState{Running}, On: GHCompleted, To: Completed, Why: "GitHub completed it"},
	{From: unclaimed, On: GHCancelled, To: Cancelled, Effects: []Effect{FreeRunner},
		Why: "cancelled while it waited; the runner made for it serves another job"},
	{From: []JobState{Running}, On: GHCancelled, To: Cancelled, Why: "cancelled while it ran"},
	{From: []JobState{Failed}, On: GHQueued, When: ReopensLeft, To: Queued, Effects: []Effect{Reopen},
		Why: "GitHub still has it queued after Tandem gave up: opened again, its launches counted afresh"},
	{From: []JobState{Failed}, On: GHWaiting, When: ReopensLeft, To: Waiting, Effects: []Effect{Reopen},
		Why: "GitHub holds it back after Tandem gave up: opened again, to run once GitHub queues it"},
	{From: []JobState{Failed}, On: GHQueued, When: ReopensSpent, To: Unchanged, Why: "opened again too often already"},
	{From: []JobState{Failed}, On: GHWaiting, When: ReopensSpent, To: Unchanged, Why: "opened again too often already"},
	{From: ended, On: GHQueued, To: Unchanged, Why: "a stale event: the job has ended"},
	{From: ended, On: GHWaiting, To: Unchanged, Why: "a stale event: the job has ended"},
	{From: terminal, On: GHRunning, To: Unchanged, Why: "a stale event: the job has ended"},
	{From: terminal, On: GHCompleted, To: Unchanged, Why: "a stale event: the job has ended"},
	{From: terminal, On: GHCancelled, To: Unchanged, Why: "a stale event: the job has ended"},

	// The scheduler's.
	{From: []JobState{Queued}, On: Placed, To: Scheduled, Effects: []Effect{CountAttempt, Launch},
		Why: "a host has room: a new runner VM is launched for it"},
	{From: []JobState{Queued}, On: GivenSpare, When: NotRegistered, To: Scheduled, Effects: []Effect{CountAttempt},
		Why: "a spare runner of its labels, still booting, is bound to it"},
	{From: []JobState{Queued}, On: GivenSpare, When: IsRegistered, To: Launching, Effects: []Effect{CountAttempt},
		Why: "a spare runner of its labels, registered with GitHub, is bound to it"},
	{From: []JobState{Queued}, On: NoHostFits, To: Unschedulable, Why: "no host could ever hold it"},

	// GitHub registered the runner made for it.
	{From: []JobState{Scheduled}, On: Registered, To: Launching, Why: "its runner is registered with GitHub; the VM boots"},
	{From: []JobState{Waiting, Queued, Launching, Unmatched, Running}, On: Registered, To: Unchanged, Why: "nothing to learn"},
	{From: terminal, On: Registered, To: Unchanged, Why: "the job has ended"},

	// Its runner took another job.
	{From: bound, On: RunnerTaken, When: SpareRegistered, To: Launching,
		Why: "its runner took another job; that job's registered runner is handed over (the attempt moves with it)"},
	{From: bound, On: RunnerTaken, When: SpareUnregistered, To: Scheduled,
		Why: "its runner took another job; that job's booting runner is handed over"},
	{From: bound, On: RunnerTaken, When: NoSpare, To: Queued, Effects: []Effect{RefundAttempt},
		Why: "its runner took another job and none is spare: it needs a VM again; that launch did not fail"},
	{From: []JobState{Waiting, Queued, Unmatched, Running}, On: RunnerTaken, To: Unchanged, Why: "it holds no runner of ours"},
	{From: terminal, On: RunnerTaken, To: Unchanged, Why: "the job has ended"},

	// Its runner's VM ended.
	{From: bound, On: RunnerExited, When: EndedClean, To: Queued, Effects: []Effect{RefundAttempt, Verify},
		Why: "its runner exited cleanly without it, so it ran another job whose in_progress has not come: not a failed launch; GitHub is asked"},
	{From: bound, On: RunnerExited, When: RetryAway, To: Queued, Effects: []Effect{AvoidHost},
		Why: "the launch failed: placed again, elsewhere if another host fits"},
	{From: bound, On: RunnerExited, When: RetryHere, To: Queued,
		Why: "its VM was gone after a restart: placed again"},
	{From: bound, On: RunnerExited, When: FailedAndOut, To: Failed, Effects: []Effect{AvoidHost},
		Why: "every launch failed: Tandem gives up"},
	{From: []JobState{Running}, On: RunnerExited, When: HostLeft, To: Lost,
		Why: "its host left the fleet while it ran: nothing will report its end"},
	{From: []JobState{Running}, On: RunnerExited, When: HostStayed, To: Unchanged,
		Why: "a running job's end comes from GitHub"},
	{From: []JobState{Waiting, Queued, Unmatched}, On: RunnerExited, To: Unchanged, Why: "it holds no runner"},
	{From: terminal, On: RunnerExited, To: Unchanged, Why: "the job has ended"},

	// A reconciler's finding.
	{From: []JobState{Running}, On: RunnerVanished, To: Lost,
		Why: "its runner's VM ended long ago and GitHub still reports it in progress"},
	{From: unclaimed, On: RunnerVanished, To: Unchanged, Why: "it is not running"},
	{From: terminal, On: RunnerVanished, To: Unchanged, Why: "the job has ended"},

	// The App lost its access.
	{From: []JobState{Waiting, Queued, Unmatched}, On: Uninstalled, To: Failed,
		Why: "the App may no longer act for its repository; opened again if GitHub still has it queued once it may"},
	{From: bound, On: Uninstalled, To: Failed, Effects: []Effect{FreeRunner},
		Why: "the App may no longer act for its repository: its runner is stopped"},
	{From: []JobState{Running}, On: Uninstalled, To: Lost, Why: "the App may no longer hear of it"},
	{From: terminal, On: Uninstalled, To: Unchanged, Why: "the job has ended"},

	// GitHub will not give it to Tandem's runners.
	{From: bound, On: NotRouted, To: Unmatched, Effects: []Effect{FreeRunner},
		Why: "GitHub will not give it to Tandem's runners (another runner group, or the group excludes its repository): its runner is stopped, and no VM is booted for it again"},
	{From: []JobState{Waiting, Queued, Unmatched, Running}, On: NotRouted, To: Unchanged, Why: "it holds no runner of ours"},
	{From: terminal, On: NotRouted, To: Unchanged, Why: "the job has ended"},

	// An operator's word.
	{From: []JobState{Unmatched}, On: Retried, To: Queued, Effects: []Effect{Requeue},
		Why: "an operator queued it again (the runner group was fixed): its launches counted afresh"},
	{From: []JobState{Waiting, Queued, Scheduled, Launching, Running}, On: Retried, To: Unchanged, Why: "it is not unmatched"},
	{From: terminal, On: Retried, To: Unchanged, Why: "the job has ended"},
}

// ErrNoRule means the table has no rule for a state and event: the caller
// reported an event the job cannot receive (a bug, or a state from a newer
// binary).
var ErrNoRule = errors.New("no lifecycle rule")

// Step returns the rule for a job in state from on event ev.
func Step(from JobState, ev Event, f Facts) (Rule, error) {
	for _, r := range Jobs {
		if r.On == ev && slices.Contains(r.From, from) && r.When.holds(f) {
			return r, nil
		}
	}
	return Rule{}, fmt.Errorf("job %s, event %s: %w", describe(from), ev, ErrNoRule)
}

func describe(s JobState) string {
	if s == New {
		return "unknown"
	}
	return "in " + string(s)
}

// CanTransition reports whether a rule moves a job from → to (a rule that
// keeps a job where it is counts as from → from, for a live state: it
// records an event, such as a trade of runners, without changing state).
func CanTransition(from, to JobState) bool {
	if from == to {
		return from.Valid() && !from.Terminal()
	}
	for _, r := range Jobs {
		if r.To == to && slices.Contains(r.From, from) {
			return true
		}
	}
	return false
}
