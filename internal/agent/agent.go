// Package agent is the host daemon's core: it runs the VMs the control plane
// assigns to this host, one runner per VM, and reports what becomes of each.
//
// An assignment arrives before the runner's JIT config does: the agent boots
// the VM at once and hands the guest its runner command only when Configure
// delivers the config (the control plane fetches it from GitHub while the VM
// boots). A warm pool's VM (Assignment.Pool) boots and waits at the idle
// CPU weight, behind the VMs running jobs, until Configure claims it for
// one. Every VM ends in a report (Event kind "ended") and leaves nothing on
// the host: jobvm tears it down on every path.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Sentinel errors.
var (
	ErrUnknown = errors.New("no such runner on this host")
	ErrClosed  = errors.New("agent closed")
)

// Config wires an Agent.
type Config struct {
	HostID string
	Host   *jobvm.Host
	// Sink receives every event, from the agent's goroutines, in order per
	// runner. It must not block for long. It returns a channel closed once
	// the control plane has the event for good (applied to its store), or
	// nil if it has it once Sink returns. A runner's record in RunDir,
	// with its end, stays until then: an agent started before that
	// reports the end again.
	Sink func(agentapi.Event) <-chan struct{}
	// LogDir, if set, receives each runner's output as <runner>.log, capped
	// at LogLimit bytes (default 8 MiB).
	LogDir   string
	LogLimit int64
	// LogSink, if set, also receives each runner's output as it comes (the
	// fleet agent ships it to the control plane). It must not block.
	LogSink func(runner string, p []byte)
	// SampleSink, if set, receives running VMs' resource samples, one every
	// SampleEvery (0: jobvm.DefaultSampleEvery). It must not block.
	SampleSink  func(runner string, s profile.Sample)
	SampleEvery time.Duration
	// Images, if set, fetches an assignment's image (an id) from the
	// control plane when the host lacks it, before the VM boots, and keeps
	// it while the VM runs (see Images).
	Images *Images
	// RunDir, if set, makes jobs outlive the agent (see "Jobs that
	// outlive the agent" in resume.go): the agent records there each
	// runner whose job was sent, and Recover takes them over. Its VMs do
	// not die with the agent; Owner must then name an owner that outlives
	// this process as long as a successor may come (vm.AgentOwner).
	RunDir string
	// Owner is the VMs' owner (vm.Spec.Owner; default: this process).
	Owner string
	// DetachTimeout is how long a VM whose job ended while no agent was
	// attached waits for one before it powers off (0: the guest's
	// default).
	DetachTimeout time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
}

// Agent runs runner VMs on one host.
type Agent struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	runs   map[string]*run
	closed bool
	wg     sync.WaitGroup
	// detached counts the jobs let go by Detach.
	detached atomic.Int32
	// takeover counts the jobs Recover took over whose guests have not
	// answered yet.
	takeover sync.WaitGroup
	// stopping is closed by Close and Detach; delivering counts the
	// goroutines that wait for an end to reach the control plane, which
	// stop waiting then (forgetOnceDelivered).
	stopping   chan struct{}
	stopOnce   sync.Once
	delivering sync.WaitGroup
}

type run struct {
	asg    agentapi.Assignment
	cancel context.CancelCauseFunc
	config chan map[string]string // receives the secret env once
	once   sync.Once
	// configured: Configure has delivered the env (inside once).
	configured atomic.Bool
	// sent: the job was sent resumable and recorded in RunDir: Detach
	// lets it go rather than stopping it.
	sent atomic.Bool
	// standby is a warm pool's VM's: Configure claims it (nil otherwise).
	standby *jobvm.Standby
	// release ends the run's hold on its image.
	release func()

	mu     sync.Mutex
	execer *jobvm.Execer // once the guest is ready: exec sessions in the VM

	keep chan time.Time // the control plane's word on keeping the VM after its job (Hold)
}

func (r *run) execs() *jobvm.Execer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.execer
}

func (r *run) setExecer(ex *jobvm.Execer) {
	r.mu.Lock()
	r.execer = ex
	r.mu.Unlock()
}

// New returns an agent; it runs nothing until Launch.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == nil || cfg.Sink == nil || cfg.HostID == "" {
		return nil, errors.New("agent: Host, HostID and Sink are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LogLimit == 0 {
		cfg.LogLimit = 8 << 20
	}
	if cfg.Owner == "" {
		cfg.Owner = vm.ProcessOwner()
	}
	for _, dir := range []string{cfg.LogDir, cfg.RunDir} {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("host", cfg.HostID), runs: map[string]*run{}, stopping: make(chan struct{})}, nil
}

// Launch starts a runner's VM and returns at once; its progress arrives as
// events.
func (a *Agent) Launch(asg agentapi.Assignment) error {
	if !validRunner(asg.Runner) {
		return fmt.Errorf("agent: assignment with a bad runner name %q", asg.Runner)
	}
	return a.start(asg, a.execute, false)
}

// start runs body for asg's runner in a goroutine of its own, as the
// runner's run, until it returns the runner's "ended" event, which start
// emits, or says that it let the job go (Detach). A recovered run is one
// whose job was sent by an earlier agent: it is configured already.
func (a *Agent) start(asg agentapi.Assignment, body func(context.Context, *run) (agentapi.Event, bool), recovered bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if _, ok := a.runs[asg.Runner]; ok {
		return fmt.Errorf("%w: %s", agentapi.ErrDuplicate, asg.Runner)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &run{asg: asg, cancel: cancel, config: make(chan map[string]string, 1),
		release: a.cfg.Images.Acquire(asg.Image), keep: make(chan time.Time, 1)}
	if asg.Pool != "" && !recovered {
		r.standby = &jobvm.Standby{}
	}
	if recovered {
		r.once.Do(func() {})
		r.configured.Store(true)
		r.sent.Store(true)
	}
	a.runs[asg.Runner] = r
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		end, let := body(ctx, r)
		r.release()
		cancel(nil)
		a.mu.Lock()
		delete(a.runs, asg.Runner)
		a.mu.Unlock()
		if let {
			a.detached.Add(1)
			return
		}
		// A job that was sent: its record, with its end, stays until the
		// control plane has the end, so that an agent killed before
		// then reports it again. Lost, the end would reach the control
		// plane as "VM gone", an infrastructure loss, whatever the job
		// did.
		if end.At.IsZero() {
			end.At = a.cfg.Now() // the same in the record and the event
		}
		if r.sent.Load() {
			a.recordEnd(asg.Runner, end)
		}
		// Only now is the runner gone from the agent too: whoever hears
		// "ended" and asks finds nothing of it. Nothing comes between
		// the two: a hello in that gap would not name it at all
		// (Daemon.inventory).
		a.forgetOnceDelivered(asg.Runner, a.emit(end))
	}()
	return nil
}

// Configure delivers a runner's secret environment (its JIT config); the
// guest gets its command once both this and the VM are ready. A warm
// pool's VM, booted or still booting, is claimed first: it gets the normal
// CPU weight before the config, so that its runner starts ahead of the
// replacement that begins to boot beside it now.
func (a *Agent) Configure(runner string, env map[string]string) error {
	a.mu.Lock()
	r, ok := a.runs[runner]
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknown, runner)
	}
	sent := false
	r.once.Do(func() {
		if err := r.standby.Claim(); err != nil {
			a.log.Warn("cannot raise a claimed pool VM's CPU weight; its job runs on", "runner", runner, "err", err)
		}
		r.config <- maps.Clone(env)
		r.configured.Store(true)
		sent = true
	})
	if !sent {
		return fmt.Errorf("agent: runner %s already configured", runner)
	}
	return nil
}

// Hold says until when to keep runner's VM after its job (zero: not at
// all), for one that may be kept (Assignment.MayKeep). The latest word
// counts.
func (a *Agent) Hold(runner string, until time.Time) error {
	a.mu.Lock()
	r, ok := a.runs[runner]
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknown, runner)
	}
	select {
	case <-r.keep:
	default:
	}
	r.keep <- until
	return nil
}

// Stop ends a runner's VM; its "ended" event follows. Stopping a runner
// that has already gone is not an error.
func (a *Agent) Stop(runner, reason string) error {
	a.mu.Lock()
	r, ok := a.runs[runner]
	a.mu.Unlock()
	if ok {
		r.cancel(errors.New(reason))
	}
	return nil
}

// Exec runs an exec session (agentapi's exec.go) in runner's VM, beside its
// job and as the job's user, until the session ends or ctx does. An error
// is why no session ran, or why it broke off; a session that ran to its end
// has sent its ExecMsgExit.
func (a *Agent) Exec(ctx context.Context, runner string, c agentapi.ExecConn) error {
	a.mu.Lock()
	r, ok := a.runs[runner]
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s (its VM has ended)", ErrUnknown, runner)
	}
	ex := r.execs()
	switch {
	case ex == nil:
		return errors.New("the runner's VM is still booting: try again in a moment")
	case !ex.Supported():
		return errors.New("the VM's image predates exec sessions: rebuild it (tandem image build)")
	}
	k, p, err := c.Read(ctx)
	if err != nil {
		return err
	}
	var open agentapi.ExecOpen
	if k != agentapi.ExecMsgOpen {
		return fmt.Errorf("%w: the first message must open the session", agentapi.ErrExecMessage)
	}
	if err := json.Unmarshal(p, &open); err != nil {
		return fmt.Errorf("%w: open: %v", agentapi.ErrExecMessage, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdin, input := io.Pipe()
	resize := make(chan jobvm.WindowSize, 1)
	go func() {
		// The far end gone, or a message out of the protocol: the session
		// is killed.
		defer cancel()
		for {
			k, p, err := c.Read(ctx)
			if err != nil {
				input.CloseWithError(err)
				return
			}
			switch k {
			case agentapi.ExecMsgStdin:
				if _, err := input.Write(p); err != nil {
					return
				}
			case agentapi.ExecMsgEOF:
				input.Close()
			case agentapi.ExecMsgResize:
				var sz agentapi.ExecSize
				if json.Unmarshal(p, &sz) != nil {
					return
				}
				// Only the newest size counts: one not yet applied is
				// replaced (this goroutine alone sends, so there is room).
				select {
				case <-resize:
				default:
				}
				resize <- jobvm.WindowSize{Rows: sz.Rows, Cols: sz.Cols}
			default:
				input.CloseWithError(agentapi.ErrExecMessage)
				return
			}
		}
	}()
	res, err := ex.Exec(ctx, jobvm.ExecRequest{Argv: open.Argv, User: ex.JobUser(), TTY: open.TTY,
		Size: jobvm.WindowSize{Rows: open.Rows, Cols: open.Cols}, Term: open.Term},
		stdin, agentapi.ExecWriter{Ctx: ctx, Conn: c, Kind: agentapi.ExecMsgStdout},
		agentapi.ExecWriter{Ctx: ctx, Conn: c, Kind: agentapi.ExecMsgStderr}, resize)
	if err != nil {
		return err
	}
	return agentapi.WriteJSON(ctx, c, agentapi.ExecMsgExit, agentapi.ExecResult{Code: res.Code, Signal: res.Signal, Error: res.Error})
}

// NameImages hands the image ids the control plane names to Config.Images
// (agentapi.ImageNamer).
func (a *Agent) NameImages(ids []string) { a.cfg.Images.SetNamed(ids) }

// Runners lists the runners this agent is running.
func (a *Agent) Runners() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	names := slices.Collect(maps.Keys(a.runs))
	slices.Sort(names)
	return names
}

// AwaitingConfig lists the runners whose VMs still wait for Configure
// (agentapi.ConfigWaiter): the control plane a reconnecting agent reaches
// sends their configs, which the one it left may never have.
func (a *Agent) AwaitingConfig() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var names []string
	for name, r := range a.runs {
		if !r.configured.Load() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Close stops every VM and waits until all are gone.
func (a *Agent) Close() {
	a.mu.Lock()
	a.closed = true
	for _, r := range a.runs {
		r.cancel(errors.New("agent shutting down"))
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.stopDelivering()
}

// emit hands e to the Sink and returns the Sink's channel, closed once the
// control plane has e for good (nil: it has it now).
func (a *Agent) emit(e agentapi.Event) <-chan struct{} {
	e.Host = a.cfg.HostID
	if e.At.IsZero() {
		e.At = a.cfg.Now()
	}
	return a.cfg.Sink(e)
}

// execute runs one runner's VM to its end and returns the "ended" event,
// or says that its job was let go (Detach).
func (a *Agent) execute(ctx context.Context, r *run) (agentapi.Event, bool) {
	asg := r.asg
	log := a.log.With("runner", asg.Runner)
	out, closeOut := a.output(asg.Runner, false)
	defer closeOut()
	if err := a.cfg.Images.Ensure(ctx, asg.Image); err != nil {
		// Never booted: a missing or corrupt image is the launch's failure.
		ev := agentapi.Event{Runner: asg.Runner, Kind: agentapi.EventEnded, Failure: failure.Launch, Detail: err.Error()}
		if ctx.Err() != nil {
			ev.Failure, ev.Detail = failure.Cancelled, context.Cause(ctx).Error()
		}
		log.Warn("runner VM not launched: no intact image", "image", asg.Image, "err", err)
		return ev, false
	}
	var vmID string
	req := jobvm.Request{
		Arch: asg.Arch, VCPUs: asg.VCPUs, MemoryMiB: asg.MemoryMiB, Image: asg.Image,
		Argv: asg.Command, User: asg.User, Env: asg.Env, Timeout: asg.Timeout,
		Stdout: out, Stderr: out, Egress: asg.Egress, DiskMiB: asg.DiskMiB,
		Owner: a.cfg.Owner, DieWithOwner: true, Standby: r.standby,
		OnCreate: func(inst vm.Instance) {
			vmID = inst.Info().ID
			log.Info("runner VM booting", "vm", vmID)
			a.emit(agentapi.Event{Runner: asg.Runner, Kind: agentapi.EventBooting, VMID: vmID})
		},
		OnExec: r.setExecer,
		OnReady: func(vm.Instance) {
			if asg.Pool != "" {
				log.Info("pool VM ready", "vm", vmID, "pool", asg.Pool)
				a.emit(agentapi.Event{Runner: asg.Runner, Kind: agentapi.EventReady, VMID: vmID})
			}
		},
		Await: func(ctx context.Context) (map[string]string, error) {
			timeout := asg.ConfigTimeout
			if timeout == 0 {
				timeout = 2 * time.Minute
			}
			t := time.NewTimer(timeout)
			defer t.Stop()
			select {
			case env := <-r.config:
				a.emit(agentapi.Event{Runner: asg.Runner, Kind: agentapi.EventStarted, VMID: vmID})
				return env, nil
			case <-t.C:
				return nil, fmt.Errorf("no runner config within %s", timeout)
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
	}
	if a.cfg.RunDir != "" {
		req.Resumable, req.DieWithOwner, req.DetachTimeout = true, false, a.cfg.DetachTimeout
		req.OnSent = func(d jobvm.Detached) {
			if err := a.saveRecord(record{Assignment: asg, Detached: d, LogBase: out.written()}); err != nil {
				log.Error("cannot record the runner's job: it ends with this agent", "err", err)
				return
			}
			r.sent.Store(true)
		}
	}
	if asg.MayKeep {
		req.AfterExit = func(ctx context.Context, code int) time.Time {
			t := time.NewTimer(agentapi.KeepVerdictWait)
			defer t.Stop()
			select {
			case until := <-r.keep:
				if until.After(a.cfg.Now()) {
					log.Info("runner VM kept after its job, for debugging", "vm", vmID, "until", until.Format(time.RFC3339))
				}
				return until
			case <-t.C:
				return time.Time{}
			case <-ctx.Done():
				return time.Time{}
			}
		}
	}
	if sink := a.cfg.SampleSink; sink != nil {
		req.SampleEvery = a.cfg.SampleEvery
		req.OnSample = func(s profile.Sample) { sink(asg.Runner, s) }
	}
	res, err := a.cfg.Host.Run(ctx, req)
	return a.outcome(ctx, r, out, res, err)
}

// outcome turns what Run or Reattach returned for r's job into its
// "ended" event, or, for a job let go, records how much of its output was
// written and says so.
func (a *Agent) outcome(ctx context.Context, r *run, out *capped, res jobvm.Result, err error) (agentapi.Event, bool) {
	asg := r.asg
	log := a.log.With("runner", asg.Runner)
	var d *jobvm.Detached
	if errors.As(err, &d) {
		// The record written when the job was sent stands if this one
		// cannot be: the next agent then goes by the log's size.
		if err := a.saveRecord(record{Assignment: asg, Detached: *d, Exact: true}); err != nil {
			log.Warn("cannot record how much of the job's output was written", "err", err)
		}
		log.Info("runner's job let go; it runs on in its VM for the next agent", "vm", d.VMID, "offset", d.Offset)
		return agentapi.Event{}, true
	}
	ev := agentapi.Event{Runner: asg.Runner, Kind: agentapi.EventEnded, VMID: res.VMID, Accel: res.Accel,
		Emulated: res.Emulated, ExitCode: res.ExitCode, Failure: res.Failure, Detail: res.Detail, Egress: res.Egress}
	var fe *jobvm.FailureError
	switch {
	case ctx.Err() != nil && (err != nil || ev.Failure == failure.Cancelled):
		// Stopped: whatever broke off, the reason is the stop's.
		ev.Failure, ev.Detail = failure.Cancelled, context.Cause(ctx).Error()
	case err != nil && !errors.As(err, &fe):
		ev.Failure, ev.Detail = failure.Launch, err.Error()
	}
	log.Info("runner VM ended", "vm", res.VMID, "exit_code", ev.ExitCode, "failure", ev.Failure,
		"boot_ms", res.Timings.Boot, "run_ms", res.Timings.Run, "total_ms", res.Timings.Total)
	return ev, false
}

// output is where a runner's output goes: its log file (without a LogDir,
// nowhere) and the LogSink, together capped at LogLimit bytes. A run taken
// over from an earlier agent (resume) writes on where the log ends.
func (a *Agent) output(runner string, resume bool) (*capped, func()) {
	var ws []io.Writer
	c := &capped{left: a.cfg.LogLimit}
	closer := func() {}
	if a.cfg.LogDir != "" {
		flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		if resume {
			flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
		}
		f, err := os.OpenFile(filepath.Join(a.cfg.LogDir, runner+".log"), flags, 0o600)
		if err != nil {
			a.log.Warn("runner log", "err", err)
		} else {
			if fi, err := f.Stat(); err == nil && resume {
				c.n = fi.Size()
				c.left = max(c.left-c.n, 0)
			}
			ws = append(ws, f)
			closer = func() { f.Close() }
		}
	}
	if sink := a.cfg.LogSink; sink != nil {
		ws = append(ws, sinkWriter(func(p []byte) { sink(runner, p) }))
	}
	c.w = io.MultiWriter(ws...)
	return c, closer
}

// sinkWriter hands each write's bytes (copied) to a function.
type sinkWriter func([]byte)

func (f sinkWriter) Write(p []byte) (int, error) {
	f(append([]byte(nil), p...))
	return len(p), nil
}

// capped writes up to left bytes and silently drops the rest.
type capped struct {
	mu   sync.Mutex
	w    io.Writer
	left int64
	n    int64 // written in all, an earlier agent's part of the log included
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	if len(p) > 0 {
		if _, err := c.w.Write(p); err != nil {
			return n, nil // a full disk must not kill the runner's output stream
		}
		c.left -= int64(len(p))
		c.n += int64(len(p))
	}
	return n, nil
}

// written is how much of the output went out.
func (c *capped) written() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
