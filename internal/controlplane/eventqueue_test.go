package controlplane

import (
	"errors"
	"slices"
	"testing"

	"github.com/tandem-ci/tandem/internal/agentapi"
)

// Events are applied once each, in arrival order: what a failed drain
// could not apply goes back before what arrived while it ran.
func TestEventQueueOrder(t *testing.T) {
	q := newEventQueue()
	for _, r := range []string{"1", "2", "3"} {
		q.put(agentapi.Event{Runner: r})
	}
	busy := errors.New("store busy")
	var applied []string
	n, err := q.drain(func(e agentapi.Event) error {
		if e.Runner == "2" {
			return busy
		}
		q.put(agentapi.Event{Runner: "4"}) // arrives mid-drain
		applied = append(applied, e.Runner)
		return nil
	})
	if n != 1 || !errors.Is(err, busy) {
		t.Fatalf("first drain: %d applied, %v", n, err)
	}
	select {
	case <-q.kick:
	default:
		t.Error("a put did not signal the drainer")
	}
	n, err = q.drain(func(e agentapi.Event) error {
		applied = append(applied, e.Runner)
		return nil
	})
	if n != 3 || err != nil {
		t.Fatalf("second drain: %d applied, %v", n, err)
	}
	if want := []string{"1", "2", "3", "4"}; !slices.Equal(applied, want) {
		t.Errorf("applied %v, want %v", applied, want)
	}
	if n, _ := q.drain(func(agentapi.Event) error { t.Error("applied twice"); return nil }); n != 0 {
		t.Errorf("an empty queue drained %d", n)
	}
}
