package ghfake_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v89/github"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// TestGoGitHub drives ghfake with go-github, a client written against the
// real API: shapes, status codes, pagination and rate-limit errors must be
// what it expects.
func TestGoGitHub(t *testing.T) {
	f := newFixture(t)
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	ctx := context.Background()
	client := func(auth string) *github.Client {
		// ghfake serves at the API root, as api.github.com does.
		base := f.api.URL + "/"
		c, err := github.NewClient(github.WithAuthToken(auth), github.WithURLs(&base, &base),
			github.WithDisableRateLimitCheck())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	app := client(f.jwt())

	// GET /app: the App, its permissions and events.
	a, _, err := app.Apps.Get(ctx, "")
	if err != nil || a.GetID() != appID || a.GetPermissions().GetAdministration() != "write" ||
		a.GetPermissions().GetOrganizationSelfHostedRunners() != "write" || len(a.Events) != 1 || a.Events[0] != "workflow_job" ||
		a.GetInstallationsCount() != 1 {
		t.Fatalf("Apps.Get = %+v, %v", a, err)
	}
	if _, _, err := client("not-a-jwt").Apps.Get(ctx, ""); err == nil {
		t.Fatal("GET /app without the App's JWT succeeded")
	}

	insts, _, err := app.Apps.ListInstallations(ctx, nil)
	if err != nil || len(insts) != 1 || insts[0].GetID() != inst || insts[0].GetAccount().GetLogin() != "acme" {
		t.Fatalf("ListInstallations = %v, %v", insts, err)
	}
	tok, _, err := app.Apps.CreateInstallationToken(ctx, inst, nil)
	if err != nil || tok.GetToken() == "" || tok.GetExpiresAt().Before(time.Now()) {
		t.Fatalf("CreateInstallationToken = %v, %v", tok, err)
	}
	gh := client(tok.GetToken())

	repos, _, err := gh.Apps.ListRepos(ctx, nil)
	if err != nil || repos.GetTotalCount() != 1 || repos.Repositories[0].GetFullName() != "acme/app" {
		t.Fatalf("ListRepos = %+v, %v", repos, err)
	}
	jit, _, err := gh.Actions.CreateOrgJITConfig(ctx, "acme", github.CreateJITConfigRequest{
		Name: "vm-1", RunnerGroupID: 1, Labels: []string{"tandem"},
	})
	if err != nil || jit.GetRunner().GetID() == 0 || jit.GetEncodedJITConfig() == "" {
		t.Fatalf("CreateOrgJITConfig = %+v, %v", jit, err)
	}
	_, _, err = gh.Actions.CreateOrgJITConfig(ctx, "acme", github.CreateJITConfigRequest{
		Name: "vm-1", RunnerGroupID: 1, Labels: []string{"tandem"},
	})
	var ghErr *github.ErrorResponse
	if !errors.As(err, &ghErr) || ghErr.Response.StatusCode != http.StatusConflict {
		t.Fatalf("duplicate JIT config: %v", err)
	}
	for i := range 3 {
		if _, _, err := gh.Actions.CreateRepoJITConfig(ctx, "acme", "app", github.CreateJITConfigRequest{
			Name: "r" + string(rune('a'+i)), RunnerGroupID: 1, Labels: []string{"x"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	runners, resp, err := gh.Actions.ListRunners(ctx, "acme", "app", &github.ListRunnersOptions{ListOptions: github.ListOptions{PerPage: 2}})
	if err != nil || runners.TotalCount != 3 || len(runners.Runners) != 2 || resp.NextPage != 2 || resp.LastPage != 2 {
		t.Fatalf("ListRunners = %+v, next %d, %v", runners, resp.NextPage, err)
	}
	orgRunners, _, err := gh.Actions.ListOrganizationRunners(ctx, "acme", nil)
	if err != nil || orgRunners.TotalCount != 1 || orgRunners.Runners[0].GetName() != "vm-1" {
		t.Fatalf("ListOrganizationRunners = %+v, %v", orgRunners, err)
	}
	if _, err := gh.Actions.RemoveOrganizationRunner(ctx, "acme", jit.GetRunner().GetID()); err != nil {
		t.Fatalf("RemoveOrganizationRunner: %v", err)
	}

	jobID, runID := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	runs, _, err := gh.Actions.ListRepositoryWorkflowRuns(ctx, "acme", "app", &github.ListWorkflowRunsOptions{Status: "queued"})
	if err != nil || runs.GetTotalCount() != 1 || runs.WorkflowRuns[0].GetID() != runID {
		t.Fatalf("ListRepositoryWorkflowRuns = %+v, %v", runs, err)
	}
	jobs, _, err := gh.Actions.ListWorkflowJobs(ctx, "acme", "app", runID, nil)
	if err != nil || jobs.GetTotalCount() != 1 || jobs.Jobs[0].GetID() != jobID || jobs.Jobs[0].GetStatus() != "queued" {
		t.Fatalf("ListWorkflowJobs = %+v, %v", jobs, err)
	}
	job, _, err := gh.Actions.GetWorkflowJobByID(ctx, "acme", "app", jobID)
	if err != nil || job.GetRunID() != runID || len(job.Labels) != 1 {
		t.Fatalf("GetWorkflowJobByID = %+v, %v", job, err)
	}

	// Deliveries with cursor pagination, and redelivery (202 is an
	// AcceptedError for go-github).
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	f.srv.Quiesce()
	var guids []string
	opts := &github.ListCursorOptions{PerPage: 2}
	for range 3 {
		ds, resp, err := app.Apps.ListHookDeliveries(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			guids = append(guids, d.GetGUID())
		}
		if resp.Cursor == "" {
			break
		}
		opts.Cursor = resp.Cursor
	}
	if len(guids) != 3 {
		t.Fatalf("listed deliveries %v, want 3", guids)
	}
	log := f.srv.Deliveries()
	d, _, err := app.Apps.GetHookDelivery(ctx, log[0].ID)
	if err != nil || d.GetGUID() != log[0].GUID || d.Request.GetHeader("X-GitHub-Event") != "workflow_job" {
		t.Fatalf("GetHookDelivery = %+v, %v", d, err)
	}
	_, _, err = app.Apps.RedeliverHookDelivery(ctx, log[0].ID)
	var accepted *github.AcceptedError
	if !errors.As(err, &accepted) {
		t.Fatalf("RedeliverHookDelivery: %v, want AcceptedError", err)
	}

	// Rate limits surface as go-github's own error types.
	f.srv.RateLimit(1, ghfake.RateLimitPrimary)
	_, _, err = gh.Apps.ListRepos(ctx, nil)
	var rl *github.RateLimitError
	if !errors.As(err, &rl) || rl.Rate.Remaining != 0 || rl.Rate.Reset.Before(time.Now().Add(-time.Second)) {
		t.Fatalf("primary rate limit: %v", err)
	}
	f.srv.RateLimit(1, ghfake.RateLimitSecondary)
	_, _, err = gh.Apps.ListRepos(ctx, nil)
	var abuse *github.AbuseRateLimitError
	if !errors.As(err, &abuse) || abuse.RetryAfter == nil || *abuse.RetryAfter != time.Second {
		t.Fatalf("secondary rate limit: %v", err)
	}
	// Scope: another repository is Not Found.
	_, _, err = gh.Actions.ListRunners(ctx, "other", "repo", nil)
	if !errors.As(err, &ghErr) || ghErr.Response.StatusCode != 404 || !strings.Contains(ghErr.Message, "Not Found") {
		t.Fatalf("foreign repository: %v", err)
	}

	// Re-running a job: refused without actions: write, and while its run
	// runs; then a second attempt, listed by attempt and by filter.
	_, err = gh.Actions.RerunJobByID(ctx, "acme", "app", jobID)
	if !errors.As(err, &ghErr) || ghErr.Response.StatusCode != http.StatusForbidden ||
		ghErr.Message != "Resource not accessible by integration" {
		t.Fatalf("RerunJobByID with actions: read: %v", err)
	}
	if err := f.srv.SetPermissions(inst, map[string]string{"actions": "write"}); err != nil {
		t.Fatal(err)
	}
	if _, err = gh.Actions.RerunJobByID(ctx, "acme", "app", jobID); !errors.As(err, &ghErr) || ghErr.Response.StatusCode != http.StatusForbidden {
		t.Fatalf("RerunJobByID of a queued job: %v", err)
	}
	if err := f.srv.CancelJob(jobID); err != nil {
		t.Fatal(err)
	}
	if resp, err := gh.Actions.RerunJobByID(ctx, "acme", "app", jobID); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("RerunJobByID = %v", err)
	}
	run, _, err := gh.Actions.GetWorkflowRunByID(ctx, "acme", "app", runID)
	if err != nil || run.GetRunAttempt() != 2 || run.GetStatus() != "queued" {
		t.Fatalf("GetWorkflowRunByID after a re-run = %+v, %v", run, err)
	}
	jobs, _, err = gh.Actions.ListWorkflowJobs(ctx, "acme", "app", runID, &github.ListWorkflowJobsOptions{Filter: "all"})
	if err != nil || jobs.GetTotalCount() != 2 || jobs.Jobs[0].GetID() != jobID || jobs.Jobs[1].GetRunAttempt() != 2 {
		t.Fatalf("ListWorkflowJobs(all) = %+v, %v", jobs, err)
	}
	jobs, _, err = gh.Actions.ListWorkflowJobsAttempt(ctx, "acme", "app", runID, 2, nil)
	if err != nil || jobs.GetTotalCount() != 1 || jobs.Jobs[0].GetID() == jobID || jobs.Jobs[0].GetStatus() != "queued" {
		t.Fatalf("ListWorkflowJobsAttempt(2) = %+v, %v", jobs, err)
	}
}
