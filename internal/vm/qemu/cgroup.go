package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// cgroups caps each VM's CPU time at its (possibly fractional) vCPU count:
// a 0.5-vCPU VM gets one guest CPU and half of one host CPU. Each VM's cgroup
// is named tandem/<scope>/<id>, under cgroup v2 or else v1's cpu controller,
// where scope names the driver's state directory (so that two Tandem hosts
// on one machine, or two test processes, never take each other's cgroups
// for leftovers of their own). Where
// neither is writable the VM runs uncapped with its vCPUs rounded up, and the
// driver says so once.
type cgroups struct {
	log    *slog.Logger
	top    string // the tandem/ group; "" if unusable
	root   string // this driver's scope under top
	v2     bool
	warned sync.Once
}

const cfsPeriod = 100000 // µs

func newCgroups(log *slog.Logger, stateDir string) *cgroups {
	c := &cgroups{log: log}
	switch {
	case fileExists("/sys/fs/cgroup/cgroup.controllers"):
		c.top, c.v2 = "/sys/fs/cgroup/tandem", true
	case fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
		c.top = "/sys/fs/cgroup/cpu/tandem"
	case fileExists("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"):
		c.top = "/sys/fs/cgroup/cpu,cpuacct/tandem"
	}
	if c.top != "" {
		abs, _ := filepath.Abs(stateDir)
		sum := sha256.Sum256([]byte(abs))
		c.root = filepath.Join(c.top, hex.EncodeToString(sum[:4]))
	}
	return c
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (c *cgroups) warn(err error) {
	c.warned.Do(func() {
		c.log.Warn("cannot cap VM CPU time with cgroups; fractional vCPUs are rounded up and uncapped", "err", err)
	})
}

// place puts pid into the VM's cgroup with a quota of vcpus CPUs.
func (c *cgroups) place(id string, vcpus float64, pid int) {
	if c.root == "" {
		c.warn(errors.New("no cgroup cpu controller found"))
		return
	}
	if err := c.setup(id, vcpus, pid); err != nil {
		c.warn(err)
	}
}

func (c *cgroups) setup(id string, vcpus float64, pid int) error {
	if c.v2 {
		if err := os.MkdirAll(c.root, 0o755); err != nil {
			return err
		}
		// Delegate the cpu controller down to the VMs' groups.
		for _, d := range []string{"/sys/fs/cgroup", c.top, c.root} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+cpu"), 0); err != nil {
				return fmt.Errorf("enable cpu controller in %s: %w", d, err)
			}
		}
	}
	dir := filepath.Join(c.root, id)
	// Another process's remove() may take the empty scope away between the
	// two mkdirs MkdirAll makes: try again.
	var err error
	for range 3 {
		if err = os.MkdirAll(dir, 0o755); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	quota := int(vcpus * cfsPeriod)
	if c.v2 {
		if err := os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, cfsPeriod), 0); err != nil {
			return fmt.Errorf("cpu.max: %w", err)
		}
	} else {
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cfsPeriod)), 0); err != nil {
			return fmt.Errorf("cpu.cfs_period_us: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0); err != nil {
			return fmt.Errorf("cpu.cfs_quota_us: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move qemu into cgroup: %w", err)
	}
	return nil
}

// remove deletes the VM's cgroup. Its processes must have exited; the kernel
// may take a moment to notice, so retry briefly.
func (c *cgroups) remove(id string) error {
	if c.root == "" {
		return nil
	}
	dir := filepath.Join(c.root, id)
	var err error
	for range 50 {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			os.Remove(c.root) // the scope too, once its last VM is gone (EBUSY otherwise)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// list returns the VM ids that have a cgroup.
func (c *cgroups) list() []string {
	if c.root == "" {
		return nil
	}
	ents, _ := os.ReadDir(c.root)
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids
}
