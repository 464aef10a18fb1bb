package qemu

import (
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/vm"
)

func TestArgs(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	s := vm.Spec{ID: "vm-0123456789", Arch: arch.AMD64, VCPUs: 0.5, MemoryMiB: 512, Kernel: "/k", Initrd: "/i",
		BaseDisk: "/base.ext4", Accel: vm.AccelTCG, Cmdline: "tandem.root=/dev/vda",
		NIC: &vm.NIC{TAP: "tdm-0123456789", MAC: mac}}
	a := Args(s, Paths{Console: "/d/console.log", Guest: "/d/guest.sock", QMP: "/d/qmp.sock", Disk: "/d/overlay.qcow2"})
	joined := strings.Join(a, " ")
	for _, want := range []string{
		"-nodefaults", "-no-user-config", "-no-reboot", "-sandbox on,",
		"-M microvm,", "-accel tcg", "-smp 1", "-m 512M",
		"-append console=ttyS0 reboot=t panic=-1 quiet loglevel=5 cryptomgr.notests",
		" tandem.root=/dev/vda",
		"file=/d/overlay.qcow2", "ifname=tdm-0123456789", "mac=02:00:00:00:00:01",
		"path=/d/guest.sock,server=on,wait=off", "name=tandem.0", "-qmp unix:/d/qmp.sock,server=on,wait=off",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	if hostTSCkHz() > 0 && !strings.Contains(joined, " tsc_early_khz=") {
		t.Errorf("a TCG x86 guest must be told the host's TSC rate:\n%s", joined)
	}
	if i := slices.Index(a, "-name"); i < 0 || !strings.HasPrefix(a[i+1], "tandem-vm-0123456789,") {
		t.Errorf("-name must carry the VM id: %v", a)
	}

	s.Arch, s.Accel, s.VCPUs, s.NIC = arch.ARM64, vm.AccelTCG, 2, nil
	joined = strings.Join(Args(s, Paths{Console: "c", Guest: "g"}), " ")
	for _, want := range []string{"-M virt", "-cpu cortex-a72", "-smp 2", "console=ttyAMA0", "snapshot=on,file=/base.ext4"} {
		if !strings.Contains(joined, want) {
			t.Errorf("arm64 args lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "-qmp") || strings.Contains(joined, "-netdev") {
		t.Errorf("arm64 args have a qmp or nic nobody asked for:\n%s", joined)
	}
}

func TestHostTSC(t *testing.T) {
	khz := hostTSCkHz()
	if khz == 0 && runtime.GOARCH != "amd64" {
		// Under qemu-user (how CI runs the arm64 tests) the counter is
		// emulated and too jittery to agree with itself; guests then
		// calibrate themselves, as without this.
		t.Skipf("SKIPPED: the cycle counter of this %s CPU is unsteady (emulated?)", runtime.GOARCH)
	}
	// Any real counter runs between 1 MHz (arm64 generic timers run from
	// 1 MHz up) and 10 GHz.
	if khz < 1000 || khz > 10_000_000 {
		t.Errorf("host TSC %d kHz: implausible", khz)
	}
	t.Logf("host cycle counter: %d kHz", khz)
}
