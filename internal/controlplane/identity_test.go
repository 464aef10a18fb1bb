package controlplane_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// A job carries where it comes from, as GitHub says: branch, commit, its
// page on GitHub, who triggered it, the run attempt, and GitHub's times
// beside Tandem's.
func TestJobIdentity(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	gj, _ := r.gh.Job(id)
	var v controlplane.JobView
	r.call("GET", fmt.Sprintf("/api/v1/jobs/%d", id), rigReadToken, &v)
	if v.HeadBranch != "main" || len(v.HeadSHA) != 40 || v.Sender != "monalisa" || v.RunAttempt != 1 ||
		v.HTMLURL != fmt.Sprintf("https://github.com/acme/app/actions/runs/%d/job/%d", gj.RunID, id) {
		t.Errorf("identity: %+v", v)
	}
	if v.CreatedAt == nil || !v.CreatedAt.Equal(gj.CreatedAt.Truncate(time.Second)) ||
		v.GitHubStartedAt == nil || v.GitHubCompletedAt == nil || v.GitHubCompletedAt.Before(*v.GitHubStartedAt) {
		t.Errorf("GitHub's times: created %v started %v completed %v; GitHub: %+v", v.CreatedAt, v.GitHubStartedAt, v.GitHubCompletedAt, gj)
	}
}

// What a payload says of a job's origin is a stranger's input: a link that
// is not https, a commit id that is not one, an endless branch name or
// sender are dropped or cut, never shown as sent.
func TestJobIdentityIsChecked(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	body := []byte(`{"action":"queued","workflow_job":{"id":5151,"run_id":7,"status":"queued","labels":["tandem-64cpu-1gb"],` +
		`"head_branch":"` + strings.Repeat("b", 10_000) + `","head_sha":"not-a-sha","html_url":"javascript:alert(1)"},` +
		`"repository":{"id":1,"name":"app","full_name":"acme/app","owner":{"login":"acme"}},` +
		`"installation":{"id":1},"sender":{"login":"` + strings.Repeat("s", 500) + `"}}`)
	if resp := r.post("workflow_job", "g-identity", body, r.sign(body), "application/json"); resp.StatusCode != 202 {
		t.Fatalf("webhook: %s", resp.Status)
	}
	r.waitStates([]int64{5151}, 10*time.Second, store.JobUnschedulable)
	var v controlplane.JobView
	r.call("GET", "/api/v1/jobs/5151", rigReadToken, &v)
	if len(v.HeadBranch) != 255 || v.HeadSHA != "" || v.HTMLURL != "" || v.Sender != "" {
		t.Errorf("unchecked identity: branch of %d bytes, sha %q, url %q, sender %q", len(v.HeadBranch), v.HeadSHA, v.HTMLURL, v.Sender)
	}
}
