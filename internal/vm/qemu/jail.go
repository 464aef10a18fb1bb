package qemu

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The jail: QEMU never runs as root, nor sees the host's files. The driver
// starts this same executable (/proc/self/exe) under the name jailArg0; the
// package's init finds that name and, instead of the program, runs the
// jail (runJail), which never returns:
//
//  1. It waits on its start pipe (fd 3) until the driver has put it into
//     the VM's cgroups, so QEMU runs no instruction uncapped.
//  2. In a mount namespace of its own, it builds a root of a tmpfs that
//     holds only what QEMU needs: /usr and the libraries read-only, a /dev
//     of null, zero, full, random, urandom (and kvm under KVM), a /proc
//     that shows only its own processes, an empty /tmp, the VM's kernel,
//     initrd and base disk read-only, and the VM's state directory (its
//     overlay, console, sockets) read-write — each at its own path, so
//     QEMU's arguments stand as they are. It pivots into it: no other VM's
//     files, no image, no credential, no data directory exist there.
//  3. It drops to the VM's own uid and gid (jailSpec.UID, one per VM, in a
//     range no account uses) with no supplementary group but /dev/kvm's,
//     sets no_new_privs, asks to die with its parent when the VM must, and
//     execs QEMU, whose -sandbox seccomp filter then applies as before.
//
// The TAP device arrives as fd 4, opened by the driver: QEMU needs neither
// /dev/net/tun nor CAP_NET_ADMIN. A jail that fails says why on stderr (the
// VM's qemu.log) and exits 125.

const jailArg0 = "tandem-qemu-jail"

// jailSpec is what the jail needs, passed as its first argument (JSON).
type jailSpec struct {
	Binary    string   `json:"binary"`  // QEMU
	UID       int      `json:"uid"`     // the VM's own
	Groups    []int    `json:"groups"`  // supplementary groups (/dev/kvm's)
	Root      string   `json:"root"`    // an empty directory to build the root on
	StateDir  string   `json:"state"`   // read-write: the VM's run directory
	ReadOnly  []string `json:"ro"`      // kernel, initrd, base disk
	Devices   []string `json:"devices"` // under /dev, besides the basic ones
	Pdeath    bool     `json:"pdeath"`  // die with the parent
	ParentPID int      `json:"ppid"`    // the driver's process
}

// Fds the jail gets.
const (
	jailStartFd = 3 // read end of the start pipe; closed before QEMU runs
	jailTAPFd   = 4 // the TAP, when the VM has a NIC
)

// vmUIDBase starts the uid range of VMs: far above accounts and the
// subordinate ranges user namespaces use, below the 32-bit limit.
const (
	vmUIDBase  = 1_500_000_000
	vmUIDRange = 1 << 20
)

// vmUID returns a uid for VM id not in use by another of taken.
func vmUID(id string, taken map[int]bool) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	u := vmUIDBase + int(h.Sum32()%vmUIDRange)
	for taken[u] {
		u = vmUIDBase + (u-vmUIDBase+1)%vmUIDRange
	}
	return u
}

func init() {
	if len(os.Args) > 1 && os.Args[0] == jailArg0 {
		runJail(os.Args[1], os.Args[2:])
	}
}

// runJail is the jail's program (see above). It never returns.
func runJail(specJSON string, qemuArgs []string) {
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "tandem jail: "+format+"\n", args...)
		os.Exit(125)
	}
	var s jailSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		fail("spec: %v", err)
	}
	// 1. Wait until placed in the VM's cgroups.
	start := os.NewFile(jailStartFd, "start")
	var b [1]byte
	if n, _ := start.Read(b[:]); n != 1 {
		fail("the driver went away before the VM started")
	}
	start.Close()
	// 2. The mount namespace and its root: on this thread, which execs.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		fail("unshare: %v", err)
	}
	if err := buildRoot(s); err != nil {
		fail("%v", err)
	}
	// 3. The VM's own uid, nothing more.
	if err := syscall.Setgroups(s.Groups); err != nil {
		fail("setgroups: %v", err)
	}
	if err := syscall.Setresgid(s.UID, s.UID, s.UID); err != nil {
		fail("setresgid: %v", err)
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		fail("setresuid: %v", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fail("no_new_privs: %v", err)
	}
	if s.Pdeath {
		// Changing credentials cleared the parent-death signal: set it
		// again, and die now if the parent is already gone.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			fail("pdeathsig: %v", err)
		}
		if os.Getppid() != s.ParentPID {
			os.Exit(125)
		}
	}
	env := []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	err := syscall.Exec(s.Binary, append([]string{s.Binary}, qemuArgs...), env)
	fail("exec %s: %v", s.Binary, err)
}

// buildRoot makes the jail's root in a tmpfs on <state>/.root and pivots
// into it. The calling thread must be in a mount namespace of its own.
func buildRoot(s jailSpec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := s.Root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("tandem-jail", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("tmpfs root: %w", err)
	}
	in := func(p string) string { return filepath.Join(root, p) }
	// The system's programs and libraries, read-only; merged-/usr links
	// as the host has them.
	if err := bind("/usr", in("/usr"), true, true, true); err != nil {
		return err
	}
	for _, d := range []string{"/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, in(d)); err != nil {
				return err
			}
		default:
			if err := bind(d, in(d), true, true, true); err != nil {
				return err
			}
		}
	}
	if fileExists("/etc/ld.so.cache") {
		if err := bind("/etc/ld.so.cache", in("/etc/ld.so.cache"), false, false, true); err != nil {
			return err
		}
	}
	// /dev: a few harmless nodes, and the VM's devices.
	if err := os.MkdirAll(in("/dev"), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tandem-dev", in("/dev"), "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("tmpfs /dev: %w", err)
	}
	for _, d := range append([]string{"null", "zero", "full", "random", "urandom"}, s.Devices...) {
		if err := bind("/dev/"+d, in("/dev/"+d), false, false, false); err != nil {
			return err
		}
	}
	// /proc of its own processes only; an empty /tmp.
	if err := os.MkdirAll(in("/proc"), 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", in("/proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "hidepid=invisible"); err != nil {
		return fmt.Errorf("proc: %w", err)
	}
	if err := os.MkdirAll(in("/tmp"), 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("tandem-tmp", in("/tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=16m"); err != nil {
		return fmt.Errorf("tmpfs /tmp: %w", err)
	}
	// The VM's own files, at their own paths.
	for _, f := range s.ReadOnly {
		if err := bind(f, in(f), false, false, true); err != nil {
			return err
		}
	}
	if err := bind(s.StateDir, in(s.StateDir), true, false, false); err != nil {
		return err
	}
	// In.
	old := in("/.old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("read-only root: %w", err)
	}
	return unix.Chdir(s.StateDir)
}

// bind mounts src on dst (made as a directory or an empty file, like
// src), with what is mounted below src if rec, optionally read-only.
func bind(src, dst string, dir, rec, ro bool) error {
	if dir {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	flags := uintptr(unix.MS_BIND)
	if rec {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(src, dst, "", flags, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	remount := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID)
	if ro {
		remount |= unix.MS_RDONLY | unix.MS_NODEV
	}
	if err := unix.Mount("", dst, "", remount, ""); err != nil {
		return fmt.Errorf("remount %s: %w", src, err)
	}
	return nil
}

// jailGroups returns the supplementary groups QEMU needs: /dev/kvm's,
// under KVM.
func jailGroups(kvm bool) []int {
	if !kvm {
		return []int{}
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil {
		return []int{}
	}
	return []int{int(st.Gid)}
}

// openTAP opens the persistent TAP name for QEMU (IFF_TAP|IFF_NO_PI, with
// virtio-net headers), so that QEMU needs no /dev/net/tun and no
// privilege to attach.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// takenUIDs returns the uids the driver's recorded VMs hold.
func (d *Driver) takenUIDs() map[int]bool {
	taken := map[int]bool{}
	ids, _ := d.ids()
	for _, id := range ids {
		if r, err := d.readRecord(id); err == nil && r.UID != 0 {
			taken[r.UID] = true
		}
	}
	return taken
}

// readOnlyFiles returns the VM's files QEMU reads, absolute and sorted.
func readOnlyFiles(files ...string) ([]string, error) {
	var out []string
	for _, f := range files {
		if f == "" {
			continue
		}
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	sort.Strings(out)
	return out, nil
}

// isJail reports whether a process's argv[0] is the jail's (before it
// becomes QEMU).
func isJail(arg0 string) bool { return strings.HasPrefix(arg0, jailArg0) }
