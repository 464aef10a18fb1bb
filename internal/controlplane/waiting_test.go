package controlplane_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

func (h *goHost) launches() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started
}

// A job held for an environment's approval waits in Tandem too: shown as
// waiting with the reason, no VM, no capacity held; once approved it runs
// on one VM and completes. (Tandem used to boot max_launch_attempts VMs
// that nobody could take, fail the job, and ignore the approval.)
func TestApprovalWaitBootsNoVM(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 2, vcpus: 2})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	// It runs for a second: a runner that ends before its job's in_progress
	// webhook is applied sends the job back to the queue (see
	// TestAnyRunnerTakesAnyJob), which is not what this test is about.
	held, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-2cpu-1gb"}, Script: "sleep 1",
		Environment: "production"})
	r.waitStates([]int64{held}, 10*time.Second, store.JobWaiting)
	// The reconcilers run every 300 ms in this rig: give them, and the
	// placement passes, time to do the wrong thing.
	time.Sleep(2 * time.Second)
	j, _ := r.job(held)
	if j.State != store.JobWaiting || r.hosts[0].launches() != 0 || !strings.Contains(j.Reason, "approval") {
		t.Fatalf("while it waits: job %+v, %d VMs launched", j, r.hosts[0].launches())
	}
	// It holds no capacity: a 2-vCPU job fills the 2-vCPU host meanwhile.
	// (Of other labels: GitHub would give either job to either's runner.)
	other := r.queue("acme/app", "tandem-2cpu-2gb", "true")
	r.waitStates([]int64{other}, 20*time.Second, store.JobCompleted)
	r.waitFor("the other job's VM to end", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	launched := r.hosts[0].launches()

	if err := r.gh.ApproveJob(held); err != nil {
		t.Fatal(err)
	}
	r.waitStates([]int64{held}, 20*time.Second, store.JobCompleted)
	if n := r.hosts[0].launches() - launched; n != 1 {
		var v struct {
			Events []struct{ From, To, Source, Reason string } `json:"events"`
		}
		r.call("GET", "/api/v1/jobs/"+strconv.FormatInt(held, 10), rigReadToken, &v)
		t.Errorf("%d VMs launched for the approved job, want 1; its transitions: %+v", n, v.Events)
	}
	gj, _ := r.gh.Job(held)
	if gj.Conclusion != ghfake.ConclusionSuccess || gj.Claims != 1 {
		t.Errorf("on GitHub: %+v", gj)
	}
	var view struct {
		Events []struct{ From, To string } `json:"events"`
	}
	r.call("GET", "/api/v1/jobs/"+strconv.FormatInt(held, 10), rigReadToken, &view)
	var path []string
	for _, e := range view.Events {
		path = append(path, e.To)
	}
	if got := strings.Join(path, " "); !strings.HasPrefix(got, "queued waiting queued scheduled") {
		t.Errorf("transitions %q", got)
	}
}

// GitHub's own examples send a held job as action "queued" with status
// "waiting": the status decides.
func TestQueuedActionWithWaitingStatus(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	body := []byte(`{"action":"queued","workflow_job":{"id":4242,"run_id":7,"status":"waiting",` +
		`"labels":["tandem"],"name":"deploy","created_at":"2026-12-06T00:00:00Z"},` +
		`"repository":{"id":1,"name":"app","full_name":"acme/app","owner":{"login":"acme"}},` +
		`"installation":{"id":1}}`)
	if resp := r.post("workflow_job", "guid-waiting-1", body, r.sign(body), "application/json"); resp.StatusCode != 202 {
		t.Fatalf("webhook: %s", resp.Status)
	}
	r.waitStates([]int64{4242}, 10*time.Second, store.JobWaiting)
	time.Sleep(500 * time.Millisecond)
	if n := r.hosts[0].launches(); n != 0 {
		t.Errorf("%d VMs launched for a waiting job", n)
	}
}

// A job Tandem gave up on while GitHub still has it queued is opened again
// by the reconciler, with a transition that says so, at most
// lifecycle.MaxReopens times: a job no VM can run does not burn VMs in a
// loop for the 24 hours GitHub keeps it queued.
func TestFailedJobStillQueuedIsReopenedBounded(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 1})
	r.hosts[0].set(errors.New("no space left on device"), false)
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem", "true")
	r.waitFor("every reopen to be spent", 30*time.Second, func() bool {
		j, _ := r.job(id)
		return j.State == store.JobFailed && j.Reopens == lifecycle.MaxReopens
	})
	time.Sleep(2 * time.Second) // reconciler passes every 300 ms: no more reopens
	j, _ := r.job(id)
	if j.State != store.JobFailed || j.Reopens != lifecycle.MaxReopens {
		t.Fatalf("job %+v", j)
	}
	var view struct {
		Events []struct{ From, To, Source, Reason string } `json:"events"`
	}
	r.call("GET", "/api/v1/jobs/"+strconv.FormatInt(id, 10), rigReadToken, &view)
	reopens := 0
	for _, e := range view.Events {
		if e.From == "failed" {
			reopens++
			if e.To != "queued" || !strings.Contains(e.Reason, "opened again") || !strings.HasPrefix(e.Source, "reconciler/") {
				t.Errorf("reopen event %+v", e)
			}
		}
	}
	if reopens != lifecycle.MaxReopens {
		t.Errorf("%d reopen transitions, want %d", reopens, lifecycle.MaxReopens)
	}
	// One runner per launch: MaxAttempts (1) per opening, and no more.
	var runners []store.Runner
	if err := r.st.View(t.Context(), func(tx store.ReadTx) error {
		var err error
		runners, err = tx.Runners(store.RunnerFilter{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(runners) != lifecycle.MaxReopens+1 {
		t.Errorf("%d runners made for the job, want %d", len(runners), lifecycle.MaxReopens+1)
	}
	if gj, _ := r.gh.Job(id); gj.Status != ghfake.StatusQueued {
		t.Errorf("on GitHub: %+v", gj)
	}
}
