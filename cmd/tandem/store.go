package main

import (
	"context"
	"log/slog"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// openStore opens the database the config names: a SQLite file (by
// default <dataDir>/tandem.db) or, for database: postgres://…, PostgreSQL.
// On an error the store is nil, never a nil *sqlite.Store in an interface.
func openStore(ctx context.Context, cfg *config.Config, dataDir string, log *slog.Logger) (store.Store, error) {
	var (
		st  store.Store
		err error
	)
	if cfg.IsPostgres() {
		st, err = postgres.Open(ctx, postgresOptions(cfg, log))
	} else {
		st, err = sqlite.Open(ctx, cfg.DatabasePath(dataDir), sqlite.Options{})
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// postgresOptions is how the config says to reach its PostgreSQL database
// (config.Load has made the files' paths absolute and checked them).
func postgresOptions(cfg *config.Config, log *slog.Logger) postgres.Options {
	p := cfg.Postgres
	return postgres.Options{
		URL:          cfg.Database,
		PasswordFile: p.PasswordFile,
		CAFile:       p.CAFile,
		CertFile:     p.CertFile,
		KeyFile:      p.KeyFile,
		MaxConns:     p.MaxConns,
		Logger:       log,
	}
}
