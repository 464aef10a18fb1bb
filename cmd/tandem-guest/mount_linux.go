//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// The API filesystems every root needs; mounted first thing as PID 1 and
// re-checked in the final root.
var apiMounts = []mountSpec{
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// What a job expects on top of those. Failures here are reported, not fatal.
var runtimeMounts = []mountSpec{
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=620,ptmxmode=666,gid=5"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// isMountpoint says whether dir is the root of a mount: its device differs
// from its parent's, or it is "/" itself. Good enough for deciding whether
// to mount a fresh filesystem there (a bind mount of the same device would
// fool it, and we make none).
func isMountpoint(dir string) (bool, error) {
	var st, pst unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Join(dir, ".."), &pst); err != nil {
		return false, err
	}
	return st.Dev != pst.Dev || st.Ino == pst.Ino, nil
}

// ensureMount mounts m unless something is mounted at its target already,
// creating the directory if needed. It reports whether it mounted.
func ensureMount(m mountSpec) (bool, error) {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return false, err
	}
	if ok, err := isMountpoint(m.target); err != nil || ok {
		return false, err
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return false, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return true, nil
}

// mountAPI mounts /dev, /proc and /sys where they are missing.
func mountAPI() error {
	for _, m := range apiMounts {
		if _, err := ensureMount(m); err != nil {
			return err
		}
	}
	return nil
}

// fixConsole makes fds 0-2 the console. The kernel opens /dev/console for
// init only if the initramfs has that node; otherwise the Go runtime has put
// /dev/null there (or could not start at all). Call after /dev is mounted.
func fixConsole() {
	var st unix.Stat_t
	if err := unix.Fstat(1, &st); err == nil &&
		!(st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == unix.Mkdev(1, 3)) {
		return
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		if fd != i {
			unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

// handOffMounts are what a guest agent started before init needs, mounted
// as systemd mounts them (systemd's mount_setup leaves a mounted target as
// it is): a PTY for tandem ssh, /dev/shm for the job, /run for the agent's
// state.
var handOffMounts = []mountSpec{
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,gid=5"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_STRICTATIME, "mode=01777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_STRICTATIME, "mode=0755,size=20%,nr_inodes=800k"},
}

// mountRuntime mounts mounts (runtimeMounts: devpts, /dev/shm, /tmp, /run
// and cgroup2) and adds the /dev symlinks devtmpfs lacks. Problems are
// printed, not returned: a job may well run without them.
func mountRuntime(con *console, mounts []mountSpec) {
	var done []string
	for _, m := range mounts {
		if m.fstype == "cgroup2" {
			if _, err := os.Stat(m.target); err != nil {
				continue // kernel without cgroup2: skip silently
			}
		}
		ok, err := ensureMount(m)
		if err != nil {
			con.logf("mount: %s: %v", m.target, err)
			continue
		}
		if ok {
			done = append(done, m.target)
		}
	}
	for link, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			os.Symlink(target, link)
		}
	}
	if len(done) > 0 {
		con.logf("mounted %s", strings.Join(done, " "))
	}
}

// Retried while a fresh block device settles.
func retryableMountErr(err error) bool {
	return errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EBUSY)
}

// switchRoot waits for dev, mounts it as ext4 on /newroot, moves /dev /proc
// /sys into it and makes it the root the way switch_root does (the
// initramfs is rootfs and cannot be pivoted away; it is left in memory).
func switchRoot(con *console, dev string, wait time.Duration) error {
	const newRoot = "/newroot"
	start := time.Now()
	deadline := start.Add(wait)
	for {
		_, err := os.Stat(dev)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root %s did not appear within %s (block devices: %s; virtio_blk loaded?)",
				dev, wait, listDir("/sys/block"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("root: %w", err)
	}
	for {
		err := unix.Mount(dev, newRoot, "ext4", 0, "")
		if err == nil {
			break
		}
		if !retryableMountErr(err) || time.Now().After(deadline) {
			return fmt.Errorf("root: mount %s (ext4) on %s: %w", dev, newRoot, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range apiMounts {
		target := newRoot + m.target
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("root: %w", err)
		}
		if err := unix.Mount(m.target, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("root: move %s to %s: %w", m.target, target, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("root: chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("root: move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("root: chdir /: %w", err)
	}
	con.logf("root: %s mounted, switched (%s)", dev, ms(time.Since(start)))
	return nil
}

// listDir names a directory's entries for error messages.
func listDir(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	if len(ents) == 0 {
		return "none"
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return strings.Join(names, " ")
}
