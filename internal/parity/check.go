package parity

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/archname"
	"github.com/tandem-ci/tandem/internal/store"
)

// The release gate: did every logical job of a commit pass on the
// architectures required? Each logical job's latest run (highest attempt,
// then newest) on each architecture decides; a job still queued or
// running makes the verdict pending, not failed, so that a pipeline can
// wait for it.

// Require names the architectures a gate wants.
type Require string

const (
	RequireBoth  Require = "both"
	RequireARM64 Require = "arm64"
	RequireAMD64 Require = "amd64"
)

// ParseRequire accepts both, arm64 or amd64 ("" is both).
func ParseRequire(s string) (Require, error) {
	switch r := Require(strings.ToLower(s)); r {
	case "", RequireBoth:
		return RequireBoth, nil
	case RequireARM64, RequireAMD64:
		return r, nil
	}
	return "", fmt.Errorf("require %q: want both, arm64 or amd64", s)
}

func (r Require) archs() []arch.Arch {
	switch r {
	case RequireARM64:
		return []arch.Arch{arch.ARM64}
	case RequireAMD64:
		return []arch.Arch{arch.AMD64}
	}
	return arch.Machines
}

// Verdict is a gate's answer.
type Verdict string

const (
	Pass    Verdict = "pass"
	Fail    Verdict = "fail"
	Pending Verdict = "pending" // a job is still to end, or none is known yet
)

// RunResult is one architecture's latest run of a logical job.
type RunResult struct {
	JobID      int64          `json:"job_id"`
	Name       string         `json:"name"`
	State      store.JobState `json:"state"`
	Conclusion string         `json:"conclusion,omitempty"`
	HTMLURL    string         `json:"html_url,omitempty"`
}

// CheckJob is a logical job of the commit.
type CheckJob struct {
	Workflow string     `json:"workflow"`
	Job      string     `json:"job"`
	AMD64    *RunResult `json:"amd64,omitempty"`
	ARM64    *RunResult `json:"arm64,omitempty"`
	Verdict  Verdict    `json:"verdict"`
	Why      string     `json:"why,omitempty"`
}

// CheckResult is the gate's answer for a commit.
type CheckResult struct {
	Repo    string     `json:"repo"`
	SHA     string     `json:"sha"`
	Require Require    `json:"require"`
	Verdict Verdict    `json:"verdict"`
	Summary string     `json:"summary"`
	Jobs    []CheckJob `json:"jobs"`
}

// Check decides the gate from the jobs of one commit (any state).
func Check(repo, sha string, req Require, jobs []store.Job) CheckResult {
	type key struct{ wf, job string }
	byKey := map[key]*CheckJob{}
	latest := map[key]map[arch.Arch]store.Job{}
	for _, j := range jobs {
		if !j.Arch.IsMachine() {
			continue
		}
		k := key{j.Workflow, archname.Logical(j.Name)}
		if byKey[k] == nil {
			byKey[k] = &CheckJob{Workflow: k.wf, Job: k.job}
			latest[k] = map[arch.Arch]store.Job{}
		}
		old, ok := latest[k][j.Arch]
		if !ok || cmp.Or(cmp.Compare(j.RunAttempt, old.RunAttempt), cmp.Compare(j.ID, old.ID)) > 0 {
			latest[k][j.Arch] = j
		}
	}
	res := CheckResult{Repo: repo, SHA: sha, Require: req, Verdict: Pass, Jobs: []CheckJob{}}
	counts := map[Verdict]int{}
	for k, c := range byKey {
		c.Verdict = Pass
		for _, a := range arch.Machines {
			j, ok := latest[k][a]
			if !ok {
				continue
			}
			rr := &RunResult{JobID: j.ID, Name: j.Name, State: j.State, Conclusion: j.Conclusion, HTMLURL: j.HTMLURL}
			if a == arch.ARM64 {
				c.ARM64 = rr
			} else {
				c.AMD64 = rr
			}
		}
		for _, a := range req.archs() {
			j, ok := latest[k][a]
			var v Verdict
			var why string
			switch {
			case !ok:
				v, why = Fail, fmt.Sprintf("did not run on %s", a)
			case !j.State.Terminal():
				v, why = Pending, fmt.Sprintf("%s on %s", j.State, a)
			case store.ResultOf(j) == store.Passed:
				continue
			default:
				v, why = Fail, fmt.Sprintf("%s on %s", outcome(j), a)
			}
			if worse(v, c.Verdict) {
				c.Verdict, c.Why = v, why
			} else if v == c.Verdict {
				c.Why += "; " + why
			}
		}
		counts[c.Verdict]++
		if worse(c.Verdict, res.Verdict) {
			res.Verdict = c.Verdict
		}
		res.Jobs = append(res.Jobs, *c)
	}
	slices.SortFunc(res.Jobs, func(a, b CheckJob) int {
		return cmp.Or(cmp.Compare(a.Workflow, b.Workflow), cmp.Compare(a.Job, b.Job))
	})
	if len(res.Jobs) == 0 {
		res.Verdict = Pending
		res.Summary = fmt.Sprintf("no job of %s is known for commit %s yet", repo, short(sha))
		return res
	}
	res.Summary = fmt.Sprintf("%s: %d of %d jobs passed on %s", res.Verdict, counts[Pass], len(res.Jobs), req)
	if n := counts[Fail]; n > 0 {
		res.Summary += fmt.Sprintf(", %d failed", n)
	}
	if n := counts[Pending]; n > 0 {
		res.Summary += fmt.Sprintf(", %d pending", n)
	}
	return res
}

// worse orders verdicts: fail over pending over pass.
func worse(a, b Verdict) bool {
	rank := map[Verdict]int{Pass: 0, Pending: 1, Fail: 2}
	return rank[a] > rank[b]
}

func outcome(j store.Job) string {
	if j.State == store.JobCompleted && j.Conclusion != "" {
		return j.Conclusion
	}
	return string(j.State)
}
