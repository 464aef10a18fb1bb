package fakerunner_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/github/ghfake/ghfaketest"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

const appID = 77

var appKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// setup starts a ghfake (optionally behind a middleware) with acme/app
// installed, and registers a JIT runner "runner-1" for it with label "x".
func setup(t *testing.T, wrap func(http.Handler) http.Handler) (*ghfake.Server, string) {
	t.Helper()
	srv := ghfake.New(ghfake.Config{AppID: appID, AppPublicKey: &appKey().PublicKey, Seed: 7})
	h := srv.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(func() { ts.Close(); srv.Close() })
	inst := srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	return srv, ghfaketest.RegisterRunner(t, ts.URL, appKey(), appID, inst, "repos/acme/app", "runner-1", "x")
}

func queue(t *testing.T, srv *ghfake.Server, script string) int64 {
	t.Helper()
	id, _ := srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}, Script: script})
	if id == 0 {
		t.Fatal("QueueJob failed")
	}
	return id
}

func job(t *testing.T, srv *ghfake.Server, id int64) ghfake.JobInfo {
	t.Helper()
	j, ok := srv.Job(id)
	if !ok {
		t.Fatalf("job %d not found", id)
	}
	return j
}

func opts() fakerunner.Options {
	return fakerunner.Options{IdleTimeout: 10 * time.Second, HeartbeatInterval: 50 * time.Millisecond}
}

func TestOutputAndEnv(t *testing.T) {
	srv, jit := setup(t, nil)
	id := queue(t, srv, `echo "jit=[${`+runnerapi.EnvJITConfig+`-unset}] repo=$GITHUB_REPOSITORY attempt=$GITHUB_RUN_ATTEMPT runner=$RUNNER_NAME ci=$CI keep=$KEEP"; echo err >&2; exit 3`)
	var stdout, stderr bytes.Buffer
	o := opts()
	o.Stdout, o.Stderr = &stdout, &stderr
	o.Env = []string{runnerapi.EnvJITConfig + "=secret-config", "KEEP=kept", "PATH=" + os.Getenv("PATH")}
	if err := fakerunner.Run(context.Background(), jit, o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	j := job(t, srv, id)
	want := "jit=[unset] repo=acme/app attempt=1 runner=runner-1 ci=true keep=kept"
	if j.Conclusion != ghfake.ConclusionFailure || j.ExitCode != 3 || !strings.Contains(j.Output, want) || !strings.Contains(j.Output, "err") {
		t.Fatalf("job = %+v", j)
	}
	if !strings.Contains(stdout.String(), want) || stderr.String() != "err\n" {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

// TestJobStartedHook: the hook runs before the job's script, in its
// environment; a failing hook fails the job, whose script does not run.
func TestJobStartedHook(t *testing.T) {
	dir := t.TempDir()
	hook := filepath.Join(dir, "started.sh")
	if err := os.WriteFile(hook, []byte("echo hook repo=$GITHUB_REPOSITORY\n[ ! -e \"$HOOK_FAILS\" ]\necho hook-after-the-check\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, fails  string
		exit         int
		want, absent []string
	}{
		{"passes", filepath.Join(dir, "absent"), 0, []string{"hook repo=acme/app\nhook-after-the-check\nscript\n"}, nil},
		// -e: the hook stops at its failed check.
		{"fails", dir, 1, []string{"hook repo=acme/app\n"}, []string{"hook-after-the-check", "script"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, jit := setup(t, nil)
			id := queue(t, srv, "echo script")
			o := opts()
			o.Env = []string{"PATH=" + os.Getenv("PATH"), "HOOK_FAILS=" + tc.fails}
			o.JobStartedHook = hook
			if err := fakerunner.Run(context.Background(), jit, o); err != nil {
				t.Fatalf("Run: %v", err)
			}
			j := job(t, srv, id)
			if j.ExitCode != tc.exit || (tc.exit == 0) != (j.Conclusion == ghfake.ConclusionSuccess) {
				t.Errorf("exit %d, conclusion %s; want exit %d", j.ExitCode, j.Conclusion, tc.exit)
			}
			for _, w := range tc.want {
				if !strings.Contains(j.Output, w) {
					t.Errorf("output %q lacks %q", j.Output, w)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(j.Output, a) {
					t.Errorf("output %q has %q", j.Output, a)
				}
			}
		})
	}
}

func TestOutputCapped(t *testing.T) {
	srv, jit := setup(t, nil)
	id := queue(t, srv, `i=0; while [ $i -lt 2000 ]; do echo "line $i $(printf '%060d' 0)"; i=$((i+1)); done; echo END`)
	var stdout bytes.Buffer
	o := opts()
	o.Stdout = &stdout
	if err := fakerunner.Run(context.Background(), jit, o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	j := job(t, srv, id)
	if len(j.Output) != runnerapi.MaxOutput || !strings.HasSuffix(j.Output, "END\n") || j.Conclusion != ghfake.ConclusionSuccess {
		t.Fatalf("output %d bytes, ends %q, conclusion %s", len(j.Output), j.Output[max(len(j.Output)-20, 0):], j.Conclusion)
	}
	if stdout.Len() <= runnerapi.MaxOutput {
		t.Errorf("stdout got only %d bytes", stdout.Len())
	}
}

func TestBackgroundProcessesKilled(t *testing.T) {
	srv, jit := setup(t, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	id := queue(t, srv, fmt.Sprintf("sleep 60 & echo $! > %s; echo done", pidFile))
	start := time.Now()
	if err := fakerunner.Run(context.Background(), jit, opts()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run waited %s for a background process", d)
	}
	if j := job(t, srv, id); j.Conclusion != ghfake.ConclusionSuccess {
		t.Errorf("job = %+v", j)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("background process %d survived the job", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid runs (a zombie does not count).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestIdleTimeout(t *testing.T) {
	_, jit := setup(t, nil)
	o := opts()
	o.IdleTimeout = 300 * time.Millisecond
	start := time.Now()
	err := fakerunner.Run(context.Background(), jit, o)
	if !errors.Is(err, fakerunner.ErrNoJob) {
		t.Fatalf("Run = %v, want ErrNoJob", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %s", d)
	}
}

func TestBadConfig(t *testing.T) {
	for _, c := range []string{"", "%%%", "bm90IGpzb24=", "e30="} {
		if err := fakerunner.Run(context.Background(), c, opts()); !errors.Is(err, runnerapi.ErrInvalidJITConfig) {
			t.Errorf("Run(%q) = %v", c, err)
		}
	}
	cfg := runnerapi.JITConfig{URL: "http://127.0.0.1:1", RunnerName: "r", Token: "super-secret-token"}
	enc, err := cfg.Encode()
	if err != nil {
		t.Fatal(err)
	}
	o := opts()
	o.IdleTimeout = 300 * time.Millisecond
	err = fakerunner.Run(context.Background(), enc, o)
	if err == nil || strings.Contains(err.Error(), "super-secret-token") {
		t.Errorf("unreachable server: %v", err)
	}
}

func TestTransientErrorsRetried(t *testing.T) {
	var mu sync.Mutex
	failures := map[string]int{}
	srv, jit := setup(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := r.URL.Path
			if strings.HasPrefix(key, runnerapi.PathJobs) {
				key = key[strings.LastIndexByte(key, '/'):]
			}
			mu.Lock()
			n := failures[key]
			failures[key]++
			mu.Unlock()
			if strings.HasPrefix(r.URL.Path, "/_runner/") && n < 2 {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	id := queue(t, srv, "sleep 0.2; echo ok")
	if err := fakerunner.Run(context.Background(), jit, opts()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if j := job(t, srv, id); j.Conclusion != ghfake.ConclusionSuccess || j.Claims != 1 {
		t.Fatalf("job = %+v", j)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{runnerapi.PathSession, runnerapi.PathAcquire, "/complete"} {
		if failures[k] < 3 {
			t.Errorf("%s tried %d times, want ≥ 3", k, failures[k])
		}
	}
}

func TestContextCancelledDuringJob(t *testing.T) {
	srv, jit := setup(t, nil)
	id := queue(t, srv, "sleep 60")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fakerunner.Run(ctx, jit, opts()) }()
	for deadline := time.Now().Add(10 * time.Second); job(t, srv, id).Status != ghfake.StatusInProgress; {
		if time.Now().After(deadline) {
			t.Fatal("job never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run ignored the cancelled context")
	}
	if j := job(t, srv, id); j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionFailure {
		t.Errorf("job = %+v", j)
	}
}
