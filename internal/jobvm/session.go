package jobvm

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/vm"
)

// session is the host's side of one conversation with tandem-guest.
type session struct {
	h    *Host
	r    Request
	inst vm.Instance
	res  *Result

	conn   *guest.Conn
	closer io.Closer
	frames chan frame    // from the reader goroutine; closed when the channel ends
	exited chan struct{} // closed when the VM has stopped
	sample *sampler      // nil: the job is not profiled
	hold   bool          // the guest can wait after its job's exit (guest.FeatureHold)
	exec   *Execer       // the guest's exec sessions, routed by read
}

type frame struct {
	t guest.FrameType
	p []byte
}

// Defaults for Request's timeouts. TCG boots are seconds, KVM boots are
// well under one; both leave room for a loaded host.
const (
	defaultBootTimeoutTCG = 120 * time.Second
	defaultBootTimeoutKVM = 30 * time.Second
	defaultHeartbeat      = 20 * time.Second
	// exitGrace is how long past Request.Timeout the host waits for the
	// guest to report the timeout itself before it gives up on the guest.
	exitGrace = 10 * time.Second
)

// boot waits for the guest agent's Hello. An error here means the VM never
// became usable; it is also recorded in res.
func (s *session) boot(ctx context.Context, accel vm.Accel) error {
	s.exited = make(chan struct{})
	go func() {
		s.inst.Wait(context.Background())
		close(s.exited)
	}()
	timeout := s.r.BootTimeout
	if timeout == 0 {
		timeout = defaultBootTimeoutTCG
		if accel == vm.AccelKVM {
			timeout = defaultBootTimeoutKVM
		}
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rw, err := s.inst.GuestChannel(bctx)
	if err != nil {
		return s.bootFailed(ctx, bctx, timeout, err)
	}
	s.conn, s.closer = guest.NewConn(rw), rw
	s.exec = newExecer(s.conn, s.h.Log)
	s.exec.jobUser = s.r.User
	s.frames = make(chan frame, 64)
	go s.read()
	watch := time.NewTicker(250 * time.Millisecond)
	defer watch.Stop()
	for {
		select {
		case <-watch.C:
			if line := timerLost(consoleTail(s.inst, 8<<10)); line != "" {
				return s.fail(failure.GuestClock, "the guest kernel lost its timer while booting ("+line+
					"): the host stalled the VM while the kernel calibrated its APIC timer")
			}
		case f, ok := <-s.frames:
			if !ok {
				return s.bootFailed(ctx, bctx, timeout, fmt.Errorf("guest channel closed before the guest was ready"))
			}
			if f.t != guest.FrameHello {
				continue // e.g. an early log line
			}
			var h guest.Hello
			if err := guest.Decode(f.t, f.p, &h); err != nil {
				return s.fail(failure.GuestCrash, err.Error())
			}
			if h.Version != guest.Version {
				return s.fail(failure.GuestCrash, fmt.Sprintf("guest speaks protocol %d, host %d: rebuild the image", h.Version, guest.Version))
			}
			s.res.GuestKernel = h.Kernel
			s.exec.ready(h)
			s.hold = h.Has(guest.FeatureHold)
			return nil
		case <-s.exited:
			return s.bootFailed(ctx, bctx, timeout, nil)
		case <-bctx.Done():
			return s.bootFailed(ctx, bctx, timeout, nil)
		}
	}
}

// timerLost returns the console line by which an x86 guest kernel says it
// has turned off its local APIC timer, or "". A kernel times that timer
// against its tick for 100 ms while it boots; when the host stops the VM's
// vCPU thread for about that long in that window (a loaded host, under TCG),
// the timer looks too slow and is turned off. On a microvm it is the only
// timer, so the kernel's clock stops and the boot waits forever, silent
// under quiet: the guest's command line keeps warnings on the console
// (qemu.BaseCmdline) so that this line shows.
func timerLost(console string) string {
	const sign = "APIC frequency too slow, disabling apic timer"
	if strings.Contains(console, sign) {
		return sign
	}
	return ""
}

func (s *session) bootFailed(ctx, bctx context.Context, timeout time.Duration, cause error) error {
	switch {
	case ctx.Err() != nil:
		return s.fail(failure.Cancelled, "cancelled while booting")
	case isExited(s.exited):
		kind := s.crashKind()
		return s.fail(kind, s.why(kind, "the VM stopped before its guest agent was ready"))
	case bctx.Err() != nil:
		return s.fail(failure.BootTimeout, fmt.Sprintf("guest agent not ready within %s", timeout))
	}
	return s.fail(failure.GuestCrash, cause.Error())
}

// fail records a failure with the console's last lines and returns it as an error.
func (s *session) fail(kind failure.Kind, detail string) error {
	s.res.Failure, s.res.Detail = kind, detail
	if kind == failure.GuestPanic {
		s.res.Detail += ": " + panicLine(consoleTail(s.inst, 64<<10))
	}
	if tail := strings.TrimSpace(consoleTail(s.inst, 1500)); tail != "" {
		s.res.Detail += "\n--- guest console (last lines) ---\n" + tail
	}
	if s.closer != nil {
		s.closer.Close()
	}
	return &FailureError{Kind: kind, Detail: s.res.Detail}
}

// FailureError is returned by Run when the VM failed before the job ran.
type FailureError struct {
	Kind   failure.Kind
	Detail string
}

func (e *FailureError) Error() string { return string(e.Kind) + ": " + e.Detail }

func (s *session) crashKind() failure.Kind {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if st, err := s.inst.Wait(ctx); err == nil {
		if k := failure.Kind(st.Reason); k == failure.ConsoleLimit || k == failure.DiskFull {
			return k
		}
	}
	if panicLine(consoleTail(s.inst, 64<<10)) != "" {
		return failure.GuestPanic
	}
	return failure.GuestCrash
}

// why says why the VM ended, for a failure of kind; otherwise it is.
func (s *session) why(kind failure.Kind, otherwise string) string {
	switch kind {
	case failure.ConsoleLimit:
		return "the VM wrote more to its serial console than the host keeps: the host stopped it"
	case failure.DiskFull:
		return fmt.Sprintf("the job wrote more than its %d MiB of disk: the host stopped the VM", s.r.DiskMiB)
	}
	return otherwise
}

// panicLine finds the kernel's "Kernel panic - not syncing: …" line, which
// comes before the stack trace and so often falls outside the tail shown.
func panicLine(console string) string {
	i := strings.Index(console, "Kernel panic - not syncing")
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(console[i:], "\n")
	return strings.TrimSpace(line)
}

func isExited(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// read is the channel's one reader: exec frames go to the Execer (which
// never blocks), the rest to run.
func (s *session) read() {
	defer close(s.frames)
	defer s.exec.close()
	for {
		t, p, err := s.conn.ReadFrame()
		if err != nil {
			return
		}
		if s.exec.route(t, p) {
			continue
		}
		s.frames <- frame{t, p}
	}
}

// channelEnded records the failure of a guest whose channel ended
// unexpectedly (what: when), once its VM has stopped or a moment has
// passed, and returns it.
func (s *session) channelEnded(what string) error {
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
	}
	kind := s.crashKind()
	return s.fail(kind, s.why(kind, what))
}

// await runs fn (Request.Await: the runner config, which may take as long
// as a warm pool keeps its VMs) while it keeps the channel read and
// watches the guest: one that dies or falls silent ends the wait with its
// failure, as it would end a job. Heartbeats only show it is alive.
func (s *session) await(ctx context.Context, fn func(context.Context) (map[string]string, error)) (map[string]string, error) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		env map[string]string
		err error
	}
	done := make(chan result, 1)
	go func() {
		env, err := fn(actx)
		done <- result{env, err}
	}()
	hb := s.r.HeartbeatTimeout
	if hb == 0 {
		hb = defaultHeartbeat
	}
	silence := time.NewTimer(hb)
	defer silence.Stop()
	for {
		select {
		case res := <-done:
			if res.err != nil {
				s.closer.Close()
				s.res.Failure, s.res.Detail = failure.Cancelled, res.err.Error()
				return nil, &FailureError{Kind: failure.Cancelled, Detail: res.err.Error()}
			}
			return res.env, nil
		case f, ok := <-s.frames:
			if !ok {
				return nil, s.channelEnded("the guest ended while its VM waited for a job")
			}
			silence.Reset(hb)
			if f.t == guest.FrameStdout || f.t == guest.FrameStderr {
				// Nothing runs yet: whatever the guest writes is its own.
				writeTo(s.r.Stderr, f.p)
			}
		case <-silence.C:
			return nil, s.fail(failure.GuestHang, fmt.Sprintf("no word from the guest for %s while its VM waited for a job", hb))
		}
	}
}

// run sends the job and relays frames until the guest reports the exit, the
// VM dies, the guest falls silent, the timeout passes, or ctx ends. It says
// whether the guest reported the job's exit.
func (s *session) run(ctx context.Context) (reported bool) {
	defer s.closer.Close()
	job := guest.Job{Argv: s.r.Argv, User: s.r.User, Env: s.r.Env, Dir: s.r.Dir, TimeoutMS: s.r.Timeout.Milliseconds()}
	keep := s.r.AfterExit != nil && s.hold
	if keep {
		if err := s.conn.WriteFrame(guest.FrameHold, nil); err != nil {
			s.fail(failure.GuestCrash, "send hold: "+err.Error())
			return false
		}
	}
	if err := s.conn.WriteJSON(guest.FrameJob, job); err != nil {
		s.fail(failure.GuestCrash, "send job: "+err.Error())
		return false
	}
	hb := s.r.HeartbeatTimeout
	if hb == 0 {
		hb = defaultHeartbeat
	}
	silence := time.NewTimer(hb)
	defer silence.Stop()
	var deadline <-chan time.Time
	if s.r.Timeout > 0 {
		t := time.NewTimer(s.r.Timeout + exitGrace)
		defer t.Stop()
		deadline = t.C
	}
	var tick <-chan time.Time // the profile's samples (nil: none)
	if s.sample != nil {
		t := time.NewTicker(s.sample.every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case now := <-tick:
			s.sample.take(now)
		case f, ok := <-s.frames:
			if !ok {
				// The channel ended without an Exit: the VM is going down.
				s.channelEnded("the guest ended without reporting the job's exit")
				return false
			}
			silence.Reset(hb)
			switch f.t {
			case guest.FrameStdout:
				writeTo(s.r.Stdout, f.p)
			case guest.FrameStderr:
				writeTo(s.r.Stderr, f.p)
			case guest.FrameHeartbeat:
				s.sample.heartbeat(time.Now(), f.p)
			case guest.FrameExit:
				var e guest.Exit
				if err := guest.Decode(f.t, f.p, &e); err != nil {
					s.fail(failure.GuestCrash, err.Error())
					return false
				}
				s.res.ExitCode = e.Code
				if e.TimedOut {
					s.res.Failure, s.res.Detail = failure.Timeout, fmt.Sprintf("the job ran longer than %s and was killed", s.r.Timeout)
				} else if e.Error != "" {
					s.res.Detail = e.Error
				}
				if keep {
					s.keep(ctx, e.Code, hb)
				}
				return true
			}
		case <-silence.C:
			s.fail(failure.GuestHang, fmt.Sprintf("no word from the guest for %s", hb))
			return false
		case <-deadline:
			s.res.ExitCode = 124
			s.fail(failure.Timeout, fmt.Sprintf("the job ran longer than %s and the guest did not stop it", s.r.Timeout))
			return false
		case <-ctx.Done():
			// Ask the guest to stop the job; teardown kills the VM regardless.
			s.conn.WriteFrame(guest.FrameCancel, nil)
			s.fail(failure.Cancelled, "cancelled")
			return false
		}
	}
}

// keep keeps a guest that has reported its job's exit up for as long as
// Request.AfterExit says, watching it meanwhile, then lets it go (Release:
// it powers off).
func (s *session) keep(ctx context.Context, code int, hb time.Duration) {
	defer s.conn.WriteFrame(guest.FrameRelease, nil)
	decided := make(chan time.Time, 1)
	go func() { decided <- s.r.AfterExit(ctx, code) }()
	silence := time.NewTimer(hb)
	defer silence.Stop()
	var until <-chan time.Time
	for {
		select {
		case t := <-decided:
			if !t.After(time.Now()) {
				return
			}
			s.res.KeptUntil = t
			s.h.Log.Info("VM kept after its job's exit", "vm", s.inst.Info().ID, "until", t.Format(time.RFC3339))
			timer := time.NewTimer(time.Until(t))
			defer timer.Stop()
			until = timer.C
		case <-until:
			return
		case _, ok := <-s.frames:
			if !ok {
				return // the VM went down
			}
			silence.Reset(hb)
		case <-silence.C:
			s.h.Log.Warn("a kept VM's guest fell silent; letting it go", "vm", s.inst.Info().ID)
			return
		case <-ctx.Done():
			return
		}
	}
}

func writeTo(w io.Writer, p []byte) {
	if w != nil {
		w.Write(p)
	}
}
