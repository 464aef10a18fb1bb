package controlplane

import (
	"fmt"
	"sync"

	"github.com/tandem-ci/tandem/internal/agentapi"
)

// eventQueue holds host events in arrival order until they are applied.
// put never blocks (agents' streams and in-process agents call it), drain
// applies them in order with one drainer at a time, and what a drainer
// could not apply goes back to the head of the queue, before anything that
// arrived meanwhile.
type eventQueue struct {
	mu       sync.Mutex
	events   []agentapi.Event // guarded by mu
	draining sync.Mutex       // held by the one drainer
	kick     chan struct{}    // signalled on put
}

func newEventQueue() *eventQueue { return &eventQueue{kick: make(chan struct{}, 1)} }

func (q *eventQueue) put(e agentapi.Event) {
	q.mu.Lock()
	q.events = append(q.events, e)
	q.mu.Unlock()
	kick(q.kick)
}

// drain applies the queued events in order and says how many it applied.
// At the first error the rest are put back.
func (q *eventQueue) drain(apply func(agentapi.Event) error) (int, error) {
	q.draining.Lock()
	defer q.draining.Unlock()
	q.mu.Lock()
	evs := q.events
	q.events = nil
	q.mu.Unlock()
	for i, e := range evs {
		if err := apply(e); err != nil {
			q.mu.Lock()
			q.events = append(evs[i:len(evs):len(evs)], q.events...)
			q.mu.Unlock()
			return i, fmt.Errorf("runner %s, %s: %w", e.Runner, e.Kind, err)
		}
	}
	return len(evs), nil
}
