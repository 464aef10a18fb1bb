// Package sqlite implements store.Store on an embedded SQLite database
// (modernc.org/sqlite, pure Go), for a control plane on one machine.
//
// # Layout
//
// The database runs in WAL mode. One writer connection (SQLite has one
// writer at a time) serves Update, Prune and InsertDelivery; every write
// transaction starts with BEGIN IMMEDIATE, so it takes the write lock up
// front and cannot fail half-way with SQLITE_BUSY. A small pool of
// read-only connections serves View and PendingDeliveries; WAL readers see a
// consistent snapshot from their first read and never block the writer.
//
// # Durability and group commit
//
// By default the writer runs with synchronous=FULL: every commit fsyncs the
// WAL, so a webhook whose InsertDelivery returned survives a crash of the
// process and a loss of power. One fsync per webhook would cap ingest at the
// disk's fsync rate, so InsertDelivery does not commit on its own: calls
// queue for a batcher goroutine, which takes every waiting insert (up to
// Options.MaxBatch), runs them in one transaction, commits once and then
// answers each caller, duplicates (also within one batch) included.
// Options.Synchronous = SyncNormal fsyncs only at checkpoints: still safe
// against a crash of the process, but a power loss may take back the last
// commits.
//
// # Encoding
//
// Times are INTEGER unix milliseconds UTC (0 is the zero time, so the instant
// 1970-01-01T00:00:00Z reads back as the zero time); they come back in UTC
// with millisecond precision. Slices (labels, hosts to avoid, host
// architectures) are JSON arrays in TEXT columns; empty slices come back nil.
//
// The queries themselves are in store/sqlstore, shared with the
// PostgreSQL store; this package owns the connections, transactions,
// migrations and the delivery batcher.
//
// # Schema
//
// Migrations are embedded (migrations/NNNN_name.sql) and applied at Open,
// each in its own transaction, recorded in schema_migrations. Open refuses a
// database whose schema is newer than this binary knows (ErrSchemaTooNew).
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	sqlitedrv "modernc.org/sqlite"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlstore"
)

// Synchronous is SQLite's synchronous setting for the writer connection.
type Synchronous string

const (
	// SyncFull fsyncs the WAL at every commit: commits survive power loss.
	SyncFull Synchronous = "FULL"
	// SyncNormal fsyncs at checkpoints only: commits survive a crash of the
	// process but not necessarily a power loss.
	SyncNormal Synchronous = "NORMAL"
)

// Options tune Open. The zero value is the production default.
type Options struct {
	// Synchronous defaults to SyncFull.
	Synchronous Synchronous
	// BusyTimeout is how long a statement waits for a lock held by another
	// process before SQLITE_BUSY; default 5s.
	BusyTimeout time.Duration
	// Readers is the size of the read-only connection pool; default 4.
	Readers int
	// MaxBatch caps how many InsertDelivery calls commit together;
	// default 256.
	MaxBatch int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// ErrSchemaTooNew is returned by Open for a database migrated by a newer
// binary.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

const (
	defaultBusyTimeout = 5 * time.Second
	defaultReaders     = 4
	defaultMaxBatch    = 256
	// insertQueue is how many InsertDelivery calls may wait for the batcher.
	insertQueue = 4096
	// maxBusyAttempts bounds the retries of a transaction that found the
	// database locked by another process.
	maxBusyAttempts = 8
)

// SQLite primary result codes (the low byte of an extended code).
const (
	sqliteBusy   = 5
	sqliteLocked = 6
)

// Store is a store.Store on one SQLite database file.
type Store struct {
	path     string
	w        *sql.DB // exactly one connection: the writer
	r        *sql.DB // read-only pool
	log      *slog.Logger
	maxBatch int

	inserts     chan *insertReq
	quit        chan struct{} // closed by Close
	batcherDone chan struct{} // closed when the batcher has stopped

	gate sqlstore.Gate // calls in progress, waited for by Close

	// For tests and benchmarks: delivery batches committed, and the
	// deliveries they held.
	batches, batched atomic.Int64
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if need be) the database at path, applies pending
// migrations and starts the insert batcher. path must name a file: the
// writer and the readers are separate connections to it.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" || path == ":memory:" {
		return nil, fmt.Errorf("open store: %q is not a database file path", path)
	}
	switch opts.Synchronous {
	case "":
		opts.Synchronous = SyncFull
	case SyncFull, SyncNormal:
	default:
		return nil, fmt.Errorf("open store: unknown synchronous mode %q", opts.Synchronous)
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = defaultBusyTimeout
	}
	if opts.Readers <= 0 {
		opts.Readers = defaultReaders
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	busy := strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10)

	w, err := sql.Open("sqlite", dsn(abs, url.Values{
		"_pragma": {
			"busy_timeout(" + busy + ")",
			"journal_mode(WAL)",
			"journal_size_limit(67108864)", // keep an idle WAL file under 64 MiB
			"synchronous(" + string(opts.Synchronous) + ")",
			"foreign_keys(1)",
		},
		"_txlock": {"immediate"},
	}))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	if err := checkWAL(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	err = migrate(ctx, w)
	if err == nil {
		err = backfill(ctx, w)
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}

	r, err := sql.Open("sqlite", dsn(abs, url.Values{
		"_pragma": {"busy_timeout(" + busy + ")", "query_only(1)"},
	}))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	r.SetMaxOpenConns(opts.Readers)
	r.SetMaxIdleConns(opts.Readers)
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open store %s: readers: %w", abs, err)
	}

	s := &Store{
		path:        abs,
		w:           w,
		r:           r,
		log:         opts.Logger,
		maxBatch:    opts.MaxBatch,
		inserts:     make(chan *insertReq, insertQueue),
		quit:        make(chan struct{}),
		batcherDone: make(chan struct{}),
	}
	go s.runBatcher()
	s.log.Debug("store opened", "path", abs, "synchronous", string(opts.Synchronous))
	return s, nil
}

// dsn builds a modernc.org/sqlite data source name for an absolute path.
func dsn(abs string, params url.Values) string {
	u := url.URL{Path: abs}
	return "file:" + u.EscapedPath() + "?" + params.Encode()
}

// checkWAL makes sure the database really is in WAL mode (it is not, for
// example, on file systems without shared memory support).
func checkWAL(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("journal mode: %w", err)
	}
	if mode != "wal" {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	return nil
}

// Close stops the batcher (queued inserts not yet committed fail with
// store.ErrClosed), waits for calls in progress and closes the database.
// Closing twice is harmless.
func (s *Store) Close() error {
	if !s.gate.Shut() {
		return nil
	}

	close(s.quit)
	<-s.batcherDone
	s.gate.Wait()
	return errors.Join(s.r.Close(), s.w.Close())
}

// Update implements store.Store. fn runs in a BEGIN IMMEDIATE transaction on
// the writer connection; when another process holds the database (BEGIN or
// COMMIT fail with SQLITE_BUSY), the whole transaction is retried with
// backoff. Errors from fn are returned as they are, never retried.
//
// fn holds the only writer connection: it must not call the Store's own
// write methods (Update, InsertDelivery, Prune), which would wait for it
// forever. Reading through View from fn works but sees the state before fn.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	return retryBusy(ctx, s.log, func() (bool, error) { return s.update(ctx, fn) })
}

func (s *Store) update(ctx context.Context, fn func(store.Tx) error) (retry bool, err error) {
	sqlTx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return isBusy(err), fmt.Errorf("begin: %w", err)
	}
	// Rolls back when fn fails, and when it panics: the panic goes on, but
	// the writer connection must not stay inside a transaction (net/http,
	// for one, recovers panics and carries on).
	defer sqlTx.Rollback() //nolint:errcheck // no-op after Commit
	if err := fn(sqlstore.NewTx(ctx, sqlTx, sqlstore.SQLite)); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	if err := sqlTx.Commit(); err != nil {
		return isBusy(err), fmt.Errorf("commit: %w", err)
	}
	return false, nil
}

// retryBusy runs attempt until it succeeds, fails for a reason other than
// a busy database, maxBusyAttempts is reached or ctx ends.
func retryBusy(ctx context.Context, log *slog.Logger, attempt func() (retry bool, err error)) error {
	backoff := 5 * time.Millisecond
	for n := 1; ; n++ {
		retry, err := attempt()
		if err == nil || !retry || n == maxBusyAttempts {
			return err
		}
		log.Warn("store: database busy, retrying", "attempt", n, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// View implements store.Store on a read-only connection: fn sees the
// database as of its first read.
func (s *Store) View(ctx context.Context, fn func(store.ReadTx) error) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	sqlTx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer sqlTx.Rollback() //nolint:errcheck // read-only: nothing to lose
	return fn(sqlstore.NewReadTx(ctx, sqlTx, sqlstore.SQLite))
}

// backfill runs sqlstore.BackfillJobStats in a transaction of its own.
func backfill(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if err := sqlstore.BackfillJobStats(ctx, tx, sqlstore.SQLite); err != nil {
		return fmt.Errorf("job statistics backfill: %w", err)
	}
	return tx.Commit()
}

// isBusy reports whether err is SQLite's "database is locked" (another
// connection, in practice another process, holds the lock).
func isBusy(err error) bool {
	var se *sqlitedrv.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqliteBusy || c == sqliteLocked
}
