package parity

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/extension"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

func stats(repo, wf, name string, a arch.Arch, ran, ok, failed, emulated int, p50 float64) store.JobStats {
	org := strings.Split(repo, "/")[0]
	labels := "tandem-" + string(a) + "-2cpu-4gb"
	return store.JobStats{StatsKey: store.StatsKey{Org: org, Repo: repo, Workflow: wf, Name: name, Arch: a},
		Jobs: ran, Ran: ran, Succeeded: ok, Failed: failed, Emulated: emulated, RunP50: p50, RunP95: 2 * p50, QueueP50: 5, Labels: labels}
}

// history is the hand-computed case: acme/web has a job on both (build),
// one flaky on arm64 whose latest commit failed on arm64 only (test), and
// one on amd64 only (lint); acme/db runs everything on both and passes;
// bob/cli runs on amd64 only; carol/tiny is first-class but for its run
// count.
func history() ([]store.JobStats, []store.CommitParity) {
	s := []store.JobStats{
		stats("acme/web", "ci", "build (amd64)", arch.AMD64, 20, 19, 1, 0, 100),
		stats("acme/web", "ci", "build (arm64)", arch.ARM64, 20, 19, 0, 20, 400), // one cancelled
		stats("acme/web", "ci", "test (ubuntu, x64)", arch.AMD64, 10, 10, 0, 0, 60),
		stats("acme/web", "ci", "test (ubuntu, arm64)", arch.ARM64, 10, 8, 2, 0, 90),
		stats("acme/web", "ci", "lint", arch.AMD64, 12, 12, 0, 0, 30),
		stats("acme/db", "release", "pkg-x86_64", arch.AMD64, 15, 15, 0, 0, 200),
		stats("acme/db", "release", "pkg-aarch64", arch.ARM64, 15, 15, 0, 0, 220),
		stats("bob/cli", "ci", "unit", arch.AMD64, 30, 29, 1, 0, 45),
		stats("carol/tiny", "ci", "unit (arm64)", arch.ARM64, 3, 3, 0, 0, 10),
		stats("carol/tiny", "ci", "unit (amd64)", arch.AMD64, 3, 3, 0, 0, 10),
		{StatsKey: store.StatsKey{Org: "bob", Repo: "bob/cli", Workflow: "ci", Name: "never", Arch: arch.ARM64}, Jobs: 2}, // never ran
	}
	c := []store.CommitParity{
		{Org: "acme", Repo: "acme/web", Workflow: "ci", Logical: "test (ubuntu)", Compared: 10, ARM64Failed: 2,
			LatestSHA: "0123456789abcdef", LatestAMD64: store.Passed, LatestARM64: store.Failed},
		{Org: "acme", Repo: "acme/web", Workflow: "ci", Logical: "build", Compared: 19, ARM64Failed: 0, AMD64Failed: 1,
			LatestSHA: "fedcba", LatestAMD64: store.Passed, LatestARM64: store.Passed},
		{Org: "gone", Repo: "gone/x", Workflow: "ci", Logical: "y", Compared: 1}, // no runs in the period
	}
	return s, c
}

func testPolicy() Policy {
	var p Policy
	p.Defaults()
	return p
}

func TestMatrix(t *testing.T) {
	s, c := history()
	rows := Matrix(s, c, testPolicy(), "tandem")
	type want struct {
		repo, job string
		status    Status
		ratio     float64
	}
	wants := []want{
		{"acme/db", "pkg", Both, 220.0 / 200},
		{"acme/web", "build", Both, 4},
		{"acme/web", "lint", AMD64Only, 0},
		{"acme/web", "test (ubuntu)", ARM64Failing, 1.5},
		{"bob/cli", "unit", AMD64Only, 0},
		{"carol/tiny", "unit", Both, 1},
	}
	if len(rows) != len(wants) {
		t.Fatalf("%d rows, want %d: %+v", len(rows), len(wants), rows)
	}
	for i, w := range wants {
		r := rows[i]
		if r.Repo != w.repo || r.Job != w.job || r.Status != w.status {
			t.Errorf("row %d: %s %q %s, want %s %q %s", i, r.Repo, r.Job, r.Status, w.repo, w.job, w.status)
		}
		// Percentiles come back as their buckets' times (within 4.5%).
		if w.ratio == 0 && r.Ratio != 0 || w.ratio != 0 && (r.Ratio < w.ratio*0.9 || r.Ratio > w.ratio*1.1) {
			t.Errorf("row %d (%s): ratio %v, want about %v", i, r.Job, r.Ratio, w.ratio)
		}
	}
	build := rows[1]
	if build.ARM64.Emulated != 20 || build.ARM64.Runs != 20 || build.ARM64.SuccessRate != 1 || build.AMD64.SuccessRate != 0.95 {
		t.Errorf("build: %+v / %+v", build.AMD64, build.ARM64)
	}
	if got := build.ARM64.Names; len(got) != 1 || got[0] != "build (arm64)" {
		t.Errorf("build's arm64 names %q", got)
	}
	test := rows[3]
	if test.Compared != 10 || test.ARM64Failed != 2 || test.LatestSHA != "0123456789abcdef" {
		t.Errorf("test's commits: %+v", test)
	}
	lint := rows[2]
	wantNudge := "strategy:\n  matrix:\n    runner: [tandem-amd64-2cpu-4gb, tandem-arm64-2cpu-4gb]\nruns-on: ${{ matrix.runner }}"
	if lint.Nudge != wantNudge {
		t.Errorf("lint's nudge:\n%s\nwant\n%s", lint.Nudge, wantNudge)
	}
	if build.Nudge != "" {
		t.Errorf("a job on both got a nudge: %q", build.Nudge)
	}

	// Without the failing latest commit, test is flaky: 80% against 100%
	// is more than the 5-point margin; with a margin of 25 points, both.
	c[0].LatestARM64 = store.Passed
	if r := Matrix(s, c, testPolicy(), "tandem")[3]; r.Status != ARM64Flaky {
		t.Errorf("test with its latest commit passing: %s", r.Status)
	}
	loose := testPolicy()
	loose.FlakyMargin = 0.25
	if r := Matrix(s, c, loose, "tandem")[3]; r.Status != Both {
		t.Errorf("test with a 25-point margin: %s", r.Status)
	}
}

func TestTiers(t *testing.T) {
	s, c := history()
	pol := testPolicy()
	repos := pol.RepoTiers(Matrix(s, c, pol, "tandem"))
	want := []struct{ repo, tier, reason string }{
		{"acme/db", "tier-1", "tier-1 (every job runs and passes on both architectures): 1 of 1 jobs on both architectures; arm64 passed 100% of its runs"},
		{"acme/web", "tier-2", "not tier-1: ci / lint runs on amd64 only (tier-1 wants every job on both)"},
		{"bob/cli", "tier-3", "not tier-2: no job runs on arm64 (tier-2 wants one)"},
		{"carol/tiny", "tier-2", "not tier-1: ci / unit ran 3 times on amd64 (tier-1 wants 10)"},
	}
	if len(repos) != len(want) {
		t.Fatalf("%d repositories: %+v", len(repos), repos)
	}
	for i, w := range want {
		if r := repos[i]; r.Repo != w.repo || r.Tier != w.tier || r.Reason != w.reason {
			t.Errorf("repo %d:\n got %s %s %q\nwant %s %s %q", i, r.Repo, r.Tier, r.Reason, w.repo, w.tier, w.reason)
		}
	}
	web := repos[1]
	// arm64 of acme/web: build 19 passed 0 failed, test 8 and 2: 27/29.
	if web.Jobs != 3 || web.OnBoth != 2 || web.ARM64Runs != 30 || web.ARM64SuccessRate != 27.0/29 ||
		web.Statuses[ARM64Failing] != 1 || web.Statuses[AMD64Only] != 1 || web.Statuses[Both] != 1 {
		t.Errorf("acme/web: %+v", web)
	}
	// Fixing lint leaves tier 1's other conditions: test's arm64 failures.
	s = append(s, stats("acme/web", "ci", "lint (arm64)", arch.ARM64, 12, 12, 0, 0, 30))
	repos = pol.RepoTiers(Matrix(s, c, pol, "tandem"))
	if r := repos[1]; r.Tier != "tier-2" || r.Reason != "not tier-1: ci / test (ubuntu) fails on arm64 where amd64 passes (commit 0123456789ab)" {
		t.Errorf("acme/web with lint on both: %s %q", r.Tier, r.Reason)
	}
	c[0].LatestARM64 = store.Passed
	repos = pol.RepoTiers(Matrix(s, c, pol, "tandem"))
	if r := repos[1]; r.Reason != "not tier-1: ci / test (ubuntu) passed 80% of 10 runs on arm64 (tier-1 wants 95%)" {
		t.Errorf("acme/web, latest commit passing: %q", r.Reason)
	}
	orgs := pol.OrgTiers(repos)
	if len(orgs) != 3 || orgs[0].Org != "acme" || orgs[0].Tier != "tier-2" || orgs[0].Repos["tier-1"] != 1 || orgs[0].Repos["tier-2"] != 1 ||
		orgs[1].Tier != "tier-3" || orgs[2].Tier != "tier-2" {
		t.Errorf("orgs: %+v", orgs)
	}
}

func TestPolicyValidate(t *testing.T) {
	p := testPolicy()
	if err := p.Validate("parity"); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := Policy{Days: 0, FlakyMargin: 1.5, Tiers: []Tier{{Name: "gold", MinSuccess: 2}, {Name: "Gold"}, {Name: "x|y"}, {Name: "last", MinRuns: -1, ARM64Runs: true}}}
	err := bad.Validate("parity")
	for _, want := range []string{"parity.days 0", "parity.flaky_margin 1.5", "parity.tiers[0].min_success 2", `parity.tiers[1].name "Gold": named twice`,
		`parity.tiers[2].name "x|y"`, "parity.tiers[3].min_runs -1", "parity.tiers[3] (last): the last tier must have no conditions"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v: lacks %q", err, want)
		}
	}
}

func job(id int64, name string, a arch.Arch, attempt int, state store.JobState, concl string) store.Job {
	return store.Job{ID: id, Repo: "acme/web", Workflow: "ci", Name: name, Arch: a, RunAttempt: attempt, State: state, Conclusion: concl}
}

func TestCheck(t *testing.T) {
	done, ok := store.JobCompleted, "success"
	jobs := []store.Job{
		job(1, "build (amd64)", arch.AMD64, 1, done, ok),
		job(2, "build (arm64)", arch.ARM64, 1, done, "failure"),
		job(3, "build (arm64)", arch.ARM64, 2, done, ok), // re-run passed
		job(4, "test-x64", arch.AMD64, 1, done, ok),
		job(5, "test-arm64", arch.ARM64, 1, done, ok),
	}
	res := Check("acme/web", "abc", RequireBoth, jobs)
	if res.Verdict != Pass || len(res.Jobs) != 2 || res.Jobs[0].ARM64.JobID != 3 || res.Summary != "pass: 2 of 2 jobs passed on both" {
		t.Errorf("all passed: %+v", res)
	}
	// A job on amd64 only fails "both", passes "amd64".
	jobs = append(jobs, job(6, "lint", arch.AMD64, 1, done, ok))
	if res := Check("acme/web", "abc", RequireBoth, jobs); res.Verdict != Fail || res.Jobs[1].Why != "did not run on arm64" {
		t.Errorf("lint on amd64 only, both: %+v", res)
	}
	if res := Check("acme/web", "abc", RequireAMD64, jobs); res.Verdict != Pass {
		t.Errorf("lint on amd64 only, amd64: %+v", res)
	}
	// A running job is pending; a failure beats pending.
	jobs = append(jobs[:5], job(7, "lint", arch.AMD64, 1, done, ok), job(8, "lint (arm64)", arch.ARM64, 1, store.JobRunning, ""))
	if res := Check("acme/web", "abc", RequireBoth, jobs); res.Verdict != Pending || res.Summary != "pending: 2 of 3 jobs passed on both, 1 pending" {
		t.Errorf("lint running on arm64: %+v", res)
	}
	jobs = append(jobs, job(9, "test-aarch64", arch.ARM64, 2, store.JobCompleted, "timed_out"))
	res = Check("acme/web", "abc", RequireBoth, jobs)
	if res.Verdict != Fail || res.Summary != "fail: 1 of 3 jobs passed on both, 1 failed, 1 pending" {
		t.Errorf("test timed out on arm64: %+v", res)
	}
	if res := Check("acme/web", "abc", RequireARM64, jobs[:1]); res.Verdict != Fail {
		t.Errorf("arm64 required, amd64 only: %+v", res)
	}
	if res := Check("acme/web", "abc", RequireBoth, nil); res.Verdict != Pending || res.Summary != "no job of acme/web is known for commit abc yet" {
		t.Errorf("no jobs: %+v", res)
	}
	if _, err := ParseRequire("s390x"); err == nil {
		t.Error("require s390x accepted")
	}
}

func TestBadge(t *testing.T) {
	pol := testPolicy()
	for _, c := range []struct {
		tier *RepoTier
		text string
		fill string
	}{
		{&RepoTier{Tier: "tier-1", ARM64SuccessRate: 0.97}, "tier-1 · 97%", "#2e9e44"},
		{&RepoTier{Tier: "tier-2", ARM64SuccessRate: 0.931}, "tier-2 · 93.1%", "#d08b12"},
		{&RepoTier{Tier: "tier-3", ARM64SuccessRate: -1}, "tier-3 · none", "#8a8a8a"},
		{&RepoTier{Tier: `<script>&"`, ARM64SuccessRate: -1}, `<script>&" · none`, "#8a8a8a"},
		{nil, "unknown", "#9f9f9f"},
	} {
		svg := pol.Badge(c.tier)
		// Valid XML, an svg root, and the texts and colour expected.
		dec := xml.NewDecoder(bytes.NewReader(svg))
		var texts []string
		var fills []string
		root := ""
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%q: not XML: %v\n%s", c.text, err, svg)
			}
			switch el := tok.(type) {
			case xml.StartElement:
				if root == "" {
					root = el.Name.Local
				}
				for _, a := range el.Attr {
					if a.Name.Local == "fill" {
						fills = append(fills, a.Value)
					}
				}
			case xml.CharData:
				if s := strings.TrimSpace(string(el)); s != "" {
					texts = append(texts, s)
				}
			}
		}
		if root != "svg" || !strings.Contains(strings.Join(texts, "|"), "arm64 parity|"+c.text) || !strings.Contains(strings.Join(fills, " "), c.fill) {
			t.Errorf("badge %q: root %s, texts %q, fills %q", c.text, root, texts, fills)
		}
	}
}

func TestCSVAndMarkdown(t *testing.T) {
	s, c := history()
	s = append(s, stats("acme/web", "=HYPERLINK(\"x\")", "pipe | job", arch.AMD64, 1, 1, 0, 0, 1))
	pol := testPolicy()
	rows := Matrix(s, c, pol, "tandem")
	var buf bytes.Buffer
	if err := WriteCSV(&buf, rows); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(rows)+1 || recs[0][4] != "status" {
		t.Fatalf("csv: %d records, header %q", len(recs), recs[0])
	}
	for _, r := range recs[1:] {
		if strings.HasPrefix(r[2], "=") {
			t.Errorf("a formula in a cell: %q", r)
		}
	}

	// The report renders as Markdown: its tables are tables, and a
	// stranger's name cannot break out of its cell.
	moves := pol.Moves([]store.TierChange{
		{At: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), Org: "acme", Repo: "acme/web", From: "tier-1", To: "tier-2", Reason: "lint | runs on amd64 only"},
		{At: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC), Org: "acme", Repo: "acme/db", From: "tier-2", To: "tier-1", Reason: "every job on both"},
	})
	if !moves[0].Up || moves[1].Up || moves[0].Repo != "acme/db" {
		t.Errorf("moves: %+v", moves)
	}
	repos := pol.RepoTiers(rows)
	v := View{Since: time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC),
		Tiers: pol.Tiers, Rows: rows, Repos: repos, Orgs: pol.OrgTiers(repos)}
	rep := NewReport(v, moves)
	var out bytes.Buffer
	if err := rep.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	var html bytes.Buffer
	if err := goldmark.New(goldmark.WithExtensions(extension.GFM)).Convert(out.Bytes(), &html); err != nil {
		t.Fatal(err)
	}
	h := html.String()
	// Organisations, moves, failing, x86 only, repositories: five tables.
	if n := strings.Count(h, "<table>"); n != 5 {
		t.Errorf("%d tables, want 5:\n%s\n%s", n, out.String(), h)
	}
	for _, want := range []string{"<h1>Arm64 parity: 2026-11-30 to 2026-12-06</h1>", "4 repositories: 1 in tier-1, 2 in tier-2, 1 in tier-3.",
		"<td>lint | runs on amd64 only</td>", "<td>↑ tier-1</td>", "<td>↓ tier-2</td>", `<code class="language-yaml">strategy:`,
		"<h2>Flaky on arm64</h2>\n<p>None.</p>"} {
		if !strings.Contains(h, want) {
			t.Errorf("rendered report lacks %q:\n%s", want, h)
		}
	}
	// Each table row has as many cells as its header.
	for _, table := range strings.Split(h, "<table>")[1:] {
		table = table[:strings.Index(table, "</table>")]
		thead := table[:strings.Index(table, "</thead>")]
		head := strings.Count(thead, "<th>") + strings.Count(thead, "<th ")
		for _, tr := range strings.Split(table[strings.Index(table, "<tbody>"):], "<tr>")[1:] {
			if n := strings.Count(tr, "<td"); n != head {
				t.Errorf("a row of %d cells under %d headers: %s", n, head, tr)
			}
		}
	}
}
