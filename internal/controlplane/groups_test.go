package controlplane_test

// Runner groups: Tandem's runners join the group the config names for a
// job's organisation or repository, looked up in GitHub by name; a job the
// group cannot serve, or that asks for another group, is unmatched and gets
// no VM again until an operator queues it again.

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/store"
)

func orgRunners(group string, groups map[string]string) func(*controlplane.Config) {
	return func(c *controlplane.Config) {
		c.Runner.Scope, c.Runner.Group, c.Runner.Groups = "org", group, groups
	}
}

// Runners join the group named for the job's repository, else its
// organisation's, by name in any case; GitHub gives each job to the group
// it was made for.
func TestRunnersJoinTheirGroup(t *testing.T) {
	r := newRig(t, rigOptions{configure: orgRunners("tandem vms", map[string]string{"ACME/special": "special"})})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/special")
	// Groups that do not overlap: GitHub could give acme/special's job to
	// a runner of a group that also allowed acme/special.
	vms, err := r.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Tandem VMs",
		Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/app"}})
	if err != nil {
		t.Fatal(err)
	}
	special, err := r.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Special",
		Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/special"}})
	if err != nil {
		t.Fatal(err)
	}
	app := r.queue("acme/app", "tandem", "sleep 1") // a second: see TestGitHubsOwnLabels
	sp := r.queue("acme/special", "tandem", "sleep 1")
	r.waitStates([]int64{app, sp}, 20*time.Second, store.JobCompleted)
	for id, want := range map[int64]int64{app: vms, sp: special} {
		if gj, _ := r.gh.Job(id); gj.RunnerGroupID != want || gj.Claims != 1 {
			t.Errorf("job %d on GitHub: %+v, want it run in group %d", id, gj, want)
		}
	}
	if n := r.hosts[0].launches(); n != 2 {
		t.Errorf("%d VMs, want 2", n)
	}
}

// A job whose workflow asks for another runner group (runs-on: {group:
// gpu}) looks like any other when it is queued. Tandem boots one VM; GitHub
// never gives the job to it; at the idle timeout the VM is stopped and the
// job is unmatched, with the reason, and counted; no VM is booted for it
// again, however often the reconcilers see it queued. Once its group's own
// runner takes it, Tandem shows it running and then completed.
func TestJobForAnotherGroupIsUnmatched(t *testing.T) {
	r := newRig(t, rigOptions{idle: 1500 * time.Millisecond, configure: orgRunners("", nil)})
	inst := r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	gpu, err := r.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "gpu"})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}, Script: "true", RunnerGroup: "gpu"})
	r.waitStates([]int64{id}, 20*time.Second, store.JobUnmatched)
	j, _ := r.job(id)
	if !strings.Contains(j.Reason, "sat idle") || !strings.Contains(j.Reason, "another runner group") || j.RunnerName != "" {
		t.Errorf("unmatched job: %+v", j)
	}
	r.waitFor("its VM to be stopped", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	// Reconcilers pass every 300-500 ms: give them time to do the wrong thing.
	time.Sleep(3 * time.Second)
	if j, _ := r.job(id); j.State != store.JobUnmatched || r.hosts[0].launches() != 1 {
		t.Fatalf("after the reconcilers saw it queued: job %+v, %d VMs (want unmatched, 1)", j, r.hosts[0].launches())
	}
	c := r.counters()
	if c["reconciler/orphans/jobs-unmatched"] != 1 || c["reconciler/orphans/idle-vms-stopped"] != 1 {
		t.Errorf("counters %v", c)
	}
	// Retrying while it still asks for a group Tandem's runners are not in
	// boots one more VM, which ends the same way.
	if code := r.call("POST", "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/retry", rigAdminToken, nil); code != http.StatusOK {
		t.Fatalf("retry: %d", code)
	}
	r.waitFor("the retried job to be unmatched again", 20*time.Second, func() bool {
		j, _ := r.job(id)
		return j.State == store.JobUnmatched && r.hosts[0].launches() == 2
	})
	// The gpu group's own runner (not Tandem's) takes it.
	jit, err := r.client.GenerateJITConfig(t.Context(), inst, github.Scope{Owner: "acme"},
		github.JITRequest{Name: "gpu-runner", RunnerGroupID: gpu, Labels: []string{"tandem"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- fakerunner.Run(ctx, jit.EncodedConfig, fakerunner.Options{HeartbeatInterval: 100 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	if n := r.hosts[0].launches(); n != 2 {
		t.Errorf("%d VMs, want 2", n)
	}
}

// A group that cannot serve a job is found out before any VM boots: a
// group that does not exist, one whose visibility leaves the repository
// out, one that does not allow public repositories. The job is unmatched
// with the reason; once the operator fixes the group on GitHub and queues
// the job again, it runs.
func TestGroupThatCannotServeBootsNoVM(t *testing.T) {
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		orgRunners("tandem", map[string]string{"acme/lost": "nowhere"})(c)
		c.AllowPublic = []string{"acme/site"}
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/lost", "acme/site")
	r.gh.SetPublic("acme/site", true)
	if _, err := r.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Tandem",
		Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/site"}}); err != nil {
		t.Fatal(err)
	}
	app := r.queue("acme/app", "tandem", "sleep 1")
	lost := r.queue("acme/lost", "tandem", "true")
	site := r.queue("acme/site", "tandem", "true")
	r.waitStates([]int64{app, lost, site}, 20*time.Second, store.JobUnmatched)
	for id, want := range map[int64]string{
		app:  `runner group "Tandem" (visibility selected) does not allow repository acme/app`,
		lost: `runner group "nowhere" does not exist in acme`,
		site: `runner group "Tandem" does not allow public repositories, and acme/site is public`,
	} {
		if j, _ := r.job(id); !strings.Contains(j.Reason, want) {
			t.Errorf("job %d: reason %q, want %q", id, j.Reason, want)
		}
	}
	if n := r.hosts[0].launches(); n != 0 {
		t.Errorf("%d VMs booted for jobs no runner of the group could take", n)
	}
	if c := r.counters(); c["dispatch/jobs-unmatched"] != 3 {
		t.Errorf("counters %v", c)
	}
	if _, err := r.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Tandem",
		Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/site", "acme/app"}}); err != nil {
		t.Fatal(err)
	}
	if code := r.call("POST", "/api/v1/jobs/"+strconv.FormatInt(app, 10)+"/retry", rigAdminToken, nil); code != http.StatusOK {
		t.Fatalf("retry: %d", code)
	}
	r.waitStates([]int64{app}, 20*time.Second, store.JobCompleted)
	if code := r.call("POST", "/api/v1/jobs/"+strconv.FormatInt(app, 10)+"/retry", rigAdminToken, nil); code != http.StatusConflict {
		t.Errorf("retrying a completed job: %d, want 409", code)
	}
	if code := r.call("POST", "/api/v1/jobs/"+strconv.FormatInt(lost, 10)+"/retry", rigReadToken, nil); code != http.StatusForbidden {
		t.Errorf("retry with a read token: %d, want 403", code)
	}
}

// Groups may overlap: GitHub may give acme/special's job to a runner of the
// broad group, made for acme/app's job. That job then cannot take over the
// special group's runner (GitHub would not give it to it): it is queued for
// a runner of its own group, and every job completes on one claim.
func TestOverlappingGroups(t *testing.T) {
	r := newRig(t, rigOptions{configure: orgRunners("tandem vms", map[string]string{"acme/special": "special"})})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/special")
	for _, g := range []ghfake.RunnerGroupSpec{{Name: "Tandem VMs"},
		{Name: "Special", Visibility: ghfake.GroupVisibilitySelected, Repos: []string{"acme/special"}}} {
		if _, err := r.gh.SetRunnerGroup("acme", g); err != nil {
			t.Fatal(err)
		}
	}
	var ids []int64
	for range 3 {
		ids = append(ids, r.queue("acme/app", "tandem", "sleep 1"), r.queue("acme/special", "tandem", "sleep 1"))
	}
	r.waitStates(ids, 30*time.Second, store.JobCompleted)
	for _, id := range ids {
		if gj, _ := r.gh.Job(id); gj.Claims != 1 {
			t.Errorf("job %d on GitHub: %+v", id, gj)
		}
	}
	r.waitFor("every VM to end", 20*time.Second, func() bool { return len(r.liveRunners()) == 0 })
}
