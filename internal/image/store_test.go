package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeImage writes an image with the given files into a store by hand.
func fakeImage(t *testing.T, s *Store, files map[string]string) *Image {
	t.Helper()
	m := Manifest{Schema: 1, Kind: "test", Arch: "amd64", Files: map[string]FileInfo{}}
	work := t.TempDir()
	for n, c := range files {
		p := filepath.Join(work, n)
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		m.Files[n] = FileInfo{SHA256: sha256hex([]byte(c)), Size: int64(len(c))}
	}
	id := m.ID()
	dir := filepath.Join(s.root, "blobs", id)
	if err := os.Rename(work, dir); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, manifestFile), b, 0o644)
	os.WriteFile(filepath.Join(s.root, "refs", "test-amd64"), []byte(id+"\n"), 0o644)
	return &Image{ID: id, Dir: dir, Manifest: m}
}

func TestManifestID(t *testing.T) {
	m := Manifest{Schema: 1, Kind: "test", Arch: "amd64", Files: map[string]FileInfo{"a": {"00", 1}, "b": {"11", 2}}}
	id := m.ID()
	if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("malformed id %q", id)
	}
	m.Created = "2026-01-01T00:00:00Z"
	if m.ID() != id {
		t.Errorf("the id depends on the creation time: %s vs %s", id, m.ID())
	}
	// The same manifest read back from its JSON has the same id.
	b, _ := json.MarshalIndent(m, "", "  ")
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil || back.ID() != id {
		t.Errorf("read back: %s, %v", back.ID(), err)
	}
	// Map order does not matter (Go randomises it; JSON sorts keys).
	m2 := Manifest{Schema: 1, Kind: "test", Arch: "amd64", Files: map[string]FileInfo{"b": {"11", 2}, "a": {"00", 1}}}
	if m2.ID() != id {
		t.Error("the id depends on map order")
	}
	m.Files["a"] = FileInfo{"01", 1}
	if m.ID() == id {
		t.Error("a changed file hash kept the id")
	}
	m.Files["a"] = FileInfo{"00", 1}
	m.Arch = "arm64"
	if m.ID() == id {
		t.Error("another arch kept the id")
	}
	// The canonical form, spelled out: a change of the manifest's
	// encoding (a renamed field, say) changes every image id and must be
	// deliberate.
	pinned := Manifest{Schema: 1, Kind: "test", Arch: "amd64", Kernel: KernelInfo{Package: "linux-image-x", Version: "6.1.0-x"},
		Modules: []string{"virtio"}, Cmdline: "quiet", Created: "2026-11-26T00:00:00Z", Files: map[string]FileInfo{VmlinuxFile: {"ab", 3}}}
	const canonical = `{"arch":"amd64","cmdline":"quiet","files":{"vmlinux":{"sha256":"ab","size":3}},"guest_sha256":"",` +
		`"kernel":{"deb_sha256":"","package":"linux-image-x","package_version":"","version":"6.1.0-x"},"kind":"test","modules":["virtio"],"schema":1}`
	if got, want := pinned.ID(), sha256hex([]byte(canonical))[:16]; got != want {
		t.Errorf("pinned manifest id %s, want %s: the canonical form changed", got, want)
	}
	// The id of a stored manifest comes from its document: layout, key
	// order and fields this version does not know do not matter.
	legacy := `{ "schema": 1, "kind": "test", "arch": "amd64", "busybox_version": "1:1.35",
	  "files": {"kernel": {"size": 3, "sha256": "ab"}}, "created": "2020-01-01T00:00:00Z" }`
	legacyCanonical := `{"arch":"amd64","busybox_version":"1:1.35","files":{"kernel":{"sha256":"ab","size":3}},"kind":"test","schema":1}`
	if got, err := manifestID([]byte(legacy)); err != nil || got != sha256hex([]byte(legacyCanonical))[:16] {
		t.Errorf("legacy manifest: %s %v", got, err)
	}
	for _, bad := range []string{"", "[]", "{} {}", `{"schema":`} {
		if _, err := manifestID([]byte(bad)); err == nil {
			t.Errorf("manifest %q accepted", bad)
		}
	}
}

func TestVerifyAndResolve(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	im := fakeImage(t, s, map[string]string{VmlinuxFile: "kernel bytes", InitrdFile: "initrd bytes", RootfsFile: "root"})
	got, err := s.Resolve("test-amd64")
	if err != nil || got.ID != im.ID {
		t.Fatalf("resolve by ref: %v %v", got, err)
	}
	if got.Kernel() != filepath.Join(im.Dir, VmlinuxFile) || got.Initrd() != filepath.Join(im.Dir, InitrdFile) || got.Rootfs() != filepath.Join(im.Dir, RootfsFile) {
		t.Errorf("paths: %s %s %s", got.Kernel(), got.Initrd(), got.Rootfs())
	}
	if got, err := s.Resolve(im.ID); err != nil || got.ID != im.ID {
		t.Fatalf("resolve by id: %v %v", got, err)
	}
	if got, err := s.Resolve(im.ID[:6]); err != nil || got.ID != im.ID {
		t.Fatalf("resolve by id prefix: %v %v", got, err)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if _, err := os.Stat(filepath.Join(im.Dir, verifiedFile)); err != nil {
		t.Errorf("no verification stamps: %v", err)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("verify with stamps: %v", err)
	}

	// A flipped byte is found though the stamps exist: the write moves
	// the file's ctime, even with its mtime set back.
	p := filepath.Join(im.Dir, VmlinuxFile)
	fi, _ := os.Stat(p)
	b, _ := os.ReadFile(p)
	b[3] ^= 1
	os.WriteFile(p, b, 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if err := got.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), VmlinuxFile) {
		t.Errorf("flipped byte: %v", err)
	}
	b[3] ^= 1
	os.WriteFile(p, b, 0o644)
	if err := got.Verify(); err != nil {
		t.Errorf("restored: %v", err)
	}
	os.WriteFile(filepath.Join(im.Dir, RootfsFile), []byte("roots"), 0o644)
	if err := got.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), RootfsFile) {
		t.Errorf("grown file: %v", err)
	}
	os.WriteFile(filepath.Join(im.Dir, RootfsFile), []byte("root"), 0o644)
	os.Remove(filepath.Join(im.Dir, InitrdFile))
	if err := got.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), InitrdFile+" is missing") {
		t.Errorf("missing file: %v", err)
	}
	if err := got.VerifyFull(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("missing file, full check: %v", err)
	}
	// A manifest edited behind the store's back no longer matches its id.
	mb, _ := os.ReadFile(filepath.Join(im.Dir, manifestFile))
	os.WriteFile(filepath.Join(im.Dir, manifestFile), bytes.Replace(mb, []byte(`"amd64"`), []byte(`"arm64"`), 1), 0o644)
	if _, err := s.Resolve(im.ID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("edited manifest: %v", err)
	}
	if err := s.Remove(im.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve("test-amd64"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after remove: %v", err)
	}
	if err := s.Remove(im.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove twice: %v", err)
	}
	if err := s.Remove("../../etc"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("remove of a path: %v", err)
	}
	if ents, _ := os.ReadDir(s.root); len(ents) != 3 { // blobs, refs, .lock
		t.Errorf("store after remove: %v", ents)
	}
}

// TestVerifyStampsCatchReplacement: a file replaced by one of the same size
// and times is a new inode, and is hashed again.
func TestVerifyStampsCatchReplacement(t *testing.T) {
	s, _ := Open(t.TempDir())
	im := fakeImage(t, s, map[string]string{VmlinuxFile: "aaaa"})
	if err := im.Verify(); err != nil {
		t.Fatal(err)
	}
	p := im.Kernel()
	tmp := p + ".new"
	os.WriteFile(tmp, []byte("aaab"), 0o644)
	when := time.Unix(1e9, 0)
	os.Chtimes(tmp, when, when)
	os.Chtimes(p, when, when)
	os.Rename(tmp, p)
	if err := im.Verify(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("replaced file: %v", err)
	}
}

func TestResolveErrors(t *testing.T) {
	s, _ := Open(t.TempDir())
	_, err := s.Resolve("test-arm64")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "tandem image build --kind test --arch arm64") {
		t.Errorf("missing ref: %v", err)
	}
	if _, err := s.Resolve("deadbeef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing id: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b", "TEST-AMD64"} {
		if _, err := s.Resolve(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	for _, id := range []string{"abcd000000000001", "abcd000000000002"} {
		os.MkdirAll(filepath.Join(s.root, "blobs", id), 0o755)
	}
	if _, err := s.Resolve("abcd"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, err := s.Resolve("abcd000000000001"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no manifest") {
		t.Errorf("an image without manifest: %v", err)
	}
	// A ref naming an image that is gone.
	os.WriteFile(filepath.Join(s.root, "refs", "test-amd64"), []byte("0123456789abcdef\n"), 0o644)
	if _, err := s.Resolve("test-amd64"); !errors.Is(err, ErrNotFound) {
		t.Errorf("dangling ref: %v", err)
	}
	os.WriteFile(filepath.Join(s.root, "refs", "test-amd64"), []byte("../../../etc\n"), 0o644)
	if _, err := s.Resolve("test-amd64"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ref with a path: %v", err)
	}
}

func TestListAndKernelNames(t *testing.T) {
	s, _ := Open(t.TempDir())
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Fatalf("empty store: %v %v", l, err)
	}
	a := fakeImage(t, s, map[string]string{VmlinuxFile: "x"})
	b := fakeImage(t, s, map[string]string{"kernel": "y"}) // as built before vmlinux/Image
	os.MkdirAll(filepath.Join(s.root, ".build-123"), 0o755)
	l, err := s.List()
	if err != nil || len(l) != 2 {
		t.Fatalf("list: %v %v", l, err)
	}
	if a.Kernel() != filepath.Join(a.Dir, VmlinuxFile) || b.Kernel() != filepath.Join(b.Dir, "kernel") {
		t.Errorf("kernel paths: %s %s", a.Kernel(), b.Kernel())
	}
	// A manifest written by an earlier version, with a field this one
	// does not know, still loads under its id and verifies.
	legacy := []byte(`{"schema":1,"kind":"test","arch":"arm64","busybox_version":"1:1.35",` +
		`"files":{"kernel":{"sha256":"` + sha256hex([]byte("k")) + `","size":1}},"created":"2020-01-01T00:00:00Z"}`)
	id, _ := manifestID(legacy)
	dir := filepath.Join(s.root, "blobs", id)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, manifestFile), legacy, 0o644)
	os.WriteFile(filepath.Join(dir, "kernel"), []byte("k"), 0o644)
	if im, err := s.Resolve(id); err != nil || im.Kernel() != filepath.Join(dir, "kernel") || im.Verify() != nil {
		t.Errorf("legacy image: %v %v", im, err)
	}
	arm := &Image{Dir: "/x", Manifest: Manifest{Arch: "arm64"}}
	if arm.Kernel() != "/x/Image" {
		t.Errorf("arm64 kernel: %s", arm.Kernel())
	}
}

func TestBuildBadInput(t *testing.T) {
	s, _ := Open(t.TempDir())
	ctx := t.Context()
	if _, err := s.Build(ctx, BuildOptions{Kind: "vm", Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "unknown image kind") {
		t.Errorf("kind: %v", err)
	}
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "mips"}); err == nil || !strings.Contains(err.Error(), "unknown architecture") {
		t.Errorf("arch: %v", err)
	}
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	os.WriteFile(guest, tinyELF(elfAArch64, nil), 0o755)
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "amd64", GuestBinary: guest}); err == nil || !strings.Contains(err.Error(), "tandem-guest binary") {
		t.Errorf("wrong-arch guest: %v", err)
	}
	os.WriteFile(guest, []byte("#!/bin/sh\n"), 0o755)
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "amd64", GuestBinary: guest}); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("script as guest: %v", err)
	}
	if _, err := s.Build(ctx, BuildOptions{Kind: "test", Arch: "amd64", GuestBinary: "/nonexistent"}); err == nil {
		t.Error("missing guest accepted")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.root, "blobs")); len(ents) != 0 {
		t.Errorf("failed builds left %d entries in the store", len(ents))
	}
}
