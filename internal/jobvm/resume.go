package jobvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// ErrDetached is the cause with which a caller cancels Run's (or
// Reattach's) context to let go of a Resumable job without ending it, as
// before the host agent exits for an upgrade: the job runs on in its VM,
// and Run returns a *Detached, which wraps ErrDetached.
var ErrDetached = errors.New("job detached")

// Detached is what a later process needs to take over a job that was let
// go (Request.Resumable, ErrDetached): the caller keeps it (as JSON) and
// hands it to Reattach with the VM, found again by its ID through the
// driver (vm.Driver.Get or Recover).
type Detached struct {
	VMID string `json:"vm_id"`
	// Offset is how much of the job's output, both streams, the host has
	// received and written: a later host asks for the rest.
	Offset int64 `json:"offset"`
	// Started is when the run began; Sent, when its job was sent.
	Started time.Time `json:"started"`
	Sent    time.Time `json:"sent"`
	// TimeoutMS is the job's time limit (Request.Timeout; 0: none).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// User, DiskMiB and Egress are the request's, for the rest of the
	// run: exec sessions, failure details, the egress record.
	User    string      `json:"user,omitempty"`
	DiskMiB int         `json:"disk_mib,omitempty"`
	Egress  egress.Mode `json:"egress"`
	// Features are those the guest listed in its Hello.
	Features []string `json:"features,omitempty"`
	// Result is the run's result so far: the VM, its image and
	// accelerator, the timings of its preparation and boot.
	Result Result `json:"result"`
}

func (d *Detached) Error() string {
	return fmt.Sprintf("job detached from VM %s after %d bytes of its output", d.VMID, d.Offset)
}

// Unwrap makes a *Detached match ErrDetached.
func (d *Detached) Unwrap() error { return ErrDetached }

// detached describes the session's job, let go by a run that began at
// started and sent it at sent.
func (s *session) detached(started, sent time.Time) *Detached {
	return &Detached{
		VMID: s.inst.ID(), Offset: s.offset, Started: started, Sent: sent,
		TimeoutMS: s.r.Timeout.Milliseconds(), User: s.r.User, DiskMiB: s.r.DiskMiB, Egress: s.r.Egress.Mode,
		Features: s.features, Result: *s.res,
	}
}

// ReattachRequest is what Reattach relays a detached job's frames to; its
// fields mean what Request's of the same names do.
type ReattachRequest struct {
	Stdout, Stderr   io.Writer
	HeartbeatTimeout time.Duration
	OnSample         func(profile.Sample)
	SampleEvery      time.Duration
	OnExec           func(*Execer)
}

// Reattach takes over a job that an earlier Run (or Reattach), maybe in
// another process, let go (d), in its VM inst: it asks the guest for the
// output past d.Offset, then relays the job as Run does, and tears the VM
// down as Run does when the job ends. A job whose VM ended while no host
// was attached gets its exit from the line the guest printed on its
// console (guest.ExitLinePrefix), its output past d.Offset lost; without
// that line it failed. Reattach may be detached again (ErrDetached). A
// non-nil error other than a *Detached means the request was wrong or the
// teardown failed. The Result's Run and Total count from d.Sent and
// d.Started, the time detached included.
//
// inst is the VM as this process's driver has it (vm.Driver.Get or
// Recover). Until it is reattached, a Collect of this host must keep it:
// its owner (Request.Owner) may be a process that is gone.
func (h *Host) Reattach(ctx context.Context, inst vm.Instance, d Detached, rr ReattachRequest) (res Result, err error) {
	if inst.ID() != d.VMID {
		return res, fmt.Errorf("%w: reattaching the job of VM %s to VM %s", ErrBadRequest, d.VMID, inst.ID())
	}
	res = d.Result
	res.VMID = d.VMID
	r := Request{
		Stdout: rr.Stdout, Stderr: rr.Stderr, HeartbeatTimeout: rr.HeartbeatTimeout,
		OnSample: rr.OnSample, SampleEvery: rr.SampleEvery, OnExec: rr.OnExec,
		Timeout: time.Duration(d.TimeoutMS) * time.Millisecond, User: d.User, DiskMiB: d.DiskMiB,
		Egress: egress.Policy{Mode: d.Egress}, Resumable: true,
	}
	s := &session{h: h, r: r, inst: inst, res: &res, features: d.Features, resumable: true, offset: d.Offset}
	if r.Timeout > 0 {
		// The guest stops the job at its limit; the host gives it no less
		// than the usual grace from now to say so.
		s.deadline = d.Sent.Add(r.Timeout + exitGrace)
		if soonest := time.Now().Add(exitGrace); s.deadline.Before(soonest) {
			s.deadline = soonest
		}
	}
	out := failed
	defer func() {
		if out != detached {
			if terr := h.finish(&res, inst, d.VMID, d.Egress, h.Net != nil, out == reported); terr != nil {
				err = errors.Join(err, terr)
			}
		}
		res.Timings.Run = ms(time.Since(d.Sent))
		res.Timings.Total = ms(time.Since(d.Started))
	}()
	s.watch()
	var live bool
	if live, out = s.resume(ctx); live {
		s.exec.ready(guest.Hello{Features: d.Features})
		if r.OnExec != nil {
			r.OnExec(s.exec)
		}
		s.profile()
		out = s.relay(ctx, false)
	}
	if out == detached {
		return res, s.detached(d.Started, d.Sent)
	}
	return res, nil
}

// resume connects to a guest whose job another host let go and asks for
// its output past s.offset. It says whether the guest answered (Resumed),
// its job's frames to follow; if not, how the run ended: the VM ended
// while no host was attached (see lost), the guest fell silent, or ctx
// ended.
func (s *session) resume(ctx context.Context) (live bool, out outcome) {
	hb := s.heartbeat()
	cctx, cancel := context.WithTimeout(ctx, hb)
	err := s.open(cctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return false, s.ended(ctx)
		}
		return false, s.lost(fmt.Sprintf("cannot reach the guest: %v", err))
	}
	if err := s.conn.WriteJSON(guest.FrameResume, guest.Resume{Offset: s.offset}); err != nil {
		s.closer.Close()
		return false, s.lost("send resume: " + err.Error())
	}
	silence := time.NewTimer(hb)
	defer silence.Stop()
	for {
		select {
		case f, ok := <-s.frames:
			if !ok {
				return false, s.lost("the guest channel closed before the guest answered Resume")
			}
			// Frames before Resumed were written for the host that left.
			if f.t != guest.FrameResumed {
				continue
			}
			var rd guest.Resumed
			if err := guest.Decode(f.t, f.p, &rd); err != nil {
				s.fail(failure.GuestCrash, err.Error())
				return false, failed
			}
			s.skipTo(rd.Oldest)
			return true, failed
		case <-s.exited:
			s.closer.Close()
			return false, s.lost("")
		case <-silence.C:
			s.fail(failure.GuestHang, fmt.Sprintf("no answer to Resume from the guest for %s", hb))
			return false, failed
		case <-ctx.Done():
			out := s.ended(ctx)
			s.closer.Close()
			return false, out
		}
	}
}

// lost ends a job whose guest could not be reached (why, "" if its VM
// ended): once the VM has stopped, or a moment has passed, the job's exit
// is the one the guest printed on its console when the job ended, if it
// did; its output not yet received is lost.
func (s *session) lost(why string) outcome {
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
	}
	if e, ok := exitLine(consoleTail(s.inst, 64<<10)); ok {
		s.recordExit(e)
		writeTo(s.r.Stderr, fmt.Appendf(nil, "[tandem: the job's output past byte %d, if any, was lost: its VM ended while no host was attached]\n", s.offset))
		return reported
	}
	if isExited(s.exited) || why == "" {
		why = "the VM ended while no host was attached to it, without reporting the job's exit"
	}
	kind := s.crashKind()
	s.fail(kind, s.why(kind, why))
	return failed
}

// exitLine finds the last Exit a guest printed on its console
// (guest.ExitLinePrefix).
func exitLine(console string) (guest.Exit, bool) {
	i := strings.LastIndex(console, guest.ExitLinePrefix)
	if i < 0 {
		return guest.Exit{}, false
	}
	line, _, _ := strings.Cut(console[i+len(guest.ExitLinePrefix):], "\n")
	var e guest.Exit
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &e); err != nil {
		return guest.Exit{}, false
	}
	return e, true
}
