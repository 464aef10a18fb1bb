package demo

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/archname"
	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// A history is the same for the same seed, ends before now, and says what
// it is meant to: a job that asks for too much, one short of memory, a
// project failing more on arm64.
func TestHistory(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	h := Make(now, Options{Days: 14, PerDay: 200, Seed: 1})
	if again := Make(now, Options{Days: 14, PerDay: 200, Seed: 1}); !reflect.DeepEqual(h, again) {
		t.Fatal("the same seed made another history")
	}
	if len(h.Jobs) < 2700 || len(h.Profiles) < 1000 {
		t.Fatalf("%d jobs, %d profiles", len(h.Jobs), len(h.Profiles))
	}
	jobs := map[int64]store.Job{}
	fails := map[string][2]int{} // falcosecurity/libs by arch: failures, runs
	for _, j := range h.Jobs {
		if j.CompletedAt.After(now) || j.ID <= FirstID || !j.State.Terminal() {
			t.Fatalf("job %+v", j)
		}
		jobs[j.ID] = j
		if j.Repo == "falcosecurity/libs" {
			f := fails[string(j.Arch)]
			if j.Conclusion == "failure" {
				f[0]++
			}
			f[1]++
			fails[string(j.Arch)] = f
		}
	}
	// A commit runs a logical job on both architectures, under names
	// that parity matches; lint runs on amd64 only.
	type commitJob struct{ sha, logical string }
	byCommit := map[commitJob][]store.Job{}
	for _, j := range h.Jobs {
		k := commitJob{j.HeadSHA, j.Repo + "/" + archname.Logical(j.Name)}
		byCommit[k] = append(byCommit[k], j)
	}
	pairs := 0
	for k, js := range byCommit {
		switch {
		case len(js) == 2 && js[0].Arch != js[1].Arch:
			pairs++
		case len(js) == 1 && (strings.HasSuffix(k.logical, "/lint") || js[0].CompletedAt.After(now.Add(-2*time.Hour))):
		default:
			t.Errorf("commit %s of %s: %d jobs", k.sha, k.logical, len(js))
		}
	}
	if pairs < len(h.Jobs)/3 {
		t.Errorf("%d commits on both architectures of %d jobs", pairs, len(h.Jobs))
	}
	amd, arm := fails["amd64"], fails["arm64"]
	if float64(arm[0])/float64(arm[1]) < 2*float64(amd[0])/float64(amd[1]) {
		t.Errorf("falcosecurity/libs fails %v on arm64 and %v on amd64", arm, amd)
	}
	var runs []rightsize.Run
	for _, p := range h.Profiles {
		j := jobs[p.JobID]
		runs = append(runs, rightsize.Run{JobID: j.ID, Repo: j.Repo, Workflow: j.Workflow, Name: j.Name, Arch: j.Arch,
			VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB, EndedAt: p.EndedAt, Summary: p.Summary})
	}
	suggest, warn := 0, 0
	for _, a := range rightsize.Analyze(runs, rightsize.Options{}) {
		if a.Repo == "containerd/containerd" && a.Name == "unit (amd64)" && a.Suggest != nil {
			suggest++
		}
		if a.Repo == "containerd/containerd" && a.Name == "integration (arm64)" && len(a.Warnings) > 0 {
			warn++
		}
	}
	if suggest != 1 || warn != 1 {
		t.Errorf("right-sizing: %d suggestions for containerd's unit, %d warnings for its integration", suggest, warn)
	}
}
