// Package imagetest writes small fake images into an image store for tests
// that move images around without booting them: a kernel and an initrd of
// random bytes, and a sparse root filesystem.
package imagetest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-ci/tandem/internal/image"
)

// Options shape a fake image.
type Options struct {
	Arch string // default amd64
	Kind string // default test
	Seed int64  // varies the content, so the id
	// RootfsSize is the root filesystem's size (default 64 MiB), of
	// which RootfsData bytes (default 4 MiB), in a few extents, are data
	// and the rest holes.
	RootfsSize, RootfsData int64
	// Ref, if set, is a ref made to point at the image (e.g. test-amd64).
	Ref string
}

// Add writes a fake image into st and returns it.
func Add(t testing.TB, st *image.Store, o Options) *image.Image {
	t.Helper()
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	if o.Kind == "" {
		o.Kind = "test"
	}
	if o.RootfsSize == 0 {
		o.RootfsSize = 64 << 20
	}
	if o.RootfsData == 0 {
		o.RootfsData = 4 << 20
	}
	rnd := rand.New(rand.NewSource(o.Seed))
	work, err := os.MkdirTemp(st.Root(), "imagetest-")
	if err != nil {
		t.Fatal(err)
	}
	kernel := image.VmlinuxFile
	if o.Arch == "arm64" {
		kernel = image.ImageFile
	}
	m := image.Manifest{Schema: 1, Kind: o.Kind, Arch: o.Arch, Cmdline: "console=ttyS0",
		Created: "2026-11-27T00:00:00Z", Files: map[string]image.FileInfo{}}
	write := func(name string, size int64, extents [][2]int64) {
		f, err := os.OpenFile(filepath.Join(work, name), os.O_CREATE|os.O_RDWR, 0o444)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		for _, e := range extents {
			for done := int64(0); done < e[1]; {
				k := min(e[1]-done, int64(len(buf)))
				rnd.Read(buf[:k])
				if _, err := f.WriteAt(buf[:k], e[0]+done); err != nil {
					t.Fatal(err)
				}
				done += k
			}
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
			t.Fatal(err)
		}
		m.Files[name] = image.FileInfo{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size}
	}
	write(kernel, 256<<10+int64(o.Seed%1000), [][2]int64{{0, 256<<10 + int64(o.Seed%1000)}})
	write(image.InitrdFile, 64<<10, [][2]int64{{0, 64 << 10}})
	// Data in four extents spread over the file, the last at its end.
	var ext [][2]int64
	per := o.RootfsData / 4
	for i := int64(0); i < 4; i++ {
		off := i * (o.RootfsSize / 4)
		if i == 3 {
			off = o.RootfsSize - per
		}
		ext = append(ext, [2]int64{off, per})
	}
	write(image.RootfsFile, o.RootfsSize, ext)
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(work, "manifest.json"), b, 0o444); err != nil {
		t.Fatal(err)
	}
	id := m.ID()
	if err := os.Rename(work, filepath.Join(st.Root(), "blobs", id)); err != nil {
		t.Fatal(err)
	}
	if o.Ref != "" {
		if err := os.WriteFile(filepath.Join(st.Root(), "refs", o.Ref), []byte(id+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	im, err := st.Resolve(id)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// Corrupt flips one byte of an image's file at offset (root may write the
// read-only files).
func Corrupt(t testing.TB, im *image.Image, name string, offset int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(im.Dir, name), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, offset); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, offset); err != nil {
		t.Fatal(err)
	}
}
