package qemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Paths are the host files a QEMU process uses.
type Paths struct {
	Console string // guest console log
	Guest   string // Unix socket of the host↔guest channel (QEMU serves it)
	QMP     string // Unix socket of QMP; empty: none
	Disk    string // qcow2 overlay; empty: the base disk with snapshot=on
	PIDFile string // empty: none
	// TAPFd, if not 0, is the fd QEMU finds the VM's TAP open on (the
	// jail's); 0: QEMU opens Spec.NIC.TAP by name.
	TAPFd int
}

// Binary is the QEMU system emulator for a guest architecture.
func Binary(a arch.Arch) string {
	if a == arch.ARM64 {
		return "qemu-system-aarch64"
	}
	return "qemu-system-x86_64"
}

// BaseCmdline is the kernel command line every Tandem guest gets, before its
// boot parameters. Each item earned its place by measurement (docs/benchmarks.md):
//   - quiet: every console byte is an emulated UART write; on x86,
//     loglevel=5 after it still shows warnings (about 300 bytes in a boot),
//     among them the one by which a kernel says it lost its timer to a host
//     stall (jobvm boots such a VM again);
//   - cryptomgr.notests: the crypto self-tests cost ~170 ms under TCG;
//   - reboot=t, panic=-1 (with QEMU's -no-reboot): the guest ends the VM by
//     rebooting, and a panicking guest does the same at once instead of hanging.
func BaseCmdline(a arch.Arch) string {
	if a == arch.ARM64 {
		return "console=ttyAMA0 panic=-1 quiet cryptomgr.notests"
	}
	return "console=ttyS0 reboot=t panic=-1 quiet loglevel=5 cryptomgr.notests"
}

// Args builds the QEMU command line for a spec. The benchmark's bare-QEMU
// baseline uses the same function, so both sides boot with the same flags.
func Args(s vm.Spec, p Paths) []string {
	a := []string{
		"-name", "tandem-" + s.ID + ",debug-threads=off",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-m", strconv.Itoa(s.MemoryMiB) + "M",
		"-smp", strconv.Itoa(s.GuestCPUs()),
	}
	kvm := s.Accel == vm.AccelKVM
	switch s.Arch {
	case arch.ARM64:
		if kvm {
			a = append(a, "-M", "virt,gic-version=max", "-accel", "kvm", "-cpu", "host")
		} else {
			// cortex-a72 boots ~4x faster under TCG than "max", whose pointer
			// authentication is emulated expensively (measured).
			a = append(a, "-M", "virt", "-accel", "tcg", "-cpu", "cortex-a72")
		}
	default:
		// ACPI stays on: it is how the guest finds its virtio-mmio devices
		// (Debian's kernel lacks VIRTIO_MMIO_CMDLINE_DEVICES). The RTC stays
		// on too: without it the kernel spends 2 s timing out on the CMOS
		// clock, and the guest's wall clock reads 1970.
		a = append(a, "-M", "microvm,x-option-roms=off")
		if kvm {
			a = append(a, "-accel", "kvm", "-cpu", "host")
		} else {
			a = append(a, "-accel", "tcg", "-cpu", "max")
		}
	}
	cmdline := BaseCmdline(s.Arch)
	if s.Arch == arch.AMD64 && !kvm {
		if khz := hostTSCkHz(); khz > 0 {
			cmdline += " tsc_early_khz=" + strconv.FormatUint(khz, 10)
		}
	}
	cmdline = strings.TrimSpace(cmdline + " " + s.Cmdline)
	a = append(a,
		"-kernel", s.Kernel,
		"-initrd", s.Initrd,
		"-append", cmdline,
		"-chardev", "file,id=con0,path="+p.Console,
		"-serial", "chardev:con0",
	)
	if s.BaseDisk != "" {
		drive := "id=root,if=none,format=qcow2,discard=unmap,file=" + p.Disk
		if p.Disk == "" {
			drive = "id=root,if=none,format=raw,snapshot=on,file=" + s.BaseDisk
		}
		a = append(a, "-drive", drive, "-device", "virtio-blk-device,drive=root")
	}
	if s.NIC != nil {
		netdev := "tap,id=net0,ifname=" + s.NIC.TAP + ",script=no,downscript=no"
		if p.TAPFd != 0 {
			netdev = "tap,id=net0,fd=" + strconv.Itoa(p.TAPFd)
		}
		a = append(a,
			"-netdev", netdev,
			"-device", "virtio-net-device,netdev=net0,mac="+s.NIC.MAC.String(),
		)
	}
	a = append(a,
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=ch0,path="+p.Guest+",server=on,wait=off",
		"-device", fmt.Sprintf("virtserialport,chardev=ch0,name=%s", guest.PortName),
	)
	if p.QMP != "" {
		a = append(a, "-qmp", "unix:"+p.QMP+",server=on,wait=off")
	}
	if p.PIDFile != "" {
		a = append(a, "-pidfile", p.PIDFile)
	}
	return a
}

// RootDevice is the guest's name for the root disk Args attaches.
const RootDevice = "/dev/vda"
