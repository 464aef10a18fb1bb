package image

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/testenv"
)

// buildGuest builds tandem-guest for arch. Should it not compile (it is
// written alongside), a static do-nothing program stands in, loudly.
func buildGuest(t *testing.T, arch string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tandem-guest-"+arch)
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/tandem-guest")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	b, err := cmd.CombinedOutput()
	if err == nil {
		return out
	}
	t.Logf("WARNING: tandem-guest does not build (%v), testing with a dummy static binary instead:\n%s", err, b)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module dummy\n\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
	cmd = exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a dummy guest: %v\n%s", err, b)
	}
	return out
}

// TestBuild builds the test image of each architecture from Debian's
// packages: once into one store, then twice at the same time into another.
// The same inputs must give the same id every time.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED with -short: fetches Debian packages with apt and builds real images (run as root without -short)")
	}
	testenv.RequireRoot(t)
	cache := filepath.Join(os.TempDir(), "tandem-test-debs")
	if d := os.Getenv("TANDEM_TEST_DATA"); d != "" {
		cache = filepath.Join(d, "cache")
	}
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) {
			guest := buildGuest(t, arch)
			s1, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var progress bytes.Buffer
			im, err := s1.Build(t.Context(), BuildOptions{Kind: "test", Arch: arch, GuestBinary: guest, CacheDir: cache, Progress: &progress})
			took := time.Since(start)
			if err != nil {
				t.Fatalf("build: %v\n%s", err, progress.String())
			}
			t.Logf("build of %s: %s, id %s\n%s", arch, took.Round(time.Millisecond), im.ID, progress.String())
			if took > 60*time.Second {
				t.Errorf("the build took %s: want well under a minute", took)
			}
			checkImage(t, im, arch, guest)
			if ref, _ := os.ReadFile(filepath.Join(s1.Root(), "refs", "test-"+arch)); strings.TrimSpace(string(ref)) != im.ID {
				t.Errorf("ref test-%s names %q, want %s", arch, ref, im.ID)
			}
			if got, err := s1.Resolve("test-" + arch); err != nil || got.ID != im.ID {
				t.Errorf("resolve test-%s: %v %v", arch, got, err)
			}

			// The same kernel package given as a file: the same image.
			deb := filepath.Join(cache, debFileName(debFile{Package: im.Manifest.Kernel.Package, Version: im.Manifest.Kernel.PackageVersion, Arch: arch}))
			s0, _ := Open(t.TempDir())
			if im0, err := s0.Build(t.Context(), BuildOptions{Kind: "test", Arch: arch, GuestBinary: guest, CacheDir: cache, KernelDeb: deb}); err != nil || im0.ID != im.ID {
				t.Errorf("build with KernelDeb %s: %v, %v", deb, im0, err)
			}

			// Two builds of the same thing at once, into another store.
			s2, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			ids := make([]string, 2)
			for i := range 2 {
				wg.Go(func() {
					start := time.Now()
					im2, err := s2.Build(t.Context(), BuildOptions{Kind: "test", Arch: arch, GuestBinary: guest, CacheDir: cache})
					if err != nil {
						t.Errorf("concurrent build %d: %v", i, err)
						return
					}
					ids[i] = im2.ID
					t.Logf("concurrent build %d of %s: done after %s", i, arch, time.Since(start).Round(time.Millisecond))
				})
			}
			wg.Wait()
			if ids[0] != im.ID || ids[1] != im.ID {
				t.Errorf("the same inputs gave ids %s, %s and %s", im.ID, ids[0], ids[1])
			}
			if l, err := s2.List(); err != nil || len(l) != 1 {
				t.Errorf("store after two builds: %v %v", l, err)
			} else {
				checkImage(t, l[0], arch, guest)
			}
			if stale, _ := filepath.Glob(filepath.Join(s2.Root(), ".build-*")); len(stale) != 0 {
				t.Errorf("builds left %v", stale)
			}
		})
	}
}

func checkImage(t *testing.T, im *Image, arch, guest string) {
	t.Helper()
	m := im.Manifest
	guestBin, _ := os.ReadFile(guest)
	if m.Schema != 1 || m.Kind != "test" || m.Arch != arch || m.GuestSHA256 != sha256hex(guestBin) || m.BusyboxPackageVersion == "" {
		t.Errorf("manifest: %+v", m)
	}
	if !strings.HasPrefix(m.Kernel.Package, "linux-image-") || !strings.HasSuffix(m.Kernel.Version, "-cloud-"+arch) || len(m.Kernel.DebSHA256) != 64 {
		t.Errorf("manifest kernel: %+v", m.Kernel)
	}
	if m.Cmdline != recommendedCmdline(arch) {
		t.Errorf("cmdline %q", m.Cmdline)
	}
	if _, err := time.Parse(time.RFC3339, m.Created); err != nil {
		t.Errorf("created: %v", err)
	}
	if len(m.Files) != 3 || m.Files[kernelFileName(arch)].Size == 0 || m.Files[RootfsFile].Size != 256<<20 {
		t.Errorf("files: %v", m.Files)
	}
	for _, ms := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "virtio_blk"}, {"virtio", "virtio_mmio"}, {"virtio", "virtio_console"}, {"net_failover", "virtio_net"}} {
		a, b := slices.Index(m.Modules, ms[0]), slices.Index(m.Modules, ms[1])
		if a < 0 || b < 0 || a > b {
			t.Errorf("modules %v: want %s before %s", m.Modules, ms[0], ms[1])
		}
	}

	// The kernel.
	wantMachine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	switch arch {
	case "amd64":
		if filepath.Base(im.Kernel()) != "vmlinux" {
			t.Errorf("kernel file %s", im.Kernel())
		}
		f, err := elf.Open(im.Kernel())
		if err != nil {
			t.Fatalf("kernel is not an ELF: %v", err)
		}
		if f.Machine != elf.EM_X86_64 {
			t.Errorf("kernel machine %v", f.Machine)
		}
		f.Close()
	case "arm64":
		if filepath.Base(im.Kernel()) != "Image" {
			t.Errorf("kernel file %s", im.Kernel())
		}
		b, _ := os.ReadFile(im.Kernel())
		if len(b) < 64 || string(b[56:60]) != "ARM\x64" {
			t.Error("arm64 kernel lacks the Image magic")
		}
	}

	// The initramfs.
	initrd, err := os.ReadFile(im.Initrd())
	if err != nil {
		t.Fatal(err)
	}
	cpio := cpioMap(readCpio(t, initrd))
	var list strings.Builder
	for _, mod := range m.Modules {
		list.WriteString(mod + ".ko\n")
		f, err := elf.NewFile(bytes.NewReader(cpio["lib/modules/"+mod+".ko"].Data))
		if err != nil || f.Machine != wantMachine || f.Section(".modinfo") == nil {
			t.Errorf("module %s in the initramfs: %v", mod, err)
		}
	}
	if got := string(cpio["etc/tandem/modules"].Data); got != list.String() {
		t.Errorf("/etc/tandem/modules:\n%s\nwant\n%s", got, list.String())
	}
	if e := cpio["init"]; e.Mode != modeReg|0o755 || !bytes.Equal(e.Data, guestBin) {
		t.Errorf("/init: mode %o, %d bytes", e.Mode, len(e.Data))
	}

	// The root filesystem.
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, im.Rootfs()).CombinedOutput()
		if err != nil {
			t.Errorf("debugfs -R %q: %v\n%s", req, err, out)
		}
		return string(out)
	}
	if out := debugfs("ls -l /bin"); !strings.Contains(out, "busybox") || !strings.Contains(out, " sh") {
		t.Errorf("rootfs /bin:\n%s", out)
	}
	if out := debugfs("stat /usr/bin/tandem-guest"); !strings.Contains(out, "Type: regular") || !strings.Contains(out, "Mode:  0755") {
		t.Errorf("rootfs /usr/bin/tandem-guest:\n%s", out)
	}
	if out := debugfs("stat /usr/local/bin/tandem-debug-pause"); !strings.Contains(out, `"/usr/bin/tandem-guest"`) {
		t.Errorf("rootfs /usr/local/bin/tandem-debug-pause is not a link to tandem-guest:\n%s", out)
	}
	if out := debugfs("stat /bin/sh"); !strings.Contains(out, `"/bin/busybox"`) {
		t.Errorf("rootfs /bin/sh:\n%s", out)
	}
	if out := debugfs("stat /tmp"); !strings.Contains(out, "Mode:  01777") {
		t.Errorf("rootfs /tmp is not 01777:\n%s", out)
	}
	if out := debugfs("cat /etc/os-release"); !strings.Contains(out, "Tandem test image") {
		t.Errorf("rootfs /etc/os-release:\n%s", out)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/home", "/var/tmp", "/mnt", "/opt", "/srv", "/usr/local/bin", "/etc/tandem"} {
		if out := debugfs("stat " + d); !strings.Contains(out, "Type: directory") {
			t.Errorf("rootfs %s:\n%s", d, out)
		}
	}
	if out, err := exec.Command("dumpe2fs", "-h", im.Rootfs()).CombinedOutput(); err != nil ||
		strings.Contains(string(out), "has_journal") || !strings.Contains(string(out), "Block size:               4096") ||
		!strings.Contains(string(out), "Filesystem volume name:   tandem-root") {
		t.Errorf("dumpe2fs: %v\n%s", err, out)
	}
	if out, err := exec.Command("e2fsck", "-fn", im.Rootfs()).CombinedOutput(); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, out)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(im.Rootfs(), &st); err == nil && st.Blocks*512 >= st.Size/2 {
		t.Errorf("rootfs is not sparse: %d of %d bytes allocated", st.Blocks*512, st.Size)
	}
	if err := im.Verify(); err != nil {
		t.Error(err)
	}
	if err := im.VerifyFull(); err != nil {
		t.Error(err)
	}
}
