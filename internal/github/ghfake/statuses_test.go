package ghfake_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// Commit statuses as GitHub has them: set by an installation on a commit of
// one of its repositories' runs, listed newest first; an unknown commit, a
// bad state or a long description is refused (422), another
// installation's repository is not found.
func TestCommitStatuses(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	other := f.token(f.srv.AddInstallation("bob", ghfake.AccountOrganization, "bob/lib"))
	id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	var job struct {
		HeadSHA string `json:"head_sha"`
	}
	f.expect(http.StatusOK, "GET", "/repos/acme/app/actions/jobs/"+strconv.FormatInt(id, 10), tok, nil, &job)
	sha := job.HeadSHA
	var st ghfake.CommitStatus
	f.expect(http.StatusCreated, "POST", "/repos/acme/app/statuses/"+sha, tok,
		map[string]any{"state": "pending", "context": "tandem/parity", "description": "1 of 2 jobs passed"}, &st)
	if st.ID == 0 || st.State != "pending" || st.Context != "tandem/parity" {
		t.Errorf("created %+v", st)
	}
	f.expect(http.StatusCreated, "POST", "/repos/ACME/app/statuses/"+sha, tok,
		map[string]any{"state": "success", "context": "tandem/parity", "target_url": "https://tandem.example.org/parity"}, nil)
	var list []ghfake.CommitStatus
	f.expect(http.StatusOK, "GET", "/repos/acme/app/commits/"+sha+"/statuses", tok, nil, &list)
	if len(list) != 2 || list[0].State != "success" || list[1].State != "pending" {
		t.Errorf("listed %+v", list)
	}
	if got := f.srv.Statuses("acme/app", sha); len(got) != 2 || got[0].State != "success" {
		t.Errorf("Statuses: %+v", got)
	}
	for _, c := range []struct {
		body map[string]any
		sha  string
		tok  string
		code int
	}{
		{map[string]any{"state": "done", "context": "c"}, sha, tok, http.StatusUnprocessableEntity},
		{map[string]any{"state": "success", "description": strings.Repeat("x", 141)}, sha, tok, http.StatusUnprocessableEntity},
		{map[string]any{"state": "success"}, strings.Repeat("0", 40), tok, http.StatusUnprocessableEntity},
		{map[string]any{"state": "success"}, sha, other, http.StatusNotFound},
		{map[string]any{"state": "success"}, sha, "", http.StatusUnauthorized},
	} {
		f.expect(c.code, "POST", "/repos/acme/app/statuses/"+c.sha, c.tok, c.body, nil)
	}
}
