package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// epoch is the timestamp of every file in a built root filesystem (and of
// the file system itself), so that the same inputs give the same bytes.
const epoch = 946684800 // 2000-01-01T00:00:00Z

// mke2fsConf replaces the host's /etc/mke2fs.conf, so that the file system
// does not depend on how the host is configured. No journal: the base image
// is read-only and each VM writes to a copy-on-write overlay that dies with
// it, so crash consistency buys nothing, and the image is smaller. 4 KiB
// blocks (the host's "small" type would give 1 KiB ones below
// 512 MiB), no blocks reserved for root (everything runs as root).
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 8192
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	tandem = {
		inode_ratio = 8192
	}
`

// fallbackApplets is used when busybox can neither be run to list its
// applets nor its list be read from the binary.
var fallbackApplets = strings.Fields(`bin/sh bin/ash bin/ls bin/cat bin/echo bin/uname bin/sleep bin/mount
bin/umount bin/ps bin/kill bin/mkdir bin/rm bin/cp bin/mv bin/ln bin/true bin/false bin/grep bin/sed
bin/date bin/hostname bin/dd bin/df bin/chmod bin/chown bin/touch bin/sync bin/dmesg bin/pwd bin/vi
bin/ping bin/stat bin/readlink bin/ip sbin/poweroff sbin/reboot sbin/ifconfig sbin/route
usr/bin/env usr/bin/printf usr/bin/test usr/bin/[ usr/bin/awk usr/bin/head usr/bin/tail usr/bin/wc
usr/bin/sort usr/bin/du usr/bin/id usr/bin/nc usr/bin/wget usr/bin/yes usr/bin/seq usr/bin/tr
usr/bin/cut usr/bin/find usr/bin/xargs usr/bin/free usr/bin/uptime usr/bin/basename usr/bin/dirname
usr/bin/which usr/bin/md5sum usr/bin/sha256sum usr/bin/tee usr/bin/nproc usr/bin/timeout`)

// rootfsResult says what went into a root filesystem, for the progress.
type rootfsResult struct {
	applets    int
	appletsVia string
	sizeMiB    int
}

func (r rootfsResult) String() string {
	return fmt.Sprintf("ext4 %d MiB, %d busybox applets from %s", r.sizeMiB, r.applets, r.appletsVia)
}

// buildTestRootfs makes the test image's root filesystem: busybox and
// tandem-guest on ext4.
func buildTestRootfs(ctx context.Context, p *progress, work string, bb debFile, guestBin, fakeRunner []byte, o BuildOptions, dest string) error {
	res := rootfsResult{sizeMiB: o.RootfsSizeMiB}
	bbDir := filepath.Join(work, "busybox-pkg")
	if err := dpkgExtract(ctx, bb.Path, bbDir); err != nil {
		return err
	}
	busybox := filepath.Join(bbDir, "bin", "busybox")
	bbBin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	if err := checkStaticELF(busybox, o.Arch); err != nil {
		return fmt.Errorf("busybox-static %s: %w", bb.Version, err)
	}
	applets, via := listApplets(ctx, busybox, bbBin, o.Arch)
	res.applets, res.appletsVia = len(applets), via

	root := filepath.Join(work, "rootfs")
	if err := stageTestRootfs(root, bbBin, guestBin, fakeRunner, bb.Version, applets); err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	// Everything mkfs takes from the tree is fixed now: the file system's
	// uuid and directory hash seed derive from it, its times are epoch.
	tree, err := treeHash(root)
	if err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	if err := makeExt4(ctx, work, root, dest, tree, o.RootfsSizeMiB, 0); err != nil {
		return err
	}
	what := "tandem-guest"
	if fakeRunner != nil {
		what += ", tandem-fakerunner"
	}
	p.step("root filesystem: busybox %s, %s; %s", bb.Version, what, res)
	return nil
}

// stageTestRootfs lays the test image's tree out under root, with fixed
// modes and times (mkfs copies both).
func stageTestRootfs(root string, bbBin, guestBin, fakeRunner []byte, bbVersion string, applets []string) error {
	dirs := map[string]os.FileMode{
		"": 0o755, "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
		"usr/local": 0o755, "usr/local/bin": 0o755, "etc": 0o755, "etc/tandem": 0o755,
		"proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": os.ModeSticky | 0o777, "run": 0o755, "root": 0o700,
		"home": 0o755, "var": 0o755, "var/tmp": os.ModeSticky | 0o777, "mnt": 0o755, "opt": 0o755, "srv": 0o755,
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	osRelease := fmt.Sprintf("NAME=\"Tandem test image\"\nID=tandem-test\nVERSION_ID=1\n"+
		"PRETTY_NAME=\"Tandem test image (busybox %s)\"\n", bbVersion)
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"bin/busybox":          {bbBin, 0o755},
		"usr/bin/tandem-guest": {guestBin, 0o755},
		"etc/passwd":           {[]byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644},
		"etc/group":            {[]byte("root:x:0:\nnogroup:x:65534:\n"), 0o644},
		"etc/hostname":         {[]byte("tandem\n"), 0o644},
		"etc/hosts":            {[]byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644},
		"etc/os-release":       {[]byte(osRelease), 0o644},
	}
	if fakeRunner != nil {
		files["usr/bin/tandem-fakerunner"] = struct {
			data []byte
			mode os.FileMode
		}{fakeRunner, 0o755}
	}
	for name, f := range files {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, f.mode); err != nil { // whatever the umask
			return err
		}
	}
	// tandem-guest is also the workflow step tandem-debug-pause, by that
	// name on the job's PATH.
	if err := os.Symlink("/usr/bin/tandem-guest", filepath.Join(root, debugPauseLink)); err != nil {
		return err
	}
	for _, a := range applets {
		a = strings.TrimPrefix(a, "/")
		if a == "" || a == "bin/busybox" || !fs.ValidPath(a) {
			continue
		}
		dst := filepath.Join(root, a)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if _, err := os.Lstat(dst); err == nil {
			continue // a file of ours, or an applet listed twice
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return err
		}
	}
	// Directories: fixed modes whatever the umask (including any an
	// applet path made), then every time set to epoch.
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		mode, ok := dirs[strings.TrimPrefix(rel, ".")]
		if !ok {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		return err
	}
	return fixTimes(root)
}

// listApplets returns the install paths of busybox's applets, and how it
// found them: by running busybox (through qemu-user for a foreign
// architecture, if installed), else by reading the applet table out of the
// binary (all then go into /bin), else a fixed list of the common ones.
func listApplets(ctx context.Context, busybox string, bin []byte, arch string) ([]string, string) {
	var cmd *exec.Cmd
	via := "busybox --list-full"
	switch {
	case arch == hostDebArch():
		cmd = exec.CommandContext(ctx, busybox, "--list-full")
	case arch == "arm64":
		if q, err := exec.LookPath("qemu-aarch64-static"); err == nil {
			cmd = exec.CommandContext(ctx, q, busybox, "--list-full")
			via = "qemu-aarch64-static busybox --list-full"
		}
	case arch == "amd64":
		if q, err := exec.LookPath("qemu-x86_64-static"); err == nil {
			cmd = exec.CommandContext(ctx, q, busybox, "--list-full")
			via = "qemu-x86_64-static busybox --list-full"
		}
	}
	if cmd != nil {
		if out, err := cmd.Output(); err == nil && len(out) > 0 {
			l := strings.Fields(string(out))
			sort.Strings(l)
			return l, via
		}
	}
	if names := appletsFromBinary(bin); names != nil {
		l := make([]string, len(names))
		for i, n := range names {
			l[i] = "bin/" + n
		}
		return l, "the binary's applet table"
	}
	return fallbackApplets, "a fixed list"
}

// appletsFromBinary reads the applet names out of a busybox binary: the
// table busybox's build generates (applet_names[] in applet_tables.h) is
// one string of the names, sorted, NUL-separated, starting "[\0[[\0". The
// names are read while they stay sorted and look like applet names; fewer
// than 20, or no sh among them, and the table is taken as not found.
func appletsFromBinary(bin []byte) []string {
	i := bytes.Index(bin, []byte("\x00[\x00[[\x00"))
	if i < 0 {
		return nil
	}
	rest := bin[i+1:]
	var names []string
	prev := ""
	for {
		j := bytes.IndexByte(rest, 0)
		if j <= 0 || j > 32 {
			break
		}
		n := string(rest[:j])
		if n <= prev || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789._-[") != "" {
			break
		}
		names = append(names, n)
		prev, rest = n, rest[j+1:]
	}
	if len(names) < 20 || !slices.Contains(names, "sh") {
		return nil
	}
	return slices.DeleteFunc(names, func(n string) bool { return n == "busybox" })
}

// fixTimes sets every file's times to epoch, symlinks included.
func fixTimes(root string) error {
	ts := []unix.Timespec{{Sec: epoch}, {Sec: epoch}}
	return filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// treeHash hashes what mkfs -d copies from a tree: names, types, modes,
// contents and link targets, in a fixed order.
func treeHash(root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%s\x00%o\x00", rel, fi.Mode())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00", t)
		case fi.Mode().IsRegular():
			sum, err := fileSHA256(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00", sum)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

func uuidFrom(hexsum string) string {
	h := hexsum[:32]
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// fixInodeTimes sets the change time of every inode mkfs copied from root to
// epoch, with debugfs, so that the image's bytes depend on content alone.
// (No system call sets ctime. The access time was set, but reading a file
// for its hash, or running it, moves it again under relatime: set that too.)
func fixInodeTimes(ctx context.Context, work, root, img string) error {
	var script strings.Builder
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		// debugfs takes a quoted name literally, spaces and backslashes
		// (systemd's escaped unit names) included, up to the next quote.
		if strings.ContainsAny(rel, "\"\n") {
			return fmt.Errorf("unexpected file name %q in the root filesystem", rel)
		}
		for _, field := range []string{"ctime", "atime"} {
			fmt.Fprintf(&script, "sif \"/%s\" %s 20000101000000\n", strings.TrimPrefix(rel, "."), field)
		}
		return nil
	})
	if err != nil {
		return err
	}
	f := filepath.Join(work, "debugfs-ctimes.txt")
	if err := os.WriteFile(f, []byte(script.String()), 0o644); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", f, img)
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "not found") {
		return fmt.Errorf("debugfs (from e2fsprogs): %v: %.500s", err, out)
	}
	return nil
}

// makeExt4 makes dest, an ext4 file system of sizeMiB holding the tree at
// root, the same bytes for the same tree: its uuid and directory hash seed
// derive from tree (a hash of the tree), its times are epoch. inodeRatio
// (bytes per inode) 0 takes the configuration's.
func makeExt4(ctx context.Context, work, root, dest, tree string, sizeMiB, inodeRatio int) error {
	uuid := uuidFrom(sha256hex([]byte("uuid\x00" + tree)))
	seed := uuidFrom(sha256hex([]byte("hash_seed\x00" + tree)))
	conf := filepath.Join(work, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return err
	}
	args := []string{"-q", "-F", "-T", "tandem", "-L", "tandem-root", "-U", uuid, "-E", "root_owner=0:0,hash_seed=" + seed}
	if inodeRatio > 0 {
		args = append(args, "-i", fmt.Sprint(inodeRatio))
	}
	args = append(args, "-d", root, dest, fmt.Sprintf("%dM", sizeMiB))
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch), "MKE2FS_CONFIG="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 (from e2fsprogs): %v: %s", err, out)
	}
	// mkfs copies each file's ctime, which no system call can set, and its
	// atime, which reading the tree (treeHash) moved: set them in the image.
	return fixInodeTimes(ctx, work, root, dest)
}
