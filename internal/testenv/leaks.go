package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/procs"
)

// AssertNoLeaks fails t for anything of a VM that remains under a Tandem
// data directory: a QEMU process, VM state, a TAP device, an address lease,
// and for the VMs named in ids, a cgroup. An agent's watchdog gets a few
// seconds to see that its agent left for good; one still there is killed,
// and fails t too.
func AssertNoLeaks(t testing.TB, dataDir string, ids []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for pids := WatchdogPIDs(dataDir); len(pids) > 0; pids = WatchdogPIDs(dataDir) {
		if time.Now().After(deadline) {
			t.Errorf("agent watchdogs left: %v", pids)
			for _, p := range pids {
				if pid, err := strconv.Atoi(p); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if pids := QEMUPIDs(dataDir); len(pids) > 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
	vms, _ := os.ReadDir(filepath.Join(dataDir, "state", "vms"))
	for _, v := range vms {
		t.Errorf("vm state left: %s", v.Name())
		ids = append(ids, v.Name())
	}
	out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, ": tdm-") {
			t.Errorf("TAP device left: %s", l)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dataDir, "state", "net", "leases.json")); err == nil && strings.Contains(string(b), "vm-") {
		t.Errorf("address leases left: %s", b)
	}
	for _, id := range ids {
		for _, root := range []string{"/sys/fs/cgroup/tandem", "/sys/fs/cgroup/cpu/tandem"} {
			if m, _ := filepath.Glob(filepath.Join(root, "*", id)); len(m) > 0 {
				t.Errorf("cgroup left: %v", m)
			}
		}
	}
}

// QEMUPIDs lists QEMU processes whose command line mentions dir.
func QEMUPIDs(dir string) []string {
	// QEMU is started by its path (/usr/bin/qemu-system-x86_64).
	return processesOf("qemu-system", "", dir)
}

// WatchdogPIDs lists the agent watchdogs (tandem agent-watchdog) whose
// command line mentions dir.
func WatchdogPIDs(dir string) []string { return processesOf("tandem", "agent-watchdog", dir) }

// processesOf lists the processes whose program's name begins with prog
// and whose command line holds the arguments arg (if not "") and dir.
func processesOf(prog, arg, dir string) []string {
	var pids []string
	for _, pid := range procs.Matching(func(args []string) bool {
		return strings.HasPrefix(filepath.Base(args[0]), prog) && slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, dir) }) &&
			(arg == "" || slices.Contains(args, arg))
	}) {
		pids = append(pids, strconv.Itoa(pid))
	}
	return pids
}
