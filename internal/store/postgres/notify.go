package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-ci/tandem/internal/store"
)

var _ store.Notifier = (*Store)(nil)

// notifyChannel is the one PostgreSQL channel the replicas LISTEN on; the
// topic is the notification's payload.
const notifyChannel = "tandem_replicas"

// listener holds the connection that LISTENs for the store's subscribers:
// one connection per Store, outside the pool, opened with the first
// subscription and kept (reopened after a loss) until the store closes.
type listener struct {
	mu      sync.Mutex
	subs    map[string][]*subscription // guarded by mu
	started bool                       // guarded by mu
}

type subscription struct {
	ctx context.Context
	c   chan struct{}
}

func (sub *subscription) kick() {
	select {
	case sub.c <- struct{}{}:
	default:
	}
}

// Notify implements store.Notifier. It runs outside any transaction: call
// it after the change has committed.
func (s *Store) Notify(ctx context.Context, topic string) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	_, err := s.db.ExecContext(ctx, "SELECT pg_notify($1, $2)", notifyChannel, topic)
	return err
}

// Subscribe implements store.Notifier.
func (s *Store) Subscribe(ctx context.Context, topic string) <-chan struct{} {
	sub := &subscription{ctx: ctx, c: make(chan struct{}, 1)}
	l := &s.listen
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.subs == nil {
		l.subs = map[string][]*subscription{}
	}
	l.subs[topic] = append(l.subs[topic], sub)
	if !l.started && s.gate.Enter() == nil {
		l.started = true
		go func() {
			defer s.gate.Leave()
			s.listenLoop()
		}()
	}
	return sub.c
}

// deliver kicks topic's live subscribers (every topic's, for ""), and
// forgets the ones whose context ended.
func (l *listener) deliver(topic string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for t, subs := range l.subs {
		if topic != "" && t != topic {
			continue
		}
		live := subs[:0]
		for _, sub := range subs {
			if sub.ctx.Err() == nil {
				sub.kick()
				live = append(live, sub)
			}
		}
		l.subs[t] = live
	}
}

// listenLoop keeps a connection LISTENing until the store closes; after
// each (re)connection every subscriber is woken, since notifications sent
// while there was none are lost.
func (s *Store) listenLoop() {
	ctx := s.bg
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("listening for other replicas' notifications; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	connected()
	s.listen.deliver("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		s.listen.deliver(n.Payload)
	}
}
