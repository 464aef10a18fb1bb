package main

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Where the initramfs keeps its kernel modules and the order to load them in.
const (
	moduleDir  = "/lib/modules"
	moduleList = "/etc/tandem/modules"
)

// parseModuleList reads a module list: one .ko file name per line, already in
// dependency order. Blank lines and lines starting with '#' are skipped. A
// relative name is taken under dir. Anything else on a line is an error: the
// list is generated, so a surprise there is a bug worth stopping for.
func parseModuleList(r io.Reader, dir string) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("line %d: %q: want one module file name", n, line)
		}
		if !filepath.IsAbs(line) {
			line = filepath.Join(dir, line)
		}
		paths = append(paths, filepath.Clean(line))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return paths, nil
}

// moduleName is the name a module file is known by in messages.
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i > 0 {
		base = base[:i]
	}
	return base
}

// compressedModule says whether the kernel must decompress the file itself
// (finit_module's MODULE_INIT_COMPRESSED_FILE).
func compressedModule(path string) bool {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(path, ext) {
			return true
		}
	}
	return false
}

// moduleParams returns the parameters the kernel command line gives module
// mod ("mod.key=value" → "key=value"), space-separated, as modprobe passes
// them. Module names treat '-' and '_' alike.
func moduleParams(cmdline, mod string) string {
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	prefix := norm(mod) + "."
	var params []string
	for _, f := range strings.Fields(cmdline) {
		name, _, _ := strings.Cut(f, "=")
		if i := strings.IndexByte(name, '.'); i > 0 && norm(name[:i+1]) == prefix && len(f) > len(prefix) {
			params = append(params, f[len(prefix):])
		}
	}
	return strings.Join(params, " ")
}
