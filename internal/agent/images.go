package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/image"
)

// Images keeps a host's image store in step with the images the control
// plane names. An assignment names its image by id; a host that lacks it
// fetches it from the control plane before the VM boots (Ensure), checked
// against its sha256s, and a VM never boots from an image that failed the
// check. The control plane also names the ids it may assign (SetNamed):
// the host fetches them in the background, so that a new version does not
// slow the first job that uses it, and removes fetched images no longer
// named once no VM uses them (Acquire marks the ones in use). Images built
// on the host itself (with `tandem image build`, refs/) are never removed:
// they are the operator's. All methods are safe on a nil *Images, which
// fetches nothing and collects nothing.
type Images struct {
	store *image.Store
	src   image.Source
	log   *slog.Logger

	mu     sync.Mutex
	failed map[string]fetchFailure // recent failed fetches, by id
	named  map[string]bool
	known  bool // the control plane has named its images: until then nothing is collected
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// NewImages starts keeping store in step with src (the control plane);
// Close stops it.
func NewImages(store *image.Store, src image.Source, log *slog.Logger) *Images {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Images{store: store, src: src, log: log, failed: map[string]fetchFailure{},
		kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go c.loop(ctx)
	return c
}

// Close stops background fetching and collection, and waits for them.
func (c *Images) Close() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}

// Acquire marks the image an assignment names as in use until release is
// called (after its VM has gone). A ref such as "test-amd64" names an
// image built here, which is never collected: nothing to mark.
func (c *Images) Acquire(ref string) (release func()) {
	if c == nil || !image.IsID(ref) {
		return func() {}
	}
	unpin := c.store.Pin(ref)
	return func() {
		unpin()
		c.poke() // its image may be unnamed by now
	}
}

// retryCorrupt is how long an image the control plane served corrupt is
// refused without asking again (a corrupt image of several GiB is not
// downloaded again for every launch and every VM's end).
const retryCorrupt = time.Minute

// fetchFailure is a fetch that failed.
type fetchFailure struct {
	err error
	at  time.Time
}

// Ensure makes the image an assignment names present and intact, fetching
// it if it is an id this host lacks. The error says which image and what
// is wrong with it.
func (c *Images) Ensure(ctx context.Context, ref string) error {
	if c == nil || c.src == nil || !image.IsID(ref) {
		return nil
	}
	if f, ok := c.recentFailure(ref); ok && errors.Is(f.err, image.ErrCorrupt) {
		return fmt.Errorf("%w (fetched %s ago; asking again after %s)", f.err, time.Since(f.at).Round(time.Second), retryCorrupt)
	}
	return c.fetch(ctx, ref)
}

func (c *Images) fetch(ctx context.Context, id string) error {
	_, err := c.store.Fetch(ctx, c.src, id, c.progress())
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		c.failed[id] = fetchFailure{err, time.Now()}
	} else if err == nil {
		delete(c.failed, id)
	}
	return err
}

func (c *Images) recentFailure(id string) (fetchFailure, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failed[id]
	return f, ok && time.Since(f.at) < retryCorrupt
}

// SetNamed records the image ids the control plane may assign to this
// host: the missing ones are fetched and unnamed fetched ones collected,
// in the background.
func (c *Images) SetNamed(ids []string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.named, c.known = map[string]bool{}, true
	for _, id := range ids {
		if image.IsID(id) {
			c.named[id] = true
		}
	}
	for id := range c.failed {
		if !c.named[id] {
			delete(c.failed, id)
		}
	}
	c.mu.Unlock()
	c.poke()
}

// Named returns the ids the control plane names, sorted.
func (c *Images) Named() []string {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.named))
}

func (c *Images) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// loop collects, then prefetches (freeing the disk of old versions first),
// whenever something changed and every few minutes (a failed prefetch is
// tried again then).
func (c *Images) loop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(2 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-t.C:
		}
		c.mu.Lock()
		known := c.known
		c.mu.Unlock()
		if !known {
			continue
		}
		c.collect(ctx)
		c.prefetch(ctx)
	}
}

func (c *Images) isNamed(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.named[id]
}

func (c *Images) collect(ctx context.Context) {
	removed, err := c.store.Collect(ctx, c.isNamed)
	if len(removed) > 0 {
		c.log.Info("removed images the control plane no longer names", "images", removed)
	}
	if err != nil && ctx.Err() == nil {
		c.log.Warn("collecting unnamed images", "err", err)
	}
}

func (c *Images) prefetch(ctx context.Context) {
	if c.src == nil {
		return
	}
	for _, id := range c.Named() {
		if _, failed := c.recentFailure(id); failed || !c.isNamed(id) { // tried again on a later pass; unnamed meanwhile
			continue
		}
		if err := c.fetch(ctx, id); err != nil && ctx.Err() == nil {
			c.log.Warn("prefetching an image the control plane names", "image", id, "err", err)
		}
	}
}

// progress logs a fetch's start and end.
func (c *Images) progress() func(image.FetchProgress) {
	started := false
	return func(p image.FetchProgress) {
		if !started {
			started = true
			c.log.Info("fetching image", "image", p.ID, "bytes", p.Total)
		}
		if p.Finished {
			secs := max(p.Elapsed.Seconds(), 1e-3)
			c.log.Info("image fetched and verified", "image", p.ID, "bytes", p.Total, "data_bytes", p.Received,
				"ms", p.Elapsed.Milliseconds(), "data_mib_per_s", int(float64(p.Received)/secs/(1<<20)),
				"hashing_ms", p.Hashing.Milliseconds())
		}
	}
}
