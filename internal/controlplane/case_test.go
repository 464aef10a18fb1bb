package controlplane_test

import (
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// GitHub's org and repository names are not case-sensitive, and neither
// are Tandem's: a limit written for "octocoders" holds for Octocoders'
// jobs, and the API finds them whatever the case of the filter; they are
// shown as GitHub spells them.
func TestNamesWithoutCase(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true, limits: scheduler.Limits{
		Org: map[string]scheduler.OrgLimit{"octocoders": {MaxVMs: 1}}}})
	r.hosts[0].set(nil, true) // runners start and take no job: each holds its VM
	r.gh.AddInstallation("Octocoders", ghfake.AccountOrganization, "Octocoders/Hello-World")
	a := r.queue("Octocoders/Hello-World", "tandem", "true")
	b := r.queue("Octocoders/Hello-World", "tandem", "true")
	placed := func() (n int) {
		for _, id := range []int64{a, b} {
			if j, _ := r.job(id); j.State == store.JobScheduled || j.State == store.JobLaunching {
				n++
			}
		}
		return n
	}
	r.waitFor("one job to get a VM", 10*time.Second, func() bool { return placed() >= 1 })
	time.Sleep(time.Second) // placement passes
	if n := placed(); n != 1 {
		t.Errorf("%d jobs have VMs: octocoders' limit of 1 VM did not hold for Octocoders", n)
	}
	for _, q := range []string{"org=octocoders", "org=OCTOCODERS", "repo=octocoders/hello-world"} {
		var out struct{ Jobs []controlplane.JobView }
		r.call("GET", "/api/v1/jobs?"+q, rigReadToken, &out)
		if len(out.Jobs) != 2 || out.Jobs[0].Org != "Octocoders" || out.Jobs[0].Repo != "Octocoders/Hello-World" {
			t.Errorf("?%s: %+v", q, out.Jobs)
		}
	}
}
