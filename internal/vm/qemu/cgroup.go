package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/vm"
)

// cgroups caps what each VM's QEMU may take of the host: CPU time at its
// (possibly fractional) vCPU count (a 0.5-vCPU VM gets one guest CPU and
// half of one host CPU), memory at the guest's plus QEMU's own overhead
// (memoryCap), tasks (pidsMax), and, when asked, disk I/O. Each VM's
// cgroup is named tandem/<scope>/<id>, under cgroup v2, or else in each v1
// hierarchy (cpu, memory, pids, blkio), where scope names the driver's
// state directory (so that two Tandem hosts on one machine, or two test
// processes, never take each other's cgroups for leftovers of their own).
// QEMU is placed in its cgroup before it runs a single instruction (see
// jail.go).
//
// Each VM's cgroup also has a CPU weight (vm.Spec.CPUWeight; setWeight),
// which orders VMs only while they contend for the host's CPUs. A weight
// counts against siblings alone, and all VMs of one driver are siblings:
// tandem/<scope>/<id>, one scope per state directory, so one per agent
// (`tandem run` over the agent's data directory shares it too). A second
// Tandem host on the same machine has a scope of its own, which competes
// with this one's as a whole, at the default weight.
type cgroups struct {
	v2 bool
	// scopes are this driver's scope directories: one under v2, one per
	// v1 hierarchy, keyed by controller.
	scopes map[string]string
	// missing says why a required controller is unusable; "" when every
	// one is there.
	missing string
}

const cfsPeriod = 100000 // µs

// pidsMax bounds a QEMU's tasks: its vCPU, I/O and worker threads (it may
// not fork: -sandbox spawn=deny).
const pidsMax = 512

// required are the controllers every VM is capped by; io is used when
// limits are asked for.
var required = []string{"cpu", "memory", "pids"}

// cgroupRoot is where cgroups are mounted (a variable for tests).
var cgroupRoot = "/sys/fs/cgroup"

func newCgroups(stateDir string) *cgroups {
	abs, _ := filepath.Abs(stateDir)
	sum := sha256.Sum256([]byte(abs))
	scope := filepath.Join("tandem", hex.EncodeToString(sum[:4]))
	c := &cgroups{scopes: map[string]string{}}
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		c.v2 = true
		have := strings.Fields(string(b))
		for _, ctl := range append(required, "io") {
			if contains(have, ctl) {
				c.scopes[ctl] = filepath.Join(cgroupRoot, scope)
			}
		}
	} else {
		v1 := map[string][]string{"cpu": {"cpu", "cpu,cpuacct"}, "memory": {"memory"}, "pids": {"pids"}, "io": {"blkio"}}
		for ctl, dirs := range v1 {
			for _, d := range dirs {
				if fileExists(filepath.Join(cgroupRoot, d, "cgroup.procs")) {
					c.scopes[ctl] = filepath.Join(cgroupRoot, d, scope)
					break
				}
			}
		}
	}
	var missing []string
	for _, ctl := range required {
		if c.scopes[ctl] == "" {
			missing = append(missing, ctl)
		}
	}
	if len(missing) > 0 {
		c.missing = fmt.Sprintf("cgroup controller(s) %s not available under %s", strings.Join(missing, ", "), cgroupRoot)
	}
	return c
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// caps is what one VM's cgroup allows.
type caps struct {
	vcpus       float64
	memoryBytes int64
	io          *IOLimit // nil: none
}

// place creates the VM's cgroups with its caps and moves pid into them.
// Without a required controller it does what it can and returns the
// reason; the driver refuses to start uncapped VMs unless allowed to.
func (c *cgroups) place(id string, cp caps, pid int) error {
	var errs []error
	dirs, err := c.make(id)
	if err != nil {
		return err
	}
	for _, ctl := range append(required, "io") {
		dir, ok := dirs[ctl]
		if !ok {
			continue
		}
		if err := c.limit(ctl, dir, cp); err != nil {
			errs = append(errs, err)
		}
	}
	// One directory under v2; one per hierarchy under v1.
	moved := map[string]bool{}
	for _, dir := range dirs {
		if moved[dir] {
			continue
		}
		moved[dir] = true
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			errs = append(errs, fmt.Errorf("move qemu into %s: %w", dir, err))
		}
	}
	if c.missing != "" {
		errs = append(errs, errors.New(c.missing))
	}
	return errors.Join(errs...)
}

// make creates the VM's cgroup directories, keyed by controller.
func (c *cgroups) make(id string) (map[string]string, error) {
	dirs := map[string]string{}
	if c.v2 {
		if len(c.scopes) == 0 {
			return dirs, nil
		}
		var scope string
		var ctls []string
		for ctl, s := range c.scopes {
			scope = s
			ctls = append(ctls, "+"+ctl)
		}
		if err := os.MkdirAll(scope, 0o755); err != nil {
			return nil, err
		}
		// Delegate the controllers down to the VMs' groups.
		for _, d := range []string{cgroupRoot, filepath.Dir(scope), scope} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(ctls, " ")), 0); err != nil {
				return nil, fmt.Errorf("enable controllers %v in %s: %w", ctls, d, err)
			}
		}
	}
	for ctl, scope := range c.scopes {
		dir := filepath.Join(scope, id)
		// Another process's remove() may take the empty scope away between
		// the two mkdirs MkdirAll makes: try again.
		var err error
		for range 3 {
			if err = os.MkdirAll(dir, 0o755); err == nil {
				break
			}
		}
		if err != nil {
			return nil, err
		}
		dirs[ctl] = dir
	}
	return dirs, nil
}

func (c *cgroups) limit(ctl, dir string, cp caps) error {
	write := func(file, v string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		return nil
	}
	switch ctl {
	case "cpu":
		quota := int(cp.vcpus * cfsPeriod)
		if c.v2 {
			return write("cpu.max", fmt.Sprintf("%d %d", quota, cfsPeriod))
		}
		if err := write("cpu.cfs_period_us", strconv.Itoa(cfsPeriod)); err != nil {
			return err
		}
		return write("cpu.cfs_quota_us", strconv.Itoa(quota))
	case "memory":
		m := strconv.FormatInt(cp.memoryBytes, 10)
		if c.v2 {
			if err := write("memory.max", m); err != nil {
				return err
			}
			if fileExists(filepath.Join(dir, "memory.swap.max")) {
				return write("memory.swap.max", "0")
			}
			return nil
		}
		if err := write("memory.limit_in_bytes", m); err != nil {
			return err
		}
		if fileExists(filepath.Join(dir, "memory.memsw.limit_in_bytes")) {
			return write("memory.memsw.limit_in_bytes", m) // no swap
		}
		return nil
	case "pids":
		return write("pids.max", strconv.Itoa(pidsMax))
	case "io":
		if cp.io == nil || cp.io.zero() {
			return nil
		}
		dev := cp.io.Device
		if c.v2 {
			return write("io.max", fmt.Sprintf("%s rbps=%s wbps=%s riops=%s wiops=%s", dev,
				ioMax(cp.io.ReadBPS), ioMax(cp.io.WriteBPS), ioMax(cp.io.ReadIOPS), ioMax(cp.io.WriteIOPS)))
		}
		for file, v := range map[string]int64{"blkio.throttle.read_bps_device": cp.io.ReadBPS, "blkio.throttle.write_bps_device": cp.io.WriteBPS,
			"blkio.throttle.read_iops_device": cp.io.ReadIOPS, "blkio.throttle.write_iops_device": cp.io.WriteIOPS} {
			if v > 0 {
				if err := write(file, fmt.Sprintf("%s %d", dev, v)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// setWeight sets the CPU weight of the VM's cgroup (vm.Spec.CPUWeight):
// cpu.weight under v2, cpu.shares under v1. Without a CPU controller it
// does nothing: the VM runs uncapped, which the driver allows only when
// told to, and says (see place).
func (c *cgroups) setWeight(id string, weight int) error {
	scope, ok := c.scopes["cpu"]
	if !ok {
		return nil
	}
	file, v := "cpu.weight", strconv.Itoa(weight)
	if !c.v2 {
		file, v = "cpu.shares", strconv.Itoa(cpuShares(weight))
	}
	if err := os.WriteFile(filepath.Join(scope, id, file), []byte(v), 0); err != nil {
		return fmt.Errorf("cpu weight: %w", err)
	}
	return nil
}

// cpuShares turns a cgroup v2 weight into cgroup v1's cpu.shares, whose
// default is 1024 where v2's is 100 (systemd maps CPUWeight to CPUShares
// the same way): vm.CPUWeightIdle (10) is 102, a tenth of the default
// on either. The kernel's least is 2.
func cpuShares(weight int) int { return max(weight*1024/100, 2) }

func ioMax(v int64) string {
	if v <= 0 {
		return "max"
	}
	return strconv.FormatInt(v, 10)
}

// IOLimit caps a VM's disk I/O on the device its state lives on (0: no
// cap of that kind).
type IOLimit struct {
	Device              string // "MAJ:MIN" of the disk (not a partition); filled in by the driver
	ReadBPS, WriteBPS   int64
	ReadIOPS, WriteIOPS int64
}

func (l *IOLimit) zero() bool {
	return l.ReadBPS <= 0 && l.WriteBPS <= 0 && l.ReadIOPS <= 0 && l.WriteIOPS <= 0
}

// diskOf returns "MAJ:MIN" of the whole disk that path lives on (a
// partition's parent: cgroups throttle disks).
func diskOf(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	sys := filepath.Join("/sys/dev/block", dev)
	if fileExists(filepath.Join(sys, "partition")) {
		b, err := os.ReadFile(filepath.Join(sys, "..", "dev"))
		if err != nil {
			return "", fmt.Errorf("disk of partition %s: %w", dev, err)
		}
		dev = strings.TrimSpace(string(b))
	}
	if !fileExists(filepath.Join("/sys/dev/block", dev)) {
		return "", fmt.Errorf("%s is on %s, not a block device (an overlay or tmpfs): I/O cannot be capped there", path, dev)
	}
	return dev, nil
}

// peakMemory returns the peak memory of the VM's cgroup in bytes (QEMU
// and the guest's memory it touched), and whether it was read.
func (c *cgroups) peakMemory(id string) (int64, bool) {
	scope, ok := c.scopes["memory"]
	if !ok {
		return 0, false
	}
	for _, f := range []string{"memory.peak", "memory.max_usage_in_bytes"} {
		if b, err := os.ReadFile(filepath.Join(scope, id, f)); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				return n, true
			}
		}
	}
	return 0, false
}

// remove deletes the VM's cgroups. Its processes must have exited; the
// kernel may take a moment to notice, so retry briefly.
func (c *cgroups) remove(id string) error {
	var errs []error
	done := map[string]bool{}
	for _, scope := range c.scopes {
		if done[scope] {
			continue
		}
		done[scope] = true
		dir := filepath.Join(scope, id)
		var err error
		for range 50 {
			err = os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				os.Remove(scope) // the scope too, once its last VM is gone (EBUSY otherwise)
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// list returns the VM ids that have a cgroup in any hierarchy.
func (c *cgroups) list() []string {
	seen := map[string]bool{}
	var ids []string
	for _, scope := range c.scopes {
		ents, _ := os.ReadDir(scope)
		for _, e := range ents {
			if e.IsDir() && !seen[e.Name()] {
				seen[e.Name()] = true
				ids = append(ids, e.Name())
			}
		}
	}
	return ids
}

// memoryCap is a VM's memory cap in MiB: the guest's memory, and what QEMU
// needs beside it — its own allocations and page tables (256 MiB and 1/32
// of the guest's), and under TCG its translation cache (1 GiB at most,
// QEMU's default). Measured peaks are in docs/benchmarks.md.
func memoryCap(s vm.Spec) int64 {
	m := int64(s.MemoryMiB) + 256 + int64(s.MemoryMiB)/32
	if s.Accel != vm.AccelKVM {
		m += 1024
	}
	return m
}

// CgroupSupport is what the driver finds of cgroups on this host, as a
// driver's newCgroups sees it: for `tandem doctor`.
type CgroupSupport struct {
	V2 bool
	// Controllers are the usable ones of cpu, memory, pids and io.
	Controllers []string
	// Missing says why VMs could not be capped here (Driver.Capped's
	// words), "" when they can.
	Missing string
}

// Cgroups reports the host's cgroup support.
func Cgroups() CgroupSupport {
	c := newCgroups(os.TempDir())
	s := CgroupSupport{V2: c.v2, Missing: c.missing}
	for _, ctl := range append(required, "io") {
		if c.scopes[ctl] != "" {
			s.Controllers = append(s.Controllers, ctl)
		}
	}
	return s
}
