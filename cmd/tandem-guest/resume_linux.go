//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// pollInterval is how often a guest whose host has gone reads the port
// for a new one: a virtio port without a host returns EOF at once.
const pollInterval = 100 * time.Millisecond

// errHostDetached ends the exec sessions of a host that went away while a
// Resumable job runs on.
var errHostDetached = errors.New("host detached")

// resumer is the guest's side of a Resumable job (see the guest package
// comment): the job's output goes into a ring that one writer goroutine
// sends as Output frames while a host is attached, so the job never waits
// on the port; a host that goes away is let go, and a new one that sends
// Resume gets Resumed, the output it lacks, and what follows.
//
// The order of frames is its invariant: Resumed precedes all output a host
// is sent after it, and Exit follows all of it. send is held across every
// write of an Output, Exit or Resumed frame, and the cursor (the offset of
// the next output to send) only changes under it, so a Resume cannot slip
// between a frame being picked and written.
type resumer struct {
	c       *guest.Conn
	con     *console
	x       *execServer
	every   time.Duration      // heartbeat interval
	stats   func() guest.Stats // nil: empty heartbeats
	timeout time.Duration      // wait for ExitAck after the job's end

	send sync.Mutex

	mu         sync.Mutex
	wake       sync.Cond // on mu: the writer has work, or must stop
	ring       *outRing
	attached   bool  // a host takes our frames
	cursor     int64 // next output offset to send to the attached host
	exit       *guest.Exit
	exitSent   bool // to the attached host
	ending     bool // the job has ended (exit may not be set yet)
	beatOnExit bool // heartbeats go on after the job's end (Hold)
	stopped    bool
	hb         *heartbeat // nil while detached
	acked      chan struct{}
	ackOnce    sync.Once
	detached   chan struct{} // a token each time the host goes away
}

// newResumer takes over a session whose host sent a Resumable job; hb is
// the session's running heartbeat.
func newResumer(c *guest.Conn, cfg sessionConfig, x *execServer, hb *heartbeat, job guest.Job) *resumer {
	r := &resumer{
		c: c, con: cfg.Con, x: x, every: cfg.Heartbeat, stats: cfg.Stats,
		timeout:  guest.DefaultDetachTimeout,
		ring:     newOutRing(cfg.RingSize),
		attached: true,
		hb:       hb,
		acked:    make(chan struct{}),
		detached: make(chan struct{}, 1),
	}
	if job.DetachTimeoutMS > 0 {
		r.timeout = time.Duration(job.DetachTimeoutMS) * time.Millisecond
	}
	r.wake.L = &r.mu
	x.chunk.Store(guest.ResumableExecChunk)
	goSafe(r.writeLoop)
	return r
}

// output returns the writer for one of the job's streams. It never blocks.
func (r *resumer) output(s guest.Stream) ringWriter { return ringWriter{r, s} }

type ringWriter struct {
	r *resumer
	s guest.Stream
}

func (w ringWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	w.r.ring.add(w.s, p)
	w.r.mu.Unlock()
	w.r.wake.Broadcast()
	return len(p), nil
}

// hasWork says whether the writer has a frame to send; r.mu is held.
func (r *resumer) hasWork() bool {
	return r.attached && !r.stopped && (r.cursor < r.ring.end || r.exit != nil && !r.exitSent)
}

// writeLoop sends the ring's output, then Exit, to the attached host.
func (r *resumer) writeLoop() {
	for {
		r.mu.Lock()
		for !r.stopped && !r.hasWork() {
			r.wake.Wait()
		}
		stopped := r.stopped
		r.mu.Unlock()
		if stopped {
			return
		}
		r.send.Lock()
		r.writeOne()
		r.send.Unlock()
	}
}

// writeOne sends the next Output frame, or Exit after the last; r.send is
// held.
func (r *resumer) writeOne() {
	r.mu.Lock()
	if !r.hasWork() {
		r.mu.Unlock()
		return
	}
	s, off, d := r.ring.next(r.cursor, guest.OutputChunk)
	var ex guest.Exit
	if len(d) == 0 {
		r.cursor = r.ring.end
		if r.exit == nil {
			r.mu.Unlock()
			return
		}
		ex = *r.exit
	}
	r.mu.Unlock()

	var err error
	if len(d) > 0 {
		err = r.c.WriteFrame(guest.FrameOutput, guest.EncodeOutput(s, off, d))
	} else {
		err = r.c.WriteJSON(guest.FrameExit, ex)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		// The port is broken rather than without a host (that blocks):
		// wait for a host to resume, as for one that went away.
		if r.attached {
			r.con.logf("channel: write: %v", err)
		}
		r.attached = false
	case len(d) > 0:
		r.cursor = off + int64(len(d))
	default:
		r.exitSent = true
	}
}

// detach lets the host go: heartbeats stop, its exec sessions end, and
// nothing more is sent until a host resumes. The job goes on.
func (r *resumer) detach(why error) {
	r.mu.Lock()
	hb := r.hb
	r.hb = nil
	was := r.attached
	r.attached = false
	r.mu.Unlock()
	if hb != nil {
		go hb.stop() // may wait on a write that ends only when a host comes
	}
	if was {
		r.con.logf("channel: host detached (%v); the job goes on", why)
		select {
		case r.detached <- struct{}{}:
		default:
		}
	}
	r.x.endAll(errHostDetached)
}

// resume serves a host's Resume: Resumed, then the output from the
// offset it asks for (or the oldest held), then Exit if the job has ended.
func (r *resumer) resume(p []byte) {
	var req guest.Resume
	if err := guest.Decode(guest.FrameResume, p, &req); err != nil {
		r.con.logf("channel: %v", err)
	}
	r.detach(errors.New("a new host resumed"))
	r.send.Lock()
	defer r.send.Unlock()
	r.mu.Lock()
	res := guest.Resumed{State: guest.StateRunning, Oldest: r.ring.oldest}
	if r.exit != nil {
		ex := *r.exit
		res.State, res.Exit = guest.StateExited, &ex
	}
	r.cursor = min(max(req.Offset, 0), r.ring.end)
	r.exitSent = false
	r.mu.Unlock()
	r.con.logf("channel: host resumed at %d (oldest %d), job %s", req.Offset, res.Oldest, res.State)
	if err := r.c.WriteJSON(guest.FrameResumed, res); err != nil {
		r.con.logf("channel: send resumed: %v", err)
		return
	}
	r.mu.Lock()
	r.attached = true
	if !r.stopped && (!r.ending || r.beatOnExit) {
		r.hb = &heartbeat{c: r.c, stats: r.stats}
		r.hb.start(r.every)
	}
	r.mu.Unlock()
	r.wake.Broadcast()
}

// ack takes the host's ExitAck.
func (r *resumer) ack() {
	r.mu.Lock()
	ended := r.exit != nil
	r.mu.Unlock()
	if !ended {
		r.con.logf("channel: exit-ack while the job runs: ignored")
		return
	}
	r.ackOnce.Do(func() { close(r.acked) })
}

// end reports the job's end: a console line with the Exit, then Exit to
// the host after the output, again to each host that resumes, until one
// acknowledges it (then, after Hold, until Release or the host goes away),
// the detach timeout passes, ctx ends or the port closes (gone).
func (r *resumer) end(ctx context.Context, ex guest.Exit, held *atomic.Bool, release, gone <-chan struct{}) {
	line, _ := json.Marshal(ex)
	r.con.raw(guest.ExitLinePrefix + string(line))
	hold := held.Load() && ctx.Err() == nil
	if !hold {
		r.x.closeAll(errJobEnded, execCloseWait)
	}
	r.mu.Lock()
	r.ending, r.beatOnExit = true, hold
	hb := r.hb
	if !hold {
		r.hb = nil
	}
	r.mu.Unlock()
	goSafe(func() {
		// Heartbeats stop before Exit, as nothing follows it; stopping
		// them may wait for a host to take a heartbeat being written.
		if hb != nil && !hold {
			hb.stop()
		}
		r.mu.Lock()
		r.exit = &ex
		r.mu.Unlock()
		r.wake.Broadcast()
	})

	defer r.stop()
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	acked := r.acked
	for {
		select {
		case <-acked:
			if !hold {
				return
			}
			acked = nil // held: on until Release or the host goes
			timer.Stop()
			select {
			case <-r.detached: // a host that went before this one
			default:
			}
			r.mu.Lock()
			attached := r.attached
			r.mu.Unlock()
			if !attached {
				return
			}
		case <-r.detached:
			if acked == nil {
				return
			}
		case <-release:
			return
		case <-timer.C:
			r.con.logf("channel: no host acknowledged the exit within %s: powering off", ms(r.timeout))
			return
		case <-gone:
			return
		case <-ctx.Done():
			r.awaitExitSent(execCloseWait)
			return
		}
	}
}

// awaitExitSent waits up to d for Exit to reach the attached host.
func (r *resumer) awaitExitSent(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		done := r.exitSent || !r.attached
		r.mu.Unlock()
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends the writer, heartbeats and exec sessions: the VM powers off.
func (r *resumer) stop() {
	r.mu.Lock()
	r.stopped = true
	hb := r.hb
	r.hb = nil
	r.mu.Unlock()
	r.wake.Broadcast()
	if hb != nil {
		go hb.stop()
	}
	r.x.closeAll(errExecShutdown, execCloseWait)
}

// portClosed says whether a read error means the port is closed for good
// (by us), rather than without a host.
func portClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
