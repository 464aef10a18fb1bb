package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// epoch is the timestamp of every file in a built root filesystem (and of
// the file system itself), so that the same inputs give the same bytes.
const epoch = 946684800 // 2000-01-01T00:00:00Z

// fallbackApplets is used when busybox cannot be run to list its applets
// (a foreign architecture without qemu-user).
var fallbackApplets = strings.Fields(`bin/sh bin/ash bin/ls bin/cat bin/echo bin/uname bin/sleep bin/mount
bin/umount bin/ps bin/kill bin/mkdir bin/rm bin/cp bin/mv bin/ln bin/true bin/false bin/grep bin/sed
bin/date bin/hostname bin/dd bin/df bin/chmod bin/chown bin/touch bin/sync bin/dmesg bin/pwd bin/vi
bin/ping bin/stat bin/readlink bin/ip sbin/poweroff sbin/reboot sbin/ifconfig sbin/route
usr/bin/env usr/bin/printf usr/bin/test usr/bin/[ usr/bin/awk usr/bin/head usr/bin/tail usr/bin/wc
usr/bin/sort usr/bin/du usr/bin/id usr/bin/nc usr/bin/wget usr/bin/yes usr/bin/seq usr/bin/tr
usr/bin/cut usr/bin/find usr/bin/xargs usr/bin/free usr/bin/uptime usr/bin/basename usr/bin/dirname
usr/bin/which usr/bin/md5sum usr/bin/sha256sum usr/bin/tee usr/bin/nproc usr/bin/timeout`)

// buildTestRootfs makes the test image's root filesystem: busybox and
// tandem-guest on ext4.
func buildTestRootfs(ctx context.Context, p progress, work string, bb debFile, guestBin []byte, o BuildOptions, dest string) error {
	bbDir := filepath.Join(work, "busybox-pkg")
	if err := dpkgExtract(ctx, bb.Path, bbDir); err != nil {
		return err
	}
	busybox := filepath.Join(bbDir, "bin", "busybox")
	bbBin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	applets := listApplets(ctx, busybox, o.Arch)

	root := filepath.Join(work, "rootfs")
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc/tandem", "proc", "sys",
		"dev", "tmp", "run", "root", "home", "var/tmp", "mnt", "opt", "srv"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	os.Chmod(filepath.Join(root, "var/tmp"), 0o1777)
	os.Chmod(filepath.Join(root, "root"), 0o700)
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"bin/busybox":          {bbBin, 0o755},
		"usr/bin/tandem-guest": {guestBin, 0o755},
		"etc/passwd":           {[]byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644},
		"etc/group":            {[]byte("root:x:0:\nnogroup:x:65534:\n"), 0o644},
		"etc/hostname":         {[]byte("tandem\n"), 0o644},
		"etc/hosts":            {[]byte("127.0.0.1 localhost\n"), 0o644},
		"etc/os-release":       {[]byte(fmt.Sprintf("NAME=\"Tandem test image\"\nID=tandem-test\nVERSION_ID=1\nPRETTY_NAME=\"Tandem test image (busybox %s)\"\n", bb.Version)), 0o644},
	}
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(root, name), f.data, f.mode); err != nil {
			return err
		}
	}
	for _, a := range applets {
		a = strings.TrimPrefix(a, "/")
		if a == "bin/busybox" || a == "" || strings.Contains(a, "..") {
			continue
		}
		dst := filepath.Join(root, a)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return err
		}
	}
	if err := fixTimes(root); err != nil {
		return err
	}
	uuid := uuidFrom(sha256hex(append(append([]byte(bb.SHA256), guestBin...), o.Arch...)))
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "tandem-root", "-O", "^has_journal",
		"-U", uuid, "-E", "root_owner=0:0,hash_seed="+uuid, "-d", root, dest, fmt.Sprintf("%dM", o.RootfsSizeMiB))
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 (from e2fsprogs): %v: %s", err, out)
	}
	// mkfs copies each file's ctime, which no call can set: set them in
	// the image itself.
	if err := fixCtimes(ctx, root, dest); err != nil {
		return err
	}
	p.step("root filesystem: busybox %s with %d applets, tandem-guest, ext4 %d MiB (sparse)", bb.Version, len(applets), o.RootfsSizeMiB)
	return nil
}

// listApplets asks busybox for its applets' install paths, through
// qemu-user for a foreign architecture, or falls back to a fixed list.
func listApplets(ctx context.Context, busybox, arch string) []string {
	var cmd *exec.Cmd
	switch {
	case arch == hostDebArch():
		cmd = exec.CommandContext(ctx, busybox, "--list-full")
	case arch == "arm64":
		if q, err := exec.LookPath("qemu-aarch64-static"); err == nil {
			cmd = exec.CommandContext(ctx, q, busybox, "--list-full")
		}
	case arch == "amd64":
		if q, err := exec.LookPath("qemu-x86_64-static"); err == nil {
			cmd = exec.CommandContext(ctx, q, busybox, "--list-full")
		}
	}
	if cmd != nil {
		if out, err := cmd.Output(); err == nil && len(out) > 0 {
			l := strings.Fields(string(out))
			sort.Strings(l)
			return l
		}
	}
	return fallbackApplets
}

// fixTimes sets every file's times to epoch, symlinks included.
func fixTimes(root string) error {
	ts := []unix.Timespec{{Sec: epoch}, {Sec: epoch}}
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func uuidFrom(hexsum string) string {
	h := hexsum[:32]
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// fixCtimes sets the change time of every inode mkfs copied from root to
// epoch, with debugfs, so that the image's bytes depend on content alone.
func fixCtimes(ctx context.Context, root, img string) error {
	var script strings.Builder
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if strings.ContainsAny(rel, "\"\n") {
			return fmt.Errorf("unexpected file name %q in the root filesystem", rel)
		}
		fmt.Fprintf(&script, "sif \"/%s\" ctime 20000101000000\n", strings.TrimPrefix(rel, "."))
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "debugfs-*.txt")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	f.WriteString(script.String())
	f.Close()
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", f.Name(), img)
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "not found") {
		return fmt.Errorf("debugfs (from e2fsprogs): %v: %.500s", err, out)
	}
	return nil
}
