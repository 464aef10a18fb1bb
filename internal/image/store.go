// Package image builds, stores and verifies VM images: a kernel, an
// initramfs and a root filesystem for one architecture.
//
// The store is content-addressed:
//
//	<root>/blobs/<id>/manifest.json   what the image is, with every file's sha256
//	<root>/blobs/<id>/kernel          uncompressed (ELF vmlinux on amd64, Image on arm64)
//	<root>/blobs/<id>/initrd.cpio     tandem-guest as /init, the virtio modules
//	<root>/blobs/<id>/rootfs.ext4     the root filesystem, read-only base of every VM
//	<root>/refs/<kind>-<arch>         the id that name points at
//
// where id is the first 16 hex digits of the sha256 of the manifest (its
// creation time left out), so the same inputs name the same image.
package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("image not found")
	ErrCorrupt  = errors.New("image corrupt")
)

// File names inside an image directory.
const (
	KernelFile   = "kernel"
	InitrdFile   = "initrd.cpio"
	RootfsFile   = "rootfs.ext4"
	manifestFile = "manifest.json"
	verifiedFile = ".verified"
)

// FileInfo is one file of an image.
type FileInfo struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// KernelInfo says where the kernel came from.
type KernelInfo struct {
	Package        string `json:"package"`         // e.g. linux-image-6.1.0-56-cloud-amd64
	PackageVersion string `json:"package_version"` // e.g. 6.1.192-2
	Version        string `json:"version"`         // uname -r, e.g. 6.1.0-56-cloud-amd64
	DebSHA256      string `json:"deb_sha256"`
}

// Manifest describes an image.
type Manifest struct {
	Schema         int                 `json:"schema"`
	Kind           string              `json:"kind"`
	Arch           string              `json:"arch"`
	Kernel         KernelInfo          `json:"kernel"`
	Modules        []string            `json:"modules"` // in load order
	GuestSHA256    string              `json:"guest_sha256"`
	BusyboxVersion string              `json:"busybox_version,omitempty"`
	Cmdline        string              `json:"cmdline"` // recommended kernel parameters
	Created        string              `json:"created,omitempty"`
	Files          map[string]FileInfo `json:"files"`
}

// ID is the content address of the manifest.
func (m Manifest) ID() string {
	m.Created = ""
	b, _ := json.Marshal(m) // map keys are sorted: canonical
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// Image is one image in the store.
type Image struct {
	ID       string   `json:"id"`
	Dir      string   `json:"dir"`
	Manifest Manifest `json:"manifest"`
}

// Kernel, Initrd and Rootfs are the paths of the image's files.
func (im *Image) Kernel() string { return filepath.Join(im.Dir, KernelFile) }
func (im *Image) Initrd() string { return filepath.Join(im.Dir, InitrdFile) }
func (im *Image) Rootfs() string { return filepath.Join(im.Dir, RootfsFile) }

// Store is a directory of images.
type Store struct{ root string }

// Open opens (creating if needed) the store at root.
func Open(root string) (*Store, error) {
	for _, d := range []string{"blobs", "refs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	return &Store{root: root}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

var (
	idRE  = regexp.MustCompile(`^[0-9a-f]{4,16}$`)
	refRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
)

// Resolve finds an image by ref ("test-amd64"), id, or unique id prefix.
func (s *Store) Resolve(ref string) (*Image, error) {
	if refRE.MatchString(ref) {
		b, err := os.ReadFile(filepath.Join(s.root, "refs", ref))
		if err == nil {
			return s.load(strings.TrimSpace(string(b)))
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
	}
	if idRE.MatchString(ref) {
		ents, err := os.ReadDir(filepath.Join(s.root, "blobs"))
		if err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
		var match []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ref) && idRE.MatchString(e.Name()) {
				match = append(match, e.Name())
			}
		}
		if len(match) == 1 {
			return s.load(match[0])
		}
		if len(match) > 1 {
			return nil, fmt.Errorf("image id prefix %q is ambiguous: %s", ref, strings.Join(match, ", "))
		}
	}
	hint := ""
	if kind, arch, ok := strings.Cut(ref, "-"); ok {
		hint = fmt.Sprintf(": build it with `tandem image build --kind %s --arch %s`", kind, arch)
	}
	return nil, fmt.Errorf("%w: %q in %s%s", ErrNotFound, ref, s.root, hint)
}

func (s *Store) load(id string) (*Image, error) {
	if !idRE.MatchString(id) {
		return nil, fmt.Errorf("%w: bad image id %q in refs", ErrCorrupt, id)
	}
	dir := filepath.Join(s.root, "blobs", id)
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: image %s has no manifest (rebuild it)", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: image %s: manifest: %v", ErrCorrupt, id, err)
	}
	if m.ID() != id {
		return nil, fmt.Errorf("%w: image %s: manifest does not match its id (it names %s)", ErrCorrupt, id, m.ID())
	}
	return &Image{ID: id, Dir: dir, Manifest: m}, nil
}

// List returns every image in the store, by kind, arch and id.
func (s *Store) List() ([]*Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "blobs"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || !idRE.MatchString(e.Name()) {
			continue
		}
		im, err := s.load(e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Manifest, out[j].Manifest
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Arch != b.Arch {
			return a.Arch < b.Arch
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Remove deletes an image and any ref naming it.
func (s *Store) Remove(id string) error {
	if !idRE.MatchString(id) || len(id) != 16 {
		return fmt.Errorf("invalid image id %q", id)
	}
	refs, _ := os.ReadDir(filepath.Join(s.root, "refs"))
	for _, r := range refs {
		p := filepath.Join(s.root, "refs", r.Name())
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == id {
			os.Remove(p)
		}
	}
	return os.RemoveAll(filepath.Join(s.root, "blobs", id))
}

// verifiedStamp is what .verified remembers of a file that hashed right.
type verifiedStamp struct {
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
	SHA   string `json:"sha256"`
}

// Verify checks every file of the image against the manifest: presence, size
// and sha256. A mismatch is ErrCorrupt naming the file.
//
// Hashing a root filesystem on every boot would cost more than the boot, so
// a successful check is remembered in .verified with each file's size, mtime,
// ctime and inode; a file is re-hashed when any of them changes. Any write
// through the file system changes ctime, so this catches every modification
// made through the kernel; it does not catch bit rot underneath it, which
// `tandem image verify` (a full re-hash) is for.
func (im *Image) Verify() error { return im.verify(false) }

// VerifyFull re-hashes every file regardless of the remembered stamps.
func (im *Image) VerifyFull() error { return im.verify(true) }

func (im *Image) verify(full bool) error {
	stamps := map[string]verifiedStamp{}
	if !full {
		if b, err := os.ReadFile(filepath.Join(im.Dir, verifiedFile)); err == nil {
			json.Unmarshal(b, &stamps)
		}
	}
	names := make([]string, 0, len(im.Manifest.Files))
	for n := range im.Manifest.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Errorf("%w: image %s lists no files", ErrCorrupt, im.ID)
	}
	fresh := map[string]verifiedStamp{}
	changed := false
	for _, n := range names {
		want := im.Manifest.Files[n]
		p := filepath.Join(im.Dir, n)
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: image %s: %s is missing", ErrCorrupt, im.ID, n)
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if fi.Size() != want.Size {
			return fmt.Errorf("%w: image %s: %s is %d bytes, want %d", ErrCorrupt, im.ID, n, fi.Size(), want.Size)
		}
		stamp := verifiedStamp{Size: fi.Size(), Mtime: fi.ModTime().UnixNano(), SHA: want.SHA256}
		if st != nil {
			stamp.Ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
			stamp.Ino = st.Ino
		}
		if old, ok := stamps[n]; ok && old == stamp && st != nil {
			fresh[n] = stamp
			continue
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return fmt.Errorf("image %s: %s: %w", im.ID, n, err)
		}
		if sum != want.SHA256 {
			return fmt.Errorf("%w: image %s: %s has sha256 %s, manifest says %s", ErrCorrupt, im.ID, n, sum[:16], want.SHA256[:16])
		}
		fresh[n] = stamp
		changed = true
	}
	if changed {
		b, _ := json.Marshal(fresh)
		// Best effort: a read-only store still verifies, only slower.
		tmp, err := os.CreateTemp(im.Dir, ".verified-*")
		if err == nil {
			_, werr := tmp.Write(b)
			cerr := tmp.Close()
			if werr == nil && cerr == nil {
				os.Rename(tmp.Name(), filepath.Join(im.Dir, verifiedFile))
			} else {
				os.Remove(tmp.Name())
			}
		}
	}
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
