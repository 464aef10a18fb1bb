package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlstore"
)

// Leader election.
//
// A replica leads while it holds a session advisory lock (leaderLock) on a
// connection of its own. Campaign waits for the lock with
// pg_advisory_lock, which returns the moment the holder's session ends: a
// leader killed with SIGKILL loses its connection, the server ends its
// session and the next replica leads within a round trip. On taking the
// lock, the new leader bumps the leader row's epoch; fenced transactions
// (store.Fence) check the epoch under a FOR SHARE lock of that row, so the
// bump waits for the old leader's transactions in flight and every one it
// begins afterwards is refused.
//
// The leader's connection asks the server for TCP keepalives every second
// (tcp_keepalives_*), so that a leader whose host vanished without closing
// its socket is noticed in a few seconds rather than the kernel's two
// hours; and the leader pings its connection every heartbeat: a failed
// ping ends the term (Term.Lost) at once, as the lock may be gone.

// leaderLock is the advisory lock key of leadership ("tanlea").
const leaderLock int64 = 0x74616e6c6561

// heartbeat is how often a leader checks its connection and its epoch.
const heartbeat = time.Second

var _ store.Elector = (*Store)(nil)

// Campaign implements store.Elector.
func (s *Store) Campaign(ctx context.Context, holder string) (*store.Term, error) {
	if holder == "" {
		return nil, fmt.Errorf("%w: a campaign needs the replica's name", store.ErrInvalid)
	}
	if err := s.gate.Enter(); err != nil {
		return nil, err
	}
	defer s.gate.Leave()
	backoff := 100 * time.Millisecond
	for {
		t, err := s.tryLead(ctx, holder)
		if err == nil {
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.log.Warn("leader election: retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// tryLead waits for the lock on a new connection and starts a term.
func (s *Store) tryLead(ctx context.Context, holder string) (*store.Term, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	if _, err := conn.ExecContext(ctx, `SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1;
		SET tcp_keepalives_count = 3; SET application_name = 'tandem leader'`); err != nil {
		return nil, fmt.Errorf("leader connection: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", leaderLock); err != nil {
		return nil, fmt.Errorf("waiting for the lead: %w", err)
	}
	var epoch int64
	if err := conn.QueryRowContext(ctx, "UPDATE leader SET epoch = epoch + 1, holder = $1, since = $2 WHERE id = 1 RETURNING epoch",
		holder, time.Now().UnixMilli()).Scan(&epoch); err != nil {
		return nil, fmt.Errorf("taking the lead: %w", err)
	}
	ok = true
	t := &term{s: s, conn: conn, epoch: epoch, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	s.termsMu.Lock()
	s.terms[t] = true
	s.termsMu.Unlock()
	go t.watch()
	s.log.Info("leading", "holder", holder, "epoch", epoch)
	return &store.Term{Epoch: epoch, Lost: t.lost, Resign: t.resign}, nil
}

// term is a leader's term: its connection, holding the lock.
type term struct {
	s     *Store
	conn  *sql.Conn
	epoch int64
	lost  chan struct{} // closed when the term ended by itself
	stop  chan struct{} // closed by resign
	once  sync.Once
	done  chan struct{} // closed when watch has returned
}

// watch pings the connection every heartbeat until the term ends, then
// lets go of the connection (and with it the lock).
func (t *term) watch() {
	defer close(t.done)
	defer t.release()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*heartbeat)
		var epoch int64
		err := t.conn.QueryRowContext(ctx, "SELECT epoch FROM leader WHERE id = 1").Scan(&epoch)
		cancel()
		if err == nil && epoch != t.epoch {
			err = fmt.Errorf("epoch %d, another replica's %d", t.epoch, epoch)
		}
		if err != nil {
			select {
			case <-t.stop:
				return
			default:
			}
			t.s.log.Warn("lost the lead", "epoch", t.epoch, "err", err)
			close(t.lost)
			return
		}
	}
}

// release unlocks (so that another replica leads at once, without waiting
// for the connection's end to be noticed) and closes the connection.
func (t *term) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t.conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", leaderLock) //nolint:errcheck // closing the connection unlocks too
	t.conn.Close()
	t.s.termsMu.Lock()
	delete(t.s.terms, t)
	t.s.termsMu.Unlock()
}

func (t *term) resign() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

// resignAll ends every term of the store (Close).
func (s *Store) resignAll() {
	s.termsMu.Lock()
	ts := make([]*term, 0, len(s.terms))
	for t := range s.terms {
		ts = append(ts, t)
	}
	s.termsMu.Unlock()
	for _, t := range ts {
		t.resign()
	}
}

// Leader implements store.Elector.
func (s *Store) Leader(ctx context.Context) (store.Leadership, error) {
	if err := s.gate.Enter(); err != nil {
		return store.Leadership{}, err
	}
	defer s.gate.Leave()
	return ReadLeader(ctx, s.db)
}

// ReadLeader reads who leads from the database q reaches (at schema
// version 2 or later), without a Store: tandem server --check-db uses it
// on a database it must not migrate.
func ReadLeader(ctx context.Context, q sqlstore.Querier) (store.Leadership, error) {
	var l store.Leadership
	var since int64
	err := q.QueryRowContext(ctx, `SELECT epoch, holder, since, EXISTS (SELECT 1 FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & 4294967295))
		FROM leader WHERE id = 1`, leaderLock).Scan(&l.Epoch, &l.Holder, &since, &l.Held)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Leadership{}, errors.New("leader row missing: the schema is damaged")
	}
	if err != nil {
		return store.Leadership{}, fmt.Errorf("leader: %w", err)
	}
	l.Since = sqlstore.TimeOf(since)
	return l, nil
}

// checkFence refuses tx when ctx is fenced to an epoch that is not the
// leader's, holding the leader row FOR SHARE until tx ends so that a new
// leader's epoch bump waits for it.
func checkFence(ctx context.Context, tx *sql.Tx) error {
	epoch, ok := store.FenceOf(ctx)
	if !ok {
		return nil
	}
	var cur int64
	if err := tx.QueryRowContext(ctx, "SELECT epoch FROM leader WHERE id = 1 FOR SHARE").Scan(&cur); err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	if cur != epoch {
		return fmt.Errorf("%w (term %d; the leader's is %d)", store.ErrFenced, epoch, cur)
	}
	return nil
}
