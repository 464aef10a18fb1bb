//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// Why a job was stopped, as context causes.
var (
	errHostCancel = errors.New("cancelled by host")
	errHostGone   = errors.New("host channel closed")
)

type sessionConfig struct {
	Hello     guest.Hello
	Heartbeat time.Duration
	Runner    *jobRunner
	Con       *console
	// Stats, if set, is read for each heartbeat.
	Stats func() guest.Stats
	// ExecState is the file the exec sessions' count is kept in for
	// tandem-debug-pause (execStatePath); "": none.
	ExecState string
	// RingSize bounds the output a Resumable job keeps for a host that
	// resumes; 0: defaultRingSize.
	RingSize int
}

// errJobEnded ends the exec sessions still open when the job has ended and
// the VM is about to power off.
var errJobEnded = errors.New("the job ended: the VM is powering off")

// execCloseWait bounds how long the end of the job waits for the exec
// sessions it ends to report their ends.
const execCloseWait = 2 * time.Second

// runSession speaks the guest's side of the protocol on c: Hello,
// heartbeats, one Job, its output, Exit. ctx ending (the guest was told to
// shut down) stops the job like a Cancel. It returns the Exit it sent, or an
// error if the session broke before one could be sent.
//
// From Hello on it also serves exec sessions (execServer). Those still
// open when the job ends are ended before Exit, unless the host sent Hold:
// then Exit is sent, heartbeats and exec sessions go on, and runSession
// returns (and the guest powers off) on Release, when the host goes away,
// or when ctx ends.
//
// A Job with Resumable set outlives its host instead (resumer): a read of
// EOF lets the host go, the port is polled for a new host, whose frames
// count from its Resume on; the guest powers off once a host acknowledges
// the Exit, or the job's detach timeout has passed.
func runSession(ctx context.Context, c *guest.Conn, cfg sessionConfig) (guest.Exit, error) {
	con := cfg.Con
	hello := cfg.Hello
	hello.Features = append(slices.Clone(hello.Features), guest.FeatureExec, guest.FeatureHold, guest.FeatureResume)
	x := newExecServer(c, cfg.Runner, con, cfg.ExecState) // its count is there once the host hears of us
	if err := c.WriteJSON(guest.FrameHello, hello); err != nil {
		return guest.Exit{}, fmt.Errorf("channel: send hello: %w", err)
	}
	hb := &heartbeat{c: c, stats: cfg.Stats}
	hb.start(cfg.Heartbeat)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan jobFrame, 1)
	gone := make(chan struct{})
	release := make(chan struct{})
	var held atomic.Bool
	var readErr error
	goSafe(func() {
		defer close(gone)
		gotJob, released := false, false
		ignored := map[guest.FrameType]bool{}
		var rs *resumer
		awaitResume := false // the host went: skip frames until a new one resumes
		for {
			t, p, err := c.ReadFrame()
			if err != nil && rs != nil && !portClosed(err) {
				rs.detach(err)
				awaitResume = true
				time.Sleep(pollInterval)
				continue
			}
			if err == nil && awaitResume && t != guest.FrameResume {
				continue
			}
			awaitResume = false
			if err != nil {
				readErr = err
				cancel(errHostGone)
				go x.closeAll(errHostGone, 0)
				return
			}
			switch {
			case t == guest.FrameJob && !gotJob:
				gotJob = true
				var job guest.Job
				if guest.Decode(t, p, &job) == nil && job.Resumable {
					rs = newResumer(c, cfg, x, hb, job)
				}
				jobs <- jobFrame{p, rs}
			case t == guest.FrameResume && rs != nil:
				rs.resume(p)
			case t == guest.FrameExitAck && rs != nil:
				rs.ack()
			case t == guest.FrameCancel:
				cancel(errHostCancel)
			case isExecFrame(t):
				x.handle(t, p)
			case t == guest.FrameHold:
				held.Store(true)
			case t == guest.FrameRelease && !released:
				released = true
				close(release)
			case !ignored[t]:
				ignored[t] = true
				con.logf("channel: ignoring %s frames", t)
			}
		}
	})

	var ex guest.Exit
	select {
	case jf := <-jobs:
		var job guest.Job
		if err := guest.Decode(guest.FrameJob, jf.p, &job); err != nil {
			ex = guest.Exit{Code: codeBadJob, Error: err.Error()}
			con.logf("job: %v", err)
			break
		}
		// Arguments and environment may hold secrets: log the program only.
		timeout := "none"
		if job.TimeoutMS > 0 {
			timeout = ms(time.Duration(job.TimeoutMS) * time.Millisecond)
		}
		con.logf("job: %s, %d args, %d env, timeout %s", firstArg(job.Argv), max(len(job.Argv)-1, 0), len(job.Env), timeout)
		if rs := jf.rs; rs != nil {
			con.logf("job: resumable, detach timeout %s", ms(rs.timeout))
			// The ring never blocks: no hostGone.
			ex = cfg.Runner.run(ctx, job, rs.output(guest.StreamStdout), rs.output(guest.StreamStderr), nil)
			con.logf("job: %s", describeExit(ex, context.Cause(ctx)))
			rs.end(ctx, ex, &held, release, gone)
			return ex, nil
		}
		ex = cfg.Runner.run(ctx, job,
			guest.StreamWriter{C: c, Type: guest.FrameStdout},
			guest.StreamWriter{C: c, Type: guest.FrameStderr}, gone)
		con.logf("job: %s", describeExit(ex, context.Cause(ctx)))
	case <-ctx.Done():
		if context.Cause(ctx) == errHostGone {
			go hb.stop() // may wait on a write that never ends
			return guest.Exit{}, fmt.Errorf("channel closed before a job arrived: %w", readErr)
		}
		ex = guest.Exit{Code: codeCancelled, Error: context.Cause(ctx).Error() + " before a job arrived"}
		con.logf("job: %s", ex.Error)
	}

	if held.Load() && ctx.Err() == nil {
		return ex, holdAfterExit(ctx, c, x, hb, ex, release, gone)
	}
	x.closeAll(errJobEnded, execCloseWait)

	// Send Exit, never after a heartbeat's turn, and don't hang on a host
	// that is gone (a virtio port without a host blocks writes).
	sent := make(chan error, 1)
	goSafe(func() {
		hb.stop()
		sent <- c.WriteJSON(guest.FrameExit, ex)
	})
	var err error
	select {
	case err = <-sent:
	case <-gone:
		select {
		case err = <-sent:
		default:
			err = errHostGone
		}
	}
	if err != nil {
		return ex, fmt.Errorf("channel: send exit: %w", err)
	}
	return ex, nil
}

// jobFrame is a Job frame as read, with its resumer if the job is
// Resumable.
type jobFrame struct {
	p  []byte
	rs *resumer
}

// holdAfterExit sends Exit and keeps the guest up, heartbeats and exec
// sessions going, until the host sends Release or goes away, or ctx ends.
func holdAfterExit(ctx context.Context, c *guest.Conn, x *execServer, hb *heartbeat, ex guest.Exit, release, gone <-chan struct{}) error {
	if err := c.WriteJSON(guest.FrameExit, ex); err != nil {
		hb.stop()
		return fmt.Errorf("channel: send exit: %w", err)
	}
	select {
	case <-release:
	case <-gone:
	case <-ctx.Done():
	}
	x.closeAll(errExecShutdown, execCloseWait)
	hb.stop()
	return nil
}

// heartbeat sends Heartbeat frames, each carrying the guest's Stats, until
// stopped; none is sent once stop has returned.
type heartbeat struct {
	c       *guest.Conn
	stats   func() guest.Stats // nil: empty heartbeats
	mu      sync.Mutex
	stopped bool
	done    chan struct{}
}

func (h *heartbeat) start(every time.Duration) {
	h.done = make(chan struct{})
	goSafe(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-h.done:
				return
			case <-t.C:
			}
			var stats []byte
			if h.stats != nil {
				stats, _ = json.Marshal(h.stats())
			}
			h.mu.Lock()
			var err error
			if !h.stopped {
				err = h.c.WriteFrame(guest.FrameHeartbeat, stats)
			}
			h.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
}

func (h *heartbeat) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopped {
		h.stopped = true
		close(h.done)
	}
}

func firstArg(argv []string) string {
	if len(argv) == 0 {
		return `""`
	}
	return argv[0]
}

// describeExit renders an Exit for the console.
func describeExit(e guest.Exit, cause error) string {
	d := ms(time.Duration(e.DurationMS) * time.Millisecond)
	switch {
	case e.Error != "":
		return fmt.Sprintf("exit %d: %s", e.Code, e.Error)
	case e.TimedOut:
		return fmt.Sprintf("timed out, exit %d (%s)", e.Code, d)
	case e.Code == codeCancelled && cause != nil:
		return fmt.Sprintf("%v, exit %d (%s)", cause, e.Code, d)
	case e.Signal != "":
		return fmt.Sprintf("killed by %s, exit %d (%s)", e.Signal, e.Code, d)
	}
	return fmt.Sprintf("exit %d (%s)", e.Code, d)
}
