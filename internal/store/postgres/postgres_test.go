package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
	"github.com/tandem-ci/tandem/internal/store/storetest"
	"golang.org/x/sync/errgroup"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openFresh opens a store on a new, empty database, closed when t ends.
func openFresh(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{URL: pgtest.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Replicas that start together on an empty database apply each migration
// once, under the advisory lock, and all open.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	url := pgtest.NewDatabase(t)
	var g errgroup.Group
	stores := make([]*Store, 4)
	for i := range stores {
		g.Go(func() error {
			s, err := Open(ctxT(t), Options{URL: url})
			stores[i] = s
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		defer s.Close()
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var version, rows int
	if err := stores[0].db.QueryRowContext(ctxT(t), "SELECT max(version), count(*) FROM schema_migrations").Scan(&version, &rows); err != nil {
		t.Fatal(err)
	}
	if version != len(ms) || rows != len(ms) {
		t.Errorf("schema_migrations: version %d in %d rows, want %d in %d", version, rows, len(ms), len(ms))
	}
	if v, err := stores[3].SchemaVersion(ctxT(t)); err != nil || v != len(ms) {
		t.Errorf("SchemaVersion: %d, %v", v, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	url := pgtest.NewDatabase(t)
	s, err := Open(ctxT(t), Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctxT(t), "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, '0999_future.sql', 0)"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctxT(t), Options{URL: url}); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open: %v, want ErrSchemaTooNew", err)
	}
}

// Two replicas each reading a job and writing it back with one more
// attempt, at once: under a weaker isolation two of them would read the
// same count and one increment would be lost. PostgreSQL fails the loser
// of each conflict with a serialisation error and Update runs it again,
// so every increment counts once.
func TestReplicasSerialise(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a, b := openURL(t, url), openURL(t, url)
	if err := a.Update(ctxT(t), func(tx store.Tx) error {
		return tx.CreateJob(store.Job{ID: 1, State: store.JobQueued, Repo: "o/r", UpdatedAt: time.Now()}, store.Event{})
	}); err != nil {
		t.Fatal(err)
	}
	const per = 30
	var g errgroup.Group
	for _, s := range []*Store{a, b, a, b} {
		g.Go(func() error {
			for range per {
				err := s.Update(ctxT(t), func(tx store.Tx) error {
					j, err := tx.Job(1)
					if err != nil {
						return err
					}
					j.Attempts++
					return tx.UpdateJob(j, store.Event{Source: "test"})
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	var j store.Job
	var evs []store.JobEvent
	err := a.View(ctxT(t), func(tx store.ReadTx) error {
		var err error
		if j, err = tx.Job(1); err == nil {
			evs, err = tx.JobEvents(1)
		}
		return err
	})
	if err != nil || j.Attempts != 4*per || len(evs) != 4*per+1 {
		t.Errorf("attempts %d and %d events, %v; want %d and %d", j.Attempts, len(evs), err, 4*per, 4*per+1)
	}
}

func openURL(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(ctxT(t), Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// PostgreSQL restarting (or killed) under a running store: calls made
// while it is down wait and succeed once it is back; nothing committed is
// lost.
func TestDatabaseRestart(t *testing.T) {
	srv := pgtest.StartServer(t)
	s := openURL(t, srv.NewDatabase(t))
	put := func(id int64) error {
		return s.Update(ctxT(t), func(tx store.Tx) error {
			return tx.CreateJob(store.Job{ID: id, State: store.JobQueued, Repo: "o/r", UpdatedAt: time.Now()}, store.Event{})
		})
	}
	if err := put(1); err != nil {
		t.Fatal(err)
	}
	for i, down := range []func(testing.TB){srv.Stop, srv.Kill} {
		down(t)
		done := make(chan error, 2)
		go func() { done <- put(int64(10 + i)) }()
		go func() {
			_, err := s.InsertDelivery(ctxT(t), store.Delivery{GUID: fmt.Sprint("d", i), Event: "ping", ReceivedAt: time.Now()})
			done <- err
		}()
		time.Sleep(500 * time.Millisecond) // both are retrying now
		srv.Start(t)
		for range 2 {
			if err := <-done; err != nil {
				t.Fatalf("after restart %d: %v", i, err)
			}
		}
	}
	var jobs []store.Job
	var ds []store.Delivery
	err := s.View(ctxT(t), func(tx store.ReadTx) error {
		var err error
		jobs, err = tx.Jobs(store.JobFilter{})
		return err
	})
	if err == nil {
		ds, err = s.PendingDeliveries(ctxT(t), 0, 10)
	}
	if err != nil || len(jobs) != 3 || len(ds) != 2 {
		t.Fatalf("after two restarts: %d jobs, %d deliveries, %v; want 3 and 2", len(jobs), len(ds), err)
	}
}

// The password comes from its file, and no error quotes it.
func TestPasswordFile(t *testing.T) {
	url := pgtest.NewDatabase(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{URL: url, PasswordFile: filepath.Join(dir, "missing")}, "password file"},
		{Options{URL: url, PasswordFile: empty}, "is empty"},
		{Options{URL: "postgres://u:hunter2@[::1"}, "does not parse"},
		{Options{}, "no database URL"},
		{Options{URL: url, CertFile: empty}, "both a certificate and a key"},
	} {
		_, err := Open(ctxT(t), tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%+v): %v, want an error saying %q", tc.opts, err, tc.want)
		}
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ConnConfig(Options{URL: url, PasswordFile: pw})
	if err != nil || cfg.Password != "s3cret" {
		t.Errorf("password from file: %q, %v", cfg.Password, err)
	}
}
