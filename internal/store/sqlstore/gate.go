package sqlstore

import (
	"sync"

	"github.com/tandem-ci/tandem/internal/store"
)

// Gate admits a store's calls until the store closes, and lets Close wait
// for the calls in progress. The zero value is open.
type Gate struct {
	mu       sync.RWMutex
	closed   bool
	inflight sync.WaitGroup
}

// Enter registers a call in progress, or fails with store.ErrClosed once
// the gate is shut. A call that entered must Leave.
func (g *Gate) Enter() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return store.ErrClosed
	}
	g.inflight.Add(1)
	return nil
}

// Leave ends a call that entered.
func (g *Gate) Leave() { g.inflight.Done() }

// Shut refuses every call from now on and reports whether it was open
// (false: closed before, nothing more to do).
func (g *Gate) Shut() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := !g.closed
	g.closed = true
	return was
}

// Wait waits for the calls in progress to leave.
func (g *Gate) Wait() { g.inflight.Wait() }
