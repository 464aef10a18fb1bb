// Package failure names why a job's VM did not run to its own end: one
// enumeration for the VM driver, the job runner, the agent protocol and the
// control plane, which decides from it whether a launch is retried and
// where (internal/lifecycle's RunnerExited rules).
package failure

// Kind is why a runner's VM ended other than by the job's own exit. The
// zero Kind is no failure. Kinds travel on the agent protocol and are
// stored with runners as their string.
type Kind string

const (
	None Kind = ""

	// Reported by the VM and the job runner on the host.
	Timeout      Kind = "timeout"       // the job outlived its time limit
	GuestPanic   Kind = "guest-panic"   // the guest kernel panicked
	GuestCrash   Kind = "guest-crash"   // the VM ended without reporting the job's exit
	GuestHang    Kind = "guest-hang"    // the guest stopped sending heartbeats
	BootTimeout  Kind = "boot-timeout"  // the guest agent never became ready
	GuestClock   Kind = "guest-clock"   // the guest kernel lost its timer while booting (a host stall)
	Cancelled    Kind = "cancelled"     // the caller gave up (Ctrl-C, a stop from the control plane)
	ConsoleLimit Kind = "console-limit" // the guest wrote more to its console than the host keeps
	DiskFull     Kind = "disk-full"     // the guest wrote more to its disk than it may

	// Reported by the agent.
	Launch Kind = "launch-failed" // no VM could be made at all

	// Decided by the control plane.
	VMGone      Kind = "vm-gone"      // the host's agent no longer runs the VM (a restart)
	HostOffline Kind = "host-offline" // the host missed its heartbeats
	HostRevoked Kind = "host-revoked" // an operator revoked the host
)

// Kinds lists every failure kind.
var Kinds = []Kind{Timeout, GuestPanic, GuestCrash, GuestHang, BootTimeout, GuestClock, Cancelled,
	ConsoleLimit, DiskFull, Launch, VMGone, HostOffline, HostRevoked}

// HostLeft reports whether k means the runner's host left the fleet.
func (k Kind) HostLeft() bool { return k == HostOffline || k == HostRevoked }

// HostAtFault reports whether a launch that ended with k should be tried on
// another host: any failure but a VM that was merely gone after a restart.
func (k Kind) HostAtFault() bool { return k != None && k != VMGone }

// Infrastructure reports whether a job that was running when its VM ended
// with k was lost to Tandem or its host rather than to anything the job
// did: its host left (offline, revoked), its agent lost the VM, the guest
// crashed, panicked, hung or lost its clock. A job that overran its time,
// filled its disk or console, or was cancelled ended by its own doing.
// A job can bring a few of these on itself (a job that panics its VM's
// kernel on purpose); that is why a retry on such a loss is opt-in and
// made once per cause.
func (k Kind) Infrastructure() bool {
	switch k {
	case GuestPanic, GuestCrash, GuestHang, GuestClock, BootTimeout, Launch, VMGone, HostOffline, HostRevoked:
		return true
	}
	return false
}
