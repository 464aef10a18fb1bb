// Package testenv holds what Tandem's tests share about their environment:
// whether they may use root, and a private network namespace to run in.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI, where nothing may be skipped
// for want of root.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireRoot skips a test that needs root when not root — loudly — and fails
// it under CI, where every root test must run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root, and CI runs as root: refusing to skip")
	}
	t.Skip("SKIPPED: needs root (CI runs it as root)")
}

// RequireVM is RequireRoot plus -short: tests that boot VMs do not run with -short.
func RequireVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM: not run with -short")
	}
	RequireRoot(t)
}

const netnsEnv = "TANDEM_TEST_NETNS"

// NetnsName returns the network namespace the test process runs in, or "".
func NetnsName() string { return os.Getenv(netnsEnv) }

// RunInNetns is for TestMain of packages whose tests touch the network: as
// root, it creates a fresh network namespace, runs the same test binary inside
// it (with loopback up) and deletes the namespace afterwards, so that no
// bridge, TAP or nftables rule a test makes can reach the host's own network.
// Not as root, or with -short, the tests run here as they are (and those that
// need root skip).
func RunInNetns(m *testing.M) int {
	if os.Geteuid() != 0 || NetnsName() != "" || isShort() {
		return m.Run()
	}
	name := fmt.Sprintf("tdmtest-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: ip netns add %s: %v: %s\n", name, err, out)
		return 1
	}
	defer exec.Command("ip", "netns", "delete", name).Run()
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: lo up in %s: %v: %s\n", name, err, out)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		return 1
	}
	// `ip netns exec` gives the child a fresh /sys, without the cgroup
	// mounts; mount the host's cgroup hierarchies again so that VM CPU
	// quotas work in tests as they do outside.
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, "sh", "-c", remountCgroups, self}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"="+name)
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "testenv: run in %s: %v\n", name, err)
		return 1
	}
	return 0
}

func isShort() bool {
	for _, a := range os.Args[1:] {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

// ShortTempDir is t.TempDir with a short path: Unix socket paths (QMP, the
// guest channel) must fit in 108 bytes, and test names make t.TempDir long.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "td")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// remountCgroups runs in the test's namespace before the test binary: it
// mounts cgroup2, or else each cgroup v1 hierarchy, as the host has them
// (VMs are capped in tests as they are outside), and then execs the test
// binary ($0 with its arguments).
const remountCgroups = `
if ! [ -e /sys/fs/cgroup/cgroup.controllers ] && ! [ -e /sys/fs/cgroup/memory/cgroup.procs ]; then
  if awk '$5 == "/sys/fs/cgroup" && / - cgroup2 /' /proc/1/mountinfo | grep -q .; then
    mount -t cgroup2 none /sys/fs/cgroup
  else
    mount -t tmpfs cgroup_root /sys/fs/cgroup
    # Each v1 hierarchy: its mount point and its controllers.
    awk '/ - cgroup / && $5 ~ "^/sys/fs/cgroup/" { for (i = 7; i <= NF; i++) if ($i == "-") { print $5, $(i+3) } }' /proc/1/mountinfo |
    while read -r dir opts; do
      ctl=$(echo "$opts" | tr ',' '\n' | grep -Ev '^(rw|ro|relatime|noatime|nosuid|nodev|noexec)$' | paste -sd, -)
      [ -n "$ctl" ] && mkdir -p "$dir" && mount -t cgroup -o "$ctl" none "$dir"
    done
  fi
fi 2>/dev/null
exec "$0" "$@"`
