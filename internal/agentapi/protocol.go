// Package agentapi is the protocol between the control plane and the agent
// on each host, and the agent's side of it.
//
// The agent dials out over TLS (hosts need no inbound port) and pins the
// control plane's certificate by the fingerprint its enrolment token
// carried. Endpoints, all under the control plane's agent listener:
//
//	POST /agent/v1/enroll   EnrollRequest → EnrollResponse (one-time token → credential)
//	POST /agent/v1/stream   Hello → a stream of Commands, one JSON object per line,
//	                        held open; a ping line every PingInterval
//	POST /agent/v1/report   Report (heartbeat and VM events) → 204
//	POST /agent/v1/logs     ?runner=NAME, body: the next chunk of its console/runner log
//	GET  /agent/v1/images/ID/manifest       an image the control plane names: its manifest.json
//	GET  /agent/v1/exec/SESSION             a WebSocket: the agent's end of an exec session
//	                        it was asked for (CmdExec; exec.go)
//	GET  /agent/v1/images/ID/files/NAME     ?offset=N, one of its files as a sparse stream
//	                        (image.WriteSparse) from offset N on; 404 for an
//	                        image it does not name, 503 when too many are being sent
//
// Every request carries HeaderVersion; a control plane refuses a version it
// does not speak with 426 and a message saying which it does. Requests after
// enrolment carry HeaderHost and "Authorization: Bearer <credential>"; a
// revoked or unknown credential gets 401, and a revoked host's open stream
// is closed at once. Commands reach the agent as soon as they are made
// (the stream), and events reach the control plane as soon as they happen
// (a report per event batch); heartbeats go every HeartbeatInterval.
//
// Versioning: within a Version, a control plane may add command types and
// fields, and endpoints an agent may use when it finds them; an agent
// ignores a command type it does not know, and an agent that meets a 404
// on a newer endpoint reports the failure as any other. A change an older
// peer would misread takes a new Version. (CmdImages and the images
// endpoints came this way within version 1.)
package agentapi

import (
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
)

// Version is the protocol version this build speaks.
const Version = 1

// Headers and paths.
const (
	HeaderVersion = "Tandem-Agent-Protocol"
	HeaderHost    = "Tandem-Host"

	PathEnroll = "/agent/v1/enroll"
	PathStream = "/agent/v1/stream"
	PathReport = "/agent/v1/report"
	PathLogs   = "/agent/v1/logs"
	PathImages = "/agent/v1/images/" // + ID/manifest, ID/files/NAME
)

// Timing of the protocol.
const (
	HeartbeatInterval = 5 * time.Second
	PingInterval      = 15 * time.Second
	// StreamIdle is how long an agent waits for any line (a ping at
	// least) before it reconnects.
	StreamIdle = 3 * PingInterval
	// MaxReconnectBackoff bounds an agent's wait between rounds of
	// attempts to reach its control plane: one that comes back is
	// reached within this, and gives its hosts that long beyond the
	// heartbeat timeout before it takes any for gone.
	MaxReconnectBackoff = 10 * time.Second
)

// EnrollRequest exchanges a one-time token for a credential.
type EnrollRequest struct {
	Token  string `json:"token"` // the secret part only
	HostID string `json:"host_id"`
}

// EnrollResponse carries the agent's credential; the agent keeps it in its
// data directory (0600).
type EnrollResponse struct {
	HostID     string `json:"host_id"`
	Credential string `json:"credential"`
}

// Capacity is what a host offers.
type Capacity struct {
	Arches      []ArchSupport `json:"arches"`
	VCPUs       float64       `json:"vcpus"`
	MemoryMiB   int           `json:"memory_mib"`
	DiskFreeMiB int64         `json:"disk_free_mib"`
	// DiskMiB is what VMs' disks may hold in all: the data dir's free
	// space and what its VMs' disks hold now.
	DiskMiB int64    `json:"disk_mib"`
	Labels  []string `json:"labels,omitempty"`
}

// Hello opens a stream: who the agent is, what it offers, and which runner
// VMs it still runs (after a restart or a lost connection).
type Hello struct {
	AgentVersion string   `json:"agent_version"`
	Capacity     Capacity `json:"capacity"`
	Inventory
}

// Inventory is what an agent runs when it connects.
type Inventory struct {
	Running []string `json:"running"`
	// AwaitingConfig are the runners of Running whose VMs still wait for
	// their runner config (CmdConfigure): the replica that was to send it
	// may have died first, or the command was lost with the stream. The
	// control plane the agent connects to sends it. An agent that predates
	// it leaves it out, and a control plane that predates it ignores it.
	AwaitingConfig []string `json:"awaiting_config,omitempty"`
}

// Heartbeat reports a host's state every HeartbeatInterval.
type Heartbeat struct {
	Capacity Capacity `json:"capacity"`
	Running  []string `json:"running"`
	Load1    float64  `json:"load1"`
	// MemAvailableMiB is the machine's available memory (0: not known).
	MemAvailableMiB int `json:"mem_available_mib,omitempty"`
}

// Report carries a heartbeat, events, profile samples, or any of them.
type Report struct {
	Heartbeat *Heartbeat `json:"heartbeat,omitempty"`
	Events    []Event    `json:"events,omitempty"`
	// Samples are running VMs' resource samples (internal/profile), sent
	// with the heartbeats; a control plane that predates them ignores
	// them.
	Samples []RunnerSamples `json:"samples,omitempty"`
}

// RunnerSamples are one runner's VM samples, oldest first.
type RunnerSamples struct {
	Runner  string           `json:"runner"`
	Samples []profile.Sample `json:"samples"`
}

// Command types.
const (
	CmdLaunch    = "launch"
	CmdConfigure = "configure"
	CmdStop      = "stop"
	CmdPing      = "ping"
	// CmdImages names the image ids the control plane launches VMs from
	// (Command.Images), on every stream connect and whenever they change:
	// the agent fetches the ones it lacks in the background and removes
	// fetched images no longer named once no VM uses them.
	CmdImages = "images"
	// CmdExec asks the agent to dial back for an exec session
	// (Command.Exec; exec.go). An agent that predates it ignores it, and
	// the session fails when nothing dials back.
	CmdExec = "exec"
	// CmdHold says until when to keep a runner's VM after its job
	// (Command.Until; zero: not at all) once the runner has exited:
	// Assignment.MayKeep. An agent that predates it ignores it.
	CmdHold = "hold"
)

// Command is one line of the stream.
type Command struct {
	Type       string            `json:"type"`
	Assignment *Assignment       `json:"assignment,omitempty"`
	Runner     string            `json:"runner,omitempty"`
	Env        map[string]string `json:"env,omitempty"` // secret (the JIT config): never logged
	Reason     string            `json:"reason,omitempty"`
	Images     []string          `json:"images,omitempty"` // CmdImages: the named image ids
	Exec       *ExecCommand      `json:"exec,omitempty"`   // CmdExec
	Until      time.Time         `json:"until,omitzero"`   // CmdHold
	// SentAt is when the control plane queued the command (assignment
	// latency is measured against it).
	SentAt time.Time `json:"sent_at"`
}

// ErrorBody is the JSON of every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}
