package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/vm"
)

type instance struct {
	d       *Driver
	spec    vm.Spec
	dir     string
	paths   Paths
	created time.Time

	mu      sync.Mutex
	pid     int
	started bool
	qmp     *qmp
	exit    vm.ExitStatus
	done    chan struct{} // closed when the QEMU process has exited
	stopped bool          // done is closed
}

var _ vm.Instance = (*instance)(nil)

func (in *instance) ID() string         { return in.spec.ID }
func (in *instance) ConsoleLog() string { return in.paths.Console }

func (in *instance) Info() vm.Info {
	in.mu.Lock()
	defer in.mu.Unlock()
	st := vm.StateCreated
	switch {
	case in.stopped:
		st = vm.StateStopped
	case in.pid != 0:
		st = vm.StateRunning
	}
	return vm.Info{ID: in.spec.ID, Spec: in.spec, State: st, PID: in.pid, Created: in.created, Emulated: in.spec.Emulated()}
}

// Start implements vm.Instance.
func (in *instance) Start(ctx context.Context) error {
	in.mu.Lock()
	if in.started || in.pid != 0 || in.stopped {
		in.mu.Unlock()
		return fmt.Errorf("vm %s: already started", in.spec.ID)
	}
	in.started = true
	in.mu.Unlock()

	logf, err := os.OpenFile(in.dir+"/qemu.log", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %w", in.spec.ID, err)
	}
	defer logf.Close()
	cmd := exec.Command(Binary(in.spec.Arch), Args(in.spec, in.paths)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = in.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if in.spec.DieWithOwner {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm %s: start %s: %w", in.spec.ID, Binary(in.spec.Arch), err)
	}
	pid := cmd.Process.Pid
	in.mu.Lock()
	in.pid = pid
	in.mu.Unlock()
	go func() {
		err := cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		reason := ""
		if err != nil && code < 0 {
			reason = "killed"
		}
		in.finish(code, reason)
	}()
	st, _ := vm.ProcStartTime(pid)
	if err := in.d.writeRecord(in.spec.ID, record{Spec: in.spec, Created: in.created, PID: pid, StartTime: st}); err != nil {
		in.kill()
		return fmt.Errorf("vm %s: write record: %w", in.spec.ID, err)
	}
	in.d.cg.place(in.spec.ID, in.spec.VCPUs, pid)

	// QEMU is up once its QMP socket answers; a QEMU that refuses its
	// arguments exits first, and its log says why.
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-in.done:
			cancel()
		case <-qctx.Done():
		}
	}()
	q, err := dialQMP(qctx, in.paths.QMP)
	if err != nil {
		in.kill()
		<-in.done
		return fmt.Errorf("vm %s: qemu did not start: %s", in.spec.ID, in.qemuLogTail())
	}
	in.mu.Lock()
	in.qmp = q
	in.mu.Unlock()
	return nil
}

// watchForeign watches a QEMU process this process did not start (recovery).
func (in *instance) watchForeign(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	in.mu.Lock()
	in.pid, in.started = pid, true
	in.mu.Unlock()
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		in.finish(-1, "")
	}()
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if q, err := dialQMP(qctx, in.paths.QMP); err == nil {
		in.mu.Lock()
		in.qmp = q
		in.mu.Unlock()
	}
	return nil
}

func (in *instance) finish(code int, reason string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopped {
		return
	}
	if in.qmp != nil {
		// QEMU sends SHUTDOWN just before it exits; let the reader take it.
		select {
		case <-in.qmp.closed:
		case <-time.After(200 * time.Millisecond):
		}
		if r := in.qmp.shutdownReason(); r != "" {
			reason = r
		}
		in.qmp.close()
	}
	if reason == "" {
		reason = "unknown"
	}
	in.exit = vm.ExitStatus{Reason: reason, ExitCode: code}
	in.stopped = true
	close(in.done)
}

func (in *instance) markStopped(st vm.ExitStatus) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.stopped {
		in.exit, in.stopped = st, true
		close(in.done)
	}
}

// Wait implements vm.Instance.
func (in *instance) Wait(ctx context.Context) (vm.ExitStatus, error) {
	in.mu.Lock()
	started := in.started
	in.mu.Unlock()
	if !started {
		return vm.ExitStatus{}, fmt.Errorf("vm %s: not started", in.spec.ID)
	}
	select {
	case <-in.done:
		in.mu.Lock()
		defer in.mu.Unlock()
		return in.exit, nil
	case <-ctx.Done():
		return vm.ExitStatus{}, ctx.Err()
	}
}

func (in *instance) execute(ctx context.Context, cmd string) error {
	in.mu.Lock()
	q := in.qmp
	in.mu.Unlock()
	if q == nil {
		return fmt.Errorf("vm %s: not running", in.spec.ID)
	}
	_, err := q.execute(ctx, cmd, nil)
	return err
}

// Pause implements vm.Instance.
func (in *instance) Pause(ctx context.Context) error { return in.execute(ctx, "stop") }

// Resume implements vm.Instance.
func (in *instance) Resume(ctx context.Context) error { return in.execute(ctx, "cont") }

// Stop implements vm.Instance: QMP quit, then SIGKILL after grace.
func (in *instance) Stop(ctx context.Context, grace time.Duration) error {
	in.mu.Lock()
	running := in.pid != 0 && !in.stopped
	in.mu.Unlock()
	if !running {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	if err := in.execute(qctx, "quit"); err != nil && !errors.Is(err, errQMPClosed) {
		in.d.log.Debug("qmp quit failed; killing", "vm", in.spec.ID, "err", err)
	}
	select {
	case <-in.done:
		return nil
	case <-qctx.Done():
	}
	in.kill()
	select {
	case <-in.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("vm %s: qemu (pid %d) did not die after SIGKILL", in.spec.ID, in.pid)
	}
}

// kill sends SIGKILL to QEMU if it still runs (and is still ours).
func (in *instance) kill() {
	in.mu.Lock()
	pid, stopped := in.pid, in.stopped
	in.mu.Unlock()
	if pid == 0 || stopped {
		return
	}
	// Through a pidfd, so that a recycled PID is never hit.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	}
}

// Destroy implements vm.Instance.
func (in *instance) Destroy(ctx context.Context) error {
	in.kill()
	in.mu.Lock()
	pid := in.pid
	in.mu.Unlock()
	if pid != 0 {
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("vm %s: qemu (pid %d) did not die after SIGKILL", in.spec.ID, pid)
		}
	}
	// A QEMU nobody recorded (a crash between fork and record) is found by name.
	if p := findQEMU(in.d.stateDir, in.spec.ID); p != 0 {
		if err := killAndWait(p, 10*time.Second); err != nil {
			return fmt.Errorf("vm %s: %w", in.spec.ID, err)
		}
	}
	var errs []error
	if err := in.d.cg.remove(in.spec.ID); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(in.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", in.dir, err))
	}
	in.markStopped(vm.ExitStatus{Reason: "destroyed", ExitCode: -1})
	in.d.untrack(in.spec.ID)
	return errors.Join(errs...)
}

// GuestChannel implements vm.Instance.
func (in *instance) GuestChannel(ctx context.Context) (io.ReadWriteCloser, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", in.paths.Guest)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm %s: guest channel: %w", in.spec.ID, err)
		case <-in.done:
			return nil, fmt.Errorf("vm %s: guest channel: vm stopped", in.spec.ID)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (in *instance) qemuLogTail() string {
	b, err := os.ReadFile(in.dir + "/qemu.log")
	if err != nil || len(b) == 0 {
		return "no output"
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(trimSpaceBytes(b))
}

func trimSpaceBytes(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
