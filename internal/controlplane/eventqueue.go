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
	events   []queuedEvent // guarded by mu
	draining sync.Mutex    // held by the one drainer
	kick     chan struct{} // signalled on put
}

type queuedEvent struct {
	agentapi.Event
	applied chan struct{} // closed once applied (nil: nobody asks)
}

func newEventQueue() *eventQueue { return &eventQueue{kick: make(chan struct{}, 1)} }

// put queues evs in order and returns a channel closed once all of them
// are applied.
func (q *eventQueue) put(evs ...agentapi.Event) <-chan struct{} {
	applied := make(chan struct{})
	if len(evs) == 0 {
		close(applied)
		return applied
	}
	q.mu.Lock()
	for i, e := range evs {
		qe := queuedEvent{Event: e}
		if i == len(evs)-1 { // applied in order: the last one says for all
			qe.applied = applied
		}
		q.events = append(q.events, qe)
	}
	q.mu.Unlock()
	kick(q.kick)
	return applied
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
		if err := apply(e.Event); err != nil {
			q.mu.Lock()
			q.events = append(evs[i:len(evs):len(evs)], q.events...)
			q.mu.Unlock()
			return i, fmt.Errorf("runner %s, %s: %w", e.Runner, e.Kind, err)
		}
		if e.applied != nil {
			close(e.applied)
		}
	}
	return len(evs), nil
}
