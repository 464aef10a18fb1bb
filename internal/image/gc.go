package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// Pin marks image id as in use (a VM boots or runs from it) until release
// is called: Collect leaves a pinned image alone. Pins count; release is
// idempotent.
func (s *Store) Pin(id string) (release func()) {
	ls := s.state()
	ls.pins[id]++
	ls.mu.Unlock()
	done := false
	return func() {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		if done {
			return
		}
		done = true
		if ls.pins[id]--; ls.pins[id] <= 0 {
			delete(ls.pins, id)
		}
	}
}

// Collect removes the images that came by Fetch and are no longer wanted:
// those keep does not claim, no ref names, no Pin holds and no fetch is
// taking in. Images built here (with `tandem image build`) are never
// collected: they are the operator's, removed with `tandem image rm`. It
// also removes what crashed fetches left, and returns the ids removed.
func (s *Store) Collect(ctx context.Context, keep func(id string) bool) ([]string, error) {
	s.removeStaleFetches()
	unlock, err := fsutil.Lock(ctx, filepath.Join(s.root, ".lock"), true, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	refs := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(s.root, "refs"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(s.root, "refs", e.Name())); err == nil {
			refs[strings.TrimSpace(string(b))] = true
		}
	}
	ents, err = os.ReadDir(filepath.Join(s.root, "blobs"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		id := e.Name()
		if !isFullID(id) || !isFetched(filepath.Join(s.root, "blobs", id)) || refs[id] || (keep != nil && keep(id)) {
			continue
		}
		ls := s.state()
		if ls.pins[id] > 0 || ls.flights[id] != nil {
			ls.mu.Unlock()
			continue
		}
		trash, err := s.moveToTrash(id) // under ls.mu: no Pin can slip in between
		ls.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.RemoveAll(trash); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, id)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("collect images: %w", errors.Join(errs...))
	}
	return removed, nil
}

// trash removes image id (a damaged fetched copy) at once.
func (s *Store) trash(id string) error {
	dir, err := s.moveToTrash(id)
	if err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// moveToTrash takes blobs/<id> out of the store in one step (no reader
// sees half an image) and returns where it went.
func (s *Store) moveToTrash(id string) (string, error) {
	trash, err := os.MkdirTemp(s.root, ".fetch-rm-")
	if err != nil {
		return "", fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := os.Rename(filepath.Join(s.root, "blobs", id), filepath.Join(trash, id)); err != nil {
		os.Remove(trash)
		return "", fmt.Errorf("remove image %s: %w", id, err)
	}
	return trash, nil
}

// removeStaleFetches deletes the temporary directories of fetches that
// ended without cleaning up (a killed agent): those nobody holds locked
// (and, as a fetch locks its directory just after making it, not younger
// than a minute).
func (s *Store) removeStaleFetches() {
	dirs, _ := filepath.Glob(filepath.Join(s.root, ".fetch-*"))
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		f, err := os.Open(d)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.RemoveAll(d)
		}
		f.Close()
	}
}
