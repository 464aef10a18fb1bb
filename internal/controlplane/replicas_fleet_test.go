package controlplane_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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

// haReplica is one `tandem server` of an HA control plane: its own store,
// loops and agent listener (at an address that stays the same across its
// restarts, as a replica's does).
type haReplica struct {
	name string
	addr string // the agent listener's host:port
	cp   *controlplane.Server
	st   *postgres.Store
	srv  *http.Server
	stop context.CancelFunc
	done chan struct{}
	up   atomic.Bool
}

// haFleet is the whole system: ghfake, a PostgreSQL server, replicas
// behind a round-robin balancer, and remote agents (daemons over pinned
// TLS) that know every replica's address.
type haFleet struct {
	t        *testing.T
	gh       *ghfake.Server
	ghURL    string
	key      *rsa.PrivateKey
	secret   []byte
	pg       *pgtest.Instance
	dbURL    string
	cert     tls.Certificate
	pin      string
	lb       *httptest.Server
	next     atomic.Int64
	mu       sync.Mutex // guards replicas' fields set by start
	replicas []*haReplica
	agents   []*remoteAgent
	launches sync.Map // runner name → host: a second launch of a name is a defect
}

func newHAFleet(t *testing.T, n int) *haFleet {
	t.Helper()
	skipUnlessRoot(t)
	f := &haFleet{t: t, secret: []byte("ha-webhook-secret")}
	var err error
	if f.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if f.cert, err = agentapi.LoadOrCreateCert(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	f.pin = agentapi.Fingerprint(f.cert.Certificate[0])
	f.lb = httptest.NewServer(http.HandlerFunc(f.balance))
	t.Cleanup(f.lb.Close)
	f.gh = ghfake.New(ghfake.Config{AppID: cptest.AppID, AppPublicKey: &f.key.PublicKey, WebhookURL: f.lb.URL + "/webhook",
		WebhookSecret: f.secret, Seed: time.Now().UnixNano()})
	ghSrv := httptest.NewServer(f.gh.Handler())
	f.ghURL = ghSrv.URL
	t.Cleanup(func() { f.gh.Close(); ghSrv.Close() })
	f.pg = pgtest.StartServer(t)
	f.dbURL = f.pg.NewDatabase(t)
	for i := range n {
		r := &haReplica{name: fmt.Sprintf("cp-%d", i+1), addr: "127.0.0.1:0"}
		f.replicas = append(f.replicas, r)
		f.start(r)
	}
	t.Cleanup(func() {
		for _, a := range f.agents {
			a.host.set(errors.New("test over"), false)
		}
		for _, a := range f.agents {
			a.stop()
			a.host.stopAll()
		}
		for _, r := range f.replicas {
			f.kill(r)
		}
	})
	return f
}

// start starts replica r (again): a new store, control plane and agent
// listener on r's address.
func (f *haFleet) start(r *haReplica) {
	t := f.t
	st, err := postgres.Open(context.Background(), postgres.Options{URL: f.dbURL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	client, err := github.New(github.Config{BaseURL: f.ghURL + "/", AppID: cptest.AppID, PrivateKey: f.key})
	if err != nil {
		t.Fatal(err)
	}
	parser, _ := labels.NewParser("tandem", 1, 256)
	cp, err := controlplane.New(controlplane.Config{Store: st, GitHub: client, WebhookSecret: f.secret, Labels: parser,
		AppID: cptest.AppID, Replica: r.name, AgentPin: f.pin,
		Runner: controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}, IdleTimeout: time.Minute},
		Reconcile: controlplane.Intervals{MissedWebhooks: time.Second, FailedDeliveries: time.Second, Orphans: 2 * time.Second,
			LostAfter: 5 * time.Second},
		HeartbeatTimeout: 5 * fleetHeartbeat, APITokens: controlplane.APITokens{{Secret: rigAdminToken, Admin: true}},
		LogDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	deadline := time.Now().Add(10 * time.Second)
	for ln, err = net.Listen("tcp", r.addr); err != nil; ln, err = net.Listen("tcp", r.addr) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: listening again on %s: %v", r.name, r.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mux := http.NewServeMux()
	mux.Handle("/agent/", cp.AgentHandler())
	mux.Handle("/", cp.Handler())
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{f.cert}}}
	go srv.ServeTLS(ln, "", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		cp.Run(ctx)
		close(done)
	}()
	f.mu.Lock()
	r.addr, r.cp, r.st, r.srv, r.stop, r.done = ln.Addr().String(), cp, st, srv, cancel, done
	f.mu.Unlock()
	r.up.Store(true)
}

// kill stops replica r as a crash does for everyone else: its agents'
// connections drop, its loops end, its database sessions close.
func (f *haFleet) kill(r *haReplica) {
	if !r.up.Swap(false) {
		return
	}
	r.srv.Close()
	r.stop()
	<-r.done
	r.st.Close()
}

func (f *haFleet) url(r *haReplica) string { return "https://" + r.addr }

// balance sends each request to the next replica that is up.
func (f *haFleet) balance(w http.ResponseWriter, req *http.Request) {
	for range len(f.replicas) {
		r := f.replicas[int(f.next.Add(1))%len(f.replicas)]
		f.mu.Lock()
		cp := r.cp
		f.mu.Unlock()
		if r.up.Load() {
			cp.Handler().ServeHTTP(w, req)
			return
		}
	}
	http.Error(w, "no replica", http.StatusBadGateway)
}

// someUp is a replica that is up.
func (f *haFleet) someUp() *haReplica {
	for _, r := range f.replicas {
		if r.up.Load() {
			return r
		}
	}
	f.t.Fatal("no replica is up")
	return nil
}

// leader waits until exactly one replica leads and returns it.
func (f *haFleet) leader() *haReplica {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var lead []*haReplica
		for _, r := range f.replicas {
			f.mu.Lock()
			cp := r.cp
			f.mu.Unlock()
			if r.up.Load() && healthOf(f.t, cp).Leading {
				lead = append(lead, r)
			}
		}
		if len(lead) == 1 {
			return lead[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatal("no one replica leads")
	return nil
}

// join enrols a host through any replica and starts its agent, which
// knows every replica's address.
func (f *haFleet) join(id string) *remoteAgent {
	f.t.Helper()
	var addrs []string
	for _, r := range f.replicas {
		addrs = append(addrs, f.url(r))
	}
	req := httptest.NewRequest("POST", "/api/v1/enroll-tokens", nil)
	req.Header.Set("Authorization", "Bearer "+rigAdminToken)
	w := httptest.NewRecorder()
	f.someUp().cp.Handler().ServeHTTP(w, req)
	var tok struct{ Token string }
	if err := decodeJSON(w.Body, &tok); err != nil || w.Code != 201 {
		f.t.Fatalf("enroll-tokens: %d %v", w.Code, err)
	}
	creds, err := agentapi.EnrollFirst(context.Background(), addrs, tok.Token, id)
	if err != nil {
		f.t.Fatal(err)
	}
	h := newGoHost(id)
	h.onLaunch = func(name string) {
		if _, dup := f.launches.LoadOrStore(name, id); dup {
			f.t.Errorf("runner %s launched twice", name)
		}
	}
	d := &agentapi.Daemon{Client: agentapi.NewClient(creds), AgentVersion: "test", HeartbeatInterval: fleetHeartbeat,
		Capacity: func() agentapi.Capacity {
			return agentapi.Capacity{VCPUs: 8, MemoryMiB: 16384, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}}
		}}
	h.sink = d.Event
	d.Bind(h)
	ctx, cancel := context.WithCancel(context.Background())
	a := &remoteAgent{id: id, host: h, daemon: d, cancel: cancel, done: make(chan error, 1), creds: creds}
	go func() { a.done <- d.Run(ctx) }()
	f.agents = append(f.agents, a)
	return a
}

func (f *haFleet) completed(ids []int64) int {
	n := 0
	st := f.someUp().st
	var jobs []store.Job
	err := st.View(context.Background(), func(tx store.ReadTx) (err error) {
		jobs, err = tx.Jobs(store.JobFilter{IDs: ids, States: []store.JobState{store.JobCompleted}})
		return err
	})
	if err == nil {
		n = len(jobs)
	}
	return n
}

// Three replicas, three remote agents, 500 jobs at once. During the burst
// the leader dies (and comes back, as a service manager restarts it), then
// a replica that does not lead, then PostgreSQL restarts, then the leader
// dies again. Every job ends completed, taken once on GitHub; no runner is
// launched twice; jobs ran on every host whichever replica its agent was
// with.
func TestHAFleetSurvivesKills(t *testing.T) {
	if testing.Short() {
		t.Skip("500 jobs through three replicas: not in -short")
	}
	f := newHAFleet(t, 3)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/lib")
	for i := range 3 {
		f.join(fmt.Sprintf("a%d", i+1))
	}
	var ids []int64
	for i := range 500 {
		repo := []string{"acme/app", "acme/lib"}[i%2]
		id, _ := f.gh.QueueJob(ghfake.JobSpec{Repo: repo, Labels: []string{"tandem-1cpu-1gb"}, Script: "sleep 0.1"})
		ids = append(ids, id)
	}
	wait := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(4 * time.Minute)
		for f.completed(ids) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d jobs completed", what, f.completed(ids), len(ids))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	restart := func(r *haReplica) {
		f.kill(r)
		time.Sleep(500 * time.Millisecond) // the service manager's restart delay
		f.start(r)
	}
	wait("before the first leader dies", 80)
	first := f.leader()
	restart(first)
	if f.leader() == first {
		t.Logf("%s leads again after its restart (it won the next election)", first.name)
	}
	wait("before a follower dies", 160)
	lead := f.leader()
	for _, r := range f.replicas {
		if r != lead {
			restart(r)
			break
		}
	}
	wait("before PostgreSQL restarts", 240)
	f.pg.Stop(t)
	time.Sleep(time.Second)
	f.pg.Start(t)
	wait("before the second leader dies", 320)
	restart(f.leader())
	wait("at the end", len(ids))

	byHost := map[string]int{}
	st := f.someUp().st
	for _, id := range ids {
		gj, _ := f.gh.Job(id)
		j, _ := cptest.Job(st, id)
		if gj.Claims != 1 || gj.Conclusion != "success" || j.Conclusion != "success" {
			t.Errorf("job %d: GitHub %+v; Tandem %+v", id, gj, j)
		}
		byHost[j.HostID]++
	}
	if len(byHost) != 3 {
		t.Errorf("jobs by host %v, want all three hosts used", byHost)
	}
	t.Logf("jobs by host %v; runners launched %d", byHost, countMap(&f.launches))
}
