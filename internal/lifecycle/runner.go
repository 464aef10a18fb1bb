package lifecycle

import (
	"fmt"
	"slices"
)

// RunnerState is where one of Tandem's runners (one VM) stands.
type RunnerState string

// Runner states, in lifecycle order.
const (
	RunnerAssigned RunnerState = "assigned" // placed on a host; the host has not started it yet
	RunnerBooting  RunnerState = "booting"  // the host is booting its VM
	RunnerIdle     RunnerState = "idle"     // the runner process runs and waits for a job
	RunnerBusy     RunnerState = "busy"     // it took a job
	RunnerEnded    RunnerState = "ended"    // the VM is gone (terminal)
)

// RunnerStates lists every runner state, in lifecycle order.
var RunnerStates = []RunnerState{RunnerAssigned, RunnerBooting, RunnerIdle, RunnerBusy, RunnerEnded}

// Valid reports whether s is a known runner state.
func (s RunnerState) Valid() bool { return slices.Contains(RunnerStates, s) }

// RunnerEvent is something that happened to a runner.
type RunnerEvent string

// Runner events.
const (
	VMBooting     RunnerEvent = "vm-booting"     // its host started booting its VM
	RunnerStarted RunnerEvent = "runner-started" // the runner process runs in the VM
	TookJob       RunnerEvent = "took-job"       // GitHub's in_progress event named it
	VMEnded       RunnerEvent = "vm-ended"       // its VM is gone (reported by its agent, or its host left)
)

// RunnerEvents lists every runner event.
var RunnerEvents = []RunnerEvent{VMBooting, RunnerStarted, TookJob, VMEnded}

// RunnerRule is one row of the runner table.
type RunnerRule struct {
	From []RunnerState
	On   RunnerEvent
	To   RunnerState // Unchanged (as a RunnerState): stays
	Why  string
}

// Next is the state a runner in from is in after r.
func (r RunnerRule) Next(from RunnerState) RunnerState {
	if r.To == RunnerUnchanged {
		return from
	}
	return r.To
}

// RunnerUnchanged as a RunnerRule's To keeps the runner where it is.
const RunnerUnchanged RunnerState = "="

var liveRunner = []RunnerState{RunnerAssigned, RunnerBooting, RunnerIdle, RunnerBusy}

// Runners is the runner state machine. Agents' events arrive in order per
// runner, but GitHub's in_progress may come before or after the agent's
// "started", and after the VM ended.
var Runners = []RunnerRule{
	{From: []RunnerState{RunnerAssigned}, On: VMBooting, To: RunnerBooting, Why: "its host boots the VM"},
	{From: []RunnerState{RunnerBooting, RunnerIdle, RunnerBusy, RunnerEnded}, On: VMBooting, To: RunnerUnchanged,
		Why: "a late report"},
	{From: []RunnerState{RunnerAssigned, RunnerBooting}, On: RunnerStarted, To: RunnerIdle,
		Why: "the runner process waits for a job"},
	{From: []RunnerState{RunnerIdle, RunnerBusy, RunnerEnded}, On: RunnerStarted, To: RunnerUnchanged,
		Why: "GitHub's in_progress came first, or a late report"},
	{From: liveRunner, On: TookJob, To: RunnerBusy, Why: "GitHub gave it a job"},
	{From: []RunnerState{RunnerEnded}, On: TookJob, To: RunnerUnchanged,
		Why: "it ran the job and ended before GitHub's in_progress arrived"},
	{From: liveRunner, On: VMEnded, To: RunnerEnded,
		Why: "its VM is gone; the job bound to it learns that its runner ended"},
	{From: []RunnerState{RunnerEnded}, On: VMEnded, To: RunnerUnchanged, Why: "ended already"},
}

// StepRunner returns the rule for a runner in state from on event ev.
func StepRunner(from RunnerState, ev RunnerEvent) (RunnerRule, error) {
	for _, r := range Runners {
		if r.On == ev && slices.Contains(r.From, from) {
			return r, nil
		}
	}
	return RunnerRule{}, fmt.Errorf("runner in %s, event %s: %w", from, ev, ErrNoRule)
}
