package ghfake_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

type groupList struct {
	TotalCount int `json:"total_count"`
	Groups     []struct {
		ID                       int64  `json:"id"`
		Name                     string `json:"name"`
		Visibility               string `json:"visibility"`
		Default                  bool   `json:"default"`
		AllowsPublicRepositories bool   `json:"allows_public_repositories"`
	} `json:"runner_groups"`
}

func (f *fixture) groupRunner(tok, name string, group int64, labels ...string) string {
	f.t.Helper()
	var a jitAnswer
	f.expect(http.StatusCreated, "POST", "/orgs/acme/actions/runners/generate-jitconfig", tok,
		map[string]any{"name": name, "runner_group_id": group, "labels": labels}, &a)
	return f.session(a.EncodedJITConfig)
}

// Runner groups as GitHub has them: listed with and without
// visible_to_repository; a job that targets a group goes only to its
// runners, and only when the group allows the job's repository; the queued
// payload does not name the group, the in_progress one does.
func TestRunnerGroups(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web", "acme/site"))
	arm, err := f.srv.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Arm Fleet",
		Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/app"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "x", Repos: []string{"bob/lib"}}); err == nil {
		t.Error("a group allowing another owner's repository was accepted")
	}
	if err := f.srv.SetPublic("acme/site", true); err != nil {
		t.Fatal(err)
	}

	var all, forWeb groupList
	f.expect(http.StatusOK, "GET", "/orgs/acme/actions/runner-groups", tok, nil, &all)
	if all.TotalCount != 2 || all.Groups[0].ID != 1 || !all.Groups[0].Default || all.Groups[1].Name != "Arm Fleet" ||
		all.Groups[1].ID != arm || all.Groups[1].Visibility != "selected" {
		t.Fatalf("groups: %+v", all)
	}
	f.expect(http.StatusOK, "GET", "/orgs/acme/actions/runner-groups?visible_to_repository=web", tok, nil, &forWeb)
	if forWeb.TotalCount != 1 || forWeb.Groups[0].Name != "Default" {
		t.Errorf("groups visible to acme/web: %+v", forWeb)
	}
	f.expect(http.StatusOK, "GET", "/orgs/acme/actions/runner-groups?visible_to_repository=site", tok, nil, &forWeb)
	if forWeb.TotalCount != 0 {
		t.Errorf("groups visible to the public acme/site: %+v", forWeb)
	}
	f.expect(http.StatusNotFound, "GET", "/orgs/acme/actions/runner-groups?visible_to_repository=nope", tok, nil, nil)
	f.expect(http.StatusNotFound, "GET", "/orgs/bob/actions/runner-groups", tok, nil, nil)
	f.expect(http.StatusNotFound, "POST", "/orgs/acme/actions/runners/generate-jitconfig", tok,
		map[string]any{"name": "r", "runner_group_id": 999, "labels": []string{"tandem"}}, nil)

	targeted, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}, RunnerGroup: "arm fleet"})
	webJob, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/web", Labels: []string{"tandem"}})
	siteJob, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/site", Labels: []string{"tandem"}})

	// A Default-group runner takes neither the targeted job nor the
	// public repository's.
	def := f.groupRunner(tok, "default-1", 1, "tandem")
	if got := f.acquire(def, time.Second); got != webJob {
		t.Fatalf("the Default group's runner took %d, want acme/web's %d", got, webJob)
	}
	def2 := f.groupRunner(tok, "default-2", 1, "tandem")
	if got := f.acquire(def2, 200*time.Millisecond); got != 0 {
		t.Fatalf("the Default group's runner took job %d (targeted %d, public %d)", got, targeted, siteJob)
	}
	// A repository runner is in no group.
	repoRunner := f.session(f.jit(tok, "/repos/acme/app", "repo-1", "tandem").EncodedJITConfig)
	if got := f.acquire(repoRunner, 200*time.Millisecond); got != 0 {
		t.Fatalf("a repository runner took job %d", got)
	}
	armRunner := f.groupRunner(tok, "arm-1", arm, "tandem")
	if got := f.acquire(armRunner, time.Second); got != targeted {
		t.Fatalf("the Arm Fleet runner took %d, want %d", got, targeted)
	}
	if j := f.job(targeted); j.RunnerGroupID != arm {
		t.Errorf("targeted job: %+v", j)
	}
	// Allowing public repositories lets the Default group take the site's.
	if _, err := f.srv.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "default", AllowsPublicRepos: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.acquire(def2, time.Second); got != siteJob {
		t.Fatalf("after allowing public repositories: took %d, want %d", got, siteJob)
	}

	f.srv.Flush()
	for _, h := range f.sink.jobHooks(t) {
		if h.WorkflowJob.ID != targeted {
			continue
		}
		switch h.Action {
		case "queued":
			if h.WorkflowJob.RunnerGroupID != nil || h.WorkflowJob.RunnerGroupName != nil {
				t.Errorf("the queued payload names a group: %+v", h.WorkflowJob)
			}
		case "in_progress":
			if h.WorkflowJob.RunnerGroupID == nil || *h.WorkflowJob.RunnerGroupID != arm || h.WorkflowJob.RunnerGroupName == nil || *h.WorkflowJob.RunnerGroupName != "Arm Fleet" {
				t.Errorf("the in_progress payload: %+v", h.WorkflowJob)
			}
		}
	}
}
