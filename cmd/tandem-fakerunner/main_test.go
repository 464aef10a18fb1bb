package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/github/ghfake/ghfaketest"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

// newJIT starts a ghfake, queues a job running script, and returns the
// server and a JIT config for a runner that can take it.
func newJIT(t *testing.T, script string) (*ghfake.Server, int64, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	srv := ghfake.New(ghfake.Config{AppID: 1, AppPublicKey: &key.PublicKey})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { ts.Close(); srv.Close() })
	inst := srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	jobID, _ := srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}, Script: script})

	jit := ghfaketest.RegisterRunner(t, ts.URL, key, 1, inst, "orgs/acme", "vm", "x")
	return srv, jobID, jit
}

func TestRunFromEnvironment(t *testing.T) {
	srv, jobID, jit := newJIT(t, `echo "jit=[${ACTIONS_RUNNER_INPUT_JITCONFIG-unset}]"; exit 1`)
	t.Setenv(runnerapi.EnvJITConfig, jit)
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--idle-timeout=10s"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if _, set := os.LookupEnv(runnerapi.EnvJITConfig); set {
		t.Error("the JIT config is still in the environment")
	}
	if got := stdout.String(); got != "jit=[unset]\n" {
		t.Errorf("the job saw %q", got)
	}
	if strings.Contains(stderr.String(), jit) {
		t.Error("the JIT config was logged")
	}
	j, _ := srv.Job(jobID)
	if j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionFailure || j.ExitCode != 1 {
		t.Errorf("job = %+v", j)
	}
}

func TestRunFromFlag(t *testing.T) {
	srv, jobID, jit := newJIT(t, "echo hi")
	t.Setenv(runnerapi.EnvJITConfig, "ignored")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--jitconfig", jit}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if os.Getenv(runnerapi.EnvJITConfig) != "" {
		t.Error("the environment variable was not removed")
	}
	if j, _ := srv.Job(jobID); j.Conclusion != ghfake.ConclusionSuccess || stdout.String() != "hi\n" {
		t.Errorf("job = %+v, stdout %q", j, stdout.String())
	}
	// The config is single use.
	stderr.Reset()
	if code := run(context.Background(), []string{"--jitconfig", jit}, &stdout, &stderr); code != exitError ||
		!strings.Contains(stderr.String(), "already used") {
		t.Errorf("reuse: exit %d: %s", code, stderr.String())
	}
}

// The job-started hook comes from the runner's environment, as GitHub's
// runner takes it, and runs before the job's script.
func TestRunJobStartedHook(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "started.sh")
	if err := os.WriteFile(hook, []byte("echo hook\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	srv, jobID, jit := newJIT(t, "echo script")
	t.Setenv(fakerunner.EnvJobStartedHook, hook)
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--jitconfig", jit}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if j, _ := srv.Job(jobID); j.Conclusion != ghfake.ConclusionSuccess || stdout.String() != "hook\nscript\n" {
		t.Errorf("job = %+v, stdout %q", j, stdout.String())
	}
}

func TestRunErrors(t *testing.T) {
	t.Setenv(runnerapi.EnvJITConfig, "")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, exitUsage, "no JIT config"},
		{[]string{"--bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"--jitconfig", "x", "extra"}, exitUsage, "unexpected arguments"},
		{[]string{"--jitconfig", "not-base64!"}, exitError, "invalid jit config"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("run(%q) = %d, %q; want %d, %q", tc.args, code, stderr.String(), tc.code, tc.msg)
		}
	}
}

func TestRunNoJob(t *testing.T) {
	srv, jobID, jit := newJIT(t, "true")
	if err := srv.CancelJob(jobID); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--jitconfig", jit, "--idle-timeout", "200ms"}, &stdout, &stderr); code != exitNoJob {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
}
