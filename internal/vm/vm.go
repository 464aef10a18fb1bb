// Package vm defines how Tandem drives microVMs: one Driver interface with a
// back end per hypervisor (today QEMU, in vm/qemu), and the conformance suite
// every back end must pass (vm/vmtest).
//
// A VM's life: Create prepares everything it needs on the host (state
// directory, copy-on-write root disk, cgroup) without starting it; Start boots
// it; Wait returns when it has stopped; Stop asks it to stop and kills it after
// a grace period; Destroy kills it if needed and reclaims every host resource
// named after it. Destroy is idempotent and is the one exit path that every
// other path ends in. Recover finds the VMs a previous process left behind, so
// that they can be re-attached or destroyed.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

// Accel is the accelerator a VM runs under.
type Accel string

const (
	AccelAuto Accel = "auto" // KVM where a probe boot proves it works, else TCG
	AccelKVM  Accel = "kvm"  // hardware virtualisation
	AccelTCG  Accel = "tcg"  // QEMU's software emulation
)

// ParseAccel validates an accelerator name.
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(strings.ToLower(s)); a {
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	}
	return "", fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", s)
}

// ErrKVMUnusable is returned when KVM was asked for and cannot run a guest here.
var ErrKVMUnusable = errors.New("kvm cannot run a guest on this host")

// NIC attaches the VM to a host TAP device made for it.
type NIC struct {
	TAP string
	MAC net.HardwareAddr
}

// Spec is everything needed to create a VM.
type Spec struct {
	ID        string    // "vm-" + 10 hex digits; NewID makes one
	Arch      arch.Arch // guest architecture
	VCPUs     float64   // may be fractional: rounded up for the guest, capped by a CPU quota
	MemoryMiB int
	Kernel    string // path to an uncompressed kernel (ELF vmlinux for amd64, Image for arm64)
	Initrd    string // path to the initramfs
	Cmdline   string // kernel parameters added to the driver's own
	BaseDisk  string // read-only raw root filesystem; each VM writes to its own overlay
	NIC       *NIC   // optional
	Accel     Accel  // AccelKVM or AccelTCG; resolve AccelAuto before Create
	Owner     string // who owns the VM: "run:<pid>:<starttime>", "agent:<lease path>" or "agent"; see OwnerAlive
	// DieWithOwner kills the VM if the creating process dies (even by SIGKILL).
	// `tandem run` sets it; an agent, whose VMs must outlive its restarts, does not.
	DieWithOwner bool
	// IO caps the VM's disk I/O (zero: uncapped).
	IO IOLimits
	// DiskMiB caps what the VM may write to its root disk's overlay (0:
	// the disk's own size): past it, the VM is stopped (ExitDiskFull).
	DiskMiB int
	// CPUWeight is the VM's share of the host's CPUs against the driver's
	// other VMs when they want more than the host has (0: CPUWeightNormal).
	// Instance.SetCPUWeight changes it.
	CPUWeight int
}

// CPU weights order VMs that contend for the host's CPUs, on cgroup v2's
// scale (cpu.weight): a VM of weight 10 beside one of weight 100 gets a
// tenth of what that one gets while both are busy. A weight takes nothing
// from a VM while the CPUs have room, and never raises one past its vCPU
// cap.
const (
	CPUWeightMin    = 1
	CPUWeightMax    = 10000
	CPUWeightNormal = 100 // cgroup v2's default: a VM running a job
	// CPUWeightIdle is a warm pool's VM's until a job claims it: it boots
	// and waits on what the VMs running jobs leave. A tenth keeps it
	// moving (its boot and its guest's heartbeats need some CPU, or it
	// would fail its boot or heartbeat timeout behind a busy VM) while a
	// claimed VM's runner, starting beside a booting replacement, gets
	// ten elevenths of a contended CPU.
	CPUWeightIdle = 10
)

// CheckCPUWeight says whether w is a weight a VM may have.
func CheckCPUWeight(w int) error {
	if w < CPUWeightMin || w > CPUWeightMax {
		return fmt.Errorf("cpu weight must be from %d to %d, got %d", CPUWeightMin, CPUWeightMax, w)
	}
	return nil
}

// IOLimits caps a VM's disk I/O, in bytes and operations per second (0:
// no cap of that kind).
type IOLimits struct {
	ReadBPS   int64 `json:"read_bps,omitempty"`
	WriteBPS  int64 `json:"write_bps,omitempty"`
	ReadIOPS  int64 `json:"read_iops,omitempty"`
	WriteIOPS int64 `json:"write_iops,omitempty"`
}

// Scaled returns l for a VM of vcpus vCPUs: l is per vCPU, and a VM gets at
// least one vCPU's worth.
func (l IOLimits) Scaled(vcpus float64) IOLimits {
	f := math.Max(vcpus, 1)
	sc := func(v int64) int64 { return int64(float64(v) * f) }
	return IOLimits{ReadBPS: sc(l.ReadBPS), WriteBPS: sc(l.WriteBPS), ReadIOPS: sc(l.ReadIOPS), WriteIOPS: sc(l.WriteIOPS)}
}

var idRE = regexp.MustCompile(`^vm-[0-9a-f]{10}$`)

// NewID returns a fresh VM id.
func NewID() string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return "vm-" + hex.EncodeToString(b[:])
}

// ValidID reports whether id has the form NewID makes. Everything a VM leaves
// on the host is named after its id, so a bad id must never reach a path.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Limits bound what a Spec may ask of this host.
type Limits struct {
	VCPUs     int // host CPUs
	MemoryMiB int // host memory
}

// Check says whether a VM of vcpus and memoryMiB could run on this host.
func (l Limits) Check(vcpus float64, memoryMiB int) error {
	if math.IsNaN(vcpus) || vcpus <= 0 {
		return fmt.Errorf("vcpus must be more than 0, got %g", vcpus)
	}
	if l.VCPUs > 0 && vcpus > float64(l.VCPUs) {
		return fmt.Errorf("vcpus %g is more than this host has (%d)", vcpus, l.VCPUs)
	}
	if memoryMiB < 64 {
		return fmt.Errorf("memory must be at least 64 MiB, got %d MiB", memoryMiB)
	}
	if l.MemoryMiB > 0 && memoryMiB > l.MemoryMiB {
		return fmt.Errorf("memory %d MiB is more than this host has (%d MiB)", memoryMiB, l.MemoryMiB)
	}
	return nil
}

// Validate checks a spec against the host. Every error is one clear line.
func (s Spec) Validate(l Limits) error {
	if !ValidID(s.ID) {
		return fmt.Errorf("invalid vm id %q", s.ID)
	}
	if !s.Arch.IsMachine() {
		return fmt.Errorf("%w %q (want amd64 or arm64)", arch.ErrUnknown, s.Arch)
	}
	if err := l.Check(s.VCPUs, s.MemoryMiB); err != nil {
		return err
	}
	if s.Accel != AccelKVM && s.Accel != AccelTCG {
		return fmt.Errorf("accelerator must be resolved to kvm or tcg, got %q", s.Accel)
	}
	if s.Accel == AccelKVM && s.Arch != arch.Host() {
		return fmt.Errorf("%w: a %s guest cannot use kvm on a %s host", ErrKVMUnusable, s.Arch, arch.Host())
	}
	if s.Kernel == "" || s.Initrd == "" {
		return errors.New("kernel and initrd are required")
	}
	if s.CPUWeight != 0 {
		return CheckCPUWeight(s.CPUWeight)
	}
	return nil
}

// GuestCPUs is the vCPU count the guest sees: VCPUs rounded up.
func (s Spec) GuestCPUs() int { return int(math.Ceil(s.VCPUs)) }

// Emulated reports whether the guest's architecture differs from the host's.
func (s Spec) Emulated() bool { return s.Arch != arch.Host() }

// State is where a VM is in its life.
type State string

const (
	StateCreated State = "created" // prepared, not started
	StateRunning State = "running"
	StateStopped State = "stopped" // the hypervisor process has exited
)

// Info describes a VM.
type Info struct {
	ID       string    `json:"id"`
	Spec     Spec      `json:"spec"`
	State    State     `json:"state"`
	PID      int       `json:"pid,omitempty"`
	Created  time.Time `json:"created"`
	Emulated bool      `json:"emulated"`
}

// Usage is what a running VM has taken of its host so far. Counters
// (CPU time, bytes read and written) are cumulative since it started.
type Usage struct {
	CPUSeconds float64 // CPU time of every hypervisor thread (its cgroup's)
	RSS        int64   // the hypervisor's resident memory, bytes
	DiskAlloc  int64   // bytes its writable disk holds on the host
	DiskRead   int64   // bytes the hypervisor read from storage
	DiskWrite  int64   // bytes it wrote to storage
}

// UsageReader is implemented by the Instances that can say what they use
// (callers check for it; a VM that cannot is simply not profiled).
type UsageReader interface {
	Usage() (Usage, error)
}

// ExitStatus says why a VM stopped.
type ExitStatus struct {
	// Reason is the hypervisor's: "guest-reset" (the guest rebooted, which is
	// how tandem-guest ends a VM and also what a guest panic does),
	// "guest-shutdown", "host-quit", "killed", or "unknown".
	Reason   string `json:"reason"`
	ExitCode int    `json:"exit_code"` // of the hypervisor process, -1 if killed or unknown
}

// ErrNotFound is returned for a VM id the driver does not know.
var ErrNotFound = errors.New("vm not found")

// Driver creates and finds VMs of one hypervisor.
type Driver interface {
	// Name is the back end's name, e.g. "qemu".
	Name() string
	// Create prepares a VM without starting it. On error nothing is left behind.
	Create(ctx context.Context, s Spec) (Instance, error)
	// Get returns a handle on a VM this driver knows, running or not.
	Get(ctx context.Context, id string) (Instance, error)
	// List returns every VM this driver has state for, including leftovers of
	// a process that died.
	List(ctx context.Context) ([]Info, error)
	// Recover re-attaches to every VM a previous process left running and
	// returns handles on all VMs with state on this host; callers Destroy the
	// ones they no longer want.
	Recover(ctx context.Context) ([]Instance, error)
	// Close lets go of the VMs without stopping them, as a process does
	// when it exits: a later driver over the same state recovers them.
	Close() error

	// Capabilities says what VMs this driver can make on this host.
	Capabilities() Capabilities
	// ResolveAccel turns a requested accelerator into the one a VM of arch
	// gets on this host (AccelAuto: KVM where a probe boot of kernel and
	// initrd proves it works, else TCG, said loudly), and why.
	ResolveAccel(ctx context.Context, want Accel, a arch.Arch, kernel, initrd string) (AccelChoice, error)
}

// Capabilities is what a driver can do on this host.
type Capabilities struct {
	// Limits bound a VM's size.
	Limits Limits
	// RootDevice is the guest's name for the disk of Spec.BaseDisk, e.g.
	// /dev/vda.
	RootDevice string
}

// AccelChoice is the accelerator a VM gets and why.
type AccelChoice struct {
	Accel    Accel  `json:"accel"`
	Emulated bool   `json:"emulated"` // guest arch differs from the host's
	Reason   string `json:"reason"`
}

// Instance is a handle on one VM.
type Instance interface {
	ID() string
	Info() Info
	// Start boots the VM. It returns once the hypervisor runs the guest.
	Start(ctx context.Context) error
	// Wait blocks until the VM has stopped or ctx ends.
	Wait(ctx context.Context) (ExitStatus, error)
	// Stop asks the hypervisor to end the VM and kills it after grace.
	Stop(ctx context.Context, grace time.Duration) error
	// Pause and Resume freeze and thaw the guest's CPUs.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Destroy kills the VM if it runs and removes everything it had on the
	// host. It is idempotent.
	Destroy(ctx context.Context) error
	// GuestChannel connects to the host end of the host↔guest channel.
	GuestChannel(ctx context.Context) (io.ReadWriteCloser, error)
	// ConsoleLog is the path of the guest's console log.
	ConsoleLog() string
	// SetCPUWeight changes the VM's CPU weight (Spec.CPUWeight), before it
	// starts or while it runs. A VM the driver could not cap (no CPU
	// controller, run only when the operator allows uncapped VMs) has no
	// weight to change: that is no error.
	SetCPUWeight(weight int) error
}
