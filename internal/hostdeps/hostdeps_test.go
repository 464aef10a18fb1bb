package hostdeps

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// essential packages are on every Debian system (Essential: yes, or apt
// itself); install-deps.sh need not name them.
var essential = map[string]bool{"apt": true, "dpkg": true, "coreutils": true, "util-linux": true, "tar": true, "dash": true, "bash": true}

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

// TestInstallDepsNamesEveryPackage keeps scripts/install-deps.sh and the
// tables one list: a program added to the tables whose package the script
// does not install would work on the machine it was written on and fail on
// a new one.
func TestInstallDepsNamesEveryPackage(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts/install-deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	// Words outside comments: a package named only in a comment is not
	// installed.
	words := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		for _, w := range regexp.MustCompile(`[a-z0-9][a-z0-9.+-]+`).FindAllString(line, -1) {
			words[w] = true
		}
	}
	for _, r := range All() {
		if !essential[r.Package] && !words[r.Package] {
			t.Errorf("%s comes from Debian package %s, which scripts/install-deps.sh does not install", r.Name, r.Package)
		}
	}
}

// TestExecutedProgramsAreInTables finds every os/exec call with a literal
// program name in the repository's Go code and checks that the tables know
// the program, so that Check can report it missing.
func TestExecutedProgramsAreInTables(t *testing.T) {
	root := repoRoot(t)
	fset := token.NewFileSet()
	found := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n != "." && (strings.HasPrefix(n, ".") || n == "bin" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "exec" {
				return true
			}
			arg := -1
			switch sel.Sel.Name {
			case "Command", "LookPath":
				arg = 0
			case "CommandContext":
				arg = 1
			}
			if arg < 0 || len(call.Args) <= arg {
				return true
			}
			lit, ok := call.Args[arg].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			name, _ := strconv.Unquote(lit.Value)
			found++
			if name == "go" || strings.HasPrefix(name, ".") {
				return true // the toolchain at /usr/local/go, and the repository's own scripts
			}
			if _, ok := programs[filepath.Base(name)]; !ok {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d runs %q, which hostdeps does not know: add it and its Debian package to the table",
					rel, fset.Position(lit.Pos()).Line, name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found < 10 {
		t.Fatalf("found only %d exec calls with a literal name: the scan is broken", found)
	}
}

// fakePath gives the test a PATH holding only the named programs (shell
// scripts that do nothing) and no sbin fallbacks.
func fakePath(t *testing.T, names ...string) {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A file that is not executable is not a program.
	if err := os.WriteFile(filepath.Join(dir, "debugfs"), []byte("not a program"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	old := sbinDirs
	sbinDirs = nil
	t.Cleanup(func() { sbinDirs = old })
}

func TestCheckNamesEveryMissingProgramAndItsPackage(t *testing.T) {
	fakePath(t, "apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "chroot", "cp", "dpkg-query")
	err := Check(RunnerImage(NativeArch()))
	var me *MissingError
	if !errors.As(err, &me) {
		t.Fatalf("Check: %v, want a *MissingError", err)
	}
	var names []string
	for _, s := range me.Missing {
		names = append(names, s.Name)
	}
	if got, want := strings.Join(names, " "), "debugfs mmdebstrap depmod"; got != want {
		t.Errorf("missing %q, want %q", got, want)
	}
	if got, want := strings.Join(me.Packages(), " "), "e2fsprogs kmod mmdebstrap"; got != want {
		t.Errorf("packages %q, want %q", got, want)
	}
	msg := err.Error()
	for _, want := range []string{"mmdebstrap (Debian package mmdebstrap;", "apt-get install --no-install-recommends e2fsprogs kmod mmdebstrap", "scripts/install-deps.sh"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}

	fakePath(t, "apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "chroot", "cp", "dpkg-query", "debugfs", "mmdebstrap", "depmod")
	os.Chmod(filepath.Join(os.Getenv("PATH"), "debugfs"), 0o755)
	if err := Check(RunnerImage(NativeArch())); err != nil {
		t.Errorf("Check with everything present: %v", err)
	}
}

func TestFindNamesThePackage(t *testing.T) {
	fakePath(t)
	_, err := Find("nft")
	if err == nil || !strings.Contains(err.Error(), "Debian package nftables") {
		t.Errorf("Find(nft) = %v, want an error naming nftables", err)
	}
	if _, err := Find("no-such-program"); err == nil {
		t.Error("Find(no-such-program) succeeded")
	}
}

func TestForeignArchNeedsArchTestAndBinfmt(t *testing.T) {
	foreign := map[string]string{"amd64": "arm64", "arm64": "amd64"}[NativeArch()]
	names := map[string]bool{}
	for _, r := range RunnerImage(foreign) {
		names[r.Name] = true
	}
	if !names["arch-test"] || !names[Binfmt(foreign).Name] {
		t.Errorf("a %s runner image on %s needs arch-test and binfmt: have %v", foreign, NativeArch(), names)
	}
	for _, r := range RunnerImage(NativeArch()) {
		if r.Name == "arch-test" || r.binfmt != "" {
			t.Errorf("a native runner image does not need %s", r.Name)
		}
	}
}

func TestBinfmt(t *testing.T) {
	for _, tc := range []struct {
		name, entry string
		mounted     bool
		want        string // "" for satisfied
	}{
		{"ok", "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n", true, ""},
		{"disabled", "disabled\nflags: F\n", true, "disabled"},
		{"no F flag", "enabled\nflags: P\n", true, "without the F flag"},
		{"absent", "", true, "not registered"},
		{"unmounted", "", false, "not mounted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			old := binfmtDir
			binfmtDir = dir
			defer func() { binfmtDir = old }()
			if tc.mounted {
				os.WriteFile(filepath.Join(dir, "register"), nil, 0o200)
			}
			if tc.entry != "" {
				os.WriteFile(filepath.Join(dir, "qemu-aarch64"), []byte(tc.entry), 0o644)
			}
			r := Binfmt("arm64")
			err := Check([]Requirement{r})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "update-binfmts --enable qemu-aarch64") {
				t.Fatalf("Check: %v, want %q and the fix", err, tc.want)
			}
		})
	}
}
