package controlplane_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// GitHub's own labels are understood beside Tandem's: ARM64 asks for an
// arm64 VM, whose runner then truly has that label; labels that contradict
// each other, or ask for a machine Tandem does not run, make the job
// unschedulable at once, with no VM booted.
func TestGitHubsOwnLabels(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	q := func(ls ...string) int64 {
		id, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: ls, Script: "true"})
		return id
	}
	arm := q("self-hosted", "linux", "ARM64", "tandem")
	conflict := q("X64", "tandem-arm64")
	windows := q("self-hosted", "windows", "tandem")
	r.waitStates([]int64{arm}, 20*time.Second, store.JobCompleted)
	r.waitStates([]int64{conflict, windows}, 10*time.Second, store.JobUnschedulable)
	if j, _ := r.job(arm); j.Arch != arch.ARM64 {
		t.Errorf("[self-hosted, linux, ARM64, tandem] got %s", j.Arch)
	}
	for id, want := range map[int64]string{conflict: "conflicting architectures", windows: "Tandem runs Linux VMs"} {
		if j, _ := r.job(id); !strings.Contains(j.Reason, want) {
			t.Errorf("job %v: reason %q, want it to say %q", j.Labels, j.Reason, want)
		}
	}
	var rs []store.Runner
	r.st.View(t.Context(), func(tx store.ReadTx) error {
		var err error
		rs, err = tx.Runners(store.RunnerFilter{})
		return err
	})
	if len(rs) != 1 || rs[0].Arch != arch.ARM64 || rs[0].JobID != arm {
		t.Errorf("runners %+v: want one arm64 runner, for the ARM64 job", rs)
	}
}

// A job for Tandem with more labels than a runner takes, or an absurd one,
// is unschedulable at ingest: no VM is booted for it, its reason quotes
// at most 100 characters of the input, and the API's answer stays small.
func TestLabelBounds(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	many := []string{"tandem"}
	for i := range 1000 {
		many = append(many, "l"+strconv.Itoa(i))
	}
	tooMany, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: many, Script: "true"})
	huge, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem", strings.Repeat("x", 500_000)}, Script: "true"})
	r.waitStates([]int64{tooMany, huge}, 10*time.Second, store.JobUnschedulable)
	for id, want := range map[int64]string{tooMany: "1001 labels", huge: "500000 characters"} {
		var v controlplane.JobView
		r.call("GET", fmt.Sprintf("/api/v1/jobs/%d", id), rigReadToken, &v)
		if !strings.Contains(v.Reason, want) || len(v.Reason) > 300 {
			t.Errorf("job %d: reason (%d bytes) %.400q, want it to say %q", id, len(v.Reason), v.Reason, want)
		}
		size := 0
		for _, l := range v.Labels {
			size += len(l)
		}
		if len(v.Labels) > 100 || size > 100*256 {
			t.Errorf("job %d: the API shows %d labels of %d bytes", id, len(v.Labels), size)
		}
	}
	if n := r.hosts[0].launches(); n != 0 {
		t.Errorf("%d VMs booted for jobs no runner could be registered for", n)
	}
}
