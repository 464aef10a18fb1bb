package ghfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

func TestFakeRunnerEndToEnd(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	jobID, runID := f.srv.QueueJob(ghfake.JobSpec{
		Repo: "acme/app", Labels: []string{"tandem-2cpu"}, Name: "test",
		Script: `echo "hello from $GITHUB_REPOSITORY"; echo oops >&2; exit 0`,
	})
	a := f.jit(tok, "/orgs/acme", "vm-1", "tandem-2cpu", "extra")
	var stdout bytes.Buffer
	err := fakerunner.Run(context.Background(), a.EncodedJITConfig, fakerunner.Options{
		Stdout: &stdout, IdleTimeout: 10 * time.Second, HeartbeatInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	j := f.job(jobID)
	if j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionSuccess || j.RunID != runID ||
		j.RunnerName != "vm-1" || j.RunnerID != a.Runner.ID || j.Claims != 1 || j.ExitCode != 0 {
		t.Fatalf("job = %+v", j)
	}
	if !strings.Contains(j.Output, "hello from acme/app") || !strings.Contains(j.Output, "oops") {
		t.Errorf("output = %q", j.Output)
	}
	if !strings.Contains(stdout.String(), "hello from acme/app") {
		t.Errorf("stdout = %q", stdout.String())
	}
	if j.StartedAt.Before(j.CreatedAt) || j.CompletedAt.Before(j.StartedAt) {
		t.Errorf("timestamps out of order: %+v", j)
	}
	if len(f.srv.Runners()) != 0 {
		t.Errorf("ephemeral runner still registered: %+v", f.srv.Runners())
	}
	// The JIT config is single use.
	err = fakerunner.Run(context.Background(), a.EncodedJITConfig, fakerunner.Options{IdleTimeout: 5 * time.Second})
	if !errors.Is(err, fakerunner.ErrConfigUsed) {
		t.Errorf("second Run: %v, want ErrConfigUsed", err)
	}
	f.srv.Quiesce()
	var actions []string
	for _, h := range f.sink.jobHooks(t) {
		actions = append(actions, h.Action)
	}
	slices.Sort(actions)
	if got := strings.Join(actions, ","); got != "completed,in_progress,queued" {
		t.Errorf("webhook actions = %s", got)
	}
}

func TestSessionRecordsStart(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	a := f.jit(tok, "/repos/acme/app", "r", "x")
	if rs := f.srv.Runners(); len(rs) != 1 || rs[0].Status != "offline" || !rs[0].SessionAt.IsZero() {
		t.Fatalf("before session: %+v", rs)
	}
	before := f.clock.Now()
	sess := f.session(a.EncodedJITConfig)
	rs := f.srv.Runners()
	if rs[0].Status != "online" || rs[0].SessionAt.Before(before.Add(-time.Second)) || rs[0].Scope != "acme/app" {
		t.Fatalf("after session: %+v", rs)
	}
	cfg, _ := runnerapi.DecodeJITConfig(a.EncodedJITConfig)
	f.expect(409, "POST", runnerapi.PathSession, runnerapi.SchemeRunnerToken+" "+cfg.Token, nil, nil)
	f.expect(401, "POST", runnerapi.PathAcquire, "RunnerSession bogus", nil, nil)
	f.expect(400, "POST", runnerapi.PathAcquire+"?wait=soon", sess, nil, nil)
	f.expect(404, "POST", runnerapi.PathJobs+"1/heartbeat", sess, nil, nil)
}

// TestAnyRunnerTakesAnyMatchingJob shows GitHub's awkward part: the runner
// created for job A may well take job B.
func TestAnyRunnerTakesAnyMatchingJob(t *testing.T) {
	crossed, straight := 0, 0
	for seed := range int64(16) {
		f := newFixture(t, func(c *ghfake.Config) { c.Seed = seed; c.WebhookURL = "" })
		tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
		jobA, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})
		jobB, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})
		forA := f.session(f.jit(tok, "/repos/acme/app", "for-a", "tandem").EncodedJITConfig)
		forB := f.session(f.jit(tok, "/repos/acme/app", "for-b", "tandem").EncodedJITConfig)
		gotA, gotB := f.acquire(forA, time.Second), f.acquire(forB, time.Second)
		switch {
		case gotA == jobA && gotB == jobB:
			straight++
		case gotA == jobB && gotB == jobA:
			crossed++
		default:
			t.Fatalf("seed %d: runner for A got %d, for B got %d (jobs %d, %d)", seed, gotA, gotB, jobA, jobB)
		}
		if f.job(jobA).Claims != 1 || f.job(jobB).Claims != 1 {
			t.Fatalf("seed %d: claims %d, %d", seed, f.job(jobA).Claims, f.job(jobB).Claims)
		}
		// A retried acquire returns the same job, not another one.
		if again := f.acquire(forA, 0); again != gotA {
			t.Fatalf("retried acquire gave %d, want %d", again, gotA)
		}
	}
	if crossed == 0 || straight == 0 {
		t.Fatalf("over 16 seeds: %d crossed, %d straight; want both", crossed, straight)
	}
}

func TestRunnersTakeJobsConcurrently(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web"))
	const n = 8
	var jits []string
	for i := range n {
		jits = append(jits, f.jit(tok, "/orgs/acme", fmt.Sprintf("r%d", i), "tandem", "linux").EncodedJITConfig)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, j := range jits {
		wg.Go(func() {
			errs <- fakerunner.Run(context.Background(), j, fakerunner.Options{IdleTimeout: 20 * time.Second})
		})
	}
	var ids []int64
	for i := range n {
		id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: []string{"acme/app", "acme/web"}[i%2],
			Labels: []string{"TANDEM"}, Script: "true"})
		ids = append(ids, id)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("runner: %v", err)
		}
	}
	runners := map[string]bool{}
	for _, id := range ids {
		j := f.job(id)
		if j.Conclusion != ghfake.ConclusionSuccess || j.Claims != 1 {
			t.Errorf("job %d: %+v", id, j)
		}
		if runners[j.RunnerName] {
			t.Errorf("runner %s ran two jobs", j.RunnerName)
		}
		runners[j.RunnerName] = true
	}
}

func TestMatching(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web"))
	f.srv.AddInstallation("bob", ghfake.AccountUser, "bob/lib")
	job, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/web", Labels: []string{"tandem", "arm64"}})
	bobJob, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "bob/lib", Labels: []string{"tandem"}})

	lacking := f.session(f.jit(tok, "/orgs/acme", "lacking", "tandem", "amd64").EncodedJITConfig)
	otherRepo := f.session(f.jit(tok, "/repos/acme/app", "other-repo", "tandem", "arm64").EncodedJITConfig)
	offline := f.jit(tok, "/repos/acme/web", "offline", "tandem", "arm64")
	for name, sess := range map[string]string{"lacking a label": lacking, "other repo": otherRepo} {
		if got := f.acquire(sess, 150*time.Millisecond); got != 0 {
			t.Errorf("runner %s took job %d", name, got)
		}
	}
	if j := f.job(job); j.Status != ghfake.StatusQueued {
		t.Fatalf("job %+v", j)
	}
	_ = offline // registered but never online: it must not be handed anything
	orgRunner := f.session(f.jit(tok, "/orgs/acme", "org", "ARM64", "Tandem", "big").EncodedJITConfig)
	if got := f.acquire(orgRunner, time.Second); got != job {
		t.Fatalf("org runner took %d, want %d", got, job)
	}
	if j := f.job(bobJob); j.Status != ghfake.StatusQueued {
		t.Errorf("acme's runners touched bob's job: %+v", j)
	}
}

func TestLongPollWakes(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	sess := f.session(f.jit(tok, "/repos/acme/app", "r", "x").EncodedJITConfig)
	got := make(chan int64, 1)
	start := time.Now()
	go func() { got <- f.acquire(sess, 20*time.Second) }()
	time.Sleep(100 * time.Millisecond)
	id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	select {
	case g := <-got:
		if g != id {
			t.Fatalf("got %d, want %d", g, id)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("long poll took %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll was not woken")
	}
}

func TestCancelQueued(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	if err := f.srv.CancelJob(id); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.CancelJob(1); !errors.Is(err, ghfake.ErrNotFound) {
		t.Errorf("CancelJob(unknown) = %v", err)
	}
	j := f.job(id)
	if j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionCancelled || j.RunnerName != "" || j.Claims != 0 {
		t.Fatalf("job = %+v", j)
	}
	f.srv.Quiesce()
	hooks := f.sink.jobHooks(t)
	var completed *jobHook
	for i := range hooks {
		if hooks[i].Action == "completed" {
			completed = &hooks[i]
		}
	}
	if completed == nil || completed.WorkflowJob.Conclusion == nil || *completed.WorkflowJob.Conclusion != "cancelled" ||
		completed.WorkflowJob.RunnerName != nil || completed.WorkflowJob.RunnerID != nil {
		t.Fatalf("completed webhook = %+v", completed)
	}
}

func TestCancelInProgress(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"},
		Script: "echo started; sleep 60 & wait"})
	a := f.jit(tok, "/repos/acme/app", "r", "x")
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- fakerunner.Run(context.Background(), a.EncodedJITConfig, fakerunner.Options{
			IdleTimeout: 10 * time.Second, HeartbeatInterval: 50 * time.Millisecond,
		})
	}()
	waitFor(t, "job in progress", func() bool { return f.job(id).Status == ghfake.StatusInProgress })
	if err := f.srv.CancelJob(id); err != nil {
		t.Fatal(err)
	}
	if j := f.job(id); j.Status != ghfake.StatusInProgress || !j.CancelRequested {
		t.Fatalf("job right after cancel = %+v", j)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("runner did not stop the cancelled job")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("cancellation took %s", d)
	}
	j := f.job(id)
	if j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionCancelled || j.RunnerName != "r" {
		t.Fatalf("job = %+v", j)
	}
}

func TestCloseEndsLongPolls(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	sess := f.session(f.jit(tok, "/repos/acme/app", "r", "x").EncodedJITConfig)
	f.srv.SetFaults(ghfake.Faults{MaxDelay: time.Hour, Reorder: 0.5})
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"other"}})
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"other"}})
	got := make(chan int, 1)
	go func() {
		resp, _ := f.do("POST", runnerapi.PathAcquire+"?wait=50s", sess, nil)
		got <- resp.StatusCode
	}()
	time.Sleep(100 * time.Millisecond)
	closed := make(chan struct{})
	go func() { f.srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on delayed webhooks")
	}
	select {
	case code := <-got:
		if code == 200 {
			t.Errorf("acquire after close: %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the long poll")
	}
	if id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}}); id != 0 {
		t.Errorf("QueueJob after Close = %d", id)
	}
	f.srv.Quiesce() // must not hang
	f.srv.Close()   // idempotent
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Run("busy server", func(t *testing.T) {
		f := newFixture(t)
		tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
		f.srv.SetFaults(ghfake.Faults{Duplicate: 0.5, Reorder: 0.5, MaxDelay: 50 * time.Millisecond})
		id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}, Script: "true"})
		if err := fakerunner.Run(context.Background(), f.jit(tok, "/orgs/acme", "r", "x").EncodedJITConfig,
			fakerunner.Options{IdleTimeout: 10 * time.Second}); err != nil {
			t.Fatal(err)
		}
		if f.job(id).Conclusion != ghfake.ConclusionSuccess {
			t.Fatalf("job = %+v", f.job(id))
		}
		f.srv.SetFaults(ghfake.Faults{MaxDelay: time.Hour})
		f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"y"}})
		sess := f.session(f.jit(tok, "/orgs/acme", "idle", "z").EncodedJITConfig)
		go f.do("POST", runnerapi.PathAcquire+"?wait=60s", sess, nil)
		time.Sleep(50 * time.Millisecond)
	})
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A runner that stops heartbeating loses its job, as on GitHub: the job
// fails, annotated, and the runner is removed. A runner that heartbeats
// keeps its job however long it runs.
func TestSilentRunnerLosesItsJob(t *testing.T) {
	f := newFixture(t, func(c *ghfake.Config) { c.RunnerLostAfter = 300 * time.Millisecond })
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))

	alive, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}, Script: "sleep 1"})
	a := f.jit(tok, "/orgs/acme", "vm-alive", "tandem")
	if err := fakerunner.Run(context.Background(), a.EncodedJITConfig, fakerunner.Options{
		IdleTimeout: 10 * time.Second, HeartbeatInterval: 50 * time.Millisecond}); err != nil {
		t.Fatalf("a heartbeating runner: %v", err)
	}
	if j := f.job(alive); j.Conclusion != ghfake.ConclusionSuccess || j.Annotation != "" {
		t.Errorf("a heartbeating runner's job: %+v", j)
	}

	silent, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}, Script: "sleep 2"})
	a = f.jit(tok, "/orgs/acme", "vm-silent", "tandem")
	// Its first heartbeat would come after GitHub has given up.
	err := fakerunner.Run(context.Background(), a.EncodedJITConfig, fakerunner.Options{
		IdleTimeout: 10 * time.Second, HeartbeatInterval: time.Minute})
	j := f.job(silent)
	if j.Status != ghfake.StatusCompleted || j.Conclusion != ghfake.ConclusionFailure ||
		!strings.Contains(j.Annotation, "vm-silent lost communication with the server") {
		t.Errorf("a silent runner's job: %+v", j)
	}
	if err == nil {
		t.Error("the silent runner's report of its job was accepted after GitHub gave up on it")
	}
	if rs := f.srv.Runners(); len(rs) != 0 {
		t.Errorf("the lost runner is still registered: %+v", rs)
	}
	f.srv.Quiesce()
	var got []string // deliveries may arrive in any order
	for _, h := range f.sink.jobHooks(t) {
		if h.WorkflowJob.ID == silent {
			c := ""
			if h.WorkflowJob.Conclusion != nil {
				c = *h.WorkflowJob.Conclusion
			}
			got = append(got, h.Action+"/"+c)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"completed/failure", "in_progress/", "queued/"}) {
		t.Errorf("webhooks of the lost job: %v", got)
	}
}

// A job that deploys to an environment with a required reviewer waits, as
// on GitHub: a "waiting" webhook with status waiting, a run that is
// waiting, no runner takes it, and approving it queues it (a "queued"
// webhook) for a runner to take. Approving it twice is refused.
func TestApprovalWait(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	job, runID := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}, Environment: "production"})
	sess := f.session(f.jit(tok, "/repos/acme/app", "r", "x").EncodedJITConfig)
	if got := f.acquire(sess, 200*time.Millisecond); got != 0 {
		t.Fatalf("a runner took job %d while it waited for approval", got)
	}
	if j := f.job(job); j.Status != ghfake.StatusWaiting {
		t.Fatalf("job %+v, want waiting", j)
	}
	var run struct {
		Status string `json:"status"`
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d", runID), tok, nil, &run)
	if run.Status != "waiting" {
		t.Errorf("run status %q, want waiting", run.Status)
	}
	if err := f.srv.ApproveJob(job); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.ApproveJob(job); !errors.Is(err, ghfake.ErrInvalid) {
		t.Errorf("approving a queued job: %v", err)
	}
	if got := f.acquire(sess, 5*time.Second); got != job {
		t.Fatalf("after approval the runner took %d, want %d", got, job)
	}
	f.srv.Flush()
	var seen []string
	for _, h := range f.sink.jobHooks(t) {
		seen = append(seen, h.Action+"/"+h.WorkflowJob.Status)
	}
	slices.Sort(seen) // deliveries run concurrently, and arrive in any order, as GitHub's do
	if want := []string{"in_progress/in_progress", "queued/queued", "waiting/waiting"}; !slices.Equal(seen, want) {
		t.Errorf("webhooks %v, want %v", seen, want)
	}
}

// Suspending an installation sends "suspend", refuses its tokens and
// silences its webhooks until "unsuspend"; removing repositories sends
// installation_repositories "removed"; uninstalling sends "deleted" and
// its tokens stop working.
func TestInstallationChanges(t *testing.T) {
	f := newFixture(t)
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web")
	tok := f.token(inst)
	if err := f.srv.SuspendInstallation(inst, true); err != nil {
		t.Fatal(err)
	}
	f.expect(401, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(403, "POST", fmt.Sprintf("/app/installations/%d/access_tokens", inst), "Bearer "+f.jwt(), nil, nil)
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}}) // no webhook while suspended
	if err := f.srv.SuspendInstallation(inst, false); err != nil {
		t.Fatal(err)
	}
	tok = f.token(inst)
	if err := f.srv.RemoveRepos(inst, "acme/web"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.RemoveRepos(inst, "acme/web"); !errors.Is(err, ghfake.ErrInvalid) {
		t.Errorf("removing a repository twice: %v", err)
	}
	if err := f.srv.RemoveInstallation(inst); err != nil {
		t.Fatal(err)
	}
	f.expect(401, "GET", "/installation/repositories", tok, nil, nil)
	f.srv.Flush()
	var got []string
	for _, h := range f.sink.hooks() {
		var p struct {
			Action  string `json:"action"`
			Removed []struct {
				FullName string `json:"full_name"`
			} `json:"repositories_removed"`
		}
		json.Unmarshal(h.Body, &p)
		e := h.Header.Get("X-GitHub-Event") + "/" + p.Action
		for _, r := range p.Removed {
			e += ":" + r.FullName
		}
		got = append(got, e)
	}
	slices.Sort(got) // deliveries arrive in any order
	want := []string{"installation/deleted", "installation/suspend", "installation/unsuspend", "installation_repositories/removed:acme/web"}
	if !slices.Equal(got, want) {
		t.Errorf("webhooks %v, want %v", got, want)
	}
}
