package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Jobs that outlive the agent.
//
// With a RunDir, every runner's job is sent resumable (jobvm.Request.
// Resumable) to a VM that does not die with the agent, and the moment it
// is sent the agent writes a record of it to RunDir: the assignment
// (without its environment) and what jobvm.Host.Reattach needs. A later
// agent process, after an upgrade, a crash or a SIGKILL, calls Recover
// before it reaches the control plane: each recorded runner whose VM is
// still there is taken over, its output resumed where the runner's log
// ends, and its end reported as if the agent had never gone; one whose VM
// is gone is reported ended (failure.VMGone). Detach lets go of every job
// on purpose (SIGTERM: the agent is being replaced) and records exactly how
// much of each one's output it wrote.
//
// When a runner's VM ends, its end is written into its record, which is
// removed once the control plane has the end for good (the Sink's
// channel); an agent started before that reports the end again rather
// than the VM as gone. VMs that were still booting or waiting for their
// config have no record:
// the next agent's Collect reclaims them (Keep names the ones it
// must keep), and the control plane places their jobs again.

// record is what RunDir keeps of one runner whose job was sent.
type record struct {
	Assignment agentapi.Assignment `json:"assignment"` // without Env
	Detached   jobvm.Detached      `json:"detached"`
	// LogBase is how much the runner's log held when its job was sent:
	// what of the log is past it is the job's output received so far.
	LogBase int64 `json:"log_base"`
	// Exact: Detached.Offset is what the agent had written when it let
	// the job go (Detach); otherwise the log's size says (a SIGKILL).
	Exact bool `json:"exact,omitempty"`
	// Ended is the runner's end, once its VM has ended, until the
	// control plane has it.
	Ended *agentapi.Event `json:"ended,omitempty"`
}

// recordFile is where runner's record is kept.
func (a *Agent) recordFile(runner string) string {
	return filepath.Join(a.cfg.RunDir, runner+".json")
}

// saveRecord writes runner's record atomically: a reader finds the old one
// or the new one, whole.
func (a *Agent) saveRecord(rec record) error {
	rec.Assignment.Env = nil
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(a.recordFile(rec.Assignment.Runner), b, 0o600)
}

// recordEnd writes runner's end into its record.
func (a *Agent) recordEnd(runner string, end agentapi.Event) {
	if a.cfg.RunDir == "" {
		return
	}
	b, err := os.ReadFile(a.recordFile(runner))
	var rec record
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err == nil {
		end.Host, rec.Ended = a.cfg.HostID, &end
		err = a.saveRecord(rec)
	}
	if err != nil {
		a.log.Warn("cannot record the runner's end; should the agent stop before the control plane has it, the job is reported lost with its VM", "runner", runner, "err", err)
	}
}

// forgetOnceDelivered removes runner's record once delivered is closed
// (nil: now), unless the agent stops first: the record then stays for the
// next agent, which reports the end again.
func (a *Agent) forgetOnceDelivered(runner string, delivered <-chan struct{}) {
	if delivered == nil {
		a.dropRecord(runner)
		return
	}
	a.delivering.Add(1)
	go func() {
		defer a.delivering.Done()
		select {
		case <-delivered:
			a.dropRecord(runner)
		case <-a.stopping:
		}
	}()
}

// stopDelivering ends the waits of forgetOnceDelivered, and waits for
// them.
func (a *Agent) stopDelivering() {
	a.stopOnce.Do(func() { close(a.stopping) })
	a.delivering.Wait()
}

func (a *Agent) dropRecord(runner string) {
	if a.cfg.RunDir == "" {
		return
	}
	if err := os.Remove(a.recordFile(runner)); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("cannot remove a runner's record; the next agent start reports it once more", "runner", runner, "err", err)
	}
}

// readRecords reads every record in dir; a record that cannot be read is
// returned by name in bad.
func readRecords(dir string) (recs []record, bad []string, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err == nil && (rec.Assignment.Runner != name || rec.Detached.VMID == "" && rec.Ended == nil) {
			err = errors.New("its runner or VM is missing or not the file's")
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		recs = append(recs, rec)
	}
	return recs, bad, nil
}

// Keep is what the host's Collect (jobvm.Host.Collect) must keep before
// an agent with this RunDir and VM owner starts: every VM of another owner
// that is alive, and of this agent's only those with a recorded job, which
// Recover takes over. The rest of its VMs were booting or waiting for
// their config when an earlier agent went: nothing can take them over.
func Keep(runDir, owner string) (func(vm.Info) bool, error) {
	recs, _, err := readRecords(runDir)
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, rec := range recs {
		if rec.Ended == nil { // a VM whose end is recorded is not taken over
			ids[rec.Detached.VMID] = true
		}
	}
	return func(info vm.Info) bool { return info.Spec.Owner != owner || ids[info.ID] }, nil
}

// validRunner says whether a runner name can name a file in RunDir.
func validRunner(name string) bool {
	return name != "" && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, "/\x00") && len(name) <= 200
}

// Recover takes over the jobs an earlier agent process recorded in RunDir
// (see "Jobs that outlive the agent"): call it once, after New and before
// the agent is reachable, so that the control plane's first look at it
// (Runners) finds them. It returns the runners taken over; each one's end
// is reported as any other's. A runner whose VM is gone is reported ended
// at once; a record that cannot be read is logged and removed, its VM left
// to Collect.
func (a *Agent) Recover(ctx context.Context) ([]string, error) {
	if a.cfg.RunDir == "" {
		return nil, nil
	}
	recs, bad, err := readRecords(a.cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("agent: reading the runs an earlier agent left: %w", err)
	}
	for _, b := range bad {
		a.log.Error("a runner record cannot be read; its job cannot be taken over and its VM is reclaimed", "record", b)
		name, _, _ := strings.Cut(b, ":")
		os.Remove(filepath.Join(a.cfg.RunDir, name))
	}
	var taken []string
	for _, rec := range recs {
		name := rec.Assignment.Runner
		if rec.Ended != nil {
			// It ended under an earlier agent, which did not hear that
			// the control plane had its end: reported again.
			a.log.Info("reporting again the end of a runner an earlier agent saw end", "runner", name,
				"exit_code", rec.Ended.ExitCode, "failure", rec.Ended.Failure)
			a.forgetOnceDelivered(name, a.emit(*rec.Ended))
			continue
		}
		inst, err := a.cfg.Host.Driver.Get(ctx, rec.Detached.VMID)
		if err != nil {
			a.log.Warn("a runner's VM was gone when the agent started", "runner", name, "vm", rec.Detached.VMID, "err", err)
			ev := rec.ended()
			ev.Failure = failure.VMGone
			ev.Detail = fmt.Sprintf("the VM was gone when the host's agent restarted (%v)", err)
			if errors.Is(err, vm.ErrNotFound) {
				ev.Detail = "the VM was gone when the host's agent restarted"
			}
			a.forgetOnceDelivered(name, a.emit(ev))
			continue
		}
		a.takeover.Add(1)
		var once sync.Once
		done := func() { once.Do(a.takeover.Done) }
		if err := a.start(rec.Assignment, func(ctx context.Context, r *run) (agentapi.Event, bool) {
			defer done()
			return a.reattach(ctx, r, inst, rec, done)
		}, true); err != nil {
			done()
			return taken, err
		}
		taken = append(taken, name)
	}
	slices.Sort(taken)
	return taken, nil
}

// ended is the "ended" event of the record's runner, as far as the record
// knows.
func (rec record) ended() agentapi.Event {
	res := rec.Detached.Result
	return agentapi.Event{Runner: rec.Assignment.Runner, Kind: agentapi.EventEnded, VMID: rec.Detached.VMID,
		Accel: res.Accel, Emulated: res.Emulated}
}

// WaitTakenOver waits until every job Recover took over has its guest
// answering again (or has ended), or ctx ends.
func (a *Agent) WaitTakenOver(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		a.takeover.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reattach takes over rec's job in its VM inst, writing its output on
// where the runner's log ends, and returns its "ended" event, or says that
// it was let go again. It calls live once the guest has answered.
func (a *Agent) reattach(ctx context.Context, r *run, inst vm.Instance, rec record, live func()) (agentapi.Event, bool) {
	name := rec.Assignment.Runner
	log := a.log.With("runner", name, "vm", rec.Detached.VMID)
	out, closeOut := a.output(name, true)
	defer closeOut()
	d := rec.Detached
	if !rec.Exact && a.cfg.LogDir != "" {
		// Killed: what the log holds past LogBase is what the agent had
		// received. A log the cap stopped ends short of that, and what
		// the guest sends again up to the real offset is dropped by the
		// same cap.
		d.Offset = max(out.written()-rec.LogBase, 0)
	} else if a.cfg.LogDir != "" {
		// Let go on purpose: the offset is exact, but only until this
		// agent writes more. Should it be killed in turn, the next one
		// must go by the log's size again, so the record says where the
		// job's output starts in the log.
		rec.LogBase, rec.Exact = out.written()-d.Offset, false
		if err := a.saveRecord(rec); err != nil {
			log.Warn("cannot record where the job's output starts in the runner's log; should this agent be killed, the next one repeats some", "err", err)
		}
	}
	log.Info("taking over a runner's job from an earlier agent", "offset", d.Offset, "exact", rec.Exact)
	rr := jobvm.ReattachRequest{Stdout: out, Stderr: out,
		OnExec: func(ex *jobvm.Execer) {
			r.setExecer(ex)
			live()
		}}
	if sink := a.cfg.SampleSink; sink != nil {
		rr.SampleEvery = a.cfg.SampleEvery
		rr.OnSample = func(s profile.Sample) { sink(name, s) }
	}
	res, err := a.cfg.Host.Reattach(ctx, inst, d, rr)
	return a.outcome(ctx, r, out, res, err)
}

// Detach lets go of every runner whose job can outlive the agent, leaving
// its VM running and its record in RunDir for the next agent process
// (Recover), and stops every other VM as Close does (a VM still booting or
// waiting for its config, one whose guest cannot resume jobs). It waits
// until every run has let go or ended, and returns how many jobs run on.
func (a *Agent) Detach() int {
	a.mu.Lock()
	a.closed = true
	for _, r := range a.runs {
		if r.sent.Load() {
			r.cancel(jobvm.ErrDetached)
		} else {
			r.cancel(errors.New("agent shutting down"))
		}
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.stopDelivering()
	return int(a.detached.Load())
}
