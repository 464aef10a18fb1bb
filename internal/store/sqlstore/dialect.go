// Package sqlstore is the SQL behind store.Tx, shared by the SQLite store
// (store/sqlite) and the PostgreSQL one (store/postgres): one set of
// queries, written in the SQL both databases speak, with the few places
// where they differ behind a Dialect. The packages that use it own their
// connections, transactions, migrations and delivery ingest; sqlstore
// runs inside the transaction they begin.
//
// Both schemas encode alike: times are BIGINT unix milliseconds UTC (0 for
// the zero time), slices and objects are JSON in TEXT columns, so that a
// row copies from one database to the other unchanged.
package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tandem-ci/tandem/internal/store"
)

// Dialect names the database the queries run on.
type Dialect int

const (
	SQLite Dialect = iota
	Postgres
)

// Querier runs statements: a *sql.Tx, or a *sql.DB outside a transaction.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// NewReadTx reads through q, a transaction of the caller's, in dialect d.
func NewReadTx(ctx context.Context, q Querier, d Dialect) store.ReadTx {
	return &readTx{ctx: ctx, q: q, d: d}
}

// NewTx reads and writes through q, a read-write transaction of the
// caller's, in dialect d.
func NewTx(ctx context.Context, q Querier, d Dialect) store.Tx {
	return &writeTx{readTx{ctx: ctx, q: q, d: d}}
}

// rebound caches queries' PostgreSQL forms, up to maxRebound of them (a
// query names its LIMIT inline in places, so their number is bounded but
// not small).
var (
	rebound      sync.Map // query → PostgreSQL form
	reboundCount atomic.Int64
)

const maxRebound = 4096

// Rebind turns the ? placeholders of query into PostgreSQL's $1, $2, …
// (queries hold no ? of their own: no string literal here contains one).
// SQLite takes the query as it is.
func (d Dialect) Rebind(query string) string {
	if d != Postgres || !strings.Contains(query, "?") {
		return query
	}
	if q, ok := rebound.Load(query); ok {
		return q.(string)
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	q := b.String()
	if reboundCount.Load() < maxRebound {
		if _, had := rebound.LoadOrStore(query, q); !had {
			reboundCount.Add(1)
		}
	}
	return q
}

// nocase is the condition "col equals a parameter, without case": SQLite's
// NOCASE collation (ASCII), PostgreSQL's lower() on both sides (the schema
// indexes lower(col) where it matters).
func (d Dialect) nocase(col string) string {
	if d == Postgres {
		return "lower(" + col + ") = lower(?)"
	}
	return col + " = ? COLLATE NOCASE"
}

// indexedBy is SQLite's index hint, where the planner needs it; PostgreSQL
// chooses for itself.
func (d Dialect) indexedBy(index string) string {
	if d == Postgres {
		return ""
	}
	return " INDEXED BY " + index
}

// noLimit is the LIMIT that does not limit, for a query with an OFFSET.
func (d Dialect) noLimit() string {
	if d == Postgres {
		return "ALL"
	}
	return "-1"
}

// latest is, in a GROUP BY that takes MAX(by), col of the row with the
// greatest by: SQLite's bare column does that; PostgreSQL orders an array.
func (d Dialect) latest(col, by string) string {
	if d == Postgres {
		return "(array_agg(" + col + " ORDER BY " + by + " DESC))[1]"
	}
	return col
}

// in adds "col IN (values)"; there is no limit on how many values: SQLite
// takes them as one JSON array, PostgreSQL as one array parameter.
func in[T any](w *where, col string, values []T) error {
	if len(values) == 0 {
		return nil
	}
	if w.d == Postgres {
		arr, err := pgArray(values)
		if err != nil {
			return err
		}
		w.add(col+" = ANY(?)", arr)
		return nil
	}
	arr, err := jsonOf(values)
	if err != nil {
		return err
	}
	w.add(col+" IN (SELECT value FROM json_each(?))", arr)
	return nil
}

// pgArray converts values (integers or strings, named types included) to
// a []int64 or []string, which the PostgreSQL driver sends as an array.
func pgArray[T any](values []T) (any, error) {
	switch v := any(values).(type) {
	case []int64:
		return v, nil
	case []string:
		return v, nil
	}
	rv := reflect.ValueOf(values)
	switch reflect.TypeFor[T]().Kind() {
	case reflect.String:
		out := make([]string, len(values))
		for i := range out {
			out[i] = rv.Index(i).String()
		}
		return out, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		out := make([]int64, len(values))
		for i := range out {
			out[i] = rv.Index(i).Int()
		}
		return out, nil
	}
	return nil, fmt.Errorf("no array parameter for %T", values)
}

// upsert is an INSERT of cols (a comma-separated list) into table that,
// when a row with the same key columns is there, replaces its other
// columns: SQLite's INSERT OR REPLACE, in the form both databases know.
func upsert(table, cols, key string) string {
	var set []string
	keys := strings.Split(key, ",")
	for c := range strings.SplitSeq(cols, ",") {
		c = strings.TrimSpace(c)
		isKey := false
		for _, k := range keys {
			if strings.TrimSpace(k) == c {
				isKey = true
			}
		}
		if !isKey {
			set = append(set, c+" = excluded."+c)
		}
	}
	n := strings.Count(cols, ",") + 1
	return "INSERT INTO " + table + " (" + cols + ") VALUES (" + placeholders(n) + ") ON CONFLICT (" + key +
		") DO UPDATE SET " + strings.Join(set, ", ")
}

func (t *readTx) exec(query string, args ...any) (sql.Result, error) {
	return t.q.ExecContext(t.ctx, t.d.Rebind(query), args...)
}

func (t *readTx) query(query string, args ...any) (*sql.Rows, error) {
	return t.q.QueryContext(t.ctx, t.d.Rebind(query), args...)
}

func (t *readTx) queryRow(query string, args ...any) *sql.Row {
	return t.q.QueryRowContext(t.ctx, t.d.Rebind(query), args...)
}
