package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tandem-ci/tandem/internal/hostdeps"
)

const (
	superuser = "postgres" // the role that initdb makes and URL connects as
	port      = "5432"     // names the socket; every server has its own directory
	// startTimeout bounds a start, from launching postgres to its first
	// accepted connection (CI machines are slow, and may run qemu alongside).
	startTimeout = 60 * time.Second
	// stopTimeout bounds a fast shutdown, after which the postmaster is killed.
	stopTimeout = 60 * time.Second
)

// Instance is one PostgreSQL server: a data directory, the unix socket it
// listens on and, while it runs, its postmaster.
type Instance struct {
	bin  string              // the directory of initdb and postgres
	dir  string              // holds data/, sock/ and server.log
	cred *syscall.Credential // the server's OS user; nil: the test's own

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is a running postmaster.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it has exited
}

func (i *Instance) dataDir() string { return filepath.Join(i.dir, "data") }
func (i *Instance) sockDir() string { return filepath.Join(i.dir, "sock") }
func (i *Instance) logPath() string { return filepath.Join(i.dir, "server.log") }

// URL returns the connection URL of database db on the server, as its
// superuser: postgres://postgres@/db?host=<socket directory>&port=5432.
func (i *Instance) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(superuser),
		Path:     "/" + db,
		RawQuery: url.Values{"host": {i.sockDir()}, "port": {port}}.Encode(),
	}
	return u.String()
}

// Start starts the server again, on the same data directory, after Stop or
// Kill, and waits until it accepts connections.
func (i *Instance) Start(tb testing.TB) {
	tb.Helper()
	if err := i.start(); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// Stop stops the server (a fast shutdown: open connections are ended) and
// waits until all its processes have exited.
func (i *Instance) Stop(tb testing.TB) {
	tb.Helper()
	if err := i.stop(syscall.SIGINT); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// Kill crashes the server: it SIGKILLs the postmaster and waits until the
// rest of its processes have exited too. The next Start recovers from the
// write-ahead log.
func (i *Instance) Kill(tb testing.TB) {
	tb.Helper()
	if err := i.stop(syscall.SIGKILL); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// newInstance makes a data directory and starts a server on it.
func newInstance(m mode) (*Instance, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	cred, err := serverUser()
	if err != nil {
		return nil, err
	}
	dir, err := makeDir(cred)
	if err != nil {
		return nil, err
	}
	i := &Instance{bin: bin, dir: dir, cred: cred}
	if err := i.initdb(m); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := i.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return i, nil
}

// destroy stops the server and removes its files.
func (i *Instance) destroy() error {
	if err := i.stop(syscall.SIGINT); err != nil {
		return err
	}
	return os.RemoveAll(i.dir)
}

// findBin returns the directory of initdb and postgres: Debian's newest
// /usr/lib/postgresql/<version>/bin, or PATH's (hostdeps.Find).
func findBin() (string, error) {
	initdb, err := hostdeps.Find("initdb")
	if err != nil {
		return "", fmt.Errorf("%w: run scripts/install-deps.sh", err)
	}
	postgres, err := hostdeps.Find("postgres")
	if err != nil {
		return "", fmt.Errorf("%w: run scripts/install-deps.sh", err)
	}
	if filepath.Dir(initdb) != filepath.Dir(postgres) {
		return "", fmt.Errorf("initdb (%s) and postgres (%s) are of different installations", initdb, postgres)
	}
	return filepath.Dir(postgres), nil
}

// serverUser returns who the server runs as: nil for the test's own user,
// or the postgres system user when the test runs as root.
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, the server runs as the postgres system user: %w "+
			"(run scripts/install-deps.sh)", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// makeDir creates a fresh directory for a server, and its socket
// directory, each of mode 0700 and owned by the server's user. As root it
// avoids a TMPDIR that the postgres user cannot pass through, and any
// TMPDIR too long for a socket's path (108 bytes).
func makeDir(cred *syscall.Credential) (string, error) {
	parent := os.TempDir()
	if len(parent) > 64 || cred != nil && !passable(parent) {
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "pgtest-")
	if err != nil {
		return "", err
	}
	sock := filepath.Join(dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if cred != nil {
		for _, d := range []string{dir, sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				os.RemoveAll(dir)
				return "", err
			}
		}
	}
	return dir, nil
}

// passable reports whether everyone may pass through dir and its parents.
func passable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// command prepares one of the server's programs, run as its user, in its
// directory, without the PG* variables of the test's environment.
func (i *Instance) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(i.bin, name), args...)
	cmd.Dir = i.dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: i.cred}
	return cmd
}

// hbaConf lets in local (unix socket) connections only, without a password:
// the socket's directory is what keeps everyone else out.
const hbaConf = `# pgtest: unix socket connections only, trusted; no other line, so
# a TCP connection is refused even if one could be made.
local all all trust
local replication all trust
`

// initdb makes the data directory and configures the server.
func (i *Instance) initdb(m mode) error {
	cmd := i.command("initdb", "-D", i.dataDir(), "-U", superuser, "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=reject", "--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// Both files exist, owned by the server's user; writing keeps the owner.
	if err := os.WriteFile(filepath.Join(i.dataDir(), "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(i.dataDir(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(i.settings(m))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// mode is how a server trades durability for speed.
type mode int

const (
	// modePrivate: no fsync (a crash of the machine loses data), but every
	// commit reaches the server's WAL before it returns (Kill loses none).
	modePrivate mode = iota
	// modeShared: as modePrivate, and commits return before their WAL is written
	// (a Kill may lose the last ones).
	modeShared
	// modeDurable: PostgreSQL's defaults, fsync included, for benchmarks
	// that compare it with a store that fsyncs.
	modeDurable
)

// settings are the lines added to postgresql.conf.
func (i *Instance) settings(m mode) string {
	lines := []string{
		"# pgtest",
		"listen_addresses = ''", // no TCP
		"unix_socket_directories = '" + strings.ReplaceAll(i.sockDir(), "'", "''") + "'",
		"unix_socket_permissions = 0700",
		"port = " + port,
		"max_connections = 200", // several replicas, and many parallel tests
		"shared_buffers = 64MB",
	}
	if m != modeDurable {
		lines = append(lines, "fsync = off", "full_page_writes = off")
	}
	if m == modeShared {
		lines = append(lines, "synchronous_commit = off")
	}
	return "\n" + strings.Join(lines, "\n") + "\n"
}

// start launches the postmaster and waits until it accepts connections.
func (i *Instance) start() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc != nil {
		return errors.New("the server is already running")
	}
	logf, err := os.OpenFile(i.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the postmaster has its own copy
	cmd := i.command("postgres", "-D", i.dataDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL // the test binary died: so does the server
	p, err := launch(cmd)
	if err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	if err := i.waitReady(p); err != nil {
		p.cmd.Process.Kill()
		<-p.exited
		waitDetached(i.dataDir())
		return fmt.Errorf("%w; the end of its log, %s:\n%s", err, i.logPath(), i.logTail())
	}
	i.proc = p
	return nil
}

// launch starts cmd from a goroutine that holds its OS thread until the
// process has exited. The kernel sends Pdeathsig when the thread that forked
// a process ends, not the whole parent, and the Go runtime ends a thread when
// a goroutine locked to it returns: another test's locked goroutine must not
// take the server down with its thread.
func launch(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, exited: make(chan struct{})}
	started := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(p.exited)
	}()
	return p, <-started
}

// waitReady polls the server with connections until one succeeds, the
// postmaster exits or startTimeout passes.
func (i *Instance) waitReady(p *process) error {
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, i.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres accepted no connection in %v: %w", startTimeout, err)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("postgres exited while starting: %s", p.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends the postmaster sig and waits until it and all its children
// have exited. A fast shutdown (SIGINT) that takes longer than stopTimeout
// becomes a kill, and an error.
func (i *Instance) stop(sig syscall.Signal) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	p := i.proc
	if p == nil {
		return nil
	}
	i.proc = nil
	var err error
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
		err = fmt.Errorf("postgres did not shut down in %v: killed", stopTimeout)
	}
	if werr := waitDetached(i.dataDir()); err == nil {
		err = werr
	}
	return err
}

// waitDetached waits until no process of a server whose postmaster has
// exited is left. After a clean shutdown there is none; after a kill the
// backends exit by themselves when they notice, and until then a new
// postmaster refuses the data directory, because they still hold its shared
// memory. So this waits until that segment (in postmaster.pid) has no
// process attached, as /proc/sysvipc/shm tells; it needs no right to look
// at the server's processes.
func waitDetached(dataDir string) error {
	pid, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil // removed by a clean shutdown
	}
	lines := strings.Split(string(pid), "\n")
	if len(lines) < 7 || len(strings.Fields(lines[6])) < 2 {
		return nil // it died before it made its shared memory
	}
	shmid := strings.Fields(lines[6])[1]
	deadline := time.Now().Add(stopTimeout)
	for attached(shmid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the processes of the stopped server did not exit in %v (shared memory %s still attached)",
				stopTimeout, shmid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// attached reports whether any process is attached to the System V shared
// memory segment shmid.
func attached(shmid string) bool {
	table, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return false
	}
	// The columns: key shmid perms size cpid lpid nattch …
	for _, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[1] == shmid {
			return f[6] != "0"
		}
	}
	return false
}

// logTail returns the last lines of the server's log.
func (i *Instance) logTail() string {
	const max = 4 << 10
	b, err := os.ReadFile(i.logPath())
	if err != nil {
		return err.Error()
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if j := bytes.IndexByte(b, '\n'); j >= 0 {
			b = b[j+1:]
		}
	}
	return string(b)
}
