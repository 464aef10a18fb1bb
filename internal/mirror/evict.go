package mirror

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// evictEvery is how often the cache's size is checked (a variable for
// tests).
var evictEvery = time.Minute

// evictLoop keeps the cache under Config.CacheMaxBytes until Stop.
func (m *Mirror) evictLoop() {
	t := time.NewTicker(evictEvery)
	defer t.Stop()
	for {
		if n, freed, err := m.evict(); err != nil {
			m.log.Warn("mirror cache eviction failed", "err", err)
		} else if n > 0 {
			m.log.Info("mirror cache over its cap: least recently used blobs evicted", "blobs", n, "bytes", freed)
		}
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// blob is one cached blob: its directory, size and last use.
type blob struct {
	dir  string
	size int64
	used time.Time
}

// evict removes the least recently used blobs until the cache holds at
// most 80% of its cap, if it holds more than the cap. The registry keeps
// no descriptor cache (renderConfig), so it finds an evicted blob gone and
// fetches it from upstream again when a VM asks; a blob being served as it
// is removed is still read whole (its file is open).
func (m *Mirror) evict() (n int, freed int64, err error) {
	root := filepath.Join(m.cfg.CacheDir, "docker", "registry", "v2", "blobs")
	var blobs []blob
	var total int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.IsDir() || d.Name() != "data" {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		used := fi.ModTime()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if at := time.Unix(st.Atim.Sec, st.Atim.Nsec); at.After(used) {
				used = at
			}
		}
		blobs = append(blobs, blob{dir: filepath.Dir(p), size: fi.Size(), used: used})
		total += fi.Size()
		return nil
	})
	if err != nil || total <= m.cfg.CacheMaxBytes {
		return 0, 0, err
	}
	slices.SortFunc(blobs, func(a, b blob) int { return a.used.Compare(b.used) })
	target := m.cfg.CacheMaxBytes / 10 * 8
	for _, b := range blobs {
		if total <= target {
			break
		}
		if err := os.RemoveAll(b.dir); err != nil {
			return n, freed, err
		}
		total -= b.size
		freed += b.size
		n++
	}
	return n, freed, nil
}
