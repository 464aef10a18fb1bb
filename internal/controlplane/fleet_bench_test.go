package controlplane_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// benchRunner is this benchmark's stand-in for a host's VMs: it records
// assignments and reports them booting, started and ended, running nothing.
type benchRunner struct {
	d    *agentapi.Daemon
	mu   sync.Mutex
	runs map[string]bool
}

func (r *benchRunner) Launch(a agent.Assignment) error {
	r.mu.Lock()
	r.runs[a.Runner] = true
	r.mu.Unlock()
	r.d.Event(agent.Event{Runner: a.Runner, Kind: agent.EventBooting, At: time.Now()})
	return nil
}

func (r *benchRunner) Configure(name string, _ map[string]string) error {
	r.d.Event(agent.Event{Runner: name, Kind: agent.EventStarted, At: time.Now()})
	return nil
}

func (r *benchRunner) Stop(name, reason string) error {
	r.mu.Lock()
	delete(r.runs, name)
	r.mu.Unlock()
	r.d.Event(agent.Event{Runner: name, Kind: agent.EventEnded, At: time.Now(), Failure: "cancelled", Detail: reason})
	return nil
}

func (r *benchRunner) Runners() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.runs {
		out = append(out, n)
	}
	return out
}

// BenchmarkFleet500 runs 500 agents (each its own TLS connections, the
// real protocol and daemon, a fake VM runner) against one control plane
// with SQLite on disk: heartbeat load while idle, then the latency of
// 2,000 assignments from the control plane queueing the launch command to
// the agent decoding it, with the jobs queued at a steady rate and all at
// once. The agents run in the benchmark's process, so on this 2-core
// machine they compete with the control plane for the CPU: the figures are
// pessimistic. One iteration is the whole scenario:
//
//	go test -run x -bench Fleet500 -benchtime 1x ./internal/controlplane/
func BenchmarkFleet500(b *testing.B) {
	for _, rate := range []int{100, 400, 0} {
		name := fmt.Sprintf("jobs_per_s=%d", rate)
		if rate == 0 {
			name = "burst"
		}
		b.Run(name, func(b *testing.B) { benchFleet(b, rate) })
	}
}

// benchFleet queues the jobs at rate per second (0: all at once).
func benchFleet(b *testing.B, rate int) {
	const agents, jobs = 500, 2000
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = max(lim.Cur, min(lim.Max, 65536))
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)

	dir := b.TempDir()
	cert, err := agentapi.LoadOrCreateCert(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	pin := agentapi.Fingerprint(cert.Certificate[0])
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	secret := []byte("fleet-bench-webhook-secret")
	// ghfake sends webhooks to the control plane's plain listener, made first.
	var handler http.Handler = http.NotFoundHandler()
	var hmu sync.RWMutex
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hmu.RLock()
		h := handler
		hmu.RUnlock()
		h.ServeHTTP(w, r)
	}))
	defer web.Close()
	gh := ghfake.New(ghfake.Config{AppID: 5, AppPublicKey: &key.PublicKey, WebhookURL: web.URL + "/webhook", WebhookSecret: secret})
	defer gh.Close()
	ghSrv := httptest.NewServer(gh.Handler())
	defer ghSrv.Close()
	gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "cp.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	client, _ := github.New(github.Config{BaseURL: ghSrv.URL + "/", AppID: 5, PrivateKey: key})
	parser, _ := labels.NewParser("tandem", 1, 1024)
	cp, err := controlplane.New(controlplane.Config{Store: st, GitHub: client, WebhookSecret: secret, Labels: parser,
		Runner:    controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}},
		Reconcile: controlplane.Intervals{MissedWebhooks: -1, FailedDeliveries: -1, Orphans: -1},
		AgentPin:  pin, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	hmu.Lock()
	handler = cp.Handler()
	hmu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cpDone := make(chan struct{})
	go func() { cp.Run(ctx); close(cpDone) }()
	mux := http.NewServeMux()
	mux.Handle("/agent/", cp.AgentHandler())
	tlsSrv := httptest.NewUnstartedServer(mux)
	tlsSrv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	tlsSrv.StartTLS()

	// Credentials go straight into the store (enrolment is not measured).
	now := time.Now().UTC()
	creds := make([]agentapi.Credentials, agents)
	err = st.Update(ctx, func(tx store.Tx) error {
		for i := range creds {
			sec, hash, err := agentapi.NewCredential()
			if err != nil {
				return err
			}
			id := fmt.Sprintf("host-%03d", i)
			creds[i] = agentapi.Credentials{Server: tlsSrv.URL, Pin: pin, HostID: id, Credential: sec}
			if err := tx.PutAgentCredential(store.AgentCredential{HostID: id, Hash: hash, CreatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	var lmu sync.Mutex
	var launchLat []time.Duration
	agentCtx, agentCancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range creds {
		r := &benchRunner{runs: map[string]bool{}}
		d := &agentapi.Daemon{Client: agentapi.NewClient(c), AgentVersion: "bench",
			Capacity: func() agentapi.Capacity {
				return agentapi.Capacity{VCPUs: 16, MemoryMiB: 32768, Arches: []store.ArchSupport{{Arch: labels.AMD64}}}
			},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnCommand: func(cmd agentapi.Command) {
				if cmd.Type == agentapi.CmdLaunch {
					l := time.Since(cmd.SentAt)
					lmu.Lock()
					launchLat = append(launchLat, l)
					lmu.Unlock()
				}
			}}
		r.d = d
		d.Bind(r)
		wg.Add(1)
		go func() { defer wg.Done(); d.Run(agentCtx) }()
	}
	connected := func() int {
		var hosts []store.Host
		st.View(ctx, func(tx store.ReadTx) error { var err error; hosts, err = tx.Hosts(); return err })
		n := 0
		for _, h := range hosts {
			if h.State == store.HostOnline {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(2 * time.Minute); connected() < agents; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d agents attached", connected(), agents)
		}
	}
	b.ResetTimer()

	// Heartbeat load: every agent reports every 5 s; meanwhile one extra
	// heartbeat per agent is timed, spread over the interval.
	var hbLat []time.Duration
	var hmu2 sync.Mutex
	var hwg sync.WaitGroup
	for i, c := range creds {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			time.Sleep(time.Duration(i) * agentapi.HeartbeatInterval / agents)
			cl := agentapi.NewClient(c)
			t0 := time.Now()
			err := cl.Report(ctx, agentapi.Report{Heartbeat: &agentapi.Heartbeat{Capacity: agentapi.Capacity{VCPUs: 16}}})
			if err != nil {
				b.Error(err)
			}
			hmu2.Lock()
			hbLat = append(hbLat, time.Since(t0))
			hmu2.Unlock()
		}()
	}
	hwg.Wait()

	// Assignment latency.
	start := time.Now()
	for i := 0; i < jobs; i++ {
		gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-1gb"}, Script: "true"})
		if rate > 0 {
			time.Sleep(time.Second / time.Duration(rate))
		}
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		lmu.Lock()
		n := len(launchLat)
		lmu.Unlock()
		if n >= jobs {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d assignments arrived", n, jobs)
		}
	}
	placed := time.Since(start)
	b.StopTimer()

	pct := func(ds []time.Duration, p float64) float64 {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[int(p*float64(len(s)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(launchLat, 0.5), "assign_p50_ms")
	b.ReportMetric(pct(launchLat, 0.99), "assign_p99_ms")
	b.ReportMetric(pct(hbLat, 0.5), "heartbeat_p50_ms")
	b.ReportMetric(pct(hbLat, 0.99), "heartbeat_p99_ms")
	b.ReportMetric(float64(jobs)/placed.Seconds(), "jobs_assigned/s")
	b.ReportMetric(0, "ns/op")

	agentCancel()
	wg.Wait()
	tlsSrv.Close()
	cancel()
	<-cpDone
}
