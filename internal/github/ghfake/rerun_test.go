package ghfake_test

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// runState is a workflow run as GET .../actions/runs/{id} shows it.
type runState struct {
	Status     string  `json:"status"`
	Conclusion *string `json:"conclusion"`
	RunAttempt int     `json:"run_attempt"`
}

// jobList is a jobs listing.
type jobList struct {
	TotalCount int `json:"total_count"`
	Jobs       []struct {
		ID         int64  `json:"id"`
		Name       string `json:"name"`
		RunAttempt int    `json:"run_attempt"`
	} `json:"jobs"`
}

// ids lists the listing's job ids, in order.
func (l jobList) ids() []int64 {
	var out []int64
	for _, j := range l.Jobs {
		out = append(out, j.ID)
	}
	return out
}

// refused checks a refusal's status and message.
func refused(t *testing.T, what string, resp *http.Response, body []byte, code int, msg string) {
	t.Helper()
	if resp.StatusCode != code || !strings.Contains(string(body), msg) {
		t.Errorf("%s: %d %s, want %d %q", what, resp.StatusCode, body, code, msg)
	}
}

// Re-running a job through the REST API, with an installation token: the
// rules in order (scope, permission, job, state), then the new attempt and
// its new job, its webhook, the run back in progress, the listings by
// attempt, and the new job run by a runner of the original's group.
func TestRerunJob(t *testing.T) {
	f := newFixture(t)
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	bob := f.srv.AddInstallation("bob", ghfake.AccountUser, "bob/lib")
	gpu, err := f.srv.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "GPU"})
	if err != nil {
		t.Fatal(err)
	}
	tok, bobTok := f.token(inst), f.token(bob)
	runID, ids, err := f.srv.QueueRun("acme/app",
		ghfake.JobSpec{Name: "test", Labels: []string{"gpu"}, Script: "make test", RunnerGroup: "GPU"},
		ghfake.JobSpec{Name: "lint", Labels: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	testJob, lintJob := ids[0], ids[1]
	bobJob, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "bob/lib", Labels: []string{"x"}})
	strayJob, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "carol/tools", Labels: []string{"x"}}) // no installation
	rerun := func(auth, repo string, id int64, body any) (*http.Response, []byte) {
		t.Helper()
		return f.do("POST", fmt.Sprintf("/repos/%s/actions/jobs/%d/rerun", repo, id), auth, body)
	}
	run := func() runState {
		t.Helper()
		var rs runState
		f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d", runID), tok, nil, &rs)
		return rs
	}
	jobs := func(path string) jobList {
		t.Helper()
		var l jobList
		f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/%s", runID, path), tok, nil, &l)
		return l
	}

	// Repositories the token cannot see are Not Found, before anything else.
	for _, tc := range []struct {
		auth, repo string
		id         int64
	}{
		{tok, "bob/lib", bobJob},
		{bobTok, "acme/app", testJob},
		{tok, "carol/tools", strayJob},
	} {
		resp, body := rerun(tc.auth, tc.repo, tc.id, nil)
		refused(t, "rerun in "+tc.repo, resp, body, 404, "Not Found")
	}
	// actions: read is not enough, whatever the job.
	for _, id := range []int64{testJob, 1} {
		resp, body := rerun(tok, "acme/app", id, nil)
		refused(t, "rerun with actions: read", resp, body, 403, "Resource not accessible by integration")
	}
	if err := f.srv.SetPermissions(inst, map[string]string{"actions": "write"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{1, bobJob, strayJob} {
		resp, body := rerun(tok, "acme/app", id, nil)
		refused(t, fmt.Sprintf("rerun of job %d, not acme/app's", id), resp, body, 404, "Not Found")
	}
	resp, body := rerun(tok, "acme/app", lintJob, nil)
	refused(t, "rerun of a queued run's job", resp, body, 403, "This workflow is already running")
	for _, bad := range []any{"not an object", map[string]any{"enable_debug_logging": "yes"}} {
		resp, body := rerun(tok, "acme/app", testJob, bad)
		refused(t, fmt.Sprintf("rerun with body %v", bad), resp, body, 400, "Problems parsing JSON")
	}

	// The run completes: test fails, lint succeeds.
	gpuRunner := f.groupRunner(tok, "gpu-1", gpu, "gpu")
	lintRunner := f.session(f.jit(tok, "/repos/acme/app", "lint-1", "x").EncodedJITConfig)
	if got := f.acquire(gpuRunner, time.Second); got != testJob {
		t.Fatalf("the GPU runner took %d, want %d", got, testJob)
	}
	if got := f.acquire(lintRunner, time.Second); got != lintJob {
		t.Fatalf("the lint runner took %d, want %d", got, lintJob)
	}
	resp, body = rerun(tok, "acme/app", lintJob, nil)
	refused(t, "rerun of an in-progress run's job", resp, body, 403, "This workflow is already running")
	f.complete(gpuRunner, testJob, "failure")
	f.complete(lintRunner, lintJob, "success")
	if rs := run(); rs.Status != "completed" || rs.Conclusion == nil || *rs.Conclusion != "failure" || rs.RunAttempt != 1 {
		t.Fatalf("run before the re-run: %+v", rs)
	}

	// Re-run the failed job.
	resp, body = rerun(tok, "acme/app", testJob, map[string]any{"enable_debug_logging": true})
	if resp.StatusCode != http.StatusCreated || strings.TrimSpace(string(body)) != "{}" {
		t.Fatalf("rerun: %d %s, want 201 {}", resp.StatusCode, body)
	}
	old := f.job(testJob)
	if old.RerunAs == 0 || old.RerunAs == testJob || old.RunAttempt != 1 || old.Conclusion != ghfake.ConclusionFailure {
		t.Fatalf("re-run job: %+v", old)
	}
	newJob := old.RerunAs
	nj := f.job(newJob)
	if nj.RerunOf != testJob || nj.RunAttempt != 2 || nj.RunID != runID || nj.Name != "test" || nj.Script != "make test" ||
		strings.Join(nj.Labels, ",") != "gpu" || nj.Status != ghfake.StatusQueued || nj.RunnerID != 0 || nj.Claims != 0 {
		t.Fatalf("new job: %+v", nj)
	}
	if rs := run(); rs.Status != "in_progress" || rs.Conclusion != nil || rs.RunAttempt != 2 {
		t.Errorf("run after the re-run: %+v", rs)
	}
	var one struct {
		ID         int64  `json:"id"`
		RunAttempt int    `json:"run_attempt"`
		Status     string `json:"status"`
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/jobs/%d", newJob), tok, nil, &one)
	if one.RunAttempt != 2 || one.Status != "queued" {
		t.Errorf("GET new job: %+v", one)
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/jobs/%d", testJob), tok, nil, &one)
	if one.RunAttempt != 1 || one.Status != "completed" {
		t.Errorf("GET re-run job: %+v", one)
	}
	// While it runs again, neither job can be re-run.
	for _, id := range []int64{testJob, newJob, lintJob} {
		resp, body := rerun(tok, "acme/app", id, nil)
		refused(t, fmt.Sprintf("rerun of job %d while attempt 2 runs", id), resp, body, 403, "This workflow is already running")
	}

	// Listings: latest (the default) has each job's newest attempt.
	eq := func(what string, got []int64, want ...int64) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: jobs %v, want %v", what, got, want)
		}
	}
	eq("jobs", jobs("jobs").ids(), lintJob, newJob)
	eq("filter=latest", jobs("jobs?filter=latest").ids(), lintJob, newJob)
	eq("filter=all", jobs("jobs?filter=all").ids(), testJob, lintJob, newJob)
	eq("attempt 1", jobs("attempts/1/jobs").ids(), testJob, lintJob)
	if l := jobs("attempts/2/jobs"); fmt.Sprint(l.ids()) != fmt.Sprint([]int64{lintJob, newJob}) ||
		l.Jobs[0].RunAttempt != 1 || l.Jobs[1].RunAttempt != 2 {
		t.Errorf("attempt 2: %+v", l)
	}
	f.expect(404, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/attempts/3/jobs", runID), tok, nil, nil)

	// The webhook: a queued job of attempt 2, with a new id.
	f.srv.Flush()
	var queued []int64
	for _, h := range f.sink.jobHooks(t) {
		if h.Action != "queued" || h.WorkflowJob.RunID != runID {
			continue
		}
		queued = append(queued, h.WorkflowJob.ID)
		want := 1
		if h.WorkflowJob.ID == newJob {
			want = 2
		}
		if h.WorkflowJob.RunAttempt != want || h.WorkflowJob.Status != "queued" {
			t.Errorf("queued webhook: %+v", h.WorkflowJob)
		}
	}
	slices.Sort(queued) // webhooks may arrive in any order
	eq("queued webhooks", queued, testJob, lintJob, newJob)

	// Only a runner of the job's group takes it; it completes the run.
	idle := f.groupRunner(tok, "default-1", 1, "gpu")
	if got := f.acquire(idle, 200*time.Millisecond); got != 0 {
		t.Fatalf("a Default-group runner took job %d", got)
	}
	gpuRunner = f.groupRunner(tok, "gpu-2", gpu, "gpu")
	if got := f.acquire(gpuRunner, time.Second); got != newJob {
		t.Fatalf("the GPU runner took %d, want the re-run job %d", got, newJob)
	}
	if nj := f.job(newJob); nj.Status != ghfake.StatusInProgress || nj.RunnerGroupID != gpu || nj.Claims != 1 {
		t.Errorf("new job in progress: %+v", nj)
	}
	f.complete(gpuRunner, newJob, "success")
	if rs := run(); rs.Status != "completed" || rs.Conclusion == nil || *rs.Conclusion != "success" || rs.RunAttempt != 2 {
		t.Errorf("run after the re-run job succeeded: %+v", rs)
	}
	if old := f.job(testJob); old.Conclusion != ghfake.ConclusionFailure || old.RunAttempt != 1 {
		t.Errorf("re-run job changed: %+v", old)
	}

	// An older attempt's job cannot be re-run; the latest attempt's can,
	// the job of attempt 1 that attempt 2 did not re-run included.
	resp, body = rerun(tok, "acme/app", testJob, nil)
	refused(t, "rerun of a re-run job", resp, body, 403, "already re-run")
	f.expect(201, "POST", fmt.Sprintf("/repos/acme/app/actions/jobs/%d/rerun", lintJob), tok, nil, nil)
	lint3 := f.job(lintJob).RerunAs
	if j := f.job(lint3); j.RunAttempt != 3 || j.Name != "lint" {
		t.Errorf("lint re-run: %+v", j)
	}
	eq("attempt 3", jobs("attempts/3/jobs").ids(), newJob, lint3)
	eq("attempt 2, after 3", jobs("attempts/2/jobs").ids(), lintJob, newJob)
}

// The Go control API re-runs jobs as a user does: no App permission, the
// same rules, a webhook only where the App is installed, subject to Faults.
func TestRerunJobControl(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	jobID, runID := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	if _, err := f.srv.RerunJob(jobID); !errors.Is(err, ghfake.ErrInvalid) || !strings.Contains(err.Error(), "already running") {
		t.Errorf("rerun of a queued job: %v, want ErrInvalid", err)
	}
	if _, err := f.srv.RerunJob(12345); !errors.Is(err, ghfake.ErrNotFound) {
		t.Errorf("rerun of an unknown job: %v, want ErrNotFound", err)
	}
	if err := f.srv.CancelJob(jobID); err != nil {
		t.Fatal(err)
	}
	f.srv.Flush()
	before := len(f.sink.hooks())

	// Faults apply to the new job's webhook.
	f.srv.SetFaults(ghfake.Faults{Lose: 1})
	second, err := f.srv.RerunJob(jobID)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.SetFaults(ghfake.Faults{})
	f.srv.Flush()
	if n := len(f.sink.hooks()); n != before {
		t.Errorf("%d webhooks arrived with Lose: 1, want %d", n, before)
	}
	if j := f.job(second); j.RunAttempt != 2 || j.RerunOf != jobID || j.RunID != runID || j.Status != ghfake.StatusQueued {
		t.Errorf("re-run job: %+v", j)
	}
	if _, err := f.srv.RerunJob(jobID); !errors.Is(err, ghfake.ErrInvalid) {
		t.Errorf("rerun while attempt 2 is queued: %v", err)
	}

	// Through the HTTP control API, up to GitHub's limit of 50 re-runs.
	last := second
	for attempt := 3; attempt <= 51; attempt++ {
		if err := f.srv.CancelJob(last); err != nil {
			t.Fatal(err)
		}
		var out struct {
			JobID int64 `json:"job_id"`
		}
		f.expect(201, "POST", fmt.Sprintf("/_ghfake/jobs/%d/rerun", last), "", nil, &out)
		if j := f.job(out.JobID); j.RunAttempt != attempt || j.RerunOf != last {
			t.Fatalf("attempt %d: %+v", attempt, j)
		}
		last = out.JobID
	}
	if err := f.srv.CancelJob(last); err != nil {
		t.Fatal(err)
	}
	resp, body := f.do("POST", fmt.Sprintf("/_ghfake/jobs/%d/rerun", last), "", nil)
	refused(t, "the 51st re-run", resp, body, 422, "maximum of 50")
	resp, body = f.do("POST", fmt.Sprintf("/_ghfake/jobs/%d/rerun", jobID), "", nil)
	refused(t, "rerun of attempt 1's job", resp, body, 422, "already re-run")
	f.expect(404, "POST", "/_ghfake/jobs/12345/rerun", "", nil, nil)

	// Where the App is not installed, the job runs again without a webhook.
	stray, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "carol/tools", Labels: []string{"x"}})
	if err := f.srv.CancelJob(stray); err != nil {
		t.Fatal(err)
	}
	f.srv.Flush()
	before = len(f.sink.hooks())
	again, err := f.srv.RerunJob(stray)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Flush()
	if n := len(f.sink.hooks()); n != before || f.job(again).Status != ghfake.StatusQueued {
		t.Errorf("stray re-run: %d webhooks (want %d), job %+v", n, before, f.job(again))
	}
}
