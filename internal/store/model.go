package store

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/lifecycle"

	"github.com/tandem-ci/tandem/internal/egress"
)

// JobState is where a GitHub job stands from Tandem's point of view. The
// state machine, with every event that moves a job and what follows, is
// internal/lifecycle's table; the store refuses a change the table does not
// allow.
type JobState = lifecycle.JobState

// Job states.
const (
	JobWaiting       = lifecycle.Waiting
	JobQueued        = lifecycle.Queued
	JobScheduled     = lifecycle.Scheduled
	JobLaunching     = lifecycle.Launching
	JobUnmatched     = lifecycle.Unmatched
	JobRunning       = lifecycle.Running
	JobCompleted     = lifecycle.Completed
	JobCancelled     = lifecycle.Cancelled
	JobFailed        = lifecycle.Failed
	JobUnschedulable = lifecycle.Unschedulable
	JobLost          = lifecycle.Lost
	JobRefused       = lifecycle.Refused
)

// JobStates lists every state, in lifecycle order.
var JobStates = lifecycle.JobStates

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to JobState) bool { return lifecycle.CanTransition(from, to) }

// Job is one GitHub Actions job that asked for Tandem.
type Job struct {
	ID           int64 // GitHub's workflow job id
	RunID        int64
	RunAttempt   int
	Installation int64
	Org          string // repository owner
	Repo         string // owner/name
	Name         string
	Workflow     string
	Labels       []string // runs-on labels as GitHub sent them
	LabelKey     string   // see LabelKey
	// The request parsed from Labels; zero when the labels are malformed
	// (the job is then unschedulable).
	Arch      arch.Arch
	VCPUs     float64
	MemoryMiB int

	State      JobState
	Reason     string // why it is in State, for humans
	RunnerName string // runner bound to it: ours while scheduled/launching, whoever took it once running
	HostID     string // host of RunnerName when the runner is ours
	Attempts   int    // launches tried
	Reopens    int    // times opened again after Tandem failed it (lifecycle.Reopen)
	AvoidHosts []string
	Conclusion string // GitHub's, once completed

	// Where it comes from, as GitHub says (bounded and checked: see
	// controlplane's identity).
	HeadBranch string
	HeadSHA    string
	HTMLURL    string // the job's page on GitHub (https only)
	Public     bool   // its repository is public (or GitHub did not say)
	Sender     string // who triggered the run
	// GitHub's own times beside Tandem's (CreatedAt is GitHub's too).
	GitHubStartedAt   time.Time
	GitHubCompletedAt time.Time

	CreatedAt   time.Time // when GitHub created it
	QueuedAt    time.Time // when Tandem first learnt of it
	UpdatedAt   time.Time // last transition
	StartedAt   time.Time // running
	CompletedAt time.Time // terminal
}

// LabelKey is the canonical key of a set of runs-on labels: lower-cased,
// de-duplicated, sorted, joined by ','. GitHub matches labels
// case-insensitively, and a runner registered with a job's labels can take
// any job whose labels are the same set: jobs with one key are one pool.
func LabelKey(ls []string) string {
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, strings.ToLower(strings.TrimSpace(l)))
	}
	sort.Strings(out)
	return strings.Join(slices.Compact(out), ",")
}

// RunnerState is where one of Tandem's runners (one VM) stands
// (internal/lifecycle's runner table).
type RunnerState = lifecycle.RunnerState

// Runner states.
const (
	RunnerAssigned = lifecycle.RunnerAssigned
	RunnerBooting  = lifecycle.RunnerBooting
	RunnerIdle     = lifecycle.RunnerIdle
	RunnerBusy     = lifecycle.RunnerBusy
	RunnerEnded    = lifecycle.RunnerEnded
)

// RunnerStates lists every runner state, in lifecycle order.
var RunnerStates = lifecycle.RunnerStates

// Runner is one ephemeral GitHub runner that Tandem made, and the VM it
// lives in: one VM per runner, one runner per VM.
type Runner struct {
	Name         string // GitHub runner name, unique: also names the VM's assignment
	HostID       string
	JobID        int64 // the job it is bound to (made for, swapped to, or running); 0: none
	Installation int64
	Org          string
	Repo         string // the repository it is registered to; "" for an organisation runner
	// Group is the runner group (by name) an organisation runner joins;
	// "": the configured group id (GitHub's Default group unless set).
	Group     string
	Labels    []string
	LabelKey  string
	Arch      arch.Arch // the concrete architecture of its VM
	Emulated  bool
	VCPUs     float64
	MemoryMiB int

	State    RunnerState
	Reason   string // why it ended, for humans ("" for a clean end)
	GitHubID int64  // runner id GitHub gave with the JIT config; 0 until then
	VMID     string
	ExitCode int

	// Egress is the policy its VM ran under (zero: open), EgressRecord
	// what the VM did under it, when the policy records (set at its end).
	Egress       egress.Policy
	EgressRecord *egress.Record

	// Pool is the warm pool (its label key) a pool runner was booted
	// for, ahead of any job; "" for a runner launched for a job. A pool
	// runner has no job, installation, org or repository until a
	// placement pass claims it (ClaimedAt), and then it is a job's runner
	// like any other: one job, then its VM is destroyed.
	Pool string
	// Image is the image id its VM booted from ("" before warm pools
	// recorded it).
	Image string

	CreatedAt time.Time
	UpdatedAt time.Time
	ReadyAt   time.Time // its guest said it was ready (pool runners)
	ClaimedAt time.Time // a job claimed it from its pool
	KeptUntil time.Time // its failed job's VM is kept for debugging until then
	StartedAt time.Time // runner process started in the VM
	BusyAt    time.Time
	EndedAt   time.Time
}

// Idle reports whether r is a pool runner no job has claimed.
func (r Runner) Idle() bool { return r.Pool != "" && r.ClaimedAt.IsZero() && r.State != RunnerEnded }

// HostState is a host's standing in the fleet.
type HostState string

const (
	HostOnline   HostState = "online"
	HostDraining HostState = "draining" // no new VMs; running ones finish
	HostCordoned HostState = "cordoned" // no new VMs, by an operator
	HostOffline  HostState = "offline"  // missed heartbeats
)

// ArchSupport is an architecture a host can run VMs of.
type ArchSupport struct {
	Arch     arch.Arch `json:"arch"`
	Emulated bool      `json:"emulated"`
}

// Host is one machine running an agent.
type Host struct {
	ID        string
	Arches    []ArchSupport
	VCPUs     float64 // allocatable to VMs
	MemoryMiB int
	DiskMiB   int // what its VMs' disks may hold in all; 0: not counted
	State     HostState
	Reason    string
	Version   string
	LastSeen  time.Time
	CreatedAt time.Time
	// Replica is the control-plane replica that holds the host's agent
	// ("" for none yet): it keeps LastSeen fresh and carries out the
	// host's runner commands.
	Replica string
}

// RunnerCommand is what the leading replica asks of a runner whose host's
// agent another replica holds: that replica takes the command and carries
// it out (a replica that holds the agent itself acts at once).
type RunnerCommand struct {
	Seq    int64 // assigned by the store, increasing
	HostID string
	Runner string
	Kind   CommandKind
	Reason string // why a stop was asked
	At     time.Time
}

// CommandKind is what a RunnerCommand asks.
type CommandKind string

const (
	CommandLaunch CommandKind = "launch" // boot the runner's VM and configure it
	CommandStop   CommandKind = "stop"   // stop the runner's VM
	// CommandClaim: a job claimed the runner, a warm pool's VM: fetch its
	// runner config and hand it to the VM.
	CommandClaim CommandKind = "claim"
)

// Validate checks a command before it is stored.
func (c RunnerCommand) Validate() error {
	if c.HostID == "" || c.Runner == "" {
		return fmt.Errorf("%w: runner command without a host or runner", ErrInvalid)
	}
	if c.Kind != CommandLaunch && c.Kind != CommandStop && c.Kind != CommandClaim {
		return fmt.Errorf("%w: runner command %q", ErrInvalid, c.Kind)
	}
	return nil
}

// Delivery is one received webhook, kept as received until processed and
// for a while after, so that a duplicate delivery is recognised.
type Delivery struct {
	Seq         int64  // assigned by the store, increasing
	GUID        string // X-GitHub-Delivery
	Event       string // X-GitHub-Event
	Payload     []byte
	ReceivedAt  time.Time
	ProcessedAt time.Time // zero until processed
	Error       string    // set when processing failed for good
}

// JobEvent records one transition of a job.
type JobEvent struct {
	Seq    int64
	JobID  int64
	At     time.Time
	From   JobState // "" for the event that created the job
	To     JobState
	Source string // who moved it: "webhook", "scheduler", "agent", "reconciler/missed-webhook", ...
	Reason string
	Runner string
	Host   string
}

// Repo is a repository Tandem has seen jobs from, for the reconciler that
// looks for jobs whose webhooks were lost.
type Repo struct {
	FullName     string
	Installation int64
	LastActive   time.Time
}

// InstallationState is whether the App may act for an installation.
type InstallationState string

// Installation states, as GitHub's installation webhooks set them.
const (
	InstallationActive    InstallationState = "active"
	InstallationSuspended InstallationState = "suspended" // until unsuspended
	InstallationRemoved   InstallationState = "removed"   // the App was uninstalled
)

// Installation is an installation of the App, as its webhooks told.
type Installation struct {
	ID        int64
	Account   string // the org or user it is installed on
	State     InstallationState
	Reason    string // e.g. "suspended by octocat"
	UpdatedAt time.Time
}

// Validate checks i before it is written.
func (i Installation) Validate() error {
	switch {
	case i.ID <= 0:
		return fmt.Errorf("%w: installation id %d", ErrInvalid, i.ID)
	case i.State != InstallationActive && i.State != InstallationSuspended && i.State != InstallationRemoved:
		return fmt.Errorf("%w: installation %d: state %q", ErrInvalid, i.ID, i.State)
	case i.UpdatedAt.IsZero():
		return fmt.Errorf("%w: installation %d: no time", ErrInvalid, i.ID)
	}
	return nil
}

// Event is what a caller says about one change of a job.
type Event struct {
	Source string
	Reason string
}

func (e Event) String() string { return fmt.Sprintf("%s: %s", e.Source, e.Reason) }

// Validate checks what every store requires of a job.
func (j Job) Validate() error {
	switch {
	case j.ID <= 0:
		return fmt.Errorf("%w: job id %d", ErrInvalid, j.ID)
	case !j.State.Valid():
		return fmt.Errorf("%w: job %d: state %q", ErrInvalid, j.ID, j.State)
	case j.Repo == "" || !strings.Contains(j.Repo, "/"):
		return fmt.Errorf("%w: job %d: repository %q", ErrInvalid, j.ID, j.Repo)
	case j.UpdatedAt.IsZero():
		return fmt.Errorf("%w: job %d: no update time", ErrInvalid, j.ID)
	}
	return nil
}

// Validate checks what every store requires of a runner.
func (r Runner) Validate() error {
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: runner without a name", ErrInvalid)
	case !r.State.Valid():
		return fmt.Errorf("%w: runner %s: state %q", ErrInvalid, r.Name, r.State)
	case r.HostID == "":
		return fmt.Errorf("%w: runner %s: no host", ErrInvalid, r.Name)
	}
	return nil
}

// Validate checks what every store requires of a host.
func (h Host) Validate() error {
	switch h.State {
	case HostOnline, HostDraining, HostCordoned, HostOffline:
	default:
		return fmt.Errorf("%w: host %s: state %q", ErrInvalid, h.ID, h.State)
	}
	if h.ID == "" {
		return fmt.Errorf("%w: host without an id", ErrInvalid)
	}
	return nil
}

// EnrollToken is a one-time token an operator hands a new host (`tandem
// enroll`): the agent exchanges it for its own credential. Only its hash is
// kept.
type EnrollToken struct {
	Hash      string // hex sha256 of the token's secret part
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // zero until used
	UsedBy    string    // host id that used it
	Comment   string
	// HostID, if set, is the only host the token may enrol (again); ""
	// enrols a new host. Readmit lets it enrol that host though it was
	// revoked, lifting the revocation.
	HostID  string
	Readmit bool
}

// AgentCredential is what a host's agent authenticates with: the hash of a
// secret given to it at enrolment. A revoked credential is refused at once.
type AgentCredential struct {
	HostID    string
	Hash      string // hex sha256 of the secret
	CreatedAt time.Time
	RevokedAt time.Time // zero unless revoked
}
