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

// `tandem up` killed with SIGKILL while a job runs on each architecture
// loses neither: started again, it takes both over where they were, and
// both complete once, their logs whole. Nothing leaks (the cleanup
// checks).
func TestKilledUpKeepsRunningJobs(t *testing.T) {
	s := newSystem(t, options{vcpus: 2, memoryMiB: 1024})
	s.install("acme", "app")
	ids := s.queueBothArches(countingScript(25))
	runners := s.waitRunning(s.data, ids, 3)
	s.kill()
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 2 {
		t.Fatalf("after SIGKILL of tandem up, %d QEMU processes run, want the 2 jobs' VMs", len(pids))
	}
	s.start()
	s.checkSurvived(s.data, ids, runners, 25)
	logTakeover(t, s.log())
}

// logTakeover fails t unless an agent's log says it took jobs over, and
// logs how long their reattaching took.
func logTakeover(t *testing.T, log string) {
	t.Helper()
	if !strings.Contains(log, "took over the jobs an earlier agent left running") {
		t.Errorf("the restarted agent did not say it took the jobs over")
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "every job taken over is attached again") {
			t.Logf("restart: %s", l)
		}
	}
}

// An upgrade: `tandem up` of the previous commit runs a job on each
// architecture and is stopped (SIGTERM, as systemd does); this commit's
// starts on the same data directory mid-job. Both jobs complete once,
// their logs whole.
func TestUpgradeKeepsRunningJobs(t *testing.T) {
	old := previousBinary(t)
	s := newSystem(t, options{vcpus: 2, memoryMiB: 1024, bin: old})
	s.install("acme", "app")
	ids := s.queueBothArches(countingScript(25))
	runners := s.waitRunning(s.data, ids, 3)
	s.stop()
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 2 {
		t.Fatalf("after SIGTERM of the old tandem up, %d QEMU processes run, want the 2 jobs' VMs", len(pids))
	}
	s.bin = ""
	s.start()
	s.checkSurvived(s.data, ids, runners, 25)
	logTakeover(t, s.log())
}

// previousBinary builds tandem from this commit's parent, once per run.
func previousBinary(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "HEAD~1").Output()
	if err != nil {
		t.Skipf("SKIPPED LOUDLY: no parent commit to upgrade from (a shallow clone?): %v", err)
	}
	parent := strings.TrimSpace(string(rev))
	dir := filepath.Join(os.TempDir(), "tandem-e2e-prev-"+parent[:12])
	bin := filepath.Join(dir, "tandem")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, parent, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", parent, err, out)
	}
	build := exec.Command("go", "build", "-o", bin+".tmp", "./cmd/tandem")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building tandem of %s: %v\n%s", parent, err, out)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("upgrading from tandem built from %s", parent)
	return bin
}
