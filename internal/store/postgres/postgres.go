// Package postgres implements store.Store on PostgreSQL (through pgx v5),
// for several control-plane replicas sharing one database.
//
// The queries are store/sqlstore's, in its Postgres dialect; the schema
// (migrations/) encodes as SQLite's does, so that `tandem db copy` moves
// rows unchanged.
//
// # Transactions
//
// Update runs fn in a SERIALIZABLE transaction: replicas may update the
// same rows at once, and PostgreSQL then fails one of them with a
// serialisation error rather than let both commit on a stale read. Update
// runs such a transaction again (fn may run more than once, as store.Store
// allows), and so it does when the connection was lost before COMMIT was
// sent (nothing committed: the server rolls back a transaction whose
// connection went away). A connection lost during COMMIT is not retried:
// the commit may or may not have happened, and the caller hears so. View
// runs in a REPEATABLE READ READ ONLY transaction: one snapshot from its
// first statement on.
//
// InsertDelivery commits each delivery in a statement of its own;
// PostgreSQL flushes concurrent commits together (group commit), so
// there is no batcher as in the SQLite store. It is idempotent by GUID and
// so retried on any lost connection.
//
// # Leadership
//
// Store is a store.Elector: one replica leads at a time, holding an
// advisory lock, with an epoch that fences a deposed leader's writes
// (leader.go).
//
// # Schema
//
// Migrations are embedded and applied at Open, under a session advisory
// lock so that replicas starting together apply each once; each runs in a
// transaction of its own (DDL is transactional in PostgreSQL). Open
// refuses a database whose schema is newer than this binary knows
// (ErrSchemaTooNew).
package postgres

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlstore"
)

const (
	defaultMaxConns = 16
	defaultRetryFor = 30 * time.Second
	// pruneChunk bounds how many rows one Prune statement deletes.
	pruneChunk = 2000
)

// ErrSchemaTooNew is returned by Open for a database migrated by a newer
// binary.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	db       *sql.DB
	log      *slog.Logger
	retryFor time.Duration

	gate sqlstore.Gate // calls in progress, waited for by Close
	cfg  *pgx.ConnConfig
	// bg ends when Close begins: what runs in the background for the
	// store (the notification listener) stops with it.
	bg     context.Context
	stopBg context.CancelFunc
	listen listener

	termsMu sync.Mutex
	terms   map[*term]bool // leader terms in progress, resigned by Close
}

var _ store.Store = (*Store)(nil)

// Open connects to the database opts names, applies pending migrations
// and returns the store.
func Open(ctx context.Context, opts Options) (*Store, error) {
	cfg, err := ConnConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = defaultMaxConns
	}
	if opts.RetryFor <= 0 {
		opts.RetryFor = defaultRetryFor
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	where := fmt.Sprintf("postgres database %q on %s", cfg.Database, cfg.Host)
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(opts.MaxConns)
	db.SetMaxIdleConns(opts.MaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db, cfg: cfg, log: opts.Logger, retryFor: opts.RetryFor, terms: map[*term]bool{}}
	s.bg, s.stopBg = context.WithCancel(context.Background())
	if err := s.migrate(ctx); err != nil {
		s.stopBg()
		db.Close()
		return nil, fmt.Errorf("open store (%s): %w", where, err)
	}
	if err := s.inTx(ctx, func(tx *sql.Tx) error { return sqlstore.BackfillJobStats(ctx, tx, sqlstore.Postgres) }); err != nil {
		s.stopBg()
		db.Close()
		return nil, fmt.Errorf("open store (%s): job statistics backfill: %w", where, err)
	}
	s.log.Debug("store opened", "database", where)
	return s, nil
}

// ConnConfig is how the store connects for opts: the URL parsed, the
// password from its file, the TLS files applied (TLS only, then: no
// plaintext fallback). Tools that reach the database beside the store
// (tandem db) connect the same way.
func ConnConfig(opts Options) (*pgx.ConnConfig, error) {
	if opts.URL == "" {
		return nil, errors.New("no database URL")
	}
	cfg, err := pgx.ParseConfig(opts.URL)
	if err != nil {
		// pgx's message may quote the URL, and with it a password.
		return nil, errors.New("the database URL does not parse (see postgres:// in the PostgreSQL documentation)")
	}
	if opts.PasswordFile != "" {
		b, err := os.ReadFile(opts.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("password file: %w", err)
		}
		pw, _, _ := strings.Cut(string(b), "\n")
		pw = strings.TrimSuffix(pw, "\r")
		if pw == "" {
			return nil, fmt.Errorf("password file %s is empty", opts.PasswordFile)
		}
		cfg.Password = pw
	}
	if opts.CertFile != "" || opts.KeyFile != "" || opts.CAFile != "" {
		tc, err := tlsConfig(opts, cfg.Host)
		if err != nil {
			return nil, err
		}
		// TLS only: no plaintext fallback as sslmode=prefer would allow.
		cfg.TLSConfig, cfg.Fallbacks = tc, nil
	}
	return cfg, nil
}

// tlsConfig verifies the server against opts.CAFile (and its name: host)
// and presents opts' client certificate if any.
func tlsConfig(opts Options, host string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", opts.CAFile)
		}
		tc.RootCAs = pool
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("a client certificate needs both a certificate and a key file")
	}
	if opts.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Close waits for calls in progress and closes the connections. Closing
// twice is harmless.
func (s *Store) Close() error {
	if !s.gate.Shut() {
		return nil
	}
	s.stopBg()
	s.resignAll()
	s.gate.Wait()
	return s.db.Close()
}

// Update implements store.Store; see the package documentation for its
// retries. Under store.Fence, it commits only while the fence's epoch is
// the leader's (store.ErrFenced otherwise, not retried).
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	return s.inTx(ctx, func(tx *sql.Tx) error { return fn(sqlstore.NewTx(ctx, tx, sqlstore.Postgres)) })
}

// inTx runs fn in a SERIALIZABLE transaction, again while it fails in a
// way that running it again mends.
func (s *Store) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	return s.retry(ctx, "update", func() (bool, error) {
		tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
		if err != nil {
			return retryable(err, false), fmt.Errorf("begin: %w", err)
		}
		defer tx.Rollback() //nolint:errcheck // no-op after Commit
		if err := checkFence(ctx, tx); err != nil {
			return retryable(err, false), err
		}
		if err := fn(tx); err != nil {
			return retryable(err, false), err
		}
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("commit: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return retryable(err, true), fmt.Errorf("commit: %w", err)
		}
		return false, nil
	})
}

// View implements store.Store.
func (s *Store) View(ctx context.Context, fn func(store.ReadTx) error) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	var tx *sql.Tx
	err := s.retry(ctx, "begin read", func() (bool, error) {
		var err error
		tx, err = s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
		return retryable(err, false), err
	})
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only: nothing to lose
	return fn(sqlstore.NewReadTx(ctx, tx, sqlstore.Postgres))
}

// InsertDelivery implements store.Store: one statement, committed when it
// returns; retried on a lost connection (a delivery that did commit then
// reads as a duplicate, which is as durable).
func (s *Store) InsertDelivery(ctx context.Context, d store.Delivery) (bool, error) {
	if err := sqlstore.ValidateDelivery(d); err != nil {
		return false, err
	}
	if err := s.gate.Enter(); err != nil {
		return false, err
	}
	defer s.gate.Leave()
	var inserted bool
	err := s.retry(ctx, "insert delivery", func() (bool, error) {
		res, err := s.db.ExecContext(ctx, insertDeliverySQL, sqlstore.DeliveryArgs(d)...)
		if err != nil {
			return retryable(err, false) || lostConn(err), fmt.Errorf("insert delivery %s: %w", d.GUID, err)
		}
		n, err := res.RowsAffected()
		inserted = n == 1
		return false, err
	})
	return inserted, err
}

var insertDeliverySQL = sqlstore.Postgres.Rebind(sqlstore.InsertDeliverySQL)

// PendingDeliveries implements store.Store.
func (s *Store) PendingDeliveries(ctx context.Context, after int64, limit int) ([]store.Delivery, error) {
	if err := s.gate.Enter(); err != nil {
		return nil, err
	}
	defer s.gate.Leave()
	return sqlstore.PendingDeliveries(ctx, s.db, sqlstore.Postgres, after, limit)
}

// Prune implements store.Store, deleting in chunks of one statement each:
// if ctx ends half-way, the chunks already deleted stay deleted and the
// count so far comes back with the error.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	if err := s.gate.Enter(); err != nil {
		return 0, err
	}
	defer s.gate.Leave()
	return sqlstore.Prune(ctx, sqlstore.PruneSteps(sqlstore.Postgres), before, pruneChunk, func(q string, args ...any) (int64, error) {
		var n int64
		err := s.retry(ctx, "prune", func() (bool, error) {
			res, err := s.db.ExecContext(ctx, q, args...)
			if err != nil {
				return retryable(err, false) || lostConn(err), err
			}
			n, err = res.RowsAffected()
			return false, err
		})
		return n, err
	})
}

// retry runs attempt until it succeeds, fails for good, ctx ends or
// s.retryFor has passed, backing off with jitter between attempts.
func (s *Store) retry(ctx context.Context, what string, attempt func() (retry bool, err error)) error {
	deadline := time.Now().Add(s.retryFor)
	backoff := 2 * time.Millisecond
	for n := 1; ; n++ {
		again, err := attempt()
		if err == nil || !again || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		if n%10 == 0 || !isSerialization(err) {
			s.log.Warn("store: retrying", "op", what, "attempt", n, "err", err)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		}
		backoff = min(2*backoff, time.Second)
	}
}

// PostgreSQL error codes the store acts on.
const (
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeAdminShutdown        = "57P01"
	codeCrashShutdown        = "57P02"
	codeCannotConnectNow     = "57P03"
)

// isSerialization reports a transaction PostgreSQL rolled back for a
// conflict with another: running it again is the remedy.
func isSerialization(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == codeSerializationFailure || pe.Code == codeDeadlockDetected)
}

// retryable reports whether a transaction that failed with err may run
// again: it lost a conflict, or its connection went before anything was
// committed (atCommit: err came from COMMIT, when a lost connection leaves
// the outcome unknown).
func retryable(err error, atCommit bool) bool {
	if err == nil {
		return false
	}
	if isSerialization(err) {
		return true
	}
	return !atCommit && lostConn(err)
}

// lostConn reports an error of the connection or the server going away,
// rather than of the statement.
func lostConn(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
			return true
		}
		return strings.HasPrefix(pe.Code, "08") // connection exception
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var (
		ce *pgconn.ConnectError
		ne net.Error
	)
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone)
}
