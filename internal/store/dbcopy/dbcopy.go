// Package dbcopy copies a control plane's SQLite database into a
// PostgreSQL one, for a single-node install moving to PostgreSQL (`tandem
// db copy`). Both databases must be at their newest schema already:
// sqlite.Open and postgres.Open migrate them.
//
// Copy holds these invariants:
//
//   - All or nothing. Everything happens in one PostgreSQL transaction; any
//     error, a count that does not match included, rolls it back and leaves
//     the target as it was.
//   - The source does not change. It is read through a read-only handle
//     (OpenSQLite), in one read transaction: one snapshot of every table.
//   - Same schema, or no copy. Every table must exist on both sides with
//     the same columns, so that a migration written for one store and not
//     the other stops the copy rather than drop data. The exceptions are
//     named, with the reason: schema_migrations (each database numbers its
//     own migrations) and PostgreSQL's own tables (postgresOnly), which
//     Copy leaves as they are.
//   - Values keep their meaning. Each value converts by the type of its
//     target column, looked up in information_schema: SQLite's 0/1 to
//     BOOLEAN, BLOB to BYTEA, an integer to DOUBLE PRECISION; text and
//     integers as they are. Anything else is an error, not a guess.
//   - Sequence numbers are never reused. Every identity (or serial) column's
//     sequence is set past the highest value copied and past SQLite's
//     AUTOINCREMENT mark (sqlite_sequence), which remembers rows since
//     pruned, so that consumers holding an old sequence number stay right.
//   - The target starts empty. Copy refuses one holding rows (store_tasks
//     excepted: postgres.Open fills it) with ErrNotEmpty, unless
//     Options.Force, which empties every table first, in the same
//     transaction. The tables are locked (ACCESS EXCLUSIVE) from the check
//     to the commit, so nothing writes in between; a control plane using
//     the target makes the copy fail after Options.LockTimeout.
//   - Verified. After copying, every table's rows are counted on both sides
//     (and against the rows sent); any difference fails the copy.
//
// The rows travel by PostgreSQL's COPY protocol (pgx's CopyFrom), table by
// table in the order foreign keys ask for.
package dbcopy

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite" // the "sqlite" driver
)

// ErrNotEmpty is returned by Copy for a target that holds rows, without
// Options.Force.
var ErrNotEmpty = errors.New("the target database is not empty")

const (
	// migrationsTable is each database's own record of its migrations.
	migrationsTable = "schema_migrations"
	// tasksTable is filled by postgres.Open; it does not make a target
	// "not empty".
	tasksTable = "store_tasks"

	defaultLockTimeout = 10 * time.Second
)

// postgresOnly lists the tables a PostgreSQL database has and a SQLite one
// never will, with the reason; Copy neither requires nor touches them.
var postgresOnly = map[string]string{
	"leader": "the replicas' leader election (store/postgres): its epoch must only grow, or a deposed leader's writes would pass the fence",
}

// Options tune Copy.
type Options struct {
	// Force empties every table of the target (TRUNCATE, in the copy's
	// transaction) instead of refusing a target that holds rows.
	Force bool
	// LockTimeout bounds the wait for the target's tables, which a control
	// plane using them holds; default 10s.
	LockTimeout time.Duration
}

// Report says what Copy copied.
type Report struct {
	Tables    []TableRows // every table copied, by name
	Sequences []Sequence  // every sequence set, by table
}

// TableRows is a table and its rows, counted on both sides after the copy.
type TableRows struct {
	Table string
	Rows  int64
}

// Sequence is an identity column's sequence as Copy set it: the next row
// gets Last+1.
type Sequence struct {
	Table, Column string
	Last          int64
}

// Rows returns the row count of a table, 0 for a table not copied.
func (r Report) Rows(table string) int64 {
	for _, t := range r.Tables {
		if t.Table == table {
			return t.Rows
		}
	}
	return 0
}

// OpenSQLite opens the SQLite database at path read-only, as Copy's
// source. Closing it leaves the database's -wal and -shm files behind
// unless another connection to the database is still open (a read-only
// connection cannot remove them): `tandem db copy` keeps the SQLite store
// open around it.
func OpenSQLite(path string) (*sql.DB, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("sqlite database: %w", err)
	}
	u := url.URL{Path: abs}
	q := url.Values{"mode": {"ro"}, "_pragma": {"busy_timeout(5000)", "query_only(1)"}}
	return sql.Open("sqlite", "file:"+u.EscapedPath()+"?"+q.Encode())
}

// Copy copies every table of src (SQLite) into dst (PostgreSQL, through
// pgx's database/sql driver), as the package documentation says.
func Copy(ctx context.Context, src, dst *sql.DB, opts Options) (Report, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	stx, err := src.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Report{}, fmt.Errorf("sqlite: begin: %w", err)
	}
	defer stx.Rollback() //nolint:errcheck // read-only
	conn, err := dst.Conn(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close()
	var rep Report
	err = conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("postgres: the target is not a pgx connection (%T)", dc)
		}
		rep, err = copyTx(ctx, stx, sc.Conn(), opts)
		return err
	})
	return rep, err
}

// copyTx runs the copy's steps in one transaction on dst.
func copyTx(ctx context.Context, src *sql.Tx, dst *pgx.Conn, opts Options) (Report, error) {
	tx, err := dst.Begin(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("postgres: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	tables, err := plan(ctx, src, tx)
	if err != nil {
		return Report{}, err
	}
	if err := claim(ctx, tx, tables, opts); err != nil {
		return Report{}, err
	}
	var rep Report
	sent := map[string]int64{}
	for _, t := range tables {
		n, err := copyTable(ctx, src, tx, t)
		if err != nil {
			return Report{}, err
		}
		sent[t.name] = n
	}
	if rep.Sequences, err = setSequences(ctx, src, tx, tables); err != nil {
		return Report{}, err
	}
	if rep.Tables, err = verify(ctx, src, tx, tables, sent); err != nil {
		return Report{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Report{}, fmt.Errorf("postgres: commit: %w", err)
	}
	return rep, nil
}

// table is one table to copy, with the target's columns.
type table struct {
	name string
	cols []column
}

// column is a target column: its name, PostgreSQL type (information_schema's
// data_type) and whether a sequence numbers it.
type column struct {
	name, pgType string
	sequence     bool
}

// plan compares the two schemas and returns the tables to copy, each
// after the tables its foreign keys reference.
func plan(ctx context.Context, src *sql.Tx, dst pgx.Tx) ([]table, error) {
	have, err := sqliteColumns(ctx, src)
	if err != nil {
		return nil, err
	}
	want, err := pgColumns(ctx, dst)
	if err != nil {
		return nil, err
	}
	for name := range postgresOnly {
		delete(want, name)
	}
	var diffs []string
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if _, ok := want[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("table %s is in SQLite but not in PostgreSQL", name))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		cols, ok := have[name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("table %s is in PostgreSQL but not in SQLite", name))
			continue
		}
		for _, c := range want[name] {
			if !slices.Contains(cols, c.name) {
				diffs = append(diffs, fmt.Sprintf("column %s.%s is in PostgreSQL but not in SQLite", name, c.name))
			}
		}
		for _, c := range cols {
			if !slices.ContainsFunc(want[name], func(pc column) bool { return pc.name == c }) {
				diffs = append(diffs, fmt.Sprintf("column %s.%s is in SQLite but not in PostgreSQL", name, c))
			}
		}
	}
	if len(diffs) > 0 {
		return nil, fmt.Errorf("the schemas differ (is a migration missing on one side?): %s", strings.Join(diffs, "; "))
	}
	deps, err := foreignKeys(ctx, dst)
	if err != nil {
		return nil, err
	}
	order, err := dependencyOrder(slices.Sorted(maps.Keys(want)), deps)
	if err != nil {
		return nil, err
	}
	tables := make([]table, len(order))
	for i, name := range order {
		tables[i] = table{name: name, cols: want[name]}
	}
	return tables, nil
}

// sqliteColumns returns every table of the source (but SQLite's own and
// schema_migrations) and its columns.
func sqliteColumns(ctx context.Context, src *sql.Tx) (map[string][]string, error) {
	rows, err := src.QueryContext(ctx, `SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
		WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\_%' ESCAPE '\' AND m.name <> ?
		ORDER BY m.name, p.cid`, migrationsTable)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list tables: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var t, c string
		if err := rows.Scan(&t, &c); err != nil {
			return nil, fmt.Errorf("sqlite: list tables: %w", err)
		}
		out[t] = append(out[t], c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list tables: %w", err)
	}
	return out, nil
}

// pgColumns returns every table of the target's schema (but
// schema_migrations) and its columns, in their order.
func pgColumns(ctx context.Context, dst pgx.Tx) (map[string][]column, error) {
	rows, err := dst.Query(ctx, `SELECT c.table_name, c.column_name, c.data_type,
			c.is_identity = 'YES' OR coalesce(c.column_default, '') LIKE 'nextval(%'
		FROM information_schema.columns c
		JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND c.table_name <> $1
		ORDER BY c.table_name, c.ordinal_position`, migrationsTable)
	if err != nil {
		return nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	out := map[string][]column{}
	var t string
	var c column
	_, err = pgx.ForEachRow(rows, []any{&t, &c.name, &c.pgType, &c.sequence}, func() error {
		out[t] = append(out[t], c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list tables: %w", err)
	}
	return out, nil
}

// foreignKeys returns, for each table of the target's schema with foreign
// keys, the tables they reference.
func foreignKeys(ctx context.Context, dst pgx.Tx) (map[string][]string, error) {
	rows, err := dst.Query(ctx, `SELECT a.relname::text, b.relname::text FROM pg_constraint c
		JOIN pg_class a ON a.oid = c.conrelid
		JOIN pg_class b ON b.oid = c.confrelid
		WHERE c.contype = 'f' AND a.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())`)
	if err != nil {
		return nil, fmt.Errorf("postgres: foreign keys: %w", err)
	}
	deps := map[string][]string{}
	var from, to string
	_, err = pgx.ForEachRow(rows, []any{&from, &to}, func() error {
		deps[from] = append(deps[from], to)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: foreign keys: %w", err)
	}
	return deps, nil
}

// dependencyOrder orders names (sorted) so that each comes after the
// tables it references, otherwise keeping their order.
func dependencyOrder(names []string, deps map[string][]string) ([]string, error) {
	placed := map[string]bool{}
	var order []string
	for len(order) < len(names) {
		progress := false
		for _, n := range names {
			if placed[n] {
				continue
			}
			ready := true
			for _, d := range deps[n] {
				if d != n && !placed[d] && slices.Contains(names, d) {
					ready = false
				}
			}
			if ready {
				placed[n] = true
				order = append(order, n)
				progress = true
			}
		}
		if !progress {
			return nil, errors.New("postgres: the foreign keys between tables form a cycle")
		}
	}
	return order, nil
}

// claim locks every table of the target, refuses a target that holds rows
// unless opts.Force, and empties every table (store_tasks and, with Force,
// all the rest), so that the target ends up holding exactly the source's
// rows.
func claim(ctx context.Context, tx pgx.Tx, tables []table, opts Options) error {
	if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", fmt.Sprint(opts.LockTimeout.Milliseconds())); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = quote(t.name)
	}
	list := strings.Join(names, ", ")
	if _, err := tx.Exec(ctx, "LOCK TABLE "+list+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
			return fmt.Errorf("postgres: the tables are in use (is a control plane running on this database? stop it first): %w", err)
		}
		return fmt.Errorf("postgres: lock tables: %w", err)
	}
	if !opts.Force {
		var full []string
		for _, t := range tables {
			if t.name == tasksTable {
				continue
			}
			var held bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+quote(t.name)+")").Scan(&held); err != nil {
				return fmt.Errorf("postgres: %s: %w", t.name, err)
			}
			if held {
				full = append(full, t.name)
			}
		}
		if len(full) > 0 {
			slices.Sort(full)
			return fmt.Errorf("%w: %s hold rows", ErrNotEmpty, strings.Join(full, ", "))
		}
	}
	if _, err := tx.Exec(ctx, "TRUNCATE "+list+" RESTART IDENTITY"); err != nil {
		return fmt.Errorf("postgres: empty the tables: %w", err)
	}
	return nil
}

// copyTable streams one table's rows from src into dst and returns how
// many went.
func copyTable(ctx context.Context, src *sql.Tx, dst pgx.Tx, t table) (int64, error) {
	names := make([]string, len(t.cols))
	quoted := make([]string, len(t.cols))
	conv := make([]converter, len(t.cols))
	for i, c := range t.cols {
		names[i], quoted[i] = c.name, quote(c.name)
		var err error
		if conv[i], err = converterFor(c.pgType); err != nil {
			return 0, fmt.Errorf("%s.%s: %w", t.name, c.name, err)
		}
	}
	rows, err := src.QueryContext(ctx, "SELECT "+strings.Join(quoted, ", ")+" FROM "+quote(t.name))
	if err != nil {
		return 0, fmt.Errorf("sqlite: %s: %w", t.name, err)
	}
	defer rows.Close()
	rs := newRowSource(rows, t, conv)
	n, err := dst.CopyFrom(ctx, pgx.Identifier{t.name}, names, rs)
	if err != nil {
		return 0, fmt.Errorf("copy %s: %w", t.name, err)
	}
	return n, nil
}

// setSequences sets every sequence-numbered column's sequence past the
// highest value copied and past SQLite's AUTOINCREMENT mark for its table.
func setSequences(ctx context.Context, src *sql.Tx, dst pgx.Tx, tables []table) ([]Sequence, error) {
	marks, err := autoincrementMarks(ctx, src)
	if err != nil {
		return nil, err
	}
	var seqs []Sequence
	for _, t := range tables {
		for _, c := range t.cols {
			if !c.sequence {
				continue
			}
			var last int64
			if err := dst.QueryRow(ctx, "SELECT coalesce(max("+quote(c.name)+"), 0)::bigint FROM "+quote(t.name)).Scan(&last); err != nil {
				return nil, fmt.Errorf("postgres: %s.%s: %w", t.name, c.name, err)
			}
			last = max(last, marks[t.name])
			// setval(s, 1, false): the next value is 1.
			if _, err := dst.Exec(ctx, "SELECT setval(pg_get_serial_sequence($1, $2), $3, $4)",
				quote(t.name), c.name, max(last, 1), last > 0); err != nil {
				return nil, fmt.Errorf("postgres: sequence of %s.%s: %w", t.name, c.name, err)
			}
			seqs = append(seqs, Sequence{Table: t.name, Column: c.name, Last: last})
		}
	}
	slices.SortFunc(seqs, func(a, b Sequence) int { return cmp.Or(cmp.Compare(a.Table, b.Table), cmp.Compare(a.Column, b.Column)) })
	return seqs, nil
}

// autoincrementMarks reads sqlite_sequence: the highest number each
// AUTOINCREMENT table has handed out (none when no table is AUTOINCREMENT).
func autoincrementMarks(ctx context.Context, src *sql.Tx) (map[string]int64, error) {
	marks := map[string]int64{}
	var n int
	if err := src.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'").Scan(&n); err != nil || n == 0 {
		return marks, err
	}
	rows, err := src.QueryContext(ctx, "SELECT name, seq FROM sqlite_sequence")
	if err != nil {
		return nil, fmt.Errorf("sqlite: sqlite_sequence: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var seq int64
		if err := rows.Scan(&name, &seq); err != nil {
			return nil, fmt.Errorf("sqlite: sqlite_sequence: %w", err)
		}
		marks[name] = seq
	}
	return marks, rows.Err()
}

// verify counts every table's rows on both sides and fails on any
// difference, from each other or from the rows sent.
func verify(ctx context.Context, src *sql.Tx, dst pgx.Tx, tables []table, sent map[string]int64) ([]TableRows, error) {
	var counts []TableRows
	var diffs []string
	for _, t := range tables {
		var s, d int64
		if err := src.QueryRowContext(ctx, "SELECT count(*) FROM "+quote(t.name)).Scan(&s); err != nil {
			return nil, fmt.Errorf("sqlite: count %s: %w", t.name, err)
		}
		if err := dst.QueryRow(ctx, "SELECT count(*) FROM "+quote(t.name)).Scan(&d); err != nil {
			return nil, fmt.Errorf("postgres: count %s: %w", t.name, err)
		}
		if s != d || d != sent[t.name] {
			diffs = append(diffs, fmt.Sprintf("%s: %d rows in SQLite, %d copied, %d in PostgreSQL", t.name, s, sent[t.name], d))
		}
		counts = append(counts, TableRows{Table: t.name, Rows: d})
	}
	if len(diffs) > 0 {
		return nil, fmt.Errorf("verify: the counts differ, nothing copied: %s", strings.Join(diffs, "; "))
	}
	slices.SortFunc(counts, func(a, b TableRows) int { return cmp.Compare(a.Table, b.Table) })
	return counts, nil
}

// quote quotes an identifier, as both databases read it.
func quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }
