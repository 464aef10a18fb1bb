package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
)

// By default the store is SQLite, in the data directory.
func TestOpenStoreSQLite(t *testing.T) {
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := openStore(t.Context(), cfg, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Update(t.Context(), func(tx store.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tandem.db")); err != nil {
		t.Errorf("no database in the data directory: %v", err)
	}
}

// A postgres:// database is PostgreSQL, reached as the config says; a
// store that does not open is nil, not a nil pointer in an interface.
func TestOpenStorePostgres(t *testing.T) {
	cfg, err := config.Parse([]byte(`
database: postgres://tandem@127.0.0.1:1/tandem
postgres: {password_file: /p, ca_file: /ca, cert_file: /c, key_file: /k, max_conns: 4}
`))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	want := postgres.Options{URL: "postgres://tandem@127.0.0.1:1/tandem", PasswordFile: "/p",
		CAFile: "/ca", CertFile: "/c", KeyFile: "/k", MaxConns: 4, Logger: log}
	if got := postgresOptions(cfg, log); got != want {
		t.Errorf("options %+v, want %+v", got, want)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	st, err := openStore(ctx, cfg, t.TempDir(), log)
	if err == nil || st != nil {
		t.Errorf("openStore: %v, %v; want an error and no store", st, err)
	}
}
