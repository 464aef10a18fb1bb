package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/parity"
)

// A queued webhook leads to a VM whose runner takes and completes the job,
// on amd64 and (emulated) arm64; nothing is left behind.
func TestQueuedJobRunsInAVM(t *testing.T) {
	s := newSystem(t, options{})
	s.install("acme", "app")
	// One commit's matrix over both architectures.
	_, ids, err := s.gh.QueueRun("acme/app",
		ghfake.JobSpec{Name: "unit (amd64)", Labels: []string{"tandem-1cpu-0.25gb"},
			Script: `echo "arch=$(uname -m) user=$(id -u) jit=[${ACTIONS_RUNNER_INPUT_JITCONFIG}]"`},
		ghfake.JobSpec{Name: "unit (arm64)", Labels: []string{"tandem-arm64-1cpu-0.25gb"}, Script: `echo "arch=$(uname -m)"`})
	if err != nil {
		t.Fatal(err)
	}
	amd, arm := ids[0], ids[1]
	s.waitGitHubDone(ids, 3*time.Minute)
	s.waitTandemState(ids, time.Minute, "completed")

	for id, arch := range map[int64]string{amd: "x86_64", arm: "aarch64"} {
		j, _ := s.gh.Job(id)
		if j.Conclusion != "success" || j.Claims != 1 {
			t.Errorf("job %d: conclusion %q, claims %d; want success, 1", id, j.Conclusion, j.Claims)
		}
		if !strings.Contains(j.Output, "arch="+arch) {
			t.Errorf("job %d output %q: want arch=%s", id, j.Output, arch)
		}
		v, _ := s.job(id)
		if v.Runner == "" || v.Runner != j.RunnerName || v.Host != "e2e-host" || v.Attempts != 1 {
			t.Errorf("tandem's view of job %d: %+v; GitHub says runner %s", id, v, j.RunnerName)
		}
		seen := map[string]bool{}
		for _, e := range v.Events {
			seen[e.To] = true
		}
		for _, st := range []string{"queued", "scheduled", "launching", "running", "completed"} {
			if !seen[st] {
				t.Errorf("job %d never went through %s: %+v", id, st, v.Events)
			}
		}
	}
	if j, _ := s.gh.Job(amd); !strings.Contains(j.Output, "jit=[]") {
		t.Errorf("the job could read the runner's JIT config: %q", j.Output)
	}
	// Parity: the two jobs are one logical job on both architectures
	// (arm64 emulated here), and the release gate passes their commit.
	var pv parity.View
	if out := s.cli("parity", "--json", "--repo", "acme/app"); json.Unmarshal([]byte(out), &pv) != nil || len(pv.Rows) != 1 ||
		pv.Rows[0].Job != "unit" || pv.Rows[0].Status != parity.Both || pv.Rows[0].ARM64 == nil || pv.Rows[0].ARM64.Emulated != 1 ||
		pv.Rows[0].AMD64 == nil || pv.Rows[0].AMD64.Passed != 1 || pv.Rows[0].Compared != 1 {
		t.Errorf("tandem parity: %s", out)
	}
	tj, _ := s.job(amd)
	if out := s.cli("parity", "check", "--repo", "acme/app", "--sha", tj.HeadSHA); !strings.Contains(out, "pass: 1 of 1 jobs passed on both") {
		t.Errorf("tandem parity check: %s", out)
	}
	// The runners are gone from GitHub too (ephemeral), and no VM remains.
	s.waitFor("runners to end", time.Minute, func() bool {
		var out struct{ Runners []struct{ State string } }
		s.getJSON("/api/v1/runners?live=1", &out)
		return len(out.Runners) == 0
	})
	if rs := s.gh.Runners(); len(rs) != 0 {
		t.Errorf("GitHub still lists runners: %+v", rs)
	}
}

// 30 jobs from 3 organisations, with a fifth of the webhooks lost, failed,
// duplicated or reordered: every job runs exactly once and Tandem ends up
// knowing it, thanks to the reconcilers.
func TestThirtyJobsUnreliableWebhooks(t *testing.T) {
	s := newSystem(t, options{vcpus: 4, memoryMiB: 2048,
		faults: ghfake.Faults{Lose: 0.05, Fail: 0.05, Duplicate: 0.05, Reorder: 0.05, MaxDelay: 300 * time.Millisecond}})
	orgs := []string{"etcd-io", "containerd", "falcosecurity"}
	for _, o := range orgs {
		s.install(o, "core", "tools")
	}
	var ids []int64
	for i := 0; i < 30; i++ {
		org := orgs[i%3]
		repo := []string{"core", "tools"}[rand.IntN(2)]
		id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: org + "/" + repo, Labels: []string{"tandem-1cpu-0.25gb"},
			Script: fmt.Sprintf("echo job %d", i)})
		ids = append(ids, id)
	}
	s.waitGitHubDone(ids, 8*time.Minute)
	s.gh.Flush() // release a webhook held back for reordering after the last one
	s.waitTandemState(ids, 2*time.Minute, "completed")
	for _, id := range ids {
		j, _ := s.gh.Job(id)
		if j.Claims != 1 || j.Conclusion != "success" {
			t.Errorf("job %d: claims %d conclusion %q", id, j.Claims, j.Conclusion)
		}
	}
	if n := len(s.jobs()); n != 30 {
		t.Errorf("tandem knows %d jobs, want 30", n)
	}
	t.Logf("counters: %v", s.counters())
	s.waitFor("every runner VM to end", 2*time.Minute, func() bool {
		var out struct{ Runners []struct{ Name string } }
		s.getJSON("/api/v1/runners?live=1", &out)
		return len(out.Runners) == 0
	})
}

// A control plane killed with SIGKILL while jobs are queued and booting loses
// none of them: after a restart every job completes exactly once, or, if
// its runner died with the control plane mid-job, is reported with a reason.
func TestKilledServerLosesNothing(t *testing.T) {
	s := newSystem(t, options{vcpus: 2, memoryMiB: 1024})
	s.install("acme", "app")
	var ids []int64
	for i := 0; i < 6; i++ {
		id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"},
			Script: "sleep 2; echo done"})
		ids = append(ids, id)
	}
	// Kill once Tandem has taken every job in and some VMs are booting.
	s.waitFor("jobs to be placed", time.Minute, func() bool {
		placed := 0
		for _, j := range s.jobs() {
			if j.State != "queued" {
				placed++
			}
		}
		return len(s.jobs()) == 6 && placed > 0
	})
	s.kill()
	s.start()
	s.waitTandemState(ids, 6*time.Minute, "completed", "lost")
	done := 0
	for _, id := range ids {
		j, _ := s.gh.Job(id)
		v, _ := s.job(id)
		if j.Claims > 1 {
			t.Errorf("job %d claimed %d times", id, j.Claims)
		}
		switch v.State {
		case "completed":
			done++
			if j.Status != "completed" {
				t.Errorf("tandem says job %d completed, GitHub says %s", id, j.Status)
			}
		case "lost":
			if v.Reason == "" {
				t.Errorf("job %d lost without a reason", id)
			}
		}
	}
	t.Logf("after the restart: %d of 6 jobs completed, %d reported lost", done, len(ids)-done)
	if done < 4 {
		t.Errorf("only %d of 6 jobs completed after the restart", done)
	}
}

// A job cancelled on GitHub while its VM boots frees the VM; a running job
// cancelled on GitHub ends as cancelled and its VM goes.
func TestCancelledJobs(t *testing.T) {
	s := newSystem(t, options{})
	s.install("acme", "app")
	running, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: "sleep 600"})
	s.waitTandemState([]int64{running}, 2*time.Minute, "running")
	booting, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-arm64-1cpu-0.25gb"}, Script: "true"})
	s.waitTandemState([]int64{booting}, time.Minute, "scheduled", "launching")
	if err := s.gh.CancelJob(booting); err != nil {
		t.Fatal(err)
	}
	if err := s.gh.CancelJob(running); err != nil {
		t.Fatal(err)
	}
	s.waitTandemState([]int64{booting, running}, 2*time.Minute, "cancelled")
	s.waitFor("both VMs to end", 2*time.Minute, func() bool {
		var out struct{ Runners []struct{ Name string } }
		s.getJSON("/api/v1/runners?live=1", &out)
		return len(out.Runners) == 0
	})
	if j, _ := s.gh.Job(booting); j.Claims != 0 {
		t.Errorf("the cancelled queued job was claimed %d times", j.Claims)
	}
}

// A job no host could ever hold is marked unschedulable with its reason and
// gets no VM; so is a malformed Tandem label. A job for someone else is ignored.
func TestUnschedulableJobs(t *testing.T) {
	s := newSystem(t, options{vcpus: 2, memoryMiB: 1024})
	s.install("acme", "app")
	big, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-64cpu-8gb"}, Script: "true"})
	bad, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-huge"}, Script: "true"})
	other, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"ubuntu-latest"}, Script: "true"})
	s.waitTandemState([]int64{big, bad}, time.Minute, "unschedulable")
	if v, _ := s.job(big); !strings.Contains(v.Reason, "64") {
		t.Errorf("unschedulable reason %q does not say what was asked", v.Reason)
	}
	if v, _ := s.job(bad); !strings.Contains(v.Reason, "tandem-huge") {
		t.Errorf("malformed-label reason %q does not name the label", v.Reason)
	}
	time.Sleep(3 * time.Second) // a placement pass and a reconcile pass
	if _, ok := s.job(other); ok {
		t.Error("a job without a Tandem label was taken in")
	}
	var out struct{ Runners []struct{ Name string } }
	s.getJSON("/api/v1/runners", &out)
	if len(out.Runners) != 0 {
		t.Errorf("runners were made: %+v", out.Runners)
	}
}

// A job held for an environment's approval boots no VM while it waits;
// approved, it runs in one VM and completes.
func TestApprovalWaitInAVM(t *testing.T) {
	s := newSystem(t, options{})
	s.install("acme", "app")
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"},
		Script: "sleep 1; echo deployed", Environment: "production"})
	s.waitTandemState([]int64{id}, time.Minute, "waiting")
	time.Sleep(3 * time.Second) // placement and reconcile passes
	runners := func() int {
		var out struct{ Runners []struct{ Name string } }
		s.getJSON("/api/v1/runners", &out)
		return len(out.Runners)
	}
	if v, _ := s.job(id); v.State != "waiting" || runners() != 0 {
		t.Fatalf("while waiting for approval: %+v, %d runners", v, runners())
	}
	if err := s.gh.ApproveJob(id); err != nil {
		t.Fatal(err)
	}
	s.waitGitHubDone([]int64{id}, 3*time.Minute)
	s.waitTandemState([]int64{id}, time.Minute, "completed")
	if j, _ := s.gh.Job(id); j.Conclusion != "success" || !strings.Contains(j.Output, "deployed") {
		t.Errorf("on GitHub: %+v", j)
	}
	if n := runners(); n != 1 {
		t.Errorf("%d VMs for the approved job, want 1", n)
	}
}

// Runner groups with real VMs: Tandem's runners join the organisation's
// "Tandem" group, named in the config. A job whose workflow asks for
// another group (runs-on: {group: gpu}) looks like any other when queued:
// it gets one VM, which GitHub never gives it; at the idle timeout the VM
// is stopped and the job is unmatched, and no VM is booted for it again.
// A job of Tandem's group runs in its own VM meanwhile.
func TestJobForAnotherGroupInAVM(t *testing.T) {
	s := newSystem(t, options{idle: 15 * time.Second, runner: "  scope: org\n  group: tandem\n"})
	s.install("acme", "app")
	group, err := s.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "Tandem"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.gh.SetRunnerGroup("acme", ghfake.RunnerGroupSpec{Name: "gpu"}); err != nil {
		t.Fatal(err)
	}
	_, ids, err := s.gh.QueueRun("acme/app",
		ghfake.JobSpec{Labels: []string{"tandem-1cpu-0.25gb"}, Script: "echo on the gpu", RunnerGroup: "gpu", Name: "gpu"},
		ghfake.JobSpec{Labels: []string{"tandem-1cpu-0.25gb"}, Script: "sleep 1; echo ours", Name: "ours"})
	if err != nil {
		t.Fatal(err)
	}
	gpuJob, ours := ids[0], ids[1]
	s.waitGitHubDone([]int64{ours}, 3*time.Minute)
	s.waitTandemState([]int64{ours}, time.Minute, "completed")
	if j, _ := s.gh.Job(ours); j.RunnerGroupID != group || !strings.Contains(j.Output, "ours") {
		t.Errorf("our job on GitHub: %+v", j)
	}
	s.waitTandemState([]int64{gpuJob}, 3*time.Minute, "unmatched")
	v, _ := s.job(gpuJob)
	if !strings.Contains(v.Reason, "another runner group") {
		t.Errorf("unmatched job: %+v", v)
	}
	runners := func() int {
		var out struct{ Runners []struct{ Name string } }
		s.getJSON("/api/v1/runners", &out)
		return len(out.Runners)
	}
	time.Sleep(12 * time.Second) // more than two orphan and missed-webhook passes
	if v, _ := s.job(gpuJob); v.State != "unmatched" || runners() != 2 {
		t.Errorf("afterwards: job %s, %d VMs in all (want unmatched, 2)", v.State, runners())
	}
	if j, _ := s.gh.Job(gpuJob); j.Status != ghfake.StatusQueued || j.Claims != 0 {
		t.Errorf("the gpu job on GitHub: %+v", j)
	}
}

// A forged webhook (bad or missing signature) and a malformed one change
// nothing.
func TestForgedWebhookChangesNothing(t *testing.T) {
	s := newSystem(t, options{})
	body, _ := json.Marshal(map[string]any{
		"action":       "queued",
		"workflow_job": map[string]any{"id": 999001, "run_id": 5, "labels": []string{"tandem-64cpu-1gb"}, "status": "queued"},
		"repository":   map[string]any{"id": 1, "name": "app", "full_name": "evil/app", "owner": map[string]any{"login": "evil"}},
		"installation": map[string]any{"id": 1},
	})
	wrongKey := hmac.New(sha256.New, []byte("not-the-secret"))
	wrongKey.Write(body)
	for name, sig := range map[string]string{
		"wrong key": "sha256=" + hex.EncodeToString(wrongKey.Sum(nil)),
		"missing":   "",
		"garbage":   "sha256=zz",
		"sha1 only": "sha1=0123",
	} {
		if resp := s.postWebhook("workflow_job", "forged-"+name, body, sig); resp.StatusCode != 401 {
			t.Errorf("%s signature: %s, want 401", name, resp.Status)
		}
	}
	if resp := s.postWebhook("workflow_job", "malformed", []byte(`{"action":`), s.sign([]byte(`{"action":`))); resp.StatusCode != 400 {
		t.Errorf("malformed body: %s, want 400", resp.Status)
	}
	time.Sleep(2 * time.Second)
	if jobs := s.jobs(); len(jobs) != 0 {
		t.Errorf("jobs appeared: %+v", jobs)
	}
	// The genuine article is accepted, once.
	good := s.sign(body)
	if resp := s.postWebhook("workflow_job", "genuine", body, good); resp.StatusCode != 202 {
		t.Errorf("genuine webhook: %s, want 202", resp.Status)
	}
	if resp := s.postWebhook("workflow_job", "genuine", body, good); resp.StatusCode != 200 {
		t.Errorf("duplicate delivery: %s, want 200", resp.Status)
	}
	s.waitFor("the genuine job to appear", 30*time.Second, func() bool { _, ok := s.job(999001); return ok })
}
