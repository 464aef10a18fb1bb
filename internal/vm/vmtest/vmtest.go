// Package vmtest is the conformance suite every vm.Driver must pass. It boots
// real VMs of the test image and talks to tandem-guest in them.
package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Config tells the suite what to boot.
type Config struct {
	// NewDriver returns a driver over stateDir. The suite calls it twice
	// with the same dir to play a process restart.
	NewDriver func(t *testing.T, stateDir string) vm.Driver
	StateDir  string
	Arch      arch.Arch
	Accel     vm.Accel // resolved: kvm or tcg
	Kernel    string
	Initrd    string
	Rootfs    string
	// RootDevice is the guest's root disk, e.g. /dev/vda.
	RootDevice string
}

// Run runs the suite.
func Run(t *testing.T, c Config) {
	s := &suite{c: c}
	t.Run("BootRunExit", s.bootRunExit)
	t.Run("RootDiskIsCopyOnWrite", s.copyOnWrite)
	t.Run("StopEndsARunningVM", s.stop)
	t.Run("DestroyIsIdempotent", s.destroyIdempotent)
	t.Run("RecoverAfterRestart", s.recoverAfterRestart)
	t.Run("PauseStopsTheGuest", s.pause)
	t.Run("GuestPanicEndsTheVM", s.panic)
	t.Run("InvalidSpecLeavesNothing", s.invalidSpec)
	t.Run("Capabilities", s.capabilities)
}

// capabilities: what the driver says of itself is what the suite boots by,
// and an accelerator it resolves is one the suite can run.
func (s *suite) capabilities(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	c := d.Capabilities()
	if c.RootDevice != s.c.RootDevice {
		t.Errorf("root device %q, the suite boots %q", c.RootDevice, s.c.RootDevice)
	}
	if c.Limits.VCPUs < 1 || c.Limits.MemoryMiB < 256 {
		t.Errorf("limits %+v: not even the suite's VMs fit", c.Limits)
	}
	if err := c.Limits.Check(1, 256); err != nil {
		t.Errorf("limits refuse the suite's VM: %v", err)
	}
	choice, err := d.ResolveAccel(ctxT(t, time.Minute), vm.AccelTCG, s.c.Arch, s.c.Kernel, s.c.Initrd)
	if err != nil || choice.Accel != vm.AccelTCG || choice.Reason == "" {
		t.Errorf("asking for tcg: %+v, %v", choice, err)
	}
}

type suite struct{ c Config }

func (s *suite) spec() vm.Spec {
	return vm.Spec{
		ID: vm.NewID(), Arch: s.c.Arch, VCPUs: 1, MemoryMiB: 256,
		Kernel: s.c.Kernel, Initrd: s.c.Initrd, BaseDisk: s.c.Rootfs, Accel: s.c.Accel,
		Cmdline: guest.BootParams{Root: s.c.RootDevice}.Cmdline(),
		Owner:   "agent", DieWithOwner: true,
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// boot creates and starts a VM and connects to its guest agent.
func (s *suite) boot(t *testing.T, d vm.Driver) (vm.Instance, *guest.Conn) {
	t.Helper()
	ctx := ctxT(t, 3*time.Minute)
	in, err := d.Create(ctx, s.spec())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { in.Destroy(context.Background()) })
	if err := in.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	rw, err := in.GuestChannel(ctx)
	if err != nil {
		t.Fatalf("guest channel: %v", err)
	}
	t.Cleanup(func() { rw.Close() })
	c := guest.NewConn(rw)
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	t.Cleanup(func() { stop() })
	h, err := c.ReadHello()
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, tail(in))
	}
	if h.Arch != string(s.c.Arch) {
		t.Fatalf("guest agent arch %q, want %q", h.Arch, s.c.Arch)
	}
	return in, c
}

// job sends a job and collects its output until Exit.
func job(t *testing.T, c *guest.Conn, argv ...string) (stdout, stderr string, exit guest.Exit) {
	t.Helper()
	if err := c.WriteJSON(guest.FrameJob, guest.Job{Argv: argv}); err != nil {
		t.Fatalf("send job: %v", err)
	}
	var o, e bytes.Buffer
	for {
		ft, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("job %v: %v (stdout so far %q)", argv, err, o.String())
		}
		switch ft {
		case guest.FrameStdout:
			o.Write(p)
		case guest.FrameStderr:
			e.Write(p)
		case guest.FrameExit:
			if err := guest.Decode(ft, p, &exit); err != nil {
				t.Fatal(err)
			}
			return o.String(), e.String(), exit
		}
	}
}

func waitStopped(t *testing.T, in vm.Instance, d time.Duration) vm.ExitStatus {
	t.Helper()
	st, err := in.Wait(ctxT(t, d))
	if err != nil {
		t.Fatalf("wait: %v\nconsole:\n%s", err, tail(in))
	}
	return st
}

func tail(in vm.Instance) string {
	b, _ := os.ReadFile(in.ConsoleLog())
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func (s *suite) assertGone(t *testing.T, d vm.Driver, id string) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	if _, err := d.Get(ctx, id); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("Get(%s) after Destroy: %v, want ErrNotFound", id, err)
	}
	infos, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		if i.ID == id {
			t.Errorf("List still shows %s after Destroy", id)
		}
	}
}

func (s *suite) bootRunExit(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	in, c := s.boot(t, d)
	if got := in.Info().State; got != vm.StateRunning {
		t.Errorf("state %q, want running", got)
	}
	// A driver that says what its VMs use: booting a kernel took CPU time
	// and memory.
	ur, usage := in.(vm.UsageReader)
	if usage {
		u, err := ur.Usage()
		if err != nil || u.CPUSeconds <= 0 || u.RSS <= 0 || u.DiskAlloc < 0 {
			t.Errorf("usage of a running VM: %+v, %v", u, err)
		}
	}
	// A running VM's CPU weight changes, within its range, and the VM
	// runs on.
	for _, w := range []int{vm.CPUWeightIdle, vm.CPUWeightNormal} {
		if err := in.SetCPUWeight(w); err != nil {
			t.Errorf("SetCPUWeight(%d) on a running VM: %v", w, err)
		}
	}
	if err := in.SetCPUWeight(vm.CPUWeightMax + 1); err == nil {
		t.Errorf("SetCPUWeight(%d) succeeded", vm.CPUWeightMax+1)
	}
	out, _, ex := job(t, c, "uname", "-m")
	if strings.TrimSpace(out) != s.c.Arch.UnameMachine() || ex.Code != 0 {
		t.Fatalf("uname -m: %q exit %d, want %q exit 0", out, ex.Code, s.c.Arch.UnameMachine())
	}
	// After reporting, tandem-guest ends the VM by itself.
	st := waitStopped(t, in, time.Minute)
	if usage {
		if _, err := ur.Usage(); err == nil {
			t.Error("usage of a stopped VM: no error")
		}
	}
	if st.Reason != "guest-reset" && st.Reason != "guest-shutdown" {
		t.Errorf("exit reason %q, want the guest's own reset or shutdown", st.Reason)
	}
	if err := in.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.assertGone(t, d, in.ID())
}

func fileSum(t *testing.T, p string) [32]byte {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func (s *suite) copyOnWrite(t *testing.T) {
	before := fileSum(t, s.c.Rootfs)
	d := s.c.NewDriver(t, s.c.StateDir)
	_, c := s.boot(t, d)
	if _, errOut, ex := job(t, c, "sh", "-c", "echo dirty > /root/left-behind && sync"); ex.Code != 0 {
		t.Fatalf("write in guest: exit %d: %s", ex.Code, errOut)
	}
	_, c2 := s.boot(t, d)
	out, _, _ := job(t, c2, "sh", "-c", "cat /root/left-behind 2>/dev/null || echo clean")
	if strings.TrimSpace(out) != "clean" {
		t.Errorf("a second VM saw the first one's write: %q", out)
	}
	if fileSum(t, s.c.Rootfs) != before {
		t.Error("the read-only base image changed")
	}
}

func (s *suite) stop(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	in, c := s.boot(t, d)
	if err := c.WriteJSON(guest.FrameJob, guest.Job{Argv: []string{"sleep", "600"}}); err != nil {
		t.Fatal(err)
	}
	if err := in.Stop(ctxT(t, time.Minute), 5*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := in.Info().State; got != vm.StateStopped {
		t.Errorf("state after Stop %q, want stopped", got)
	}
	if err := in.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.assertGone(t, d, in.ID())
}

func (s *suite) destroyIdempotent(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	ctx := ctxT(t, time.Minute)
	// A VM created and never started.
	in, err := d.Create(ctx, s.spec())
	if err != nil {
		t.Fatal(err)
	}
	if got := in.Info().State; got != vm.StateCreated {
		t.Errorf("state %q, want created", got)
	}
	for i := range 2 {
		if err := in.Destroy(ctx); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	s.assertGone(t, d, in.ID())
	// A running VM, destroyed twice.
	in2, _ := s.boot(t, d)
	for i := range 2 {
		if err := in2.Destroy(ctx); err != nil {
			t.Fatalf("destroy running #%d: %v", i+1, err)
		}
	}
	s.assertGone(t, d, in2.ID())
}

func (s *suite) recoverAfterRestart(t *testing.T) {
	d1 := s.c.NewDriver(t, s.c.StateDir)
	ctx := ctxT(t, 3*time.Minute)
	sp := s.spec()
	sp.DieWithOwner = false // must outlive its creator's handle
	in, err := d1.Create(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Destroy(context.Background()) })
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := in.Info().PID
	// The first driver lets go, as its process would by exiting; a second
	// driver over the same state plays the restarted process.
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	d2 := s.c.NewDriver(t, s.c.StateDir)
	got, err := d2.Recover(ctx)
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	var re vm.Instance
	for _, r := range got {
		if r.ID() == sp.ID {
			re = r
		}
	}
	if re == nil {
		t.Fatalf("recover did not find %s among %d VMs", sp.ID, len(got))
	}
	if i := re.Info(); i.State != vm.StateRunning || i.PID != pid {
		t.Fatalf("recovered %+v, want running with pid %d", i, pid)
	}
	// The recovered handle reaches the guest and controls the VM.
	if err := re.Pause(ctx); err != nil {
		t.Errorf("pause through recovered handle: %v", err)
	}
	if err := re.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	// QEMU is the first driver's child here: once killed it may stay a
	// zombie until that driver's reaper collects it, which is not "running".
	if !exitsSoon(pid, 2*time.Second) {
		t.Errorf("qemu pid %d still runs after Destroy through the recovered handle", pid)
	}
	s.assertGone(t, d2, sp.ID)
}

func (s *suite) pause(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	in, c := s.boot(t, d)
	ctx := ctxT(t, time.Minute)
	frames := make(chan guest.FrameType, 16)
	go func() {
		for {
			ft, _, err := c.ReadFrame()
			if err != nil {
				close(frames)
				return
			}
			frames <- ft
		}
	}()
	// Heartbeats flow...
	if !sawWithin(frames, guest.FrameHeartbeat, 10*time.Second) {
		t.Fatal("no heartbeat from a running guest")
	}
	if err := in.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	drain(frames)
	// ...stop while paused...
	if sawWithin(frames, guest.FrameHeartbeat, 3*guest.HeartbeatInterval) {
		t.Error("heartbeats from a paused guest")
	}
	if err := in.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// ...and resume.
	if !sawWithin(frames, guest.FrameHeartbeat, 10*time.Second) {
		t.Error("no heartbeat after resume")
	}
}

func sawWithin(c chan guest.FrameType, want guest.FrameType, d time.Duration) bool {
	tm := time.After(d)
	for {
		select {
		case ft, ok := <-c:
			if !ok {
				return false
			}
			if ft == want {
				return true
			}
		case <-tm:
			return false
		}
	}
}

func drain(c chan guest.FrameType) {
	for {
		select {
		case <-c:
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func (s *suite) panic(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	in, c := s.boot(t, d)
	if err := c.WriteJSON(guest.FrameJob, guest.Job{Argv: []string{"sh", "-c", "echo c > /proc/sysrq-trigger"}}); err != nil {
		t.Fatal(err)
	}
	st := waitStopped(t, in, time.Minute)
	if st.Reason != "guest-reset" {
		t.Errorf("exit reason after a panic %q, want guest-reset (panic=-1 with -no-reboot)", st.Reason)
	}
	if !strings.Contains(tail(in), "Kernel panic") {
		t.Errorf("console does not show the panic:\n%s", tail(in))
	}
}

func (s *suite) invalidSpec(t *testing.T) {
	d := s.c.NewDriver(t, s.c.StateDir)
	ctx := ctxT(t, time.Minute)
	before, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bad := []func(*vm.Spec){
		func(s *vm.Spec) { s.VCPUs = 0 },
		func(s *vm.Spec) { s.MemoryMiB = 1 << 30 },
		func(s *vm.Spec) { s.Arch = "riscv64" },
		func(s *vm.Spec) { s.ID = "../escape" },
		func(s *vm.Spec) { s.Kernel = "/nonexistent/vmlinux" },
		func(s *vm.Spec) { s.CPUWeight = vm.CPUWeightMax + 1 },
	}
	for i, mut := range bad {
		sp := s.spec()
		mut(&sp)
		if in, err := d.Create(ctx, sp); err == nil {
			in.Destroy(ctx)
			t.Errorf("case %d: Create accepted %+v", i, sp)
		}
	}
	after, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("invalid specs left VMs behind: %d before, %d after", len(before), len(after))
	}
}

// exitsSoon reports whether process pid is gone or a zombie within d.
func exitsSoon(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		// The state follows the command name, which is in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
