package qemu

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/procs"
	"github.com/tandem-ci/tandem/internal/vm"
)

// sameProcess reports whether pid still runs and is the process that had
// startTime when it was recorded.
func sameProcess(pid int, startTime uint64) bool {
	st, err := vm.ProcStartTime(pid)
	if err != nil {
		return false
	}
	return startTime == 0 || st == startTime
}

// scanQEMU finds QEMU processes of VMs under stateDir by their command
// line: `-name tandem-<id>,…` plus a socket path inside stateDir. It returns
// id → pid.
func scanQEMU(stateDir string) map[string]int {
	out := map[string]int{}
	vmsDir := filepath.Join(stateDir, "vms") + "/"
	procs.Each(func(pid int, args []string) {
		// QEMU, or its jail before it becomes QEMU (jail.go).
		if !strings.HasPrefix(filepath.Base(args[0]), "qemu-system-") && !isJail(args[0]) ||
			!slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, vmsDir) }) {
			return
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] != "-name" {
				continue
			}
			name, _, _ := strings.Cut(args[i+1], ",")
			if id, ok := strings.CutPrefix(name, "tandem-"); ok && vm.ValidID(id) {
				out[id] = pid
			}
		}
	})
	return out
}

// findQEMU returns the pid of the QEMU of VM id under stateDir, or 0.
func findQEMU(stateDir, id string) int { return scanQEMU(stateDir)[id] }

// killAndWait SIGKILLs pid and waits until it is gone.
func killAndWait(pid int, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // already gone
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n, err := unix.Poll(fds, int(time.Until(deadline)/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			return nil
		}
	}
	return fmt.Errorf("process %d did not die after SIGKILL", pid)
}
