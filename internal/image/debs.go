package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// debFile is a Debian package on disk.
type debFile struct {
	Path, Package, Version, SHA256 string
}

func kernelMetaPackage(arch string) string { return "linux-image-cloud-" + arch }

// fetchDeb finds a package of Debian's archive for arch and downloads it
// into cacheDir with apt-get, reusing a cached copy whose sha256 matches what
// apt says. With meta, pkg is a meta package whose first linux-image
// dependency is the package wanted (the cloud kernel of the current ABI).
func fetchDeb(ctx context.Context, p progress, pkg, arch, cacheDir string, meta bool) (debFile, error) {
	if meta {
		out, err := run(ctx, "", "apt-cache", "depends", pkg+":"+arch)
		if err != nil {
			return debFile{}, aptHint(pkg, arch, err)
		}
		dep := ""
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: "); ok && strings.HasPrefix(v, "linux-image-") {
				dep, _, _ = strings.Cut(strings.Trim(v, "<>"), ":")
				break
			}
		}
		if dep == "" {
			return debFile{}, fmt.Errorf("%s:%s names no linux-image package", pkg, arch)
		}
		pkg = dep
	}
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg+":"+arch)
	if err != nil {
		return debFile{}, aptHint(pkg, arch, err)
	}
	f := debFields(out)
	d := debFile{Package: f["Package"], Version: f["Version"], SHA256: f["SHA256"]}
	if d.Package == "" || d.Version == "" || d.SHA256 == "" {
		return debFile{}, fmt.Errorf("apt-cache show %s:%s: no package, version or sha256", pkg, arch)
	}
	if path := cachedDeb(cacheDir, d.Package, arch, d.SHA256); path != "" {
		d.Path = path
		p.step("%s %s (cached)", d.Package, d.Version)
		return d, nil
	}
	p.step("downloading %s %s for %s", d.Package, d.Version, arch)
	if _, err := run(ctx, cacheDir, "apt-get", "download", "-q", d.Package+":"+arch+"="+d.Version); err != nil {
		return debFile{}, fmt.Errorf("download %s: %w", d.Package, err)
	}
	if d.Path = cachedDeb(cacheDir, d.Package, arch, d.SHA256); d.Path == "" {
		return debFile{}, fmt.Errorf("download %s: no file with the sha256 apt expects (%s)", d.Package, d.SHA256[:16])
	}
	return d, nil
}

func aptHint(pkg, arch string, err error) error {
	if arch != hostDebArch() {
		return fmt.Errorf("%s for %s not found (%v): enable the architecture with `dpkg --add-architecture %s && apt-get update`", pkg, arch, err, arch)
	}
	return fmt.Errorf("%s not found (%v): run `apt-get update`", pkg, err)
}

// cachedDeb finds pkg's .deb for arch in dir with the given sha256.
func cachedDeb(dir, pkg, arch, sum string) string {
	matches, _ := filepath.Glob(filepath.Join(dir, pkg+"_*_"+arch+".deb"))
	for _, m := range matches {
		if s, err := fileSHA256(m); err == nil && s == sum {
			return m
		}
	}
	return ""
}

// localDeb describes an operator-given .deb.
func localDeb(ctx context.Context, path string) (debFile, error) {
	out, err := run(ctx, "", "dpkg-deb", "--field", path, "Package", "Version")
	if err != nil {
		return debFile{}, fmt.Errorf("kernel package %s: %w", path, err)
	}
	f := debFields(out)
	sum, err := fileSHA256(path)
	if err != nil {
		return debFile{}, err
	}
	return debFile{Path: path, Package: f["Package"], Version: f["Version"], SHA256: sum}, nil
}

func debFields(b []byte) map[string]string {
	f := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ": "); ok && !strings.HasPrefix(k, " ") {
			if _, dup := f[k]; !dup {
				f[k] = strings.TrimSpace(v)
			}
		}
	}
	return f
}

func dpkgExtract(ctx context.Context, deb, dir string) error {
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, dir); err != nil {
		return fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
	}
	return nil
}

// run runs a command and returns its stdout; its stderr goes into the error.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		return out, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return out, nil
}
