package image

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// Collect removes fetched images nobody wants, and only those.
func TestCollect(t *testing.T) {
	src, dst := openStores(t)
	fetch := func(seed int64) string {
		im := sparseImage(t, src, seed, 1<<20, []extent{{0, 4096}})
		if _, err := dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil); err != nil {
			t.Fatal(err)
		}
		return im.ID
	}
	named, inUse, unnamed, reffed := fetch(1), fetch(2), fetch(3), fetch(4)
	built := sparseImage(t, dst, 5, 1<<20, []extent{{0, 4096}}).ID // built here: no fetched marker
	if err := os.WriteFile(filepath.Join(dst.root, "refs", "pinned-amd64"), []byte(reffed+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	release := dst.Pin(inUse)
	keep := func(id string) bool { return id == named }
	removed, err := dst.Collect(context.Background(), keep)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{unnamed}) {
		t.Errorf("removed %v, want only %s", removed, unnamed)
	}
	for _, id := range []string{named, inUse, reffed, built} {
		if _, err := dst.load(id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	// The VM ended: its image goes on the next pass.
	release()
	release() // idempotent
	removed, err = dst.Collect(context.Background(), keep)
	if err != nil || !slices.Equal(removed, []string{inUse}) {
		t.Errorf("after release: removed %v (%v), want %s", removed, err, inUse)
	}
	// Two pins need two releases.
	r1, r2 := dst.Pin(named), dst.Pin(named)
	r1()
	if removed, _ := dst.Collect(context.Background(), nil); len(removed) != 0 {
		t.Errorf("removed %v while still pinned once", removed)
	}
	r2()
	if removed, _ := dst.Collect(context.Background(), nil); !slices.Equal(removed, []string{named}) {
		t.Errorf("removed %v, want %s", removed, named)
	}
	left, _ := dst.List()
	if len(left) != 2 {
		t.Errorf("%d images left, want the ref'd and the built one", len(left))
	}
}

// What a killed fetch left is removed; a fetch at work is not.
func TestCollectStaleFetches(t *testing.T) {
	_, dst := openStores(t)
	stale, _ := os.MkdirTemp(dst.root, ".fetch-")
	os.WriteFile(filepath.Join(stale, RootfsFile), []byte("partial"), 0o644)
	busy, _ := os.MkdirTemp(dst.root, ".fetch-")
	unlock, err := lockDir(busy)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	fresh, _ := os.MkdirTemp(dst.root, ".fetch-") // just made, not yet locked
	old := time.Now().Add(-time.Hour)
	os.Chtimes(stale, old, old)
	os.Chtimes(busy, old, old)
	if _, err := dst.Collect(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale fetch dir: %v", err)
	}
	for _, d := range []string{busy, fresh} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}
