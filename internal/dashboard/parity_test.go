package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/parity"
)

// Parity scopes the fake's view as the control plane does: by each row's,
// repository's, organisation's and move's org, and by the query's org and
// repository; Days 0 is the policy's 14.
func (f *fakeBackend) Parity(ctx context.Context, s Scope, q ParityQuery) (parity.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pQueries = append(f.pQueries, q)
	keep := func(org, repo string) bool {
		return f.sees(s, org) && (q.Org == "" || strings.EqualFold(q.Org, org)) && (q.Repo == "" || repo == "" || strings.EqualFold(q.Repo, repo))
	}
	days := q.Days
	if days == 0 {
		days = 14
	}
	v := f.parity
	out := parity.View{Days: days, Since: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 1-days),
		Until: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Tiers: parity.DefaultTiers}
	for _, r := range v.Rows {
		if keep(r.Org, r.Repo) {
			out.Rows = append(out.Rows, r)
		}
	}
	for _, r := range v.Repos {
		if keep(r.Org, r.Repo) {
			out.Repos = append(out.Repos, r)
		}
	}
	for _, o := range v.Orgs {
		if keep(o.Org, "") {
			out.Orgs = append(out.Orgs, o)
		}
	}
	for _, m := range v.Recent {
		if keep(m.Org, m.Repo) {
			out.Recent = append(out.Recent, m)
		}
	}
	return out, nil
}

// testParity: acme/app (tier-2) with a job on both, a flaky one, an
// amd64-only one with its nudge and one, named by a stranger, failing on
// arm64 where its runs were emulated; acme/db (tier-1 since 20 December);
// globex/secret, arm64 only; acme/db's move up and globex/secret's first
// tier.
func testParity() parity.View {
	stats := func(runs, passed, failed int, p50 float64, emulated int, names ...string) *parity.ArchStats {
		rate := -1.0
		if passed+failed > 0 {
			rate = float64(passed) / float64(passed+failed)
		}
		return &parity.ArchStats{Runs: runs, Passed: passed, Failed: failed, SuccessRate: rate, RunP50: p50, Emulated: emulated, Names: names}
	}
	const nudge = "strategy:\n  matrix:\n    runner: [tandem-amd64-2cpu-2gb, tandem-arm64-2cpu-2gb]\nruns-on: ${{ matrix.runner }}"
	return parity.View{
		Rows: []parity.Row{
			{Org: "acme", Repo: "acme/app", Workflow: "CI", Job: "build", Status: parity.Both, Ratio: 1.25,
				AMD64: stats(20, 20, 0, 240, 0, "build (amd64)"), ARM64: stats(20, 20, 0, 300, 0, "build (arm64)", "build-aarch64")},
			{Org: "acme", Repo: "acme/app", Workflow: "CI", Job: "lint", Status: parity.AMD64Only, Nudge: nudge,
				AMD64: stats(12, 12, 0, 30, 0, "lint")},
			{Org: "acme", Repo: "acme/app", Workflow: "CI", Job: "test", Status: parity.ARM64Flaky, Ratio: 0.9,
				AMD64: stats(10, 10, 0, 600, 0, "test (x86_64)"), ARM64: stats(10, 8, 2, 540, 0, "test (arm64)")},
			{Org: "acme", Repo: "acme/app", Workflow: "<i>wf</i>", Job: "<script>alert(1)</script>", Status: parity.ARM64Failing, Ratio: 6,
				AMD64: stats(3, 3, 0, 60, 0, "<script>alert(1)</script> (amd64)"), ARM64: stats(3, 0, 3, 360, 3, "<script>alert(1)</script> (arm64)")},
			{Org: "acme", Repo: "acme/db", Workflow: "ci", Job: "pkg", Status: parity.Both, Ratio: 1,
				AMD64: stats(12, 12, 0, 100, 0, "pkg-x86_64"), ARM64: stats(12, 12, 0, 100, 0, "pkg-aarch64")},
			{Org: "globex", Repo: "globex/secret", Workflow: "CI", Job: "e2e", Status: parity.ARM64Only,
				ARM64: stats(4, 0, 0, 90, 0, "e2e (arm64)")},
		},
		Repos: []parity.RepoTier{
			{Org: "acme", Repo: "acme/app", Tier: "tier-2", Reason: "not tier-1: CI / lint runs on amd64 only <b>(tier-1 wants every job on both)</b>",
				Jobs: 4, OnBoth: 3, ARM64Runs: 33, ARM64SuccessRate: 28.0 / 33},
			{Org: "acme", Repo: "acme/db", Tier: "tier-1", Reason: "tier-1: 1 of 1 jobs on both architectures", Jobs: 1, OnBoth: 1,
				ARM64Runs: 12, ARM64SuccessRate: 1, Since: time.Date(2025, 12, 20, 10, 0, 0, 0, time.UTC)},
			{Org: "globex", Repo: "globex/secret", Tier: "tier-2", Reason: "not tier-1: CI / e2e runs on arm64 only", Jobs: 1,
				ARM64Runs: 4, ARM64SuccessRate: -1},
		},
		Orgs: []parity.OrgTier{
			{Org: "acme", Tier: "tier-2", Repos: map[string]int{"tier-1": 1, "tier-2": 1}},
			{Org: "globex", Tier: "tier-2", Repos: map[string]int{"tier-2": 1}},
		},
		Recent: []parity.Move{
			{At: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC), Org: "acme", Repo: "acme/db", From: "tier-2", To: "tier-1", Up: true, Reason: "tier-1: all good"},
			{At: time.Date(2025, 12, 30, 8, 0, 0, 0, time.UTC), Org: "globex", Repo: "globex/secret", To: "tier-2", Up: true, Reason: "first seen"},
			{At: time.Date(2025, 12, 29, 8, 0, 0, 0, time.UTC), Org: "acme", Repo: "acme/app", From: "tier-1", To: "tier-2", Reason: "lint added"},
		},
	}
}

// section is the part of a page from the table with id to its end.
func section(t *testing.T, body, id string) string {
	t.Helper()
	i := strings.Index(body, `id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no table %s in the page:\n%s", id, body)
	}
	rest := body[i:]
	return rest[:strings.Index(rest, "</table>")]
}

func TestParityPage(t *testing.T) {
	e := newEnv(t)
	e.be.parity = testParity()
	c := e.login("admin-token")
	w := e.do("GET", "/parity", c, nil, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("parity: %d %s", w.Code, w.Body)
	}
	body := w.Body.String()
	if q := e.be.pQueries[0]; q != (ParityQuery{}) {
		t.Errorf("default query %+v, want the backend's period", q)
	}
	orgs, repos, matrix, moves := section(t, body, "parity-orgs"), section(t, body, "parity-repos"),
		section(t, body, "parity-matrix"), section(t, body, "parity-moves")
	for _, c := range []struct{ where, part, want string }{
		{"page", body, `href="/parity" aria-current="page"`},
		{"page", body, "over the last 14 days (whole UTC days, today's so far: since 2025-12-20)"},
		{"page", body, `<input name="days" type="number" min="1" max="90" value="14">`},
		// Organisations: the lowest tier of their repositories, and how many in each.
		{"orgs", orgs, `<tr data-org="acme"><td><a href="/parity?org=acme">acme</a></td><td><span class="tier tier-mid">tier-2</span></td>` + "\n<td>tier-1: 1, tier-2: 1</td>"},
		{"orgs", orgs, `<td>tier-2: 1</td>`},
		// Repositories: tier, since, jobs on both, arm64's pass rate, why, and the badge.
		{"repos", repos, `<tr data-repo="acme/db"><td><a href="/parity?repo=acme%2Fdb">acme/db</a></td>`},
		{"repos", repos, `<span class="pbadge" title="the repository's parity badge"><span>arm64 parity</span><span class="tier-best">tier-1 · 100%</span></span>`},
		{"repos", repos, `<td><span class="tier tier-best">tier-1</span></td>` + "\n" + `<td class="when"><span title="2025-12-20 10:00:00 UTC">2025-12-20</span></td>` + "\n" + `<td class="num">1 of 1</td><td class="num">100%</td>`},
		{"repos", repos, `<span class="tier-mid">tier-2 · 84.8%</span>`},
		{"repos", repos, `<span class="muted">not recorded yet</span>`},
		{"repos", repos, `<td class="num">3 of 4</td><td class="num">84.8%</td><td class="reason">not tier-1: CI / lint runs on amd64 only &lt;b&gt;(tier-1 wants every job on both)&lt;/b&gt;</td>`},
		{"repos", repos, `<span class="tier-mid">tier-2 · none</span>`},
		{"page", body, `<b>tier-1</b> (every job runs and passes on both architectures); <b>tier-2</b> (Arm64 runs, below tier 1); <b>tier-3</b> (x86_64 only).`},
		// The matrix: each status coloured, the numbers per architecture, the names matched.
		{"page", body, `<span class="status parity-failing">arm64 failing</span> 1, <span class="status parity-one">amd64 only</span> 1, <span class="status parity-flaky">arm64 flaky</span> 1, <span class="status parity-one">arm64 only</span> 1, <span class="status parity-both">both</span> 2`},
		{"matrix", matrix, `<tr class="parity-both" data-repo="acme/app" data-job="build"><td>acme/app<br><span class="muted">CI / </span><b>build</b></td>` + "\n" + `<td><span class="status parity-both">both</span></td>`},
		{"matrix", matrix, `<td class="arch"><b>20 runs</b><br>success 100%<br>median 4m00s</td>` + "\n" + `<td class="arch"><b>20 runs</b><br>success 100%<br>median 5m00s</td>` + "\n" + `<td class="num">1.25×</td>`},
		{"matrix", matrix, `<div><span class="muted">amd64:</span> <code>build (amd64)</code></div><div><span class="muted">arm64:</span> <code>build (arm64)</code>, <code>build-aarch64</code></div>`},
		{"matrix", matrix, `<span class="status parity-flaky">arm64 flaky</span>`},
		{"matrix", matrix, `<b>10 runs</b><br>success 80%<br>median 9m00s`},
		{"matrix", matrix, `<span class="status parity-failing">arm64 failing</span>`},
		{"matrix", matrix, `<b>3 runs</b><br>success 0%<br>median 6m00s<br><span class="badge emulated"`},
		{"matrix", matrix, `</span> 3 of 3</td>`},
		{"matrix", matrix, `<td class="num">6.00×<br><span class="muted">emulated</span></td>`},
		{"matrix", matrix, `<span class="status parity-one">arm64 only</span></td>` + "\n" + `<td class="arch"><span class="muted">–</span></td>` + "\n" + `<td class="arch"><b>4 runs</b><br>success none<br>median 1m30s</td>` + "\n" + `<td class="num">–</td>`},
		// The nudge of the amd64-only job.
		{"matrix", matrix, `<span class="status parity-one">amd64 only</span>` + "\n" + `<details class="nudge"><summary>Add arm64</summary>`},
		{"matrix", matrix, "<pre>strategy:\n  matrix:\n    runner: [tandem-amd64-2cpu-2gb, tandem-arm64-2cpu-2gb]\nruns-on: ${{ matrix.runner }}</pre></details>"},
		// A stranger's names, escaped.
		{"matrix", matrix, `data-job="&lt;script&gt;alert(1)&lt;/script&gt;"`},
		{"matrix", matrix, `<span class="muted">&lt;i&gt;wf&lt;/i&gt; / </span><b>&lt;script&gt;alert(1)&lt;/script&gt;</b>`},
		{"matrix", matrix, `<code>&lt;script&gt;alert(1)&lt;/script&gt; (arm64)</code>`},
		// Tier moves, newest first.
		{"moves", moves, `<tr data-repo="acme/db"><td class="when">2026-01-01 12:00:00</td><td>acme/db</td>` + "\n" + `<td>tier-2 → <span class="delta better">↑ tier-1</span></td>` + "\n" + `<td class="reason">tier-1: all good</td>`},
		{"moves", moves, `<td><span class="muted">(new)</span> → <span class="delta better">↑ tier-2</span></td>`},
		{"moves", moves, `<td>tier-1 → <span class="delta worse">↓ tier-2</span></td>`},
	} {
		if !strings.Contains(c.part, c.want) {
			t.Errorf("the %s lack %s", c.where, c.want)
		}
	}
	if strings.Count(matrix, "<details") != 1 {
		t.Errorf("%d nudges, want the amd64-only job's only", strings.Count(matrix, "<details"))
	}
	if strings.Contains(body, "<script>alert") || strings.Contains(body, "<i>wf") || strings.Contains(body, "<b>(tier-1") {
		t.Errorf("the page lets a stranger's markup through")
	}
	if i, j := strings.Index(moves, "acme/db"), strings.Index(moves, "globex/secret"); i < 0 || j < i {
		t.Errorf("moves not newest first:\n%s", moves)
	}
	if t.Failed() {
		t.Logf("the page:\n%s", body)
	}

	// The filters reach the Backend and stay in the form; links keep the period.
	body = e.do("GET", "/parity?days=28&org=acme&repo=acme/db", c, nil, nil).Body.String()
	if q := e.be.pQueries[len(e.be.pQueries)-1]; q != (ParityQuery{Days: 28, Org: "acme", Repo: "acme/db"}) {
		t.Errorf("query %+v", q)
	}
	for _, want := range []string{`value="28"`, `name="org" value="acme"`, `name="repo" value="acme/db"`, "last 28 days",
		`<a href="/parity?days=28&amp;repo=acme%2Fdb">acme/db</a>`} {
		if !strings.Contains(body, want) {
			t.Errorf("filtered page lacks %s", want)
		}
	}
	if strings.Contains(body, "acme/app") || strings.Contains(body, "globex") {
		t.Errorf("filtered to acme/db, the page shows others:\n%s", body)
	}
	if body := e.do("GET", "/parity?days=1", c, nil, nil).Body.String(); !strings.Contains(body, "over the last 1 day ") {
		t.Errorf("one day:\n%s", body)
	}
}

// Bad filters answer 400 with what is wrong, and never reach the Backend.
func TestParityBadQuery(t *testing.T) {
	e := newEnv(t)
	c := e.login("read-token")
	for want, qs := range map[string][]string{
		"days: want a whole number from 1 to 90": {"days=0", "days=91", "days=-3", "days=7.5", "days=x", "days=" + strings.Repeat("9", 40)},
		"repo: want OWNER/NAME":                  {"repo=app", "repo=a/b/c", "repo=" + url.QueryEscape("<script>/x"), "repo=a/" + strings.Repeat("b", 101)},
		"org: want an organisation": {"org=" + url.QueryEscape("<script>alert(1)</script>"), "org=acme/app", "org=" + strings.Repeat("a", 101),
			"org=" + url.QueryEscape("ac me")},
	} {
		for _, q := range qs {
			w := e.do("GET", "/parity?"+q, c, nil, nil)
			if body := w.Body.String(); w.Code != http.StatusBadRequest || !strings.Contains(body, want) || strings.Contains(body, "<script>") {
				t.Errorf("/parity?%s: %d, want 400 saying %q:\n%s", q, w.Code, want, body)
			}
		}
	}
	if len(e.be.pQueries) != 0 {
		t.Errorf("bad queries reached the Backend: %+v", e.be.pQueries)
	}
	// Spaces around a value are no error.
	if w := e.do("GET", "/parity?days=+7+&org=+acme+", c, nil, nil); w.Code != http.StatusOK || e.be.pQueries[0] != (ParityQuery{Days: 7, Org: "acme"}) {
		t.Errorf("padded values: %d %+v", w.Code, e.be.pQueries)
	}
}

// A scoped token sees its orgs' jobs, tiers and moves, and no other's,
// even when it asks for another org; the page says so.
func TestParityScoped(t *testing.T) {
	e := newEnv(t)
	e.be.parity = testParity()
	c := e.login("acme-token")
	for _, p := range []string{"/parity", "/parity?org=globex", "/parity?repo=globex/secret"} {
		body := e.do("GET", p, c, nil, nil).Body.String()
		if strings.Contains(body, "globex/secret<") || strings.Contains(body, `data-org="globex"`) || strings.Contains(body, "e2e") ||
			!strings.Contains(body, "Your token sees acme only") {
			t.Errorf("%s for a read:acme token:\n%s", p, body)
		}
	}
	if body := e.do("GET", "/parity", c, nil, nil).Body.String(); !strings.Contains(body, `data-repo="acme/db"`) {
		t.Errorf("acme's own repositories missing:\n%s", body)
	}
}

func TestParityEmptyAndMany(t *testing.T) {
	e := newEnv(t)
	c := e.login("read-token")
	body := e.do("GET", "/parity?org=nobody", c, nil, nil).Body.String()
	for _, want := range []string{"No organisation ran jobs in this period and filter.", "No repository ran jobs in this period and filter.",
		"No job ran in this period and filter.", "No repository changed tier in this period."} {
		if !strings.Contains(body, want) {
			t.Errorf("an empty parity page lacks %q", want)
		}
	}
	for i := range maxParityRows + 5 {
		e.be.parity.Rows = append(e.be.parity.Rows, parity.Row{Org: "acme", Repo: "acme/app", Workflow: "CI", Job: fmt.Sprintf("job%03d", i),
			Status: parity.AMD64Only, AMD64: &parity.ArchStats{Runs: 1, SuccessRate: -1}})
	}
	body = e.do("GET", "/parity", c, nil, nil).Body.String()
	if n := strings.Count(body, `<tr class="parity-one"`); n != maxParityRows || !strings.Contains(body, "And 5 more logical jobs") ||
		!strings.Contains(body, "job000") || strings.Contains(body, fmt.Sprintf("job%03d", maxParityRows)) {
		t.Errorf("%d rows of %d; the page should show the first %d and say how many more", n, maxParityRows+5, maxParityRows)
	}
	if !strings.Contains(body, "not on a Tandem amd64 label") {
		t.Errorf("an amd64-only job without a nudge should say why")
	}
}

func TestParityFormats(t *testing.T) {
	for x, want := range map[float64]string{-1: "none", 0: "0%", 1: "100%", 0.975: "97.5%", 28.0 / 33: "84.8%", 0.9999: "100%"} {
		if got := fmtShare(x); got != want {
			t.Errorf("fmtShare(%v) = %q, want %q", x, got, want)
		}
	}
	for name, want := range map[string]string{"tier-1": "tier-best", "TIER-2": "tier-mid", "tier-3": "tier-last", "gone": "tier-last"} {
		if got := tierClass(parity.DefaultTiers, name); got != want {
			t.Errorf("tierClass(%q) = %q, want %q", name, got, want)
		}
	}
	if got := tierClass([]parity.Tier{{Name: "only"}}, "only"); got != "tier-best" {
		t.Errorf("the only tier: %q", got)
	}
}
