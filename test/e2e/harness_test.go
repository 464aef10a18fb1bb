// Package e2e tests the whole system: the tandem binary (control plane,
// SQLite and this host's agent, as `tandem up`), real microVMs running the
// fake runner from the test image, and ghfake standing in for GitHub. Every
// test runs inside a private network namespace with its own bridge.
package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

var (
	buildOnce sync.Once
	tandemBin string
	buildErr  error
	netSeq    atomic.Int32
)

// binary builds bin/tandem once per test run (or takes $TANDEM_BIN/tandem).
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("TANDEM_BIN"); d != "" {
			tandemBin = filepath.Join(d, "tandem")
			if _, buildErr = os.Stat(tandemBin); buildErr == nil {
				return
			}
		}
		dir, err := os.MkdirTemp("", "tandem-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		tandemBin = filepath.Join(dir, "tandem")
		cmd := exec.Command("go", "build", "-o", tandemBin, "./cmd/tandem")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build tandem: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return tandemBin
}

// options shape one test's system.
type options struct {
	vcpus     float64 // the host's VM capacity
	memoryMiB int
	faults    ghfake.Faults
	extra     string // appended to the config file
	// fleet runs `tandem server` (no local agent) with its agent listener
	// on the fleet network's gateway (see fleet_test.go).
	fleet bool
	// runner is added to the config's runner section (indented lines).
	runner string
	// idle is runner.idle_timeout (default 60s).
	idle time.Duration
	// dataDir is the shared data dir whose images/ the system uses; "":
	// testimages.DataDir (the test images).
	dataDir string
	// files are written into the data dir (the config's directory) before
	// the start, by name, mode 0600: token files, say.
	files map[string]string
	// runnerLostAfter is how long GitHub waits to hear from a job's runner
	// before it fails the job (0: ghfake's default, 10 minutes).
	runnerLostAfter time.Duration
	// bin is the tandem binary to start (default: this tree's).
	bin string
	// viaInit: ghfake starts with no App; `tandem init` makes it through
	// the manifest flow and writes the key, the secret and the config,
	// which the test then adjusts as an operator would (init_test.go).
	viaInit bool
}

// system is one test's Tandem (a `tandem up` process) and its GitHub.
type system struct {
	t        testing.TB
	gh       *ghfake.Server
	ghSrv    *http.Server
	data     string
	cfgPath  string
	apiURL   string
	logPath  string
	cmd      *exec.Cmd
	done     chan struct{}
	secret   []byte
	installs map[string]int64
	fleet    bool
	agentURL string // the agent listener, in fleet mode
	gateway  string // the VMs' gateway: this host as the VMs reach it (its mirror)
	bin      string // the tandem binary start runs ("": this tree's)
	// bridge and subnet are tandem up's VM network.
	bridge, subnet string
}

// sign signs a webhook body as GitHub does, with the real secret.
func (s *system) sign(body []byte) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// freePort finds a port for a listener that a process started later binds.
// It is taken below the kernel's ephemeral range (32768 and up by
// default): a port the kernel handed out could be handed again, to any
// outgoing connection of the tests running beside this one, before the
// process binds it (seen in CI: "bind: address already in use").
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		p := 20000 + mrand.IntN(12000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newSystem(t testing.TB, o options) *system {
	t.Helper()
	testenv.RequireVM(t)
	shared := o.dataDir
	if shared == "" {
		shared = testimages.DataDir(t)
	}
	data := testenv.ShortTempDir(t)
	if err := os.Symlink(filepath.Join(shared, "images"), filepath.Join(data, "images")); err != nil {
		t.Fatal(err)
	}
	// The App's key, and the webhook secret, in files as an operator has them.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(data, "app.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	secret := []byte(fmt.Sprintf("e2e-webhook-secret-%d", time.Now().UnixNano()))
	secretPath := filepath.Join(data, "webhook-secret")
	for p, b := range map[string][]byte{keyPath: pemBytes, secretPath: secret} {
		if o.viaInit {
			break // tandem init writes them
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Each test gets its own bridge and subnet.
	n := netSeq.Add(1)
	bridge := fmt.Sprintf("te2e%d", n)
	gw := fmt.Sprintf("172.31.%d.1", n)
	subnet := fmt.Sprintf("172.31.%d.0/24", n)
	if o.fleet {
		gw = fleetGateway
	}

	tandemPort := freePort(t)
	// GitHub is on the test's internet: tandem reaches it directly, the
	// VMs' runners through their host's NAT, as they reach GitHub.
	ghLn := testenv.Internet(t).Listen(t, 0)
	ghAddr := ghLn.Addr().String()
	ghCfg := ghfake.Config{
		AppID: 4242, AppPublicKey: &key.PublicKey,
		WebhookURL:      fmt.Sprintf("http://127.0.0.1:%d/webhook", tandemPort),
		WebhookSecret:   secret,
		RunnerURL:       "http://" + ghAddr,
		Seed:            time.Now().UnixNano(),
		RunnerLostAfter: o.runnerLostAfter,
	}
	if o.viaInit {
		ghCfg.AppID, ghCfg.AppPublicKey, ghCfg.WebhookURL, ghCfg.WebhookSecret = 0, nil, "", nil
	}
	gh := ghfake.New(ghCfg)
	ghSrv := &http.Server{Handler: gh.Handler()}
	go ghSrv.Serve(ghLn)
	if o.vcpus == 0 {
		o.vcpus = 4
	}
	if o.memoryMiB == 0 {
		o.memoryMiB = 4096
	}
	if o.idle == 0 {
		o.idle = 60 * time.Second
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
github:
  api_url: http://%s/
  app_id: 4242
  private_key_file: app.pem
  webhook_secret_file: webhook-secret
labels:
  default_vcpus: 1
  default_memory: 256MiB
runner:
  idle_timeout: %s
  config_timeout: 60s
  max_job_duration: 5m
%sreconcile:
  missed_webhooks: 2s
  failed_deliveries: 2s
  orphans: 5s
  lost_after: 10s
agent:
  host_id: e2e-host
  vcpus: %g
  memory: %dMiB
  emulate: [arm64]
  bridge: %s
  subnet: %s
%s`, tandemPort, ghAddr, o.idle, o.runner, o.vcpus, o.memoryMiB, bridge, subnet, o.extra)
	agentPort := 0
	if o.fleet {
		agentPort = freePort(t)
		cfg += fmt.Sprintf("agents:\n  listen: %s:%d\n  tls_hosts: [%s]\n  heartbeat_timeout: 6s\napi:\n  admin_token_file: admin-token\n",
			fleetGateway, agentPort, fleetGateway)
		if err := os.WriteFile(filepath.Join(data, "admin-token"), []byte(fleetAdminToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range o.files {
		if err := os.WriteFile(filepath.Join(data, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(data, "config.yaml")
	if o.viaInit {
		secret = initApp(t, o, data, ghAddr, tandemPort)
		cfg = adaptInitConfig(t, cfgPath, tandemPort, o, bridge, subnet)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &system{t: t, gh: gh, ghSrv: ghSrv, data: data, cfgPath: cfgPath,
		apiURL: fmt.Sprintf("http://127.0.0.1:%d", tandemPort), logPath: filepath.Join(data, "tandem.log"),
		secret: secret, installs: map[string]int64{}, fleet: o.fleet,
		agentURL: fmt.Sprintf("https://%s:%d", fleetGateway, agentPort), gateway: gw, bin: o.bin, bridge: bridge, subnet: subnet}
	gh.SetFaults(o.faults)
	t.Cleanup(func() {
		s.stopWhenIdle()
		gh.Close()
		ghSrv.Close()
		if t.Failed() {
			if b, err := os.ReadFile(s.logPath); err == nil {
				t.Logf("tandem log (tail):\n%s", tail(string(b), 12000))
			}
		}
		reclaimDetached(t, data, nil, "--bridge", bridge, "--subnet", subnet)
		testenv.AssertNoLeaks(t, data, nil)
	})
	s.start()
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// start runs `tandem up` and waits until its API answers.
func (s *system) start() {
	t := s.t
	t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	mode := "up"
	if s.fleet {
		mode = "server"
	}
	bin := s.bin
	if bin == "" {
		bin = binary(t)
	}
	cmd := exec.Command(bin, "--data-dir", s.data, "--log-level", "info", mode, "--config", s.cfgPath)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	s.cmd, s.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(s.apiURL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.logPath)
			t.Fatalf("tandem up exited at start:\n%s", tail(string(b), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("tandem up did not become healthy within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitNoRuns waits up to a minute for the agent of data dir data to have
// no job running: a job GitHub and Tandem call completed may still have
// its VM for a moment, which a stop would let go for a next agent.
func waitNoRuns(data string) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if runs, _ := os.ReadDir(filepath.Join(data, "agent", "runs")); len(runs) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopWhenIdle stops `tandem up` once no job runs (waitNoRuns), as a test
// ends.
func (s *system) stopWhenIdle() {
	if s.cmd != nil && !s.fleet {
		waitNoRuns(s.data)
	}
	s.stop()
}

// reclaimDetached fails t for every job a stopped agent (of data dir data)
// let go for a next agent: the test ended with it running, which the test
// should not. It then reclaims their VMs (tandem gc --abandoned, run with
// prefix, e.g. nsenter into a host's namespace, and the host's network
// flags) so that the tests after this one start clean.
func reclaimDetached(t testing.TB, data string, prefix []string, netFlags ...string) {
	t.Helper()
	runs, _ := os.ReadDir(filepath.Join(data, "agent", "runs"))
	if len(runs) == 0 {
		return
	}
	var names []string
	for _, r := range runs {
		names = append(names, r.Name())
	}
	t.Errorf("the test ended with jobs running, left for a next agent: %v; end them before the test does", names)
	args := append(append(slices.Clone(prefix), binary(t), "--data-dir", data, "gc", "--abandoned"), netFlags...)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Errorf("tandem gc --abandoned: %v\n%s", err, out)
	}
}

// log is what the tandem processes of this system have logged so far.
func (s *system) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// cli runs an operator command of the tandem binary against this system
// (the admin token tandem up wrote) and returns its output; a non-zero
// exit fails the test.
func (s *system) cli(args ...string) string {
	s.t.Helper()
	cmd := exec.Command(binary(s.t), append([]string{"--data-dir", s.data}, append(args, "--server", s.apiURL)...)...)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=", "TANDEM_TOKEN=", "TANDEM_SERVER=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("tandem %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// kill SIGKILLs `tandem up`.
func (s *system) kill() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// stop ends `tandem up` with SIGTERM, as an operator would.
func (s *system) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.t.Errorf("tandem up did not stop within a minute of SIGTERM")
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

// install makes org an installation of the App with the given repositories.
func (s *system) install(org string, repos ...string) {
	full := make([]string, len(repos))
	for i, r := range repos {
		full[i] = org + "/" + r
	}
	s.installs[org] = s.gh.AddInstallation(org, ghfake.AccountOrganization, full...)
}

// jobs fetches the control plane's job list.
func (s *system) jobs() []controlplane.JobView {
	s.t.Helper()
	var out struct{ Jobs []controlplane.JobView }
	s.getJSON("/api/v1/jobs?limit=10000", &out)
	return out.Jobs
}

func (s *system) job(id int64) (controlplane.JobView, bool) {
	s.t.Helper()
	resp, err := s.get(fmt.Sprintf("/api/v1/jobs/%d", id))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == 404 {
		return controlplane.JobView{}, false
	}
	var v controlplane.JobView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		s.t.Fatal(err)
	}
	return v, true
}

func (s *system) counters() map[string]int64 {
	s.t.Helper()
	var out struct{ Counters map[string]int64 }
	s.getJSON("/api/v1/reconcilers", &out)
	return out.Counters
}

// get reads the API with the admin token (tandem up writes one to
// <data>/api-admin-token; fleet mode configures one).
func (s *system) get(path string) (*http.Response, error) {
	tok := fleetAdminToken
	if !s.fleet {
		b, err := os.ReadFile(filepath.Join(s.data, "api-admin-token"))
		if err != nil {
			return nil, err
		}
		tok = strings.TrimSpace(string(b))
	}
	req, err := http.NewRequest("GET", s.apiURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return http.DefaultClient.Do(req)
}

func (s *system) getJSON(path string, v any) {
	s.t.Helper()
	resp, err := s.get(path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func (s *system) waitFor(what string, timeout time.Duration, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitGitHubDone waits until GitHub (ghfake) reports every job completed.
func (s *system) waitGitHubDone(ids []int64, timeout time.Duration) {
	s.t.Helper()
	s.waitFor(fmt.Sprintf("%d jobs to complete on GitHub", len(ids)), timeout, func() bool {
		for _, id := range ids {
			if j, ok := s.gh.Job(id); !ok || j.Status != "completed" {
				return false
			}
		}
		return true
	})
}

// waitTandemState waits until Tandem shows every job in one of states.
func (s *system) waitTandemState(ids []int64, timeout time.Duration, states ...string) {
	s.t.Helper()
	s.waitFor(fmt.Sprintf("Tandem to show %d jobs as %v", len(ids), states), timeout, func() bool {
		for _, id := range ids {
			j, ok := s.job(id)
			if !ok || !contains(states, j.State) {
				return false
			}
		}
		return true
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// postWebhook sends a webhook as GitHub would, signed with secret (nil: unsigned).
func (s *system) postWebhook(event, guid string, body []byte, signature string) *http.Response {
	s.t.Helper()
	req, _ := http.NewRequest("POST", s.apiURL+"/webhook", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", guid)
	if signature != "" {
		req.Header.Set("X-Hub-Signature-256", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// claimTime queues a job of label in acme/app running script and returns
// it and how long GitHub's runner took to claim it from its creation
// (ghfake sends the webhook at once); past within the test fails.
func (s *system) claimTime(label, script string, within time.Duration) (int64, time.Duration) {
	s.t.Helper()
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{label}, Script: script})
	deadline := time.Now().Add(within)
	for {
		j, _ := s.gh.Job(id)
		if !j.StartedAt.IsZero() && j.Status != "queued" {
			return id, j.StartedAt.Sub(j.CreatedAt)
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("job %d not claimed within %s", id, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
