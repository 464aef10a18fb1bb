package controlplane_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// fleet is a rig whose hosts are remote agents: real TLS with a pinned
// certificate, the agentapi protocol, and daemons driving in-process hosts
// that run the real fake runner.
type fleet struct {
	*rig
	tlsSrv *httptest.Server
	pin    string
}

const fleetHeartbeat = 200 * time.Millisecond

func newFleet(t *testing.T) *fleet {
	t.Helper()
	return newFleetWith(t, nil)
}

// newFleetWith is newFleet with configure (if set) applied to the control
// plane's config.
func newFleetWith(t *testing.T, configure func(*controlplane.Config)) *fleet {
	t.Helper()
	dir := t.TempDir()
	cert, err := agentapi.LoadOrCreateCert(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pin := agentapi.Fingerprint(cert.Certificate[0])
	r := newRig(t, rigOptions{noHosts: true, heartbeat: 5 * fleetHeartbeat, agentPin: pin, noReconcile: true, configure: configure})
	mux := http.NewServeMux()
	mux.Handle("/agent/", r.cp.AgentHandler())
	mux.Handle("/", r.cp.Handler())
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &fleet{rig: r, tlsSrv: srv, pin: pin}
}

// enrollToken asks the API for a one-time token, as `tandem enroll` does.
func (f *fleet) enrollToken() string {
	f.t.Helper()
	var out struct{ Token string }
	if code := f.call("POST", "/api/v1/enroll-tokens", rigAdminToken, &out); code != 201 {
		f.t.Fatalf("enroll-tokens: %d", code)
	}
	return out.Token
}

// remoteAgent is one enrolled host: its daemon and the host it drives.
type remoteAgent struct {
	id     string
	host   *goHost
	daemon *agentapi.Daemon
	cancel context.CancelFunc
	done   chan error
	creds  agentapi.Credentials
}

func (f *fleet) join(id string) *remoteAgent {
	f.t.Helper()
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, f.enrollToken(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.start(creds)
}

func (f *fleet) start(creds agentapi.Credentials) *remoteAgent {
	a := runAgent(creds, newGoHost(creds.HostID), agentapi.Capacity{VCPUs: 4, MemoryMiB: 8192, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}})
	h := a.host
	f.t.Cleanup(func() { a.stop(); h.stopAll() })
	f.hosts = append(f.hosts, h)
	f.waitHost(creds.HostID, "online", true)
	return a
}

// runAgent runs an agent's daemon with credentials creds, offering c,
// driving host h.
func runAgent(creds agentapi.Credentials, h *goHost, c agentapi.Capacity) *remoteAgent {
	d := &agentapi.Daemon{Client: agentapi.NewClient(creds), AgentVersion: "test", HeartbeatInterval: fleetHeartbeat,
		Capacity: func() agentapi.Capacity { return c }}
	h.mu.Lock()
	h.sink = d.Event // a restarted agent's: the "VMs" report to it from now on
	h.mu.Unlock()
	d.Bind(h)
	ctx, cancel := context.WithCancel(context.Background())
	a := &remoteAgent{id: creds.HostID, host: h, daemon: d, cancel: cancel, done: make(chan error, 1), creds: creds}
	go func() { a.done <- d.Run(ctx) }()
	return a
}

func (a *remoteAgent) stop() {
	a.cancel()
	<-a.done
	a.done <- errors.New("stopped") // for a second stop
}

func (f *fleet) hostView(id string) (controlplane.HostView, bool) {
	var out struct{ Hosts []controlplane.HostView }
	f.call("GET", "/api/v1/hosts", rigReadToken, &out)
	for _, h := range out.Hosts {
		if h.ID == id {
			return h, true
		}
	}
	return controlplane.HostView{}, false
}

func (f *fleet) waitHost(id, state string, connected bool) {
	f.t.Helper()
	f.waitFor("host "+id+" "+state, 10*time.Second, func() bool {
		h, ok := f.hostView(id)
		return ok && h.State == state && h.Connected == connected
	})
}

func TestRemoteAgentsRunJobs(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.join("a1")
	f.join("a2")
	var ids []int64
	for i := 0; i < 6; i++ {
		ids = append(ids, f.queue("acme/app", "tandem-2cpu-1gb", "echo remote"))
	}
	f.waitStates(ids, 20*time.Second, store.JobCompleted)
	used := map[string]int{}
	for _, id := range ids {
		j, _ := f.job(id)
		used[j.HostID]++
		if gj, _ := f.gh.Job(id); gj.Claims != 1 {
			t.Errorf("job %d claimed %d times", id, gj.Claims)
		}
	}
	if len(used) != 2 {
		t.Errorf("jobs per host %v: want both hosts used", used)
	}
}

func TestEnrolmentRules(t *testing.T) {
	f := newFleet(t)
	tok := f.enrollToken()
	if _, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, tok, "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, tok, "b2"); err == nil {
		t.Error("a token was used twice")
	}
	// A token carrying another certificate's fingerprint: the agent
	// refuses the control plane (a man in the middle would look the same).
	secret, _, _ := agentapi.ParseEnrollToken(f.enrollToken())
	other := "tdm1." + secret + "." + strings.Repeat("ab", 32)
	if _, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, other, "b3"); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Errorf("enrol with a wrong pin: %v", err)
	}
	if _, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, "not-a-token", "b4"); !errors.Is(err, agentapi.ErrBadToken) {
		t.Errorf("malformed token: %v", err)
	}
	// A token asked for without the admin token.
	if code := f.call("POST", "/api/v1/enroll-tokens", rigReadToken, nil); code != 403 {
		t.Errorf("enroll-tokens with a read token: %d, want 403", code)
	}
	if code := f.call("POST", "/api/v1/enroll-tokens", "", nil); code != 401 {
		t.Errorf("enroll-tokens without a token: %d, want 401", code)
	}
	// An agent of another protocol version is told why.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: agentapi.PinnedTLS(f.pin)}}
	req, _ := http.NewRequest("POST", f.tlsSrv.URL+agentapi.PathStream, bytes.NewReader([]byte("{}")))
	req.Header.Set(agentapi.HeaderVersion, "99")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("protocol 99: %s, want 426", resp.Status)
	}
}

// Drain keeps new VMs off a host; cordon and uncordon; a revoked host's
// agent is refused at once and its waiting job goes elsewhere.
func TestHostLifecycle(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a1 := f.join("a1")
	f.join("a2")
	if code := f.call("POST", "/api/v1/hosts/a1/drain", rigReadToken, nil); code != 403 {
		t.Errorf("drain with a read token: %d, want 403", code)
	}
	if code := f.call("POST", "/api/v1/hosts/a1/drain", rigAdminToken, nil); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	var ids []int64
	for i := 0; i < 4; i++ {
		ids = append(ids, f.queue("acme/app", "tandem", "true"))
	}
	f.waitStates(ids, 20*time.Second, store.JobCompleted)
	for _, id := range ids {
		if j, _ := f.job(id); j.HostID != "a2" {
			t.Errorf("job %d ran on %s while a1 drained", id, j.HostID)
		}
	}
	if code := f.call("POST", "/api/v1/hosts/a1/uncordon", rigAdminToken, nil); code != 200 {
		t.Fatal(code)
	}
	f.waitHost("a1", "online", true)
	if code := f.call("POST", "/api/v1/hosts/a2/revoke", rigAdminToken, nil); code != 200 {
		t.Fatal(code)
	}
	f.waitHost("a2", "offline", false)
	id := f.queue("acme/app", "tandem", "true")
	f.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	if j, _ := f.job(id); j.HostID != "a1" {
		t.Errorf("job after revoking a2 ran on %s", j.HostID)
	}
	_ = a1
	if code := f.call("POST", "/api/v1/hosts/nope/drain", rigAdminToken, nil); code != 404 {
		t.Errorf("drain of an unknown host: %d", code)
	}
}

// A revoked host is not a dead one: its idle runners may still be up, and
// GitHub would give them the next job. Revoking deletes their
// registrations at once, without waiting for the orphan reconciler (off
// here).
func TestRevokedHostsRunnersAreDeregistered(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a := f.join("a1")
	a.host.set(nil, true) // its runners register and wait, taking no job
	f.queue("acme/app", "tandem", "true")
	f.waitFor("a runner registered with GitHub", 20*time.Second, func() bool { return len(f.gh.Runners()) == 1 })
	if code := f.call("POST", "/api/v1/hosts/a1/revoke", rigAdminToken, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if rs := f.gh.Runners(); len(rs) != 0 {
		t.Errorf("after revoking its host, GitHub still lists %+v", rs)
	}
}

// A revoked agent's daemon stops with ErrRevoked.
func TestRevokedAgentStops(t *testing.T) {
	f := newFleet(t)
	a := f.join("r1")
	f.call("POST", "/api/v1/hosts/r1/revoke", rigAdminToken, nil)
	select {
	case err := <-a.done:
		if !errors.Is(err, agentapi.ErrRevoked) {
			t.Errorf("daemon ended with %v, want ErrRevoked", err)
		}
		a.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked agent's daemon kept running")
	}
}

// An agent that restarts while its VMs run on (an upgrade, or a crash with
// VMs that outlive it) and is back within the heartbeat timeout is the
// same host with the same runners: its running job completes on the
// runner it had, nothing is lost or launched again, and a job queued
// while it was away runs once it is back.
func TestAgentRestartKeepsItsRunningJobs(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a := f.join("u1")
	long := f.queue("acme/app", "tandem", "sleep 2; echo done")
	f.waitStates([]int64{long}, 20*time.Second, store.JobRunning)
	before, _ := f.job(long)

	a.stop() // the old binary exits; its "VMs" (goroutines here) go on
	queued := f.queue("acme/app", "tandem", "echo while away")
	b := runAgent(a.creds, a.host, agentapi.Capacity{VCPUs: 4, MemoryMiB: 8192, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}})
	f.t.Cleanup(b.stop)
	f.waitStates([]int64{long, queued}, 30*time.Second, store.JobCompleted)

	after, _ := f.job(long)
	gj, _ := f.gh.Job(long)
	if after.RunnerName != before.RunnerName || gj.Claims != 1 || gj.Conclusion != "success" || after.Attempts != 1 {
		t.Errorf("the running job after the restart: %+v; GitHub %+v; want it completed by runner %s, once", after, gj, before.RunnerName)
	}
	for _, e := range f.jobEvents(long) {
		if e.To == store.JobLost || e.To == store.JobQueued && e.From != "" {
			t.Errorf("the running job: %s→%s: %s; want no loss and no second placement", e.From, e.To, e.Reason)
		}
	}
	if gj, _ := f.gh.Job(queued); gj.Claims != 1 || gj.Conclusion != "success" {
		t.Errorf("the job queued while the agent was away: GitHub %+v", gj)
	}
}

// A report is answered once its events are applied, not only received:
// the agent forgets a runner's end when the answer comes, so a control
// plane that restarts after it must have the end in its store.
func TestReportAnsweredOnceApplied(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a := f.join("u1")
	id := f.queue("acme/app", "tandem", "sleep 60")
	f.waitStates([]int64{id}, 20*time.Second, store.JobRunning)
	j, _ := f.job(id)
	c := agentapi.NewClient(a.creds)
	err := c.Report(context.Background(), agentapi.Report{Events: []agentapi.Event{
		{Runner: j.RunnerName, Kind: agentapi.EventEnded, ExitCode: 7, At: time.Now()}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.runner(j.RunnerName); r.State != store.RunnerEnded || r.ExitCode != 7 {
		t.Errorf("the runner once the report was answered: %s, exit %v; want ended with exit 7", r.State, r.ExitCode)
	}
}

// A host whose agent falls silent goes offline: its running job is lost,
// with the reason, and new jobs go to the other host.
func TestSilentHostGoesOffline(t *testing.T) {
	f := newFleet(t)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a1 := f.join("s1")
	long := f.queue("acme/app", "tandem", "sleep 60")
	f.waitStates([]int64{long}, 20*time.Second, store.JobRunning)
	f.join("s2")
	a1.stop() // the agent dies; its "VM" (a goroutine here) goes on
	f.waitHost("s1", "offline", false)
	f.waitStates([]int64{long}, 10*time.Second, store.JobLost)
	if j, _ := f.job(long); !strings.Contains(j.Reason, "s1") {
		t.Errorf("lost job's reason %q does not name the host", j.Reason)
	}
	id := f.queue("acme/app", "tandem", "true")
	f.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	if j, _ := f.job(id); j.HostID != "s2" {
		t.Errorf("new job ran on %s", j.HostID)
	}
	a1.host.stopAll()
}

// Chaos, as a property. Webhooks are lost, failed, duplicated, reordered and
// late; one host's agent dies with its VMs and comes back empty; another
// host is revoked while it runs jobs; runners take whichever job GitHub
// offers. Every job GitHub queued runs at most once, and each either ran
// and completed or ends in Tandem with a stated reason; no runner is left.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("long chaos test: not in -short runs")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	f := newFleetWith(t, func(c *controlplane.Config) {
		c.Reconcile = controlplane.Intervals{MissedWebhooks: 300 * time.Millisecond, FailedDeliveries: 300 * time.Millisecond,
			Orphans: 500 * time.Millisecond, LostAfter: time.Second}
	})
	f.gh.SetFaults(ghfake.Faults{Lose: 0.05, Fail: 0.05, Duplicate: 0.05, Reorder: 0.05, MaxDelay: 50 * time.Millisecond})
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/x", "acme/y")
	var agentsMu sync.Mutex
	agents := map[string]*remoteAgent{}
	for _, id := range []string{"a1", "a2", "a3"} {
		agents[id] = f.join(id)
	}
	agentsNow := func() map[string]*remoteAgent {
		agentsMu.Lock()
		defer agentsMu.Unlock()
		return maps.Clone(agents)
	}
	// busiest waits for a job to run and names the host running the most.
	var ids []int64
	busiest := func() string {
		var host string
		f.waitFor("a job to run", 20*time.Second, func() bool {
			n := map[string]int{}
			for _, id := range ids {
				if j, ok := f.job(id); ok && j.State == store.JobRunning {
					n[j.HostID]++
					if n[j.HostID] > n[host] {
						host = j.HostID
					}
				}
			}
			return host != ""
		})
		return host
	}
	// No host ever runs more than its capacity (4 vCPUs, 1 each), as the
	// store counts it and as the host does.
	var peakMu sync.Mutex
	peak := map[string]int{}
	sampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
			n := map[string]int{}
			for _, x := range f.liveRunners() {
				n["store "+x.HostID]++
			}
			for id, a := range agentsNow() {
				n["host "+id] = a.host.live()
			}
			peakMu.Lock()
			for k, v := range n {
				peak[k] = max(peak[k], v)
			}
			peakMu.Unlock()
		}
	}()
	defer func() {
		close(sampling)
		<-sampled
		t.Logf("peak runners: %v", peak)
		for k, v := range peak {
			if v > 4 {
				t.Errorf("%s: %d runners at once; the host has room for 4", k, v)
			}
		}
	}()
	var crashed, revoked string
	for i := 0; i < 36; i++ {
		repo := []string{"acme/x", "acme/y"}[rng.IntN(2)]
		ids = append(ids, f.queue(repo, "tandem", fmt.Sprintf("sleep %d.%d", 1+rng.IntN(3), rng.IntN(10))))
		time.Sleep(time.Duration(rng.IntN(80)) * time.Millisecond)
		switch i {
		case 12: // an agent dies with its VMs, and comes back without them
			crashed = busiest()
			a := agentsNow()[crashed]
			a.stop()
			a.host.crash()
			f.waitHost(crashed, "offline", false)
			back := f.start(a.creds)
			agentsMu.Lock()
			agents[crashed] = back
			agentsMu.Unlock()
		case 24: // a host is revoked while it runs jobs
			revoked = busiest()
			if code := f.call("POST", "/api/v1/hosts/"+revoked+"/revoke", rigAdminToken, nil); code != 200 {
				t.Fatalf("revoke: %d", code)
			}
		}
	}
	t.Logf("crashed %s at job 13, revoked %s at job 25", crashed, revoked)
	ended := func(id int64) bool {
		gj, _ := f.gh.Job(id)
		j, ok := f.job(id)
		return gj.Status == "completed" || (ok && j.State.Terminal())
	}
	f.waitFor("every job to end on GitHub or in Tandem", 120*time.Second, func() bool {
		f.gh.Flush() // a held-back webhook is sent late rather than never
		for _, id := range ids {
			if !ended(id) {
				return false
			}
		}
		return true
	})
	f.waitFor("Tandem to learn every end", 30*time.Second, func() bool {
		for _, id := range ids {
			if j, ok := f.job(id); !ok || !j.State.Terminal() {
				return false
			}
		}
		return true
	})
	states, hosts := map[store.JobState]int{}, map[string]int{}
	for _, id := range ids {
		gj, _ := f.gh.Job(id)
		j, _ := f.job(id)
		states[j.State]++
		hosts[j.HostID]++
		if gj.Claims > 1 {
			t.Errorf("job %d ran %d times", id, gj.Claims)
		}
		if j.Reason == "" {
			t.Errorf("job %d ended %s without a reason", id, j.State)
		}
		switch {
		case j.State == store.JobCompleted && (gj.Status != "completed" || gj.Claims != 1):
			t.Errorf("job %d completed in Tandem; GitHub: %s, %d runs", id, gj.Status, gj.Claims)
		case gj.Status == "completed" && gj.Claims == 1 && j.State != store.JobCompleted && j.State != store.JobLost:
			t.Errorf("job %d ran and completed on GitHub; Tandem says %s (%s)", id, j.State, j.Reason)
		}
	}
	ends := map[string]int{}
	for _, h := range []string{"a1", "a2", "a3"} {
		var rs []store.Runner
		f.st.View(context.Background(), func(tx store.ReadTx) error {
			var err error
			rs, err = tx.Runners(store.RunnerFilter{HostID: h})
			return err
		})
		for _, x := range rs {
			if x.Reason != "" {
				ends[h+": "+firstWords(x.Reason)]++
			}
		}
	}
	t.Logf("jobs by state: %v, by host %v; runners' ends %v; counters %v", states, hosts, ends, f.counters())
	f.waitFor("runners to end", 30*time.Second, func() bool { return len(f.liveRunners()) == 0 })
}

func firstWords(s string) string {
	if i := strings.IndexAny(s, ":("); i > 0 {
		return s[:i]
	}
	return s
}
