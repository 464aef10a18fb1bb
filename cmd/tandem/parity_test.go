package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// tandem parity, its check and its report, against a control plane whose
// store holds a history: acme/app's build on both architectures (arm64's
// latest commit failing), its lint on amd64 only.
func TestParityCLI(t *testing.T) {
	r := newOpsRig(t)
	now := time.Now()
	id := int64(9000)
	add := func(name string, a arch.Arch, commit int, state store.JobState, conclusion string) {
		id++
		end := now.Add(-time.Duration(10-commit) * time.Hour)
		j := store.Job{ID: id, Org: "acme", Repo: "acme/app", Workflow: "CI", Name: name, Arch: a, VCPUs: 2, MemoryMiB: 2048,
			Labels: []string{"tandem-" + string(a) + "-2cpu-4gb"}, LabelKey: "tandem-" + string(a) + "-2cpu-4gb",
			State: state, Conclusion: conclusion, CreatedAt: end.Add(-time.Hour), QueuedAt: end.Add(-time.Hour), UpdatedAt: end,
			HeadSHA: fmt.Sprintf("%040x", commit)}
		if state.Terminal() {
			j.StartedAt, j.CompletedAt = end.Add(-5*time.Minute), end
		}
		if err := r.st.Update(t.Context(), func(tx store.Tx) error { return tx.CreateJob(j, store.Event{}) }); err != nil {
			t.Fatal(err)
		}
	}
	for c := range 3 {
		add("build (amd64)", arch.AMD64, c, store.JobCompleted, "success")
		arm := "success"
		if c == 2 {
			arm = "failure"
		}
		add("build (arm64)", arch.ARM64, c, store.JobCompleted, arm)
		add("lint", arch.AMD64, c, store.JobCompleted, "success")
	}
	add("build (amd64)", arch.AMD64, 3, store.JobCompleted, "success")
	add("build (arm64)", arch.ARM64, 3, store.JobRunning, "")

	out := r.ok(r.as(opsRead, "parity")).stdout
	if row := rowOf(t, out, "acme/app"); strings.Join(row[:7], " ") != "acme/app CI build arm64 failing 4 100%" {
		t.Errorf("build's row %q\n%s", row, out)
	}
	for _, want := range []string{"build (amd64), build (arm64)", "amd64 only", "tier-2", "not tier-1: CI / build fails on arm64",
		"runner: [tandem-amd64-2cpu-4gb, tandem-arm64-2cpu-4gb]", "organisation acme: every repository at least tier-2"} {
		if !strings.Contains(out, want) {
			t.Errorf("parity lacks %q:\n%s", want, out)
		}
	}
	recs, err := csv.NewReader(strings.NewReader(r.ok(r.as(opsRead, "parity", "--csv")).stdout)).ReadAll()
	if err != nil || len(recs) != 3 || recs[1][3] != "build" || recs[1][4] != "arm64 failing" || recs[2][4] != "amd64 only" {
		t.Errorf("csv %q, %v", recs, err)
	}
	if md := r.ok(r.as(opsRead, "parity", "--markdown", "--repo", "acme/app")).stdout; !strings.HasPrefix(md, "| Repository |") ||
		strings.Count(md, "\n") != 4 {
		t.Errorf("markdown:\n%s", md)
	}
	var v parity.View
	if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "parity", "--json")).stdout), &v); err != nil || len(v.Rows) != 2 || v.Days != 14 {
		t.Errorf("json: %+v, %v", v, err)
	}
	fails(t, r.as(opsRead, "parity", "--csv", "--markdown"), "one of --json, --csv and --markdown")
	fails(t, r.as(opsRead, "parity", "--org", "acme", "--repo", "acme/app"), "not both")

	// The gate: exit 0, 1 or 2.
	gate := func(commit int, require string, extra ...string) (int, string) {
		t.Helper()
		res := r.as(opsRead, append([]string{"parity", "check", "--repo", "acme/app", "--sha", fmt.Sprintf("%040x", commit), "--require", require}, extra...)...)
		var ee *exitError
		switch {
		case res.err == nil:
			return 0, res.stdout
		case errors.As(res.err, &ee) && ee.err == nil:
			return ee.code, res.stdout
		}
		t.Fatalf("check %d: %v", commit, res.err)
		return 0, ""
	}
	if code, out := gate(0, "amd64"); code != 0 || !strings.Contains(out, "pass: 2 of 2 jobs passed on amd64") {
		t.Errorf("commit 0 on amd64: exit %d\n%s", code, out)
	}
	if code, out := gate(0, "both"); code != 1 || !strings.Contains(out, "fail    CI / lint: did not run on arm64") {
		t.Errorf("commit 0 on both: exit %d\n%s", code, out)
	}
	if code, out := gate(2, "arm64"); code != 1 || !strings.Contains(out, "CI / build: failure on arm64") {
		t.Errorf("commit 2 on arm64: exit %d\n%s", code, out)
	}
	if code, out := gate(3, "arm64", "--wait", "300ms", "--every", "100ms"); code != 2 || !strings.Contains(out, "running on arm64") {
		t.Errorf("commit 3, running: exit %d\n%s", code, out)
	}
	code, out := gate(1, "amd64", "--json")
	var res parity.CheckResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || res.Verdict != parity.Pass {
		t.Errorf("commit 1 --json: exit %d %+v %v", code, res, err)
	}
	fails(t, r.as(opsRead, "parity", "check", "--repo", "acme/app"), "--repo and --sha are required")
	fails(t, r.as(opsRead, "parity", "check", "--repo", "acme/app", "--sha", "abc"), "sha: want a full commit id")

	// The report, as Markdown.
	if err := r.cp.RecordParityTiers(t.Context()); err != nil {
		t.Fatal(err)
	}
	md := r.ok(r.as(opsRead, "parity", "report", "--since", "7d", "--markdown")).stdout
	for _, want := range []string{"# Arm64 parity: ", "| acme/app | (new) | ↑ tier-2 | not tier-1: CI / build fails on arm64",
		"## Failing on arm64 where amd64 passes", "1 jobs run on amd64 only."} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if out := r.ok(r.as(opsRead, "parity", "report")).stdout; !strings.Contains(out, "1 repositories; 1 jobs failing on arm64, 0 flaky on arm64, 1 on amd64 only") {
		t.Errorf("report:\n%s", out)
	}
	fails(t, r.as(opsRead, "parity", "report", "--since", "36h"), "want whole days")
}
