package github

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// RerunJob against ghfake: refused without "actions: write" (ErrUnauthorized,
// and the error says what is missing) and while the run runs (ErrConflict);
// then the job comes again as a new job of the run's next attempt.
func TestRerunJob(t *testing.T) {
	fake := ghfake.New(ghfake.Config{AppID: testAppID, AppPublicKey: &testKey(t).PublicKey})
	api := httptest.NewServer(fake.Handler())
	t.Cleanup(func() {
		fake.Close()
		api.Close()
	})
	c, err := New(Config{BaseURL: api.URL + "/", AppID: testAppID, PrivateKey: testKey(t), HTTPClient: api.Client()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	inst := fake.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	jobID, runID := fake.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})

	for _, bad := range []struct {
		inst, job int64
		repo      string
	}{{0, jobID, "acme/app"}, {inst, 0, "acme/app"}, {inst, jobID, "acme"}} {
		if err := c.RerunJob(ctx, bad.inst, bad.repo, bad.job); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("RerunJob(%d, %q, %d) = %v, want ErrInvalidArgument", bad.inst, bad.repo, bad.job, err)
		}
	}

	err = c.RerunJob(ctx, inst, "acme/app", jobID)
	var se *StatusError
	if !errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrConflict) || !errors.As(err, &se) ||
		se.StatusCode != http.StatusForbidden || !strings.Contains(err.Error(), `"actions: write"`) {
		t.Fatalf("without actions: write: %v", err)
	}
	if err := fake.SetPermissions(inst, map[string]string{"actions": "write"}); err != nil {
		t.Fatal(err)
	}
	err = c.RerunJob(ctx, inst, "acme/app", jobID)
	if !errors.Is(err, ErrConflict) || errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("while the run is queued: %v", err)
	}
	if err := c.RerunJob(ctx, inst, "acme/app", jobID+1000); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown job: %v, want ErrNotFound", err)
	}

	if err := fake.CancelJob(jobID); err != nil {
		t.Fatal(err)
	}
	if err := c.RerunJob(ctx, inst, "acme/app", jobID); err != nil {
		t.Fatalf("RerunJob of a completed run's job: %v", err)
	}
	queued, err := c.ListQueuedJobs(ctx, inst, "acme/app")
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || queued[0].ID == jobID || queued[0].RunID != runID || queued[0].RunAttempt != 2 {
		t.Fatalf("queued after the re-run: %+v", queued)
	}
	if old, err := c.GetJob(ctx, inst, "acme/app", jobID); err != nil || old.RunAttempt != 1 || old.Conclusion != "cancelled" {
		t.Errorf("the re-run job: %+v, %v", old, err)
	}
	// Its run is queued again, and then the old attempt is not re-runnable.
	if err := c.RerunJob(ctx, inst, "acme/app", jobID); !errors.Is(err, ErrConflict) {
		t.Errorf("again while attempt 2 is queued: %v, want ErrConflict", err)
	}
	if err := fake.CancelJob(queued[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := c.RerunJob(ctx, inst, "acme/app", jobID); !errors.Is(err, ErrConflict) {
		t.Errorf("attempt 1's job after attempt 2: %v, want ErrConflict", err)
	}
}
