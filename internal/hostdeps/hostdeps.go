// Package hostdeps names what Tandem needs from the host it runs on: every
// program it executes, the Debian package each comes from and what needs
// it, and the kernel's binfmt_misc registrations that let a foreign
// architecture's programs run. A task checks all it needs once, before it
// starts, so that a missing program is reported by name together with the
// package that installs it, and never surfaces as an error from deep inside
// a build or a VM start.
//
// The tables here are the one list: scripts/install-deps.sh must install
// every package they name (a test checks this), and every program run
// through os/exec with a literal name must appear in them (a test checks
// that too).
package hostdeps

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Requirement is one thing a task needs from the host: a program, or a
// binfmt_misc registration.
type Requirement struct {
	Name    string // the program, or "binfmt_misc qemu-aarch64"
	Package string // the Debian package that provides it
	Why     string // what needs it
	// Fix says how to satisfy it when installing Package is not enough.
	Fix string
	// binfmt names the binfmt_misc entry for a registration; empty for a
	// program.
	binfmt string
}

// Status is a Requirement as found on this host.
type Status struct {
	Requirement
	Path string // where the program is; empty when missing
	Err  error  // why it is missing or unusable; nil when satisfied
}

// program returns the requirement for a program in the table.
func program(name string) Requirement {
	r, ok := programs[name]
	if !ok {
		panic("hostdeps: program " + name + " is not in the table")
	}
	return r
}

// programs is every program Tandem, its build and its tests run.
var programs = func() map[string]Requirement {
	m := map[string]Requirement{}
	add := func(pkg, why string, names ...string) {
		for _, n := range names {
			m[n] = Requirement{Name: n, Package: pkg, Why: why}
		}
	}
	add("qemu-system-x86", "boots amd64 VMs", "qemu-system-x86_64")
	add("qemu-system-arm", "boots arm64 VMs", "qemu-system-aarch64")
	add("qemu-utils", "makes each VM's copy-on-write disk", "qemu-img")
	add("nftables", "NATs and filters VM traffic", "nft")
	add("iproute2", "sets up the tests' and the demo's network namespaces", "ip")
	add("e2fsprogs", "makes and checks images' ext4 root filesystems", "mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs")
	add("apt", "fetches kernels and packages for images from Debian", "apt-get", "apt-cache")
	add("dpkg", "unpacks and lists Debian packages", "dpkg-deb", "dpkg-query")
	add("mmdebstrap", "builds runner images' Debian trees", "mmdebstrap")
	add("arch-test", "lets mmdebstrap build a tree of another architecture", "arch-test")
	add("kmod", "indexes a runner image's kernel modules", "depmod")
	add("coreutils", "builds runner images", "chroot", "cp", "uname")
	add("util-linux", "enters the tests' namespaces and sessions", "nsenter", "setsid")
	add("lz4", "checks the kernel decompressor against the reference encoder (tests)", "lz4")
	add("prometheus", "lints the control plane's /metrics exposition (tests)", "promtool")
	add("gcc", "compiles the race detector's runtime (go test -race)", "gcc")
	add("git", "extracts the previous commit to build the binary an upgrade starts from (tests)", "git")
	add("tar", "packs and unpacks runner tarballs", "tar")
	add("qemu-user-static", "runs another architecture's programs (image builds, arm64 tests)",
		"qemu-aarch64-static", "qemu-x86_64-static")
	add("docker-registry", "serves each host's registry mirror", "docker-registry")
	add("dash", "runs shell commands", "sh")
	add("bash", "runs a job-started hook as GitHub's runner does (tandem-fakerunner; sh without it)", "bash")
	add("postgresql", "runs the PostgreSQL servers of the PostgreSQL store's tests", "initdb", "postgres")
	return m
}()

// versionedDirs are where Debian keeps programs outside PATH, one
// directory per version (newest searched first), by program.
var versionedDirs = map[string]string{
	"initdb":   "/usr/lib/postgresql/*/bin",
	"postgres": "/usr/lib/postgresql/*/bin",
}

// NativeArch is the Debian (and Go) name of this host's architecture.
func NativeArch() string { return runtime.GOARCH }

var qemuSystem = map[string]string{"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
var qemuUser = map[string]string{"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}

// QEMU is what booting a VM of arch needs.
func QEMU(arch string) []Requirement {
	b, ok := qemuSystem[arch]
	if !ok {
		return nil
	}
	return []Requirement{program(b), program("qemu-img")}
}

// Network is what a host's VM network needs.
func Network() []Requirement { return []Requirement{program("nft")} }

// Mirror is what a host's registry mirror needs.
func Mirror() []Requirement { return []Requirement{program("docker-registry")} }

// TestImage is what building a test image of arch needs.
func TestImage(arch string) []Requirement {
	r := []Requirement{program("apt-get"), program("apt-cache"), program("dpkg-deb"), program("mkfs.ext4"), program("debugfs")}
	if arch != NativeArch() {
		// To list a foreign busybox's applets; without it the build falls
		// back to reading them out of the binary.
		if q, ok := qemuUser[arch]; ok {
			r = append(r, program(q+"-static"))
		}
	}
	return r
}

// RunnerImage is what building a runner image of arch needs.
func RunnerImage(arch string) []Requirement {
	r := append(TestImage(arch), program("mmdebstrap"), program("chroot"), program("cp"), program("depmod"), program("dpkg-query"))
	if arch != NativeArch() {
		r = append(r, program("arch-test"), Binfmt(arch))
	}
	return r
}

// Binfmt is the kernel's binfmt_misc registration that runs arch's programs
// through qemu-user, also inside a chroot (the F flag).
func Binfmt(arch string) Requirement {
	q := qemuUser[arch]
	return Requirement{Name: "binfmt_misc " + q, Package: "qemu-user-static", binfmt: q,
		Why: "runs " + arch + " package scripts in " + arch + " runner image builds",
		Fix: "apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable " + q}
}

// Tests is what the test suite needs on a host that runs all of it (as
// root, with VMs and both architectures' images).
func Tests() []Requirement {
	var r []Requirement
	for _, a := range []string{"amd64", "arm64"} {
		r = append(r, QEMU(a)...)
		r = append(r, RunnerImage(a)...)
	}
	r = append(r, Network()...)
	r = append(r, Mirror()...)
	for _, n := range []string{"ip", "nsenter", "setsid", "e2fsck", "dumpe2fs", "tar", "sh", "uname", "lz4", "gcc", "git", "qemu-aarch64-static",
		"initdb", "postgres"} {
		r = append(r, program(n))
	}
	return dedupe(r)
}

// All is every requirement in the tables, for listing.
func All() []Requirement {
	var r []Requirement
	for _, p := range programs {
		r = append(r, p)
	}
	for _, a := range []string{"amd64", "arm64"} {
		if a != NativeArch() {
			r = append(r, Binfmt(a))
		}
	}
	sort.Slice(r, func(i, j int) bool { return r[i].Name < r[j].Name })
	return r
}

func dedupe(rs []Requirement) []Requirement {
	seen := map[string]bool{}
	var out []Requirement
	for _, r := range rs {
		if !seen[r.Name] {
			seen[r.Name] = true
			out = append(out, r)
		}
	}
	return out
}

// sbinDirs are searched after PATH: a non-root user's PATH often lacks them.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"}

// Find returns the path of the program name: from PATH, else from the sbin
// directories. A missing program's error names its Debian package when the
// table has it.
func Find(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if !strings.Contains(name, "/") {
		for _, d := range sbinDirs {
			if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
				return p, nil
			}
		}
		if glob, ok := versionedDirs[name]; ok {
			dirs, _ := filepath.Glob(glob)
			slices.SortFunc(dirs, func(a, b string) int { return compareVersions(b, a) }) // newest first
			for _, d := range dirs {
				if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
					return p, nil
				}
			}
		}
	}
	if r, ok := programs[name]; ok {
		return "", &MissingError{Missing: []Status{{Requirement: r, Err: errNotFound}}}
	}
	return "", fmt.Errorf("%s: %w", name, errNotFound)
}

var errNotFound = errors.New("not found")

// compareVersions orders directories .../<version>/bin by their version's
// numbers (15 before 16, 9.6 before 10).
func compareVersions(a, b string) int {
	va := strings.Split(filepath.Base(filepath.Dir(a)), ".")
	vb := strings.Split(filepath.Base(filepath.Dir(b)), ".")
	for i := range max(len(va), len(vb)) {
		var x, y int
		if i < len(va) {
			x, _ = strconv.Atoi(va[i])
		}
		if i < len(vb) {
			y, _ = strconv.Atoi(vb[i])
		}
		if c := cmp.Compare(x, y); c != 0 {
			return c
		}
	}
	return 0
}

// binfmtDir is where the kernel lists binfmt_misc entries (a variable for
// tests).
var binfmtDir = "/proc/sys/fs/binfmt_misc"

// Probe looks for each requirement on this host.
func Probe(reqs ...[]Requirement) []Status {
	var all []Requirement
	for _, rs := range reqs {
		all = append(all, rs...)
	}
	var out []Status
	for _, r := range dedupe(all) {
		s := Status{Requirement: r}
		if r.binfmt != "" {
			s.Err = checkBinfmt(r.binfmt)
			if s.Err == nil {
				s.Path = filepath.Join(binfmtDir, r.binfmt)
			}
		} else if p, err := Find(r.Name); err != nil {
			s.Err = errNotFound
		} else {
			s.Path = p
		}
		out = append(out, s)
	}
	return out
}

// Check returns a *MissingError naming every requirement this host lacks,
// or nil.
func Check(reqs ...[]Requirement) error {
	var missing []Status
	for _, s := range Probe(reqs...) {
		if s.Err != nil {
			missing = append(missing, s)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &MissingError{Missing: missing}
}

func checkBinfmt(name string) error {
	b, err := os.ReadFile(filepath.Join(binfmtDir, name))
	if err != nil {
		if _, serr := os.Stat(filepath.Join(binfmtDir, "register")); serr != nil {
			return errors.New("binfmt_misc is not mounted")
		}
		return errors.New("not registered")
	}
	if !bytes.HasPrefix(b, []byte("enabled")) {
		return errors.New("registered but disabled")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(line, "flags: "); ok && strings.Contains(f, "F") {
			return nil
		}
	}
	return errors.New("registered without the F flag, so programs in a chroot cannot find qemu-user (use the qemu-user-static package's entry)")
}

// MissingError lists what a host lacks.
type MissingError struct {
	Missing []Status
}

// Packages returns the Debian packages that provide what is missing,
// sorted, each once.
func (e *MissingError) Packages() []string {
	seen := map[string]bool{}
	var p []string
	for _, s := range e.Missing {
		if s.Fix == "" && !seen[s.Package] {
			seen[s.Package] = true
			p = append(p, s.Package)
		}
	}
	sort.Strings(p)
	return p
}

func (e *MissingError) Error() string {
	var b strings.Builder
	b.WriteString("this host lacks ")
	for i, s := range e.Missing {
		if i > 0 {
			b.WriteString("; ")
		}
		if s.binfmt != "" {
			fmt.Fprintf(&b, "%s (%v: %s; %s)", s.Name, s.Err, s.Why, s.Fix)
			continue
		}
		fmt.Fprintf(&b, "%s (Debian package %s; %s)", s.Name, s.Package, s.Why)
	}
	if p := e.Packages(); len(p) > 0 {
		fmt.Fprintf(&b, ": apt-get install --no-install-recommends %s", strings.Join(p, " "))
	}
	b.WriteString(" (scripts/install-deps.sh installs everything Tandem uses)")
	return b.String()
}
