package store

import (
	"context"
	"errors"
	"time"
)

// ErrFenced refuses a write made for a leader's term that has ended:
// another replica leads now.
var ErrFenced = errors.New("fenced: this replica no longer leads")

// Elector is implemented by stores that several control-plane replicas
// share (store/postgres): it chooses the one replica that leads.
type Elector interface {
	// Campaign waits until holder (a replica's name) leads, or ctx ends,
	// and returns its term.
	Campaign(ctx context.Context, holder string) (*Term, error)
	// Leader says who leads, as the database knows.
	Leader(ctx context.Context) (Leadership, error)
}

// Leadership is the database's view of who leads.
type Leadership struct {
	Holder string // the replica that last took the lead ("" for none yet)
	Epoch  int64  // its term's number; each new term has a greater one
	Since  time.Time
	// Held says whether Holder leads now (false: it was the last to, but
	// its term has ended and none has begun since).
	Held bool
}

// Term is one replica's time as leader.
type Term struct {
	Epoch int64
	// Lost is closed when the term ends by itself: the database lost
	// touch with this replica, so another may lead already. Writes of the
	// term are refused from then on (Fence).
	Lost <-chan struct{}
	// Resign ends the term, letting another replica lead at once; it is
	// safe to call more than once and after Lost.
	Resign func()
}

type fenceKey struct{}

// Fence returns a context whose Update transactions commit only while
// epoch is the leader's term (ErrFenced otherwise): a leader's loops run
// under it, so that nothing a deposed leader decides is written. Stores
// without an Elector ignore it.
func Fence(ctx context.Context, epoch int64) context.Context {
	return context.WithValue(ctx, fenceKey{}, epoch)
}

// FenceOf returns the epoch ctx is fenced to, if any.
func FenceOf(ctx context.Context) (int64, bool) {
	e, ok := ctx.Value(fenceKey{}).(int64)
	return e, ok
}

// Notifier is implemented by stores that several control-plane replicas
// share (store/postgres): a replica that changed what others act on wakes
// them, instead of leaving them to find it at their next poll.
type Notifier interface {
	// Notify wakes the replicas subscribed to topic, this one included,
	// once the transaction that made the change has committed (call it
	// after Update returns).
	Notify(ctx context.Context, topic string) error
	// Subscribe returns a channel that receives (coalesced: one value for
	// any number of notifications not yet received) when topic is
	// notified, and also whenever notifications may have been missed (the
	// store's listening connection came back). It is never closed; it
	// stops receiving when ctx ends.
	Subscribe(ctx context.Context, topic string) <-chan struct{}
}
