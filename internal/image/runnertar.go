package image

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// runnerTarballArch is the architecture's name in GitHub's runner tarballs
// (actions-runner-linux-<arch>-<version>.tar.gz).
func runnerTarballArch(arch string) string {
	if arch == "amd64" {
		return "x64"
	}
	return arch
}

// installRunnerTarball unpacks GitHub's runner tarball into dir, owned by
// the runner account, and returns the tarball's sha256. It refuses a
// tarball that is not GitHub's runner for arch (no run.sh, no
// bin/Runner.Listener of the architecture) and any entry that would land
// outside dir.
func installRunnerTarball(tarball, dir, arch string) (string, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return "", fmt.Errorf("runner tarball: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	zr, err := gzip.NewReader(io.TeeReader(f, h))
	if err != nil {
		return "", fmt.Errorf("runner tarball %s: not a .tar.gz: %w", tarball, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tr := tar.NewReader(zr)
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("runner tarball %s: %w", tarball, err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == "." {
			continue
		}
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return "", fmt.Errorf("runner tarball %s: entry %q leaves its directory", tarball, hdr.Name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		mode := os.FileMode(hdr.Mode) & 0o777
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, mode|0o700)
		case tar.TypeReg:
			err = writeTarFile(dst, tr, mode)
		case tar.TypeSymlink:
			t := hdr.Linkname
			if path.IsAbs(t) || strings.HasPrefix(path.Clean(path.Join(path.Dir(name), t)), "../") {
				return "", fmt.Errorf("runner tarball %s: symlink %s -> %s leaves its directory", tarball, name, t)
			}
			os.MkdirAll(filepath.Dir(dst), 0o755)
			err = os.Symlink(t, dst)
		case tar.TypeLink:
			src := path.Clean(hdr.Linkname)
			if path.IsAbs(src) || strings.HasPrefix(src, "../") {
				return "", fmt.Errorf("runner tarball %s: link %s -> %s leaves its directory", tarball, name, src)
			}
			os.MkdirAll(filepath.Dir(dst), 0o755)
			err = os.Link(filepath.Join(dir, filepath.FromSlash(src)), dst)
		default:
			return "", fmt.Errorf("runner tarball %s: entry %s has unexpected type %q", tarball, name, hdr.Typeflag)
		}
		if err != nil {
			return "", fmt.Errorf("runner tarball %s: %s: %w", tarball, name, err)
		}
		seen[name] = true
	}
	if _, err := io.Copy(io.Discard, f); err != nil { // the rest, for the hash
		return "", err
	}
	for _, want := range []string{"run.sh", "bin/Runner.Listener"} {
		if !seen[want] {
			return "", fmt.Errorf("runner tarball %s: no %s: not GitHub's actions/runner (want actions-runner-linux-%s-<version>.tar.gz)",
				tarball, want, runnerTarballArch(arch))
		}
	}
	if err := checkELFArch(filepath.Join(dir, "bin", "Runner.Listener"), arch); err != nil {
		return "", fmt.Errorf("runner tarball %s: %w (want actions-runner-linux-%s-<version>.tar.gz)", tarball, err, runnerTarballArch(arch))
	}
	// The runner writes its config, diagnostics and _work beside itself.
	err = filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, runnerUID, runnerUID)
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeTarFile(dst string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(dst, mode)
	}
	return err
}

// checkELFArch says whether the ELF file at p is for arch.
func checkELFArch(p, arch string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		return fmt.Errorf("%s is for %v, not %s", filepath.Base(p), f.Machine, arch)
	}
	return nil
}
