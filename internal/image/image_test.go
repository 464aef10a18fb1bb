package image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// readCpio parses a newc archive back, in archive order.
func readCpio(t testing.TB, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("cpio: no newc header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("cpio: bad header field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, namesize, major, minor := field(1), int(field(6)), int(field(11)), field(9), field(10)
		if mtime := field(5); mtime != 0 {
			t.Errorf("cpio: mtime %d", mtime)
		}
		dataAt := align(off + 110 + namesize)
		if dataAt+size > len(b) || namesize < 1 {
			t.Fatalf("cpio: member at %d overruns the archive", off)
		}
		name := string(b[off+110 : off+110+namesize-1])
		data := b[dataAt : dataAt+size]
		off = align(dataAt + size)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("cpio: %d bytes after the trailer", len(b)-off)
			}
			return out
		}
		e := cpioEntry{Name: name, Mode: mode, Data: data, Major: major, Minor: minor}
		if mode&0o170000 == modeLink {
			e.Link, e.Data = string(data), nil
		}
		out = append(out, e)
	}
}

func cpioMap(entries []cpioEntry) map[string]cpioEntry {
	m := map[string]cpioEntry{}
	for _, e := range entries {
		m[e.Name] = e
	}
	return m
}

func TestCpioRoundTripAndDeterminism(t *testing.T) {
	entries := []cpioEntry{
		{Name: "init", Mode: modeReg | 0o755, Data: []byte("#!/bin/sh\n")},
		{Name: "dev", Mode: modeDir | 0o755},
		{Name: "dev/console", Mode: modeChr | 0o600, Major: 5, Minor: 1},
		{Name: "bin/sh", Mode: modeLink | 0o777, Link: "busybox"},
		{Name: "lib/modules/x.ko", Mode: modeReg | 0o644, Data: bytes.Repeat([]byte{1}, 1001)},
		{Name: "empty", Mode: modeReg | 0o644},
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
	list := readCpio(t, a.Bytes())
	got := cpioMap(list)
	if len(got) != len(entries) {
		t.Errorf("%d members read back, want %d", len(got), len(entries))
	}
	if e := got["dev/console"]; e.Mode != modeChr|0o600 || e.Major != 5 || e.Minor != 1 {
		t.Errorf("console node: %+v", e)
	}
	if e := got["lib/modules/x.ko"]; !bytes.Equal(e.Data, bytes.Repeat([]byte{1}, 1001)) {
		t.Errorf("module data: %d bytes", len(e.Data))
	}
	if e := got["init"]; string(e.Data) != "#!/bin/sh\n" || e.Mode != modeReg|0o755 {
		t.Errorf("init: %o %q", e.Mode, e.Data)
	}
	if e := got["bin/sh"]; e.Link != "busybox" {
		t.Errorf("symlink: %+v", e)
	}
	// Parents come before what they hold, as the kernel's unpacker needs.
	seen := map[string]bool{}
	for _, e := range list {
		if i := strings.LastIndexByte(e.Name, '/'); i > 0 {
			if _, member := got[e.Name[:i]]; member && !seen[e.Name[:i]] {
				t.Errorf("%s comes before its directory", e.Name)
			}
		}
		seen[e.Name] = true
	}
}

func TestInitramfs(t *testing.T) {
	mods := map[string][]byte{"virtio_ring": []byte("ring"), "virtio": []byte("virtio"), "virtio_blk": []byte("blk")}
	order := []string{"virtio_ring", "virtio", "virtio_blk"}
	a, err := buildInitramfs([]byte("guest"), mods, order)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := buildInitramfs([]byte("guest"), mods, order)
	if !bytes.Equal(a, b) {
		t.Error("the same inputs gave two initramfs")
	}
	got := cpioMap(readCpio(t, a))
	for _, d := range []string{"dev", "proc", "sys", "newroot", "lib/modules", "etc/tandem"} {
		if got[d].Mode&0o170000 != modeDir {
			t.Errorf("/%s is not a directory: %o", d, got[d].Mode)
		}
	}
	if e := got["init"]; e.Mode != modeReg|0o755 || string(e.Data) != "guest" {
		t.Errorf("/init: %o %q", e.Mode, e.Data)
	}
	if l := string(got["etc/tandem/modules"].Data); l != "virtio_ring.ko\nvirtio.ko\nvirtio_blk.ko\n" {
		t.Errorf("/etc/tandem/modules: %q", l)
	}
	for m, data := range mods {
		if !bytes.Equal(got["lib/modules/"+m+".ko"].Data, data) {
			t.Errorf("%s.ko missing or wrong", m)
		}
	}
	if e := got["dev/console"]; e.Mode&0o170000 != modeChr || e.Major != 5 || e.Minor != 1 {
		t.Errorf("/dev/console: %+v", e)
	}
}

// bzImage wraps payload in the parts of an x86 boot image the extractor reads.
func bzImage(payload []byte) []byte {
	const setupSects = 3
	b := make([]byte, (setupSects+1)*512+100+len(payload))
	b[0x1f1] = setupSects
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint32(b[0x248:], 100)
	binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)))
	copy(b[(setupSects+1)*512+100:], payload)
	return b
}

func TestKernelFormats(t *testing.T) {
	if _, err := bzImageToELF([]byte("not a kernel at all")); err == nil {
		t.Error("garbage accepted as a bzImage")
	}
	// An ELF in the payload, LZ4-compressed: this test binary's own
	// header is not enough for debug/elf, so use a tiny module ELF.
	elfBytes := tinyELF(elfX86_64, []byte("depends=\x00"))
	got, err := bzImageToELF(bzImage(legacyFrame(lz4Compress(elfBytes))))
	if err != nil || !bytes.Equal(got, elfBytes) {
		t.Errorf("lz4 bzImage: %d bytes, %v", len(got), err)
	}
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(elfBytes)
	w.Close()
	if got, err := bzImageToELF(bzImage(gz.Bytes())); err != nil || !bytes.Equal(got, elfBytes) {
		t.Errorf("gzip bzImage: %d bytes, %v", len(got), err)
	}
	if _, err := bzImageToELF(bzImage(legacyFrame(lz4Literals([]byte("not an ELF, just text"))))); err == nil || !strings.Contains(err.Error(), "ELF") {
		t.Errorf("a payload that is no ELF: %v", err)
	}
	if _, err := bzImageToELF(bzImage(tinyELF(elfAArch64, nil))); err == nil {
		t.Error("an uncompressed payload was accepted")
	}
	for name, magic := range map[string][]byte{
		"xz": {0xfd, '7', 'z', 'X', 'Z', 0}, "zstd": {0x28, 0xb5, 0x2f, 0xfd}, "bzip2": []byte("BZh9"),
	} {
		_, err := bzImageToELF(bzImage(append(magic, make([]byte, 64)...)))
		if err == nil || !strings.Contains(err.Error(), "unsupported kernel compression "+name) {
			t.Errorf("%s payload: %v", name, err)
		}
	}

	img := make([]byte, 128)
	copy(img[56:], "ARM\x64")
	if _, err := arm64Image(img); err != nil {
		t.Errorf("arm64 Image refused: %v", err)
	}
	gz.Reset()
	w = gzip.NewWriter(&gz)
	w.Write(img)
	w.Close()
	if got, err := arm64Image(gz.Bytes()); err != nil || !bytes.Equal(got, img) {
		t.Errorf("gzip-compressed arm64 Image: %v", err)
	}
	if _, err := arm64Image(make([]byte, 128)); err == nil {
		t.Error("an arm64 Image without magic was accepted")
	}
}
