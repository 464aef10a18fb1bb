package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/vm"
)

type instance struct {
	d       *Driver
	spec    vm.Spec
	dir     string
	paths   Paths
	created time.Time
	uid     int // QEMU's (jail.go)

	mu      sync.Mutex
	pid     int
	started bool
	stopWhy string // why the driver killed it (failure.ConsoleLimit, failure.DiskFull); "" otherwise
	qmp     *qmp
	exit    vm.ExitStatus
	done    chan struct{} // closed when the QEMU process has exited
	stopped bool          // done is closed

	// cpuMu orders SetCPUWeight against Start placing QEMU in its
	// cgroups: a weight set before then is the one placed, one set after
	// is written to the cgroup.
	cpuMu  sync.Mutex
	weight int  // the VM's CPU weight, now or once placed
	placed bool // in its cgroups (or recovered running): weights are written there
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

	cmd, start, err := in.command()
	if err != nil {
		return fmt.Errorf("vm %s: %w", in.spec.ID, err)
	}
	defer start.Close()
	if err := cmd.Start(); err != nil {
		closeFiles(cmd)
		return fmt.Errorf("vm %s: start %s: %w", in.spec.ID, Binary(in.spec.Arch), err)
	}
	closeFiles(cmd) // the child has them
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
	if err := in.d.writeRecord(in.spec.ID, record{Spec: in.spec, Created: in.created, UID: in.uid, PID: pid, StartTime: st}); err != nil {
		in.kill()
		return fmt.Errorf("vm %s: write record: %w", in.spec.ID, err)
	}
	// Into its cgroups before QEMU runs: the jail waits for this byte.
	if err := in.d.cg.place(in.spec.ID, in.caps(), pid); err != nil {
		if !in.d.allowUncapped {
			in.kill()
			<-in.done
			return fmt.Errorf("vm %s: cannot cap the VM with cgroups (%w); the host runs uncapped VMs only when told to (--allow-uncapped)", in.spec.ID, err)
		}
		in.d.warnUncapped(err)
	}
	in.placeWeight()
	if _, err := start.Write([]byte{1}); err != nil {
		in.kill()
		<-in.done
		return fmt.Errorf("vm %s: qemu did not start: %s", in.spec.ID, in.qemuLogTail())
	}
	start.Close()

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
	go in.watch()
	return nil
}

// watch stops the VM when it writes more to its console than the driver
// keeps, or more to its disk than its spec allows; it returns when the
// VM stops. The console's file is read by size, never whole.
func (in *instance) watch() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-in.done:
			return
		case <-t.C:
		}
		why := ""
		if fi, err := os.Stat(in.paths.Console); err == nil && fi.Size() > in.d.consoleLimit {
			why = string(failure.ConsoleLimit)
		}
		if in.spec.DiskMiB > 0 && in.paths.Disk != "" {
			if n, ok := allocated(in.paths.Disk); ok && n > int64(in.spec.DiskMiB)<<20 {
				why = string(failure.DiskFull)
			}
		}
		if why != "" {
			in.mu.Lock()
			if in.stopWhy == "" {
				in.stopWhy = why
			}
			in.mu.Unlock()
			in.d.log.Warn("stopping a VM that used too much", "vm", in.spec.ID, "why", why)
			in.kill()
			return
		}
	}
}

// allocated returns the bytes a file takes on disk (a sparse file's
// holes not counted).
func allocated(path string) (int64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return st.Blocks * 512, true
}

// command returns the jailed QEMU of the VM (jail.go), and the write end of
// its start pipe.
func (in *instance) command() (*exec.Cmd, *os.File, error) {
	bin, err := exec.LookPath(Binary(in.spec.Arch))
	if err != nil {
		return nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	var ro []string
	for _, f := range []string{in.spec.Kernel, in.spec.Initrd, in.spec.BaseDisk} {
		if f == "" {
			continue
		}
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, nil, err
		}
		ro = append(ro, a)
	}
	run, err := filepath.Abs(filepath.Dir(in.paths.Console))
	if err != nil {
		return nil, nil, err
	}
	kvm := in.spec.Accel == vm.AccelKVM
	js := jailSpec{Binary: bin, UID: in.uid, Groups: jailGroups(kvm), Root: filepath.Join(filepath.Dir(run), ".jail"),
		StateDir: run, ReadOnly: ro, Pdeath: in.spec.DieWithOwner, ParentPID: os.Getpid()}
	if kvm {
		js.Devices = []string{"kvm"}
	}
	spec, err := json.Marshal(js)
	if err != nil {
		return nil, nil, err
	}
	logf, err := os.OpenFile(filepath.Join(in.dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, nil, err
	}
	p := in.paths
	extra := []*os.File{startR}
	if in.spec.NIC != nil {
		tap, err := openTAP(in.spec.NIC.TAP)
		if err != nil {
			logf.Close()
			startR.Close()
			startW.Close()
			return nil, nil, err
		}
		extra = append(extra, tap)
		p.TAPFd = jailTAPFd
	}
	cmd := &exec.Cmd{Path: self, Args: append([]string{jailArg0, string(spec)}, Args(in.spec, p)...),
		Dir: in.dir, Stdout: logf, Stderr: logf, ExtraFiles: extra}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if in.spec.DieWithOwner {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	return cmd, startW, nil
}

// closeFiles closes what a started command's child holds now.
func closeFiles(cmd *exec.Cmd) {
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	if f, ok := cmd.Stdout.(*os.File); ok {
		f.Close()
	}
}

// caps is what the VM's cgroups allow.
func (in *instance) caps() caps {
	c := caps{vcpus: in.spec.VCPUs, memoryBytes: memoryCap(in.spec) << 20}
	if l := in.spec.IO; l != (vm.IOLimits{}) {
		c.io = &IOLimit{Device: in.d.ioDevice, ReadBPS: l.ReadBPS, WriteBPS: l.WriteBPS, ReadIOPS: l.ReadIOPS, WriteIOPS: l.WriteIOPS}
	}
	return c
}

// placeWeight gives the VM, just placed in its cgroups, its CPU weight.
// The weight is written even when it is the kernel's default, as for a VM
// outside a warm pool: one path for every VM, and the cgroup says what the
// VM runs at. A weight that cannot be written costs the VM its place in
// line, not its job: it is logged.
func (in *instance) placeWeight() {
	in.cpuMu.Lock()
	defer in.cpuMu.Unlock()
	in.placed = true
	if err := in.d.cg.setWeight(in.spec.ID, in.weight); err != nil {
		in.d.log.Warn("cannot set the VM's CPU weight: it contends for the CPUs at the default", "vm", in.spec.ID, "weight", in.weight, "err", err)
	}
}

// SetCPUWeight implements vm.Instance.
func (in *instance) SetCPUWeight(weight int) error {
	if err := vm.CheckCPUWeight(weight); err != nil {
		return fmt.Errorf("vm %s: %w", in.spec.ID, err)
	}
	in.cpuMu.Lock()
	defer in.cpuMu.Unlock()
	in.weight = weight
	if !in.placed {
		return nil
	}
	if err := in.d.cg.setWeight(in.spec.ID, weight); err != nil {
		return fmt.Errorf("vm %s: %w", in.spec.ID, err)
	}
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
	in.cpuMu.Lock()
	in.placed = true
	in.cpuMu.Unlock()
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
	// Its console and disk stay bounded under this process too: a job
	// taken over after a restart runs on with the same limits.
	go in.watch()
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
	if in.stopWhy != "" {
		reason = in.stopWhy
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
	if peak, ok := in.d.cg.peakMemory(in.spec.ID); ok {
		in.d.log.Debug("vm memory peak", "vm", in.spec.ID, "guest_mib", in.spec.MemoryMiB,
			"peak_mib", peak>>20, "cap_mib", memoryCap(in.spec))
	}
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
