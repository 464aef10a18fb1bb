//go:build linux

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMergeDockerMirror(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "daemon.json")
	b, err := mergeDockerMirror(p, "http://172.30.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	if !reflect.DeepEqual(got, map[string]any{"registry-mirrors": []any{"http://172.30.0.1:5000"}}) {
		t.Fatalf("no daemon.json: %s", b)
	}
	// An operator's settings stay; an old mirror is replaced.
	os.WriteFile(p, []byte(`{"log-driver":"local","registry-mirrors":["http://old:5000"]}`), 0o644)
	b, err = mergeDockerMirror(p, "http://172.30.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	json.Unmarshal(b, &got)
	if got["log-driver"] != "local" || !reflect.DeepEqual(got["registry-mirrors"], []any{"http://172.30.0.1:5000"}) {
		t.Fatalf("merged: %s", b)
	}
	os.WriteFile(p, []byte(`{not json`), 0o644)
	if _, err := mergeDockerMirror(p, "http://x:5000"); err == nil {
		t.Fatal("a broken daemon.json was overwritten")
	}
}

// emptyDir leaves /tmp as a fresh boot would: empty, with what its symlinks
// point to untouched, and made (sticky, world-writable) if missing.
func TestEmptyDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tmp")
	outside := filepath.Join(t.TempDir(), "kept")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte("old"), 0o600)
	os.WriteFile(filepath.Join(dir, ".hidden"), nil, 0o600)
	os.Symlink(outside, filepath.Join(dir, "link"))
	if err := emptyDir(dir); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("%s not empty: %v", dir, left)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a symlink's target was removed: %v", err)
	}

	missing := filepath.Join(t.TempDir(), "none")
	if err := emptyDir(missing); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(missing)
	if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("missing dir made as %v, %v; want drwxrwxrwt", fi, err)
	}
}

// makeStaticNodes makes what modules.devname lists, as kmod static-nodes
// would, and leaves existing nodes alone.
func TestMakeStaticNodes(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mknod of device nodes needs root")
	}
	dir := t.TempDir()
	devname := filepath.Join(dir, "modules.devname")
	os.WriteFile(devname, []byte("# Device nodes to trigger on-demand module loading.\n"+
		"fuse fuse c10:229\nloop loop-control c10:237\ntun net/tun c10:200\ndm_mod mapper/control c10:236\nbad bad x1:2\n"), 0o644)
	dev := filepath.Join(dir, "dev")
	os.MkdirAll(dev, 0o755)
	os.WriteFile(filepath.Join(dev, "fuse"), []byte("already there"), 0o644)
	n, err := makeStaticNodes(devname, dev)
	if n != 3 || err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("made %d, err %v; want 3 and an error naming the bad line", n, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dev, "net/tun"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 200 || st.Mode&0o777 != 0o600 {
		t.Errorf("net/tun: mode %o rdev %d:%d; want a char device 10:200, 0600", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if b, _ := os.ReadFile(filepath.Join(dev, "fuse")); string(b) != "already there" {
		t.Errorf("an existing node was replaced")
	}
	if n, err := makeStaticNodes(filepath.Join(dir, "none"), dev); n != 0 || err != nil {
		t.Errorf("missing modules.devname: %d, %v; want 0, nil", n, err)
	}
}
