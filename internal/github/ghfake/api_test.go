package ghfake_test

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

func TestJWT(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := f.clock.Now()
	claims := func(iat, exp time.Duration, iss any) jwt.MapClaims {
		return jwt.MapClaims{"iat": now.Add(iat).Unix(), "exp": now.Add(exp).Unix(), "iss": iss}
	}
	hs256, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(0, time.Minute, appID)).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"good string iss", signJWT(t, testKey(), claims(-time.Minute, 9*time.Minute, strconv.Itoa(appID))), 200},
		{"good numeric iss", signJWT(t, testKey(), claims(0, 10*time.Minute, appID)), 200},
		{"iat within skew", signJWT(t, testKey(), claims(30*time.Second, 5*time.Minute, appID)), 200},
		{"expired", signJWT(t, testKey(), claims(-20*time.Minute, -11*time.Minute, appID)), 401},
		{"expired beyond skew", signJWT(t, testKey(), claims(-5*time.Minute, -2*time.Minute, appID)), 401},
		{"wrong key", signJWT(t, otherKey, claims(0, 5*time.Minute, appID)), 401},
		{"exp too long after iat", signJWT(t, testKey(), claims(-time.Minute, 10*time.Minute, appID)), 401},
		{"exp too far ahead", signJWT(t, testKey(), claims(0, 20*time.Minute, appID)), 401},
		{"iat in the future", signJWT(t, testKey(), claims(5*time.Minute, 9*time.Minute, appID)), 401},
		{"no exp", signJWT(t, testKey(), jwt.MapClaims{"iat": now.Unix(), "iss": appID}), 401},
		{"no iat", signJWT(t, testKey(), jwt.MapClaims{"exp": now.Add(time.Minute).Unix(), "iss": appID}), 401},
		{"wrong iss", signJWT(t, testKey(), claims(0, 5*time.Minute, appID+1)), 401},
		{"hs256", hs256, 401},
		{"garbage", "not.a.jwt", 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do("GET", "/app/installations", "Bearer "+tc.token, nil)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want == 401 && !strings.Contains(string(body), `"message"`) {
				t.Errorf("401 body has no message: %s", body)
			}
		})
	}
}

func TestInstallationTokenExpiry(t *testing.T) {
	f := newFixture(t, func(c *ghfake.Config) { c.TokenTTL = 10 * time.Minute })
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	tok := f.token(inst)
	f.expect(200, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(200, "GET", "/installation/repositories", "Bearer "+strings.TrimPrefix(tok, "token "), nil, nil)
	f.clock.Advance(9 * time.Minute)
	f.expect(200, "GET", "/installation/repositories", tok, nil, nil)
	f.clock.Advance(2 * time.Minute)
	f.expect(401, "GET", "/installation/repositories", tok, nil, nil)
	f.expect(401, "GET", "/installation/repositories", "token ghs_unknown", nil, nil)
	f.expect(401, "GET", "/installation/repositories", "", nil, nil)
	// A JWT is not an installation token, and a token is not a JWT.
	f.expect(401, "GET", "/installation/repositories", "Bearer "+f.jwt(), nil, nil)
	f.expect(401, "GET", "/app/installations", f.token(inst), nil, nil)
	// Unknown installation.
	f.expect(404, "POST", "/app/installations/999/access_tokens", "Bearer "+f.jwt(), nil, nil)
}

func TestTokenScope(t *testing.T) {
	f := newFixture(t)
	a := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web")
	b := f.srv.AddInstallation("bob", ghfake.AccountUser, "bob/lib")
	if a == 0 || b == 0 || a == b {
		t.Fatalf("installations %d, %d", a, b)
	}
	if again := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/more", "bob/stolen"); again != a {
		t.Fatalf("reinstalling on acme gave %d, want %d", again, a)
	}
	ta, tb := f.token(a), f.token(b)

	var repos struct {
		TotalCount   int `json:"total_count"`
		Repositories []struct {
			FullName string `json:"full_name"`
			Owner    struct {
				Type string `json:"type"`
			} `json:"owner"`
		} `json:"repositories"`
	}
	f.expect(200, "GET", "/installation/repositories", ta, nil, &repos)
	var names []string
	for _, r := range repos.Repositories {
		names = append(names, r.FullName)
		if r.Owner.Type != "Organization" {
			t.Errorf("%s owner type %q", r.FullName, r.Owner.Type)
		}
	}
	if got := strings.Join(names, ","); repos.TotalCount != 3 || got != "acme/app,acme/web,acme/more" {
		t.Fatalf("installation A repositories = %d %s", repos.TotalCount, got)
	}

	for _, tc := range []struct {
		tok, path string
		want      int
	}{
		{ta, "/repos/acme/app/actions/runners", 200},
		{ta, "/repos/ACME/App/actions/runners", 200}, // names are case-insensitive
		{ta, "/repos/bob/lib/actions/runners", 404},
		{ta, "/repos/bob/stolen/actions/runners", 404},
		{ta, "/repos/acme/missing/actions/runners", 404},
		{ta, "/orgs/acme/actions/runners", 200},
		{ta, "/orgs/bob/actions/runners", 404},
		{tb, "/repos/bob/lib/actions/runners", 200},
		{tb, "/repos/acme/app/actions/runners", 404},
		{tb, "/repos/acme/app/actions/runs", 404},
		{tb, "/orgs/acme/actions/runners", 404},
		{tb, "/orgs/bob/actions/runners", 404}, // a user account has no org runners
	} {
		if resp, body := f.do("GET", tc.path, tc.tok, nil); resp.StatusCode != tc.want {
			t.Errorf("GET %s: %d, want %d: %s", tc.path, resp.StatusCode, tc.want, body)
		}
	}
	// A job of B's repo is invisible to A.
	jobID, runID := f.srv.QueueJob(ghfake.JobSpec{Repo: "bob/lib", Labels: []string{"x"}})
	f.expect(404, "GET", fmt.Sprintf("/repos/bob/lib/actions/jobs/%d", jobID), ta, nil, nil)
	f.expect(404, "GET", fmt.Sprintf("/repos/acme/app/actions/jobs/%d", jobID), ta, nil, nil)
	f.expect(404, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/jobs", runID), ta, nil, nil)
	f.expect(200, "GET", fmt.Sprintf("/repos/bob/lib/actions/jobs/%d", jobID), tb, nil, nil)
}

func TestJITValidation(t *testing.T) {
	f := newFixture(t)
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web")
	tok := f.token(inst)
	gen := "/repos/acme/app/actions/runners/generate-jitconfig"
	for name, body := range map[string]map[string]any{
		"no name":   {"runner_group_id": 1, "labels": []string{"a"}},
		"no labels": {"name": "r", "runner_group_id": 1},
		"empty":     {"name": "r", "runner_group_id": 1, "labels": []string{}},
		"no group":  {"name": "r", "labels": []string{"a"}},
		"blank":     {"name": "r", "runner_group_id": 1, "labels": []string{" "}},
	} {
		if resp, b := f.do("POST", gen, tok, body); resp.StatusCode != 422 {
			t.Errorf("%s: status %d, want 422: %s", name, resp.StatusCode, b)
		}
	}
	if resp, _ := f.do("POST", gen, tok, "not an object"); resp.StatusCode != 400 {
		t.Errorf("bad json: status %d, want 400", resp.StatusCode)
	}
	a := f.jit(tok, "/repos/acme/app", "r1", "tandem", "Arm64")
	if a.Runner.ID == 0 || a.Runner.Name != "r1" || a.Runner.OS != "linux" || a.Runner.Status != "offline" || a.Runner.Busy {
		t.Errorf("runner = %+v", a.Runner)
	}
	if len(a.Runner.Labels) != 2 || a.Runner.Labels[1].Name != "Arm64" || a.Runner.Labels[1].Type != "custom" || a.Runner.Labels[0].ID == 0 {
		t.Errorf("labels = %+v", a.Runner.Labels)
	}
	cfg, err := runnerapi.DecodeJITConfig(a.EncodedJITConfig)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.URL != f.api.URL || cfg.RunnerID != a.Runner.ID || cfg.RunnerName != "r1" || cfg.Scope != "acme/app" || len(cfg.Token) < 20 {
		t.Errorf("jit config = %+v", cfg)
	}
	// Duplicate names conflict within a scope only.
	if resp, b := f.do("POST", gen, tok, map[string]any{"name": "R1", "runner_group_id": 1, "labels": []string{"x"}}); resp.StatusCode != 409 {
		t.Errorf("duplicate: status %d, want 409: %s", resp.StatusCode, b)
	}
	f.jit(tok, "/repos/acme/web", "r1", "x")
	f.jit(tok, "/orgs/acme", "r1", "x")
	if resp, _ := f.do("POST", "/orgs/acme/actions/runners/generate-jitconfig", tok,
		map[string]any{"name": "r1", "runner_group_id": 1, "labels": []string{"x"}}); resp.StatusCode != 409 {
		t.Errorf("duplicate org runner: status %d, want 409", resp.StatusCode)
	}
	if n := len(f.srv.Runners()); n != 3 {
		t.Errorf("%d runners registered, want 3", n)
	}
}

func TestDeleteRunner(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web"))
	idle := f.jit(tok, "/repos/acme/app", "idle", "x")
	busy := f.jit(tok, "/orgs/acme", "busy", "x")
	path := func(scope string, id int64) string { return fmt.Sprintf("%s/actions/runners/%d", scope, id) }

	jobID, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/web", Labels: []string{"x"}})
	sess := f.session(busy.EncodedJITConfig)
	if got := f.acquire(sess, time.Second); got != jobID {
		t.Fatalf("acquired %d, want %d", got, jobID)
	}
	f.expect(422, "DELETE", path("/orgs/acme", busy.Runner.ID), tok, nil, nil)
	f.expect(404, "DELETE", path("/repos/acme/app", busy.Runner.ID), tok, nil, nil) // wrong scope
	f.expect(404, "DELETE", path("/repos/acme/web", idle.Runner.ID), tok, nil, nil)
	f.expect(200, "GET", path("/repos/acme/app", idle.Runner.ID), tok, nil, nil)
	f.expect(204, "DELETE", path("/repos/acme/app", idle.Runner.ID), tok, nil, nil)
	f.expect(404, "DELETE", path("/repos/acme/app", idle.Runner.ID), tok, nil, nil)
	f.expect(404, "GET", path("/repos/acme/app", idle.Runner.ID), tok, nil, nil)
	f.expect(404, "DELETE", path("/repos/acme/app", 987654), tok, nil, nil)
	// The deleted runner's JIT config is dead.
	cfg, _ := runnerapi.DecodeJITConfig(idle.EncodedJITConfig)
	f.expect(401, "POST", runnerapi.PathSession, runnerapi.SchemeRunnerToken+" "+cfg.Token, nil, nil)
	// Once its job completes, the ephemeral busy runner is gone.
	f.complete(sess, jobID, "success")
	f.expect(404, "DELETE", path("/orgs/acme", busy.Runner.ID), tok, nil, nil)
	if rs := f.srv.Runners(); len(rs) != 0 {
		t.Errorf("runners left: %+v", rs)
	}
}

func TestPagination(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	for i := range 5 {
		f.jit(tok, "/repos/acme/app", fmt.Sprintf("r%d", i), "x")
	}
	type list struct {
		TotalCount int `json:"total_count"`
		Runners    []struct {
			Name string `json:"name"`
		} `json:"runners"`
	}
	var seen []string
	next := "/repos/acme/app/actions/runners?per_page=2"
	for pages := 0; next != ""; pages++ {
		if pages > 3 {
			t.Fatal("too many pages")
		}
		var l list
		resp := f.expect(200, "GET", next, tok, nil, &l)
		if l.TotalCount != 5 {
			t.Errorf("total_count %d", l.TotalCount)
		}
		for _, r := range l.Runners {
			seen = append(seen, r.Name)
		}
		link := resp.Header.Get("Link")
		if pages == 0 && (!strings.Contains(link, `rel="last"`) || !strings.Contains(link, "page=3")) {
			t.Errorf("first page Link = %q", link)
		}
		if pages == 2 && (!strings.Contains(link, `rel="prev"`) || !strings.Contains(link, `rel="first"`) || strings.Contains(link, `rel="next"`)) {
			t.Errorf("last page Link = %q", link)
		}
		next = ""
		for part := range strings.SplitSeq(link, ",") {
			if strings.Contains(part, `rel="next"`) {
				u := strings.Trim(strings.TrimSpace(strings.Split(part, ";")[0]), "<>")
				next = strings.TrimPrefix(u, f.api.URL)
			}
		}
	}
	if got := strings.Join(seen, ","); got != "r0,r1,r2,r3,r4" {
		t.Errorf("paged runners = %s", got)
	}
	// per_page is capped at 100; default is 30.
	var l list
	resp := f.expect(200, "GET", "/repos/acme/app/actions/runners?per_page=1000", tok, nil, &l)
	if len(l.Runners) != 5 || resp.Header.Get("Link") != "" {
		t.Errorf("per_page=1000: %d runners, Link %q", len(l.Runners), resp.Header.Get("Link"))
	}
	f.expect(200, "GET", "/repos/acme/app/actions/runners?page=9", tok, nil, &l)
	if len(l.Runners) != 0 || l.TotalCount != 5 {
		t.Errorf("page 9: %+v", l)
	}
}

func TestRunsAndJobs(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	runID, ids, err := f.srv.QueueRun("acme/app",
		ghfake.JobSpec{Name: "amd64", Labels: []string{"tandem-4cpu"}},
		ghfake.JobSpec{Name: "arm64", Labels: []string{"tandem-arm64-4cpu"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.srv.QueueRun("nope", ghfake.JobSpec{Labels: []string{"x"}}); err == nil {
		t.Error("QueueRun accepted a bad repository")
	}
	if _, _, err := f.srv.QueueRun("acme/app", ghfake.JobSpec{}); err == nil {
		t.Error("QueueRun accepted a job without labels")
	}
	otherRun, _, _ := f.srv.QueueRun("acme/app", ghfake.JobSpec{Labels: []string{"x"}})

	type runs struct {
		TotalCount   int `json:"total_count"`
		WorkflowRuns []struct {
			ID         int64   `json:"id"`
			Status     string  `json:"status"`
			Conclusion *string `json:"conclusion"`
		} `json:"workflow_runs"`
	}
	status := func() string {
		var r runs
		f.expect(200, "GET", "/repos/acme/app/actions/runs", tok, nil, &r)
		if r.TotalCount != 2 || r.WorkflowRuns[0].ID != otherRun { // newest first
			t.Fatalf("runs = %+v", r)
		}
		return r.WorkflowRuns[1].Status
	}
	count := func(filter string) int {
		var r runs
		f.expect(200, "GET", "/repos/acme/app/actions/runs?status="+filter, tok, nil, &r)
		return r.TotalCount
	}
	if s := status(); s != "queued" || count("queued") != 2 {
		t.Fatalf("run status %s, %d queued", s, count("queued"))
	}
	a := f.jit(tok, "/repos/acme/app", "a", "tandem-4cpu")
	sa := f.session(a.EncodedJITConfig)
	if got := f.acquire(sa, time.Second); got != ids[0] {
		t.Fatalf("acquired %d, want %d", got, ids[0])
	}
	if s := status(); s != "in_progress" || count("in_progress") != 1 || count("queued") != 1 {
		t.Fatalf("run status %s after a job started", s)
	}
	f.complete(sa, ids[0], "success")
	if s := status(); s != "in_progress" {
		t.Fatalf("run status %s with one job left", s)
	}
	b := f.jit(tok, "/repos/acme/app", "b", "TANDEM-ARM64-4CPU")
	sb := f.session(b.EncodedJITConfig)
	if got := f.acquire(sb, time.Second); got != ids[1] {
		t.Fatalf("acquired %d, want %d", got, ids[1])
	}
	f.complete(sb, ids[1], "failure")
	if s := status(); s != "completed" || count("completed") != 1 || count("failure") != 1 || count("success") != 0 {
		t.Fatalf("run status %s after all jobs completed", s)
	}

	var jobs struct {
		TotalCount int `json:"total_count"`
		Jobs       []struct {
			ID          int64    `json:"id"`
			RunID       int64    `json:"run_id"`
			Status      string   `json:"status"`
			Conclusion  string   `json:"conclusion"`
			RunnerName  string   `json:"runner_name"`
			Labels      []string `json:"labels"`
			StartedAt   string   `json:"started_at"`
			CompletedAt string   `json:"completed_at"`
		} `json:"jobs"`
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/jobs", runID), tok, nil, &jobs)
	if jobs.TotalCount != 2 || jobs.Jobs[0].RunnerName != "a" || jobs.Jobs[1].Conclusion != "failure" ||
		jobs.Jobs[1].RunID != runID || jobs.Jobs[0].CompletedAt == "" || jobs.Jobs[0].StartedAt == "" {
		t.Errorf("jobs = %+v", jobs)
	}
	var one struct {
		ID         int64   `json:"id"`
		Status     string  `json:"status"`
		RunnerID   *int64  `json:"runner_id"`
		Conclusion *string `json:"conclusion"`
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/jobs/%d", ids[1]), tok, nil, &one)
	if one.ID != ids[1] || one.Status != "completed" || one.RunnerID == nil || *one.RunnerID != b.Runner.ID {
		t.Errorf("job = %+v", one)
	}
	f.expect(404, "GET", "/repos/acme/app/actions/jobs/1", tok, nil, nil)
	f.expect(404, "GET", "/repos/acme/app/actions/runs/1/jobs", tok, nil, nil)
	// One attempt so far: every filter and attempt 1 list the same jobs.
	for _, path := range []string{"/jobs?filter=latest", "/jobs?filter=all", "/attempts/1/jobs"} {
		var again struct {
			TotalCount int `json:"total_count"`
			Jobs       []struct {
				ID         int64 `json:"id"`
				RunAttempt int   `json:"run_attempt"`
			} `json:"jobs"`
		}
		f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d%s", runID, path), tok, nil, &again)
		if again.TotalCount != 2 || again.Jobs[0].ID != ids[0] || again.Jobs[1].RunAttempt != 1 {
			t.Errorf("%s: %+v", path, again)
		}
	}
	f.expect(422, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/jobs?filter=newest", runID), tok, nil, nil)
	f.expect(404, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/attempts/2/jobs", runID), tok, nil, nil)
	f.expect(404, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d/attempts/0/jobs", runID), tok, nil, nil)
	if j := f.job(ids[0]); j.RunAttempt != 1 || j.RerunOf != 0 || j.RerunAs != 0 {
		t.Errorf("job info = %+v", j)
	}
	f.expect(200, "GET", fmt.Sprintf("/repos/acme/app/actions/runs/%d", runID), tok, nil, nil)
	for _, id := range ids {
		if j := f.job(id); j.Claims != 1 {
			t.Errorf("job %d claimed %d times", id, j.Claims)
		}
	}
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t)
	tok := f.token(f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app"))
	path := "/installation/repositories"
	r1 := f.expect(200, "GET", path, tok, nil, nil)
	r2 := f.expect(200, "GET", path, tok, nil, nil)
	for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Used", "X-RateLimit-Reset"} {
		if r2.Header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	u1, _ := strconv.Atoi(r1.Header.Get("X-RateLimit-Used"))
	u2, _ := strconv.Atoi(r2.Header.Get("X-RateLimit-Used"))
	rem, _ := strconv.Atoi(r2.Header.Get("X-RateLimit-Remaining"))
	if u2 != u1+1 || rem != 5000-u2 {
		t.Errorf("used %d then %d, remaining %d", u1, u2, rem)
	}

	f.srv.RateLimit(2, ghfake.RateLimitPrimary)
	for range 2 {
		resp, body := f.do("GET", path, tok, nil)
		reset, _ := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64)
		if resp.StatusCode != 403 || resp.Header.Get("X-RateLimit-Remaining") != "0" ||
			reset < time.Now().Unix() || reset > time.Now().Add(time.Minute).Unix() {
			t.Errorf("primary: %d remaining=%q reset=%d: %s", resp.StatusCode,
				resp.Header.Get("X-RateLimit-Remaining"), reset, body)
		}
	}
	f.expect(200, "GET", path, tok, nil, nil)

	f.srv.RateLimit(1, ghfake.RateLimitSecondary)
	resp, body := f.do("POST", "/app/installations/1/access_tokens", "Bearer "+f.jwt(), nil)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(body), "secondary") {
		t.Errorf("secondary: %d retry-after=%q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	f.expect(200, "GET", path, tok, nil, nil)

	// The runner protocol is not rate limited.
	f.srv.RateLimit(5, ghfake.RateLimitPrimary)
	f.expect(401, "POST", runnerapi.PathSession, "RunnerToken nope", nil, nil)
	f.srv.RateLimit(0, ghfake.RateLimitPrimary)
	f.expect(200, "GET", path, tok, nil, nil)
}

func TestUnknownRoute(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do("GET", "/nope", "", nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "Not Found") {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

func TestPermissions(t *testing.T) {
	f := newFixture(t)
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	other := f.srv.AddInstallation("bob", ghfake.AccountUser, "bob/lib")
	perms := func() (token, installation map[string]string) {
		t.Helper()
		var tok struct {
			Permissions map[string]string `json:"permissions"`
		}
		f.expect(201, "POST", fmt.Sprintf("/app/installations/%d/access_tokens", inst), "Bearer "+f.jwt(), nil, &tok)
		var insts []struct {
			ID          int64             `json:"id"`
			Permissions map[string]string `json:"permissions"`
		}
		f.expect(200, "GET", "/app/installations", "Bearer "+f.jwt(), nil, &insts)
		for _, in := range insts {
			if in.ID == inst {
				installation = in.Permissions
			}
		}
		return tok.Permissions, installation
	}
	tok, in := perms()
	if tok["actions"] != "read" || in["actions"] != "read" || tok["administration"] != "write" || in["metadata"] != "read" {
		t.Fatalf("default permissions: token %v, installation %v", tok, in)
	}

	if err := f.srv.SetPermissions(inst, map[string]string{"actions": "write", "metadata": ""}); err != nil {
		t.Fatal(err)
	}
	tok, in = perms()
	if tok["actions"] != "write" || in["actions"] != "write" || tok["administration"] != "write" {
		t.Errorf("after SetPermissions: token %v, installation %v", tok, in)
	}
	if _, ok := in["metadata"]; ok {
		t.Errorf("metadata not taken away: %v", in)
	}
	if err := f.srv.SetPermissions(inst, map[string]string{"actions": "execute"}); !errors.Is(err, ghfake.ErrInvalid) {
		t.Errorf("bad level: %v, want ErrInvalid", err)
	}
	if err := f.srv.SetPermissions(999, map[string]string{"actions": "write"}); !errors.Is(err, ghfake.ErrNotFound) {
		t.Errorf("unknown installation: %v, want ErrNotFound", err)
	}

	// The control API does the same, and leaves other installations alone.
	path := fmt.Sprintf("/_ghfake/installations/%d/permissions", inst)
	f.expect(204, "PUT", path, "", map[string]string{"actions": "read"}, nil)
	if tok, _ := perms(); tok["actions"] != "read" {
		t.Errorf("after PUT: token %v", tok)
	}
	f.expect(422, "PUT", path, "", map[string]string{"actions": "all"}, nil)
	f.expect(400, "PUT", path, "", []string{"actions"}, nil)
	f.expect(404, "PUT", "/_ghfake/installations/999/permissions", "", map[string]string{"actions": "write"}, nil)
	var insts []struct {
		ID          int64             `json:"id"`
		Permissions map[string]string `json:"permissions"`
	}
	f.expect(200, "GET", "/app/installations", "Bearer "+f.jwt(), nil, &insts)
	for _, in := range insts {
		if in.ID == other && (in.Permissions["actions"] != "read" || in.Permissions["metadata"] != "read") {
			t.Errorf("other installation's permissions changed: %v", in.Permissions)
		}
	}
}
