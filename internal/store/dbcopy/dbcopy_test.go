package dbcopy

import (
	"crypto/sha256"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// source opens the SQLite database at path as `tandem db copy` does: the
// store open (it migrates) around the read-only handle, which is closed
// first, so that the store, closing last, removes the -wal and -shm files.
// close closes both; the test's end does too.
func source(t *testing.T, path string) (db *sql.DB, close func()) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db, err = OpenSQLite(path)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	close = func() {
		db.Close()
		st.Close()
	}
	t.Cleanup(close)
	return db, close
}

// target returns a new PostgreSQL database at the newest schema (as
// postgres.Open leaves it) and a handle on it.
func target(t *testing.T) (string, *sql.DB) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	st, err := postgres.Open(t.Context(), postgres.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return url, db
}

func openPostgres(t *testing.T, url string) *postgres.Store {
	t.Helper()
	st, err := postgres.Open(t.Context(), postgres.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// counts returns every table's row count in db (PostgreSQL).
func counts(t *testing.T, db *sql.DB) map[string]int64 {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT table_name FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations'`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	rows.Close()
	out := map[string]int64{}
	for _, n := range names {
		var c int64
		if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM "+quote(n)).Scan(&c); err != nil {
			t.Fatal(err)
		}
		out[n] = c
	}
	return out
}

// The copy holds every row: the PostgreSQL store reads back what the
// SQLite store does, every table has rows (else the fixture misses one),
// the source is unchanged, and new rows get numbers past the copied ones.
func TestCopy(t *testing.T) {
	path := fixtureDB(t)
	before := fileSum(t, path)
	url, dst := target(t)
	src, closeSrc := source(t, path)
	rep, err := Copy(t.Context(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tables := sqliteTables(t, src)
	closeSrc()

	var copied []string
	for _, tr := range rep.Tables {
		copied = append(copied, tr.Table)
	}
	if !reflect.DeepEqual(copied, tables) {
		t.Errorf("tables copied: %v, want SQLite's %v", copied, tables)
	}
	for _, tr := range rep.Tables {
		if tr.Rows == 0 {
			t.Errorf("table %s: no rows: give the fixture (fill) some", tr.Table)
		}
	}
	if rep.Rows("schema_migrations") != 0 || rep.Rows("deliveries") != 6 || rep.Rows("audit_log") != 3 {
		t.Errorf("report: %+v", rep.Tables)
	}
	wantSeqs := map[string]bool{"deliveries.seq": true, "job_events.seq": true, "profile_samples.seq": true,
		"audit_log.seq": true, "parity_tier_changes.seq": true, "runner_commands.seq": true}
	var delivMark int64
	for _, s := range rep.Sequences {
		if !wantSeqs[s.Table+"."+s.Column] {
			t.Errorf("sequence %s.%s set, unexpected", s.Table, s.Column)
		}
		delete(wantSeqs, s.Table+"."+s.Column)
		if s.Table == "deliveries" {
			delivMark = s.Last
		}
	}
	if len(wantSeqs) > 0 {
		t.Errorf("sequences not set: %v", wantSeqs)
	}
	// d-0…d-5, then d-old (7: its batch's first try may take 7 or more)
	// pruned: the mark passes the highest kept.
	if delivMark < 7 {
		t.Errorf("deliveries' sequence at %d, want past the pruned d-old", delivMark)
	}

	if after := fileSum(t, path); after != before {
		t.Error("the SQLite database changed")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files left beside the database: %v", names)
	}

	lite, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	pg := openPostgres(t, url)
	want, err := read(t.Context(), lite)
	if err != nil {
		t.Fatal(err)
	}
	got, err := read(t.Context(), pg)
	if err != nil {
		t.Fatal(err)
	}
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	for i := range wv.NumField() {
		name := wv.Type().Field(i).Name
		w, g := wv.Field(i).Interface(), gv.Field(i).Interface()
		if k := wv.Field(i).Kind(); (k == reflect.Slice || k == reflect.Map) && wv.Field(i).Len() == 0 {
			t.Errorf("%s: the fixture has none", name)
		}
		if !reflect.DeepEqual(w, g) {
			t.Errorf("%s differ:\nsqlite   %+v\npostgres %+v", name, w, g)
		}
	}

	checkNewNumbers(t, pg, want, delivMark)
}

// checkNewNumbers adds rows with sequence numbers to pg and checks that
// they come after every copied one (and after mark, the deliveries').
func checkNewNumbers(t *testing.T, pg store.Store, copied contents, mark int64) {
	t.Helper()
	ctx := t.Context()
	if _, err := pg.InsertDelivery(ctx, store.Delivery{GUID: "d-new", Event: "ping", Payload: []byte("{}"), ReceivedAt: at(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var maxEvent int64
	for _, evs := range copied.Events {
		for _, ev := range evs {
			maxEvent = max(maxEvent, ev.Seq)
		}
	}
	var auditSeq int64
	var changed bool
	var newEvents []store.JobEvent
	var changes []store.TierChange
	var d store.Delivery
	j := copied.Jobs[len(copied.Jobs)-1] // queued
	update(t, pg, func(tx store.Tx) error {
		var err error
		if auditSeq, err = tx.AppendAudit(store.AuditEntry{At: at(time.Hour), Actor: "token:x", Action: "host.drain"}); err != nil {
			return err
		}
		if changed, err = tx.SetRepoTier(store.RepoTier{Org: "acme", Repo: "acme/widgets", Tier: "tier-3", CheckedAt: at(5 * time.Hour)}); err != nil {
			return err
		}
		if err := step(tx, &j, store.JobScheduled, 60, "test"); err != nil {
			return err
		}
		if newEvents, err = tx.JobEvents(j.ID); err != nil {
			return err
		}
		if changes, err = tx.TierChanges(store.TierFilter{}); err != nil {
			return err
		}
		d, err = tx.Delivery("d-new")
		return err
	})
	if d.Seq <= mark {
		t.Errorf("new delivery: seq %d, want past %d", d.Seq, mark)
	}
	if last := copied.Audit[0].Seq; auditSeq <= last {
		t.Errorf("new audit entry: seq %d, want past %d", auditSeq, last)
	}
	if ev := newEvents[len(newEvents)-1]; ev.Seq <= maxEvent {
		t.Errorf("new job event: seq %d, want past %d", ev.Seq, maxEvent)
	}
	if last := copied.TierChanges[len(copied.TierChanges)-1].Seq; !changed || changes[len(changes)-1].Seq <= last {
		t.Errorf("new tier change: %v, %+v; want one past %d", changed, changes[len(changes)-1], last)
	}
}

// A target that holds rows is refused without Force, and left as it was;
// Force replaces what it holds, rows only it had included.
func TestCopyNotEmpty(t *testing.T) {
	path := fixtureDB(t)
	url, dst := target(t)
	src, _ := source(t, path)
	first, err := Copy(t.Context(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	pg := openPostgres(t, url)
	update(t, pg, func(tx store.Tx) error { return tx.AddCounter("only-in-postgres", 1) })
	if _, err := dst.ExecContext(t.Context(), "UPDATE leader SET epoch = 5, holder = 'replica-a'"); err != nil {
		t.Fatal(err)
	}
	held := counts(t, dst)

	_, err = Copy(t.Context(), src, dst, Options{})
	if !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "jobs") || !strings.Contains(err.Error(), "deliveries") {
		t.Errorf("copy into a full database: %v, want ErrNotEmpty naming jobs and deliveries", err)
	}
	if got := counts(t, dst); !reflect.DeepEqual(got, held) {
		t.Errorf("a refused copy changed the target:\n got %v\nwant %v", got, held)
	}

	again, err := Copy(t.Context(), src, dst, Options{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, first) {
		t.Errorf("forced copy:\n got %+v\nwant %+v", again, first)
	}
	if l, err := pg.Leader(t.Context()); err != nil || l.Epoch != 5 || l.Holder != "replica-a" {
		t.Errorf("the leader row after a forced copy: %+v, %v; want it untouched", l, err)
	}
	pg.View(t.Context(), func(tx store.ReadTx) error {
		c, err := tx.Counters()
		if _, ok := c["only-in-postgres"]; ok || err != nil || c["webhooks"] != 42 {
			t.Errorf("counters after a forced copy: %v, %v", c, err)
		}
		return nil
	})
}

// A table or a column on one side only stops the copy before anything
// is written.
func TestCopySchemaDiffers(t *testing.T) {
	for name, tc := range map[string]struct {
		sqlite, postgres, want string
	}{
		"table only in sqlite":   {sqlite: "CREATE TABLE shiny (x INTEGER)", want: "table shiny is in SQLite but not in PostgreSQL"},
		"table only in postgres": {postgres: "CREATE TABLE shiny (x BIGINT)", want: "table shiny is in PostgreSQL but not in SQLite"},
		"column only in postgres": {postgres: "ALTER TABLE jobs ADD COLUMN shiny TEXT NOT NULL DEFAULT ''",
			want: "column jobs.shiny is in PostgreSQL but not in SQLite"},
		"column only in sqlite": {sqlite: "ALTER TABLE hosts ADD COLUMN shiny TEXT NOT NULL DEFAULT ''",
			want: "column hosts.shiny is in SQLite but not in PostgreSQL"},
	} {
		t.Run(name, func(t *testing.T) {
			path := fixtureDB(t)
			if tc.sqlite != "" {
				execSQLite(t, path, tc.sqlite)
			}
			_, dst := target(t)
			if tc.postgres != "" {
				if _, err := dst.ExecContext(t.Context(), tc.postgres); err != nil {
					t.Fatal(err)
				}
			}
			held := counts(t, dst)
			src, _ := source(t, path)
			_, err := Copy(t.Context(), src, dst, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if got := counts(t, dst); !reflect.DeepEqual(got, held) {
				t.Errorf("the target changed: %v, was %v", got, held)
			}
		})
	}
}

// sqliteTables lists the tables of a SQLite database, but SQLite's own
// and schema_migrations, by name.
func sqliteTables(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT name FROM sqlite_master
		WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name <> 'schema_migrations' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	return names
}

// execSQLite runs a statement on the SQLite database at path.
func execSQLite(t *testing.T, path, stmt string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), stmt); err != nil {
		t.Fatal(err)
	}
}

// A value that does not convert, in a table copied after others, rolls
// the whole copy back.
func TestCopyAllOrNothing(t *testing.T) {
	path := fixtureDB(t)
	execSQLite(t, path, "UPDATE runners SET emulated = 2 WHERE name = 'tandem-106'")
	_, dst := target(t)
	held := counts(t, dst)
	src, _ := source(t, path)
	_, err := Copy(t.Context(), src, dst, Options{})
	if err == nil || !strings.Contains(err.Error(), "runners.emulated: int64 2 is not a flag") {
		t.Errorf("error %v, want one about runners.emulated", err)
	}
	if got := counts(t, dst); !reflect.DeepEqual(got, held) || got["jobs"] != 0 {
		t.Errorf("the target changed: %v, was %v", got, held)
	}
}

// A control plane holding the target's tables makes the copy fail, after
// the lock timeout, rather than wait.
func TestCopyTargetInUse(t *testing.T) {
	path := fixtureDB(t)
	_, dst := target(t)
	tx, err := dst.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(t.Context(), "SELECT count(*) FROM jobs"); err != nil {
		t.Fatal(err)
	}
	src, _ := source(t, path)
	start := time.Now()
	_, err = Copy(t.Context(), src, dst, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "is a control plane running on this database?") {
		t.Errorf("error %v, want the tables in use", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

// SQLiteInUse sees a connection open on the database, this process's too.
func TestSQLiteInUse(t *testing.T) {
	path := fixtureDB(t)
	inUse := func() bool {
		t.Helper()
		b, err := SQLiteInUse(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if inUse() {
		t.Error("closed database: in use")
	}
	st, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !inUse() {
		t.Error("open store: not in use")
	}
	st.Close()
	if inUse() {
		t.Error("closed store: in use")
	}
}
