package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

func hostDebArch() string { return runtime.GOARCH }

// extractKernel finds boot/vmlinuz-* in an unpacked kernel package and
// returns its release and the kernel in the form QEMU boots fastest: an ELF
// vmlinux for amd64 (entered through PVH), a raw Image for arm64.
func extractKernel(pkgDir, arch string) (string, []byte, error) {
	matches, _ := filepath.Glob(filepath.Join(pkgDir, "boot", "vmlinuz-*"))
	if len(matches) != 1 {
		return "", nil, fmt.Errorf("kernel package: want one boot/vmlinuz-*, found %d", len(matches))
	}
	ver := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	raw, err := os.ReadFile(matches[0])
	if err != nil {
		return "", nil, err
	}
	var k []byte
	switch arch {
	case "amd64":
		k, err = bzImageToELF(raw)
	case "arm64":
		k, err = arm64Image(raw)
	default:
		err = fmt.Errorf("unknown architecture %q", arch)
	}
	if err != nil {
		return "", nil, fmt.Errorf("kernel %s: %w", ver, err)
	}
	return ver, k, nil
}

// bzImageToELF unpacks the compressed payload of an x86 bzImage.
func bzImageToELF(b []byte) ([]byte, error) {
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not an x86 bzImage")
	}
	setup := int(b[0x1f1])
	if setup == 0 {
		setup = 4
	}
	off := int(binary.LittleEndian.Uint32(b[0x248:]))
	n := int(binary.LittleEndian.Uint32(b[0x24c:]))
	base := (setup + 1) * 512
	if base+off+n > len(b) || n <= 0 {
		return nil, errors.New("bzImage payload out of bounds")
	}
	payload := b[base+off : base+off+n]
	var out []byte
	var err error
	switch {
	case bytes.HasPrefix(payload, []byte{0x02, 0x21, 0x4c, 0x18}):
		out, err = lz4LegacyDecode(payload)
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		out, err = gunzip(payload)
	default:
		return nil, fmt.Errorf("unsupported kernel compression %s (this builder unpacks lz4 and gzip)", compressionName(payload))
	}
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("unpacked kernel is not an ELF: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("unpacked kernel is for %v, not x86-64", f.Machine)
	}
	return out, nil
}

func compressionName(p []byte) string {
	switch {
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz"
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(p, []byte{0x5d, 0, 0}):
		return "lzma"
	case bytes.HasPrefix(p, []byte("BZh")):
		return "bzip2"
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O'}):
		return "lzo"
	}
	return fmt.Sprintf("(magic % x)", p[:min(4, len(p))])
}

// arm64Image checks (and if gzip-compressed, unpacks) an arm64 Image.
func arm64Image(b []byte) ([]byte, error) {
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		var err error
		if b, err = gunzip(b); err != nil {
			return nil, err
		}
	}
	if len(b) < 64 || string(b[56:60]) != "ARM\x64" {
		return nil, errors.New("not an arm64 Image (no ARM\\x64 magic)")
	}
	return b, nil
}

func gunzip(b []byte) ([]byte, error) {
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	r.Multistream(false)
	return io.ReadAll(r)
}

// collectModules returns the guest's modules (file contents by name) and
// their load order, from an unpacked kernel package.
func collectModules(pkgDir, kver string) (map[string][]byte, []string, error) {
	modDir := filepath.Join(pkgDir, "lib", "modules", kver)
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				builtin[modName(strings.TrimSuffix(filepath.Base(l), ".ko"))] = true
			}
		}
	}
	paths := map[string]string{}
	compressed := map[string]string{} // name → extension
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			paths[modName(name)] = p
		} else if i := strings.Index(d.Name(), ".ko."); i > 0 {
			compressed[modName(d.Name()[:i])] = d.Name()[i:]
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules: %w", err)
	}
	for _, m := range guestModules {
		if _, ok := paths[m]; !ok && !builtin[m] && compressed[m] != "" {
			return nil, nil, fmt.Errorf("kernel modules: %s is compressed (%s); this builder reads uncompressed .ko modules only", m, compressed[m])
		}
	}
	// Read dependencies lazily: only the closure of what the guest needs.
	deps := map[string][]string{}
	var load func(m string) error
	load = func(m string) error {
		if _, done := deps[m]; done || builtin[m] {
			return nil
		}
		p, ok := paths[m]
		if !ok {
			return nil // reported by moduleLoadOrder
		}
		d, err := modDepends(p)
		if err != nil {
			return err
		}
		deps[m] = d
		for _, x := range d {
			if err := load(x); err != nil {
				return err
			}
		}
		return nil
	}
	for _, m := range guestModules {
		if err := load(m); err != nil {
			return nil, nil, err
		}
	}
	order, err := moduleLoadOrder(guestModules, deps, builtin)
	if err != nil {
		return nil, nil, err
	}
	mods := map[string][]byte{}
	for _, m := range order {
		b, err := os.ReadFile(paths[m])
		if err != nil {
			return nil, nil, err
		}
		mods[m] = b
	}
	return mods, order, nil
}

// checkStaticELF makes sure a guest binary is a static ELF for arch: a
// dynamic one would not start in an initramfs that has no loader.
func checkStaticELF(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not an ELF: %w", err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		return fmt.Errorf("built for %v, want %v (%s)", f.Machine, want, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked: build it with CGO_ENABLED=0")
		}
	}
	return nil
}
