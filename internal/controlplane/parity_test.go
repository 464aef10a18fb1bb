package controlplane_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// Runs of one workflow through ghfake, a matrix over both architectures
// (arm64 emulated on the rig's hosts): the matrix matches the two names
// into one logical job, counts the emulated runs, and the gate passes the
// commit where both passed and fails the one where arm64 failed, whose
// job then is "arm64 failing".
func TestParityThroughGitHub(t *testing.T) {
	r := newRig(t, rigOptions{vcpus: 16})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	var runs []int64
	var jobs []int64
	for _, armScript := range []string{"true", "true", "exit 1"} {
		run, ids, err := r.gh.QueueRun("acme/app",
			ghfake.JobSpec{Name: "build (amd64)", Labels: []string{"tandem-amd64-1cpu-1gb"}, Script: "true"},
			ghfake.JobSpec{Name: "build (arm64)", Labels: []string{"tandem-arm64-1cpu-1gb"}, Script: armScript},
			ghfake.JobSpec{Name: "lint", Labels: []string{"tandem-amd64-1cpu-1gb"}, Script: "true"})
		if err != nil {
			t.Fatal(err)
		}
		runs, jobs = append(runs, run), append(jobs, ids...)
		r.waitStates(ids, 30*time.Second, store.JobCompleted)
	}
	sha := func(run int) string {
		j, _ := r.job(jobs[3*run])
		if j.HeadSHA == "" {
			t.Fatalf("run %d: no head sha", runs[run])
		}
		return j.HeadSHA
	}
	var v parity.View
	if code := r.call("GET", "/api/v1/parity?repo=acme/app", rigReadToken, &v); code != http.StatusOK {
		t.Fatalf("parity: %d", code)
	}
	if len(v.Rows) != 2 {
		t.Fatalf("rows: %+v", v.Rows)
	}
	build, lint := v.Rows[0], v.Rows[1]
	if build.Job != "build" || build.Workflow != "CI" || build.Status != parity.ARM64Failing || build.AMD64 == nil || build.ARM64 == nil ||
		build.AMD64.Runs != 3 || build.ARM64.Runs != 3 || build.ARM64.Passed != 2 || build.ARM64.Failed != 1 || build.ARM64.Emulated != 3 ||
		build.AMD64.Emulated != 0 || build.Compared != 3 || build.ARM64Failed != 1 || build.LatestSHA != sha(2) ||
		fmt.Sprint(build.ARM64.Names) != "[build (arm64)]" || fmt.Sprint(build.AMD64.Names) != "[build (amd64)]" {
		t.Errorf("build: %+v\namd64 %+v\narm64 %+v", build, build.AMD64, build.ARM64)
	}
	if lint.Status != parity.AMD64Only || !strings.Contains(lint.Nudge, "[tandem-amd64-1cpu-1gb, tandem-arm64-1cpu-1gb]") {
		t.Errorf("lint: %+v", lint)
	}
	if len(v.Repos) != 1 || v.Repos[0].Tier != "tier-2" {
		t.Errorf("repos: %+v", v.Repos)
	}
	check := func(sha, require string) parity.CheckResult {
		t.Helper()
		var res parity.CheckResult
		if code := r.call("GET", "/api/v1/parity/check?repo=acme/app&sha="+sha+"&require="+require, rigReadToken, &res); code != http.StatusOK {
			t.Fatalf("check %s: %d", sha, code)
		}
		return res
	}
	if res := check(sha(0), "both"); res.Verdict != parity.Fail || len(res.Jobs) != 2 || res.Jobs[0].Verdict != parity.Pass ||
		res.Jobs[1].Why != "did not run on arm64" {
		t.Errorf("run 0, both: %+v", res)
	}
	if res := check(sha(0), "amd64"); res.Verdict != parity.Pass {
		t.Errorf("run 0, amd64: %+v", res)
	}
	if res := check(sha(2), "arm64"); res.Verdict != parity.Fail || res.Jobs[0].Why != "failure on arm64" {
		t.Errorf("run 2, arm64: %+v", res)
	}
	if res := check(strings.Repeat("0", 40), "both"); res.Verdict != parity.Pending {
		t.Errorf("an unknown commit: %+v", res)
	}
}

// A generated history in the store: tiers with their reasons, the moves
// the tier loop records, the report, the gate's refusals of bad input, the
// badge for a token, for the public and for nobody, and a scoped token's
// view.
func TestParityTiersAndBadges(t *testing.T) {
	const bobReader = "bob-read-token-0123456789"
	r := newRig(t, rigOptions{noHosts: true, configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: bobReader, Orgs: []string{"bob"}})
		c.Parity.PublicBadges = true
		c.ParityEvery = -1 // the test records tiers itself
	}})
	now := time.Now()
	id := int64(7000)
	add := func(repo, name string, a arch.Arch, run int, conclusion string, public bool) {
		id++
		end := now.Add(-time.Duration(run) * time.Hour)
		org, _, _ := strings.Cut(repo, "/")
		j := store.Job{ID: id, Org: org, Repo: repo, Workflow: "ci", Name: name, Arch: a, VCPUs: 2, MemoryMiB: 2048,
			Labels: []string{"tandem-" + string(a) + "-2cpu-2gb"}, LabelKey: "tandem-" + string(a) + "-2cpu-2gb",
			State: store.JobCompleted, Conclusion: conclusion, CreatedAt: end.Add(-time.Hour), QueuedAt: end.Add(-time.Hour),
			StartedAt: end.Add(-10 * time.Minute), CompletedAt: end, UpdatedAt: end, Public: public,
			HeadSHA: fmt.Sprintf("%040x", run)}
		if err := r.st.Update(t.Context(), func(tx store.Tx) error { return tx.CreateJob(j, store.Event{}) }); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 12 {
		add("acme/db", "pkg-x86_64", arch.AMD64, i, "success", false)
		add("acme/db", "pkg-aarch64", arch.ARM64, i, "success", false)
		add("bob/cli", "unit", arch.AMD64, i, "success", true)
	}
	record := func() {
		t.Helper()
		if err := r.cp.RecordParityTiers(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	record()
	var v parity.View
	if code := r.call("GET", "/api/v1/parity", rigReadToken, &v); code != http.StatusOK {
		t.Fatalf("parity: %d", code)
	}
	if len(v.Repos) != 2 || v.Repos[0].Repo != "acme/db" || v.Repos[0].Tier != "tier-1" || v.Repos[0].Since.IsZero() ||
		v.Repos[1].Tier != "tier-3" || v.Repos[1].Reason != "not tier-2: no job runs on arm64 (tier-2 wants one)" {
		t.Errorf("repos: %+v", v.Repos)
	}
	if len(v.Orgs) != 2 || v.Orgs[0].Org != "acme" || v.Orgs[0].Tier != "tier-1" || v.Orgs[1].Tier != "tier-3" {
		t.Errorf("orgs: %+v", v.Orgs)
	}
	// acme/db starts failing on arm64: tier 1 → tier 2, recorded with why.
	for range 3 {
		add("acme/db", "pkg-x86_64", arch.AMD64, 0, "success", false)
		add("acme/db", "pkg-aarch64", arch.ARM64, 0, "failure", false)
	}
	record()
	record() // no move the second time
	var rep parity.Report
	if code := r.call("GET", "/api/v1/parity/report?days=7", rigReadToken, &rep); code != http.StatusOK {
		t.Fatalf("report: %d", code)
	}
	var moves []string
	for _, m := range rep.Moves {
		moves = append(moves, fmt.Sprintf("%s %s→%s up=%v: %s", m.Repo, m.From, m.To, m.Up, m.Reason))
	}
	want := []string{
		"acme/db tier-1→tier-2 up=false: not tier-1: ci / pkg fails on arm64 where amd64 passes (commit 000000000000)",
		"bob/cli →tier-3 up=true: not tier-2: no job runs on arm64 (tier-2 wants one)",
		"acme/db →tier-1 up=true: tier-1 (every job runs and passes on both architectures): 1 of 1 jobs on both architectures; arm64 passed 100% of its runs",
	}
	if strings.Join(moves, "\n") != strings.Join(want, "\n") {
		t.Errorf("moves:\n%s\nwant\n%s", strings.Join(moves, "\n"), strings.Join(want, "\n"))
	}
	if len(rep.Failing) != 1 || rep.Failing[0].Repo != "acme/db" || len(rep.AMD64) != 1 || rep.AMD64[0].Nudge == "" {
		t.Errorf("report: failing %+v, amd64 only %+v", rep.Failing, rep.AMD64)
	}

	// A scoped token sees its organisation only, tiers and moves too.
	var bob parity.View
	if code := r.call("GET", "/api/v1/parity", bobReader, &bob); code != http.StatusOK || len(bob.Rows) != 1 || len(bob.Repos) != 1 ||
		bob.Repos[0].Repo != "bob/cli" || len(bob.Recent) != 1 {
		t.Errorf("bob's view: %+v", bob)
	}
	for _, q := range []string{"repo=acme&sha=" + strings.Repeat("a", 40), "repo=acme/db&sha=abc", "repo=acme/db&sha=" + strings.Repeat("a", 40) + "&require=s390x"} {
		if code := r.call("GET", "/api/v1/parity/check?"+q, rigReadToken, nil); code != http.StatusBadRequest {
			t.Errorf("check %s: %d, want 400", q, code)
		}
	}
	if code := r.call("GET", "/api/v1/parity?days=91", rigReadToken, nil); code != http.StatusBadRequest {
		t.Errorf("days=91: %d", code)
	}
	var res parity.CheckResult
	if code := r.call("GET", fmt.Sprintf("/api/v1/parity/check?repo=acme/db&sha=%040x", 5), bobReader, &res); code != 200 || res.Verdict != parity.Pending {
		t.Errorf("bob checking acme's commit: %d %+v (want nothing known)", code, res)
	}
	if code := r.call("GET", fmt.Sprintf("/api/v1/parity/check?repo=ACME/DB&sha=%040x", 5), rigReadToken, &res); code != 200 || res.Verdict != parity.Pass {
		t.Errorf("acme/db's commit 5: %d %+v", code, res)
	}

	// Badges: a public repository's for anyone; a private one's only with
	// a token that sees it, and otherwise the same answer as for none.
	badge := func(path, token string) (int, string) {
		t.Helper()
		return r.callBody("GET", path, token, nil)
	}
	code, public := badge("/badge/parity/bob/cli.svg", "")
	if code != 200 || !strings.Contains(public, "tier-3 · none") {
		t.Errorf("bob/cli's public badge: %d %s", code, public)
	}
	code, private := badge("/badge/parity/acme/db.svg", rigReadToken)
	if code != 200 || !strings.Contains(private, "tier-2 · 80%") {
		t.Errorf("acme/db's badge with a token: %d %s", code, private)
	}
	_, unknown := badge("/badge/parity/nobody/nothing.svg", "")
	for _, c := range []struct{ path, token string }{
		{"/badge/parity/acme/db.svg", ""}, {"/badge/parity/acme/db.svg", bobReader}, {"/badge/parity/acme/db.svg", "wrong-token-0123456789"},
		{"/badge/parity/acme/db", rigReadToken}, {"/badge/parity/acme/..svg", ""},
	} {
		if code, body := badge(c.path, c.token); code != 404 || body != unknown {
			t.Errorf("%s with %q: %d %s", c.path, c.token, code, body)
		}
	}
}

// With parity.commit_status, the App sets each commit's tandem/parity
// status as its jobs end: success for a commit whose jobs passed on both
// architectures, failure for one that failed on arm64; nothing without it.
func TestCommitStatusThroughGitHub(t *testing.T) {
	for _, on := range []bool{true, false} {
		r := newRig(t, rigOptions{vcpus: 16, configure: func(c *controlplane.Config) { c.Parity.CommitStatus = on }})
		r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
		var commits []int64
		for _, armScript := range []string{"true", "exit 1"} {
			_, ids, err := r.gh.QueueRun("acme/app",
				ghfake.JobSpec{Name: "build (amd64)", Labels: []string{"tandem-amd64-1cpu-1gb"}, Script: "true"},
				ghfake.JobSpec{Name: "build (arm64)", Labels: []string{"tandem-arm64-1cpu-1gb"}, Script: armScript})
			if err != nil {
				t.Fatal(err)
			}
			r.waitStates(ids, 30*time.Second, store.JobCompleted)
			commits = append(commits, ids[0])
		}
		sha := func(i int) string {
			j, _ := r.job(commits[i])
			return j.HeadSHA
		}
		if !on {
			time.Sleep(1500 * time.Millisecond) // past the debounce: nothing may come
			if st := r.gh.Statuses("acme/app", sha(0)); len(st) != 0 {
				t.Errorf("statuses without commit_status: %+v", st)
			}
			continue
		}
		want := map[int]string{0: "success pass: 1 of 1 jobs passed on both", 1: "failure fail: 0 of 1 jobs passed on both, 1 failed"}
		r.waitFor("commit statuses", 30*time.Second, func() bool {
			for i, w := range want {
				st := r.gh.Statuses("acme/app", sha(i))
				if len(st) == 0 || st[0].State+" "+st[0].Description != w || st[0].Context != controlplane.StatusContext {
					return false
				}
			}
			return true
		})
	}
}
