package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// aptOutput is what `apt-cache show --no-all-versions` prints (shortened).
const aptOutput = `Package: linux-image-cloud-arm64
Source: linux-signed-arm64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: arm64
Depends: linux-image-6.1.0-56-cloud-arm64 (= 6.1.192-2)
Description: Linux for arm64 cloud (meta-package)
Description-md5: 0aa1e6bfc1a53e8fc1c6ee2d4ab4b3b3
Section: kernel
Filename: pool/main/l/linux-signed-arm64/linux-image-cloud-arm64_6.1.192-2_arm64.deb
Size: 1500
MD5sum: 8f0e0c6a4ee1b0f4aa3fba4a0c2e6ee0
SHA256: ab97b5c21a7b8ee1ab7a7a5a45f690ff773b6cde33183cd9d57de345133b3ce7

Package: busybox-static
Source: busybox (1:1.35.0-4+deb12u1)
Version: 1:1.35.0-4+deb12u1+b1
Architecture: arm64
Description: Standalone rescue shell with tons of builtin utilities
 BusyBox combines tiny versions of many common UNIX utilities into a single
 Package: not-a-field
SHA256: 732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5

Package: linux-image-6.1.0-55-cloud-arm64
Version: 6.1.192-1
Architecture: arm64
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
SHA256: ded05917efe2e060c1bcd729c08094238a174df7dad3df7e277ce05e5d4daab0

Package: linux-image-6.1.0-56-cloud-arm64
Version: 6.1.192-2
Architecture: arm64
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
SHA256: 481ab54a27246579aadeb372315c56de02f2fe0cba4e09b387946269fff2f415

`

func TestAptRecords(t *testing.T) {
	var recs []map[string]string
	for _, para := range bytes.Split([]byte(aptOutput), []byte("\n\n")) {
		if f := debFields(para); f["Package"] != "" {
			recs = append(recs, f)
		}
	}
	if len(recs) != 4 {
		t.Fatalf("%d records", len(recs))
	}
	meta, ok := recordFields(recs, "linux-image-cloud-arm64", "arm64")
	if !ok {
		t.Fatal("no meta package record")
	}
	name, version := kernelDependency(meta["Depends"])
	if name != "linux-image-6.1.0-56-cloud-arm64" || version != "6.1.192-2" {
		t.Errorf("kernel dependency: %q %q", name, version)
	}
	k, ok := findRecord(recs, name, version, "arm64")
	if !ok || k.SHA256 != "481ab54a27246579aadeb372315c56de02f2fe0cba4e09b387946269fff2f415" {
		t.Errorf("kernel record: %+v", k)
	}
	if _, ok := findRecord(recs, name, version, "amd64"); ok {
		t.Error("found an arm64 package for amd64")
	}
	bb, ok := findRecord(recs, "busybox-static", "", "arm64")
	if !ok || bb.Version != "1:1.35.0-4+deb12u1+b1" || bb.Package != "busybox-static" {
		t.Errorf("busybox record: %+v", bb)
	}
	if got := debFileName(bb); got != "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb" {
		t.Errorf("file name %s", got)
	}
	for dep, want := range map[string]string{
		"linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)":                "linux-image-6.1.0-56-cloud-amd64",
		"linux-image-6.12.117+deb12-cloud-arm64 (= 6.12.117-1~deb12u1)": "linux-image-6.12.117+deb12-cloud-arm64",
		"kmod, linux-image-x:arm64 | linux-image-y":                     "linux-image-x",
		"kmod, initramfs-tools":                                         "",
	} {
		if got, _ := kernelDependency(dep); got != want {
			t.Errorf("kernelDependency(%q) = %q, want %q", dep, got, want)
		}
	}
}

func TestAppletsFromBinary(t *testing.T) {
	names := []string{"[", "[[", "acpid", "ash", "busybox", "cat", "ls", "mkfs.ext2", "run-parts", "sh", "ssl_client"}
	for len(names) < 30 {
		names = append(names, "zz"+strings.Repeat("z", len(names)))
	}
	table := "\x00" + strings.Join(names, "\x00") + "\x00"
	bin := []byte("\x7fELF junk junk" + table + "ZZZ\x00more rodata\x00")
	got := appletsFromBinary(bin)
	want := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "busybox" })
	if !slices.Equal(got, want) {
		t.Errorf("applets %v, want %v", got, want)
	}
	if appletsFromBinary([]byte("no table here")) != nil {
		t.Error("found applets in nothing")
	}
	if appletsFromBinary([]byte("\x00[\x00[[\x00sh\x00")) != nil {
		t.Error("took three names for the table")
	}
}

func TestStageRootfsDeterministic(t *testing.T) {
	applets := []string{"bin/sh", "bin/ls", "usr/bin/[", "sbin/poweroff", "bin/busybox", "../escape"}
	var hashes []string
	for range 2 {
		root := filepath.Join(t.TempDir(), "rootfs")
		if err := stageTestRootfs(root, []byte("busybox"), []byte("guest"), nil, "1:1.35", applets); err != nil {
			t.Fatal(err)
		}
		h, err := treeHash(root)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, h)
		if l, err := os.Readlink(filepath.Join(root, "usr/bin/[")); err != nil || l != "/bin/busybox" {
			t.Errorf("applet link: %q %v", l, err)
		}
		if l, err := os.Readlink(filepath.Join(root, "usr/local/bin/tandem-debug-pause")); err != nil || l != "/usr/bin/tandem-guest" {
			t.Errorf("tandem-debug-pause: %q %v, want a link to /usr/bin/tandem-guest", l, err)
		}
		if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSticky == 0 {
			t.Errorf("/tmp: %v %v", fi.Mode(), err)
		}
		if fi, err := os.Lstat(filepath.Join(root, "bin/busybox")); err != nil || !fi.Mode().IsRegular() || fi.ModTime().Unix() != epoch {
			t.Errorf("/bin/busybox: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "escape")); err == nil {
			t.Error("an applet path escaped the root")
		}
	}
	if hashes[0] != hashes[1] {
		t.Error("two stagings of the same inputs differ")
	}
}

// A download that fails is tried again after each pause, and the build
// goes on once it works; one that keeps failing returns apt's error.
func TestAptDownloadRetries(t *testing.T) {
	bin := t.TempDir()
	calls := filepath.Join(bin, "calls")
	// A stand-in apt-get: it fails (as apt does when a resolver is briefly
	// away) until it has been called FAILS times.
	script := `#!/bin/sh
echo x >> "` + calls + `"
n=$(wc -l < "` + calls + `")
if [ "$n" -le "$FAILS" ]; then
  echo "W: some warning" >&2
  echo "E: Failed to fetch http://deb.example/x.deb  Temporary failure resolving 'deb.example'" >&2
  exit 100
fi
`
	if err := os.WriteFile(filepath.Join(bin, "apt-get"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	old := downloadRetries
	downloadRetries = []time.Duration{time.Millisecond, time.Millisecond}
	t.Cleanup(func() { downloadRetries = old })
	d := debFile{Package: "p", Version: "1", Arch: "amd64"}
	var out strings.Builder
	p := &progress{w: &out, start: time.Now()}

	for _, tc := range []struct {
		fails, calls int
		ok           bool
	}{{0, 1, true}, {2, 3, true}, {3, 3, false}} {
		os.Remove(calls)
		t.Setenv("FAILS", strconv.Itoa(tc.fails))
		err := aptDownload(context.Background(), p, t.TempDir(), d)
		b, _ := os.ReadFile(calls)
		if n := strings.Count(string(b), "x"); n != tc.calls {
			t.Errorf("failing %d times: apt-get ran %d times, want %d", tc.fails, n, tc.calls)
		}
		if (err == nil) != tc.ok {
			t.Errorf("failing %d times: err %v", tc.fails, err)
		}
		if err != nil && !strings.Contains(err.Error(), "Temporary failure resolving") {
			t.Errorf("the error lost apt's reason: %v", err)
		}
	}
	if !strings.Contains(out.String(), "download of p failed (E: Failed to fetch") {
		t.Errorf("no progress line says why it tries again:\n%s", out.String())
	}
}
