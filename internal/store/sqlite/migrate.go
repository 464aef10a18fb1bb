package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one embedded schema step.
type migration = sqlstore.Migration

// loadMigrations reads the embedded migrations.
func loadMigrations() ([]migration, error) { return sqlstore.LoadMigrations(migrationFS) }

// KnownVersion is the schema version this binary's migrations reach.
func KnownVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		panic(err) // embedded at build time; TestMigrationsWellFormed
	}
	return len(ms)
}

// migrate brings the schema of db up to the newest embedded migration, one
// transaction per migration. Each transaction re-reads the current version
// after taking the write lock, so two processes opening one database at once
// do not apply a migration twice.
func migrate(ctx context.Context, db *sql.DB) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	return migrateTo(ctx, db, ms)
}

// migrateTo applies the pending migrations of ms; the tests use it to build
// the database an older binary, knowing fewer migrations, left behind.
func migrateTo(ctx context.Context, db *sql.DB, ms []migration) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	for {
		done, err := migrateOne(ctx, db, ms)
		if err != nil || done {
			return err
		}
	}
}

// migrateOne applies the next pending migration, if any.
func migrateOne(ctx context.Context, db *sql.DB, ms []migration) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: see the writer DSN
	if err != nil {
		return false, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit

	var cur int
	if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&cur); err != nil {
		return false, fmt.Errorf("migrate: read version: %w", err)
	}
	switch {
	case cur > len(ms):
		return false, fmt.Errorf("%w: schema version %d, this binary knows up to %d", ErrSchemaTooNew, cur, len(ms))
	case cur == len(ms):
		return true, nil
	}
	m := ms[cur]
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("migrate %s: %w", m.Name, err)
	}
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
		m.Version, m.Name, time.Now().UnixMilli()); err != nil {
		return false, fmt.Errorf("migrate %s: record: %w", m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("migrate %s: commit: %w", m.Name, err)
	}
	return false, nil
}
