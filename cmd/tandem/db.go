package main

// The database commands: tandem db copy (SQLite into PostgreSQL), tandem
// db migrate, and tandem server --check-db's check.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/dbcopy"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

func dbCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Move the control plane's database to PostgreSQL, and migrate it",
	}
	cmd.AddCommand(dbCopyCmd(g), dbMigrateCmd(g))
	return cmd
}

// dbCopyFlags are tandem db copy's flags.
type dbCopyFlags struct {
	from, to, passwordFile, cfgPath string
	force                           bool
}

func dbCopyCmd(g *globals) *cobra.Command {
	var f dbCopyFlags
	cmd := &cobra.Command{
		Use:   "copy --from sqlite:PATH (--to postgres://USER@HOST/DB [--password-file FILE] | --config FILE) [--force]",
		Short: "Copy a SQLite database into PostgreSQL, all or nothing, and verify the copy",
		Long: `Copy a single-node install's SQLite database into PostgreSQL, to move the
control plane there.

Stop the control plane first (tandem server, tandem up): copy refuses a SQLite
database that a process has open, and a PostgreSQL one a control plane is using.

Both databases are brought to this binary's newest schema first; then every
table is copied in one PostgreSQL transaction, which commits only when every
table has as many rows in PostgreSQL as in SQLite. The SQLite database is read,
never written: it stays as it was, to go back to. The PostgreSQL database must
be empty (a new one, or one only a control plane's start has touched); --force
replaces what it holds.

The PostgreSQL database is --to (its password in --password-file, never in the
URL), or else the database: and postgres: of --config. Afterwards, point
database: at PostgreSQL and start the control plane.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := sqliteSource(f.from)
			if err != nil {
				return err
			}
			tgt, err := f.target(cmd, g.log)
			if err != nil {
				return err
			}
			return dbCopy(cmd.Context(), cmd.OutOrStdout(), g.log, path, tgt, f.force)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "the SQLite database to copy: sqlite:PATH")
	fl.StringVar(&f.to, "to", "", "the PostgreSQL database to fill: postgres://USER@HOST[:PORT]/DB (default: --config's)")
	fl.StringVar(&f.passwordFile, "password-file", "", "the PostgreSQL password, on the file's first line (with --to)")
	fl.StringVar(&f.cfgPath, "config", "/etc/tandem/config.yaml", "the configuration whose PostgreSQL database to fill, without --to")
	fl.BoolVar(&f.force, "force", false, "replace what the PostgreSQL database holds")
	return cmd
}

// sqliteSource returns the path of --from, sqlite:PATH.
func sqliteSource(from string) (string, error) {
	if from == "" {
		return "", errors.New("--from: give the SQLite database to copy, as sqlite:PATH")
	}
	path, ok := strings.CutPrefix(from, "sqlite:")
	if !ok {
		// Not quoted: a mistaken URL may hold a password.
		scheme, _, _ := strings.Cut(from, ":")
		if scheme == from {
			scheme = ""
		}
		return "", fmt.Errorf("--from: want sqlite:PATH, the SQLite database to copy (not %s…)", scheme+":")
	}
	path = strings.TrimPrefix(path, "//") // sqlite:///var/lib/tandem/tandem.db
	if path == "" {
		return "", errors.New("--from: sqlite: names no file")
	}
	return path, nil
}

// target returns the PostgreSQL database to fill: --to, or the config's.
func (f dbCopyFlags) target(cmd *cobra.Command, log *slog.Logger) (postgres.Options, error) {
	if f.to != "" {
		if cmd.Flags().Changed("config") {
			return postgres.Options{}, errors.New("give --to or --config, not both")
		}
		if err := checkPostgresURL(f.to); err != nil {
			return postgres.Options{}, fmt.Errorf("--to: %w", err)
		}
		return postgres.Options{URL: f.to, PasswordFile: f.passwordFile, Logger: log}, nil
	}
	if f.passwordFile != "" {
		return postgres.Options{}, errors.New("--password-file goes with --to (with --config, the config's postgres.password_file is used)")
	}
	cfg, err := config.Load(f.cfgPath)
	if err != nil {
		return postgres.Options{}, err
	}
	if !cfg.IsPostgres() {
		return postgres.Options{}, fmt.Errorf("%s: database: is SQLite, not PostgreSQL: give --to, or set database: to the PostgreSQL URL", f.cfgPath)
	}
	return postgresOptions(cfg, log), nil
}

// checkPostgresURL accepts a postgres:// URL that holds no password (as
// the config does: a command line is seen by every user of the machine).
// It never quotes the URL.
func checkPostgresURL(s string) error {
	if !strings.HasPrefix(s, "postgres://") && !strings.HasPrefix(s, "postgresql://") {
		return errors.New("want a PostgreSQL URL, postgres://USER@HOST[:PORT]/DB")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a valid URL (want postgres://USER@HOST[:PORT]/DB)")
	}
	if _, ok := u.User.Password(); ok || u.Query().Has("password") {
		return errors.New("the URL holds a password: put it in a file (mode 0600) and give --password-file")
	}
	return nil
}

// dbCopy copies the SQLite database at path into tgt and prints what it
// copied.
func dbCopy(ctx context.Context, out io.Writer, log *slog.Logger, path string, tgt postgres.Options, force bool) error {
	// The source: there, and no one else's.
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	switch inUse, err := dbcopy.SQLiteInUse(path); {
	case err != nil:
		return err
	case inUse:
		return fmt.Errorf("%s is open in another process: stop the control plane (tandem server, tandem up) before copying its database", path)
	}
	// Both at the newest schema. The SQLite store stays open until the
	// read-only handle has closed, so that closing last it removes the
	// -wal and -shm files (see dbcopy.OpenSQLite).
	lite, err := sqlite.Open(ctx, path, sqlite.Options{Logger: log})
	if err != nil {
		return err
	}
	defer lite.Close()
	pg, err := postgres.Open(ctx, tgt)
	if err != nil {
		return err
	}
	pg.Close()

	src, err := dbcopy.OpenSQLite(path)
	if err != nil {
		return err
	}
	defer src.Close()
	cc, err := postgres.ConnConfig(tgt)
	if err != nil {
		return err
	}
	dst := stdlib.OpenDB(*cc)
	defer dst.Close()
	rep, err := dbcopy.Copy(ctx, src, dst, dbcopy.Options{Force: force})
	if errors.Is(err, dbcopy.ErrNotEmpty) {
		return fmt.Errorf("%w: --force replaces what it holds", err)
	}
	if err != nil {
		return err
	}
	printCopy(out, rep, sqliteAbs(path), pgWhere(cc))
	return nil
}

// printCopy prints a copy's report.
func printCopy(out io.Writer, rep dbcopy.Report, from, to string) {
	fmt.Fprintf(out, "%-24s %12s\n", "TABLE", "ROWS")
	var rows int64
	for _, t := range rep.Tables {
		fmt.Fprintf(out, "%-24s %12d\n", t.Table, t.Rows)
		rows += t.Rows
	}
	var seqs []string
	for _, s := range rep.Sequences {
		seqs = append(seqs, fmt.Sprintf("%s.%s from %d", s.Table, s.Column, s.Last+1))
	}
	if len(seqs) > 0 {
		fmt.Fprintf(out, "numbering goes on: %s\n", strings.Join(seqs, ", "))
	}
	fmt.Fprintf(out, "%d rows in %d tables copied from %s to %s: verified\n", rows, len(rep.Tables), from, to)
}

func dbMigrateCmd(g *globals) *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "migrate [--config FILE]",
		Short: "Bring the configured database to this binary's schema",
		Long: `Open the configured database (SQLite or PostgreSQL) as the control plane does
at start, applying the migrations it lacks, and print its schema version
before and after. Control planes of an older tandem refuse a database migrated
past what they know: upgrade them all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, dataDir, err := loadConfig(g, cfgPath)
			if err != nil {
				return err
			}
			db := configuredDB(cfg, dataDir)
			before, _, err := db.version(ctx)
			if err != nil {
				return err
			}
			after, err := migrateDB(ctx, cfg, dataDir, g.log)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if after == before {
				fmt.Fprintf(out, "%s: schema version %d, up to date\n", db, after)
			} else {
				fmt.Fprintf(out, "%s: schema version %d → %d\n", db, before, after)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "/etc/tandem/config.yaml", "configuration file")
	return cmd
}

// migrateDB opens the configured store, which migrates it, and returns
// its schema version.
func migrateDB(ctx context.Context, cfg *config.Config, dataDir string, log *slog.Logger) (int, error) {
	st, err := openStore(ctx, cfg, dataDir, log)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if pg, ok := st.(*postgres.Store); ok {
		return pg.SchemaVersion(ctx)
	}
	// Read while the store is open (see dbcopy.OpenSQLite).
	db, err := dbcopy.OpenSQLite(cfg.DatabasePath(dataDir))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	v, _, err := schemaVersion(ctx, db, "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
	return v, err
}

// checkDB is tandem server --check-db: it prints which database the
// config names, its schema version and this binary's, and fails (exit 1)
// unless the server could use it. It migrates nothing: a newer binary's
// check must not move the database past the replicas running.
func checkDB(ctx context.Context, out io.Writer, g *globals, cfgPath string) error {
	cfg, dataDir, err := loadConfig(g, cfgPath)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	db := configuredDB(cfg, dataDir)
	fmt.Fprintf(out, "database: %s\n", db)
	v, exists, err := db.version(ctx)
	if err != nil {
		fmt.Fprintln(out, "usable: no")
		return &exitError{code: 1, err: err}
	}
	known := db.known()
	switch {
	case !exists:
		fmt.Fprintf(out, "schema: none yet, the server makes it at start (this binary's: version %d)\n", known)
	case v > known:
		fmt.Fprintf(out, "schema: version %d, newer than this binary's %d\n", v, known)
		fmt.Fprintln(out, "usable: no")
		return &exitError{code: 1, err: fmt.Errorf("the database's schema (version %d) is newer than this binary knows (%d): upgrade tandem", v, known)}
	case v < known:
		fmt.Fprintf(out, "schema: version %d, this binary's %d: the server applies %d migrations at start\n", v, known, known-v)
	default:
		fmt.Fprintf(out, "schema: version %d, this binary's\n", v)
	}
	if db.pg.URL != "" && exists && v >= 2 {
		l, err := db.leader(ctx)
		switch {
		case err != nil:
			fmt.Fprintf(out, "leader: unknown (%v)\n", err)
		case l.Held:
			fmt.Fprintf(out, "leader: %s, term %d, since %s\n", l.Holder, l.Epoch, l.Since.Format(time.RFC3339))
		case l.Holder != "":
			fmt.Fprintf(out, "leader: none now (the last, %s, term %d, led from %s)\n", l.Holder, l.Epoch, l.Since.Format(time.RFC3339))
		default:
			fmt.Fprintln(out, "leader: none yet (no replica has led)")
		}
	}
	fmt.Fprintln(out, "usable: yes")
	return nil
}

// dbTarget is the database a config names: a SQLite file or a PostgreSQL
// database (pg.URL set).
type dbTarget struct {
	sqlitePath string
	pg         postgres.Options
}

func configuredDB(cfg *config.Config, dataDir string) dbTarget {
	if cfg.IsPostgres() {
		return dbTarget{pg: postgresOptions(cfg, nil)}
	}
	return dbTarget{sqlitePath: cfg.DatabasePath(dataDir)}
}

// String names the database, without a secret: a SQLite file's path, a
// PostgreSQL database's name, host and user.
func (d dbTarget) String() string {
	if d.pg.URL == "" {
		return "sqlite " + d.sqlitePath
	}
	cc, err := postgres.ConnConfig(d.pg)
	if err != nil {
		return "postgres (the URL does not parse)"
	}
	return pgWhere(cc)
}

// known is the schema version this binary brings the database to.
func (d dbTarget) known() int {
	if d.pg.URL != "" {
		return postgres.KnownVersion()
	}
	return sqlite.KnownVersion()
}

// version reads the database's schema version without migrating it;
// exists is false for a database without a schema yet (v is then 0).
func (d dbTarget) version(ctx context.Context) (v int, exists bool, err error) {
	if d.pg.URL != "" {
		cc, err := postgres.ConnConfig(d.pg)
		if err != nil {
			return 0, false, err
		}
		db := stdlib.OpenDB(*cc)
		defer db.Close()
		v, exists, err = schemaVersion(ctx, db, "SELECT to_regclass('schema_migrations') IS NOT NULL")
		if err != nil {
			return 0, false, fmt.Errorf("%s: %w", pgWhere(cc), err)
		}
		return v, exists, nil
	}
	if _, err := os.Stat(d.sqlitePath); errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	// Read-write but querying only: closing last, it leaves no -wal and
	// -shm files behind, which a read-only connection would.
	u := url.URL{Path: d.sqlitePath}
	q := url.Values{"mode": {"rw"}, "_pragma": {"busy_timeout(5000)", "query_only(1)"}}
	db, err := sql.Open("sqlite", "file:"+u.EscapedPath()+"?"+q.Encode())
	if err != nil {
		return 0, false, err
	}
	defer db.Close()
	v, exists, err = schemaVersion(ctx, db, "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", d.sqlitePath, err)
	}
	return v, exists, nil
}

// leader reads who leads a PostgreSQL database, without migrating it.
func (d dbTarget) leader(ctx context.Context) (store.Leadership, error) {
	cc, err := postgres.ConnConfig(d.pg)
	if err != nil {
		return store.Leadership{}, err
	}
	db := stdlib.OpenDB(*cc)
	defer db.Close()
	return postgres.ReadLeader(ctx, db)
}

// schemaVersion reads the newest migration of schema_migrations, if
// hasTable (a query) says there is one.
func schemaVersion(ctx context.Context, db *sql.DB, hasTable string) (v int, exists bool, err error) {
	if err := db.QueryRowContext(ctx, hasTable).Scan(&exists); err != nil || !exists {
		return 0, false, err
	}
	err = db.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v)
	return v, true, err
}

// pgWhere names a PostgreSQL database for messages: no password.
func pgWhere(cc *pgx.ConnConfig) string {
	return fmt.Sprintf("postgres database %q on %s:%d as %s", cc.Database, cc.Host, cc.Port, cc.User)
}

// sqliteAbs makes a SQLite path absolute for messages.
func sqliteAbs(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}
