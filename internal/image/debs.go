package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// debFile is a Debian package: what apt says of it and, once fetched, where
// it is on disk.
type debFile struct {
	Package, Version, Arch, SHA256 string
	Path                           string
}

func kernelMetaPackage(arch string) string { return "linux-image-cloud-" + arch }

const busyboxPackage = "busybox-static"

// resolvePackages asks apt which packages to build from: the cloud kernel
// its meta package currently depends on (unless kernel is false) and
// busybox-static, for arch. apt-cache loads all of its package lists on
// every run (about a second here), so it runs once, with a glob that also
// returns the versioned kernel packages; a second call is made only if the
// meta package names a kernel the glob did not match.
func resolvePackages(ctx context.Context, arch string, kernel bool) (kdeb, bb debFile, err error) {
	names := []string{busyboxPackage + ":" + arch}
	if kernel {
		names = append(names, kernelMetaPackage(arch)+":"+arch, "linux-image-*-cloud-"+arch+":"+arch)
	}
	recs, err := aptShow(ctx, names...)
	if err != nil {
		return debFile{}, debFile{}, aptHint(busyboxPackage, arch, err)
	}
	bb, ok := findRecord(recs, busyboxPackage, "", arch)
	if !ok {
		return debFile{}, debFile{}, aptHint(busyboxPackage, arch, errors.New("apt knows no such package"))
	}
	if !kernel {
		return debFile{}, bb, nil
	}
	meta := kernelMetaPackage(arch)
	mrec, ok := recordFields(recs, meta, arch)
	if !ok {
		return debFile{}, debFile{}, aptHint(meta, arch, errors.New("apt knows no such package"))
	}
	name, version := kernelDependency(mrec["Depends"])
	if name == "" {
		return debFile{}, debFile{}, fmt.Errorf("%s:%s depends on no linux-image package (Depends: %s)", meta, arch, mrec["Depends"])
	}
	if kdeb, ok = findRecord(recs, name, version, arch); ok {
		return kdeb, bb, nil
	}
	if recs, err = aptShow(ctx, name+":"+arch); err != nil {
		return debFile{}, debFile{}, aptHint(name, arch, err)
	}
	if kdeb, ok = findRecord(recs, name, version, arch); !ok {
		return debFile{}, debFile{}, fmt.Errorf("%s:%s depends on %s %s, which apt cannot find: run `apt-get update`", meta, arch, name, version)
	}
	return kdeb, bb, nil
}

// kernelDependency picks the linux-image package out of a meta package's
// Depends field: "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
func kernelDependency(depends string) (name, version string) {
	for _, alt := range strings.Split(depends, ",") {
		alt, _, _ = strings.Cut(alt, "|") // the first alternative
		alt = strings.TrimSpace(alt)
		n, rest, _ := strings.Cut(alt, " ")
		n, _, _ = strings.Cut(n, ":")
		if !strings.HasPrefix(n, "linux-image-") {
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(rest), "(="); ok {
			version = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), ")"))
		}
		return n, version
	}
	return "", ""
}

// aptShow returns the candidate records apt-cache has for names (which may
// be globs). Names apt does not know are left out; if it knows none, the
// error says so.
func aptShow(ctx context.Context, names ...string) ([]map[string]string, error) {
	out, err := run(ctx, "", "apt-cache", append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil && len(bytes.TrimSpace(out)) == 0 {
		return nil, err
	}
	var recs []map[string]string
	for _, para := range bytes.Split(out, []byte("\n\n")) {
		if f := debFields(para); f["Package"] != "" {
			recs = append(recs, f)
		}
	}
	return recs, nil
}

func recordFields(recs []map[string]string, pkg, arch string) (map[string]string, bool) {
	for _, r := range recs {
		if r["Package"] == pkg && (r["Architecture"] == arch || r["Architecture"] == "all") {
			return r, true
		}
	}
	return nil, false
}

// findRecord finds pkg for arch (at version, unless that is "") in recs.
func findRecord(recs []map[string]string, pkg, version, arch string) (debFile, bool) {
	for _, r := range recs {
		if r["Package"] != pkg || (r["Architecture"] != arch && r["Architecture"] != "all") {
			continue
		}
		if version != "" && r["Version"] != version {
			continue
		}
		d := debFile{Package: pkg, Version: r["Version"], Arch: r["Architecture"], SHA256: r["SHA256"]}
		return d, d.Version != "" && len(d.SHA256) == 64
	}
	return debFile{}, false
}

func aptHint(pkg, arch string, err error) error {
	if arch != hostDebArch() {
		return fmt.Errorf("%s:%s not found (%v): enable the architecture with `dpkg --add-architecture %s && apt-get update`", pkg, arch, err, arch)
	}
	return fmt.Errorf("%s not found (%v): run `apt-get update`", pkg, err)
}

// debFileName is the name `apt-get download` gives a package's file.
func debFileName(d debFile) string {
	return d.Package + "_" + strings.ReplaceAll(d.Version, ":", "%3a") + "_" + d.Arch + ".deb"
}

// fetchDeb puts d into cacheDir with `apt-get download`, unless a file of
// that name with the sha256 apt expects is there already. A cached file
// with another sha256 (a truncated download, a rebuilt package) is
// replaced. The cache directory is locked while this runs, so that stores
// sharing a cache do not download into one file at once.
func fetchDeb(ctx context.Context, p *progress, d debFile, cacheDir string) (debFile, error) {
	unlock, err := fsutil.Lock(ctx, filepath.Join(cacheDir, ".lock"), true, func() { p.step("waiting for another download into %s", cacheDir) })
	if err != nil {
		return debFile{}, err
	}
	defer unlock()
	path := filepath.Join(cacheDir, debFileName(d))
	if sum, err := fileSHA256(path); err == nil && sum == d.SHA256 {
		d.Path = path
		p.step("%s %s: cached", d.Package, d.Version)
		return d, nil
	} else if err == nil {
		os.Remove(path)
	}
	p.step("downloading %s %s (%s)", d.Package, d.Version, d.Arch)
	if err := aptDownload(ctx, p, cacheDir, d); err != nil {
		return debFile{}, fmt.Errorf("download %s: %w", d.Package, err)
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return debFile{}, fmt.Errorf("download %s: %w", d.Package, err)
	}
	if sum != d.SHA256 {
		os.Remove(path)
		return debFile{}, fmt.Errorf("download %s: sha256 %.16s…, apt expects %.16s…", d.Package, sum, d.SHA256)
	}
	d.Path = path
	return d, nil
}

// downloadRetries are the pauses before trying a failed download again: a
// mirror or resolver that is briefly away (seen here as "Temporary failure
// resolving") should not fail an image build. Only the last error is
// returned.
var downloadRetries = []time.Duration{2 * time.Second, 10 * time.Second}

// aptDownload runs `apt-get download` for d into dir, again after each
// pause of downloadRetries while it fails.
func aptDownload(ctx context.Context, p *progress, dir string, d debFile) error {
	for i := 0; ; i++ {
		_, err := run(ctx, dir, "apt-get", "download", "-q", d.Package+":"+d.Arch+"="+d.Version)
		if err == nil || i == len(downloadRetries) || ctx.Err() != nil {
			return err
		}
		p.step("download of %s failed (%s); trying again in %s", d.Package, lastLine(err.Error()), downloadRetries[i])
		select {
		case <-ctx.Done():
			return err
		case <-time.After(downloadRetries[i]):
		}
	}
}

// lastLine is the last non-blank line of s: apt's error, after its warnings.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

// localDeb describes an operator-given kernel .deb, which must be for arch.
func localDeb(ctx context.Context, path, arch string) (debFile, error) {
	out, err := run(ctx, "", "dpkg-deb", "--field", path, "Package", "Version", "Architecture")
	if err != nil {
		return debFile{}, fmt.Errorf("kernel package %s: %w", path, err)
	}
	f := debFields(out)
	if f["Architecture"] != arch {
		return debFile{}, fmt.Errorf("kernel package %s is for %q, not %s", path, f["Architecture"], arch)
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return debFile{}, err
	}
	return debFile{Path: path, Package: f["Package"], Version: f["Version"], Arch: arch, SHA256: sum}, nil
}

// debFields parses one deb822 paragraph (continuation lines are dropped).
func debFields(b []byte) map[string]string {
	f := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
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
