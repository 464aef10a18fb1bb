package image

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	elfX86_64  = 62
	elfAArch64 = 183
)

// tinyELF is a relocatable ELF64 file with one section, .modinfo, holding
// modinfo: what a kernel module looks like to the builder.
func tinyELF(machine uint16, modinfo []byte) []byte {
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	modOff := 64
	strOff := modOff + len(modinfo)
	shOff := (strOff + len(shstr) + 7) &^ 7
	b := make([]byte, shOff+3*64)
	le := binary.LittleEndian
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 1) // ET_REL
	le.PutUint16(b[18:], machine)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[40:], uint64(shOff))
	le.PutUint16(b[52:], 64) // header size
	le.PutUint16(b[58:], 64) // section header size
	le.PutUint16(b[60:], 3)  // sections: null, .modinfo, .shstrtab
	le.PutUint16(b[62:], 2)  // section names in section 2
	copy(b[modOff:], modinfo)
	copy(b[strOff:], shstr)
	section := func(i int, name, typ uint32, off, size int) {
		h := b[shOff+64*i:]
		le.PutUint32(h[0:], name)
		le.PutUint32(h[4:], typ)
		le.PutUint64(h[24:], uint64(off))
		le.PutUint64(h[32:], uint64(size))
		le.PutUint64(h[48:], 1)
	}
	section(1, 1, 1, modOff, len(modinfo)) // PROGBITS
	section(2, 10, 3, strOff, len(shstr))  // STRTAB
	return b
}

func TestParseModinfo(t *testing.T) {
	info := []byte("license=GPL\x00depends=virtio_ring,virtio\x00name=virtio_blk\x00")
	if d := parseModinfoDepends(info); !slices.Equal(d, []string{"virtio_ring", "virtio"}) {
		t.Errorf("depends: %v", d)
	}
	for _, none := range []string{"depends=\x00name=x\x00", "name=x\x00", ""} {
		if d := parseModinfoDepends([]byte(none)); len(d) != 0 {
			t.Errorf("%q: depends %v", none, d)
		}
	}
	if d := parseModinfoDepends([]byte("\x00\x00depends=net-failover\x00")); !slices.Equal(d, []string{"net_failover"}) {
		t.Errorf("dashed name: %v", d)
	}
}

func TestModuleOrder(t *testing.T) {
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

// fakeKernelPackage lays out an unpacked kernel package's modules as
// Debian's does (no modules.dep), each module a tiny ELF with .modinfo.
func fakeKernelPackage(t *testing.T, kver string, mods map[string]string, builtin ...string) string {
	t.Helper()
	dir := t.TempDir()
	modDir := filepath.Join(dir, "lib", "modules", kver)
	for path, depends := range mods {
		p := filepath.Join(modDir, "kernel", path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		info := "license=GPL\x00depends=" + depends + "\x00retpoline=Y\x00name=" + name + "\x00vermagic=" + kver + " SMP\x00"
		if err := os.WriteFile(p, tinyELF(elfX86_64, []byte(info)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var bl strings.Builder
	for _, b := range builtin {
		bl.WriteString("kernel/" + b + "\n")
	}
	os.WriteFile(filepath.Join(modDir, "modules.builtin"), []byte(bl.String()), 0o644)
	return dir
}

var debianVirtio = map[string]string{
	"drivers/virtio/virtio_ring.ko":    "",
	"drivers/virtio/virtio.ko":         "virtio_ring",
	"drivers/virtio/virtio_mmio.ko":    "virtio,virtio_ring",
	"drivers/block/virtio_blk.ko":      "virtio,virtio_ring",
	"drivers/char/virtio_console.ko":   "virtio,virtio_ring",
	"net/core/failover.ko":             "",
	"drivers/net/net_failover.ko":      "failover",
	"drivers/net/virtio_net.ko":        "virtio,net_failover,virtio_ring",
	"fs/ext4/ext4.ko":                  "jbd2,mbcache,crc16",
	"drivers/virtio/virtio_balloon.ko": "virtio,virtio_ring",
}

func TestCollectModules(t *testing.T) {
	dir := fakeKernelPackage(t, "6.1.0-99-cloud-amd64", debianVirtio)
	mods, order, err := collectModules(dir, "6.1.0-99-cloud-amd64")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "failover", "net_failover", "virtio_net"}
	if !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if len(mods) != len(want) || !bytes.HasPrefix(mods["virtio_net"], []byte("\x7fELF")) {
		t.Errorf("module contents: %d", len(mods))
	}

	// Built-in modules are skipped, dependencies and all.
	dir = fakeKernelPackage(t, "6.1.0-99-cloud-amd64", debianVirtio, "drivers/virtio/virtio_mmio.ko", "drivers/char/virtio_console.ko")
	if _, order, err = collectModules(dir, "6.1.0-99-cloud-amd64"); err != nil || slices.Contains(order, "virtio_mmio") || slices.Contains(order, "virtio_console") || len(order) != 6 {
		t.Errorf("with built-ins: %v %v", order, err)
	}

	// A module neither shipped nor built in is an error naming it.
	broken := map[string]string{}
	for k, v := range debianVirtio {
		if !strings.Contains(k, "failover") {
			broken[k] = v
		}
	}
	dir = fakeKernelPackage(t, "6.1.0-99-cloud-amd64", broken)
	if _, _, err := collectModules(dir, "6.1.0-99-cloud-amd64"); err == nil || !strings.Contains(err.Error(), "net_failover") {
		t.Errorf("missing dependency: %v", err)
	}

	// A file that is no ELF is an error naming it.
	dir = fakeKernelPackage(t, "6.1.0-99-cloud-amd64", debianVirtio)
	os.WriteFile(filepath.Join(dir, "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko"), []byte("junk"), 0o644)
	if _, _, err := collectModules(dir, "6.1.0-99-cloud-amd64"); err == nil || !strings.Contains(err.Error(), "virtio_blk") {
		t.Errorf("junk module: %v", err)
	}

	// Compressed modules are refused with a clear error.
	dir = fakeKernelPackage(t, "6.1.0-99-cloud-amd64", debianVirtio)
	p := filepath.Join(dir, "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko")
	os.Rename(p, p+".xz")
	if _, _, err := collectModules(dir, "6.1.0-99-cloud-amd64"); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("compressed module: %v", err)
	}
}
