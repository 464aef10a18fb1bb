package image

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/testenv"
)

func buildGuest(t *testing.T, arch string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tandem-guest-"+arch)
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/tandem-guest")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest: %v\n%s", err, b)
	}
	return out
}

// TestBuild builds the test image of each architecture from Debian's
// packages, twice into two stores: the same inputs must give the same id.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches Debian packages and builds images: not run with -short")
	}
	testenv.RequireRoot(t)
	cache := filepath.Join(os.TempDir(), "tandem-test-debs")
	if d := os.Getenv("TANDEM_TEST_DATA"); d != "" {
		cache = filepath.Join(d, "cache")
	}
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) {
			guest := buildGuest(t, arch)
			var ids []string
			for i := range 2 {
				s, err := Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				var progress strings.Builder
				im, err := s.Build(context.Background(), BuildOptions{Kind: "test", Arch: arch, GuestBinary: guest, CacheDir: cache, Progress: &progress})
				if err != nil {
					t.Fatalf("build: %v\n%s", err, progress.String())
				}
				t.Logf("build #%d of %s: %s, id %s", i+1, arch, time.Since(start).Round(time.Millisecond), im.ID)
				ids = append(ids, im.ID)
				checkImage(t, im, arch)
			}
			if ids[0] != ids[1] {
				t.Errorf("two builds of the same inputs: ids %s and %s", ids[0], ids[1])
			}
		})
	}
}

func checkImage(t *testing.T, im *Image, arch string) {
	t.Helper()
	m := im.Manifest
	if m.Arch != arch || !strings.HasSuffix(m.Kernel.Version, "-cloud-"+arch) || m.GuestSHA256 == "" {
		t.Errorf("manifest: %+v", m)
	}
	if !slices.Contains(m.Modules, "virtio_blk") || !slices.Contains(m.Modules, "virtio_console") {
		t.Errorf("modules: %v", m.Modules)
	}
	if slices.Index(m.Modules, "virtio_ring") > slices.Index(m.Modules, "virtio_blk") {
		t.Errorf("virtio_ring must load before virtio_blk: %v", m.Modules)
	}
	switch arch {
	case "amd64":
		f, err := elf.Open(im.Kernel())
		if err != nil {
			t.Fatalf("kernel is not an ELF: %v", err)
		}
		if f.Machine != elf.EM_X86_64 {
			t.Errorf("kernel machine %v", f.Machine)
		}
		f.Close()
	case "arm64":
		b := make([]byte, 64)
		f, _ := os.Open(im.Kernel())
		f.Read(b)
		f.Close()
		if string(b[56:60]) != "ARM\x64" {
			t.Error("arm64 kernel lacks the Image magic")
		}
	}
	out, err := exec.Command("debugfs", "-R", "ls -l /bin", im.Rootfs()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "busybox") {
		t.Errorf("rootfs /bin: %v\n%s", err, out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /usr/bin/tandem-guest", im.Rootfs()).CombinedOutput()
	if !strings.Contains(string(out), "Type: regular") {
		t.Errorf("rootfs lacks tandem-guest:\n%s", out)
	}
	if err := im.VerifyFull(); err != nil {
		t.Error(err)
	}
}

func TestBuildBadInput(t *testing.T) {
	s, _ := Open(t.TempDir())
	ctx := context.Background()
	if _, err := s.Build(ctx, BuildOptions{Kind: "runner", Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "unknown image kind") {
		t.Errorf("kind: %v", err)
	}
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "mips"}); err == nil || !strings.Contains(err.Error(), "unknown architecture") {
		t.Errorf("arch: %v", err)
	}
	self, _ := os.Executable() // the test binary: built for this arch, not the other one
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: other, GuestBinary: self}); err == nil || !strings.Contains(err.Error(), "tandem-guest binary") {
		t.Errorf("wrong-arch guest: %v", err)
	}
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "amd64", GuestBinary: "/nonexistent"}); err == nil {
		t.Error("missing guest accepted")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.root, "blobs")); len(ents) != 0 {
		t.Errorf("failed builds left %d entries in the store", len(ents))
	}
}
