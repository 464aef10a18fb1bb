package e2e

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// warmLabel is the pool's label in these tests; coldLabel a VM of the same
// image and nearly the same size that no pool keeps.
const (
	warmLabel = "tandem-1cpu-0.25gb"
	coldLabel = "tandem-1cpu-0.5gb"
	// warmScript shows in the job's log which runner ran it.
	warmScript = "echo ran on $TANDEM_RUNNER_NAME"
)

func poolOptions(minIdle int) options {
	return options{vcpus: 3, memoryMiB: 1536,
		extra: "pools:\n  - {labels: " + warmLabel + ", min_idle: " + strconv.Itoa(minIdle) + ", max_age: 10m}\n"}
}

func (s *system) pools() []controlplane.PoolView {
	s.t.Helper()
	var out struct{ Pools []controlplane.PoolView }
	s.getJSON("/api/v1/pools", &out)
	return out.Pools
}

// waitWarm waits until the pool holds n ready VMs, none of them one of
// not, and returns them.
func (s *system) waitWarm(n int, timeout time.Duration, not ...controlplane.PoolVM) []controlplane.PoolVM {
	s.t.Helper()
	var vms []controlplane.PoolVM
	s.waitFor("the pool to hold ready VMs", timeout, func() bool {
		p := s.pools()
		if len(p) != 1 || p[0].Ready != n {
			return false
		}
		for _, v := range p[0].VMs {
			if slices.ContainsFunc(not, func(o controlplane.PoolVM) bool { return o.Runner == v.Runner }) {
				return false
			}
		}
		vms = p[0].VMs
		return true
	})
	return vms
}

// A warm pool in real VMs: a job of its label runs on the warm VM (booted
// before the job was queued) and one of another size boots its own; a
// replacement boots at once; `tandem up` killed with SIGKILL leaves no pool
// VM behind, and on restart the pool fills again.
func TestWarmPoolInRealVMs(t *testing.T) {
	s := newSystem(t, poolOptions(1))
	s.install("acme", "app")
	first := s.waitWarm(1, 3*time.Minute)

	warmID, warm := s.claimTime(warmLabel, warmScript, 3*time.Minute)
	coldID, cold := s.claimTime(coldLabel, warmScript, 3*time.Minute)
	s.waitGitHubDone([]int64{warmID, coldID}, 3*time.Minute)
	t.Logf("queued to claimed: warm %s, cold %s (TCG; the benchmark measures this)", warm, cold)
	wj, _ := s.job(warmID)
	cj, _ := s.job(coldID)
	if wj.State != "completed" || cj.State != "completed" {
		t.Fatalf("jobs: warm %+v, cold %+v", wj, cj)
	}
	if wj.Runner != first[0].Runner {
		t.Errorf("the warm job ran on %s, not on the pool's VM %s", wj.Runner, first[0].Runner)
	}
	if cj.Runner == first[0].Runner {
		t.Errorf("the cold job ran on the pool's VM")
	}
	if gj, _ := s.gh.Job(warmID); gj.Claims != 1 || gj.Conclusion != "success" {
		t.Errorf("warm job on GitHub: %+v", gj)
	}
	if logs := s.cli("logs", strconv.FormatInt(warmID, 10)); !strings.Contains(logs, "ran on "+first[0].Runner) {
		t.Errorf("the warm job's log does not show it ran on the pool VM:\n%s", logs)
	}
	// A replacement, booted once the first was claimed.
	second := s.waitWarm(1, 3*time.Minute, first...)
	p := s.pools()[0]
	if p.Hits != 1 || p.Misses != 0 || p.BootP50 <= 0 {
		t.Errorf("pool after one hit: %+v", p)
	}
	if out := s.cli("pools"); !strings.Contains(out, "tandem-amd64-1cpu-0.25gb") {
		t.Errorf("tandem pools:\n%s", out)
	}

	// kill -9 with a pool VM waiting: it dies with `tandem up`, and the
	// restarted one reclaims what it left and boots a new one.
	s.kill()
	s.waitFor("the killed tandem up's VMs to go", time.Minute, func() bool { return len(testenv.QEMUPIDs(s.data)) == 0 })
	s.start()
	s.waitWarm(1, 3*time.Minute, second...)
	if pids := testenv.QEMUPIDs(s.data); len(pids) != 1 {
		t.Errorf("%d QEMU processes after the restart, want the one pool VM: %v", len(pids), pids)
	}
	var runners struct{ Runners []controlplane.RunnerView }
	s.getJSON("/api/v1/runners", &runners)
	i := slices.IndexFunc(runners.Runners, func(r controlplane.RunnerView) bool { return r.Name == second[0].Runner })
	if i < 0 || runners.Runners[i].State != "ended" {
		t.Errorf("the killed process's pool VM is not recorded as ended: %+v", runners.Runners)
	}
}
