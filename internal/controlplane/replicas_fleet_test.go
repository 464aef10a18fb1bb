package controlplane_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	"github.com/tandem-ci/tandem/internal/testenv"
)

// haReplica is one `tandem server` of an HA control plane, in a process
// of its own (TestHAReplicaChild) that the test kills with SIGKILL. Its
// listeners keep their addresses across restarts, as a replica's do.
type haReplica struct {
	name  string
	addr  string // the agent listener's host:port ("127.0.0.1:0" until first started)
	web   string // the webhook and API listener's host:port
	cmd   *exec.Cmd
	exit  chan struct{}
	up    atomic.Bool
	mu    sync.Mutex // guards addr, web, cmd, exit
	proxy *httputil.ReverseProxy
}

// haChild is what a replica's process is told (TANDEM_HA_REPLICA, JSON).
type haChild struct {
	Name, DB, GitHub, KeyFile, CertFile, CertKeyFile, Pin, Addr, Web string
	Secret                                                           []byte
}

// haFleet is the whole system: ghfake, a PostgreSQL server, replica
// processes behind a round-robin balancer, and remote agents (daemons over
// pinned TLS, in this process) that know every replica's address.
type haFleet struct {
	t        testing.TB
	gh       *ghfake.Server
	child    haChild // the replicas' common settings
	pg       *pgtest.Instance
	st       *postgres.Store // this test's own view of the database
	lb       *httptest.Server
	next     atomic.Int64
	replicas []*haReplica
	agents   []*remoteAgent
	launches sync.Map // runner name → host: a second launch of a name is a defect
}

func newHAFleet(t testing.TB, n int) *haFleet {
	t.Helper()
	skipUnlessRoot(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &haFleet{t: t, child: haChild{Secret: []byte("ha-webhook-secret"), KeyFile: filepath.Join(dir, "app.pem"),
		CertFile: filepath.Join(dir, "cert.pem"), CertKeyFile: filepath.Join(dir, "key.pem")}}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(f.child.KeyFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := agentapi.LoadOrCreateCert(f.child.CertFile, f.child.CertKeyFile, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	f.child.Pin = agentapi.Fingerprint(cert.Certificate[0])
	f.lb = httptest.NewServer(http.HandlerFunc(f.balance))
	t.Cleanup(f.lb.Close)
	f.gh = ghfake.New(ghfake.Config{AppID: cptest.AppID, AppPublicKey: &key.PublicKey, WebhookURL: f.lb.URL + "/webhook",
		WebhookSecret: f.child.Secret, Seed: time.Now().UnixNano()})
	ghSrv := httptest.NewServer(f.gh.Handler())
	f.child.GitHub = ghSrv.URL
	t.Cleanup(func() { f.gh.Close(); ghSrv.Close() })
	f.pg = pgtest.StartServer(t)
	f.child.DB = f.pg.NewDatabase(t)
	if f.st, err = postgres.Open(context.Background(), postgres.Options{URL: f.child.DB, Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	for i := range n {
		r := &haReplica{name: fmt.Sprintf("cp-%d", i+1), addr: "127.0.0.1:0", web: "127.0.0.1:0"}
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

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start starts replica r's process (again), on r's addresses, and waits
// until it listens.
func (f *haFleet) start(r *haReplica) {
	t := f.t
	t.Helper()
	c := f.child
	r.mu.Lock()
	c.Name, c.Addr, c.Web = r.name, r.addr, r.web
	r.mu.Unlock()
	env, _ := json.Marshal(c)
	cmd, sc := testenv.StartHelper(t, "TestHAReplicaChild", "TANDEM_HA_REPLICA="+string(env))
	exit := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exit)
	}()
	ready := make(chan [2]string, 1)
	go func() {
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "listening" {
				ready <- [2]string{f[1], f[2]}
			}
		}
	}()
	select {
	case addrs := <-ready:
		web, _ := url.Parse("http://" + addrs[1])
		r.mu.Lock()
		r.addr, r.web, r.cmd, r.exit = addrs[0], addrs[1], cmd, exit
		r.proxy = httputil.NewSingleHostReverseProxy(web)
		r.proxy.ErrorLog = log.New(io.Discard, "", 0)
		r.mu.Unlock()
		r.up.Store(true)
	case <-exit:
		t.Fatalf("%s exited before it listened", r.name)
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("%s did not listen", r.name)
	}
}

// kill kills replica r's process with SIGKILL: its agents' connections
// drop, its database sessions end without a word.
func (f *haFleet) kill(r *haReplica) {
	if !r.up.Swap(false) {
		return
	}
	r.mu.Lock()
	cmd, exit := r.cmd, r.exit
	r.mu.Unlock()
	cmd.Process.Kill()
	<-exit
}

func (f *haFleet) url(r *haReplica) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return "https://" + r.addr
}

// balance sends each request to the next replica that is up.
func (f *haFleet) balance(w http.ResponseWriter, req *http.Request) {
	for range len(f.replicas) {
		r := f.replicas[int(f.next.Add(1))%len(f.replicas)]
		r.mu.Lock()
		proxy := r.proxy
		r.mu.Unlock()
		if r.up.Load() {
			proxy.ServeHTTP(w, req)
			return
		}
	}
	http.Error(w, "no replica", http.StatusBadGateway)
}

// health is replica r's /healthz as an operator sees it (ok false: it did
// not answer).
func (f *haFleet) health(r *haReplica) (controlplane.Health, bool) {
	r.mu.Lock()
	web := r.web
	r.mu.Unlock()
	req, _ := http.NewRequest("GET", "http://"+web+"/healthz", nil)
	req.Header.Set("Authorization", "Bearer "+rigAdminToken)
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return controlplane.Health{}, false
	}
	defer resp.Body.Close()
	var h controlplane.Health
	return h, resp.StatusCode == 200 && decodeJSON(resp.Body, &h) == nil
}

// leader waits until exactly one replica that is up says it leads.
func (f *haFleet) leader() *haReplica {
	f.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var lead []*haReplica
		for _, r := range f.replicas {
			if h, ok := f.health(r); ok && r.up.Load() && h.Leading {
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

// TestHAReplicaChild is one replica of TestHAFleetSurvivesKills, in a
// process of its own; it runs until killed.
func TestHAReplicaChild(t *testing.T) {
	env := os.Getenv("TANDEM_HA_REPLICA")
	if env == "" {
		t.Skip("run by TestHAFleetSurvivesKills")
	}
	var c haChild
	if err := json.Unmarshal([]byte(env), &c); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	key, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.CertKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Open(context.Background(), postgres.Options{URL: c.DB, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	client, err := github.New(github.Config{BaseURL: c.GitHub + "/", AppID: cptest.AppID, PrivateKey: key})
	if err != nil {
		t.Fatal(err)
	}
	parser, _ := labels.NewParser("tandem", 1, 256)
	cp, err := controlplane.New(controlplane.Config{Store: st, GitHub: client, WebhookSecret: c.Secret, Labels: parser,
		AppID: cptest.AppID, Replica: c.Name, AgentPin: c.Pin,
		Runner: controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}, IdleTimeout: time.Minute},
		// The missed-webhook pass lists every queued run's jobs: every
		// second over 500 queued jobs, it would spend GitHub's hourly
		// quota (which ghfake counts) in seconds.
		Reconcile: controlplane.Intervals{MissedWebhooks: 20 * time.Second, FailedDeliveries: time.Second, Orphans: 2 * time.Second,
			LostAfter: 5 * time.Second},
		HeartbeatTimeout: 5 * fleetHeartbeat, APITokens: controlplane.APITokens{{Secret: rigAdminToken, Admin: true}},
		LogDir: t.TempDir(), Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	listen := func(addr string) net.Listener {
		deadline := time.Now().Add(30 * time.Second)
		for {
			ln, err := net.Listen("tcp", addr)
			if err == nil {
				return ln
			}
			if time.Now().After(deadline) {
				t.Fatalf("listening on %s: %v", addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	aln, wln := listen(c.Addr), listen(c.Web)
	mux := http.NewServeMux()
	mux.Handle("/agent/", cp.AgentHandler())
	asrv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go asrv.ServeTLS(aln, "", "")
	go (&http.Server{Handler: cp.Handler()}).Serve(wln)
	go cp.Run(context.Background())
	fmt.Printf("listening %s %s\n", aln.Addr(), wln.Addr())
	select {} // until killed
}

// join enrols a host through the balancer and starts its agent, which
// knows every replica's address, replica first first.
func (f *haFleet) join(id string, first int) *remoteAgent {
	f.t.Helper()
	var addrs []string
	for i := range f.replicas {
		addrs = append(addrs, f.url(f.replicas[(first+i)%len(f.replicas)]))
	}
	req, _ := http.NewRequest("POST", f.lb.URL+"/api/v1/enroll-tokens", nil)
	req.Header.Set("Authorization", "Bearer "+rigAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct{ Token string }
	if err := decodeJSON(resp.Body, &tok); err != nil || resp.StatusCode != 201 {
		f.t.Fatalf("enroll-tokens: %s %v", resp.Status, err)
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
	a := runAgent(creds, h, agentapi.Capacity{VCPUs: 8, MemoryMiB: 16384, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}})
	f.agents = append(f.agents, a)
	return a
}

// waitCompleted waits until n of the jobs ids are completed in st, failing
// the test after timeout.
func waitCompleted(t testing.TB, st func() store.Store, ids []int64, what string, n int, timeout time.Duration) {
	t.Helper()
	completed := func() int {
		var jobs []store.Job
		err := st().View(context.Background(), func(tx store.ReadTx) (err error) {
			jobs, err = tx.Jobs(store.JobFilter{IDs: ids, States: []store.JobState{store.JobCompleted}})
			return err
		})
		if err != nil {
			return 0
		}
		return len(jobs)
	}
	deadline := time.Now().Add(timeout)
	for completed() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d jobs completed; %s", what, completed(), len(ids), jobsStory(st(), ids))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jobsStory tells what became of the jobs ids that have not completed,
// for a test that failed waiting for them: their states, and a few of
// them with their transitions and runners.
func jobsStory(st store.Store, ids []int64) string {
	var b strings.Builder
	st.View(context.Background(), func(tx store.ReadTx) error {
		jobs, err := tx.Jobs(store.JobFilter{IDs: ids})
		if err != nil {
			return err
		}
		states := map[store.JobState]int{}
		told := 0
		for _, j := range jobs {
			states[j.State]++
			if j.State == store.JobCompleted || told >= 3 {
				continue
			}
			told++
			fmt.Fprintf(&b, "\njob %d %s (%s) runner %s host %s:", j.ID, j.State, j.Reason, j.RunnerName, j.HostID)
			evs, _ := tx.JobEvents(j.ID)
			for _, e := range evs {
				fmt.Fprintf(&b, "\n  %s %s→%s %s: %s (runner %s)", e.At.Format("15:04:05.000"), e.From, e.To, e.Source, e.Reason, e.Runner)
			}
		}
		live, _ := tx.Runners(store.RunnerFilter{Live: true})
		hosts, _ := tx.Hosts()
		fmt.Fprintf(&b, "\nstates %v; %d live runners", states, len(live))
		for i, r := range live {
			if i == 10 {
				fmt.Fprintf(&b, "\n  …")
				break
			}
			fmt.Fprintf(&b, "\n  runner %s %s on %s, job %d, GitHub id %d, pool %q, created %s, updated %s: %s",
				r.Name, r.State, r.HostID, r.JobID, r.GitHubID, r.Pool, r.CreatedAt.Format("15:04:05.000"),
				r.UpdatedAt.Format("15:04:05.000"), r.Reason)
		}
		fmt.Fprintf(&b, "\nhosts:")
		for _, h := range hosts {
			fmt.Fprintf(&b, " %s %s via %s seen %s;", h.ID, h.State, h.Replica, h.LastSeen.Format("15:04:05.000"))
		}
		return nil
	})
	return b.String()
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
		f.join(fmt.Sprintf("a%d", i+1), i) // each with a replica of its own, to begin with
	}
	var ids []int64
	for i := range 500 {
		repo := []string{"acme/app", "acme/lib"}[i%2]
		id, _ := f.gh.QueueJob(ghfake.JobSpec{Repo: repo, Labels: []string{"tandem-1cpu-1gb"}, Script: "sleep 0.1"})
		ids = append(ids, id)
	}
	wait := func(what string, n int) {
		t.Helper()
		waitCompleted(t, func() store.Store { return f.st }, ids, what, n, 4*time.Minute)
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
	for _, id := range ids {
		gj, _ := f.gh.Job(id)
		j, _ := cptest.Job(f.st, id)
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

// BenchmarkReplicaFailover kills the leading replica (SIGKILL) of two, 20
// times, and measures from the kill to another replica leading, and to a
// job queued at the moment of the kill being placed on a host (the new
// leader's first placement pass, with the webhook's way through the
// surviving replica). The killed replica is restarted between kills, as a
// service manager would.
//
//	go test -run '^$' -bench BenchmarkReplicaFailover -benchtime 1x ./internal/controlplane/
func BenchmarkReplicaFailover(b *testing.B) {
	f := newHAFleet(b, 2)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.join("a1", 0)
	f.join("a2", 1)
	placed := func(id int64) bool {
		j, ok := cptest.Job(f.st, id)
		return ok && j.HostID != ""
	}
	const kills = 20
	var lead, place []time.Duration
	for range b.N {
		for range kills {
			l := f.leader()
			killed := time.Now()
			f.kill(l)
			id, _ := f.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-1gb"}, Script: "true"})
			f.leader() // one of those up: not l
			lead = append(lead, time.Since(killed))
			deadline := time.Now().Add(time.Minute)
			for !placed(id) {
				if time.Now().After(deadline) {
					b.Fatalf("job %d not placed a minute after the leader died", id)
				}
				time.Sleep(5 * time.Millisecond)
			}
			place = append(place, time.Since(killed))
			f.start(l)
		}
	}
	slices.Sort(lead)
	slices.Sort(place)
	q := func(ds []time.Duration, p float64) float64 { return ds[int(p*float64(len(ds)-1))].Seconds() * 1000 }
	b.ReportMetric(q(lead, 0.5), "lead-p50-ms")
	b.ReportMetric(q(lead, 0.95), "lead-p95-ms")
	b.ReportMetric(q(lead, 1), "lead-max-ms")
	b.ReportMetric(q(place, 0.5), "placed-p50-ms")
	b.ReportMetric(q(place, 0.95), "placed-p95-ms")
	b.ReportMetric(q(place, 1), "placed-max-ms")
}
