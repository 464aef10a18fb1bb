package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/syncbuf"
	"github.com/tandem-ci/tandem/internal/vm"
)

// probeTimeout bounds the KVM probe boot. A working KVM boots the probe in
// well under a second; a broken one fails at once or hangs.
const probeTimeout = 20 * time.Second

// ResolveAccel turns the requested accelerator into the one a VM of arch
// will use. KVM is used only where a probe boot of this kernel proves that it
// works (the device opening is not enough: nested virtualisation can accept
// KVM_CREATE_VM and still fail every real guest). "auto" falls back to TCG
// with a loud warning; "kvm" fails with ErrKVMUnusable.
//
// The probe's verdict is cached in the state dir for this boot of the host,
// this QEMU binary and this kernel.
func (d *Driver) ResolveAccel(ctx context.Context, want vm.Accel, a arch.Arch, kernel, initrd string) (vm.AccelChoice, error) {
	if a != arch.Host() {
		if want == vm.AccelKVM {
			return vm.AccelChoice{}, fmt.Errorf("%w: a %s guest on a %s host can only be emulated (use --accel tcg or auto)", vm.ErrKVMUnusable, a, arch.Host())
		}
		return vm.AccelChoice{Accel: vm.AccelTCG, Emulated: true, Reason: fmt.Sprintf("%s guest emulated on this %s host", a, arch.Host())}, nil
	}
	if want == vm.AccelTCG {
		return vm.AccelChoice{Accel: vm.AccelTCG, Reason: "tcg requested"}, nil
	}
	ok, why := d.probeKVM(ctx, a, kernel, initrd)
	if ok {
		return vm.AccelChoice{Accel: vm.AccelKVM, Reason: why}, nil
	}
	if want == vm.AccelKVM {
		return vm.AccelChoice{}, fmt.Errorf("%w: %s", vm.ErrKVMUnusable, why)
	}
	d.log.Warn("KVM CANNOT RUN GUESTS ON THIS HOST: FALLING BACK TO TCG SOFTWARE EMULATION (10-50x slower)", "reason", why)
	return vm.AccelChoice{Accel: vm.AccelTCG, Reason: "kvm unusable: " + why}, nil
}

type probeVerdict struct {
	Key    string    `json:"key"`
	OK     bool      `json:"ok"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

func (d *Driver) probeKVM(ctx context.Context, a arch.Arch, kernel, initrd string) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm: %v", err)
	}
	f.Close()
	key, err := probeKey(a, kernel)
	if err != nil {
		return false, err.Error()
	}
	cache := filepath.Join(d.stateDir, "accel-probe-"+string(a)+".json")
	if b, err := os.ReadFile(cache); err == nil {
		var v probeVerdict
		if json.Unmarshal(b, &v) == nil && v.Key == key {
			return v.OK, v.Reason + " (cached probe of " + v.At.Format(time.RFC3339) + ")"
		}
	}
	ok, why := d.probeBoot(ctx, a, kernel, initrd)
	if ctx.Err() == nil { // an interrupted probe proves nothing
		b, _ := json.Marshal(probeVerdict{Key: key, OK: ok, Reason: why, At: time.Now().UTC()})
		if err := fsutil.WriteFileAtomic(cache, b, 0o600); err != nil {
			d.log.Warn("cannot cache the kvm probe", "err", err)
		}
	}
	return ok, why
}

// probeKey names what the verdict depends on: this boot of the host, the
// QEMU binary and the kernel.
func probeKey(a arch.Arch, kernel string) (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	bin, err := exec.LookPath(Binary(a))
	if err != nil {
		return "", err
	}
	bi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	ki, err := os.Stat(kernel)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s|%s|%d|%s|%d|%d", strings.TrimSpace(string(boot)), bin, bi.ModTime().UnixNano(),
		kernel, ki.Size(), ki.ModTime().UnixNano()), nil
}

// probeBoot boots the kernel under KVM with tandem.probe=1: tandem-guest
// prints guest.ProbeMarker and ends the VM at once.
func (d *Driver) probeBoot(ctx context.Context, a arch.Arch, kernel, initrd string) (bool, string) {
	dir, err := os.MkdirTemp(d.stateDir, "kvm-probe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(dir)
	spec := vm.Spec{ID: "vm-00000000ff", Arch: a, VCPUs: 1, MemoryMiB: 128, Kernel: kernel, Initrd: initrd,
		Cmdline: guest.BootParams{Probe: true}.Cmdline(), Accel: vm.AccelKVM}
	p := Paths{Console: filepath.Join(dir, "console"), Guest: filepath.Join(dir, "guest.sock")}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var stderr syncbuf.Buffer // written by exec's copier, read while it runs
	cmd := exec.CommandContext(ctx, Binary(a), Args(spec, p)...)
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	// The probe's QEMU dies with this process: a guest KVM cannot run
	// leaves it waiting forever, and a `tandem up` killed mid-probe would
	// leave it running. Pdeathsig fires when the forking thread ends, so
	// the thread is kept until the probe has been reaped.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return false, err.Error()
	}
	// A guest KVM cannot run stops with "KVM internal error" and QEMU keeps
	// waiting; end it as soon as that is printed.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			console, _ := os.ReadFile(p.Console)
			if bytes.Contains(console, []byte(guest.ProbeMarker)) {
				return true, fmt.Sprintf("probe boot under kvm reached userspace in %s", time.Since(start).Round(time.Millisecond))
			}
			return false, probeFailure(ctx, err, stderr.String(), console)
		case <-tick.C:
			if strings.Contains(stderr.String(), "KVM internal error") {
				cmd.Process.Kill()
				<-done
				return false, "probe boot under kvm failed: " + firstLine(stderr.String(), "KVM internal error")
			}
		}
	}
}

func probeFailure(ctx context.Context, err error, stderr string, console []byte) string {
	msg := strings.TrimSpace(stderr)
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		// QEMU's last words come last: "failed to set MSR…", then an assertion.
		msg = strings.TrimSpace(msg[:i]) + "; " + strings.TrimSpace(msg[i+1:])
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Sprintf("probe boot under kvm did not reach userspace within %s", probeTimeout)
	case msg != "":
		return fmt.Sprintf("probe boot under kvm failed (%v): %s", err, msg)
	}
	return fmt.Sprintf("probe boot under kvm ended without the probe marker (%v; console: %.200q)", err, console)
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(s)
}
