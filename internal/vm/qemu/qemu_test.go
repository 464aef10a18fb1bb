package qemu_test

import (
	"context"
	"os"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
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
