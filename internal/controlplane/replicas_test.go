package controlplane_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/controlplane/cptest"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
)

// replica is one control-plane process of a fleet on one PostgreSQL
// database: its own store (its own connections) and loops.
type replica struct {
	name string
	cp   *controlplane.Server
	st   *postgres.Store
	stop context.CancelFunc
	done chan struct{}
	dead atomic.Bool
}

// cpFleet is several replicas behind a round-robin balancer that GitHub's
// webhooks and API calls go to, as behind a load balancer.
type cpFleet struct {
	t        *testing.T
	gh       *ghfake.Server
	replicas []*replica
	lb       *httptest.Server
	next     atomic.Int64
	hosts    []*goHost
	launches sync.Map // runner name → the host that launched it
	twice    atomic.Int64
}

func skipUnlessRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("PostgreSQL for the tests runs as the postgres user, which needs root")
	}
}

func newCPFleet(t *testing.T, n int) *cpFleet {
	skipUnlessRoot(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f := &cpFleet{t: t}
	f.lb = httptest.NewServer(http.HandlerFunc(f.balance))
	t.Cleanup(f.lb.Close)
	secret := []byte("fleet-webhook-secret")
	f.gh = ghfake.New(ghfake.Config{AppID: cptest.AppID, AppPublicKey: &key.PublicKey, WebhookURL: f.lb.URL + "/webhook",
		WebhookSecret: secret, Seed: time.Now().UnixNano()})
	ghSrv := httptest.NewServer(f.gh.Handler())
	t.Cleanup(func() { f.gh.Close(); ghSrv.Close() })
	url := pgtest.StartServer(t).NewDatabase(t)
	for i := range n {
		r := &replica{name: fmt.Sprintf("cp-%d", i+1), done: make(chan struct{})}
		if r.st, err = postgres.Open(context.Background(), postgres.Options{URL: url, Logger: quietLog()}); err != nil {
			t.Fatal(err)
		}
		client, err := github.New(github.Config{BaseURL: ghSrv.URL + "/", AppID: cptest.AppID, PrivateKey: key})
		if err != nil {
			t.Fatal(err)
		}
		parser, _ := labels.NewParser("tandem", 1, 256)
		r.cp, err = controlplane.New(controlplane.Config{Store: r.st, GitHub: client, WebhookSecret: secret, Labels: parser,
			AppID: cptest.AppID, Replica: r.name, Runner: controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}, IdleTimeout: time.Minute},
			Reconcile:        controlplane.Intervals{MissedWebhooks: 500 * time.Millisecond, FailedDeliveries: 500 * time.Millisecond, Orphans: time.Second, LostAfter: 2 * time.Second},
			HeartbeatTimeout: 3 * time.Second, APITokens: controlplane.APITokens{{Secret: rigAdminToken, Admin: true}},
			LogDir: t.TempDir(), Logger: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.stop = cancel
		go func() {
			r.cp.Run(ctx)
			close(r.done)
		}()
		f.replicas = append(f.replicas, r)
	}
	t.Cleanup(func() {
		for _, h := range f.hosts {
			h.set(fmt.Errorf("test over"), false)
		}
		for _, h := range f.hosts {
			h.stopAll()
		}
		for _, r := range f.replicas {
			f.kill(r)
		}
	})
	return f
}

// balance sends each request to the next live replica.
func (f *cpFleet) balance(w http.ResponseWriter, req *http.Request) {
	for range len(f.replicas) {
		r := f.replicas[int(f.next.Add(1))%len(f.replicas)]
		if !r.dead.Load() {
			r.cp.Handler().ServeHTTP(w, req)
			return
		}
	}
	http.Error(w, "no replica", http.StatusBadGateway)
}

// kill stops replica r as a crash would, for the rest of the fleet: its
// loops end and its database sessions go (the lead with them).
func (f *cpFleet) kill(r *replica) {
	if r.dead.Swap(true) {
		return
	}
	r.stop()
	<-r.done
	r.st.Close()
}

// attach connects a new host's agent to replica r.
func (f *cpFleet) attach(id string, r *replica) *goHost {
	h := newGoHost(id)
	h.cp = r.cp
	h.onLaunch = func(name string) {
		if _, dup := f.launches.LoadOrStore(name, id); dup {
			f.twice.Add(1)
			f.t.Errorf("runner %s launched twice", name)
		}
	}
	f.hosts = append(f.hosts, h)
	f.reattach(h, r)
	return h
}

// reattach connects host h's agent to replica r, with the runs it has, as
// an agent does when its replica went away.
func (f *cpFleet) reattach(h *goHost, r *replica) {
	h.reportTo(r.cp)
	err := r.cp.AttachHost(context.Background(), store.Host{ID: h.id, VCPUs: 8, MemoryMiB: 64 << 10,
		Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: true}}}, h, agentapi.InventoryOf(h))
	if err != nil {
		f.t.Fatal(err)
	}
}

// health is replica r's /healthz, as an operator (with a token) sees it.
func (f *cpFleet) health(r *replica) controlplane.Health { return healthOf(f.t, r.cp) }

func healthOf(t *testing.T, cp *controlplane.Server) controlplane.Health {
	t.Helper()
	req := httptest.NewRequest("GET", "/healthz", nil)
	req.Header.Set("Authorization", "Bearer "+rigAdminToken)
	w := httptest.NewRecorder()
	cp.Handler().ServeHTTP(w, req)
	var h controlplane.Health
	if err := decodeJSON(w.Body, &h); err != nil || w.Code != 200 {
		t.Fatalf("/healthz: %d %v", w.Code, err)
	}
	return h
}

func decodeJSON(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

// leader waits for one live replica to lead, as every live one says.
func (f *cpFleet) leader() *replica {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var lead *replica
		agree := true
		for _, r := range f.replicas {
			if r.dead.Load() {
				continue
			}
			h := f.health(r)
			if h.Leading {
				lead = r
			}
			agree = agree && h.Leader != "" && (lead == nil || h.Leader == lead.name)
		}
		if lead != nil && agree {
			return lead
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatal("no replica leads")
	return nil
}

// live is a replica that runs.
func (f *cpFleet) live() *replica {
	for _, r := range f.replicas {
		if !r.dead.Load() {
			return r
		}
	}
	f.t.Fatal("no replica runs")
	return nil
}

// Three replicas share one database; each holds one host's agent. Every
// replica takes webhooks, one leads; jobs are placed on every host, the
// two that the leader does not hold included. The leader dies twice
// during the burst (its host's agent goes to another replica): every job
// still ends completed, run once, and no runner is launched twice.
func TestReplicasShareTheWork(t *testing.T) {
	if testing.Short() {
		t.Skip("60 jobs through three replicas: not in -short")
	}
	f := newCPFleet(t, 3)
	for i, r := range f.replicas {
		f.attach(fmt.Sprintf("h%d", i+1), r)
	}
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	first := f.leader()
	var ids []int64
	for i := range 60 {
		id, _ := f.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-2cpu-1gb"}, Script: fmt.Sprintf("sleep 1; echo %d", i)})
		ids = append(ids, id)
	}
	wait := func(what string, n int) {
		t.Helper()
		waitCompleted(t, func() store.Store { return f.live().st }, ids, what, n, 2*time.Minute)
	}
	for _, done := range []int{10, 30} {
		wait("before the leader dies", done)
		lead := f.leader()
		f.kill(lead)
		// Its hosts' agents reconnect to a live replica.
		to := f.live()
		for _, h := range f.hosts {
			if h.server() == lead.cp {
				f.reattach(h, to)
			}
		}
		if next := f.leader(); next == lead {
			t.Fatalf("%s still leads after it died", lead.name)
		}
	}
	wait("after two leaders died", len(ids))
	if first.dead.Load() != true {
		t.Errorf("the first leader %s did not die", first.name)
	}
	byHost := map[string]int{}
	for _, id := range ids {
		gj, _ := f.gh.Job(id)
		j, _ := cptest.Job(f.live().st, id)
		if gj.Claims != 1 || gj.Conclusion != "success" || j.Conclusion != "success" {
			t.Errorf("job %d: GitHub %+v; Tandem %+v", id, gj, j)
		}
		byHost[j.HostID]++
	}
	if len(byHost) != 3 {
		t.Errorf("jobs by host: %v, want jobs on all three hosts", byHost)
	}
	t.Logf("jobs by host %v; runners launched %d", byHost, countMap(&f.launches))
}

func countMap(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// /healthz says which replica leads to an operator, and only whether this
// one leads to anyone else.
func TestHealthSaysWhoLeads(t *testing.T) {
	f := newCPFleet(t, 2)
	lead := f.leader()
	for _, r := range f.replicas {
		h := f.health(r)
		if h.Replica != r.name || h.Leader != lead.name || h.Leading != (r == lead) || h.Epoch == 0 {
			t.Errorf("%s: %+v", r.name, h)
		}
		w := httptest.NewRecorder()
		r.cp.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
		var anon map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &anon); err != nil || w.Code != 200 || len(anon) != 2 ||
			anon["status"] != "ok" || anon["leading"] != (r == lead) {
			t.Errorf("%s /healthz without a token: %d %s", r.name, w.Code, w.Body)
		}
	}
	for _, r := range f.replicas {
		w := httptest.NewRecorder()
		r.cp.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		want := "tandem_leader 0"
		if r == lead {
			want = "tandem_leader 1"
		}
		if !strings.Contains(w.Body.String(), want+"\n") || !strings.Contains(w.Body.String(), `tandem_leadership_changes_total{change="gained"}`) {
			t.Errorf("%s /metrics: no %q", r.name, want)
		}
	}
}
