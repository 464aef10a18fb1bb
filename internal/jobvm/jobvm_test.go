package jobvm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
	"github.com/tandem-ci/tandem/internal/vm"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

func newHost(t testing.TB) *jobvm.Host { return testhost.New(t) }

func req() jobvm.Request {
	return jobvm.Request{Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelAuto, Owner: vm.ProcessOwner(), DieWithOwner: true}
}

func TestRunStreamsOutputAndExit(t *testing.T) {
	h := newHost(t)
	var out bytes.Buffer
	r := req()
	r.Argv = []string{"sh", "-c", "for i in 1 2 3; do echo line $i; done; exit 5"}
	r.Stdout = &out
	r.VCPUs = 0.5
	var quota, weight string
	r.OnReady = func(in vm.Instance) { quota, weight = cpuQuota(t, in.ID()), cpuWeight(t, in.ID()) }
	res, err := h.Run(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 5 || res.Failure != "" || out.String() != "line 1\nline 2\nline 3\n" {
		t.Errorf("result %+v, stdout %q", res, out.String())
	}
	if quota != "50000" && quota != "50000 100000" {
		t.Errorf("a 0.5-vCPU VM's CPU quota is %q, want half a CPU", quota)
	}
	if !slices.Contains(normalWeight, weight) {
		t.Errorf("a VM outside a warm pool has CPU weight %q, want the normal one (%v)", weight, normalWeight)
	}
	if res.Timings.Boot <= 0 || res.Timings.Total < res.Timings.Prepare+res.Timings.Boot+res.Timings.Run {
		t.Errorf("timings do not add up: %+v", res.Timings)
	}
}

func TestHungGuestIsDetected(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"sleep", "600"}
	r.HeartbeatTimeout = 4 * time.Second
	// Freezing the guest's CPUs is a hang as the host sees it: no word at all.
	r.OnReady = func(in vm.Instance) {
		if err := in.Pause(context.Background()); err != nil {
			t.Errorf("pause: %v", err)
		}
	}
	res, err := h.Run(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if res.Failure != failure.GuestHang {
		t.Errorf("failure %q (%s), want %q", res.Failure, res.Detail, failure.GuestHang)
	}
}

func TestBootTimeout(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"true"}
	r.BootTimeout = 50 * time.Millisecond
	res, err := h.Run(context.Background(), r)
	var fe *jobvm.FailureError
	if !errors.As(err, &fe) || res.Failure != failure.BootTimeout {
		t.Errorf("err %v, failure %q; want %s", err, res.Failure, failure.BootTimeout)
	}
}

// A guest kernel that says it turned off its timer (a host stall during
// its calibration; it would never finish booting) is booted again. The
// kernel's line is written into the first boot's console by the test, past
// what the guest itself writes there before it is ready.
func TestBootAgainWhenTheGuestLosesItsTimer(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"sh", "-c", "exit 7"}
	forged := make(chan error, 1)
	r.OnCreate = func(in vm.Instance) {
		go func() {
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				f, err := os.OpenFile(in.ConsoleLog(), os.O_WRONLY, 0)
				if err == nil {
					_, err = f.WriteAt([]byte("\n[    2.185603] APIC frequency too slow, disabling apic timer\n"), 16<<10)
					f.Close()
					forged <- err
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			forged <- errors.New("the VM's console never appeared")
		}()
	}
	res, err := h.Run(context.Background(), r)
	if err != nil {
		t.Fatalf("%v (%+v)", err, res)
	}
	if ferr := <-forged; ferr != nil {
		t.Fatal(ferr)
	}
	// One retry for the forged loss; a real stall of a loaded host may
	// take a boot of its own (seen once in CI, beside a 20 s KVM probe).
	if res.BootRetries < 1 || res.ExitCode != 7 || res.Failure != "" || res.Detail != "" {
		t.Errorf("result %+v, want the job run once after one more boot", res)
	}
}

func TestCollectReclaimsDeadOwnersVMs(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	// A VM whose owner is a process that no longer exists, with its network.
	id := vm.NewID()
	att, err := h.Net.Attach(ctx, id, egress.Policy{Mode: egress.Open})
	if err != nil {
		t.Fatal(err)
	}
	im, err := h.Images.Resolve("test-amd64")
	if err != nil {
		t.Fatal(err)
	}
	in, err := h.Driver.Create(ctx, vm.Spec{ID: id, Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 128, Kernel: im.Kernel(),
		Initrd: im.Initrd(), BaseDisk: im.Rootfs(), Accel: vm.AccelTCG, Owner: "run:999999999:1",
		NIC: &vm.NIC{TAP: att.TAP, MAC: att.MAC}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// And one of a live owner, which must survive.
	keep, err := h.Driver.Create(ctx, vm.Spec{ID: vm.NewID(), Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 128, Kernel: im.Kernel(),
		Initrd: im.Initrd(), Accel: vm.AccelTCG, Owner: vm.ProcessOwner()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != id {
		t.Errorf("collected %v, want [%s]", got, id)
	}
	if _, err := h.Driver.Get(ctx, keep.ID()); err != nil {
		t.Errorf("the live owner's VM was reclaimed: %v", err)
	}
	keep.Destroy(ctx)
}

// cpuQuota reads the CPU quota of a VM's cgroup (v1 cfs_quota_us or v2 cpu.max).
func cpuQuota(t *testing.T, id string) string {
	return testenv.VMCPUCgroup(t, id, "cpu.cfs_quota_us", "cpu.max")
}

// cpuWeight reads the CPU weight of a VM's cgroup (v1 cpu.shares or v2
// cpu.weight).
func cpuWeight(t *testing.T, id string) string {
	return testenv.VMCPUCgroup(t, id, "cpu.shares", "cpu.weight")
}

// Weights as either cgroup version writes them.
var (
	idleWeight   = []string{"102", "10"}
	normalWeight = []string{"1024", "100"}
)

// A VM waiting for its runner config (a warm pool's, for minutes) is
// watched as a running job is: a long wait with a healthy guest is no
// failure, and a guest that falls silent while it waits ends the wait.
func TestWaitingVMIsWatched(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"sh", "-c", "echo $FROM_CONFIG"}
	r.HeartbeatTimeout = 3 * time.Second
	var out bytes.Buffer
	r.Stdout = &out
	r.Await = func(ctx context.Context) (map[string]string, error) {
		select {
		case <-time.After(2 * r.HeartbeatTimeout):
			return map[string]string{"FROM_CONFIG": "configured late"}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	res, err := h.Run(context.Background(), r)
	if err != nil || res.Failure != "" || res.ExitCode != 0 || out.String() != "configured late\n" {
		t.Fatalf("a healthy guest configured after %s: result %+v, err %v, stdout %q", 2*r.HeartbeatTimeout, res, err, out.String())
	}

	r.Await = func(ctx context.Context) (map[string]string, error) {
		<-ctx.Done() // no job comes
		return nil, ctx.Err()
	}
	r.OnReady = func(in vm.Instance) {
		if err := in.Pause(context.Background()); err != nil {
			t.Errorf("pause: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err = h.Run(ctx, r)
	var fe *jobvm.FailureError
	if !errors.As(err, &fe) || res.Failure != failure.GuestHang || ctx.Err() != nil {
		t.Errorf("a guest silent while it waits: result %+v, err %v; want a hang, before the wait's context ends", res, err)
	}
}

// A VM on standby (a warm pool's) boots and waits at the idle CPU weight,
// and is raised to the normal one when claimed, before its job is sent.
func TestStandbyVMYieldsUntilClaimed(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"true"}
	r.Standby = &jobvm.Standby{}
	var id, atReady, atClaim string
	r.OnCreate = func(in vm.Instance) { id = in.ID() }
	r.OnReady = func(in vm.Instance) { atReady = cpuWeight(t, id) }
	r.Await = func(ctx context.Context) (map[string]string, error) {
		if err := r.Standby.Claim(); err != nil {
			t.Errorf("claim: %v", err)
		}
		atClaim = cpuWeight(t, id)
		return nil, nil
	}
	res, err := h.Run(context.Background(), r)
	if err != nil || res.Failure != "" || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if !slices.Contains(idleWeight, atReady) {
		t.Errorf("booted: CPU weight %q, want the idle one (%v)", atReady, idleWeight)
	}
	if !slices.Contains(normalWeight, atClaim) {
		t.Errorf("claimed: CPU weight %q, want the normal one (%v)", atClaim, normalWeight)
	}
	if err := r.Standby.Claim(); err != nil {
		t.Errorf("a second claim, after the VM is gone: %v", err)
	}
}
