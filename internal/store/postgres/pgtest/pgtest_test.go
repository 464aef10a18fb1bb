package pgtest_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// connect opens a connection that is closed when t ends.
func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connecting to %s: %v", dbURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryRow(t *testing.T, conn *pgx.Conn, sql string, dest ...any) {
	t.Helper()
	queryRowArgs(t, conn, sql, nil, dest...)
}

func queryRowArgs(t *testing.T, conn *pgx.Conn, sql string, args []any, dest ...any) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// A table made in one database is absent from another.
func TestDatabasesAreSeparate(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases, one URL: %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	exec(t, ca, "CREATE TABLE jobs (id int PRIMARY KEY)")
	exec(t, ca, "INSERT INTO jobs VALUES (1)")
	var inB bool
	queryRow(t, cb, "SELECT to_regclass('jobs') IS NOT NULL", &inB)
	if inB {
		t.Error("the table made in one database is in the other")
	}
	var n int
	queryRow(t, ca, "SELECT count(*) FROM jobs", &n)
	if n != 1 {
		t.Errorf("jobs has %d rows, want 1", n)
	}
}

// A database's name comes from its test, tamed; it is dropped when its test
// ends, even with a connection still open.
func TestDatabaseNameAndDrop(t *testing.T) {
	var name string
	var leftOpen *pgx.Conn
	t.Run("Ünïcode, spaces/and a name much too long for PostgreSQL's sixty-three bytes", func(t *testing.T) {
		u, err := url.Parse(pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		name = strings.TrimPrefix(u.Path, "/")
		if !regexp.MustCompile(`^t_[0-9]+_[a-z0-9_]+$`).MatchString(name) || len(name) > 60 {
			t.Errorf("database name %q: want t_<n>_[a-z0-9_]+, at most 60 bytes", name)
		}
		leftOpen, err = pgx.Connect(context.Background(), u.String())
		if err != nil {
			t.Fatal(err)
		}
		var current string
		queryRow(t, leftOpen, "SELECT current_database()", &current)
		if current != name {
			t.Errorf("connected to %q, want %q", current, name)
		}
	})
	if leftOpen != nil {
		defer leftOpen.Close(context.Background())
	}
	conn := connect(t, pgtest.Server(t).URL("postgres"))
	var exists bool
	queryRowArgs(t, conn, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", []any{name}, &exists)
	if exists {
		t.Errorf("database %s outlived its test", name)
	}
}

// Data survives a restart (Stop, Start) and a crash (Kill, Start) of a
// test's own server.
func TestRestart(t *testing.T) {
	srv := pgtest.StartServer(t)
	dbURL := srv.NewDatabase(t)
	write := func(v int) {
		conn := connect(t, dbURL)
		exec(t, conn, "CREATE TABLE IF NOT EXISTS kept (v int)")
		exec(t, conn, "INSERT INTO kept VALUES ($1)", v)
		conn.Close(context.Background())
	}
	read := func() (sum int) {
		queryRow(t, connect(t, dbURL), "SELECT sum(v) FROM kept", &sum)
		return sum
	}

	write(1)
	srv.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, dbURL); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	srv.Start(t)
	if got := read(); got != 1 {
		t.Fatalf("after a restart: sum %d, want 1", got)
	}

	write(2)
	open := connect(t, dbURL) // a client of the crashed server
	srv.Kill(t)
	if err := open.Ping(context.Background()); err == nil {
		t.Error("a connection to a killed server still answers")
	}
	srv.Start(t)
	if got := read(); got != 3 {
		t.Fatalf("after a crash: sum %d, want 3", got)
	}
}

// The server listens on no TCP port, lets in unix socket connections only,
// in a directory only its owner (and root) may enter, and that owner is not
// root.
func TestReachableOnlyThroughPrivateSocket(t *testing.T) {
	srv := pgtest.Server(t)
	conn := connect(t, srv.URL("postgres"))

	var listen string
	queryRow(t, conn, "SHOW listen_addresses", &listen)
	if listen != "" {
		t.Errorf("listen_addresses = %q, want ''", listen)
	}
	rows, err := conn.Query(context.Background(), "SELECT type FROM pg_hba_file_rules")
	if err != nil {
		t.Fatal(err)
	}
	types, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range types {
		if typ != "local" {
			t.Errorf("pg_hba.conf has a %q line; want local lines only: %v", typ, types)
		}
	}

	pid := postmasterPID(t, conn)
	if tcp := tcpSockets(t, pid); len(tcp) > 0 {
		t.Errorf("the postmaster holds TCP sockets: %v", tcp)
	}

	u, err := url.Parse(srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	sockDir := u.Query().Get("host")
	fi, err := os.Stat(sockDir)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o700 {
		t.Errorf("socket directory %s: mode %#o, want 0700", sockDir, mode)
	}
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{sockDir, "/proc/" + strconv.Itoa(pid)} {
			if owner := owner(t, path); owner != pg.Uid {
				t.Errorf("%s: owned by uid %s, want the postgres user's %s", path, owner, pg.Uid)
			}
		}
	}
}

// postmasterPID reads the postmaster's pid from its data directory.
func postmasterPID(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var dataDir string
	queryRow(t, conn, "SHOW data_directory", &dataDir)
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

// tcpSockets returns the lines of /proc/net/tcp and tcp6 of the sockets
// that process pid holds.
func tcpSockets(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{} // socket inodes
	for _, fd := range fds {
		link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd.Name())
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			held[strings.TrimSuffix(inode, "]")] = true
		}
	}
	if len(held) == 0 {
		t.Fatal("the postmaster holds no socket at all: looked in the wrong place?")
	}
	var tcp []string
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
			if f := strings.Fields(line); len(f) > 9 && held[f[9]] {
				tcp = append(tcp, line)
			}
		}
	}
	return tcp
}

func owner(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(uint64(fi.Sys().(*syscall.Stat_t).Uid), 10)
}

// A durable server fsyncs and waits for its WAL at commit, as
// PostgreSQL's defaults do; a private one does neither.
func TestDurability(t *testing.T) {
	for _, tc := range []struct {
		start              func(testing.TB) *pgtest.Instance
		fsync, synchronous string
	}{
		{pgtest.StartDurableServer, "on", "on"},
		{pgtest.StartServer, "off", "on"},
	} {
		conn := connect(t, tc.start(t).NewDatabase(t))
		var fsync, synchronous string
		queryRow(t, conn, "SHOW fsync", &fsync)
		queryRow(t, conn, "SHOW synchronous_commit", &synchronous)
		if fsync != tc.fsync || synchronous != tc.synchronous {
			t.Errorf("fsync %s, synchronous_commit %s; want %s, %s", fsync, synchronous, tc.fsync, tc.synchronous)
		}
	}
}
