// Package fakerunner is a stand-in for the official GitHub Actions runner
// that works against ghfake: given a JIT config it opens a session, takes one
// job, runs its script with /bin/sh -c, heartbeats, reports the result and
// returns, as an ephemeral runner does. It speaks Tandem's own protocol
// (package runnerapi), not the official runner's undocumented one. As
// GitHub's runner, it runs a job-started hook (Options.JobStartedHook,
// which tandem-fakerunner takes from ACTIONS_RUNNER_HOOK_JOB_STARTED) with
// bash -e, or sh -e without bash, before the job's script, in the job, and
// fails the job without running its script when the hook fails.
package fakerunner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

// Defaults of Options.
const (
	DefaultIdleTimeout       = 10 * time.Minute
	DefaultHeartbeatInterval = time.Second
	maxAcquireWait           = 30 * time.Second
	reportTimeout            = 2 * time.Minute
	pipeDrainTimeout         = 5 * time.Second
)

// Errors Run returns; callers branch on them with errors.Is.
var (
	// ErrNoJob: no job arrived within the idle timeout.
	ErrNoJob = errors.New("no job arrived")
	// ErrConfigUsed: the JIT config was already used by another session.
	ErrConfigUsed = errors.New("jit config already used")
	// ErrRejected: the server refused a request for good (unknown runner,
	// runner deleted, bad request).
	ErrRejected = errors.New("rejected by server")
)

// Options tune Run. The zero value is usable.
type Options struct {
	// Stdout and Stderr receive the script's output as it runs (nil: not
	// copied anywhere but the report).
	Stdout, Stderr io.Writer
	// IdleTimeout bounds the wait for a job, from the start of Run
	// (default 10 min).
	IdleTimeout time.Duration
	// HeartbeatInterval is how often a running job heartbeats (default 1 s).
	HeartbeatInterval time.Duration
	// Env is the script's environment (default os.Environ()). The JIT
	// config variable is always removed from it.
	Env []string
	// Dir is the script's working directory (default: the current one).
	Dir string
	// JobStartedHook is the script run before the job's (see the package
	// comment): tandem-fakerunner takes it from EnvJobStartedHook in its
	// environment, as GitHub's runner does. "": none.
	JobStartedHook string
	// HTTPClient talks to the server (default: a plain client; every
	// request gets its own deadline).
	HTTPClient *http.Client
	// Logger receives progress logs (default: discard).
	Logger *slog.Logger
}

// Run registers as the runner of encodedJIT, runs one job and reports it.
// It returns nil when a job ran to its end, whatever its conclusion. If ctx
// ends while the job runs, the script's process group is killed, the job is
// reported as failed, and Run returns ctx's error.
func Run(ctx context.Context, encodedJIT string, opts Options) error {
	cfg, err := runnerapi.DecodeJITConfig(encodedJIT)
	if err != nil {
		return err
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &client{base: cfg.URL, http: opts.HTTPClient, log: opts.Logger.With("runner", cfg.RunnerName)}
	idleCtx, cancel := context.WithTimeout(ctx, opts.IdleTimeout)
	defer cancel()

	var sess runnerapi.Session
	err = c.retry(idleCtx, func(ctx context.Context) error {
		return c.call(ctx, runnerapi.PathSession, runnerapi.SchemeRunnerToken+" "+cfg.Token, nil, &sess)
	})
	if err != nil {
		return idleErr(ctx, fmt.Errorf("open session: %w", err))
	}
	c.auth = runnerapi.SchemeRunnerSession + " " + sess.Token
	c.log.Info("runner online", "runner_id", sess.RunnerID)

	job, err := c.acquire(idleCtx)
	if err != nil {
		return idleErr(ctx, fmt.Errorf("acquire job: %w", err))
	}
	c.log.Info("job acquired", "job", job.ID, "repo", job.Repo)

	res, runErr := runScript(ctx, c, job, cfg, opts)
	// Report even if ctx ended: the job is ours, and must not stay in progress.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
	defer rcancel()
	path := runnerapi.PathJobs + strconv.FormatInt(job.ID, 10) + "/complete"
	err = c.retry(rctx, func(ctx context.Context) error { return c.call(ctx, path, c.auth, res, nil) })
	if err != nil {
		return fmt.Errorf("report job %d: %w", job.ID, err)
	}
	c.log.Info("job completed", "job", job.ID, "conclusion", res.Conclusion, "exit_code", res.ExitCode)
	if runErr == nil && ctx.Err() != nil {
		return fmt.Errorf("job %d interrupted: %w", job.ID, ctx.Err())
	}
	return runErr
}

// idleErr turns the idle timeout's expiry into ErrNoJob.
func idleErr(parent context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("%w: %w", ErrNoJob, err)
	}
	return err
}

// client speaks the runner protocol.
type client struct {
	base string
	auth string
	http *http.Client
	log  *slog.Logger
}

// statusError is a non-2xx answer.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("http %d: %s", e.code, e.msg) }

func (e *statusError) transient() bool {
	return e.code >= 500 || e.code == http.StatusTooManyRequests || e.code == http.StatusRequestTimeout
}

func (e *statusError) Unwrap() error {
	switch {
	case e.code == http.StatusConflict:
		return ErrConfigUsed
	case !e.transient():
		return ErrRejected
	}
	return nil
}

// errNoContent reports a 204 answer where a body was wanted.
var errNoContent = errors.New("no content")

// call POSTs body (JSON, if not nil) to path and decodes the answer into
// out (if not nil).
func (c *client) call(ctx context.Context, path, auth string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	req.Header.Set("Authorization", auth)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e runnerapi.Error
		_ = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&e)
		return &statusError{code: resp.StatusCode, msg: e.Message}
	}
	if out == nil {
		return nil
	}
	if resp.StatusCode == http.StatusNoContent {
		return errNoContent
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// retry runs f until it succeeds, fails for good, or ctx ends. Network
// errors, 5xx and 429 are retried with backoff.
func (c *client) retry(ctx context.Context, f func(context.Context) error) error {
	backoff := 250 * time.Millisecond
	for {
		err := f(ctx)
		var se *statusError
		switch {
		case err == nil || errors.Is(err, errNoContent):
			return err
		case errors.As(err, &se) && !se.transient():
			return err
		case ctx.Err() != nil:
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		c.log.Debug("retrying", "err", err, "after", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// acquire long-polls for a job until ctx ends.
func (c *client) acquire(ctx context.Context) (runnerapi.Job, error) {
	for {
		wait := maxAcquireWait
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl).Truncate(time.Millisecond))
		}
		if wait <= 0 {
			return runnerapi.Job{}, context.DeadlineExceeded
		}
		var job runnerapi.Job
		err := c.retry(ctx, func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, wait+15*time.Second)
			defer cancel()
			return c.call(rctx, runnerapi.PathAcquire+"?wait="+wait.String(), c.auth, nil, &job)
		})
		switch {
		case err == nil:
			return job, nil
		case !errors.Is(err, errNoContent):
			return job, err
		}
	}
}

// runScript runs the job's script, heartbeating, and returns its report.
// The error is non-nil only if the script could not be started.
func runScript(ctx context.Context, c *client, job runnerapi.Job, cfg runnerapi.JITConfig, opts Options) (runnerapi.Completion, error) {
	out := &tailBuffer{max: runnerapi.MaxOutput}
	fail := func(err error) (runnerapi.Completion, error) {
		return runnerapi.Completion{Conclusion: runnerapi.ConclusionFailure, ExitCode: 127,
			Output: err.Error()}, fmt.Errorf("start script: %w", err)
	}
	env := jobEnv(opts.Env, job, cfg)
	cmd := exec.Command("/bin/sh", "-c", job.Script)
	if hook := opts.JobStartedHook; hook != "" {
		shell := "sh"
		if _, err := exec.LookPath("bash"); err == nil {
			shell = "bash"
		}
		cmd = exec.Command("/bin/sh", "-c", `"$0" -e "$1" || exit; exec /bin/sh -c "$2"`, shell, hook, job.Script)
	}
	cmd.Dir = opts.Dir
	cmd.Env = env
	setProcessGroup(cmd)
	// Own pipes, so that Wait does not wait for background processes that
	// keep them open: those are killed with the group when the script ends.
	outR, outW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fail(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return fail(err)
	}
	var copiers sync.WaitGroup
	for _, p := range []struct {
		r *os.File
		w io.Writer
	}{{outR, opts.Stdout}, {errR, opts.Stderr}} {
		copiers.Go(func() {
			w := io.Writer(out)
			if p.w != nil {
				w = io.MultiWriter(out, p.w)
			}
			_, _ = io.Copy(w, p.r)
		})
	}

	exited := make(chan struct{})
	var cancelled bool
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		cancelled = c.heartbeat(ctx, job.ID, opts.HeartbeatInterval, exited, cmd.Process)
	}()
	_ = cmd.Wait()
	close(exited)
	<-hbDone
	killGroup(cmd.Process) // whatever the script left behind

	drained := make(chan struct{})
	go func() { copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(pipeDrainTimeout):
		// A process outside the group still holds a pipe open.
		outR.Close()
		errR.Close()
		<-drained
	}
	outR.Close()
	errR.Close()

	code := exitCode(cmd.ProcessState)
	res := runnerapi.Completion{Conclusion: runnerapi.ConclusionSuccess, ExitCode: code, Output: out.String()}
	if code != 0 || cancelled {
		res.Conclusion = runnerapi.ConclusionFailure
	}
	return res, nil
}

// heartbeat reports the job alive every interval until exited closes. It
// kills the script's process group when the job is cancelled or ctx ends,
// and reports whether the job was cancelled.
func (c *client) heartbeat(ctx context.Context, id int64, every time.Duration, exited <-chan struct{}, p *os.Process) bool {
	path := runnerapi.PathJobs + strconv.FormatInt(id, 10) + "/heartbeat"
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-exited:
			return false
		case <-ctx.Done():
			killGroup(p)
			<-exited
			return false
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, every+5*time.Second)
		var hb runnerapi.Heartbeat
		err := c.call(hctx, path, c.auth, nil, &hb)
		cancel()
		if err != nil {
			c.log.Warn("heartbeat failed", "job", id, "err", err)
			continue
		}
		if hb.Cancelled {
			c.log.Info("job cancelled", "job", id)
			killGroup(p)
			<-exited
			return true
		}
	}
}

// EnvJobStartedHook names a script the runner runs before each job (GitHub
// documents it in "Running scripts before or after a job").
const EnvJobStartedHook = "ACTIONS_RUNNER_HOOK_JOB_STARTED"

// jobEnv is the script's environment: base (or ours) without the JIT
// config, plus what a job expects to find.
func jobEnv(base []string, job runnerapi.Job, cfg runnerapi.JITConfig) []string {
	if base == nil {
		base = os.Environ()
	}
	env := make([]string, 0, len(base)+6)
	for _, kv := range base {
		if !strings.HasPrefix(kv, runnerapi.EnvJITConfig+"=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"CI=true",
		"GITHUB_ACTIONS=true",
		"GITHUB_REPOSITORY="+job.Repo,
		"GITHUB_RUN_ID="+strconv.FormatInt(job.RunID, 10),
		"GITHUB_RUN_ATTEMPT="+strconv.Itoa(max(job.RunAttempt, 1)),
		"GITHUB_JOB="+job.Name,
		"RUNNER_NAME="+cfg.RunnerName,
	)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) > b.max {
		return string(b.buf[len(b.buf)-b.max:])
	}
	return string(b.buf)
}
