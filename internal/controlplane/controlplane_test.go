package controlplane_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/controlplane/cptest"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// goHost is a HostAgent whose "VMs" are goroutines running the real fake
// runner against ghfake: the control plane's logic under test at full
// speed, with the race detector. The e2e suite does the same with real VMs.
type goHost struct {
	id       string
	cp       *controlplane.Server
	sink     func(agentapi.Event) // default: cp.HostEvent (in process); a Daemon's Event for a remote agent
	fail     error                // Launch refuses with it, when set
	idleOnly bool                 // runners start but never take a job
	muted    bool                 // reports nothing: its agent died
	images   *agent.Images        // if set, a run first fetches its image, as the real agent does
	onLaunch func(runner string)  // if set, told of every launch it accepts

	mu       sync.Mutex
	runs     map[string]*goRun
	wg       sync.WaitGroup
	started  int
	booted   []string              // the image of each run that got as far as "booting"
	assigned []agentapi.Assignment // every launch it accepted
	verdicts []verdict             // Hold's words, as they came
}

type verdict struct {
	runner string
	until  time.Time
}

// Hold delivers the control plane's word on keeping a run's "VM".
func (h *goHost) Hold(runner string, until time.Time) error {
	h.mu.Lock()
	r, ok := h.runs[runner]
	h.mu.Unlock()
	if !ok {
		return agent.ErrUnknown
	}
	select {
	case <-r.keep:
	default:
	}
	r.keep <- until
	return nil
}

type goRun struct {
	cancel     context.CancelCauseFunc
	config     chan string
	configured bool           // guarded by goHost.mu: Configure delivered
	keep       chan time.Time // Hold's word, for a run that MayKeep
	ended      bool           // its end was reported already (crashRun)
}

func newGoHost(id string) *goHost { return &goHost{id: id, runs: map[string]*goRun{}} }

func (h *goHost) set(fail error, idleOnly bool) {
	h.mu.Lock()
	h.fail, h.idleOnly = fail, idleOnly
	h.mu.Unlock()
}

func (h *goHost) Launch(a agentapi.Assignment) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	idleOnly := h.idleOnly
	if _, ok := h.runs[a.Runner]; ok {
		return agentapi.ErrDuplicate
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &goRun{cancel: cancel, config: make(chan string, 1), keep: make(chan time.Time, 1)}
	h.runs[a.Runner] = r
	h.started++
	h.assigned = append(h.assigned, a)
	if h.onLaunch != nil {
		h.onLaunch(a.Runner)
	}
	h.wg.Add(1)
	release := h.images.Acquire(a.Image)
	go func() {
		defer h.wg.Done()
		defer cancel(nil)
		defer release()
		ev := agentapi.Event{Host: h.id, Runner: a.Runner, Kind: agentapi.EventEnded}
		if err := h.images.Ensure(ctx, a.Image); err != nil {
			ev.Failure, ev.Detail = failure.Launch, err.Error()
			h.mu.Lock()
			delete(h.runs, a.Runner)
			h.mu.Unlock()
			h.emit(ev)
			return
		}
		h.mu.Lock()
		h.booted = append(h.booted, a.Image)
		h.mu.Unlock()
		h.emit(agentapi.Event{Host: h.id, Runner: a.Runner, Kind: agentapi.EventBooting, VMID: "vm-" + a.Runner})
		if a.Pool != "" {
			h.emit(agentapi.Event{Host: h.id, Runner: a.Runner, Kind: agentapi.EventReady, VMID: "vm-" + a.Runner})
		}
		// As the agent does: a VM whose config does not come in time ends.
		waitConfig := a.ConfigTimeout
		if waitConfig == 0 {
			waitConfig = 2 * time.Minute
		}
		t := time.NewTimer(waitConfig)
		defer t.Stop()
		select {
		case <-t.C:
			ev.Failure, ev.Detail = failure.Launch, fmt.Sprintf("no runner config within %s", waitConfig)
		case jit := <-r.config:
			h.emit(agentapi.Event{Host: h.id, Runner: a.Runner, Kind: agentapi.EventStarted})
			if idleOnly {
				<-ctx.Done()
				ev.Failure, ev.Detail = failure.Cancelled, context.Cause(ctx).Error()
			} else if err := fakerunner.Run(ctx, jit, fakerunner.Options{IdleTimeout: 20 * time.Second,
				HeartbeatInterval: 100 * time.Millisecond}); err != nil {
				ev.ExitCode = 1
				if ctx.Err() != nil {
					ev.Failure, ev.Detail = failure.Cancelled, context.Cause(ctx).Error()
				}
			}
		case <-ctx.Done():
			ev.Failure, ev.Detail = failure.Cancelled, context.Cause(ctx).Error()
		}
		if a.MayKeep && ctx.Err() == nil {
			// As the agent does: wait for the control plane's word, then
			// keep the "VM" until then.
			select {
			case until := <-r.keep:
				h.mu.Lock()
				h.verdicts = append(h.verdicts, verdict{a.Runner, until})
				h.mu.Unlock()
				select {
				case <-time.After(time.Until(until)):
				case <-ctx.Done():
				}
			case <-time.After(agentapi.KeepVerdictWait):
			case <-ctx.Done():
			}
		}
		if a.Egress.Mode.Records() {
			// What a real VM's egress rules would have recorded: one flow.
			ev.Egress = &egress.Record{Mode: a.Egress.Mode, Flows: []egress.Flow{{Addr: netip.MustParseAddr("198.51.100.9"),
				Proto: "tcp", Port: 443, Name: "registry.example.org", Allowed: true, Count: 1}}}
		}
		h.mu.Lock()
		delete(h.runs, a.Runner)
		reported := r.ended
		h.mu.Unlock()
		if !reported {
			h.emit(ev)
		}
	}()
	return nil
}

// crashRun ends a run's "VM" with kind, as the agent reports a VM that
// crashed under its job, and returns what stops the run's runner. In a
// real crash the runner dies with the VM and GitHub fails its job minutes
// later; call the stop once the control plane has the report, and the
// fake runner, cancelled, reports its job failed: GitHub's conclusion.
func (h *goHost) crashRun(runner string, kind failure.Kind) (stop func()) {
	h.mu.Lock()
	r, ok := h.runs[runner]
	if ok {
		r.ended = true
	}
	h.mu.Unlock()
	if !ok {
		return func() {}
	}
	h.emit(agentapi.Event{Host: h.id, Runner: runner, Kind: agentapi.EventEnded, Failure: kind,
		Detail: "qemu: terminating on signal 9"})
	return func() { r.cancel(errors.New("crashed")) }
}

func (h *goHost) emit(e agentapi.Event) {
	h.mu.Lock()
	muted, cp, sink := h.muted, h.cp, h.sink
	h.mu.Unlock()
	if muted {
		return
	}
	e.At = time.Now()
	if sink != nil {
		sink(e)
		return
	}
	cp.HostEvent(e)
}

func (h *goHost) server() *controlplane.Server {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cp
}

// reportTo makes cp the control plane the host reports to (its agent
// connected to another replica).
func (h *goHost) reportTo(cp *controlplane.Server) {
	h.mu.Lock()
	h.cp = cp
	h.mu.Unlock()
}

// NameImages hands the named images to the host's images (agentapi.ImageNamer).
func (h *goHost) NameImages(ids []string) { h.images.SetNamed(ids) }

// Runners lists the runs in progress (agentapi.Runner).
func (h *goHost) Runners() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.runs))
}

// crash ends every run without a word, as when a host's agent and its VMs
// die together.
func (h *goHost) crash() {
	h.mu.Lock()
	h.muted = true
	h.mu.Unlock()
	h.stopAll()
}

// stopAll ends every run and waits for them.
func (h *goHost) stopAll() {
	h.mu.Lock()
	for _, run := range h.runs {
		run.cancel(errors.New("test over"))
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *goHost) Configure(name string, env map[string]string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.runs[name]
	if !ok {
		return agent.ErrUnknown
	}
	if r.configured {
		return fmt.Errorf("runner %s already configured", name)
	}
	r.configured = true
	r.config <- env["ACTIONS_RUNNER_INPUT_JITCONFIG"]
	return nil
}

// AwaitingConfig lists the runs that Configure has not reached
// (agentapi.ConfigWaiter), as the agent does.
func (h *goHost) AwaitingConfig() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var names []string
	for name, r := range h.runs {
		if !r.configured {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func (h *goHost) Stop(name, reason string) error {
	h.mu.Lock()
	r, ok := h.runs[name]
	h.mu.Unlock()
	if ok {
		r.cancel(errors.New(reason))
	}
	return nil
}

func (h *goHost) live() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.runs)
}

// API tokens of every rig.
const (
	rigAdminToken = "rig-admin-token-0123456789"
	rigReadToken  = "rig-read-token-0123456789"
)

type rig struct {
	t      *testing.T
	gh     *ghfake.Server
	cp     *controlplane.Server
	st     store.Store
	web    *httptest.Server
	client *github.Client
	secret []byte
	hosts  []*goHost
}

type rigOptions struct {
	hosts       int
	vcpus       float64 // per host
	faults      ghfake.Faults
	maxAttempts int
	idle        time.Duration
	limits      scheduler.Limits
	noReconcile bool
	noHosts     bool          // attach no in-process host
	heartbeat   time.Duration // remote hosts' heartbeat timeout
	agentPin    string
	configure   func(*controlplane.Config) // last say on the control plane's config
	hostFail    error                      // the in-process hosts refuse every launch with it
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	if o.hosts == 0 && !o.noHosts {
		o.hosts = 1
	}
	if o.vcpus == 0 {
		o.vcpus = 8
	}
	iv := controlplane.Intervals{MissedWebhooks: 300 * time.Millisecond, FailedDeliveries: 300 * time.Millisecond,
		Orphans: 500 * time.Millisecond, LostAfter: time.Second}
	if o.noReconcile {
		iv = controlplane.Intervals{MissedWebhooks: -1, FailedDeliveries: -1, Orphans: -1, LostAfter: time.Second}
	}
	if o.idle == 0 {
		o.idle = time.Minute
	}
	sys := cptest.Start(t, time.Now().UnixNano(), func(c *controlplane.Config) {
		c.Labels, _ = labels.NewParser("tandem", 1, 256)
		c.Runner.IdleTimeout = o.idle
		c.Limits, c.MaxAttempts, c.Reconcile = o.limits, o.maxAttempts, iv
		c.HeartbeatTimeout, c.AgentPin, c.LogDir = o.heartbeat, o.agentPin, t.TempDir()
		c.APITokens = controlplane.APITokens{{Secret: rigAdminToken, Admin: true}, {Secret: rigReadToken}}
		if o.configure != nil {
			o.configure(c)
		}
	})
	sys.GH.SetFaults(o.faults)
	r := &rig{t: t, gh: sys.GH, cp: sys.CP, st: sys.Store, web: sys.Web, client: sys.Client, secret: sys.Secret}
	ctx := sys.Ctx
	cp := sys.CP
	for i := 0; i < o.hosts; i++ {
		h := newGoHost(fmt.Sprintf("h%d", i+1))
		h.cp = cp
		h.fail = o.hostFail
		r.hosts = append(r.hosts, h)
		err := cp.AttachHost(ctx, store.Host{ID: h.id, VCPUs: o.vcpus, MemoryMiB: 64 << 10,
			Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: true}}}, h, agentapi.Inventory{})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		// Refuse new launches first: a run that ends frees room, and the
		// control plane, still running, would fill it again.
		for _, h := range r.hosts {
			h.set(errors.New("test over"), false)
		}
		for _, h := range r.hosts {
			h.stopAll()
		}
	})
	return r
}

func (r *rig) job(id int64) (store.Job, bool) { return cptest.Job(r.st, id) }

// jobEvents is a job's story in the store, oldest first.
func (r *rig) jobEvents(id int64) []store.JobEvent {
	r.t.Helper()
	var evs []store.JobEvent
	if err := r.st.View(r.t.Context(), func(tx store.ReadTx) (err error) {
		evs, err = tx.JobEvents(id)
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	return evs
}

func (r *rig) waitFor(what string, timeout time.Duration, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) waitStates(ids []int64, timeout time.Duration, states ...store.JobState) {
	r.t.Helper()
	defer func() {
		if !r.t.Failed() {
			return
		}
		for _, id := range ids {
			j, ok := r.job(id)
			gj, _ := r.gh.Job(id)
			if !ok || !slices.Contains(states, j.State) {
				r.t.Logf("job %d: known %v, %s (%s) runner %s; GitHub: %s %s runner %s claims %d",
					id, ok, j.State, j.Reason, j.RunnerName, gj.Status, gj.Conclusion, gj.RunnerName, gj.Claims)
			}
		}
		for _, x := range r.liveRunners() {
			r.t.Logf("live runner %s: %s job %d host %s reason %q", x.Name, x.State, x.JobID, x.HostID, x.Reason)
		}
	}()
	r.waitFor(fmt.Sprintf("%d jobs in %v", len(ids), states), timeout, func() bool {
		for _, id := range ids {
			j, ok := r.job(id)
			if !ok {
				return false
			}
			found := false
			for _, s := range states {
				found = found || j.State == s
			}
			if !found {
				return false
			}
		}
		return true
	})
}

func (r *rig) liveRunners() []store.Runner {
	var rs []store.Runner
	r.st.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		rs, err = tx.Runners(store.RunnerFilter{Live: true})
		return err
	})
	return rs
}

func (r *rig) post(event, guid string, body []byte, sig string, ctype string) *http.Response {
	resp, _ := r.postFull(event, guid, body, sig, ctype, nil)
	return resp
}

// postFull posts a webhook with extra headers and returns the answer and
// its body.
func (r *rig) postFull(event, guid string, body []byte, sig string, ctype string, extra map[string]string) (*http.Response, string) {
	req, _ := http.NewRequest("POST", r.web.URL+"/webhook", bytes.NewReader(body))
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", guid)
	if sig != "" {
		req.Header.Set("X-Hub-Signature-256", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func (r *rig) sign(body []byte) string {
	m := hmac.New(sha256.New, r.secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (r *rig) queue(repo string, lbl string, script string) int64 {
	id, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: repo, Labels: []string{lbl}, Script: script})
	return id
}

func TestJobRunsOnce(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem-2cpu-1gb", "echo hi")
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	j, _ := r.job(id)
	gj, _ := r.gh.Job(id)
	if gj.Claims != 1 || gj.Conclusion != "success" || j.RunnerName != gj.RunnerName || j.HostID != "h1" ||
		j.VCPUs != 2 || j.MemoryMiB != 1024 || j.Conclusion != "success" {
		t.Errorf("job %+v; GitHub %+v", j, gj)
	}
	r.waitFor("runner to end", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
}

// GitHub hands jobs to whichever matching runner asks first: with many
// jobs of one label set, runners regularly take jobs they were not made
// for. Every job still runs exactly once, and no more VMs are started than
// jobs were queued, except one for each job sent back to the queue because
// its runner ended (having run another job) before that job's in_progress
// webhook arrived: Tandem cannot tell that from a runner that took nothing.
func TestAnyRunnerTakesAnyJob(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	var ids []int64
	for i := 0; i < 20; i++ {
		ids = append(ids, r.queue("acme/app", "tandem", fmt.Sprintf("echo %d", i)))
	}
	r.waitStates(ids, 60*time.Second, store.JobCompleted)
	swapped, early := 0, 0
	for _, id := range ids {
		gj, _ := r.gh.Job(id)
		if gj.Claims != 1 {
			t.Errorf("job %d claimed %d times", id, gj.Claims)
		}
		evs := r.jobEvents(id)
		scheduled := ""
		for _, e := range evs {
			if e.To == store.JobScheduled && scheduled == "" {
				scheduled = e.Runner
			}
			if strings.Contains(e.Reason, "ran another job") {
				early++
			}
		}
		if scheduled != gj.RunnerName {
			swapped++
		}
	}
	t.Logf("%d of %d jobs ran on a runner made for another job", swapped, len(ids))
	r.waitFor("runners to end", 20*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	r.hosts[0].mu.Lock()
	started := r.hosts[0].started
	r.hosts[0].mu.Unlock()
	if started > len(ids)+early {
		t.Errorf("%d VMs started for %d jobs (%d requeued after their runner ended early)", started, len(ids), early)
	}
}

// A fifth of the webhooks lost, failed, duplicated or reordered: the
// reconcilers bring every job to its true end, each run once.
func TestUnreliableWebhooks(t *testing.T) {
	if testing.Short() {
		// 60 jobs against timing-driven reconcilers: too slow to be reliable
		// under qemu-user emulation (the -short arm64 run); the full run has it.
		t.Skip("long chaos test: not in -short runs")
	}
	r := newRig(t, rigOptions{hosts: 2, faults: ghfake.Faults{Lose: 0.05, Fail: 0.05, Duplicate: 0.05, Reorder: 0.05,
		MaxDelay: 50 * time.Millisecond}})
	orgs := []string{"a", "b", "c"}
	for _, o := range orgs {
		r.gh.AddInstallation(o, ghfake.AccountOrganization, o+"/x", o+"/y")
	}
	var ids []int64
	for i := 0; i < 60; i++ {
		o := orgs[i%3]
		ids = append(ids, r.queue(o+"/"+[]string{"x", "y"}[i%2], "tandem-1cpu-1gb", "true"))
	}
	defer func() {
		if t.Failed() {
			for _, id := range ids {
				gj, _ := r.gh.Job(id)
				j, ok := r.job(id)
				if gj.Status != "completed" || !ok || j.State != store.JobCompleted {
					t.Logf("job %d: GitHub %s (runner %s, claims %d); Tandem known %v %s (%s) runner %s",
						id, gj.Status, gj.RunnerName, gj.Claims, ok, j.State, j.Reason, j.RunnerName)
				}
			}
			for _, x := range r.liveRunners() {
				t.Logf("live runner %s: %s job %d reason %q", x.Name, x.State, x.JobID, x.Reason)
			}
		}
	}()
	r.waitFor("GitHub to complete every job", 90*time.Second, func() bool {
		for _, id := range ids {
			if j, _ := r.gh.Job(id); j.Status != "completed" {
				return false
			}
		}
		return true
	})
	// A webhook held back to be reordered goes out once another is sent;
	// after the last job nothing else is sent: release it, as GitHub would
	// deliver it late rather than never.
	r.gh.Flush()
	r.waitStates(ids, 30*time.Second, store.JobCompleted)
	for _, id := range ids {
		if gj, _ := r.gh.Job(id); gj.Claims != 1 {
			t.Errorf("job %d claimed %d times", id, gj.Claims)
		}
	}
	r.waitFor("runners to end", 30*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	c := r.counters()
	t.Logf("counters: %v", c)
	if c["reconciler/missed-webhooks/jobs-found"]+c["reconciler/failed-deliveries/redelivered"]+c["reconciler/missed-webhooks/jobs-moved"] == 0 {
		t.Error("no reconciler action counted, though webhooks were lost")
	}
}

func TestWebhookValidation(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true, configure: func(c *controlplane.Config) { c.MaxBody = 1 << 20 }})
	body := []byte(`{"action":"queued","workflow_job":{"id":77,"run_id":1,"labels":["tandem-64cpu-1gb"],"status":"queued"},` +
		`"repository":{"id":1,"name":"app","full_name":"acme/app","private":true,"owner":{"login":"acme"}},"installation":{"id":1}}`)
	good := r.sign(body)
	// Each refusal names its cause.
	for name, tc := range map[string]struct {
		event, sig, ctype string
		body              []byte
		want              int
		says              string
		guid              string            // default "g-"+name
		extra             map[string]string // more headers
	}{
		"bad signature":  {"workflow_job", "sha256=" + strings.Repeat("0", 64), "application/json", body, 401, "signature does not match", "", nil},
		"no signature":   {"workflow_job", "", "application/json", body, 401, "missing X-Hub-Signature-256", "", nil},
		"sha1 only":      {"workflow_job", "", "application/json", body, 401, "only the SHA-1 X-Hub-Signature was sent", "", map[string]string{"X-Hub-Signature": "sha1=0123"}},
		"sha1 in sha256": {"workflow_job", "sha1=" + strings.Repeat("0", 40), "application/json", body, 401, "unsupported algorithm", "", nil},
		"not hex":        {"workflow_job", "sha256=" + strings.Repeat("g", 64), "application/json", body, 401, "malformed X-Hub-Signature-256", "", nil},
		"long delivery":  {"workflow_job", good, "application/json", body, 400, "X-GitHub-Delivery header is longer than 100", strings.Repeat("g", 101), nil},
		"no delivery":    {"workflow_job", good, "application/json", body, 400, "X-GitHub-Delivery header is missing", "-", nil},
		"no event":       {"", good, "application/json", body, 400, "X-GitHub-Event header is missing", "", nil},
		"another app":    {"workflow_job", good, "application/json", body, 403, "this control plane serves App 4711", "", map[string]string{"X-GitHub-Hook-Installation-Target-ID": "99"}},
		"our app":        {"ping", r.sign([]byte(`{"zen":"x"}`)), "application/json", []byte(`{"zen":"x"}`), 200, "pong", "", map[string]string{"X-GitHub-Hook-Installation-Target-ID": "4711"}},
		"malformed":      {"workflow_job", r.sign([]byte("{")), "application/json", []byte("{"), 400, "", "", nil},
		"missing fields": {"workflow_job", r.sign([]byte(`{"action":"queued"}`)), "application/json", []byte(`{"action":"queued"}`), 400, "", "", nil},
		"form encoded":   {"workflow_job", good, "application/x-www-form-urlencoded", body, 415, "application/json", "", nil},
		"too large":      {"workflow_job", r.sign(bytes.Repeat([]byte("x"), 2<<20)), "application/json", bytes.Repeat([]byte("x"), 2<<20), 413, "limit of 1048576 bytes", "", nil},
		"ping":           {"ping", r.sign([]byte(`{"zen":"x"}`)), "application/json", []byte(`{"zen":"x"}`), 200, "pong", "", nil},
		// An event Tandem does not use is answered from its headers: its
		// body is not read, so it is not checked either.
		"other event": {"push", "", "application/json", bytes.Repeat([]byte("x"), 2<<20), 200, "ignored", "", nil},
	} {
		guid := tc.guid
		switch guid {
		case "":
			guid = "g-" + name
		case "-":
			guid = ""
		}
		resp, answer := r.postFull(tc.event, guid, tc.body, tc.sig, tc.ctype, tc.extra)
		if resp.StatusCode != tc.want || !strings.Contains(answer, tc.says) {
			t.Errorf("%s: %s %s, want %d saying %q", name, resp.Status, answer, tc.want, tc.says)
		}
	}
	resp, _ := http.Get(r.web.URL + "/webhook")
	if resp.StatusCode != 405 {
		t.Errorf("GET /webhook: %s", resp.Status)
	}
	resp.Body.Close()
	if _, ok := r.job(77); ok {
		t.Fatal("a refused webhook created a job")
	}
	if resp := r.post("workflow_job", "g-good", body, good, "application/json"); resp.StatusCode != 202 {
		t.Errorf("good webhook: %s", resp.Status)
	}
	if resp := r.post("workflow_job", "g-good", body, good, "application/json"); resp.StatusCode != 200 {
		t.Errorf("duplicate: %s", resp.Status)
	}
	r.waitStates([]int64{77}, 5*time.Second, store.JobUnschedulable)
	j, _ := r.job(77)
	if !strings.Contains(j.Reason, "64") {
		t.Errorf("unschedulable reason %q", j.Reason)
	}
	// API views
	var out struct{ Jobs []controlplane.JobView }
	getJSON(t, r.web.URL+"/api/v1/jobs?state=unschedulable", &out)
	if len(out.Jobs) != 1 || out.Jobs[0].ID != 77 || out.Jobs[0].Reason == "" {
		t.Errorf("API jobs: %+v", out.Jobs)
	}
	if code := r.call("GET", "/api/v1/jobs?state=bogus", rigReadToken, nil); code != 400 {
		t.Errorf("bad state filter: %d", code)
	}
	if code := r.call("GET", "/api/v1/jobs", "", nil); code != 401 {
		t.Errorf("jobs without a token: %d, want 401", code)
	}
	m, _ := http.Get(r.web.URL + "/metrics")
	mb, _ := io.ReadAll(m.Body)
	m.Body.Close()
	for _, want := range []string{`tandem_webhooks_total{result="bad-signature"} 5`, `tandem_jobs{state="unschedulable"} 1`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// call makes an API request with token ("" for none), decodes a JSON
// answer into out (if not nil) and returns the status code.
func (r *rig) call(method, path, token string, out any) int {
	r.t.Helper()
	code, text := r.callBody(method, path, token, nil)
	if out != nil {
		json.Unmarshal([]byte(text), out)
	}
	return code
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+rigReadToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// A host that cannot launch is avoided; a job that cannot be launched
// anywhere fails after the configured attempts, with the reason.
func TestLaunchRetriesElsewhereThenGivesUp(t *testing.T) {
	r := newRig(t, rigOptions{hosts: 2, maxAttempts: 3, noReconcile: true})
	r.hosts[0].set(errors.New("disk full"), false)
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	j, _ := r.job(id)
	if j.HostID != "h2" && j.Attempts > 1 {
		// placed on h1 first only if best-fit chose it; then avoided
		if len(j.AvoidHosts) == 0 || j.AvoidHosts[0] != "h1" {
			t.Errorf("job after a failed launch on h1: %+v", j)
		}
	}
	// A spare runner of the first job's attempts would take the next job
	// (GitHub gives a queued job to any idle runner): wait until none is
	// left, so that the next job depends on new launches only.
	r.waitFor("spare runners to end", 20*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	r.hosts[1].set(errors.New("no space left on device"), false)
	id2 := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{id2}, 20*time.Second, store.JobFailed)
	j2, _ := r.job(id2)
	if j2.Attempts != 3 || !strings.Contains(j2.Reason, "gave up after 3") {
		t.Errorf("failed job %+v", j2)
	}
}

// A job cancelled while its VM boots frees the VM (reconciler d); a
// running job cancelled ends as cancelled.
func TestCancelFreesTheVM(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	run := r.queue("acme/app", "tandem", "sleep 30")
	r.waitStates([]int64{run}, 10*time.Second, store.JobRunning)
	// A job for a label set no runner serves yet; cancel it at once.
	pending := r.queue("acme/app", "tandem-arm64", "true")
	r.gh.CancelJob(pending)
	r.gh.CancelJob(run)
	r.waitStates([]int64{run, pending}, 20*time.Second, store.JobCancelled)
	r.waitFor("VMs to end", 20*time.Second, func() bool { return len(r.liveRunners()) == 0 && r.hosts[0].live() == 0 })
}

// A registered runner whose job was cancelled serves the next queued job of
// its labels, which goes straight to launching. (The store used to refuse
// queued → launching, and every placement pass then failed until the
// runner's idle timeout.)
func TestRegisteredSpareServesQueuedJob(t *testing.T) {
	r := newRig(t, rigOptions{vcpus: 1, noReconcile: true})
	r.hosts[0].set(nil, true) // runners start and wait, and take no job
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	first := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{first}, 10*time.Second, store.JobLaunching)
	r.waitFor("the runner to start", 10*time.Second, func() bool {
		rs := r.liveRunners()
		return len(rs) == 1 && rs[0].State == store.RunnerIdle
	})
	spare := r.liveRunners()[0].Name
	// The host is full: the next job waits for a place.
	next := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{next}, 10*time.Second, store.JobQueued)
	r.gh.CancelJob(first)
	r.waitStates([]int64{first}, 10*time.Second, store.JobCancelled)
	r.waitStates([]int64{next}, 10*time.Second, store.JobLaunching)
	j, _ := r.job(next)
	if j.RunnerName != spare || j.HostID != "h1" || j.Attempts != 1 {
		t.Errorf("queued job given the spare: %+v (spare %s)", j, spare)
	}
	if rs := r.liveRunners(); len(rs) != 1 || rs[0].JobID != next {
		t.Errorf("live runners %+v", rs)
	}
}

// No host gets more VMs than it has room for, whatever the number of hosts.
// (Each pass used to see every host but the last as empty: the used
// capacity was added through pointers into a slice that later appends had
// moved.)
func TestHostsNeverOverfilled(t *testing.T) {
	r := newRig(t, rigOptions{hosts: 3, vcpus: 2, noReconcile: true})
	for _, h := range r.hosts {
		h.set(nil, true) // runners start and wait, and take no job
	}
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	var ids []int64
	for i := 0; i < 9; i++ { // one at a time: each placed by a pass of its own
		ids = append(ids, r.queue("acme/app", "tandem", "true"))
		if i < 6 {
			r.waitStates(ids[i:], 10*time.Second, store.JobLaunching)
		}
	}
	r.waitFor("a placement pass to find no room for the last three", 10*time.Second, func() bool {
		for _, h := range r.hosts {
			if h.live() > 2 {
				return true // overfilled: reported below
			}
		}
		for _, id := range ids[6:] {
			var v controlplane.JobView
			if r.call("GET", fmt.Sprintf("/api/v1/jobs/%d", id), rigReadToken, &v) != 200 || v.State != "queued" || v.Reason == "" || strings.HasPrefix(v.Reason, "queued") {
				return false
			}
		}
		return true
	})
	perHost := map[string]int{}
	for _, x := range r.liveRunners() {
		perHost[x.HostID]++
	}
	for _, h := range r.hosts {
		if perHost[h.id] != 2 || h.live() != 2 {
			t.Errorf("host %s (2 vCPUs, 1 per job): %d runners in the store, %d VMs; want 2", h.id, perHost[h.id], h.live())
		}
	}
	var v controlplane.JobView
	r.call("GET", fmt.Sprintf("/api/v1/jobs/%d", ids[8]), rigReadToken, &v)
	t.Logf("a job that waits: %q", v.Reason)
}

// Fair share: one org's burst does not starve another's single job.
func TestFairShareAcrossOrgs(t *testing.T) {
	r := newRig(t, rigOptions{vcpus: 2, noReconcile: true})
	r.gh.AddInstallation("big", ghfake.AccountOrganization, "big/x")
	r.gh.AddInstallation("small", ghfake.AccountOrganization, "small/y")
	var bigIDs []int64
	for i := 0; i < 12; i++ {
		bigIDs = append(bigIDs, r.queue("big/x", "tandem", "sleep 0.3"))
	}
	time.Sleep(200 * time.Millisecond)
	small := r.queue("small/y", "tandem", "true")
	r.waitStates([]int64{small}, 20*time.Second, store.JobCompleted)
	done := 0
	for _, id := range bigIDs {
		if j, _ := r.job(id); j.State == store.JobCompleted {
			done++
		}
	}
	if done > 6 {
		t.Errorf("the small org's job waited for %d of the big org's 12 jobs", done)
	}
	r.waitStates(bigIDs, 60*time.Second, store.JobCompleted)
}

// Orphans: a Tandem-named GitHub runner with no VM is deleted; a runner
// that takes no job within the idle timeout is stopped, and its job is
// tried again until its attempts run out.
func TestOrphanReconciler(t *testing.T) {
	r := newRig(t, rigOptions{idle: 500 * time.Millisecond, maxAttempts: 2})
	inst := r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem", "true")
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	// A runner registered under Tandem's naming whose VM never existed.
	scope := github.Scope{Owner: "acme", Repo: "app"}
	if _, err := r.client.GenerateJITConfig(context.Background(), inst, scope, github.JITRequest{
		Name: "tandem-0123456789ab", RunnerGroupID: 1, Labels: []string{"tandem"}}); err != nil {
		t.Fatal(err)
	}
	// And one that is someone else's: left alone.
	if _, err := r.client.GenerateJITConfig(context.Background(), inst, scope, github.JITRequest{
		Name: "build-box-7", RunnerGroupID: 1, Labels: []string{"tandem"}}); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the orphan to be deleted", 10*time.Second, func() bool {
		for _, x := range r.gh.Runners() {
			if x.Name == "tandem-0123456789ab" {
				return false
			}
		}
		return true
	})
	if rs := r.gh.Runners(); len(rs) != 1 || rs[0].Name != "build-box-7" {
		t.Errorf("runners left on GitHub: %+v", rs)
	}
	// Idle runners: the host's runners come up but never take a job.
	r.hosts[0].set(nil, true)
	id2 := r.queue("acme/app", "tandem-arm64", "true")
	r.waitStates([]int64{id2}, 20*time.Second, store.JobFailed)
	j, _ := r.job(id2)
	if !strings.Contains(j.Reason, "took no job") || j.Attempts != 2 {
		t.Errorf("idle job: %+v", j)
	}
	c := r.counters()
	if c["reconciler/orphans/idle-vms-stopped"] < 2 || c["reconciler/orphans/github-runners-deleted"] < 1 {
		t.Errorf("counters %v", c)
	}
}

func (r *rig) counters() map[string]int64 {
	var c map[string]int64
	r.st.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		c, err = tx.Counters()
		return err
	})
	return c
}
