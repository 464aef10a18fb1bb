// Package pgtest starts real PostgreSQL servers for tests: one shared by all
// the tests of a test binary (Server, NewDatabase), started on first use so
// that a binary whose tests never ask for it pays nothing and stopped by
// Main, and private ones (StartServer) for tests that stop, restart or kill
// theirs.
//
// Who can reach a server: no one over the network, and on this machine only
// the server's OS user and root. The server listens on no TCP port
// (listen_addresses is empty), only on a unix socket in a directory of mode
// 0700 owned by that user. Its pg_hba.conf trusts connections on that socket
// and has no line for any other kind, so a TCP connection would be refused
// even if one could be made. The server's OS user is the test's user or,
// when the tests run as root (as they do in CI), the `postgres` system user,
// because initdb and postgres refuse to run as root.
//
// No server writes durably but StartDurableServer's (for benchmarks):
// fsync and full_page_writes are off, so a crash of the machine loses its
// data. A crash of the server alone (Kill) loses nothing committed on a
// private server. On the shared server synchronous_commit is off too, so a
// Kill there can lose the last commits.
//
// The binaries are the newest of /usr/lib/postgresql/*/bin (Debian's
// layout), else `pg_config --bindir`, else the ones on PATH;
// scripts/install-deps.sh installs them.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// shared is the test binary's shared server.
var shared struct {
	sync.Mutex
	inMain bool      // Main is running the tests, and will stop the server
	inst   *Instance // started on first use
	err    error     // why it did not start: not tried again
}

// Main runs a test binary's tests (m.Run) and stops the shared server, if
// one was started, afterwards; it returns the exit code. Usage:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	code := m.Run()
	shared.Lock()
	defer shared.Unlock()
	shared.inMain = false
	if shared.inst == nil {
		return code
	}
	if err := shared.inst.destroy(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stopping the shared server: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	shared.inst = nil
	return code
}

// Server returns the test binary's shared server, starting it on first use.
// The test binary's TestMain must run its tests through Main, which stops
// the server. A test that stops or kills the shared server must start it
// again before it ends; one that means to kill it had better have its own
// (StartServer).
func Server(tb testing.TB) *Instance {
	tb.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		tb.Fatal("pgtest: the shared server needs the test binary's TestMain to run pgtest.Main, which stops it")
	}
	if shared.inst == nil && shared.err == nil {
		shared.inst, shared.err = newInstance(modeShared)
	}
	if shared.err != nil {
		tb.Fatalf("pgtest: %v", shared.err)
	}
	return shared.inst
}

// StartServer starts a server of the test's own, not shared with other
// tests, and stops it and removes its files when tb ends.
func StartServer(tb testing.TB) *Instance {
	tb.Helper()
	return startServer(tb, modePrivate)
}

// StartDurableServer is StartServer with PostgreSQL's durable defaults
// (fsync on), for benchmarks that compare it with a store that fsyncs.
func StartDurableServer(tb testing.TB) *Instance {
	tb.Helper()
	return startServer(tb, modeDurable)
}

func startServer(tb testing.TB, m mode) *Instance {
	tb.Helper()
	inst, err := newInstance(m)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := inst.destroy(); err != nil {
			tb.Errorf("pgtest: stopping the server: %v", err)
		}
	})
	return inst
}

// NewDatabase creates a fresh, empty database on the shared server and
// returns its connection URL (see Instance.NewDatabase).
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	return Server(tb).NewDatabase(tb)
}

// dbSeq numbers the databases of a test binary, so that their names differ
// even between tests of the same name.
var dbSeq atomic.Int64

// NewDatabase creates a fresh, empty database on the server and returns a
// connection URL for it, as the server's superuser. The database is dropped
// when tb ends, after the cleanups that the test registers later (those run
// first) have closed what the test opened; a connection still open then is
// ended (DROP DATABASE … WITH (FORCE)).
func (i *Instance) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := dbName(dbSeq.Add(1), tb.Name())
	if err := i.admin("CREATE DATABASE " + pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := i.admin("DROP DATABASE " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return i.URL(name)
}

// maxNameLen keeps database names under PostgreSQL's 63 bytes.
const maxNameLen = 60

// dbName is "t_", the sequence number and as much of the test's name as
// fits, in lower case with every character but [a-z0-9_] made "_".
func dbName(seq int64, test string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "t_%d_", seq)
	for _, r := range strings.ToLower(test) {
		if b.Len() >= maxNameLen {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// admin runs one statement in the server's maintenance database.
func (i *Instance) admin(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, i.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}
