// Package image builds, stores and verifies VM images: a kernel, an
// initramfs and a root filesystem for one architecture.
//
// The store is content-addressed:
//
//	<root>/blobs/<id>/manifest.json   what the image is, with every file's sha256
//	<root>/blobs/<id>/vmlinux         amd64: the kernel as an ELF (QEMU enters it through PVH)
//	<root>/blobs/<id>/Image           arm64: the kernel's uncompressed Image
//	<root>/blobs/<id>/initrd.cpio     tandem-guest as /init, the virtio modules
//	<root>/blobs/<id>/rootfs.ext4     the root filesystem, read-only base of every VM
//	<root>/blobs/<id>/.verified       what Verify remembers (see there)
//	<root>/blobs/<id>/.fetched        the image came by Fetch (transfer.go): Collect may remove it
//	<root>/.fetch-*/                  a Fetch at work (never half an image in blobs/)
//	<root>/refs/<kind>-<arch>         the id that name points at
//	<root>/cache/                     downloaded .debs (unless BuildOptions.CacheDir)
//
// where id is the first 16 hex digits of the sha256 of the manifest's
// canonical JSON (its creation time left out), so the same inputs name the
// same image.
//
// Reproducibility: the kernel and the initramfs are byte-for-byte functions
// of the kernel package and the tandem-guest binary (fixed order, times and
// inode numbers in the cpio). The root filesystem is too, as far as
// e2fsprogs allows and as measured with e2fsprogs 1.47.0 (two stores, and a
// staging tree on tmpfs against one on ext4, gave the same bytes): mkfs.ext4
// runs with a configuration of its own instead of the host's, a fixed
// clock (E2FSPROGS_FAKE_TIME), a uuid and directory hash seed derived from
// a hash of the staged tree, files whose times are set to 2000-01-01, and
// debugfs then sets the ctimes and atimes mkfs copied (no system call sets
// a ctime). What can still change the root filesystem's bytes, and so the
// id, for the same inputs: another e2fsprogs version, and — for the foreign
// architecture — whether qemu-user is installed to list busybox's applets
// (see listApplets). The manifest records the inputs (kernel .deb sha256,
// guest sha256, busybox version) either way.
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
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("image not found")
	ErrCorrupt  = errors.New("image corrupt")
)

// File names inside an image directory.
const (
	VmlinuxFile  = "vmlinux" // amd64 kernel
	ImageFile    = "Image"   // arm64 kernel
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
	Schema                int        `json:"schema"`
	Kind                  string     `json:"kind"`
	Arch                  string     `json:"arch"`
	Kernel                KernelInfo `json:"kernel"`
	Modules               []string   `json:"modules"` // in load order
	GuestSHA256           string     `json:"guest_sha256"`
	FakeRunnerSHA256      string     `json:"fakerunner_sha256,omitempty"`
	BusyboxPackageVersion string     `json:"busybox_package_version,omitempty"`
	Cmdline               string     `json:"cmdline"` // recommended kernel parameters
	// Runner says how VMs of the image start their runner; nil: the image
	// has none (VMs run only what they are given, as `tandem run` does).
	Runner *RunnerInfo `json:"runner,omitempty"`
	// Packages are the Debian packages of a runner image's root filesystem.
	Packages []Package           `json:"packages,omitempty"`
	Created  string              `json:"created,omitempty"`
	Files    map[string]FileInfo `json:"files"`
}

// ID is the content address of the manifest: the first 16 hex digits of
// the sha256 of its canonical JSON.
func (m Manifest) ID() string {
	b, _ := json.Marshal(m)
	id, _ := manifestID(b)
	return id
}

// manifestID computes the id of a manifest from its JSON, whatever its
// layout: the canonical form drops "created", sorts the keys of every
// object and has no insignificant space. Computed from the document rather
// than from the Manifest type, an id stays valid when the type gains or
// renames fields.
func manifestID(raw []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers keep their exact text
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return "", err
	}
	if dec.More() {
		return "", errors.New("trailing data after the manifest")
	}
	delete(doc, "created")
	b, err := json.Marshal(doc) // encoding/json sorts map keys
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16], nil
}

// Image is one image in the store.
type Image struct {
	ID       string   `json:"id"`
	Dir      string   `json:"dir"`
	Manifest Manifest `json:"manifest"`
}

// kernelFileName is what the kernel is called in an image for arch.
func kernelFileName(arch string) string {
	if arch == "arm64" {
		return ImageFile
	}
	return VmlinuxFile
}

// Kernel is the path of the image's kernel: an ELF vmlinux (amd64) or an
// arm64 Image.
func (im *Image) Kernel() string {
	for _, n := range []string{VmlinuxFile, ImageFile, "kernel"} { // "kernel": images built before the split
		if _, ok := im.Manifest.Files[n]; ok {
			return filepath.Join(im.Dir, n)
		}
	}
	return filepath.Join(im.Dir, kernelFileName(im.Manifest.Arch))
}

// Initrd is the path of the image's initramfs (uncompressed newc cpio).
func (im *Image) Initrd() string { return filepath.Join(im.Dir, InitrdFile) }

// Rootfs is the path of the image's root filesystem (ext4, read-only).
func (im *Image) Rootfs() string { return filepath.Join(im.Dir, RootfsFile) }

// Store is a directory of images.
type Store struct {
	root string
	live liveState // fetches and pins of this process (transfer.go, gc.go)
}

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
	hint := ": `tandem image list` shows the images there are"
	if kind, arch, ok := strings.Cut(ref, "-"); ok && refRE.MatchString(ref) {
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
	if got, err := manifestID(b); err != nil || got != id {
		return nil, fmt.Errorf("%w: image %s: manifest does not match its id (it hashes to %s)", ErrCorrupt, id, got)
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

// Remove deletes an image (by its full id) and every ref naming it. An id
// not in the store is ErrNotFound.
func (s *Store) Remove(id string) error {
	if !idRE.MatchString(id) || len(id) != 16 {
		return fmt.Errorf("invalid image id %q (want 16 hex digits)", id)
	}
	unlock, err := fsutil.Lock(context.Background(), filepath.Join(s.root, ".lock"), true, nil)
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(s.root, "blobs", id)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: no image %s in %s", ErrNotFound, id, s.root)
	}
	refs, _ := os.ReadDir(filepath.Join(s.root, "refs"))
	for _, r := range refs {
		p := filepath.Join(s.root, "refs", r.Name())
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == id {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove image %s: %w", id, err)
			}
		}
	}
	// Out of blobs/ in one step first, so no reader sees a half-deleted
	// image; then delete.
	trash, err := os.MkdirTemp(s.root, ".build-rm-")
	if err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := os.Rename(dir, filepath.Join(trash, id)); err != nil {
		os.Remove(trash)
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	return nil
}

// verifiedStamp is what .verified remembers of a file that hashed right.
type verifiedStamp struct {
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
	SHA   string `json:"sha256"`
}

func statStamp(path string) (verifiedStamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return verifiedStamp{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return verifiedStamp{
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
		Ino:   st.Ino,
	}, nil
}

// Verify checks every file of the image against the manifest: presence,
// size and sha256. A mismatch is ErrCorrupt naming the file.
//
// Hashing the files (a 256 MiB root filesystem among them) on every boot
// would cost more than a KVM boot does, so a successful check is remembered
// in <Dir>/.verified with each file's size, mtime, ctime and inode number,
// and a file is hashed again only when one of them changes. The trade-off:
// any change made through the file system moves ctime (which no system call
// can set back), and a replaced file has another inode, so every such
// change is caught; what is not caught is damage beneath the file system
// (bit rot, writes to the raw block device) or a forged stamp by someone who
// can write the store anyway. VerifyFull, `tandem image verify`, hashes
// every byte regardless.
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
	names := slices.Sorted(maps.Keys(im.Manifest.Files))
	if len(names) == 0 {
		return fmt.Errorf("%w: image %s lists no files", ErrCorrupt, im.ID)
	}
	fresh := map[string]verifiedStamp{}
	changed := full
	for _, n := range names {
		want := im.Manifest.Files[n]
		p := filepath.Join(im.Dir, n)
		if n != filepath.Base(n) || n == "." || n == ".." {
			return fmt.Errorf("%w: image %s: manifest names file %q", ErrCorrupt, im.ID, n)
		}
		stamp, err := statStamp(p)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: image %s: %s is missing", ErrCorrupt, im.ID, n)
		}
		if err != nil {
			return fmt.Errorf("image %s: %w", im.ID, err)
		}
		if stamp.Size != want.Size {
			return fmt.Errorf("%w: image %s: %s is %d bytes, manifest says %d", ErrCorrupt, im.ID, n, stamp.Size, want.Size)
		}
		stamp.SHA = want.SHA256
		if old, ok := stamps[n]; ok && old == stamp {
			fresh[n] = stamp
			continue
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return fmt.Errorf("image %s: %s: %w", im.ID, n, err)
		}
		if sum != want.SHA256 {
			return fmt.Errorf("%w: image %s: %s has sha256 %.16s…, manifest says %.16s…", ErrCorrupt, im.ID, n, sum, want.SHA256)
		}
		fresh[n] = stamp
		changed = true
	}
	if changed {
		im.saveStamps(fresh)
	}
	return nil
}

// saveStamps replaces .verified. Best effort: a read-only store still
// verifies, only slower.
func (im *Image) saveStamps(stamps map[string]verifiedStamp) {
	b, _ := json.Marshal(stamps)
	tmp, err := os.CreateTemp(im.Dir, ".verified-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), filepath.Join(im.Dir, verifiedFile)) != nil {
		os.Remove(tmp.Name())
	}
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
