package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// BuildOptions say what to build.
type BuildOptions struct {
	Kind        string // "test": busybox + tandem-guest
	Arch        string // "amd64" or "arm64"
	GuestBinary string // tandem-guest, static, for Arch
	KernelDeb   string // optional: a linux-image .deb to use instead of Debian's cloud kernel
	CacheDir    string // where fetched .debs are kept; "" = <store>/cache
	Progress    io.Writer
	// RootfsSizeMiB is the root filesystem's size (sparse); 0 = 256.
	RootfsSizeMiB int
}

// guestModules are what tandem-guest needs from the kernel: the virtio-mmio
// transport and the block, console (virtio-serial) and network devices.
// Built-in ones are skipped; dependencies are added.
var guestModules = []string{"virtio_mmio", "virtio_blk", "virtio_console", "virtio_net"}

// Build builds an image and points the ref <kind>-<arch> at it. Building the
// same inputs again yields the same id and reuses the stored image.
func (s *Store) Build(ctx context.Context, o BuildOptions) (*Image, error) {
	start := time.Now()
	if o.Kind != "test" {
		return nil, fmt.Errorf("unknown image kind %q (want test)", o.Kind)
	}
	if o.Arch != "amd64" && o.Arch != "arm64" {
		return nil, fmt.Errorf("unknown architecture %q (want amd64 or arm64)", o.Arch)
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(s.root, "cache")
	}
	if o.RootfsSizeMiB == 0 {
		o.RootfsSizeMiB = 256
	}
	p := progress{w: o.Progress, start: start}
	guestBin, err := os.ReadFile(o.GuestBinary)
	if err != nil {
		return nil, fmt.Errorf("tandem-guest binary: %w", err)
	}
	if err := checkStaticELF(o.GuestBinary, o.Arch); err != nil {
		return nil, fmt.Errorf("tandem-guest binary %s: %w", o.GuestBinary, err)
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockFile(filepath.Join(s.root, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	work, err := os.MkdirTemp(s.root, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	out := filepath.Join(work, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, err
	}

	// 1. The kernel and its modules.
	var deb debFile
	if o.KernelDeb != "" {
		p.step("using kernel package %s", o.KernelDeb)
		deb, err = localDeb(ctx, o.KernelDeb)
	} else {
		p.step("resolving Debian's cloud kernel for %s", o.Arch)
		deb, err = fetchDeb(ctx, p, kernelMetaPackage(o.Arch), o.Arch, o.CacheDir, true)
	}
	if err != nil {
		return nil, err
	}
	kdir := filepath.Join(work, "kernel-pkg")
	if err := dpkgExtract(ctx, deb.Path, kdir); err != nil {
		return nil, err
	}
	kver, kernel, err := extractKernel(kdir, o.Arch)
	if err != nil {
		return nil, err
	}
	p.step("kernel %s: %.1f MiB uncompressed", kver, float64(len(kernel))/(1<<20))
	if err := os.WriteFile(filepath.Join(out, KernelFile), kernel, 0o644); err != nil {
		return nil, err
	}
	mods, order, err := collectModules(kdir, kver)
	if err != nil {
		return nil, err
	}
	p.step("modules: %s", strings.Join(order, " "))

	// 2. The initramfs: tandem-guest as /init and the modules it loads.
	entries := []cpioEntry{
		{Name: "dev", Mode: modeDir | 0o755}, {Name: "dev/console", Mode: modeChr | 0o600, Major: 5, Minor: 1},
		{Name: "proc", Mode: modeDir | 0o555}, {Name: "sys", Mode: modeDir | 0o555},
		{Name: "newroot", Mode: modeDir | 0o755}, {Name: "etc", Mode: modeDir | 0o755},
		{Name: "etc/tandem", Mode: modeDir | 0o755}, {Name: "lib", Mode: modeDir | 0o755},
		{Name: "lib/modules", Mode: modeDir | 0o755},
		{Name: "init", Mode: modeReg | 0o755, Data: guestBin},
	}
	var list strings.Builder
	for _, m := range order {
		entries = append(entries, cpioEntry{Name: "lib/modules/" + m + ".ko", Mode: modeReg | 0o644, Data: mods[m]})
		list.WriteString(m + ".ko\n")
	}
	entries = append(entries, cpioEntry{Name: "etc/tandem/modules", Mode: modeReg | 0o644, Data: []byte(list.String())})
	var cpio bytes.Buffer
	if err := writeCpio(&cpio, entries); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, InitrdFile), cpio.Bytes(), 0o644); err != nil {
		return nil, err
	}
	p.step("initramfs: %.1f MiB", float64(cpio.Len())/(1<<20))

	// 3. The root filesystem.
	bb, err := fetchDeb(ctx, p, "busybox-static", o.Arch, o.CacheDir, false)
	if err != nil {
		return nil, err
	}
	if err := buildTestRootfs(ctx, p, work, bb, guestBin, o, filepath.Join(out, RootfsFile)); err != nil {
		return nil, err
	}

	// 4. The manifest, and into the store.
	m := Manifest{
		Schema: 1, Kind: o.Kind, Arch: o.Arch,
		Kernel:         KernelInfo{Package: deb.Package, PackageVersion: deb.Version, Version: kver, DebSHA256: deb.SHA256},
		Modules:        order,
		GuestSHA256:    sha256hex(guestBin),
		BusyboxVersion: bb.Version,
		Cmdline:        recommendedCmdline(o.Arch),
		Created:        time.Now().UTC().Format(time.RFC3339),
		Files:          map[string]FileInfo{},
	}
	for _, n := range []string{KernelFile, InitrdFile, RootfsFile} {
		sum, err := fileSHA256(filepath.Join(out, n))
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(filepath.Join(out, n))
		if err != nil {
			return nil, err
		}
		m.Files[n] = FileInfo{SHA256: sum, Size: fi.Size()}
	}
	id := m.ID()
	dest := filepath.Join(s.root, "blobs", id)
	if im, err := s.load(id); err == nil && im.VerifyFull() == nil {
		p.step("image %s already in the store", id)
	} else {
		b, _ := json.MarshalIndent(m, "", "  ")
		if err := os.WriteFile(filepath.Join(out, manifestFile), b, 0o644); err != nil {
			return nil, err
		}
		for _, n := range []string{KernelFile, InitrdFile, RootfsFile, manifestFile} {
			os.Chmod(filepath.Join(out, n), 0o444) // the base of every VM: never written
		}
		os.RemoveAll(dest) // a damaged earlier copy
		if err := os.Rename(out, dest); err != nil {
			return nil, fmt.Errorf("store image: %w", err)
		}
	}
	ref := filepath.Join(s.root, "refs", o.Kind+"-"+o.Arch)
	if err := writeAtomic(ref, []byte(id+"\n")); err != nil {
		return nil, err
	}
	im, err := s.load(id)
	if err != nil {
		return nil, err
	}
	if err := im.Verify(); err != nil {
		return nil, err
	}
	p.step("built %s-%s as %s in %s", o.Kind, o.Arch, id, time.Since(start).Round(time.Millisecond))
	return im, nil
}

func recommendedCmdline(arch string) string {
	if arch == "arm64" {
		return "console=ttyAMA0 panic=-1 quiet"
	}
	return "console=ttyS0 reboot=t panic=-1 quiet"
}

type progress struct {
	w     io.Writer
	start time.Time
}

func (p progress) step(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "[%5.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// lockFile takes an exclusive flock, so that two builds into one store do
// not race.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
