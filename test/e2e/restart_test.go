package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// countingScript prints "line 1" to "line n", a second apart, then
// "survived".
func countingScript(n int) string {
	return fmt.Sprintf(`for i in $(seq 1 %d); do echo "line $i"; sleep 1; done; echo survived`, n)
}

// queueBothArches queues script once for amd64 and once for arm64.
func (s *system) queueBothArches(script string) []int64 {
	var ids []int64
	for _, label := range []string{"tandem-1cpu-0.25gb", "tandem-arm64-1cpu-0.25gb"} {
		id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{label}, Script: script})
		ids = append(ids, id)
	}
	return ids
}

// runnerLog reads the log a host (its data dir) keeps of a runner.
func runnerLog(data, runner string) string {
	b, _ := os.ReadFile(filepath.Join(data, "logs", "runners", runner+".log"))
	return string(b)
}

// waitRunning waits until each job runs and its runner's log on the host
// (data) shows "line <at>", and returns the jobs' runners.
func (s *system) waitRunning(data string, ids []int64, at int) map[int64]string {
	s.t.Helper()
	s.waitTandemState(ids, 4*time.Minute, "running")
	runners := map[int64]string{}
	s.waitFor(fmt.Sprintf("the jobs to print line %d", at), 3*time.Minute, func() bool {
		for _, id := range ids {
			v, _ := s.job(id)
			runners[id] = v.Runner
			if !strings.Contains(runnerLog(data, v.Runner), fmt.Sprintf("line %d\n", at)) {
				return false
			}
		}
		return true
	})
	return runners
}

// checkSurvived checks that each job, counting to n, completed once on
// the runner it had (runners), successfully, as GitHub and Tandem both
// say, with nothing lost or re-run, and that the host's log of its
// runner (data) holds every line once, in order.
func (s *system) checkSurvived(data string, ids []int64, runners map[int64]string, n int) {
	s.t.Helper()
	s.waitTandemState(ids, 4*time.Minute, "completed")
	want := []string{}
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	want = append(want, "survived")
	for _, id := range ids {
		gj, _ := s.gh.Job(id)
		v, _ := s.job(id)
		if gj.Conclusion != "success" || gj.Claims != 1 || v.Runner != runners[id] || v.Attempts != 1 || v.Rerun != nil {
			s.t.Errorf("job %d (%v): Tandem %+v, GitHub %+v; want it done once, successfully, by runner %s",
				id, v.Labels, v, gj, runners[id])
		}
		if !strings.Contains(gj.Output, "survived") {
			s.t.Errorf("job %d: GitHub has its output as %q", id, gj.Output)
		}
		var got []string
		for _, l := range strings.Split(runnerLog(data, runners[id]), "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "line ") || l == "survived" {
				got = append(got, l)
			}
		}
		if !slices.Equal(got, want) {
			s.t.Errorf("job %d: the host's log of runner %s has %q, want lines 1..%d and survived, each once",
				id, runners[id], got, n)
		}
	}
}

// `tandem up` restarted twice while a job runs on each architecture, and
// neither job lost: first an upgrade (the previous commit's binary stopped
// with SIGTERM, as systemd does, and this commit's started on the same
// data directory), then a crash (SIGKILL, and `tandem gc` run while no
// agent is there). Each time the new process takes both jobs over where
// they were; both complete once, their logs whole. Nothing leaks (the
// cleanup checks).
func TestRestartedUpKeepsRunningJobs(t *testing.T) {
	testenv.RequireVM(t)
	// (Without a parent commit, the first restart is this commit's binary
	// restarted: no upgrade, the SIGTERM still tested.)
	old, _ := previousBinary(t)
	s := newSystem(t, options{vcpus: 2, memoryMiB: 1024, bin: old})
	s.install("acme", "app")
	ids := s.queueBothArches(countingScript(30))
	runners := s.waitRunning(s.data, ids, 3)

	s.stop()
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 2 {
		t.Fatalf("after SIGTERM of the old tandem up, %d QEMU processes run, want the 2 jobs' VMs", len(pids))
	}
	s.bin = ""
	s.start()
	s.waitRunning(s.data, ids, 10)
	logTakeover(t, s.log(), 1)
	// The old binary's watchdog is retired: one watchdog, the new binary.
	exe, _ := filepath.EvalSymlinks(binary(t))
	s.waitFor("one watchdog, of the new binary", 10*time.Second, func() bool {
		pids := testenv.WatchdogPIDs(s.data)
		if len(pids) != 1 {
			return false
		}
		got, _ := os.Readlink(filepath.Join("/proc", pids[0], "exe"))
		return got == exe
	})

	s.kill()
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 2 {
		t.Fatalf("after SIGKILL of tandem up, %d QEMU processes run, want the 2 jobs' VMs", len(pids))
	}
	// The VMs of an agent that may still come back are not leftovers.
	gc := exec.Command(binary(t), "--data-dir", s.data, "gc", "--bridge", s.bridge, "--subnet", s.subnet)
	if out, err := gc.CombinedOutput(); err != nil || !strings.Contains(string(out), "nothing to reclaim") {
		t.Errorf("tandem gc while the agent is away: %v\n%s", err, out)
	}
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 2 {
		t.Fatalf("tandem gc left %d of the 2 jobs' VMs", len(pids))
	}
	s.start()
	s.checkSurvived(s.data, ids, runners, 30)
	logTakeover(t, s.log(), 2)
}

// logTakeover fails t unless an agent's log says n times that it took jobs
// over, and logs how long their reattaching took.
func logTakeover(t *testing.T, log string, n int) {
	t.Helper()
	if got := strings.Count(log, "took over the jobs an earlier agent left running"); got != n {
		t.Errorf("the agents' log says %d times that jobs were taken over, want %d", got, n)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "every job taken over is attached again") {
			t.Logf("restart: %s", l)
		}
	}
}

// previousBinary builds tandem from this commit's parent, once per run; ok
// is false, loudly logged, where there is no parent commit (a shallow
// clone).
func previousBinary(t *testing.T) (bin string, ok bool) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "HEAD~1").Output()
	if err != nil {
		t.Logf("NO UPGRADE TESTED: no parent commit to upgrade from (a shallow clone?): %v", err)
		return "", false
	}
	parent := strings.TrimSpace(string(rev))
	dir := filepath.Join(os.TempDir(), "tandem-e2e-prev-"+parent[:12])
	bin = filepath.Join(dir, "tandem")
	if _, err := os.Stat(bin); err == nil {
		return bin, true
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, parent, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", parent, err, out)
	}
	// For this machine, as the test's own tandem is: not for a GOARCH the
	// test binary itself was built for (the fast pass under qemu-user).
	build := exec.Command("go", "build", "-o", bin+".tmp", "./cmd/tandem")
	build.Dir = src
	build.Env = append(os.Environ(), "GOOS=", "GOARCH=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building tandem of %s: %v\n%s", parent, err, out)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("upgrading from tandem built from %s", parent)
	return bin, true
}

// A fleet upgraded one part at a time, from the previous commit's binary,
// without draining: each step restarts a part mid-job (SIGTERM), and the
// job running across it completes once, its log whole. The steps take the
// agent protocol across the version step both ways: a new agent with the
// old control plane (an agent upgraded first), then an old agent with the
// new control plane (the control plane upgraded first).
func TestFleetUpgradeKeepsRunningJobs(t *testing.T) {
	testenv.RequireVM(t)
	old, ok := previousBinary(t)
	if !ok {
		t.Skip("SKIPPED LOUDLY: no previous commit's binary to upgrade from")
	}
	setupFleetNet(t)
	s := newSystem(t, options{fleet: true, bin: old})
	s.install("acme", "app")
	var hosts []*fleetHost
	for i := 1; i <= 2; i++ {
		h := newFleetHost(t, i)
		h.bin = old
		h.start(s.agentURL, s.enrollToken())
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		s.waitHost(h.id, "online", true, time.Minute)
	}
	// across runs a job on host, the other host drained, across restart.
	across := func(host *fleetHost, other string, restart func()) {
		t.Helper()
		s.admin("POST", "/api/v1/hosts/"+other+"/drain", nil, nil)
		defer s.admin("POST", "/api/v1/hosts/"+other+"/uncordon", nil, nil)
		id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: countingScript(15)})
		runners := s.waitRunning(host.data, []int64{id}, 3)
		if v, _ := s.job(id); v.Host != host.id {
			t.Fatalf("the job ran on %s, want %s", v.Host, host.id)
		}
		restart()
		s.checkSurvived(host.data, []int64{id}, runners, 15)
	}
	// 1. h1's agent upgraded: the new agent takes its job over and talks
	// to the old control plane.
	across(hosts[0], "h2", func() {
		hosts[0].stop()
		hosts[0].bin = ""
		hosts[0].start("", "")
	})
	// 2. The control plane upgraded: h2's old agent reconnects to it with
	// its job running.
	across(hosts[1], "h1", func() {
		s.stop()
		s.bin = ""
		s.start()
	})
	// 3. h2's agent upgraded too.
	across(hosts[1], "h1", func() {
		hosts[1].stop()
		hosts[1].bin = ""
		hosts[1].start("", "")
	})
	for _, h := range hosts {
		h.stopWhenIdle()
	}
}
