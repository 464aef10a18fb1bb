package agentapi

import (
	"errors"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/vm"
)

// The agent protocol's payloads: what the control plane asks of a host
// (Assignment) and what the host reports back (Event). Both travel as JSON
// on the agent stream, and in process for `tandem up`; they are neither
// stored nor shown by the API as they are.

// ErrDuplicate is a host's answer to an assignment of a runner it already
// runs.
var ErrDuplicate = errors.New("runner already assigned to this host")

// Assignment is one runner VM the control plane wants on this host.
type Assignment struct {
	Runner    string    `json:"runner"` // runner name; names the assignment
	Arch      arch.Arch `json:"arch"`
	VCPUs     float64   `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	Image     string    `json:"image,omitempty"` // image id (or ref); "" for the default of the arch
	// Command is the runner program in the guest, run as User; none: the
	// image's own runner (its manifest's).
	Command []string          `json:"command,omitempty"`
	User    string            `json:"user,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	// Timeout bounds the runner's whole life in the VM (0: none).
	Timeout time.Duration `json:"timeout"`
	// ConfigTimeout bounds how long a booted VM waits for Configure.
	ConfigTimeout time.Duration `json:"config_timeout"`
	// Egress is the job's egress policy (zero: open).
	Egress egress.Policy `json:"egress"`
	// DiskMiB caps what the job may write to its disk (0: the disk's size).
	DiskMiB int `json:"disk_mib,omitempty"`
	// Pool, for a warm pool's VM, is its pool: no job has claimed it yet,
	// and it waits up to ConfigTimeout (the pool's max_age) for the runner
	// config of the job that will. The host reports EventReady once its
	// guest is ready. A host that predates pools ignores it and reports
	// no EventReady; the VM still waits for its config.
	Pool string `json:"pool,omitempty"`
	// MayKeep: the VM may be kept after its job, for debugging. The guest
	// waits after the runner's exit for the control plane's word (CmdHold)
	// up to KeepVerdictWait, then powers off unless told to stay.
	MayKeep bool `json:"may_keep,omitempty"`
}

// KeepVerdictWait is how long a VM that MayKeep waits after its runner's
// exit for CmdHold before it powers off.
const KeepVerdictWait = 15 * time.Second

// EventKind says what happened to a runner's VM.
type EventKind string

const (
	EventBooting EventKind = "booting" // the VM exists and is booting
	// EventReady: the guest is ready for its runner (a warm pool's VM
	// only: Assignment.Pool).
	EventReady   EventKind = "ready"
	EventStarted EventKind = "started" // the runner process was started in the guest
	EventEnded   EventKind = "ended"   // the VM is gone; nothing of it remains
)

// Event reports a change of one runner's VM.
type Event struct {
	Host     string    `json:"host"`
	Runner   string    `json:"runner"`
	Kind     EventKind `json:"kind"`
	At       time.Time `json:"at"`
	VMID     string    `json:"vm_id,omitempty"`
	Accel    vm.Accel  `json:"accel,omitempty"`
	Emulated bool      `json:"emulated,omitempty"`
	// For EventEnded: the runner's exit code, and Failure/Detail when the
	// VM did not end by the runner's own exit (jobvm failure kinds, or
	// "launch-failed" when no VM could be made).
	ExitCode int          `json:"exit_code"`
	Failure  failure.Kind `json:"failure,omitempty"`
	Detail   string       `json:"detail,omitempty"`
	// Egress, for EventEnded, is what the VM did under an auditing or
	// allowlist policy.
	Egress *egress.Record `json:"egress,omitempty"`
}

// ArchSupport is an architecture a host can run VMs of.
type ArchSupport struct {
	Arch     arch.Arch `json:"arch"`
	Emulated bool      `json:"emulated"`
}
