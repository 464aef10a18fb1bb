package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// retryFleet is a fleet whose control plane re-runs the lost jobs of acme
// and initech (not of acme/legacy).
func retryFleet(t *testing.T) *fleet {
	return newFleetWith(t, func(c *controlplane.Config) {
		c.RetryInfraLosses = func(org, repo string) bool {
			return (org == "acme" || org == "initech") && repo != "acme/legacy"
		}
	})
}

// onceThenQuick is a script that hangs on a run's first attempt and
// succeeds at once on a re-run (the runner says which attempt a job is of).
const onceThenQuick = `if [ "$GITHUB_RUN_ATTEMPT" = 1 ]; then sleep 60; fi; echo attempt-$GITHUB_RUN_ATTEMPT`

// installRerunning installs the App for org's repos with "Actions: write",
// which re-running a job needs.
func (r *rig) installRerunning(org string, repos ...string) {
	r.t.Helper()
	inst := r.gh.AddInstallation(org, ghfake.AccountOrganization, repos...)
	if err := r.gh.SetPermissions(inst, map[string]string{"actions": "write"}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) retriesOf(ids ...int64) []store.Retry {
	r.t.Helper()
	var rs []store.Retry
	err := r.st.View(context.Background(), func(tx store.ReadTx) (err error) {
		rs, err = tx.Retries(store.RetryFilter{JobIDs: ids})
		return err
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return rs
}

// waitRetry waits for job id's retry to reach state.
func (r *rig) waitRetry(id int64, state store.RetryState) store.Retry {
	r.t.Helper()
	var got store.Retry
	r.waitFor(fmt.Sprintf("job %d's retry %s", id, state), 20*time.Second, func() bool {
		rs := r.retriesOf(id)
		if len(rs) == 1 {
			got = rs[0]
		}
		return got.State == state
	})
	return got
}

// waitRerun waits for GitHub to re-run job id and returns the new job.
func (r *rig) waitRerun(id int64) ghfake.JobInfo {
	r.t.Helper()
	var gj ghfake.JobInfo
	r.waitFor(fmt.Sprintf("a re-run of job %d", id), 20*time.Second, func() bool {
		gj, _ = r.gh.Job(id)
		return gj.RerunAs != 0
	})
	next, ok := r.gh.Job(gj.RerunAs)
	if !ok || next.RerunOf != id || next.RunID != gj.RunID || next.Name != gj.Name || next.RunAttempt != gj.RunAttempt+1 {
		r.t.Fatalf("re-run of %+v: %+v", gj, next)
	}
	return next
}

// crashUnder crashes the "VM" of running job id on a's host with kind, as
// the agent reports it, and once the control plane has the report stops the
// runner, whose job then fails on GitHub.
func (f *fleet) crashUnder(a *remoteAgent, id int64, kind failure.Kind) {
	f.t.Helper()
	f.waitStates([]int64{id}, 20*time.Second, store.JobRunning)
	j, _ := f.job(id)
	stop := a.host.crashRun(j.RunnerName, kind)
	f.waitFor("the crashed runner's end", 10*time.Second, func() bool {
		var r store.Runner
		f.st.View(context.Background(), func(tx store.ReadTx) (err error) { r, err = tx.Runner(j.RunnerName); return err })
		return r.State == store.RunnerEnded
	})
	stop()
}

// A host that leaves the fleet while it runs a job: the job is lost, then
// re-run on GitHub once GitHub has failed it, and the re-run completes on
// the host that is left.
func TestLostJobRerun(t *testing.T) {
	f := retryFleet(t)
	f.installRerunning("acme", "acme/app")
	a1 := f.join("s1")
	id := f.queue("acme/app", "tandem", onceThenQuick)
	f.waitStates([]int64{id}, 20*time.Second, store.JobRunning)
	f.join("s2")
	a1.stop() // the agent dies; its "VM" goes on for now
	f.waitHost("s1", "offline", false)
	f.waitStates([]int64{id}, 10*time.Second, store.JobLost)
	if rs := f.retriesOf(id); len(rs) != 1 || rs[0].State != store.RetryPending || rs[0].Cause != failure.HostOffline {
		t.Fatalf("retries of the lost job: %+v", rs)
	}
	// The "VM" goes too: its runner is silent and GitHub fails the job
	// (here the fake runner, stopped, reports the failure itself).
	a1.host.stopAll()
	rerun := f.waitRerun(id)
	r := f.waitRetry(id, store.RetryRequested)
	if r.Tries < 1 || !strings.Contains(r.Detail, "re-running") {
		t.Errorf("retry %+v", r)
	}
	f.waitStates([]int64{rerun.ID}, 20*time.Second, store.JobCompleted)
	j, _ := f.job(rerun.ID)
	gj, _ := f.gh.Job(rerun.ID)
	if j.HostID != "s2" || j.RunAttempt != 2 || gj.Conclusion != "success" || !strings.Contains(gj.Output, "attempt-2") {
		t.Errorf("re-run: Tandem %+v; GitHub %+v", j, gj)
	}
	if rs := f.retriesOf(rerun.ID); len(rs) != 0 {
		t.Errorf("the re-run that succeeded has retries: %+v", rs)
	}
	// The API says so on both jobs.
	var lost, again controlplane.JobView
	if code := f.call("GET", fmt.Sprintf("/api/v1/jobs/%d", id), rigReadToken, &lost); code != 200 ||
		lost.Rerun == nil || lost.Rerun.State != "requested" || lost.Rerun.Cause != "host-offline" || lost.RerunOf != nil {
		t.Errorf("lost job's view (%d): rerun %+v, rerun of %+v", code, lost.Rerun, lost.RerunOf)
	}
	if code := f.call("GET", fmt.Sprintf("/api/v1/jobs/%d", rerun.ID), rigReadToken, &again); code != 200 ||
		again.RerunOf == nil || again.RerunOf.Job != id || again.Rerun != nil {
		t.Errorf("re-run's view (%d): rerun %+v, rerun of %+v", code, again.Rerun, again.RerunOf)
	}
	// And so do their pages.
	b := newBrowser(t, f.web.URL)
	b.login(rigReadToken)
	if code, page := b.do("GET", fmt.Sprintf("/jobs/%d", id), nil); code != 200 ||
		!strings.Contains(page, `id="rerun">requested (lost: host-offline)`) {
		t.Errorf("lost job's page (%d) does not say it was re-run:\n%s", code, page)
	}
	if code, page := b.do("GET", fmt.Sprintf("/jobs/%d", rerun.ID), nil); code != 200 ||
		!strings.Contains(page, fmt.Sprintf(`id="rerun-of"><a href="/jobs/%d">job %d</a>, lost: host-offline`, id, id)) {
		t.Errorf("re-run's page (%d) does not say what it re-runs:\n%s", code, page)
	}
}

// A VM that crashes under its job, on a host that stays: re-run once; the
// re-run's VM crashes too, and for the same cause it is not re-run again.
func TestCrashedJobRerunOncePerCause(t *testing.T) {
	f := retryFleet(t)
	f.installRerunning("acme", "acme/app")
	a := f.join("s1")
	id := f.queue("acme/app", "tandem", "sleep 60")
	f.crashUnder(a, id, failure.GuestCrash)
	rerun := f.waitRerun(id)
	if r := f.waitRetry(id, store.RetryRequested); r.Cause != failure.GuestCrash {
		t.Errorf("retry %+v", r)
	}
	f.crashUnder(a, rerun.ID, failure.GuestCrash)
	f.waitStates([]int64{rerun.ID}, 20*time.Second, store.JobCompleted)
	time.Sleep(time.Second) // a retry pass, were there a retry
	if rs := f.retriesOf(rerun.ID); len(rs) != 0 {
		t.Errorf("the re-run, lost for the same cause, got a retry: %+v", rs)
	}
	if gj, _ := f.gh.Job(rerun.ID); gj.RerunAs != 0 || gj.Conclusion != "failure" {
		t.Errorf("the re-run was re-run again, or did not fail: %+v", gj)
	}
}

// No re-run for a job that failed by itself, for a repository that does
// not ask for re-runs, or (refused, and said why) for an App without
// "Actions: write".
func TestNoRerun(t *testing.T) {
	f := retryFleet(t)
	f.installRerunning("acme", "acme/app", "acme/legacy")
	f.gh.AddInstallation("initech", ghfake.AccountOrganization, "initech/api") // actions: read
	a := f.join("s1")
	own := f.queue("acme/app", "tandem", "exit 1")
	f.waitStates([]int64{own}, 20*time.Second, store.JobCompleted)
	crashed := map[string]int64{}
	for _, repo := range []string{"acme/legacy", "initech/api"} {
		id := f.queue(repo, "tandem", "sleep 60")
		f.crashUnder(a, id, failure.GuestHang)
		f.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
		crashed[repo] = id
	}
	r := f.waitRetry(crashed["initech/api"], store.RetryRefused)
	if !strings.Contains(r.Detail, `"actions: write"`) {
		t.Errorf("refused retry says %q, not what the App lacks", r.Detail)
	}
	if rs := f.retriesOf(own, crashed["acme/legacy"]); len(rs) != 0 {
		t.Errorf("retries of a job that failed by itself or of acme/legacy: %+v", rs)
	}
	for _, id := range []int64{own, crashed["acme/legacy"], crashed["initech/api"]} {
		if gj, _ := f.gh.Job(id); gj.RerunAs != 0 || gj.Conclusion != "failure" {
			t.Errorf("job %d: %+v", id, gj)
		}
	}
}
