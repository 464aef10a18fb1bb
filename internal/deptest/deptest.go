// Package deptest fails a test when a package starts depending on one it
// must not (after tailscale's tstest/deptest): the control plane must stay
// free of the VM runtime, the lifecycle and scheduler of everything.
package deptest

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Check fails t if pkg (an import path) depends, directly or not, on any
// package of bad (import path → why it must not). A key ending in "/..."
// forbids the package and everything under it.
func Check(t testing.TB, pkg string, bad map[string]string) {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goBin = p
	}
	out, err := exec.Command(goBin, "list", "-deps", pkg).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %s", pkg, msg)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s listed nothing", pkg)
	}
	for _, d := range deps {
		for b, why := range bad {
			if d == b || (strings.HasSuffix(b, "/...") && strings.HasPrefix(d+"/", strings.TrimSuffix(b, "..."))) {
				t.Errorf("%s depends on %s: %s", pkg, d, why)
			}
		}
	}
}
