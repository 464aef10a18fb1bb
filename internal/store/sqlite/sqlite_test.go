package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/storetest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openT opens path and closes the store when t ends.
func openT(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(ctxT(t), path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, filepath.Join(t.TempDir(), "tandem.db"), Options{})
	})
}

func TestConformanceSyncNormal(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, filepath.Join(t.TempDir(), "tandem.db"), Options{Synchronous: SyncNormal, MaxBatch: 3})
	})
}

func TestMigrationsWellFormed(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].Name != "0001_init.sql" {
		t.Fatalf("migrations = %v, want 0001_init.sql first", ms)
	}
}

func schemaVersion(t *testing.T, db *sql.DB) (version, rows int) {
	t.Helper()
	err := db.QueryRowContext(ctxT(t), "SELECT max(version), count(*) FROM schema_migrations").Scan(&version, &rows)
	if err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	return version, rows
}

// freshDB opens a new database file, at the newest schema, and returns
// its path, the migrations and the store, which the test closes.
func freshDB(t *testing.T) (string, []migration, *Store) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tandem.db")
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctxT(t), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return path, ms, s
}

func TestReopenKeepsData(t *testing.T) {
	path, ms, s := freshDB(t)
	if _, err := s.InsertDelivery(ctxT(t), store.Delivery{GUID: "g", Event: "e", ReceivedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	j := store.Job{ID: 7, State: store.JobQueued, Repo: "o/r", UpdatedAt: time.Now()}
	if err := s.Update(ctxT(t), func(tx store.Tx) error { return tx.CreateJob(j, store.Event{}) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for range 2 { // reopening twice applies nothing twice
		s = openT(t, path, Options{})
		if v, n := schemaVersion(t, s.w); v != len(ms) || n != len(ms) {
			t.Errorf("schema version %d in %d rows, want %d", v, n, len(ms))
		}
		if _, err := s.InsertDelivery(ctxT(t), store.Delivery{GUID: "g", Event: "e", ReceivedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		err := s.View(ctxT(t), func(tx store.ReadTx) error {
			if _, err := tx.Delivery("g"); err != nil {
				return err
			}
			_, err := tx.Job(7)
			return err
		})
		if err != nil {
			t.Errorf("after reopening: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path, ms, s := freshDB(t)
	if _, err := s.w.ExecContext(ctxT(t),
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from-the-future.sql', 0)",
		len(ms)+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctxT(t), path, Options{})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaTooNew", err)
	}
	t.Logf("refused with: %v", err)
}

func TestOpenOptions(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(ctxT(t), filepath.Join(dir, "a.db"), Options{Synchronous: "SOMETIMES"}); err == nil {
		t.Error("Open with an unknown synchronous mode succeeded")
	}
	if _, err := Open(ctxT(t), ":memory:", Options{}); err == nil {
		t.Error("Open of :memory: succeeded")
	}
	if _, err := Open(ctxT(t), filepath.Join(dir, "missing", "a.db"), Options{}); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
	for _, c := range []struct {
		opts Options
		want int // PRAGMA synchronous: 1 NORMAL, 2 FULL
	}{{Options{}, 2}, {Options{Synchronous: SyncFull}, 2}, {Options{Synchronous: SyncNormal}, 1}} {
		s := openT(t, filepath.Join(t.TempDir(), "sync?#%.db"), c.opts)
		var got, fk int
		var mode string
		if err := s.w.QueryRowContext(ctxT(t), "PRAGMA synchronous").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if err := s.w.QueryRowContext(ctxT(t), "PRAGMA foreign_keys").Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if err := s.r.QueryRowContext(ctxT(t), "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if got != c.want || fk != 1 || mode != "wal" {
			t.Errorf("%+v: synchronous=%d foreign_keys=%d journal_mode=%s, want %d, 1, wal", c.opts, got, fk, mode, c.want)
		}
		// Readers cannot write.
		if _, err := s.r.ExecContext(ctxT(t), "INSERT INTO counters (name, value) VALUES ('x', 1)"); err == nil {
			t.Error("a reader connection could write")
		}
	}
}

// TestBusyRetry holds the write lock from another connection, as another
// process would; writes wait and retry instead of failing.
func TestBusyRetry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tandem.db")
	s := openT(t, path, Options{BusyTimeout: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})

	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctxT(t), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	const hold = 300 * time.Millisecond
	released := make(chan error, 1)
	go func() {
		time.Sleep(hold)
		_, err := conn.ExecContext(context.Background(), "COMMIT")
		released <- err
	}()

	start := time.Now()
	var calls atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := s.InsertDelivery(ctxT(t), store.Delivery{GUID: "g", Event: "e", ReceivedAt: start}); err != nil {
			t.Errorf("InsertDelivery while another process writes: %v", err)
		}
	})
	err = s.Update(ctxT(t), func(tx store.Tx) error {
		calls.Add(1)
		return tx.AddCounter("n", 1)
	})
	wg.Wait()
	if err != nil {
		t.Fatalf("Update while another process writes: %v", err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < hold-50*time.Millisecond {
		t.Errorf("Update took %v, yet the lock was held for %v", d, hold)
	}
	if calls.Load() != 1 {
		t.Errorf("fn ran %d times", calls.Load())
	}

	// fn errors are never retried, busy or not.
	calls.Store(0)
	err = s.Update(ctxT(t), func(store.Tx) error {
		calls.Add(1)
		return &sqlitedrvBusy{}
	})
	if calls.Load() != 1 || err == nil {
		t.Errorf("fn returning a busy error ran %d times, err %v", calls.Load(), err)
	}
}

// sqlitedrvBusy is an error from fn that merely looks like contention.
type sqlitedrvBusy struct{}

func (*sqlitedrvBusy) Error() string { return "database is locked (5) (SQLITE_BUSY)" }

// TestConcurrentReadersDuringWrites checks that readers see whole
// transactions while writers commit: every transfer between two counters
// keeps their sum at zero, and a job's state matches its event count.
func TestConcurrentReadersDuringWrites(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "tandem.db"), Options{Readers: 3})
	ctx := ctxT(t)
	const writers, readers, transfers = 3, 4, 60
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		reads   atomic.Int64
		failure = make(chan error, writers+readers)
	)
	for w := range writers {
		wg.Go(func() {
			for i := range transfers {
				if _, err := s.InsertDelivery(ctx, store.Delivery{GUID: fmt.Sprintf("%d-%d", w, i), Event: "e",
					ReceivedAt: time.Now()}); err != nil {
					failure <- err
					return
				}
				err := s.Update(ctx, func(tx store.Tx) error {
					k := int64(i + 1)
					if err := tx.AddCounter("a", -k); err != nil {
						return err
					}
					return tx.AddCounter("b", k)
				})
				if err != nil {
					failure <- err
					return
				}
			}
		})
	}
	var rg sync.WaitGroup
	for range readers {
		rg.Go(func() {
			for !stop.Load() {
				err := s.View(ctx, func(tx store.ReadTx) error {
					c, err := tx.Counters()
					if err != nil {
						return err
					}
					if c["a"]+c["b"] != 0 {
						return fmt.Errorf("torn read: a=%d b=%d", c["a"], c["b"])
					}
					return nil
				})
				if err != nil {
					failure <- err
					return
				}
				if _, err := s.PendingDeliveries(ctx, 0, 50); err != nil {
					failure <- err
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	rg.Wait()
	close(failure)
	for err := range failure {
		t.Fatal(err)
	}
	if reads.Load() < readers {
		t.Errorf("only %d reads completed while writing", reads.Load())
	}
	var c map[string]int64
	if err := s.View(ctx, func(tx store.ReadTx) (err error) { c, err = tx.Counters(); return err }); err != nil {
		t.Fatal(err)
	}
	want := int64(writers * transfers * (transfers + 1) / 2)
	if c["b"] != want || c["a"] != -want {
		t.Errorf("counters %v, want b=%d", c, want)
	}
	t.Logf("%d reads during %d writes", reads.Load(), writers*transfers*2)
}

// TestBatchDuplicatesWithinOneBatch queues copies of one GUID behind an
// Update holding the writer, so they land in one batch.
func TestBatchDuplicatesWithinOneBatch(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "tandem.db"), Options{})
	ctx := ctxT(t)
	const copies = 30
	var (
		wins atomic.Int32
		wg   sync.WaitGroup
	)
	hold := make(chan struct{})
	held := make(chan struct{})
	go func() {
		_ = s.Update(ctx, func(store.Tx) error { close(held); <-hold; return nil })
	}()
	<-held
	for range copies {
		wg.Go(func() {
			ok, err := s.InsertDelivery(ctx, store.Delivery{GUID: "same", Event: "e", ReceivedAt: time.Now()})
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		})
	}
	for len(s.inserts) < copies-1 { // the batcher holds one, waiting for the writer
		time.Sleep(time.Millisecond)
	}
	batches := s.batches.Load()
	close(hold)
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d callers saw inserted=true, want 1", wins.Load())
	}
	if n := s.batches.Load() - batches; n != 1 {
		t.Errorf("%d inserts queued behind one transaction took %d commits, want 1", copies, n)
	}
}

// TestPanicInUpdateReleasesWriter: a panic in fn propagates, and the store
// keeps working once the caller recovers from it.
func TestPanicInUpdateReleasesWriter(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "tandem.db"), Options{})
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic in fn did not propagate")
			}
		}()
		_ = s.Update(ctxT(t), func(tx store.Tx) error {
			if err := tx.AddCounter("n", 1); err != nil {
				return err
			}
			panic("handler bug")
		})
	}()
	ctx, cancel := context.WithTimeout(ctxT(t), 5*time.Second)
	defer cancel()
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddCounter("m", 1) }); err != nil {
		t.Fatalf("Update after a panic: %v", err)
	}
	if _, err := s.InsertDelivery(ctx, store.Delivery{GUID: "g", Event: "e", ReceivedAt: time.Now()}); err != nil {
		t.Fatalf("InsertDelivery after a panic: %v", err)
	}
	var c map[string]int64
	if err := s.View(ctx, func(tx store.ReadTx) (err error) { c, err = tx.Counters(); return err }); err != nil {
		t.Fatal(err)
	}
	if _, ok := c["n"]; ok || c["m"] != 1 {
		t.Errorf("counters %v: the panicking transaction committed, or the next one did not", c)
	}
}
