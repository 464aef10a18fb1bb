package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/vm"
)

// A cgroup layout as the kernel mounts it, laid out in a temporary
// directory: v2's one hierarchy, or v1's one per controller (the cpu one
// alone or joined with cpuacct).
type layout struct {
	name   string
	v2     bool
	cpuDir string // v1: the cpu hierarchy's directory; "" for none
}

var layouts = []layout{
	{name: "v2", v2: true},
	{name: "v1", cpuDir: "cpu"},
	{name: "v1-cpu,cpuacct", cpuDir: "cpu,cpuacct"},
}

// files are the control files the kernel gives a new cgroup, by hierarchy
// ("" under v2), as far as the driver uses them.
var files = map[string][]string{
	"":       {"cgroup.procs", "cgroup.subtree_control", "cpu.max", "cpu.weight", "memory.max", "memory.swap.max", "pids.max", "io.max"},
	"cpu":    {"cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"},
	"memory": {"cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"},
	"pids":   {"cgroup.procs", "pids.max"},
	"blkio":  {"cgroup.procs"},
}

// fakeRoot points cgroupRoot at a fresh directory mounted as l says, for
// the test's length.
func fakeRoot(t *testing.T, l layout) string {
	t.Helper()
	root := t.TempDir()
	old := cgroupRoot
	cgroupRoot = root
	t.Cleanup(func() { cgroupRoot = old })
	if l.v2 {
		mkFiles(t, root, files[""])
		write(t, filepath.Join(root, "cgroup.controllers"), "cpuset cpu io memory pids")
		return root
	}
	for _, h := range []string{l.cpuDir, "memory", "pids", "blkio"} {
		if h != "" {
			mkFiles(t, filepath.Join(root, h), []string{"cgroup.procs"})
		}
	}
	return root
}

// mkcgroup makes the VM's cgroups under c's scopes as the kernel would on
// mkdir: with their control files (and v2's parents'), so that what the
// driver writes lands in files that exist.
func mkcgroup(t *testing.T, c *cgroups, id string) {
	t.Helper()
	for ctl, scope := range c.scopes {
		if c.v2 {
			mkFiles(t, filepath.Dir(scope), files[""])
			mkFiles(t, scope, files[""])
			mkFiles(t, filepath.Join(scope, id), files[""])
			continue
		}
		h := map[string]string{"cpu": "cpu", "memory": "memory", "pids": "pids", "io": "blkio"}[ctl]
		mkFiles(t, filepath.Join(scope, id), files[h])
	}
}

func mkFiles(t *testing.T, dir string, names []string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			continue
		}
		write(t, filepath.Join(dir, n), "")
	}
}

func write(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cpuFile is the path of file in the VM's cpu cgroup.
func cpuFile(c *cgroups, id, file string) string { return filepath.Join(c.scopes["cpu"], id, file) }

// place caps each VM's cgroup as asked and moves QEMU into it, under v2
// and under v1, and setWeight weights it; all VMs of a driver are
// siblings, so that weights order them against each other.
func TestCgroupCapsAndWeight(t *testing.T) {
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			fakeRoot(t, l)
			c := newCgroups(t.TempDir())
			if c.missing != "" || c.v2 != l.v2 {
				t.Fatalf("v2 %v, missing %q", c.v2, c.missing)
			}
			a, b := vm.NewID(), vm.NewID()
			for _, id := range []string{a, b} {
				mkcgroup(t, c, id)
				if err := c.place(id, caps{vcpus: 0.5, memoryBytes: 1 << 30}, 4242); err != nil {
					t.Fatal(err)
				}
			}
			want := map[string]string{"cpu.max": "50000 100000", "memory.max": "1073741824", "memory.swap.max": "0", "pids.max": "512"}
			mem := c.scopes["memory"]
			if !l.v2 {
				want = map[string]string{"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "pids.max": "512"}
				for f, v := range map[string]string{"memory.limit_in_bytes": "1073741824", "memory.memsw.limit_in_bytes": "1073741824"} {
					if got := read(t, filepath.Join(mem, a, f)); got != v {
						t.Errorf("%s = %q, want %q", f, got, v)
					}
				}
			}
			for f, v := range want {
				ctl := strings.Split(f, ".")[0]
				if got := read(t, filepath.Join(c.scopes[ctl], a, f)); got != v {
					t.Errorf("%s = %q, want %q", f, got, v)
				}
			}
			for ctl, scope := range c.scopes {
				if got := read(t, filepath.Join(scope, a, "cgroup.procs")); got != "4242" {
					t.Errorf("%s: cgroup.procs = %q, want QEMU's pid", ctl, got)
				}
			}
			if filepath.Dir(cpuFile(c, a, "")) != filepath.Dir(cpuFile(c, b, "")) {
				t.Errorf("two VMs of one driver are not siblings: %s, %s", cpuFile(c, a, ""), cpuFile(c, b, ""))
			}

			file, other, idle, normal := "cpu.weight", "cpu.shares", "10", "100"
			if !l.v2 {
				file, other, idle, normal = "cpu.shares", "cpu.weight", "102", "1024"
			}
			if err := c.setWeight(a, vm.CPUWeightIdle); err != nil {
				t.Fatal(err)
			}
			if got := read(t, cpuFile(c, a, file)); got != idle {
				t.Errorf("idle: %s = %q, want %q", file, got, idle)
			}
			if got := read(t, cpuFile(c, b, file)); got != "" {
				t.Errorf("the other VM's %s changed too: %q", file, got)
			}
			if err := c.setWeight(a, vm.CPUWeightNormal); err != nil {
				t.Fatal(err)
			}
			if got := read(t, cpuFile(c, a, file)); got != normal {
				t.Errorf("normal: %s = %q, want %q", file, got, normal)
			}
			if _, err := os.Stat(cpuFile(c, a, other)); err == nil {
				t.Errorf("%s written, which this layout has not", other)
			}
			if err := c.setWeight("vm-00000000aa", vm.CPUWeightNormal); err == nil {
				t.Error("weighting a VM without a cgroup succeeded")
			}
		})
	}
}

// Without a cpu controller there is no weight to set, and no error: the
// VM runs uncapped, which place has said already.
func TestCgroupWeightWithoutCPUController(t *testing.T) {
	fakeRoot(t, layout{name: "v1 without cpu"})
	c := newCgroups(t.TempDir())
	if !strings.Contains(c.missing, "cpu") {
		t.Fatalf("missing %q, want cpu named", c.missing)
	}
	id := vm.NewID()
	mkcgroup(t, c, id)
	if err := c.setWeight(id, vm.CPUWeightIdle); err != nil {
		t.Errorf("setWeight: %v", err)
	}
}

func TestCPUShares(t *testing.T) {
	for w, want := range map[int]int{vm.CPUWeightMin: 10, vm.CPUWeightIdle: 102, vm.CPUWeightNormal: 1024, vm.CPUWeightMax: 102400} {
		if got := cpuShares(w); got != want {
			t.Errorf("cpuShares(%d) = %d, want %d", w, got, want)
		}
	}
	if got := cpuShares(0); got != 2 {
		t.Errorf("cpuShares(0) = %d, want the kernel's least, 2", got)
	}
}

// An instance's weight set before Start is the one it is placed with; one
// set after is written to its cgroup. A VM outside a warm pool gets the
// normal weight written too.
func TestInstanceCPUWeight(t *testing.T) {
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			fakeRoot(t, l)
			d, err := New(Config{StateDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			file, idle, normal, mid := "cpu.weight", "10", "100", "50"
			if !l.v2 {
				file, idle, normal, mid = "cpu.shares", "102", "1024", "512"
			}

			pool := d.newInstance(vm.Spec{ID: vm.NewID(), CPUWeight: vm.CPUWeightIdle}, time.Now())
			plain := d.newInstance(vm.Spec{ID: vm.NewID()}, time.Now())
			for _, in := range []*instance{pool, plain} {
				mkcgroup(t, d.cg, in.spec.ID)
			}
			if err := pool.SetCPUWeight(50); err != nil {
				t.Fatal(err)
			}
			if got := read(t, cpuFile(d.cg, pool.spec.ID, file)); got != "" {
				t.Errorf("a weight was written before the VM was placed: %q", got)
			}
			if err := pool.SetCPUWeight(vm.CPUWeightIdle); err != nil {
				t.Fatal(err)
			}
			for _, in := range []*instance{pool, plain} {
				in.placeWeight()
			}
			if got := read(t, cpuFile(d.cg, pool.spec.ID, file)); got != idle {
				t.Errorf("pool VM placed with %s = %q, want %q", file, got, idle)
			}
			if got := read(t, cpuFile(d.cg, plain.spec.ID, file)); got != normal {
				t.Errorf("VM outside a pool placed with %s = %q, want %q", file, got, normal)
			}
			if err := pool.SetCPUWeight(50); err != nil {
				t.Fatal(err)
			}
			if got := read(t, cpuFile(d.cg, pool.spec.ID, file)); got != mid {
				t.Errorf("after SetCPUWeight(50): %s = %q, want %q", file, got, mid)
			}
			for _, bad := range []int{0, -1, vm.CPUWeightMax + 1} {
				if err := pool.SetCPUWeight(bad); err == nil {
					t.Errorf("SetCPUWeight(%d) succeeded", bad)
				}
			}
			if got := read(t, cpuFile(d.cg, pool.spec.ID, file)); got != mid {
				t.Errorf("a refused weight changed %s to %q", file, got)
			}
		})
	}
}
