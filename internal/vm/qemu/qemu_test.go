package qemu_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
	"github.com/tandem-ci/tandem/internal/vm/vmtest"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

func newDriver(t *testing.T, dir string) vm.Driver {
	d, err := qemu.New(qemu.Config{StateDir: dir, Limits: vm.Limits{VCPUs: 2, MemoryMiB: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	testenv.RequireVM(t)
	st := testimages.Store(t)
	for _, a := range arch.Machines {
		t.Run(string(a), func(t *testing.T) {
			im, err := st.Resolve("test-" + string(a))
			if err != nil {
				t.Fatal(err)
			}
			if err := im.Verify(); err != nil {
				t.Fatal(err)
			}
			dir := testenv.ShortTempDir(t)
			d := newDriver(t, dir).(*qemu.Driver)
			choice, err := d.ResolveAccel(context.Background(), vm.AccelAuto, a, im.Kernel(), im.Initrd())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("accelerator %s: %s", choice.Accel, choice.Reason)
			vmtest.Run(t, vmtest.Config{
				NewDriver: newDriver, StateDir: dir, Arch: a, Accel: choice.Accel,
				Kernel: im.Kernel(), Initrd: im.Initrd(), Rootfs: im.Rootfs(), RootDevice: qemu.RootDevice,
			})
		})
	}
}

// A VM recovered by a later process (its QEMU not this one's child) is
// held to the limits as one it started: here its console, over a limit
// of one byte once the guest has printed, stops it at once.
func TestRecoveredVMKeepsItsLimits(t *testing.T) {
	testenv.RequireVM(t)
	im, err := testimages.Store(t).Resolve("test-" + string(arch.Host()))
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.ShortTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d1 := newDriver(t, dir)
	in, err := d1.Create(ctx, vm.Spec{ID: vm.NewID(), Arch: arch.Host(), VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelTCG,
		Kernel: im.Kernel(), Initrd: im.Initrd(), BaseDisk: im.Rootfs(),
		Cmdline: guest.BootParams{Root: qemu.RootDevice}.Cmdline(), Owner: "agent"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Destroy(context.Background()) })
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		if fi, err := os.Stat(in.ConsoleLog()); err == nil && fi.Size() > 1 {
			break // the guest is booting and printing
		}
		if ctx.Err() != nil {
			t.Fatal("the guest printed nothing on its console")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := qemu.New(qemu.Config{StateDir: dir, Limits: vm.Limits{VCPUs: 2, MemoryMiB: 4096}, ConsoleLimit: 1})
	if err != nil {
		t.Fatal(err)
	}
	re, err := d2.Get(ctx, in.ID())
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	st, err := re.Wait(wctx)
	if err != nil {
		t.Fatalf("the recovered VM, over its console limit, still runs: %v", err)
	}
	if st.Reason != string(failure.ConsoleLimit) {
		t.Errorf("the recovered VM ended with %+v, want stopped for its console (%s)", st, failure.ConsoleLimit)
	}
	if err := re.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}
