package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// Distribution: the control plane names image ids, its store serves them
// (RawManifest, OpenFile and WriteSparse behind the agent protocol), and
// each agent's store takes them in with Fetch.

// Source is where Fetch takes an image from: the control plane over the
// agent protocol (agentapi.Client), or another store (LocalSource).
type Source interface {
	// Manifest returns the manifest.json of image id as stored. An image
	// the source does not have or does not offer is ErrNotFound.
	Manifest(ctx context.Context, id string) ([]byte, error)
	// File streams one file of image id from offset on, in the sparse
	// stream format of WriteSparse.
	File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error)
}

// ErrRefused is a source's refusal that asking again will not change (a
// revoked credential, a protocol mismatch): Fetch does not retry it.
var ErrRefused = errors.New("the image source refused the request")

// Tuning of Fetch; tests shorten them.
var (
	fetchAttempts = 5                // tries per file without progress
	fetchBackoff  = time.Second      // after the first failure; doubles up to 15s
	fetchStall    = 60 * time.Second // a stream silent this long is cut
)

// isFullID reports whether id is a whole image id (16 hex digits).
func isFullID(id string) bool { return len(id) == 16 && idRE.MatchString(id) }

// IsID reports whether s is a whole image id rather than a ref or a prefix.
func IsID(s string) bool { return isFullID(s) }

// RawManifest returns image id's manifest.json as stored (what a Source
// serves). id must be whole.
func (s *Store) RawManifest(id string) ([]byte, error) {
	if !isFullID(id) {
		return nil, fmt.Errorf("%w: invalid image id %q", ErrNotFound, id)
	}
	im, err := s.load(id)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(im.Dir, manifestFile))
}

// OpenFile opens one of the files image id's manifest lists, for sending.
func (s *Store) OpenFile(id, name string) (*os.File, error) {
	if !isFullID(id) {
		return nil, fmt.Errorf("%w: invalid image id %q", ErrNotFound, id)
	}
	im, err := s.load(id)
	if err != nil {
		return nil, err
	}
	if _, ok := im.Manifest.Files[name]; !ok || !safeFileName(name) {
		return nil, fmt.Errorf("%w: image %s has no file %q", ErrNotFound, id, name)
	}
	return os.Open(filepath.Join(im.Dir, name))
}

// LocalSource serves the images of a store on this machine.
type LocalSource struct{ Store *Store }

// Manifest implements Source.
func (l LocalSource) Manifest(_ context.Context, id string) ([]byte, error) {
	return l.Store.RawManifest(id)
}

// File implements Source.
func (l LocalSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	f, err := l.Store.OpenFile(id, name)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	stop := context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
	go func() {
		defer f.Close()
		_, err := WriteSparse(pw, f, offset)
		stop()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// FetchProgress reports a fetch: Done of Total bytes of the image's files
// are in (holes count as done once passed), Received data bytes came over
// the wire, and Hashing is the time spent computing sha256s (of the files
// done; it overlaps the transfer). The last report has Finished set.
type FetchProgress struct {
	ID       string
	File     string
	Done     int64
	Total    int64
	Received int64
	Hashing  time.Duration
	Elapsed  time.Duration
	Finished bool
}

// flight is one fetch of an id that callers share.
type flight struct {
	done    chan struct{}
	err     error
	waiters int
	cancel  context.CancelFunc
}

// liveState is what the store's users in this process share: fetches in
// flight and images in use (see Pin).
type liveState struct {
	mu      sync.Mutex
	flights map[string]*flight
	pins    map[string]int
}

// state returns the store's live state, locked: the caller unlocks mu.
func (s *Store) state() *liveState {
	s.live.mu.Lock()
	if s.live.flights == nil {
		s.live.flights, s.live.pins = map[string]*flight{}, map[string]int{}
	}
	return &s.live
}

// Fetch makes image id (whole) present and intact in the store, taking it
// from src if it is not: it downloads into a temporary directory of the
// store, checks that the manifest hashes to id and that every file has the
// manifest's size and sha256, and only then moves the image into blobs/ in
// one step. Anything else is refused with ErrCorrupt naming what is wrong,
// and leaves nothing behind. A broken transfer resumes where it broke, a
// few times; an image the source does not offer is ErrNotFound.
//
// Concurrent fetches of one id share one download; it goes on while any
// caller still waits for it. progress, if not nil, sees the download of the
// caller that started it.
func (s *Store) Fetch(ctx context.Context, src Source, id string, progress func(FetchProgress)) (*Image, error) {
	if !isFullID(id) {
		return nil, fmt.Errorf("image %q: invalid id (want 16 hex digits)", id)
	}
	if im, err := s.load(id); err == nil && im.Verify() == nil {
		return im, nil
	}
	ls := s.state()
	f := ls.flights[id]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		ls.flights[id] = f
		go func() {
			err := s.fetch(fctx, src, id, progress)
			cancel()
			ls.mu.Lock()
			f.err = err
			if ls.flights[id] == f {
				delete(ls.flights, id)
			}
			ls.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	ls.mu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return s.load(id)
	case <-ctx.Done():
		ls.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			f.cancel() // nobody waits any more; a new caller starts afresh
			if ls.flights[id] == f {
				delete(ls.flights, id)
			}
		}
		ls.mu.Unlock()
		return nil, fmt.Errorf("image %s: %w", id, context.Cause(ctx))
	}
}

// fetchedFile marks an image that came by Fetch (Collect may remove it).
const fetchedFile = ".fetched"

func (s *Store) fetch(ctx context.Context, src Source, id string, progress func(FetchProgress)) error {
	start := time.Now()
	s.removeStaleFetches()
	dest := filepath.Join(s.root, "blobs", id)
	if _, err := os.Lstat(dest); err == nil {
		// A copy that is here but damaged: a fetched one is replaced; one
		// built here is the operator's to rebuild or remove.
		im, err := s.load(id)
		if err == nil {
			err = im.Verify()
		}
		if err == nil {
			return nil
		}
		if !isFetched(dest) {
			return fmt.Errorf("image %s: the copy in %s is damaged and was not fetched (rebuild or remove it): %w", id, s.root, err)
		}
		if err := s.trash(id); err != nil {
			return fmt.Errorf("image %s: removing a damaged copy: %w", id, err)
		}
	}
	raw, err := retry(ctx, func() ([]byte, error) { return src.Manifest(ctx, id) })
	if err != nil {
		return fmt.Errorf("image %s: manifest: %w", id, err)
	}
	m, err := checkManifest(raw, id)
	if err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	work, err := os.MkdirTemp(s.root, ".fetch-")
	if err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	unlock, err := lockDir(work)
	if err != nil {
		os.RemoveAll(work)
		return fmt.Errorf("image %s: %w", id, err)
	}
	committed := false
	defer func() {
		if !committed {
			os.RemoveAll(work)
		}
		unlock()
	}()
	names := make([]string, 0, len(m.Files))
	p := &fetchProgress{FetchProgress: FetchProgress{ID: id}, report: progress, start: start}
	for n, fi := range m.Files {
		names = append(names, n)
		p.Total += fi.Size
	}
	sort.Slice(names, func(i, j int) bool { return m.Files[names[i]].Size < m.Files[names[j]].Size })
	stamps := map[string]verifiedStamp{}
	for _, n := range names {
		if err := fetchFile(ctx, src, id, n, m.Files[n], work, p); err != nil {
			return fmt.Errorf("image %s: %w", id, err)
		}
		stamp, err := statStamp(filepath.Join(work, n))
		if err != nil {
			return fmt.Errorf("image %s: %w", id, err)
		}
		stamp.SHA = m.Files[n].SHA256
		stamps[n] = stamp
	}
	if err := writeFileSync(filepath.Join(work, manifestFile), raw); err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	mark, _ := json.Marshal(map[string]string{"fetched_at": time.Now().UTC().Format(time.RFC3339)})
	if err := writeFileSync(filepath.Join(work, fetchedFile), mark); err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	// Hashed on the way in: the first boot need not hash again.
	(&Image{ID: id, Dir: work, Manifest: m}).saveStamps(stamps)
	if err := fsutil.SyncDir(work); err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	if err := os.Rename(work, dest); err != nil {
		// Another process put it there meanwhile: fine if it is intact.
		if im, lerr := s.load(id); lerr == nil && im.Verify() == nil {
			return nil
		}
		return fmt.Errorf("image %s: store: %w", id, err)
	}
	committed = true
	if err := fsutil.SyncDir(filepath.Dir(dest)); err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	p.Finished = true
	p.emit(true)
	return nil
}

// checkManifest parses a manifest from a source and checks that it is the
// image asked for and names only plain files.
func checkManifest(raw []byte, id string) (Manifest, error) {
	var m Manifest
	got, err := manifestID(raw)
	if err != nil {
		return m, fmt.Errorf("%w: the source's manifest: %v", ErrCorrupt, err)
	}
	if got != id {
		return m, fmt.Errorf("%w: the source's manifest hashes to %s, not to the id asked for", ErrCorrupt, got)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, fmt.Errorf("%w: the source's manifest: %v", ErrCorrupt, err)
	}
	if len(m.Files) == 0 || len(m.Files) > 64 {
		return m, fmt.Errorf("%w: the manifest lists %d files", ErrCorrupt, len(m.Files))
	}
	for n, fi := range m.Files {
		if !safeFileName(n) {
			return m, fmt.Errorf("%w: the manifest names file %q", ErrCorrupt, n)
		}
		if b, err := hex.DecodeString(fi.SHA256); err != nil || len(b) != sha256.Size || fi.Size < 0 {
			return m, fmt.Errorf("%w: the manifest's entry for %s is malformed", ErrCorrupt, n)
		}
	}
	return m, nil
}

// safeFileName: a plain name in the image's directory, none of the store's
// own files.
func safeFileName(n string) bool {
	return n != "" && n == filepath.Base(n) && !strings.HasPrefix(n, ".") && n != manifestFile
}

// fetchFile receives one file into dir, resuming a broken stream where it
// broke, and checks its sha256.
func fetchFile(ctx context.Context, src Source, id, name string, fi FileInfo, dir string, p *fetchProgress) error {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(fi.Size); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	st := &recvState{hs: newHasher(sha256.New(), 1<<20)}
	defer st.hs.close()
	p.File = name
	fails, backoff := 0, fetchBackoff
	for {
		before := st.pos
		err := receiveFile(ctx, src, id, name, f, fi.Size, st, func() {
			p.update(st)
			p.emit(false)
		})
		if err == nil {
			break
		}
		var le *localError
		if ctx.Err() != nil || errors.As(err, &le) || errors.Is(err, ErrCorrupt) || errors.Is(err, errMalformed) ||
			errors.Is(err, ErrNotFound) || errors.Is(err, ErrRefused) {
			if errors.Is(err, errMalformed) {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		if st.pos > before {
			fails, backoff = 0, fetchBackoff
		}
		if fails++; fails >= fetchAttempts {
			return fmt.Errorf("%s: %w (gave up after %d tries without progress)", name, err, fails)
		}
		if err := sleepCtx(ctx, backoff); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		backoff = min(2*backoff, 15*time.Second)
	}
	sum := hex.EncodeToString(st.hs.sum())
	p.update(st)
	p.Hashing = p.hashing + st.hs.took()
	p.done, p.received, p.hashing = p.Done, p.Received, p.Hashing
	if sum != fi.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %.16s…, the manifest says %.16s…", ErrCorrupt, name, sum, fi.SHA256)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return f.Chmod(0o444)
}

// receiveFile takes one stream of a file, cutting it when it stalls.
func receiveFile(ctx context.Context, src Source, id, name string, f *os.File, size int64, st *recvState, onData func()) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	body, err := src.File(rctx, id, name, st.pos)
	if err != nil {
		return err
	}
	defer body.Close()
	stall := errors.New("stream stalled")
	t := time.AfterFunc(fetchStall, func() { cancel(fmt.Errorf("no data for %s", fetchStall)) })
	defer t.Stop()
	err = receiveSparse(body, f, size, st, func() {
		t.Reset(fetchStall)
		onData()
	})
	if err != nil && rctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("%w: %w", stall, context.Cause(rctx))
	}
	return err
}

// retry calls get until it succeeds, fails for good or runs out of tries.
func retry[T any](ctx context.Context, get func() (T, error)) (T, error) {
	backoff := fetchBackoff
	for i := 1; ; i++ {
		v, err := get()
		if err == nil || ctx.Err() != nil || i >= fetchAttempts || errors.Is(err, ErrNotFound) || errors.Is(err, ErrRefused) {
			return v, err
		}
		if err := sleepCtx(ctx, backoff); err != nil {
			return v, err
		}
		backoff = min(2*backoff, 15*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fetchProgress reports progress at most every 200ms, and at the end.
type fetchProgress struct {
	FetchProgress
	report      func(FetchProgress)
	start, last time.Time
	// what the files before the current one added up to
	done, received int64
	hashing        time.Duration
}

func (p *fetchProgress) update(st *recvState) {
	p.Done, p.Received = p.done+st.pos, p.received+st.received
}

func (p *fetchProgress) emit(force bool) {
	if p.report == nil {
		return
	}
	now := time.Now()
	if !force && now.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last = now
	p.Elapsed = now.Sub(p.start)
	p.report(p.FetchProgress)
}

// lockDir holds an flock on a directory for as long as a fetch works in it;
// removeStaleFetches takes only unlocked ones.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

func isFetched(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, fetchedFile))
	return err == nil
}
