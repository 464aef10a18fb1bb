package jobvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	// unwatch stops watching the VM for its exit (the job was detached).
	unwatch context.CancelFunc
	// features are those the guest's Hello listed.
	features []string
	// resumable: the job was sent Resumable to a guest that can resume
	// it; its output comes in Output frames, offset counts what of it
	// has been received, and its Exit is acknowledged.
	resumable bool
	offset    int64
	// deadline is when the host stops waiting for the guest to report
	// the job's timeout itself (zero: no timeout).
	deadline time.Time
}

// outcome is how a session's relay ended.
type outcome int

const (
	// failed: the guest did not report the job's exit; res says why.
	failed outcome = iota
	// reported: the guest reported the job's exit; it ends its VM itself.
	reported
	// detached: the host let go of a resumable job, which runs on.
	detached
)

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
	s.watch()
	timeout := s.r.BootTimeout
	if timeout == 0 {
		timeout = defaultBootTimeoutTCG
		if accel == vm.AccelKVM {
			timeout = defaultBootTimeoutKVM
		}
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.open(bctx); err != nil {
		return s.bootFailed(ctx, bctx, timeout, err)
	}
	watch := time.NewTicker(250 * time.Millisecond)
	defer watch.Stop()
	var stuck time.Time // since when the console has ended in clockStuck's line
	for {
		select {
		case now := <-watch.C:
			tail := consoleTail(s.inst, 8<<10)
			if line := timerLost(tail); line != "" {
				return s.fail(failure.GuestClock, "the guest kernel lost its timer while booting ("+line+
					"): the host stalled the VM while the kernel calibrated its APIC timer")
			}
			switch line := clockStuck(tail); {
			case line == "":
				stuck = time.Time{}
			case stuck.IsZero():
				stuck = now
			case now.Sub(stuck) >= clockStuckAfter:
				return s.fail(failure.GuestClock, fmt.Sprintf("the guest kernel could not calibrate its clock while booting (%s) "+
					"and has said nothing for %s since: the host stalled the VM while it calibrated", line, clockStuckAfter))
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
			s.features = h.Features
			return nil
		case <-s.exited:
			return s.bootFailed(ctx, bctx, timeout, nil)
		case <-bctx.Done():
			return s.bootFailed(ctx, bctx, timeout, nil)
		}
	}
}

// watch closes s.exited once the VM has stopped, unless s.unwatch is
// called first.
func (s *session) watch() {
	s.exited = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	s.unwatch = cancel
	go func() {
		s.inst.Wait(ctx)
		if ctx.Err() == nil {
			close(s.exited)
		}
	}()
}

// open connects to the guest channel and starts its one reader.
func (s *session) open(ctx context.Context) error {
	rw, err := s.inst.GuestChannel(ctx)
	if err != nil {
		return err
	}
	s.conn, s.closer = guest.NewConn(rw), rw
	s.exec = newExecer(s.conn, s.h.Log)
	s.exec.jobUser = s.r.User
	s.frames = make(chan frame, 64)
	go s.read()
	return nil
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

// clockStuckAfter is how long a booting kernel may stay silent after
// clockStuck's line before it is taken for hung: a TCG boot prints its
// next line within a second or two.
const clockStuckAfter = 15 * time.Second

// clockStuck returns the console's last line if it is the kernel failing
// to calibrate its TSC against the PIT (the host stalled it meanwhile):
// a kernel left there hangs before userspace. The kernel may also recover
// (another reference clock), so the line counts only while nothing
// follows it.
func clockStuck(console string) string {
	const sign = "tsc: Unable to calibrate against PIT"
	last := strings.TrimRight(console, "\r\n ")
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	if strings.HasSuffix(strings.TrimSpace(last), sign) {
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
	hb := s.heartbeat()
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
// VM dies, the guest falls silent, the timeout passes, or ctx ends (see
// relay). A Resumable request to a guest that can resume jobs is sent
// Resumable (and OnSent told, the run having begun at started); to any
// other guest, as a job that ends with its host.
func (s *session) run(ctx context.Context, started time.Time) outcome {
	job := guest.Job{Argv: s.r.Argv, User: s.r.User, Env: s.r.Env, Dir: s.r.Dir, TimeoutMS: s.r.Timeout.Milliseconds()}
	if s.r.Resumable && slices.Contains(s.features, guest.FeatureResume) {
		s.resumable = true
		job.Resumable, job.DetachTimeoutMS = true, s.r.DetachTimeout.Milliseconds()
	}
	keep := s.r.AfterExit != nil && s.hold
	if keep {
		if err := s.conn.WriteFrame(guest.FrameHold, nil); err != nil {
			s.fail(failure.GuestCrash, "send hold: "+err.Error())
			return failed
		}
	}
	if err := s.conn.WriteJSON(guest.FrameJob, job); err != nil {
		s.fail(failure.GuestCrash, "send job: "+err.Error())
		return failed
	}
	sent := time.Now()
	if s.r.Timeout > 0 {
		s.deadline = sent.Add(s.r.Timeout + exitGrace)
	}
	if s.resumable && s.r.OnSent != nil {
		s.r.OnSent(*s.detached(started, sent))
	}
	return s.relay(ctx, keep)
}

// heartbeat is how long the guest may stay silent.
func (s *session) heartbeat() time.Duration {
	if s.r.HeartbeatTimeout == 0 {
		return defaultHeartbeat
	}
	return s.r.HeartbeatTimeout
}

// relay relays the frames of a running job until the guest reports the
// exit (kept after it if keep), the VM dies, the guest falls silent, the
// deadline passes, or ctx ends: with ErrDetached as its cause, a resumable
// job is let go and runs on; otherwise the job is cancelled. It closes the
// channel when it returns.
func (s *session) relay(ctx context.Context, keep bool) outcome {
	defer s.closer.Close()
	hb := s.heartbeat()
	silence := time.NewTimer(hb)
	defer silence.Stop()
	var deadline <-chan time.Time
	if !s.deadline.IsZero() {
		t := time.NewTimer(time.Until(s.deadline))
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
				return failed
			}
			silence.Reset(hb)
			switch f.t {
			case guest.FrameStdout:
				writeTo(s.r.Stdout, f.p)
			case guest.FrameStderr:
				writeTo(s.r.Stderr, f.p)
			case guest.FrameOutput:
				if err := s.output(f.p); err != nil {
					s.h.Log.Warn("a bad output frame from the guest", "vm", s.inst.ID(), "err", err)
				}
			case guest.FrameHeartbeat:
				s.sample.heartbeat(time.Now(), f.p)
			case guest.FrameExit:
				var e guest.Exit
				if err := guest.Decode(f.t, f.p, &e); err != nil {
					s.fail(failure.GuestCrash, err.Error())
					return failed
				}
				s.recordExit(e)
				if s.resumable {
					// The guest sends its Exit again until it is acknowledged.
					if err := s.conn.WriteFrame(guest.FrameExitAck, nil); err != nil {
						s.h.Log.Warn("cannot acknowledge the job's exit; the VM is destroyed anyway", "vm", s.inst.ID(), "err", err)
					}
				}
				if keep {
					s.keep(ctx, e.Code, hb)
				}
				return reported
			}
		case <-silence.C:
			s.fail(failure.GuestHang, fmt.Sprintf("no word from the guest for %s", hb))
			return failed
		case <-deadline:
			s.res.ExitCode = 124
			s.fail(failure.Timeout, fmt.Sprintf("the job ran longer than %s and the guest did not stop it", s.r.Timeout))
			return failed
		case <-ctx.Done():
			return s.ended(ctx)
		}
	}
}

// ended handles ctx's end while a job runs: a resumable job detached
// (ErrDetached) is let go, and runs on; any other is cancelled.
func (s *session) ended(ctx context.Context) outcome {
	if s.resumable && errors.Is(context.Cause(ctx), ErrDetached) {
		s.unwatch()
		return detached
	}
	// Ask the guest to stop the job; teardown kills the VM regardless.
	if s.conn != nil {
		s.conn.WriteFrame(guest.FrameCancel, nil)
	}
	s.fail(failure.Cancelled, "cancelled")
	return failed
}

// recordExit records the job's exit as the guest reported it.
func (s *session) recordExit(e guest.Exit) {
	s.res.ExitCode = e.Code
	if e.TimedOut {
		s.res.Failure, s.res.Detail = failure.Timeout, fmt.Sprintf("the job ran longer than %s and was killed", s.r.Timeout)
	} else if e.Error != "" {
		s.res.Detail = e.Error
	}
}

// output writes the data of an Output frame to its stream, past what was
// received already (the guest sends output again after a Resume).
func (s *session) output(p []byte) error {
	stream, off, data, err := guest.DecodeOutput(p)
	if err != nil {
		return err
	}
	s.skipTo(off)
	if off < s.offset {
		data = data[min(s.offset-off, int64(len(data))):]
	}
	if len(data) == 0 {
		return nil
	}
	w := s.r.Stdout
	if stream == guest.StreamStderr {
		w = s.r.Stderr
	}
	writeTo(w, data)
	s.offset += int64(len(data))
	return nil
}

// skipTo moves the output offset on to off, where the guest's output goes
// on, saying on Stderr how much of it the guest dropped before the host
// could read it.
func (s *session) skipTo(off int64) {
	if off <= s.offset {
		return
	}
	writeTo(s.r.Stderr, fmt.Appendf(nil, "[tandem: %d bytes of the job's output were lost: the guest dropped them before the host read them]\n", off-s.offset))
	s.offset = off
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
