//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
}

// runSession speaks the guest's side of the protocol on c: Hello,
// heartbeats, one Job, its output, Exit. ctx ending (the guest was told to
// shut down) stops the job like a Cancel. It returns the Exit it sent, or an
// error if the session broke before one could be sent.
func runSession(ctx context.Context, c *guest.Conn, cfg sessionConfig) (guest.Exit, error) {
	con := cfg.Con
	if err := c.WriteJSON(guest.FrameHello, cfg.Hello); err != nil {
		return guest.Exit{}, fmt.Errorf("channel: send hello: %w", err)
	}
	hb := &heartbeat{c: c, stats: cfg.Stats}
	hb.start(cfg.Heartbeat)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan []byte, 1)
	gone := make(chan struct{})
	var readErr error
	goSafe(func() {
		defer close(gone)
		gotJob := false
		ignored := map[guest.FrameType]bool{}
		for {
			t, p, err := c.ReadFrame()
			if err != nil {
				readErr = err
				cancel(errHostGone)
				return
			}
			switch {
			case t == guest.FrameJob && !gotJob:
				gotJob = true
				jobs <- p
			case t == guest.FrameCancel:
				cancel(errHostCancel)
			case !ignored[t]:
				ignored[t] = true
				con.logf("channel: ignoring %s frames", t)
			}
		}
	})

	var ex guest.Exit
	select {
	case p := <-jobs:
		var job guest.Job
		if err := guest.Decode(guest.FrameJob, p, &job); err != nil {
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
