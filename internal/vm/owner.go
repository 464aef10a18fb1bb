package vm

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStartTime reads field 22 of /proc/PID/stat: the process's start time
// in clock ticks since boot, which together with the PID names a process
// uniquely (PIDs are reused; start times are not, within one boot).
func ProcStartTime(pid int) (uint64, error) {
	// The main thread's stat is the process's: its start time is the
	// process's. Reading it through task/ also gets the kernel's own figure
	// under qemu-user, which answers /proc/<own pid>/stat itself with each
	// thread's start time rather than the process's.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// ProcessOwner names the calling process as a VM owner: "run:<pid>:<start>".
// A VM owned this way belongs to a short-lived command (`tandem run`) and is
// a leftover to reclaim as soon as that process is gone.
func ProcessOwner() string {
	pid := os.Getpid()
	st, _ := ProcStartTime(pid)
	return fmt.Sprintf("run:%d:%d", pid, st)
}

// OwnerAlive reports whether the owner of a VM still exists:
//
//   - "run:<pid>:<start>" (ProcessOwner): while that process exists.
//   - "agent:<path>" (AgentOwner): while the process named in the lease file
//     at path exists, or until the lease's returns_by (the time a successor
//     has to re-attach). A lease file that is missing, unreadable or garbled,
//     or a path that is not absolute, is not alive.
//   - "agent" (legacy: an agent without a lease): always.
//
// An empty or malformed owner is not alive; an owner of any other kind is
// (it is not known to be gone).
func OwnerAlive(owner string) bool {
	kind, rest, ok := strings.Cut(owner, ":")
	if !ok {
		return owner == "agent"
	}
	switch kind {
	case "run":
	case "agent":
		return agentAlive(rest)
	default:
		return true
	}
	ps, ss, ok := strings.Cut(rest, ":")
	pid, err1 := strconv.Atoi(ps)
	st, err2 := strconv.ParseUint(ss, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return false
	}
	cur, err := ProcStartTime(pid)
	return err == nil && cur == st
}
