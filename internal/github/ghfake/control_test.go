package ghfake_test

import (
	"fmt"
	"testing"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

func TestControlAPI(t *testing.T) {
	f := newFixture(t)
	var inst struct {
		ID int64 `json:"id"`
	}
	f.expect(201, "POST", "/_ghfake/installations", "", map[string]any{
		"account": "acme", "account_type": "Organization", "repos": []string{"acme/app"},
	}, &inst)
	f.expect(422, "POST", "/_ghfake/installations", "", map[string]any{"account": "a b"}, nil)
	tok := f.token(inst.ID)

	var queued struct {
		RunID  int64   `json:"run_id"`
		JobIDs []int64 `json:"job_ids"`
	}
	f.expect(201, "POST", "/_ghfake/jobs", "", map[string]any{
		"repo": "acme/app", "labels": []string{"x"}, "script": "true",
	}, &queued)
	if queued.RunID == 0 || len(queued.JobIDs) != 1 {
		t.Fatalf("queued = %+v", queued)
	}
	var run struct {
		RunID  int64   `json:"run_id"`
		JobIDs []int64 `json:"job_ids"`
	}
	f.expect(201, "POST", "/_ghfake/jobs", "", map[string]any{
		"repo": "acme/app", "jobs": []map[string]any{{"labels": []string{"a"}}, {"labels": []string{"b"}, "name": "two"}},
	}, &run)
	if len(run.JobIDs) != 2 || f.job(run.JobIDs[1]).Name != "two" || f.job(run.JobIDs[1]).RunID != run.RunID {
		t.Fatalf("run = %+v", run)
	}
	f.expect(422, "POST", "/_ghfake/jobs", "", map[string]any{"repo": "acme/app"}, nil)
	f.expect(422, "POST", "/_ghfake/jobs", "", map[string]any{"repo": "bad", "labels": []string{"x"}}, nil)

	f.expect(204, "POST", fmt.Sprintf("/_ghfake/jobs/%d/cancel", queued.JobIDs[0]), "", nil, nil)
	f.expect(404, "POST", "/_ghfake/jobs/1/cancel", "", nil, nil)
	var jobs []ghfake.JobInfo
	f.expect(200, "GET", "/_ghfake/jobs", "", nil, &jobs)
	if len(jobs) != 3 || jobs[0].Conclusion != ghfake.ConclusionCancelled || jobs[1].Status != ghfake.StatusQueued {
		t.Fatalf("jobs = %+v", jobs)
	}

	f.jit(tok, "/repos/acme/app", "r1", "a")
	var runners []ghfake.RunnerInfo
	f.expect(200, "GET", "/_ghfake/runners", "", nil, &runners)
	if len(runners) != 1 || runners[0].Name != "r1" || runners[0].Scope != "acme/app" || runners[0].Status != "offline" {
		t.Fatalf("runners = %+v", runners)
	}

	f.expect(204, "PUT", "/_ghfake/faults", "", map[string]any{"lose": 1}, nil)
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	f.expect(204, "POST", "/_ghfake/flush", "", nil, nil)
	if n := len(f.sink.hooks()); n != 4 { // 1 + 2 queued, 1 cancelled; the fourth job's webhook is lost
		t.Errorf("%d webhooks arrived, want 4", n)
	}
	f.expect(204, "PUT", "/_ghfake/faults", "", map[string]any{"max_delay": "1ms"}, nil)
	f.expect(422, "PUT", "/_ghfake/faults", "", map[string]any{"fail": 2}, nil)
	f.expect(422, "PUT", "/_ghfake/faults", "", map[string]any{"max_delay": "soon"}, nil)

	f.expect(204, "POST", "/_ghfake/ratelimit", "", map[string]any{"n": 1, "mode": "secondary"}, nil)
	f.expect(429, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(200, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(204, "POST", "/_ghfake/ratelimit", "", map[string]any{"n": 1}, nil)
	f.expect(403, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(422, "POST", "/_ghfake/ratelimit", "", map[string]any{"n": 1, "mode": "tertiary"}, nil)
}
