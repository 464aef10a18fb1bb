package image

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// lz4Literals encodes src as one LZ4 block of literals only.
func lz4Literals(src []byte) []byte {
	var b []byte
	n := len(src)
	if n < 15 {
		b = append(b, byte(n<<4))
	} else {
		b = append(b, 0xf0)
		n -= 15
		for ; n >= 255; n -= 255 {
			b = append(b, 255)
		}
		b = append(b, byte(n))
	}
	return append(b, src...)
}

func legacyFrame(blocks ...[]byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for _, b := range blocks {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	return out
}

func TestLZ4LegacyDecode(t *testing.T) {
	long := bytes.Repeat([]byte("tandem"), 100) // 600 literals: extended length
	// A block with an overlapping match: "ab" then copy 10 from offset 2
	// gives "ab" * 6; then the final literals "!".
	match := []byte{0x26, 'a', 'b', 2, 0, 0x10, '!'}
	frame := legacyFrame(lz4Literals(long), match)
	got, err := lz4LegacyDecode(frame)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, long...), []byte("abababababab!")...)
	if !bytes.Equal(got, want) {
		t.Fatalf("decoded %q…, want %q…", got[len(got)-20:], want[len(want)-20:])
	}
	// The kernel build appends the uncompressed size: checked when present.
	withSize := binary.LittleEndian.AppendUint32(append([]byte{}, frame...), uint32(len(want)))
	if _, err := lz4LegacyDecode(withSize); err != nil {
		t.Errorf("with a matching size trailer: %v", err)
	}
	badSize := binary.LittleEndian.AppendUint32(append([]byte{}, frame...), uint32(len(want)+1))
	if _, err := lz4LegacyDecode(badSize); err == nil {
		t.Error("a wrong size trailer was accepted")
	}
	for name, bad := range map[string][]byte{
		"not lz4":            []byte("hello world"),
		"offset 0":           legacyFrame([]byte{0x11, 'a', 0, 0, '!'}),
		"offset too large":   legacyFrame([]byte{0x11, 'a', 9, 0, '!'}),
		"truncated literals": legacyFrame([]byte{0x50, 'a', 'b'}),
		"truncated offset":   legacyFrame([]byte{0x11, 'a', 1}),
	} {
		if _, err := lz4LegacyDecode(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// readCpio parses a newc archive back.
func readCpio(t *testing.T, b []byte) map[string]cpioEntry {
	out := map[string]cpioEntry{}
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header at %d: %v", off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		mode, size, namesize, major, minor := field(1), int(field(6)), int(field(11)), field(9), field(10)
		name := string(b[off+110 : off+110+namesize-1])
		data := b[align(off+110+namesize) : align(off+110+namesize)+size]
		off = align(align(off+110+namesize) + size)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out[name] = cpioEntry{Name: name, Mode: mode, Data: data, Major: major, Minor: minor}
	}
}

func TestCpioRoundTripAndDeterminism(t *testing.T) {
	entries := []cpioEntry{
		{Name: "init", Mode: modeReg | 0o755, Data: []byte("#!/bin/sh\n")},
		{Name: "dev", Mode: modeDir | 0o755},
		{Name: "dev/console", Mode: modeChr | 0o600, Major: 5, Minor: 1},
		{Name: "lib/modules/x.ko", Mode: modeReg | 0o644, Data: bytes.Repeat([]byte{1}, 1001)},
	}
	var a, b bytes.Buffer
	if err := writeCpio(&a, slices.Clone(entries)); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(entries)
	if err := writeCpio(&b, entries); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("the same entries in another order gave other bytes")
	}
	got := readCpio(t, a.Bytes())
	if e := got["dev/console"]; e.Mode != modeChr|0o600 || e.Major != 5 || e.Minor != 1 {
		t.Errorf("console node: %+v", e)
	}
	if e := got["lib/modules/x.ko"]; len(e.Data) != 1001 {
		t.Errorf("module data: %d bytes", len(e.Data))
	}
	if string(got["init"].Data) != "#!/bin/sh\n" {
		t.Errorf("init: %q", got["init"].Data)
	}
}

func TestModuleOrder(t *testing.T) {
	info := []byte("license=GPL\x00depends=virtio_ring,virtio\x00name=virtio_blk\x00")
	if d := parseModinfoDepends(info); !slices.Equal(d, []string{"virtio_ring", "virtio"}) {
		t.Errorf("depends: %v", d)
	}
	deps := map[string][]string{
		"virtio_ring": nil, "virtio": {"virtio_ring"}, "virtio_mmio": {"virtio", "virtio_ring"},
		"virtio_blk": {"virtio", "virtio_ring"}, "virtio_net": {"virtio_ring", "virtio", "net_failover"},
		"net_failover": {"failover"}, "failover": nil,
	}
	order, err := moduleLoadOrder([]string{"virtio_mmio", "virtio_blk", "virtio-net"}, deps, map[string]bool{"crc32c": true})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for m, ds := range deps {
		for _, d := range ds {
			if pos[d] >= pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, order)
			}
		}
	}
	if len(order) != 7 {
		t.Errorf("order %v: want all 7 modules once", order)
	}
	if _, err := moduleLoadOrder([]string{"a"}, map[string][]string{"a": {"b"}, "b": {"a"}}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
	if _, err := moduleLoadOrder([]string{"a"}, map[string][]string{"a": {"missing"}}, nil); err == nil {
		t.Error("a missing dependency was accepted")
	}
	if o, err := moduleLoadOrder([]string{"a"}, map[string][]string{"a": {"builtin_one"}}, map[string]bool{"builtin_one": true}); err != nil || !slices.Equal(o, []string{"a"}) {
		t.Errorf("built-in dependency: %v %v", o, err)
	}
}

func TestKernelFormats(t *testing.T) {
	if _, err := bzImageToELF([]byte("not a kernel at all")); err == nil {
		t.Error("garbage accepted as a bzImage")
	}
	img := make([]byte, 128)
	copy(img[56:], "ARM\x64")
	if _, err := arm64Image(img); err != nil {
		t.Errorf("arm64 Image refused: %v", err)
	}
	if _, err := arm64Image(make([]byte, 128)); err == nil {
		t.Error("an arm64 Image without magic was accepted")
	}
	if got := compressionName([]byte{0x28, 0xb5, 0x2f, 0xfd, 0}); got != "zstd" {
		t.Errorf("zstd detected as %q", got)
	}
}

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
		sum, _ := fileSHA256(p)
		m.Files[n] = FileInfo{SHA256: sum, Size: int64(len(c))}
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
	m.Created = "2026-01-01T00:00:00Z"
	if m.ID() != id || len(id) != 16 {
		t.Errorf("the id depends on the creation time or is malformed: %s vs %s", id, m.ID())
	}
	m.Files["a"] = FileInfo{"01", 1}
	if m.ID() == id {
		t.Error("a changed file hash kept the id")
	}
}

func TestVerifyAndResolve(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	im := fakeImage(t, s, map[string]string{KernelFile: "kernel bytes", InitrdFile: "initrd bytes"})
	got, err := s.Resolve("test-amd64")
	if err != nil || got.ID != im.ID {
		t.Fatalf("resolve by ref: %v %v", got, err)
	}
	if got, err := s.Resolve(im.ID[:6]); err != nil || got.ID != im.ID {
		t.Fatalf("resolve by id prefix: %v %v", got, err)
	}
	if _, err := s.Resolve("test-arm64"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "tandem image build --kind test --arch arm64") {
		t.Errorf("missing image: %v", err)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// A flipped byte is found even though the stamp cache exists: the
	// write changes the file's ctime.
	p := filepath.Join(im.Dir, KernelFile)
	os.WriteFile(p, []byte("kernel bytez"), 0o644)
	if err := got.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), KernelFile) {
		t.Errorf("flipped byte: %v", err)
	}
	os.Remove(p)
	if err := got.Verify(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
	// A manifest edited behind the store's back no longer matches its id.
	b, _ := os.ReadFile(filepath.Join(im.Dir, manifestFile))
	os.WriteFile(filepath.Join(im.Dir, manifestFile), bytes.Replace(b, []byte(`"amd64"`), []byte(`"arm64"`), 1), 0o644)
	if _, err := s.Resolve(im.ID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("edited manifest: %v", err)
	}
	if err := s.Remove(im.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve("test-amd64"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after remove: %v", err)
	}
	if err := s.Remove("../../etc"); err == nil {
		t.Error("remove accepted a path")
	}
}

func TestAmbiguousPrefix(t *testing.T) {
	s, _ := Open(t.TempDir())
	for _, id := range []string{"abcd000000000001", "abcd000000000002"} {
		os.MkdirAll(filepath.Join(s.root, "blobs", id), 0o755)
	}
	if _, err := s.Resolve("abcd"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, err := s.Resolve("abcd000000000001"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an image without manifest: %v", err)
	}
}
