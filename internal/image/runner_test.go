package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// elfHeader is the header of a 64-bit little-endian ELF executable for
// machine: enough for debug/elf to tell the architecture.
func elfHeader(machine uint16) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF\x02\x01\x01")
	h[16] = 2 // ET_EXEC
	h[18], h[19] = byte(machine), byte(machine>>8)
	h[20] = 1 // EV_CURRENT
	h[52] = 64
	return h
}

type tarEntry struct {
	name, link string
	typ        byte
	mode       int64
	body       []byte
}

func makeTarball(t *testing.T, entries []tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write(e.body)
		}
	}
	tw.Close()
	zw.Close()
	p := filepath.Join(t.TempDir(), "actions-runner.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runnerEntries(machine uint16) []tarEntry {
	return []tarEntry{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "./run.sh", typ: tar.TypeReg, mode: 0o755, body: []byte("#!/bin/bash\n")},
		{name: "./bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "./bin/Runner.Listener", typ: tar.TypeReg, mode: 0o755, body: elfHeader(machine)},
		{name: "./bin/libfoo.so", typ: tar.TypeSymlink, link: "libfoo.so.1"},
		{name: "./run-helper.sh", typ: tar.TypeLink, link: "run.sh"},
	}
}

func TestInstallRunnerTarball(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give the files to the runner account")
	}
	tb := makeTarball(t, runnerEntries(62)) // EM_X86_64
	dir := filepath.Join(t.TempDir(), "actions-runner")
	sum, err := installRunnerTarball(tb, dir, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(tb)
	want := sha256.Sum256(b)
	if sum != hex.EncodeToString(want[:]) {
		t.Errorf("sha256 %s, want %x", sum, want)
	}
	st, err := os.Stat(filepath.Join(dir, "run.sh"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("run.sh: %v %v", st, err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "bin", "libfoo.so")); l != "libfoo.so.1" {
		t.Errorf("symlink: %q", l)
	}
	// The runner writes beside itself: everything is the runner account's.
	for _, p := range []string{dir, filepath.Join(dir, "bin", "Runner.Listener"), filepath.Join(dir, "bin", "libfoo.so")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != runnerUID || st.Gid != runnerUID {
			t.Errorf("%s owned by %d:%d, want %d", p, st.Uid, st.Gid, runnerUID)
		}
	}

	// The same tarball for the other architecture is refused, by name.
	_, err = installRunnerTarball(tb, filepath.Join(t.TempDir(), "r"), "arm64")
	if err == nil || !strings.Contains(err.Error(), "actions-runner-linux-arm64") {
		t.Fatalf("wrong arch: %v", err)
	}
}

func TestInstallRunnerTarballRefuses(t *testing.T) {
	for name, entries := range map[string][]tarEntry{
		"no run.sh":      runnerEntries(62)[2:4],
		"escape":         append(runnerEntries(62), tarEntry{name: "../evil", typ: tar.TypeReg, mode: 0o644}),
		"absolute":       append(runnerEntries(62), tarEntry{name: "/etc/evil", typ: tar.TypeReg, mode: 0o644}),
		"symlink escape": append(runnerEntries(62), tarEntry{name: "bin/x", typ: tar.TypeSymlink, link: "../../etc/shadow"}),
		"absolute link":  append(runnerEntries(62), tarEntry{name: "bin/y", typ: tar.TypeSymlink, link: "/etc/shadow"}),
		"device":         append(runnerEntries(62), tarEntry{name: "dev", typ: tar.TypeChar}),
	} {
		t.Run(name, func(t *testing.T) {
			tb := makeTarball(t, entries)
			root := t.TempDir()
			_, err := installRunnerTarball(tb, filepath.Join(root, "r"), "amd64")
			if err == nil {
				t.Fatal("accepted")
			}
			if _, err := os.Stat(filepath.Join(root, "evil")); err == nil {
				t.Fatal("a file was written outside the directory")
			}
		})
	}
	p := filepath.Join(t.TempDir(), "not.tar.gz")
	os.WriteFile(p, []byte("not gzip"), 0o644)
	if _, err := installRunnerTarball(p, t.TempDir(), "amd64"); err == nil || !strings.Contains(err.Error(), "not a .tar.gz") {
		t.Fatalf("not gzip: %v", err)
	}
}

func TestCheckKernelConfig(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	var cfg strings.Builder
	for _, o := range requiredKernelConfig {
		if o == "OVERLAY_FS" || o == "VETH" {
			cfg.WriteString("# CONFIG_" + o + " is not set\n")
			continue
		}
		cfg.WriteString("CONFIG_" + o + "=m\n")
	}
	os.WriteFile(filepath.Join(dir, "boot", "config-6.1.0-test"), []byte(cfg.String()), 0o644)
	err := checkKernelConfig(dir, "6.1.0-test")
	if err == nil || !strings.Contains(err.Error(), "CONFIG_OVERLAY_FS CONFIG_VETH") || strings.Contains(err.Error(), "CONFIG_BRIDGE ") {
		t.Fatalf("err = %v", err)
	}
	if err := checkKernelConfig(dir, "6.1.0-other"); err == nil {
		t.Fatal("a missing config passed")
	}
}

func TestContentsList(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr", "bin", "tool"), []byte("hello"), 0o755)
	syscall.Chmod(filepath.Join(root, "usr", "bin", "tool"), 0o4755) // setuid, as sudo is
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	a, err := contentsList(root)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("hello"))
	for _, want := range []string{
		"- 120777 ", " /bin -> usr/bin\n",
		hex.EncodeToString(sum[:]) + " 104755 ", " /usr/bin/tool\n",
	} {
		if !bytes.Contains(a, []byte(want)) {
			t.Errorf("contents lack %q:\n%s", want, a)
		}
	}
	// A change to a file's content or mode changes the list.
	b, _ := contentsList(root)
	if !bytes.Equal(a, b) {
		t.Fatal("the same tree listed twice differs")
	}
	os.Chmod(filepath.Join(root, "usr", "bin", "tool"), 0o755)
	if c, _ := contentsList(root); bytes.Equal(a, c) {
		t.Fatal("a mode change is not in the list")
	}
}

func TestBuildRunnerOptions(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "amd64", RunnerTarball: "x.tar.gz"}); err == nil ||
		!strings.Contains(err.Error(), "runner images") {
		t.Errorf("a runner tarball for a test image: %v", err)
	}
	if _, err := s.Build(ctx, BuildOptions{Kind: "vm", Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "test or runner") {
		t.Errorf("unknown kind: %v", err)
	}
	guest := filepath.Join(t.TempDir(), "guest")
	os.WriteFile(guest, elfHeader(62), 0o755)
	_, err = s.Build(ctx, BuildOptions{Kind: "runner", Arch: "amd64", GuestBinary: guest,
		RunnerTarball: filepath.Join(t.TempDir(), "missing.tar.gz")})
	if err == nil || !strings.Contains(err.Error(), "runner tarball") {
		t.Fatalf("a missing runner tarball: %v", err)
	}
}

// A build dir with file systems mounted in it (as a killed mmdebstrap
// leaves it) is removed without touching what was mounted.
func TestRemoveBuildDirUnmounts(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount")
	}
	outside := t.TempDir()
	keep := filepath.Join(outside, "keep")
	os.WriteFile(keep, []byte("the host's"), 0o644)
	dir := filepath.Join(t.TempDir(), ".build-1")
	mnt := filepath.Join(dir, "rootfs", "dev")
	os.MkdirAll(mnt, 0o755)
	if err := syscall.Mount(outside, mnt, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	proc := filepath.Join(dir, "rootfs", "my proc")
	os.MkdirAll(proc, 0o755)
	if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		t.Skipf("proc mount: %v", err)
	}
	if err := removeBuildDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("build dir still there: %v", err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "the host's" {
		t.Fatalf("removing the build dir reached into a mount: %v %q", err, b)
	}
}
