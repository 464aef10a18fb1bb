package dashboard

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// Insights scopes the fake's insights as the control plane does: by the
// org of each group, run and job, and by the query's org and repository.
func (f *fakeBackend) Insights(ctx context.Context, s Scope, q InsightsQuery) (Insights, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inQueries = append(f.inQueries, q)
	keep := func(org, repo string) bool {
		return f.sees(s, org) && (q.Org == "" || strings.EqualFold(q.Org, org)) && (q.Repo == "" || strings.EqualFold(q.Repo, repo))
	}
	out := Insights{Days: q.Days, By: q.By, Since: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 1-q.Days),
		Until: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	for _, r := range f.insights.Rows {
		if keep(r.Org, r.Repo) {
			out.Rows = append(out.Rows, r)
		}
	}
	for _, i := range f.insights.Increases {
		if keep(i.Org, i.Repo) {
			out.Increases = append(out.Increases, i)
		}
	}
	for _, r := range f.insights.Slowest {
		org, _, _ := strings.Cut(r.Repo, "/")
		if keep(org, r.Repo) {
			out.Slowest = append(out.Slowest, r)
		}
	}
	return out, nil
}

// testInsights: acme/app ran more and slower than the period before,
// globex/secret is new; acme/app's build got slower this week; the
// longest runs of both.
func testInsights() Insights {
	acme := store.StatsKey{Org: "acme", Repo: "acme/app", Workflow: "CI", Name: "build", Arch: arch.AMD64}
	globex := store.StatsKey{Org: "globex", Repo: "globex/secret", Workflow: "<b>wf</b>", Name: "e2e", Arch: arch.ARM64}
	return Insights{
		Rows: []InsightRow{
			{StatsKey: acme, Current: store.JobStats{StatsKey: acme, Jobs: 30, Ran: 30, Succeeded: 27, VCPUMinutes: 1200,
				QueueP50: 12, QueueP95: 95, RunP50: 600, RunP95: 900},
				Previous: &store.JobStats{StatsKey: acme, Jobs: 20, Ran: 20, Succeeded: 20, VCPUMinutes: 600,
					QueueP50: 12.5, QueueP95: 200, RunP50: 400, RunP95: 880}},
			{StatsKey: globex, Current: store.JobStats{StatsKey: globex, Jobs: 4, Ran: 0}},
		},
		Increases: []Increase{{StatsKey: acme, WasP50: 400, NowP50: 600, Runs: 30}},
		Slowest: []store.SlowRun{
			{JobID: 1, Repo: "acme/app", Workflow: "CI", Name: "build", Arch: arch.AMD64, RunS: 3725, HTMLURL: "https://github.com/acme/app/actions/runs/1/job/1"},
			{JobID: 2, Repo: "globex/secret", Workflow: "CI", Name: "e2e", Arch: arch.ARM64, RunS: 1800, HTMLURL: "javascript:alert(1)"},
		},
	}
}

func TestInsightsPage(t *testing.T) {
	e := newEnv(t)
	e.be.insights = testInsights()
	c := e.login("admin-token")
	w := e.do("GET", "/insights", c, nil, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("insights: %d %s", w.Code, w.Body)
	}
	body := w.Body.String()
	if q := e.be.inQueries[0]; q != (InsightsQuery{Days: 7, By: store.ByRepo}) {
		t.Errorf("default query %+v, want 7 days by repo", q)
	}
	for _, want := range []string{
		`href="/insights" aria-current="page"`,
		`<a href="/insights?by=workflow&amp;days=7&amp;repo=acme%2Fapp">acme/app</a>`, // drill down
		`<b>30</b><span class="was">was 20 <span class="delta ">&#43;50%</span>`,      // jobs: neither better nor worse
		`<b>90%</b><span class="was">was 100% <span class="delta worse">-10 pts</span>`,
		`<b>10m00s</b><span class="was">was 6m40s <span class="delta worse">&#43;50%</span>`, // run p50
		`<b>1m35s</b><span class="was">was 3m20s <span class="delta better">-53%</span>`,     // queue p95
		`<b>12s</b><span class="was">was 12s <span class="delta ">-4%</span>`,                // queue p50: noise
		`<b>15m00s</b><span class="was">was 14m40s <span class="delta ">&#43;2%</span>`,      // run p95: noise
		`globex/secret</a> <span class="badge new">new</span>`, `<b>–</b>`,                   // no success rate without runs
		`<a href="/jobs?arch=amd64&amp;q=build&amp;repo=acme%2Fapp">acme/app</a>`, // slower this week
		`<td class="num">6m40s</td><td class="num"><b>10m00s</b></td><td class="num"><span class="delta worse">&#43;50%</span>`,
		`<a href="/jobs/1">1</a>`, `<td class="num">1h02m</td>`, `href="https://github.com/acme/app/actions/runs/1/job/1"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the insights page lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("the page:\n%s", body)
	}
	if strings.Contains(body, `href="javascript:`) || strings.Contains(body, "<b>wf</b>") {
		t.Errorf("the insights page lets a URL or markup through:\n%s", body)
	}

	// html/template writes + as &#43;: the page shows +50%.
	// Grouped by job: each links to its runs; by org: to the org's repositories.
	body = e.do("GET", "/insights?days=28&by=job&repo=ACME/app", c, nil, nil).Body.String()
	if q := e.be.inQueries[len(e.be.inQueries)-1]; q != (InsightsQuery{Days: 28, By: store.ByJob, Repo: "ACME/app"}) {
		t.Errorf("query %+v", q)
	}
	if !strings.Contains(body, `<a href="/jobs?arch=amd64&amp;q=build&amp;repo=acme%2Fapp">acme/app</a><br><span class="muted">CI / build</span>`) ||
		strings.Contains(body, "globex") || !strings.Contains(body, `<option value="28" selected>`) || !strings.Contains(body, `<option selected>job</option>`) {
		t.Errorf("insights by job for acme/app:\n%s", body)
	}
	body = e.do("GET", "/insights?by=org&days=1", c, nil, nil).Body.String()
	if !strings.Contains(body, `<a href="/insights?by=repo&amp;days=1&amp;org=acme">acme</a>`) || !strings.Contains(body, "last 1 day ") {
		t.Errorf("insights by org:\n%s", body)
	}
}

// A scoped token sees its orgs' groups, slower jobs and runs, and no
// other's, even when it asks for another org.
func TestInsightsScoped(t *testing.T) {
	e := newEnv(t)
	e.be.insights = testInsights()
	c := e.login("acme-token")
	for _, p := range []string{"/insights", "/insights?org=globex", "/insights?repo=globex/secret&by=job"} {
		body := e.do("GET", p, c, nil, nil).Body.String()
		if strings.Contains(body, "globex/secret<") || strings.Contains(body, `href="/jobs/2"`) || !strings.Contains(body, "Your token sees acme only") {
			t.Errorf("%s for a read:acme token:\n%s", p, body)
		}
	}
	if body := e.do("GET", "/insights", c, nil, nil).Body.String(); !strings.Contains(body, `href="/jobs/1"`) {
		t.Errorf("acme's own runs missing:\n%s", body)
	}
}

func TestInsightsEmptyAndMany(t *testing.T) {
	e := newEnv(t)
	c := e.login("read-token")
	body := e.do("GET", "/insights?org=nobody", c, nil, nil).Body.String()
	for _, want := range []string{"No job ended in this period and filter.", "No job got slower.", "No runs in this period."} {
		if !strings.Contains(body, want) {
			t.Errorf("empty insights lack %q", want)
		}
	}
	for i := range maxInsightRows + 7 {
		k := store.StatsKey{Org: "acme", Repo: fmt.Sprintf("acme/r%03d", i), Arch: arch.AMD64}
		e.be.insights.Rows = append(e.be.insights.Rows, InsightRow{StatsKey: k, Current: store.JobStats{StatsKey: k, Jobs: 1000 - i}})
	}
	body = e.do("GET", "/insights", c, nil, nil).Body.String()
	if n := strings.Count(body, "<tr data-group="); n != maxInsightRows || !strings.Contains(body, "And 7 more groups") ||
		!strings.Contains(body, "acme/r000") || strings.Contains(body, "acme/r200") {
		t.Errorf("%d rows of %d; the page should show the first %d and say how many more", n, maxInsightRows+7, maxInsightRows)
	}
}

func TestInsightChanges(t *testing.T) {
	for _, tc := range []struct {
		was, now float64
		change   string
		worse    string // judge as a time
	}{
		{100, 150, "+50%", "worse"},
		{100, 105, "+5%", ""},
		{100, 50, "-50%", "better"},
		{0, 0, "±0%", ""},
		{100, 100.4, "±0%", ""},
		{0, 10, "new", "worse"},
	} {
		ch := relChange(tc.was, tc.now)
		if got := fmtChange(ch); got != tc.change {
			t.Errorf("change %v → %v: %q, want %q", tc.was, tc.now, got, tc.change)
		}
		if got := judge(ch, changeShare, true); got != tc.worse {
			t.Errorf("a time %v → %v: %q, want %q", tc.was, tc.now, got, tc.worse)
		}
	}
	if got := judge(-5, changePoints, false); got != "worse" {
		t.Errorf("success rate down 5 points: %q", got)
	}
	// A short wait that grew by a fifth but by under 5 s is not marked.
	k := store.StatsKey{Org: "acme", Repo: "acme/app", Arch: arch.AMD64}
	l := makeInsightLine(InsightsQuery{Days: 7, By: store.ByRepo}, InsightRow{StatsKey: k,
		Current: store.JobStats{Jobs: 1, Ran: 1, QueueP50: 8.5, QueueP95: 60}, Previous: &store.JobStats{Jobs: 1, Ran: 1, QueueP50: 7, QueueP95: 40}})
	if q50, q95 := l.Cells[3], l.Cells[4]; q50.Change != "+21%" || q50.Class != "" || q95.Change != "+50%" || q95.Class != "worse" {
		t.Errorf("queue cells %+v %+v", q50, q95)
	}
	if fmtChange(math.NaN()) != "" || judge(math.NaN(), 1, true) != "" {
		t.Error("NaN changes")
	}
	for s, want := range map[float64]string{0: "–", 0.5: "<1s", 59: "59s", 3725: "1h02m", math.Inf(1): "–", math.NaN(): "–"} {
		if got := fmtSeconds(s); got != want {
			t.Errorf("fmtSeconds(%v) = %q, want %q", s, got, want)
		}
	}
}
