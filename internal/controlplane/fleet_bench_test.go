package controlplane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/stats"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

const (
	fleetAgents     = 500
	fleetJobs       = 2000
	fleetAdminToken = "bench-admin-token-xx"
	fleetLabel      = "tandem-1cpu-1gb"
	fleetIdle       = 20 * time.Second
)

// BenchmarkFleet500 runs 500 agents against one control plane, in-process
// over real TLS on loopback: the control plane with SQLite on disk (the
// production default, synchronous=FULL) and ghfake as GitHub; each agent
// enrolled with its own one-time token and running the real agentapi
// Daemon over its own pinned-TLS connections, with a fake VM runner that
// only reports booting, started and ended. Each sub-benchmark builds and
// tears down its own fleet and fails if goroutines outlive it:
//
//   - heartbeats: all 500 idle for 20 s. Agent requests handled per
//     second, the latency of a heartbeat Report as the agent sees it, and
//     the CPU the whole process used (an upper bound for the control
//     plane's: the agents run in the same process).
//   - assign/*: 2,000 jobs labelled tandem-1cpu-1gb queued on ghfake, all
//     at once or at 400/s. Assignment latency from Command.SentAt (the
//     control plane queueing the launch on the host's stream) to the
//     agent's OnCommand; the webhook's arrival to the same; and the
//     placement rate from the first job queued to the last launch received.
//     ghfake delivers every webhook at once on a connection of its own;
//     the _webhook_conns=32 variant accepts at most 32 webhook connections
//     at a time (see docs/benchmarks.md for why that matters here).
//
// The agents' heartbeats are sent by a timed client per agent instead of
// the Daemon's own loop (which has no timing hook), at the same interval
// and with the same content. The agents and ghfake share the process, its
// two cores and its network poller with the control plane, so the figures
// are pessimistic. One iteration is the whole scenario:
//
//	go test -run x -bench Fleet -benchtime 1x ./internal/controlplane/
func BenchmarkFleet500(b *testing.B) {
	raiseFileLimit(b, 16384)
	b.Run("heartbeats", func(b *testing.B) { benchFleet(b, 0, benchIdle) })
	for _, sc := range []struct {
		name            string
		rate, hookConns int
	}{
		{"assign/burst", 0, 0},
		{"assign/burst_webhook_conns=32", 0, 32},
		{"assign/rate=400", 400, 0},
	} {
		b.Run(sc.name, func(b *testing.B) {
			benchFleet(b, sc.hookConns, func(b *testing.B, f *fleetRig) { benchAssign(b, f, sc.rate) })
		})
	}
}

// benchFleet runs scenario against a fresh fleet (accepting at most
// hookConns webhook connections at a time; 0: any number), tears it down
// and checks that nothing of it is left running.
func benchFleet(b *testing.B, hookConns int, scenario func(*testing.B, *fleetRig)) {
	before := runtime.NumGoroutine()
	f := &fleetRig{hookConns: hookConns}
	defer func() {
		f.close()
		checkGoroutines(b, before)
	}()
	f.start(b)
	b.ResetTimer()
	scenario(b, f)
	b.StopTimer()
	b.ReportMetric(0, "ns/op") // one scenario per run: the metrics say it all
}

// benchIdle measures the heartbeat load of an idle fleet.
func benchIdle(b *testing.B, f *fleetRig) {
	w := f.window()
	time.Sleep(fleetIdle)
	s := w.end()
	b.ReportMetric(s.reqPerSec, "agent_req/s")
	b.ReportMetric(ms(stats.Quantile(s.beats, 0.50)), "report_p50_ms")
	b.ReportMetric(ms(stats.Quantile(s.beats, 0.99)), "report_p99_ms")
	b.ReportMetric(s.cpuCores, "proc_cpu_cores")
}

// benchAssign queues fleetJobs jobs at rate per second (0: all at once) and
// waits for every launch command to reach its agent.
func benchAssign(b *testing.B, f *fleetRig, rate int) {
	w := f.window()
	start := time.Now()
	for i := range fleetJobs {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		}
		if id, _ := f.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{fleetLabel}, Script: "true"}); id == 0 {
			b.Fatalf("ghfake did not queue job %d", i)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for f.launchCount() < fleetJobs {
		if time.Now().After(deadline) {
			failed := 0
			for _, d := range f.gh.Deliveries() {
				if d.StatusCode/100 != 2 {
					failed++ // GitHub gives up on a delivery after 10 s
				}
			}
			b.Fatalf("only %d of %d launch commands reached their agents in 90 s (%d webhook deliveries failed)",
				f.launchCount(), fleetJobs, failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := w.end()
	launches := f.takeLaunches()
	if len(launches) != fleetJobs {
		b.Fatalf("%d launch commands for %d jobs", len(launches), fleetJobs)
	}
	jobOf, err := f.runnerJobs(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	var assign, fromHook []time.Duration
	var last time.Time
	jobs := map[int64]bool{}
	for _, l := range launches {
		jobs[jobOf[l.runner]] = true
		assign = append(assign, l.got.Sub(l.sent))
		if at, ok := f.hookAt(jobOf[l.runner]); ok {
			fromHook = append(fromHook, l.got.Sub(at))
		}
		if l.got.After(last) {
			last = l.got
		}
	}
	delete(jobs, 0) // a runner the store does not know
	if len(jobs) != fleetJobs {
		b.Errorf("the %d launches are for %d distinct jobs, want %d", len(launches), len(jobs), fleetJobs)
	}
	if len(fromHook) != len(launches) {
		b.Errorf("webhook arrival known for %d of %d launches", len(fromHook), len(launches))
	}
	b.ReportMetric(ms(stats.Quantile(assign, 0.50)), "assign_p50_ms")
	b.ReportMetric(ms(stats.Quantile(assign, 0.99)), "assign_p99_ms")
	b.ReportMetric(ms(stats.Quantile(fromHook, 0.50)), "hook_to_cmd_p50_ms")
	b.ReportMetric(ms(stats.Quantile(fromHook, 0.99)), "hook_to_cmd_p99_ms")
	b.ReportMetric(fleetJobs/last.Sub(start).Seconds(), "jobs_placed/s")
	b.ReportMetric(ms(stats.Quantile(s.beats, 0.99)), "report_p99_ms")
}

// fleetRunner stands in for a host's VMs (this benchmark only): it records
// its assignments and reports them booting, started and ended, running
// nothing.
type fleetRunner struct {
	d    *agentapi.Daemon
	mu   sync.Mutex
	runs map[string]bool
}

func (r *fleetRunner) Launch(a agentapi.Assignment) error {
	r.mu.Lock()
	dup := r.runs[a.Runner]
	r.runs[a.Runner] = true
	r.mu.Unlock()
	if dup {
		return agentapi.ErrDuplicate
	}
	r.d.Event(agentapi.Event{Runner: a.Runner, Kind: agentapi.EventBooting, At: time.Now()})
	return nil
}

func (r *fleetRunner) Configure(name string, _ map[string]string) error {
	r.d.Event(agentapi.Event{Runner: name, Kind: agentapi.EventStarted, At: time.Now()})
	return nil
}

func (r *fleetRunner) Stop(name, reason string) error {
	r.mu.Lock()
	delete(r.runs, name)
	r.mu.Unlock()
	r.d.Event(agentapi.Event{Runner: name, Kind: agentapi.EventEnded, At: time.Now(), Failure: failure.Cancelled, Detail: reason})
	return nil
}

func (r *fleetRunner) Runners() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.runs))
	for n := range r.runs {
		out = append(out, n)
	}
	return out
}

// fleetCapacity is every agent's host: 16 vCPU, 32 GiB, amd64.
func fleetCapacity() agentapi.Capacity {
	return agentapi.Capacity{VCPUs: 16, MemoryMiB: 32 << 10, DiskFreeMiB: 200 << 10,
		Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}}
}

type launchRec struct {
	runner    string
	sent, got time.Time
}

type beatRec struct {
	at  time.Time
	lat time.Duration
}

// fleetRig is one control plane, its GitHub and its agents.
type fleetRig struct {
	hookConns int // at most this many webhook connections at once; 0: any

	gh      *ghfake.Server
	st      *sqlite.Store
	agentTS *httptest.Server // TLS: the agent protocol and the API
	pin     string
	closers []func()

	agentReqs atomic.Int64 // agent protocol requests handled

	mu       sync.Mutex
	launches []launchRec
	beats    []beatRec
	hooks    map[int64]time.Time // "queued" webhook arrival by job id
}

// onClose adds a teardown step; close runs them in reverse.
func (f *fleetRig) onClose(fn func()) { f.closers = append(f.closers, fn) }

func (f *fleetRig) close() {
	for i := len(f.closers) - 1; i >= 0; i-- {
		f.closers[i]()
	}
	f.closers = nil
}

func (f *fleetRig) start(b *testing.B) {
	f.hooks = map[int64]time.Time{}
	dir, err := os.MkdirTemp("/var/tmp", "tandem-fleet-bench-")
	if err != nil {
		b.Fatal(err)
	}
	f.onClose(func() { os.RemoveAll(dir) })
	cert, err := agentapi.LoadOrCreateCert(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	f.pin = agentapi.Fingerprint(cert.Certificate[0])
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	secret := []byte("fleet-bench-webhook-secret")

	// ghfake needs the webhook URL before the control plane exists, and
	// speaks plain HTTP (it cannot pin our certificate): webhooks reach the
	// control plane's Handler on a loopback listener of their own.
	var cpHandler atomic.Pointer[http.Handler]
	web := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.noteWebhook(r)
		if h := cpHandler.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.Error(w, "starting", http.StatusServiceUnavailable)
	}))
	if f.hookConns > 0 {
		web.Listener = controlplane.LimitListener(web.Listener, f.hookConns, 0)
	}
	web.Start()
	f.onClose(web.Close)
	f.gh = ghfake.New(ghfake.Config{AppID: 5, AppPublicKey: &key.PublicKey, WebhookURL: web.URL + "/webhook",
		WebhookSecret: secret, Seed: 1})
	f.onClose(f.gh.Close)
	ghSrv := httptest.NewServer(f.gh.Handler())
	f.onClose(ghSrv.Close)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")

	if f.st, err = sqlite.Open(context.Background(), filepath.Join(dir, "cp.db"), sqlite.Options{}); err != nil {
		b.Fatal(err)
	}
	f.onClose(func() { f.st.Close() })
	client, err := github.New(github.Config{BaseURL: ghSrv.URL + "/", AppID: 5, PrivateKey: key})
	if err != nil {
		b.Fatal(err)
	}
	parser, err := labels.NewParser("tandem", 1, 1024)
	if err != nil {
		b.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Config{Store: f.st, GitHub: client, WebhookSecret: secret, Labels: parser,
		Runner:    controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}},
		Reconcile: controlplane.Intervals{MissedWebhooks: -1, FailedDeliveries: -1, Orphans: -1},
		AgentPin:  f.pin,
		APITokens: controlplane.APITokens{{Secret: fleetAdminToken, Admin: true}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	h := cp.Handler()
	cpHandler.Store(&h)
	ctx, cancel := context.WithCancel(context.Background())
	cpDone := make(chan struct{})
	go func() {
		defer close(cpDone)
		cp.Run(ctx)
	}()
	f.onClose(func() { cancel(); <-cpDone })

	agentH := cp.AgentHandler()
	mux := http.NewServeMux()
	mux.Handle("/agent/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.agentReqs.Add(1)
		agentH.ServeHTTP(w, r)
	}))
	mux.Handle("/", h)
	f.agentTS = httptest.NewUnstartedServer(mux)
	f.agentTS.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.agentTS.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut short at teardown
	f.agentTS.StartTLS()
	f.onClose(f.agentTS.Close)

	creds, err := f.enrollAll(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// The enrolment clients' idle connections are of no further use.
	f.agentTS.CloseClientConnections()
	f.startAgents(creds)
	if err := f.waitOnline(ctx, time.Minute); err != nil {
		b.Fatal(err)
	}
}

// enrollAll enrols fleetAgents hosts the way an operator does: a one-time
// token from the API (admin token), then agentapi.Enroll with it.
func (f *fleetRig) enrollAll(ctx context.Context) ([]agentapi.Credentials, error) {
	api := &http.Client{Transport: &http.Transport{TLSClientConfig: agentapi.PinnedTLS(f.pin), MaxIdleConnsPerHost: 16},
		Timeout: 30 * time.Second}
	defer api.CloseIdleConnections()
	creds := make([]agentapi.Credentials, fleetAgents)
	errs := make([]error, fleetAgents)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < fleetAgents; i = int(next.Add(1) - 1) {
				tok, err := f.enrollToken(ctx, api)
				if err == nil {
					creds[i], err = agentapi.Enroll(ctx, f.agentTS.URL, tok, fmt.Sprintf("host-%03d", i))
				}
				errs[i] = err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("enrol agents: %w", err)
	}
	return creds, nil
}

func (f *fleetRig) enrollToken(ctx context.Context, api *http.Client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.agentTS.URL+"/api/v1/enroll-tokens",
		strings.NewReader(`{"ttl":"10m","comment":"fleet benchmark"}`))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+fleetAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := api.Do(req)
	if err != nil {
		return "", fmt.Errorf("enrolment token: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		Token string `json:"token"`
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("enrolment token: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("enrolment token: %w", err)
	}
	return out.Token, nil
}

// startAgents runs a Daemon and a heartbeat sender per agent until close;
// it returns once every heartbeat sender has its connection.
func (f *fleetRig) startAgents(creds []agentapi.Credentials) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg, warm sync.WaitGroup
	f.onClose(func() { cancel(); wg.Wait() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, c := range creds {
		r := &fleetRunner{runs: map[string]bool{}}
		d := &agentapi.Daemon{Client: agentapi.NewClient(c), AgentVersion: "bench", Capacity: fleetCapacity,
			Logger: quiet, OnCommand: f.onCommand,
			// One heartbeat as it starts; heartBeats sends the rest, timed.
			HeartbeatInterval: time.Hour}
		r.d = d
		d.Bind(r)
		wg.Go(func() { d.Run(ctx) })
		warm.Add(1)
		wg.Go(func() {
			// Spread the agents over the interval, as hosts started at
			// different times are.
			offset := time.Duration(i) * agentapi.HeartbeatInterval / fleetAgents
			f.heartBeats(ctx, agentapi.NewClient(c), r, offset, warm.Done)
		})
	}
	warm.Wait()
}

// heartBeats sends a heartbeat every HeartbeatInterval, as the Daemon does,
// and records how long each Report took. A first, untimed heartbeat opens
// its connection (as an agent's does once, when it starts); then warm is
// called.
func (f *fleetRig) heartBeats(ctx context.Context, cl *agentapi.Client, r *fleetRunner, offset time.Duration, warm func()) {
	hb := func() agentapi.Report {
		return agentapi.Report{Heartbeat: &agentapi.Heartbeat{Capacity: fleetCapacity(), Running: r.Runners(), Load1: 0.5}}
	}
	cl.Report(ctx, hb())
	warm()
	select {
	case <-ctx.Done():
		return
	case <-time.After(offset):
	}
	t := time.NewTicker(agentapi.HeartbeatInterval)
	defer t.Stop()
	for {
		rep := hb()
		rctx, cancel := context.WithTimeout(ctx, agentapi.HeartbeatInterval)
		t0 := time.Now()
		err := cl.Report(rctx, rep)
		lat := time.Since(t0)
		cancel()
		if err == nil {
			f.mu.Lock()
			f.beats = append(f.beats, beatRec{at: t0, lat: lat})
			f.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (f *fleetRig) onCommand(c agentapi.Command) {
	if c.Type != agentapi.CmdLaunch || c.Assignment == nil {
		return
	}
	got := time.Now()
	f.mu.Lock()
	f.launches = append(f.launches, launchRec{runner: c.Assignment.Runner, sent: c.SentAt, got: got})
	f.mu.Unlock()
}

func (f *fleetRig) launchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.launches)
}

func (f *fleetRig) takeLaunches() []launchRec {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.launches
	f.launches = nil
	return l
}

// noteWebhook records when each job's "queued" webhook arrived.
func (f *fleetRig) noteWebhook(r *http.Request) {
	at := time.Now()
	if r.Header.Get("X-GitHub-Event") != "workflow_job" {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return
	}
	var ev struct {
		Action string `json:"action"`
		Job    struct {
			ID int64 `json:"id"`
		} `json:"workflow_job"`
	}
	if json.Unmarshal(body, &ev) != nil || ev.Action != "queued" {
		return
	}
	f.mu.Lock()
	if _, seen := f.hooks[ev.Job.ID]; !seen {
		f.hooks[ev.Job.ID] = at
	}
	f.mu.Unlock()
}

func (f *fleetRig) hookAt(job int64) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.hooks[job]
	return at, ok
}

// runnerJobs maps each runner the control plane made to the job it was
// made for.
func (f *fleetRig) runnerJobs(ctx context.Context) (map[string]int64, error) {
	var rs []store.Runner
	err := f.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		rs, err = tx.Runners(store.RunnerFilter{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("runners: %w", err)
	}
	m := make(map[string]int64, len(rs))
	for _, r := range rs {
		m[r.Name] = r.JobID
	}
	return m, nil
}

func (f *fleetRig) waitOnline(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var hosts []store.Host
		err := f.st.View(ctx, func(tx store.ReadTx) error {
			var err error
			hosts, err = tx.Hosts()
			return err
		})
		if err != nil {
			return fmt.Errorf("hosts: %w", err)
		}
		n := 0
		for _, h := range hosts {
			if h.State == store.HostOnline {
				n++
			}
		}
		if n == fleetAgents {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents online after %s", n, fleetAgents, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// window measures from now to end: agent requests per second, heartbeat
// latencies, and the process's CPU.
type window struct {
	f     *fleetRig
	start time.Time
	reqs  int64
	cpu   time.Duration
}

type windowStats struct {
	reqPerSec float64
	cpuCores  float64
	beats     []time.Duration
}

func (f *fleetRig) window() *window {
	return &window{f: f, start: time.Now(), reqs: f.agentReqs.Load(), cpu: processCPU()}
}

func (w *window) end() windowStats {
	now := time.Now()
	secs := now.Sub(w.start).Seconds()
	s := windowStats{
		reqPerSec: float64(w.f.agentReqs.Load()-w.reqs) / secs,
		cpuCores:  (processCPU() - w.cpu).Seconds() / secs,
	}
	w.f.mu.Lock()
	for _, b := range w.f.beats {
		if !b.at.Before(w.start) && b.at.Before(now) {
			s.beats = append(s.beats, b.lat)
		}
	}
	w.f.mu.Unlock()
	return s
}

// processCPU is the user and system CPU time of the whole process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// raiseFileLimit makes room for want open files (each agent holds a few
// connections, and both ends are in this process), or skips.
func raiseFileLimit(b *testing.B, want uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur < want {
		b.Skipf("open-file limit %d (hard) is below the %d this benchmark needs", lim.Max, want)
	}
}

// checkGoroutines fails b if more goroutines run than before the fleet
// was made, once the stragglers (closing connections) have had a moment.
func checkGoroutines(b *testing.B, before int) {
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&buf, 1)
			dump := buf.String()
			b.Errorf("%d goroutines outlive the fleet (%d before):\n%s", runtime.NumGoroutine(), before, dump[:min(len(dump), 8000)])
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
