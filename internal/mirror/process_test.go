package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-ci/tandem/internal/testenv"
)

func (m *Mirror) pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return 0
	}
	return m.proc.Pid
}

// setVar sets a package variable for one test.
func setVar[T any](t *testing.T, p *T, v T) {
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// gone reports whether pid has exited (a zombie counts).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

func answers(url string) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url + "/v2/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestRestartAfterKill(t *testing.T) {
	setVar(t, &minBackoff, 100*time.Millisecond)
	up := startUpstream(t)
	log, logBuf := testLogger()
	m := startMirror(t, up, t.TempDir(), func(c *Config) { c.Logger = log })
	pid := m.pid()
	if pid == 0 || m.Restarts() != 0 {
		t.Fatalf("pid %d restarts %d", pid, m.Restarts())
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart after kill -9", 15*time.Second, func() bool {
		p := m.pid()
		return p != 0 && p != pid && answers(m.URL())
	})
	if m.Restarts() != 1 {
		t.Errorf("restarts %d, want 1", m.Restarts())
	}
	if !strings.Contains(logBuf.String(), "level=WARN msg=\"registry mirror exited: restarting\"") {
		t.Errorf("no warning of the restart:\n%s", logBuf)
	}
	newPID := m.pid()
	m.Stop()
	if !gone(newPID) || m.pid() != 0 {
		t.Errorf("registry %d still there after Stop", newPID)
	}
	if answers(m.URL()) {
		t.Error("mirror answers after Stop")
	}
	select {
	case <-m.done:
	default:
		t.Error("supervisor still running after Stop")
	}
	if m.Restarts() != 1 {
		t.Errorf("Stop restarted it: restarts %d", m.Restarts())
	}
}

// fakeRegistry returns a registry binary for Start: this test binary in
// the role fakeRegistryMain plays, "stubborn" (serves GET /v2/, ignores
// SIGTERM) or "mute" (logs a line, never listens).
func fakeRegistry(t *testing.T, mode string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "fake-registry")
	script := fmt.Sprintf("#!/bin/sh\nTANDEM_FAKE_REGISTRY=%s exec %s \"$@\"\n", mode, self)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeRegistryMain runs instead of the tests when TANDEM_FAKE_REGISTRY is
// set: os.Args are [binary serve CONFIG].
func fakeRegistryMain(mode string) {
	if mode == "mute" {
		fmt.Fprintln(os.Stderr, `{"level":"info","msg":"thinking"}`)
		time.Sleep(time.Minute)
		os.Exit(1)
	}
	signal.Ignore(syscall.SIGTERM)
	var rc registryConfig
	b, err := os.ReadFile(os.Args[len(os.Args)-1])
	if err == nil {
		err = yaml.Unmarshal(b, &rc)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	err = http.ListenAndServe(rc.HTTP.Addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range rc.HTTP.Headers {
			w.Header()[k] = v
		}
		w.Write([]byte("{}"))
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func TestStopKillsAStubbornRegistry(t *testing.T) {
	setVar(t, &stopGrace, 300*time.Millisecond)
	m, err := Start(context.Background(), Config{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", InsecureUpstream: true,
		CacheDir: t.TempDir(), Binary: fakeRegistry(t, "stubborn")})
	if err != nil {
		t.Fatal(err)
	}
	pid := m.pid()
	t0 := time.Now()
	m.Stop()
	if d := time.Since(t0); d < stopGrace || d > 5*time.Second {
		t.Errorf("Stop took %s (grace %s)", d, stopGrace)
	}
	if !gone(pid) {
		t.Errorf("process %d survived Stop", pid)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("not answering", func(t *testing.T) {
		setVar(t, &readyTimeout, 500*time.Millisecond)
		_, err := Start(ctx, Config{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", InsecureUpstream: true, CacheDir: t.TempDir(), Binary: fakeRegistry(t, "mute")})
		if err == nil || !strings.Contains(err.Error(), "did not answer GET /v2/ within 500ms") || !strings.Contains(err.Error(), "thinking") {
			t.Errorf("got %v", err)
		}
		if errors.Is(err, ErrConfig) {
			t.Error("a start failure is not a config error")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := Start(cctx, Config{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", InsecureUpstream: true, CacheDir: t.TempDir(), Binary: fakeRegistry(t, "mute")})
		if err == nil || !strings.Contains(err.Error(), "start cancelled") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("port taken", func(t *testing.T) {
		up := startUpstream(t)
		ln, err := net.Listen("tcp", up.hostAddr+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = Start(ctx, Config{Listen: ln.Addr().String(), Upstream: up.url, InsecureUpstream: true, CacheDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("got %v", err)
		}
	})
}

func TestBadConfig(t *testing.T) {
	requireBinary(t)
	ok := Config{Listen: "127.0.0.1:5000", CacheDir: "/nonexistent/cache"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no listen", func(c *Config) { c.Listen = "" }, "want IP:PORT"},
		{"hostname", func(c *Config) { c.Listen = "localhost:5000" }, `"localhost" is not an IP address`},
		{"all addresses", func(c *Config) { c.Listen = "0.0.0.0:5000" }, "not 0.0.0.0"},
		{"port", func(c *Config) { c.Listen = "127.0.0.1:99999" }, `bad port "99999"`},
		{"ftp", func(c *Config) { c.Upstream = "ftp://mirror.example" }, "want an http or https URL"},
		{"http", func(c *Config) { c.Upstream = "http://registry.example" }, "use https, or allow it explicitly"},
		{"no scheme", func(c *Config) { c.Upstream = "registry.example" }, "want an http or https URL"},
		{"no upstream", func(c *Config) { c.Upstream = "" }, "no upstream registry given"},
		{"creds in URL", func(c *Config) { c.Upstream = "https://u:p@registry.example" }, "not in the URL"},
		{"path", func(c *Config) { c.Upstream = "https://registry.example/v2/" }, "no path or query"},
		{"user only", func(c *Config) { c.Username = "u" }, "both username and password"},
		{"password only", func(c *Config) { c.Password = "p" }, "both username and password"},
		{"no cache", func(c *Config) { c.CacheDir = "" }, "no cache directory"},
		{"binary", func(c *Config) { c.Binary = "/nonexistent/registry" }, "registry binary /nonexistent/registry"},
	} {
		c := ok
		tc.mod(&c)
		_, err := Start(context.Background(), c)
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrConfig with %q", tc.name, err, tc.want)
		}
	}
	if _, err := os.Stat("/nonexistent/cache"); err == nil {
		t.Error("a bad config made the cache directory")
	}
	// All problems at once.
	_, err := Start(context.Background(), Config{Listen: "x", Upstream: "ftp://x"})
	if err == nil || !strings.Contains(err.Error(), "IP:PORT") || !strings.Contains(err.Error(), "ftp://x") || !strings.Contains(err.Error(), "no cache") {
		t.Errorf("several problems: %v", err)
	}
	// No binary anywhere: say what to install.
	t.Setenv("PATH", t.TempDir())
	setVar(t, &binaryFallback, "/nonexistent/docker-registry")
	if _, err := Start(context.Background(), ok); err == nil || !strings.Contains(err.Error(), "apt-get install docker-registry") {
		t.Errorf("no binary: %v", err)
	}
}

// TestSecretsAndLogs: the upstream password is in the 0600 config file and
// nowhere in the log; the registry's log reaches the logger; REGISTRY_*
// variables in our environment do not override the config.
func TestSecretsAndLogs(t *testing.T) {
	up := startUpstream(t)
	t.Setenv("REGISTRY_HTTP_ADDR", "127.0.0.1:1")
	const password = "s3cret-pa55word-for-the-upstream"
	cache := t.TempDir()
	log, logBuf := testLogger()
	m := startMirror(t, up, cache, func(c *Config) { c.Username, c.Password, c.Logger = "mirror-bot", password, log })
	im := busybox(t, 0)
	if err := im.Push(context.Background(), nil, up.url, "a/b", "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := pull(context.Background(), http.DefaultClient, m.URL(), "a/b", "c", im.Digest()); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(cache, "config.yml"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("config file: %v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(cache, "config.yml")); !strings.Contains(string(b), password) {
		t.Error("password not in the config file")
	}
	m.Stop()
	out := logBuf.String()
	if strings.Contains(out, password) {
		t.Errorf("the password is in the log:\n%s", out)
	}
	for _, want := range []string{`level=DEBUG msg="registry mirror: response completed"`, "http.request.uri=/v2/a/b/manifests/c",
		`level=INFO msg="registry mirror ready"`, `level=INFO msg="registry mirror stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestLogLine(t *testing.T) {
	log, buf := testLogger()
	m := &Mirror{log: log, tail: newTailBuffer(5)}
	m.logLine(`{"level":"info","msg":"response completed","http.request.method":"GET","time":"x","go.version":"go1"}`)
	m.logLine(`{"level":"warning","msg":"No HTTP secret provided"}`)
	m.logLine(`{"level":"error","msg":"response completed with error","err.message":"blob unknown"}`)
	m.logLine(`panic: Get "http://x/v2/": dial tcp: connection refused`)
	m.logLine("")
	m.logLine("goroutine 1 [running]:")
	m.logLine("main.main()")
	m.logLine("\t/build/main.go:12 +0x1d")
	out := buf.String()
	for _, want := range []string{
		`level=DEBUG msg="registry mirror: response completed" mirror="" http.request.method=GET`,
		`level=WARN msg="registry mirror: No HTTP secret provided"`,
		`level=WARN msg="registry mirror: response completed with error" mirror="" err.message="blob unknown"`,
		`level=WARN msg="registry mirror: panic: Get \"http://x/v2/\": dial tcp: connection refused"`,
		`level=DEBUG msg="registry mirror: goroutine 1 [running]:"`,
	} {
		if !strings.Contains(out, strings.Replace(want, ` mirror=""`, "", 1)) && !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "go.version") || strings.Contains(out, "time=x") {
		t.Errorf("noise fields logged:\n%s", out)
	}
	tail := m.tail.String()
	if strings.Contains(tail, "info:") || strings.Contains(tail, "goroutine") ||
		!strings.Contains(tail, "error: response completed with error (blob unknown)") || !strings.Contains(tail, "panic: Get") {
		t.Errorf("tail %q", tail)
	}
}

// TestDiesWithParent: kill -9 of the process that started the mirror ends
// the registry too (Pdeathsig).
func TestDiesWithParent(t *testing.T) {
	up := startUpstream(t)
	cmd, sc := testenv.StartHelper(t, "TestHelperMirror", "TANDEM_MIRROR_HELPER=1", "HELPER_LISTEN="+up.hostAddr+":0",
		"HELPER_UPSTREAM="+up.url, "HELPER_CACHE="+t.TempDir())
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pid := 0
	var out []string
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "registry pid "); ok {
			pid, _ = strconv.Atoi(p)
			break
		}
		out = append(out, sc.Text())
	}
	if pid == 0 {
		t.Fatalf("the helper never started a mirror: %s", strings.Join(out, "\n"))
	}
	if gone(pid) {
		t.Fatal("registry not running")
	}
	cmd.Process.Kill()
	waitFor(t, "registry to die with its parent", 10*time.Second, func() bool { return gone(pid) })
}

func TestHelperMirror(t *testing.T) {
	if os.Getenv("TANDEM_MIRROR_HELPER") == "" {
		t.Skip("helper process for TestDiesWithParent")
	}
	// Busy goroutines locking and leaving threads: Pdeathsig must not
	// fire when some other thread of ours ends.
	for range 20 {
		go func() {
			for {
				done := make(chan struct{})
				go func() { lockAndExit(); close(done) }()
				<-done
				time.Sleep(time.Millisecond)
			}
		}()
	}
	m, err := Start(context.Background(), Config{Listen: os.Getenv("HELPER_LISTEN"), Upstream: os.Getenv("HELPER_UPSTREAM"), InsecureUpstream: true,
		CacheDir: os.Getenv("HELPER_CACHE"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // threads come and go
	if gone(m.pid()) {
		t.Fatal("registry died with another thread")
	}
	fmt.Printf("registry pid %d\n", m.pid())
	select {}
}

// lockAndExit ends its goroutine locked to its thread, so Go ends the thread.
func lockAndExit() { runtime.LockOSThread() }
