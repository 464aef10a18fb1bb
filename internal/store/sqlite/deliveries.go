package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlstore"
)

// insertReq is one InsertDelivery call waiting for the batcher.
type insertReq struct {
	ctx  context.Context
	d    store.Delivery
	resp chan insertResp // capacity 1: the batcher never blocks on it
}

type insertResp struct {
	inserted bool
	err      error
}

// InsertDelivery implements store.Store. It returns after the transaction
// holding the delivery has committed; concurrent calls share a commit.
// d.Seq, d.ProcessedAt and d.Error are ignored: the store assigns Seq and a
// new delivery is pending. A delivery needs a GUID, an event and a receive
// time (store.ErrInvalid otherwise).
//
// If ctx ends after the call was handed to the batcher, InsertDelivery
// returns ctx's error but the delivery may still be committed; a caller that
// did not acknowledge it will see the redelivery as a duplicate.
func (s *Store) InsertDelivery(ctx context.Context, d store.Delivery) (bool, error) {
	if err := sqlstore.ValidateDelivery(d); err != nil {
		return false, err
	}
	if err := s.gate.Enter(); err != nil {
		return false, err
	}
	defer s.gate.Leave()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	req := &insertReq{ctx: ctx, d: d, resp: make(chan insertResp, 1)}
	select {
	case s.inserts <- req:
	case <-ctx.Done():
		return false, ctx.Err()
	case <-s.quit:
		return false, store.ErrClosed
	}
	select {
	case r := <-req.resp:
		return r.inserted, r.err
	case <-ctx.Done():
		return false, ctx.Err()
	case <-s.batcherDone:
		select {
		case r := <-req.resp:
			return r.inserted, r.err
		default:
			return false, store.ErrClosed
		}
	}
}

// runBatcher commits queued inserts, many per transaction, until Close.
func (s *Store) runBatcher() {
	defer close(s.batcherDone)
	batch := make([]*insertReq, 0, s.maxBatch)
	for {
		select {
		case <-s.quit:
			s.rejectQueued()
			return
		case r := <-s.inserts:
			batch = s.commitBatch(append(batch[:0], r))
		}
	}
}

// rejectQueued fails every insert still queued at Close.
func (s *Store) rejectQueued() {
	for {
		select {
		case r := <-s.inserts:
			r.resp <- insertResp{err: store.ErrClosed}
		default:
			return
		}
	}
}

// commitBatch takes the writer, adds whatever else is queued by then (up to
// maxBatch), inserts it all in one transaction and answers every caller
// after the commit. It returns batch for reuse.
func (s *Store) commitBatch(batch []*insertReq) []*insertReq {
	ctx := context.Background() // the batch serves many callers; none may cancel it
	var inserted []bool
	err := retryBusy(ctx, s.log, func() (bool, error) {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return isBusy(err), fmt.Errorf("insert deliveries: begin: %w", err)
		}
		defer tx.Rollback() //nolint:errcheck // no-op after Commit
		// Everything that queued up while the previous commit was
		// syncing, or while an Update held the writer, joins this one.
	drain:
		for len(batch) < s.maxBatch {
			select {
			case r := <-s.inserts:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		inserted, err = insertBatch(ctx, tx, batch)
		if err != nil {
			return false, err
		}
		if err := tx.Commit(); err != nil {
			return isBusy(err), fmt.Errorf("insert deliveries: commit: %w", err)
		}
		return false, nil
	})
	if err != nil {
		s.log.Error("store: delivery batch failed", "deliveries", len(batch), "err", err)
	} else {
		s.batches.Add(1)
		s.batched.Add(int64(len(batch)))
	}
	for i, r := range batch {
		switch {
		case err != nil:
			r.resp <- insertResp{err: err}
		case inserted[i] || r.ctx.Err() == nil:
			r.resp <- insertResp{inserted: inserted[i]}
		default:
			r.resp <- insertResp{err: r.ctx.Err()}
		}
		batch[i] = nil
	}
	return batch[:0]
}

// insertBatch inserts the deliveries of batch whose callers still wait and
// reports, for each, whether it was new. A caller that gave up before the
// batch started is skipped: nothing is written for it.
func insertBatch(ctx context.Context, tx *sql.Tx, batch []*insertReq) ([]bool, error) {
	stmt, err := tx.PrepareContext(ctx, sqlstore.InsertDeliverySQL)
	if err != nil {
		return nil, fmt.Errorf("insert deliveries: prepare: %w", err)
	}
	defer stmt.Close()
	inserted := make([]bool, len(batch))
	for i, r := range batch {
		if r.ctx.Err() != nil {
			continue
		}
		res, err := stmt.ExecContext(ctx, sqlstore.DeliveryArgs(r.d)...)
		if err != nil {
			return nil, fmt.Errorf("insert delivery %s: %w", r.d.GUID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, fmt.Errorf("insert delivery %s: %w", r.d.GUID, err)
		}
		inserted[i] = n == 1
	}
	return inserted, nil
}

// PendingDeliveries implements store.Store. limit must be positive
// (store.ErrInvalid otherwise).
func (s *Store) PendingDeliveries(ctx context.Context, after int64, limit int) ([]store.Delivery, error) {
	if err := s.gate.Enter(); err != nil {
		return nil, err
	}
	defer s.gate.Leave()
	return sqlstore.PendingDeliveries(ctx, s.r, sqlstore.SQLite, after, limit)
}

// pruneChunk bounds how many rows one Prune transaction deletes, so that
// webhook ingest never waits long for the writer.
const pruneChunk = 2000

// Prune implements store.Store. It deletes in chunks, one transaction each:
// if ctx ends half-way, the chunks already deleted stay deleted (Prune is
// idempotent) and the count so far comes back with the error. An ended
// runner's age is its EndedAt.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	if err := s.gate.Enter(); err != nil {
		return 0, err
	}
	defer s.gate.Leave()
	return sqlstore.Prune(ctx, sqlstore.PruneSteps(sqlstore.SQLite), before, pruneChunk, func(q string, args ...any) (int64, error) {
		var n int64
		err := retryBusy(ctx, s.log, func() (bool, error) {
			tx, err := s.w.BeginTx(ctx, nil)
			if err != nil {
				return isBusy(err), fmt.Errorf("begin: %w", err)
			}
			defer tx.Rollback() //nolint:errcheck // no-op after Commit
			res, err := tx.ExecContext(ctx, q, args...)
			if err != nil {
				return false, err
			}
			if n, err = res.RowsAffected(); err != nil {
				return false, err
			}
			if err := tx.Commit(); err != nil {
				return isBusy(err), fmt.Errorf("commit: %w", err)
			}
			return false, nil
		})
		return n, err
	})
}
