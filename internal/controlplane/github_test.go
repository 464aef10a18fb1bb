package controlplane_test

// GitHub as it really is: jobs held for an approval, names without case,
// GitHub's own labels and their bounds, and where a job comes from.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/scheduler"
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
		`"repository":{"id":1,"name":"app","full_name":"acme/app","private":true,"owner":{"login":"acme"}},` +
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

// GitHub's own labels are understood beside Tandem's: ARM64 asks for an
// arm64 VM, whose runner then truly has that label; labels that contradict
// each other, or ask for a machine Tandem does not run, make the job
// unschedulable at once, with no VM booted.
func TestGitHubsOwnLabels(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	q := func(ls ...string) int64 {
		// It runs for a second: a runner that ends before its job's
		// in_progress is applied gets the job a second VM (see
		// TestAnyRunnerTakesAnyJob), and this test counts VMs.
		id, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: ls, Script: "sleep 1"})
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

// A job carries where it comes from, as GitHub says: branch, commit, its
// page on GitHub, who triggered it, the run attempt, and GitHub's times
// beside Tandem's.
func TestJobIdentity(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	gj, _ := r.gh.Job(id)
	var v controlplane.JobView
	r.call("GET", fmt.Sprintf("/api/v1/jobs/%d", id), rigReadToken, &v)
	if v.HeadBranch != "main" || len(v.HeadSHA) != 40 || v.Sender != "monalisa" || v.RunAttempt != 1 ||
		v.HTMLURL != fmt.Sprintf("https://github.com/acme/app/actions/runs/%d/job/%d", gj.RunID, id) {
		t.Errorf("identity: %+v", v)
	}
	if v.CreatedAt == nil || !v.CreatedAt.Equal(gj.CreatedAt.Truncate(time.Second)) ||
		v.GitHubStartedAt == nil || v.GitHubCompletedAt == nil || v.GitHubCompletedAt.Before(*v.GitHubStartedAt) {
		t.Errorf("GitHub's times: created %v started %v completed %v; GitHub: %+v", v.CreatedAt, v.GitHubStartedAt, v.GitHubCompletedAt, gj)
	}
}

// What a payload says of a job's origin is a stranger's input: a link that
// is not https, a commit id that is not one, an endless branch name or
// sender are dropped or cut, never shown as sent.
func TestJobIdentityIsChecked(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	body := []byte(`{"action":"queued","workflow_job":{"id":5151,"run_id":7,"status":"queued","labels":["tandem-64cpu-1gb"],` +
		`"head_branch":"` + strings.Repeat("b", 10_000) + `","head_sha":"not-a-sha","html_url":"javascript:alert(1)"},` +
		`"repository":{"id":1,"name":"app","full_name":"acme/app","private":true,"owner":{"login":"acme"}},` +
		`"installation":{"id":1},"sender":{"login":"` + strings.Repeat("s", 500) + `"}}`)
	if resp := r.post("workflow_job", "g-identity", body, r.sign(body), "application/json"); resp.StatusCode != 202 {
		t.Fatalf("webhook: %s", resp.Status)
	}
	r.waitStates([]int64{5151}, 10*time.Second, store.JobUnschedulable)
	var v controlplane.JobView
	r.call("GET", "/api/v1/jobs/5151", rigReadToken, &v)
	if len(v.HeadBranch) != 255 || v.HeadSHA != "" || v.HTMLURL != "" || v.Sender != "" {
		t.Errorf("unchecked identity: branch of %d bytes, sha %q, url %q, sender %q", len(v.HeadBranch), v.HeadSHA, v.HTMLURL, v.Sender)
	}
}

// When the App loses an installation or repositories, Tandem stops acting
// for them: their jobs end with the reason, their VMs are stopped, their
// repositories are no longer polled, and a late webhook takes nothing in.
// Unsuspended, the installation is polled again and a job GitHub still has
// queued is opened again and runs.
func TestInstallationLifecycle(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 1})
	r.hosts[0].set(nil, true) // runners boot and take no job
	inst := r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web")
	app := r.queue("acme/app", "tandem", "true")
	web := r.queue("acme/web", "tandem-2cpu-2gb", "true")
	r.waitStates([]int64{app, web}, 10*time.Second, store.JobLaunching)
	repos := func() (names []string) {
		r.st.View(t.Context(), func(tx store.ReadTx) error {
			rs, err := tx.Repos(time.Time{})
			for _, x := range rs {
				names = append(names, x.FullName)
			}
			return err
		})
		return names
	}

	// acme/web leaves the installation: its job fails, its VM stops; acme/app
	// goes on.
	if err := r.gh.RemoveRepos(inst, "acme/web"); err != nil {
		t.Fatal(err)
	}
	r.waitStates([]int64{web}, 10*time.Second, store.JobFailed)
	if j, _ := r.job(web); !strings.Contains(j.Reason, "repository was removed") {
		t.Errorf("reason %q", j.Reason)
	}
	if j, _ := r.job(app); j.State != store.JobLaunching {
		t.Errorf("acme/app's job is %s", j.State)
	}
	if got := strings.Join(repos(), " "); got != "acme/app" {
		t.Errorf("repositories polled: %q", got)
	}

	// Suspended: acme/app's job fails, every VM stops, nothing is polled.
	if err := r.gh.SuspendInstallation(inst, true); err != nil {
		t.Fatal(err)
	}
	r.waitStates([]int64{app}, 10*time.Second, store.JobFailed)
	if j, _ := r.job(app); !strings.Contains(j.Reason, "suspended by monalisa") {
		t.Errorf("reason %q", j.Reason)
	}
	r.waitFor("every VM to stop", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	if got := repos(); len(got) != 0 {
		t.Errorf("a suspended installation's repositories are polled: %q", got)
	}

	// Unsuspended: the reconciler finds acme/app's job still queued on
	// GitHub, opens it again, and it runs.
	r.hosts[0].set(nil, false)
	if err := r.gh.SuspendInstallation(inst, false); err != nil {
		t.Fatal(err)
	}
	// Polling starts again with the repository's next webhook.
	r.queue("acme/app", "tandem-1cpu-1gb", "true")
	r.waitStates([]int64{app}, 20*time.Second, store.JobCompleted)
	if j, _ := r.job(app); j.Reopens != 1 {
		t.Errorf("job %+v: want it opened again once", j)
	}

	// Uninstalled: a late webhook of the installation takes nothing in.
	if err := r.gh.RemoveInstallation(inst); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the installation to be removed", 10*time.Second, func() bool {
		var in store.Installation
		r.st.View(t.Context(), func(tx store.ReadTx) (err error) { in, err = tx.Installation(inst); return err })
		return in.State == store.InstallationRemoved
	})
	body := []byte(fmt.Sprintf(`{"action":"queued","workflow_job":{"id":777,"run_id":7,"status":"queued","labels":["tandem"]},`+
		`"repository":{"id":1,"name":"app","full_name":"acme/app","private":true,"owner":{"login":"acme"}},"installation":{"id":%d}}`, inst))
	if resp := r.post("workflow_job", "g-late", body, r.sign(body), "application/json"); resp.StatusCode != 202 {
		t.Fatalf("late webhook: %s", resp.Status)
	}
	time.Sleep(500 * time.Millisecond)
	if _, ok := r.job(777); ok {
		t.Error("a webhook of an uninstalled installation made a job")
	}
}

// A public repository's job is refused by default, with the reason and
// the config line that allows it, and boots no VM; allowed for its org,
// it runs, under the org's egress policy even where the repository has a
// looser one of its own.
func TestPublicRepositories(t *testing.T) {
	pol, err := egress.Config{Default: egress.Rule{Mode: "open"}, Overrides: map[string]egress.Rule{
		"acme":     {Mode: "audit"},
		"acme/oss": {Mode: "open"},
	}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, rigOptions{noReconcile: true, configure: func(c *controlplane.Config) {
		c.AllowPublic = []string{"ACME"}
		c.Egress = pol
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/oss")
	r.gh.AddInstallation("bob", ghfake.AccountOrganization, "bob/lib")
	r.gh.SetPublic("acme/oss", true)
	r.gh.SetPublic("bob/lib", true)
	refused := r.queue("bob/lib", "tandem", "true")
	allowed := r.queue("acme/oss", "tandem", "sleep 1") // a second: see TestGitHubsOwnLabels
	r.waitStates([]int64{refused}, 10*time.Second, store.JobRefused)
	r.waitStates([]int64{allowed}, 20*time.Second, store.JobCompleted)
	j, _ := r.job(refused)
	if !strings.Contains(j.Reason, "bob/lib is a public repository") || !strings.Contains(j.Reason, "github.allow_public") || !j.Public {
		t.Errorf("refused job: %+v", j)
	}
	var rs []store.Runner
	r.st.View(t.Context(), func(tx store.ReadTx) (err error) { rs, err = tx.Runners(store.RunnerFilter{}); return err })
	if len(rs) != 1 || rs[0].JobID != allowed || rs[0].Egress.Mode != egress.Audit {
		t.Errorf("runners %+v: want one, for acme/oss's job, under acme's audit policy", rs)
	}
}
