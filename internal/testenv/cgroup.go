package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// VMCPUCgroup reads a file of the cpu cgroup the QEMU driver made for VM
// id: v1, named under cgroup v1's cpu hierarchy, or v2, under the unified
// one (internal/vm/qemu's tandem/<scope>/<id>). It fails the test when the
// VM has no such cgroup.
func VMCPUCgroup(t testing.TB, id, v1, v2 string) string {
	t.Helper()
	for _, pat := range []string{"/sys/fs/cgroup/cpu/tandem/*/" + id + "/" + v1, "/sys/fs/cgroup/tandem/*/" + id + "/" + v2} {
		if m, _ := filepath.Glob(pat); len(m) == 1 {
			b, err := os.ReadFile(m[0])
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
	}
	t.Errorf("no cpu cgroup for VM %s", id)
	return ""
}
