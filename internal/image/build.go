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
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/hostdeps"
)

// BuildOptions say what to build.
type BuildOptions struct {
	// Kind is "test" (busybox and tandem-guest on a small disk; builds in
	// seconds) or "runner" (Debian with systemd, Docker, build tools and
	// GitHub's runner; see runner.go).
	Kind        string
	Arch        string // "amd64" or "arm64"
	GuestBinary string // tandem-guest, static, for Arch
	// FakeRunnerBinary, if set, is tandem-fakerunner (static, for Arch),
	// installed as /usr/bin/tandem-fakerunner: the stand-in for GitHub's
	// runner that the control plane's tests start against ghfake.
	FakeRunnerBinary string
	KernelDeb        string // optional: a linux-image .deb to use instead of Debian's cloud kernel
	CacheDir         string // where fetched .debs are kept; "" = <store>/cache
	Progress         io.Writer
	// RootfsSizeMiB is the root filesystem's size (sparse); 0 = 256 for
	// the test image, 10240 for the runner image.
	RootfsSizeMiB int
	// RunnerTarball is GitHub's runner (actions-runner-linux-<arch>-<v>.tar.gz)
	// for a runner image; "" builds one without (see BuildOptions.Kind).
	RunnerTarball string
	// Mirrors are Debian mirrors (or sources.list lines or files) for a
	// runner image, as mmdebstrap takes them; none: mmdebstrap's default.
	Mirrors []string
}

// guestModules are what tandem-guest needs from the kernel: the virtio-mmio
// transport and the block, console (virtio-serial) and network devices.
// Built-in ones are skipped; dependencies are added.
var guestModules = []string{"virtio_mmio", "virtio_blk", "virtio_console", "virtio_net"}

// Build builds an image and points the ref <kind>-<arch> at it. Building the
// same inputs again yields the same id (and keeps the stored copy).
//
// The image is built in a directory .build-* inside the store and renamed
// into blobs/ when complete, so blobs/ never holds half an image; builds
// into one store take turns (an flock on <root>/.lock), and a build removes
// what a crashed one left.
func (s *Store) Build(ctx context.Context, o BuildOptions) (*Image, error) {
	start := time.Now()
	if o.Kind != "test" && o.Kind != "runner" {
		return nil, fmt.Errorf("unknown image kind %q (want test or runner)", o.Kind)
	}
	if o.Arch != "amd64" && o.Arch != "arm64" {
		return nil, fmt.Errorf("unknown architecture %q (want amd64 or arm64)", o.Arch)
	}
	if o.Kind != "runner" && (o.RunnerTarball != "" || len(o.Mirrors) > 0) {
		return nil, fmt.Errorf("a runner tarball and Debian mirrors are for runner images, not %s images", o.Kind)
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(s.root, "cache")
	}
	if o.RootfsSizeMiB == 0 {
		o.RootfsSizeMiB = 256
		if o.Kind == "runner" {
			o.RootfsSizeMiB = runnerRootfsMiB
		}
	}
	if o.RootfsSizeMiB < 16 {
		return nil, fmt.Errorf("root filesystem size %d MiB: want at least 16", o.RootfsSizeMiB)
	}
	p := &progress{w: o.Progress, start: start}
	needs := hostdeps.TestImage(o.Arch)
	if o.Kind == "runner" {
		if o.RunnerTarball != "" {
			if _, err := os.Stat(o.RunnerTarball); err != nil {
				return nil, fmt.Errorf("runner tarball: %w", err)
			}
		}
		needs = hostdeps.RunnerImage(o.Arch)
	}
	if err := hostdeps.Check(needs); err != nil {
		return nil, fmt.Errorf("building a %s image for %s: %w", o.Kind, o.Arch, err)
	}
	if o.GuestBinary == "" {
		return nil, errors.New("no tandem-guest binary given (BuildOptions.GuestBinary)")
	}
	guestBin, err := os.ReadFile(o.GuestBinary)
	if err != nil {
		return nil, fmt.Errorf("tandem-guest binary: %w", err)
	}
	if err := checkStaticELF(o.GuestBinary, o.Arch); err != nil {
		return nil, fmt.Errorf("tandem-guest binary %s: %w", o.GuestBinary, err)
	}
	var fakeRunner []byte
	if o.FakeRunnerBinary != "" {
		if fakeRunner, err = os.ReadFile(o.FakeRunnerBinary); err != nil {
			return nil, fmt.Errorf("tandem-fakerunner binary: %w", err)
		}
		if err := checkStaticELF(o.FakeRunnerBinary, o.Arch); err != nil {
			return nil, fmt.Errorf("tandem-fakerunner binary %s: %w", o.FakeRunnerBinary, err)
		}
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(s.root, ".lock"), true, func() { p.step("waiting for another build in %s", s.root) })
	if err != nil {
		return nil, err
	}
	defer unlock()
	s.removeStale()

	work, err := os.MkdirTemp(s.root, ".build-")
	if err != nil {
		return nil, err
	}
	defer removeBuildDir(work)
	out := filepath.Join(work, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, err
	}

	// 1. Which packages, and fetch them.
	p.step("asking apt for %s packages", o.Arch)
	kdeb, bb, err := resolvePackages(ctx, o.Arch, o.KernelDeb == "")
	if err != nil {
		return nil, err
	}
	if o.KernelDeb != "" {
		if kdeb, err = localDeb(ctx, o.KernelDeb, o.Arch); err != nil {
			return nil, err
		}
		p.step("kernel package %s %s from %s", kdeb.Package, kdeb.Version, o.KernelDeb)
	} else if kdeb, err = fetchDeb(ctx, p, kdeb, o.CacheDir); err != nil {
		return nil, err
	}
	if o.Kind == "test" {
		if bb, err = fetchDeb(ctx, p, bb, o.CacheDir); err != nil {
			return nil, err
		}
	} else {
		bb = debFile{} // a runner image has Debian's userland, not busybox
	}

	// 2. The root filesystem is independent of the kernel: build it while
	// the kernel package unpacks (dpkg-deb is single-threaded).
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var rootErr error
	var tree *runnerTree
	wg.Add(1)
	go func() {
		defer wg.Done()
		if o.Kind == "runner" {
			tree, rootErr = bootstrapRunner(rctx, p, work, o, guestBin, fakeRunner)
			return
		}
		rootErr = buildTestRootfs(rctx, p, work, bb, guestBin, fakeRunner, o, filepath.Join(out, RootfsFile))
	}()
	kernelName, kernel, kver, initrd, modOrder, kerr := buildBoot(ctx, p, work, kdeb, guestBin, o.Arch)
	if kerr == nil && o.Kind == "runner" {
		kerr = checkKernelConfig(filepath.Join(work, "kernel-pkg"), kver)
	}
	if kerr != nil {
		cancel()
	}
	wg.Wait()
	if err := errors.Join(kerr, rootErr); err != nil {
		return nil, err
	}
	var contents []byte
	if tree != nil {
		if contents, err = finishRunnerRootfs(ctx, p, work, tree, kver, o.RootfsSizeMiB, filepath.Join(out, RootfsFile)); err != nil {
			return nil, err
		}
	}

	// 3. The files, the manifest, and into the store.
	m := Manifest{
		Schema: 1, Kind: o.Kind, Arch: o.Arch,
		Kernel:                KernelInfo{Package: kdeb.Package, PackageVersion: kdeb.Version, Version: kver, DebSHA256: kdeb.SHA256},
		Modules:               modOrder,
		GuestSHA256:           sha256hex(guestBin),
		FakeRunnerSHA256:      optSHA256(fakeRunner),
		BusyboxPackageVersion: bb.Version,
		Cmdline:               recommendedCmdline(o.Arch),
		Runner:                testRunnerInfo(fakeRunner),
		Created:               time.Now().UTC().Format(time.RFC3339),
		Files:                 map[string]FileInfo{},
	}
	names := []string{kernelName, InitrdFile, RootfsFile}
	written := map[string][]byte{kernelName: kernel, InitrdFile: initrd}
	if tree != nil {
		m.Runner, m.Packages = tree.runner, tree.packages
		written[ContentsFile] = contents
		names = append(names, ContentsFile)
	}
	stamps := map[string]verifiedStamp{}
	for name, data := range written {
		if err := writeFileSync(filepath.Join(out, name), data); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(filepath.Join(out, RootfsFile), 0o444); err != nil {
		return nil, err
	}
	if err := syncFile(filepath.Join(out, RootfsFile)); err != nil {
		return nil, err
	}
	for _, n := range names {
		// Stat before hashing: if the file changed after the stat, the
		// stamp will not match and the next Verify re-hashes it.
		st, err := statStamp(filepath.Join(out, n))
		if err != nil {
			return nil, err
		}
		if data, ok := written[n]; ok {
			st.SHA = sha256hex(data)
		} else {
			if st.SHA, err = fileSHA256(filepath.Join(out, n)); err != nil {
				return nil, err
			}
		}
		m.Files[n] = FileInfo{SHA256: st.SHA, Size: st.Size}
		stamps[n] = st
	}
	id := m.ID()
	if err := s.commit(p, out, m, id, stamps); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(s.root, "refs", o.Kind+"-"+o.Arch), []byte(id+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("image ref: %w", err)
	}
	im, err := s.load(id)
	if err != nil {
		return nil, err
	}
	p.step("built %s-%s as %s in %s", o.Kind, o.Arch, id, time.Since(start).Round(time.Millisecond))
	return im, nil
}

// buildBoot makes what the kernel boots from: the kernel itself, and the
// initramfs with tandem-guest as /init and the modules it loads.
func buildBoot(ctx context.Context, p *progress, work string, kdeb debFile, guestBin []byte, arch string) (kernelName string, kernel []byte, kver string, initrd []byte, order []string, err error) {
	kdir := filepath.Join(work, "kernel-pkg")
	if err = dpkgExtract(ctx, kdeb.Path, kdir); err != nil {
		return
	}
	if kver, kernel, err = extractKernel(kdir, arch); err != nil {
		return
	}
	kernelName = kernelFileName(arch)
	p.step("kernel %s: %s %.1f MiB", kver, kernelName, float64(len(kernel))/(1<<20))
	mods, order, err := collectModules(kdir, kver)
	if err != nil {
		return
	}
	p.step("modules, in load order: %s", strings.Join(order, " "))
	initrd, err = buildInitramfs(guestBin, mods, order)
	if err != nil {
		return
	}
	p.step("initramfs: %.1f MiB", float64(len(initrd))/(1<<20))
	return
}

// buildInitramfs writes the initramfs: an uncompressed newc archive (the
// kernel unpacks it without spending time on decompression).
func buildInitramfs(guestBin []byte, mods map[string][]byte, order []string) ([]byte, error) {
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
	var b bytes.Buffer
	if err := writeCpio(&b, entries); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// commit moves a built image directory into blobs/<id>, unless an intact
// copy is there already.
func (s *Store) commit(p *progress, dir string, m Manifest, id string, stamps map[string]verifiedStamp) error {
	dest := filepath.Join(s.root, "blobs", id)
	if im, err := s.load(id); err == nil {
		// A rebuild is what an operator does about a damaged image: look
		// at every byte, not at the remembered stamps.
		if err := im.VerifyFull(); err == nil {
			p.step("image %s is in the store already", id)
			return nil
		}
		p.step("replacing the damaged copy of %s", id)
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileSync(filepath.Join(dir, manifestFile), append(b, '\n')); err != nil {
		return err
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dest); err != nil {
		return fmt.Errorf("remove the damaged copy of %s: %w", id, err)
	}
	if err := os.Rename(dir, dest); err != nil {
		return fmt.Errorf("store image: %w", err)
	}
	if err := fsutil.SyncDir(filepath.Dir(dest)); err != nil {
		return err
	}
	// Hashed just now: remember that, so the first boot does not hash the
	// files again. (A rename does not change the files' stamps; a stamp
	// that does not match any more is simply hashed on the next Verify.)
	im := &Image{ID: id, Dir: dest, Manifest: m}
	im.saveStamps(stamps)
	return nil
}

// removeStale deletes build directories left by a build that crashed. It
// runs with the store locked, so no build is using them.
func (s *Store) removeStale() {
	stale, _ := filepath.Glob(filepath.Join(s.root, ".build-*"))
	for _, d := range stale {
		removeBuildDir(d)
	}
}

func recommendedCmdline(arch string) string {
	if arch == "arm64" {
		return "console=ttyAMA0 panic=-1 quiet"
	}
	return "console=ttyS0 reboot=t panic=-1 quiet"
}

// progress writes one line per build step, with the time since the start.
type progress struct {
	w     io.Writer
	start time.Time
	mu    sync.Mutex
}

func (p *progress) step(format string, args ...any) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%5.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeFileSync writes a read-only file and flushes it to disk.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o444)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

func optSHA256(b []byte) string {
	if b == nil {
		return ""
	}
	return sha256hex(b)
}

// testRunnerInfo is how a test image starts its runner: tandem-fakerunner
// as root, when the image has it.
func testRunnerInfo(fakeRunner []byte) *RunnerInfo {
	if fakeRunner == nil {
		return nil
	}
	return &RunnerInfo{Command: []string{fakeRunnerPath}}
}
