package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// AssertNoLeaks fails t for anything of a VM that remains under a Tandem
// data directory: a QEMU process, VM state, a TAP device, an address lease,
// and for the VMs named in ids, a cgroup.
func AssertNoLeaks(t testing.TB, dataDir string, ids []string) {
	t.Helper()
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
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		argv0, _, _ := bytes.Cut(b, []byte{0})
		// QEMU is started by its path (/usr/bin/qemu-system-x86_64).
		if err == nil && bytes.HasPrefix([]byte(filepath.Base(string(argv0))), []byte("qemu-system")) && bytes.Contains(b, []byte(dir)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
