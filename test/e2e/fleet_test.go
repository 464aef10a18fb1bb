package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// The fleet network: a bridge in the test's namespace, and one network
// namespace per host joined to it by a veth pair. Each host's agent runs in
// its namespace with its own VM bridge and NAT; its VMs reach ghfake at the
// fleet gateway through that NAT.
const (
	fleetBridge     = "tfleet0"
	fleetGateway    = "10.77.0.1"
	fleetAdminToken = "e2e-fleet-admin-token-0123456789"
)

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// fleetHost is one host: a network namespace, a data dir, an agent process.
type fleetHost struct {
	t       testing.TB
	id, ns  string
	data    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	bin     string // the tandem binary start runs ("": this tree's)
}

func setupFleetNet(t testing.TB) {
	t.Helper()
	sh(t, "ip", "link", "add", fleetBridge, "type", "bridge")
	sh(t, "ip", "addr", "add", fleetGateway+"/24", "dev", fleetBridge)
	sh(t, "ip", "link", "set", fleetBridge, "up")
	t.Cleanup(func() { exec.Command("ip", "link", "del", fleetBridge).Run() })
}

func newFleetHost(t testing.TB, i int) *fleetHost {
	t.Helper()
	h := &fleetHost{t: t, id: fmt.Sprintf("h%d", i), ns: fmt.Sprintf("tdm-e2e-%d-h%d", os.Getpid(), i)}
	veth := fmt.Sprintf("tfv%d", i)
	sh(t, "ip", "netns", "add", h.ns)
	t.Cleanup(func() {
		// The veth goes first, at once: a namespace is destroyed in the
		// background, and its veth's peer with it, after `ip netns del`
		// returns; the next test's host of the same number would find it.
		exec.Command("ip", "link", "del", veth).Run()
		exec.Command("ip", "netns", "del", h.ns).Run()
	})
	sh(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
	sh(t, "ip", "link", "set", veth, "master", fleetBridge, "up")
	sh(t, "ip", "-n", h.ns, "addr", "add", fmt.Sprintf("10.77.0.%d/24", 10+i), "dev", "eth0")
	sh(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
	sh(t, "ip", "-n", h.ns, "route", "add", "default", "via", fleetGateway)
	h.data = testenv.ShortTempDir(t)
	if err := os.Symlink(filepath.Join(testimages.DataDir(t), "images"), filepath.Join(h.data, "images")); err != nil {
		t.Fatal(err)
	}
	h.logPath = filepath.Join(h.data, "agent.log")
	t.Cleanup(func() {
		h.stopWhenIdle()
		if t.Failed() {
			if b, err := os.ReadFile(h.logPath); err == nil {
				t.Logf("agent %s log (tail):\n%s", h.id, tail(string(b), 6000))
			}
		}
		reclaimDetached(t, h.data, []string{"nsenter", "--net=/run/netns/" + h.ns, "--"})
		testenv.AssertNoLeaks(t, h.data, nil)
		if out, _ := exec.Command("ip", "-n", h.ns, "-o", "link", "show").CombinedOutput(); bytes.Contains(out, []byte(": tdm-")) {
			t.Errorf("TAP devices left in %s: %s", h.ns, out)
		}
	})
	return h
}

// start runs the agent in the host's namespace (nsenter keeps the test's
// mount namespace, so the agent sees the same cgroups and files).
func (h *fleetHost) start(server, token string) {
	h.t.Helper()
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	bin := h.bin
	if bin == "" {
		bin = binary(h.t)
	}
	args := []string{"--net=/run/netns/" + h.ns, "--", bin, "--data-dir", h.data, "--log-level", "info",
		"agent", "--host-id", h.id, "--vcpus", "2", "--memory", "1GiB", "--emulate", "arm64", "--return-within", "10s"}
	if token != "" {
		args = append(args, "--server", server, "--enroll-token", token)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	logf.Close()
	h.cmd, h.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(h.done) }()
}

func (h *fleetHost) signal(sig syscall.Signal) {
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Signal(sig)
	select {
	case <-h.done:
	case <-time.After(time.Minute):
		h.t.Errorf("agent %s did not end within a minute of %v", h.id, sig)
		h.cmd.Process.Kill()
		<-h.done
	}
	h.cmd = nil
}

func (h *fleetHost) stop() { h.signal(syscall.SIGTERM) }

// stopWhenIdle stops the agent once no job runs on the host (waitNoRuns),
// as a test ends.
func (h *fleetHost) stopWhenIdle() {
	if h.cmd != nil {
		waitNoRuns(h.data)
	}
	h.stop()
}
func (h *fleetHost) kill() { h.signal(syscall.SIGKILL) }

// cut drops the host's link to the fleet; heal restores it.
func (h *fleetHost) cut() { sh(h.t, "ip", "-n", h.ns, "link", "set", "eth0", "down") }
func (h *fleetHost) heal() {
	sh(h.t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
	sh(h.t, "ip", "-n", h.ns, "route", "replace", "default", "via", fleetGateway)
}

func (s *system) admin(method, path string, body any, out any) int {
	s.t.Helper()
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, s.apiURL+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+fleetAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func (s *system) enrollToken() string {
	s.t.Helper()
	var out struct{ Token string }
	if code := s.admin("POST", "/api/v1/enroll-tokens", map[string]string{"ttl": "10m"}, &out); code != 201 {
		s.t.Fatalf("enroll token: %d", code)
	}
	return out.Token
}

func (s *system) host(id string) controlplane.HostView {
	var out struct{ Hosts []controlplane.HostView }
	s.admin("GET", "/api/v1/hosts", nil, &out)
	for _, h := range out.Hosts {
		if h.ID == id {
			return h
		}
	}
	return controlplane.HostView{}
}

func (s *system) waitHost(id, state string, connected bool, timeout time.Duration) {
	s.t.Helper()
	s.waitFor(fmt.Sprintf("host %s %s (connected %v)", id, state, connected), timeout, func() bool {
		h := s.host(id)
		return h.State == state && h.Connected == connected
	})
}

// Three hosts, one control plane: losing a host (SIGKILL, a cut link) or
// the control plane, and draining a host, never runs a job twice; every job
// completes or is reported lost with its reason, and nothing of any VM
// remains on any host.
func TestFleet(t *testing.T) {
	testenv.RequireVM(t)
	setupFleetNet(t)
	// Jobs of acme/app lost to a host are re-run (those of acme/legacy
	// not); GitHub gives up on a silent runner after 20 s.
	s := newSystem(t, options{fleet: true, runnerLostAfter: 20 * time.Second,
		extra: "retry:\n  infra_losses:\n    acme: true\n    acme/legacy: false\n"})
	s.install("acme", "app", "legacy")
	if err := s.gh.SetPermissions(s.installs["acme"], map[string]string{"actions": "write"}); err != nil {
		t.Fatal(err)
	}
	var hosts []*fleetHost
	for i := 1; i <= 3; i++ {
		h := newFleetHost(t, i)
		h.start(s.agentURL, s.enrollToken())
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		s.waitHost(h.id, "online", true, time.Minute)
	}
	var all []int64
	queueIn := func(repo string, n int, script string) []int64 {
		var ids []int64
		for i := 0; i < n; i++ {
			id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: repo, Labels: []string{"tandem-1cpu-0.25gb"}, Script: script})
			ids = append(ids, id)
		}
		all = append(all, ids...)
		return ids
	}
	queue := func(n int, script string) []int64 { return queueIn("acme/app", n, script) }

	// 1. Jobs spread over the fleet; one fails by itself (and is not
	// re-run: see the end).
	first := queue(6, "sleep 1; echo ok")
	failed := queue(1, "echo failing; exit 1")
	s.waitTandemState(append(first, failed...), 3*time.Minute, "completed")
	onHost := map[string]bool{}
	for _, id := range first {
		v, _ := s.job(id)
		onHost[v.Host] = true
	}
	if len(onHost) < 2 {
		t.Errorf("6 jobs ran on %v: want the fleet used", onHost)
	}
	// The runner's output came back from its host (tandem logs JOB).
	s.waitFor("the runner's log to reach the control plane", 30*time.Second, func() bool {
		resp, err := s.get(fmt.Sprintf("/api/v1/jobs/%d/log", first[0]))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && bytes.Contains(b, []byte("ok"))
	})

	// 2. Drain h2 and h3: the next job goes to h1; then kill h1's agent with
	// SIGKILL while that job runs, and keep it down. The host goes
	// offline, the job is lost with the reason, and h1's watchdog stops
	// the job's VM once the agent has not come back in time
	// (--return-within); h1 rejoins on restart with nothing left over.
	// GitHub fails the lost job once its runner is silent, and Tandem has
	// it re-run: the re-run (its run's second attempt, quick) completes.
	for _, id := range []string{"h2", "h3"} {
		if code := s.admin("POST", "/api/v1/hosts/"+id+"/drain", nil, nil); code != 200 {
			t.Fatalf("drain %s: %d", id, code)
		}
	}
	long := queue(1, `if [ "$GITHUB_RUN_ATTEMPT" = 1 ]; then sleep 300; fi; echo "attempt $GITHUB_RUN_ATTEMPT"`)
	s.waitTandemState(long, 2*time.Minute, "running")
	if v, _ := s.job(long[0]); v.Host != "h1" {
		t.Fatalf("the job ran on %s with h2 and h3 drained", v.Host)
	}
	hosts[0].kill()
	s.waitHost("h1", "offline", false, time.Minute)
	s.waitTandemState(long, time.Minute, "lost")
	if len(testenv.QEMUPIDs(hosts[0].data)) == 0 {
		t.Errorf("the job's VM went with its agent")
	}
	s.waitFor("h1's watchdog to stop the VM of its gone agent", time.Minute, func() bool {
		return len(testenv.QEMUPIDs(hosts[0].data)) == 0
	})
	hosts[0].start("", "") // enrolled already: no token
	s.waitHost("h1", "online", true, time.Minute)
	for _, id := range []string{"h2", "h3"} {
		s.admin("POST", "/api/v1/hosts/"+id+"/uncordon", nil, nil)
	}
	var rerun ghfake.JobInfo
	s.waitFor("GitHub to re-run the lost job", 2*time.Minute, func() bool {
		gj, _ := s.gh.Job(long[0])
		rerun, _ = s.gh.Job(gj.RerunAs)
		return gj.RerunAs != 0
	})
	s.waitTandemState([]int64{rerun.ID}, 3*time.Minute, "completed")
	if rerun, _ = s.gh.Job(rerun.ID); rerun.Conclusion != "success" || rerun.RunAttempt != 2 || !strings.Contains(rerun.Output, "attempt 2") {
		t.Errorf("the lost job's re-run: %+v", rerun)
	}

	// 3. Cut h2 off while it runs a job of acme/legacy (whose lost jobs are
	// not re-run); heal it. Its VM, unwanted now, is destroyed when its
	// agent reconnects.
	s.admin("POST", "/api/v1/hosts/h1/drain", nil, nil)
	s.admin("POST", "/api/v1/hosts/h3/drain", nil, nil)
	cut := queueIn("acme/legacy", 1, "sleep 300")
	s.waitTandemState(cut, 2*time.Minute, "running")
	hosts[1].cut()
	s.waitHost("h2", "offline", false, time.Minute)
	s.waitTandemState(cut, time.Minute, "lost")
	hosts[1].heal()
	s.waitHost("h2", "online", true, 90*time.Second)
	s.waitFor("h2's unwanted VM to go", time.Minute, func() bool {
		return len(testenv.QEMUPIDs(hosts[1].data)) == 0
	})
	s.admin("POST", "/api/v1/hosts/h1/uncordon", nil, nil)
	s.admin("POST", "/api/v1/hosts/h3/uncordon", nil, nil)

	// 4. Kill the control plane (SIGKILL) while two jobs run and four are
	// queued; one of the two ends while it is down. The agents keep their
	// VMs and reconnect: the running job completes on the VM it had, the
	// one that ended meanwhile is recorded with its own end (not as a VM
	// lost with a restart, which would count as a loss to re-run), and
	// the queued ones run.
	runs := queue(1, "sleep 25; echo survived")
	ends := queue(1, "sleep 8; echo ended while away")
	s.waitTandemState(append(runs, ends...), 2*time.Minute, "running")
	before := map[int64]string{}
	for _, id := range append(runs, ends...) {
		v, _ := s.job(id)
		before[id] = v.Runner
	}
	later := queue(4, "sleep 1; echo ok")
	s.kill()
	s.waitFor("a job to end on GitHub while the control plane is down", time.Minute, func() bool {
		gj, _ := s.gh.Job(ends[0])
		return gj.Status == "completed"
	})
	s.start()
	s.waitTandemState(append(append(runs, ends...), later...), 4*time.Minute, "completed")
	for _, id := range append(runs, ends...) {
		gj, _ := s.gh.Job(id)
		v, _ := s.job(id)
		if gj.Conclusion != "success" || gj.Claims != 1 || v.Runner != before[id] || v.Attempts != 1 || v.Rerun != nil {
			t.Errorf("job %d across the control plane's restart: Tandem %+v, GitHub %+v; want it done once by runner %s",
				id, v, gj, before[id])
		}
	}
	if gj, _ := s.gh.Job(runs[0]); !strings.Contains(gj.Output, "survived") {
		t.Errorf("the job running across the restart printed %q", gj.Output)
	}

	// 5. Kill h1's agent (SIGKILL) while it runs a job on each
	// architecture, and start it again: it takes both over, and they
	// complete once on the runners they had, their logs whole.
	s.admin("POST", "/api/v1/hosts/h2/drain", nil, nil)
	s.admin("POST", "/api/v1/hosts/h3/drain", nil, nil)
	both := s.queueBothArches(countingScript(20))
	all = append(all, both...)
	runners := s.waitRunning(hosts[0].data, both, 3)
	hosts[0].kill()
	hosts[0].start("", "")
	s.checkSurvived(hosts[0].data, both, runners, 20)
	b, _ := os.ReadFile(hosts[0].logPath)
	logTakeover(t, string(b), 1)
	s.admin("POST", "/api/v1/hosts/h2/uncordon", nil, nil)
	s.admin("POST", "/api/v1/hosts/h3/uncordon", nil, nil)

	// Every job: completed once, or lost with a reason; none twice. Only
	// the job lost on acme/app was re-run, once.
	for _, id := range all {
		gj, _ := s.gh.Job(id)
		v, _ := s.job(id)
		if gj.Claims > 1 {
			t.Errorf("job %d claimed %d times", id, gj.Claims)
		}
		if v.State != "completed" && !(v.State == "lost" && v.Reason != "") {
			t.Errorf("job %d ended %s (%s)", id, v.State, v.Reason)
		}
		if rerunWanted := id == long[0]; (gj.RerunAs != 0) != rerunWanted {
			t.Errorf("job %d (%s, %s): re-run as %d", id, v.State, gj.Conclusion, gj.RerunAs)
		}
	}
	if gj, _ := s.gh.Job(rerun.ID); gj.RerunAs != 0 {
		t.Errorf("the re-run was re-run: %+v", gj)
	}
	t.Logf("counters: %v", s.counters())
	// Everything winds down: stop the agents (cleanup checks each host).
	for _, h := range hosts {
		h.stopWhenIdle()
	}
}
