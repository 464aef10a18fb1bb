package mirror

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEvictLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	m := &Mirror{cfg: Config{CacheDir: dir, CacheMaxBytes: 1000}, log: slog.New(slog.DiscardHandler)}
	mk := func(digest string, size int, age time.Duration) string {
		d := filepath.Join(dir, "docker/registry/v2/blobs/sha256", digest[:2], digest)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, "data")
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(-age)
		os.Chtimes(p, when, when)
		return d
	}
	old := mk("aa01", 400, 3*time.Hour)
	mid := mk("bb02", 400, 2*time.Hour)
	recent := mk("cc03", 400, time.Hour)
	n, freed, err := m.evict()
	if err != nil || n != 1 || freed != 400 {
		t.Fatalf("evict = %d, %d, %v; want the oldest blob", n, freed, err)
	}
	for d, want := range map[string]bool{old: false, mid: true, recent: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s present = %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
	// Under the cap: nothing goes.
	if n, _, err := m.evict(); n != 0 || err != nil {
		t.Errorf("under the cap: evicted %d, %v", n, err)
	}
	// Far over: down to 80% of the cap, least recently used first.
	mk("dd04", 700, 0)
	if n, _, err := m.evict(); n != 2 || err != nil {
		t.Errorf("far over: evicted %d, %v", n, err)
	}
	if _, err := os.Stat(recent); err == nil {
		t.Error("an older blob stayed while the cache was over 80%")
	}
}
