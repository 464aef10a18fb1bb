// Package ociimage builds small, runnable Linux container images for tests
// — no registry, no Docker daemon and no download needed — and ships them
// the two ways tests use: as a `docker save` archive for `docker load`, and
// pushed to a registry over the registry HTTP API v2.
//
// An image is one layer holding Debian's static busybox (package
// busybox-static) and its applets as symlinks, plus any files the caller
// adds. Everything in it is deterministic (fixed times, owners and order,
// gzip without a timestamp), so the same input always gives the same
// digests.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// Media types of Docker's image manifest, version 2 schema 2.
const (
	MediaTypeManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeConfig   = "application/vnd.docker.container.image.v1+json"
	MediaTypeLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// Created is the fixed time of every image and file this package makes.
var Created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Applets are the busybox commands the image links into /bin.
var Applets = []string{
	"[", "ash", "awk", "base64", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df", "dirname",
	"du", "echo", "env", "expr", "false", "find", "grep", "gunzip", "gzip", "head", "hostname", "id",
	"ip", "kill", "ln", "ls", "md5sum", "mkdir", "mktemp", "mv", "nc", "nproc", "nslookup", "ping",
	"printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh", "sha256sum", "sleep", "sort",
	"stat", "tail", "tar", "tee", "test", "timeout", "touch", "tr", "true", "uname", "uniq", "wc",
	"wget", "which", "whoami", "xargs", "yes",
}

// Image is a single-platform image in Docker's v2 schema 2 form.
type Image struct {
	// Layers are the layers' uncompressed tars, bottom first; their sha256
	// digests are the config's diff_ids.
	Layers [][]byte
	// CompressedLayers are Layers gzipped, as a registry stores and the
	// manifest names them.
	CompressedLayers [][]byte
	// Config is the image config JSON; Manifest the manifest JSON.
	Config   []byte
	Manifest []byte
	// Arch is the image's architecture: amd64 or arm64.
	Arch string
}

// Digest is the manifest's digest, "sha256:…": what `docker pull
// REPO@DIGEST` and a registry name the image by.
func (im *Image) Digest() string { return digest(im.Manifest) }

// ConfigDigest is the config blob's digest, also Docker's image ID.
func (im *Image) ConfigDigest() string { return digest(im.Config) }

// LayerDigests are the compressed layers' digests, as the manifest lists them.
func (im *Image) LayerDigests() []string {
	var out []string
	for _, l := range im.CompressedLayers {
		out = append(out, digest(l))
	}
	return out
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// HostBusybox reads /bin/busybox (Debian: apt-get install busybox-static)
// and returns it with its architecture.
func HostBusybox() (busybox []byte, arch string, err error) {
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, "", fmt.Errorf("busybox: %w (apt-get install busybox-static)", err)
	}
	arch, err = elfArch(b)
	if err != nil {
		return nil, "", fmt.Errorf("/bin/busybox: %w", err)
	}
	return b, arch, nil
}

// elfArch is an ELF executable's architecture, as Go and Docker name it.
func elfArch(b []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	}
	return "", fmt.Errorf("ELF machine %v is neither amd64 nor arm64", f.Machine)
}

// Busybox builds an image from a static busybox binary for arch (amd64 or
// arm64, which the binary must be): /bin/busybox with its applets linked
// in /bin, /etc/passwd and /etc/group for root, /tmp, /root, and
// extraFiles (path → content; regular files, mode 0755, parents made as
// needed). Its command is /bin/sh.
func Busybox(busybox []byte, arch string, extraFiles map[string][]byte) (*Image, error) {
	if arch != "amd64" && arch != "arm64" {
		return nil, fmt.Errorf("ociimage: arch %q: want amd64 or arm64", arch)
	}
	got, err := elfArch(busybox)
	if err != nil {
		return nil, fmt.Errorf("ociimage: busybox: %w", err)
	}
	if got != arch {
		return nil, fmt.Errorf("ociimage: busybox is an %s binary, not %s", got, arch)
	}
	lt := newLayer()
	for _, d := range []string{"bin", "etc", "root", "tmp", "usr", "usr/bin", "var"} {
		lt.dir(d)
	}
	lt.file("bin/busybox", busybox, 0o755)
	for _, a := range Applets {
		lt.symlink("bin/"+a, "busybox")
	}
	lt.file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	lt.file("etc/group", []byte("root:x:0:\n"), 0o644)
	names := slices.Sorted(maps.Keys(extraFiles))
	for _, name := range names {
		p := path.Clean("/" + name)[1:]
		if p == "" || name == "" || strings.Contains(name, "\x00") || slices.Contains(strings.Split(name, "/"), "..") {
			return nil, fmt.Errorf("ociimage: extra file %q: want a path such as /usr/bin/job", name)
		}
		if lt.has(p) {
			return nil, fmt.Errorf("ociimage: extra file %q: the image already has /%s", name, p)
		}
		var parents []string
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := lt.ensureDir(parents[i]); err != nil {
				return nil, fmt.Errorf("ociimage: extra file %q: %w", name, err)
			}
		}
		lt.file(p, extraFiles[name], 0o755)
	}
	layer, err := lt.close()
	if err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}
	return assemble(arch, [][]byte{layer})
}

// assemble compresses the layers and writes the config and manifest.
func assemble(arch string, layers [][]byte) (*Image, error) {
	im := &Image{Layers: layers, Arch: arch}
	var diffIDs []string
	for _, l := range layers {
		diffIDs = append(diffIDs, digest(l))
		gz, err := gzipBytes(l)
		if err != nil {
			return nil, fmt.Errorf("ociimage: compress layer: %w", err)
		}
		im.CompressedLayers = append(im.CompressedLayers, gz)
	}
	type history struct {
		Created   time.Time `json:"created"`
		CreatedBy string    `json:"created_by"`
	}
	cfg := struct {
		Architecture string    `json:"architecture"`
		Variant      string    `json:"variant,omitempty"`
		OS           string    `json:"os"`
		Created      time.Time `json:"created"`
		Config       struct {
			Env []string `json:"Env"`
			Cmd []string `json:"Cmd"`
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
		History []history `json:"history"`
	}{Architecture: arch, OS: "linux", Created: Created}
	if arch == "arm64" {
		cfg.Variant = "v8"
	}
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Cmd = []string{"/bin/sh"}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = diffIDs
	for range layers {
		cfg.History = append(cfg.History, history{Created: Created, CreatedBy: "tandem ociimage"})
	}
	var err error
	if im.Config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	type descriptor struct {
		MediaType string `json:"mediaType"`
		Size      int    `json:"size"`
		Digest    string `json:"digest"`
	}
	man := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{SchemaVersion: 2, MediaType: MediaTypeManifest,
		Config: descriptor{MediaTypeConfig, len(im.Config), digest(im.Config)}}
	for _, l := range im.CompressedLayers {
		man.Layers = append(man.Layers, descriptor{MediaTypeLayer, len(l), digest(l)})
	}
	if im.Manifest, err = json.Marshal(man); err != nil {
		return nil, err
	}
	return im, nil
}

func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed) // no name, no time: deterministic
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layerTar writes a deterministic tar: root-owned entries at Created.
type layerTar struct {
	buf   bytes.Buffer
	tw    *tar.Writer
	kinds map[string]byte // path → tar type flag
	err   error
}

func newLayer() *layerTar {
	l := &layerTar{kinds: map[string]byte{}}
	l.tw = tar.NewWriter(&l.buf)
	return l
}

func (l *layerTar) has(p string) bool { _, ok := l.kinds[p]; return ok }

func (l *layerTar) add(h *tar.Header, body []byte) {
	if l.err != nil {
		return
	}
	h.ModTime, h.Uname, h.Gname = Created, "root", "root"
	l.kinds[strings.TrimSuffix(h.Name, "/")] = h.Typeflag
	if l.err = l.tw.WriteHeader(h); l.err == nil && len(body) > 0 {
		_, l.err = l.tw.Write(body)
	}
}

func (l *layerTar) dir(p string) {
	mode := int64(0o755)
	switch p {
	case "tmp":
		mode = 0o1777
	case "root":
		mode = 0o700
	}
	l.add(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode}, nil)
}

// ensureDir adds directory p unless it exists; a file there is an error.
func (l *layerTar) ensureDir(p string) error {
	switch k, ok := l.kinds[p]; {
	case !ok:
		l.dir(p)
	case k != tar.TypeDir:
		return errors.New("/" + p + " is not a directory")
	}
	return nil
}

func (l *layerTar) file(p string, body []byte, mode int64) {
	l.add(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(body))}, body)
}

func (l *layerTar) symlink(p, target string) {
	l.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}, nil)
}

func (l *layerTar) close() ([]byte, error) {
	if l.err != nil {
		return nil, l.err
	}
	if err := l.tw.Close(); err != nil {
		return nil, err
	}
	return l.buf.Bytes(), nil
}
