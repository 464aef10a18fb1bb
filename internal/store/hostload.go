package store

import "time"

// HostLoad is one host's load at one time: what it offers, what its VMs
// are allocated, what its agent says of the machine. The control plane
// records one per host a minute, for a day and a little more.
type HostLoad struct {
	Host           string    `json:"host"`
	At             time.Time `json:"at"`
	State          HostState `json:"state"`
	VCPUs          float64   `json:"vcpus"`
	AllocVCPUs     float64   `json:"alloc_vcpus"`
	MemoryMiB      int       `json:"memory_mib"`
	AllocMemoryMiB int       `json:"alloc_memory_mib"`
	DiskMiB        int64     `json:"disk_mib,omitempty"` // 0: disk is not counted
	AllocDiskMiB   int64     `json:"alloc_disk_mib,omitempty"`
	VMs            int       `json:"vms"`
	// Load1 and MemAvailableMiB are the machine's, from its agent's last
	// heartbeat (0: not known).
	Load1           float64 `json:"load1"`
	MemAvailableMiB int     `json:"mem_available_mib,omitempty"`
	// HeartbeatAge is how long ago the agent was last heard, in seconds
	// (0 for an in-process agent, which is always there).
	HeartbeatAge float64 `json:"heartbeat_age_s"`
}
