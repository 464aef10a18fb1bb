package agentapi

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"

	"github.com/tandem-ci/tandem/internal/failure"
)

// Runner is what the daemon drives: *agent.Agent, or a fake in benchmarks.
type Runner interface {
	Launch(Assignment) error
	Configure(runner string, env map[string]string) error
	Stop(runner, reason string) error
	Runners() []string
}

// ExecRunner is a Runner that runs exec sessions in its runners' VMs
// (CmdExec): *agent.Agent.
type ExecRunner interface {
	Exec(ctx context.Context, runner string, c ExecConn) error
}

// Holder is a Runner that keeps VMs after their jobs (CmdHold):
// *agent.Agent.
type Holder interface {
	Hold(runner string, until time.Time) error
}

// ExecDialTimeout bounds an agent's dial back for an exec session.
const ExecDialTimeout = 15 * time.Second

// ConfigWaiter is a Runner that says which of its runners' VMs still wait
// for their runner config (Hello.AwaitingConfig): *agent.Agent.
type ConfigWaiter interface {
	AwaitingConfig() []string
}

// InventoryOf is what r runs now.
func InventoryOf(r Runner) Inventory {
	inv := Inventory{Running: r.Runners()}
	if w, ok := r.(ConfigWaiter); ok {
		inv.AwaitingConfig = w.AwaitingConfig()
	}
	return inv
}

// ImageNamer is a Runner that keeps its images in step with the ids the
// control plane names (CmdImages): *agent.Agent.
type ImageNamer interface {
	NameImages(ids []string)
}

// Daemon is the agent's side of the protocol: it keeps a stream open to
// the control plane (reconnecting to the client's addresses in turn, with
// backoff after each full round), carries out commands,
// and sends heartbeats, events and runner logs. Events that cannot be sent
// (the control plane is down or unreachable) are kept, in order, and sent
// when it is back; the VMs go on meanwhile.
type Daemon struct {
	Client       *Client
	AgentVersion string
	Capacity     func() Capacity
	Load         func() float64 // optional
	MemAvailable func() int     // optional: the machine's available memory, MiB
	Logger       *slog.Logger
	// OnCommand, if set, sees every command as it arrives (benchmarks
	// measure assignment latency with it).
	OnCommand func(Command)
	// HeartbeatInterval defaults to the protocol's HeartbeatInterval.
	HeartbeatInterval time.Duration

	run Runner
	ctx context.Context // Run's: exec sessions end with it

	mu      sync.Mutex
	events  []Event
	sent    []chan struct{} // beside events: each closed once its event is reported
	logs    map[string][]byte
	samples map[string][]profile.Sample // by runner, until the next heartbeat
	kick    chan struct{}
	dropped int   // events dropped since the last warning
	shifted int64 // events ever dropped from the head of the queue
}

// maxQueued bounds the events kept while the control plane is away.
const maxQueued = 100_000

// Bind sets the runner the daemon drives (the agent is made with the
// daemon's Event and Log as its sinks, so it comes after the daemon).
func (d *Daemon) Bind(r Runner) {
	d.run = r
	d.kick = make(chan struct{}, 1)
	d.logs = map[string][]byte{}
	d.samples = map[string][]profile.Sample{}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Client != nil && d.Client.Logger == nil {
		d.Client.Logger = d.Logger // which address it connected to
	}
}

// Event queues an agent event for the control plane.
func (d *Daemon) Event(e Event) { d.Send(e) }

// Send queues an agent event for the control plane (an agent.Config.Sink)
// and returns a channel closed once the control plane has applied it. An
// event dropped from a full queue never is: its channel stays open.
func (d *Daemon) Send(e Event) <-chan struct{} {
	reported := make(chan struct{})
	d.mu.Lock()
	if len(d.events) >= maxQueued {
		d.events, d.sent = d.events[1:], d.sent[1:]
		d.dropped++
		d.shifted++
	}
	d.events = append(d.events, e)
	d.sent = append(d.sent, reported)
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
	return reported
}

// Log queues runner output for the control plane (an agent.Config.LogSink).
// Per runner at most 1 MiB waits; beyond that the oldest output is dropped.
func (d *Daemon) Log(runner string, p []byte) {
	d.mu.Lock()
	b := append(d.logs[runner], p...)
	if len(b) > 1<<20 {
		b = b[len(b)-1<<20:]
	}
	d.logs[runner] = b
	d.mu.Unlock()
}

// maxPendingSamples bounds one runner's samples kept while the control
// plane is away; the oldest go first.
const maxPendingSamples = 600

// Sample queues a running VM's resource sample for the next heartbeat (an
// agent.Config.SampleSink).
func (d *Daemon) Sample(runner string, s profile.Sample) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := append(d.samples[runner], s)
	if len(q) > maxPendingSamples {
		q = q[len(q)-maxPendingSamples:]
	}
	d.samples[runner] = q
}

// takeSamples empties the sample queues.
func (d *Daemon) takeSamples() []RunnerSamples {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []RunnerSamples
	for _, r := range slices.Sorted(maps.Keys(d.samples)) {
		out = append(out, RunnerSamples{Runner: r, Samples: d.samples[r]})
	}
	clear(d.samples)
	return out
}

// putBackSamples returns samples a failed report did not deliver, before
// any taken since, within the bound.
func (d *Daemon) putBackSamples(rs []RunnerSamples) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range rs {
		q := append(r.Samples, d.samples[r.Runner]...)
		if len(q) > maxPendingSamples {
			q = q[len(q)-maxPendingSamples:]
		}
		d.samples[r.Runner] = q
	}
}

// Run serves until ctx ends or the control plane refuses the agent for
// good (ErrRevoked, ErrVersion), which it returns.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.reportLoop(ctx, cancel) }()
	go func() { defer wg.Done(); d.heartbeatLoop(ctx) }()
	defer wg.Wait()
	// The client moves on to its next address after each lost stream; the
	// backoff comes between full rounds, so one replica down costs none.
	addrs := len(d.Client.Addrs())
	backoff, failed := time.Second, 0 // failed: addresses tried since the last wait
	for {
		start := time.Now()
		hello := Hello{AgentVersion: d.AgentVersion, Capacity: d.Capacity(), Inventory: d.inventory()}
		err := d.Client.Stream(ctx, hello, d.handle)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if errors.Is(err, ErrRevoked) || errors.Is(err, ErrVersion) {
			cancel(err)
			return err
		}
		if time.Since(start) > 30*time.Second {
			backoff, failed = time.Second, 0
		}
		if failed++; failed < addrs {
			d.Logger.Warn("connection to the control plane lost; trying the next address", "err", err)
			continue
		}
		failed = 0
		d.Logger.Warn("connection to the control plane lost; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, MaxReconnectBackoff)
	}
}

// inventory is what a hello says the agent runs: its runner's inventory,
// and the runners whose "ended" is still queued here. A control plane
// ends a runner the hello does not name as gone with the agent, without
// its exit; named, it is kept until its own "ended" comes, with the exit
// code and the failure, whatever happened while the stream was down.
func (d *Daemon) inventory() Inventory {
	inv := InventoryOf(d.run)
	d.mu.Lock()
	for _, e := range d.events {
		if e.Kind == EventEnded && !slices.Contains(inv.Running, e.Runner) {
			inv.Running = append(inv.Running, e.Runner)
		}
	}
	d.mu.Unlock()
	slices.Sort(inv.Running)
	return inv
}

func (d *Daemon) handle(c Command) {
	if d.OnCommand != nil {
		d.OnCommand(c)
	}
	var err error
	switch c.Type {
	case CmdLaunch:
		if c.Assignment == nil {
			return
		}
		err = d.run.Launch(*c.Assignment)
		if err != nil && !errors.Is(err, ErrDuplicate) {
			// The control plane learns of the failure as the runner's end.
			d.Event(Event{Runner: c.Assignment.Runner, Kind: EventEnded, At: time.Now(),
				Failure: failure.Launch, Detail: err.Error()})
		}
	case CmdConfigure:
		err = d.run.Configure(c.Runner, c.Env)
	case CmdStop:
		err = d.run.Stop(c.Runner, c.Reason)
	case CmdImages:
		if n, ok := d.run.(ImageNamer); ok {
			n.NameImages(c.Images)
		}
	case CmdExec:
		if c.Exec != nil {
			go d.exec(*c.Exec)
		}
	case CmdHold:
		if h, ok := d.run.(Holder); ok {
			err = h.Hold(c.Runner, c.Until)
		}
	}
	if err != nil {
		d.Logger.Warn("command failed", "command", c.Type, "runner", c.Runner, "err", err)
	}
}

// exec dials back to the control plane for an exec session and runs it in
// the runner's VM. Whatever fails is told to the far end as the session's
// end.
func (d *Daemon) exec(c ExecCommand) {
	d.mu.Lock()
	ctx := d.ctx
	d.mu.Unlock()
	if ctx == nil {
		return
	}
	er, ok := d.run.(ExecRunner)
	if !ok {
		d.Logger.Warn("exec session asked of an agent that runs none", "runner", c.Runner)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, ExecDialTimeout)
	conn, err := d.Client.DialExec(dctx, d.Client.StreamAddr(), c.Session)
	cancel()
	if err != nil {
		d.Logger.Warn("exec session: dialing back to the control plane", "runner", c.Runner, "err", err)
		return
	}
	d.Logger.Info("exec session opened", "runner", c.Runner)
	err = er.Exec(ctx, c.Runner, conn)
	if err != nil {
		WriteJSON(ctx, conn, ExecMsgExit, ExecResult{Code: 125, Error: err.Error()})
	}
	conn.Close("session over")
	d.Logger.Info("exec session closed", "runner", c.Runner, "err", err)
}

// reportLoop sends queued events (and logs) as soon as they come, in order;
// on failure it keeps them and retries.
func (d *Daemon) reportLoop(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.flush(context.Background()) // best effort: the VMs' ends on shutdown
			return
		case <-d.kick:
		case <-t.C:
		}
		if err := d.flush(ctx); errors.Is(err, ErrRevoked) {
			cancel(err)
			return
		}
	}
}

func (d *Daemon) flush(ctx context.Context) error {
	d.mu.Lock()
	evs, sent := d.events, d.sent
	shifted := d.shifted
	logs := d.logs
	d.logs = map[string][]byte{}
	dropped := d.dropped
	d.dropped = 0
	d.mu.Unlock()
	if dropped > 0 {
		d.Logger.Warn("events dropped while the control plane was away", "dropped", dropped)
	}
	for runner, b := range logs {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := d.Client.Log(cctx, runner, b)
		cancel()
		if err != nil {
			d.Logger.Debug("shipping runner log", "runner", runner, "err", err)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := d.Client.Report(cctx, Report{Events: evs})
	cancel()
	d.mu.Lock()
	if n := len(evs) - int(d.shifted-shifted); err == nil && n > 0 {
		d.events, d.sent = d.events[n:], d.sent[n:] // the sent ones, less any dropped meanwhile
	}
	d.mu.Unlock()
	if err == nil {
		for _, c := range sent[:len(evs)] { // dropped meanwhile or not, the control plane has them
			close(c)
		}
	}
	return err
}

func (d *Daemon) heartbeatLoop(ctx context.Context) {
	every := d.HeartbeatInterval
	if every <= 0 {
		every = HeartbeatInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		hb := &Heartbeat{Capacity: d.Capacity(), Running: d.run.Runners()}
		if d.Load != nil {
			hb.Load1 = d.Load()
		}
		if d.MemAvailable != nil {
			hb.MemAvailableMiB = d.MemAvailable()
		}
		samples := d.takeSamples()
		cctx, cancel := context.WithTimeout(ctx, every)
		if err := d.Client.Report(cctx, Report{Heartbeat: hb, Samples: samples}); err != nil && ctx.Err() == nil {
			d.Logger.Debug("heartbeat", "err", err)
			d.putBackSamples(samples)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
