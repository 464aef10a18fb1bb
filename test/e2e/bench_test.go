package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/stats"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// BenchmarkQueueToRunnerStarted measures, with real VMs, the time from a
// job being queued on GitHub (ghfake sends the webhook at once) to the
// runner in a fresh VM claiming it, against a bare `tandem run` of the same
// image and size in the same run (its prepare + boot: command start to the
// guest agent ready). The two alternate so drift hits both alike. The queue
// side's end point is the runner's claim, one HTTP round trip after its
// process started, so the ratio slightly favours the bare side.
//
//	TANDEM_BIN=$PWD/bin go test -run x -bench QueueToRunner -benchtime 10x ./test/e2e/
func BenchmarkQueueToRunnerStarted(b *testing.B) {
	s := newSystem(b, options{vcpus: 2, memoryMiB: 1024})
	s.install("acme", "app")
	bare := bareEnv(b)
	var queued, boots []time.Duration
	for i := 0; i < b.N; i++ {
		id, d := s.claimTime("tandem-1cpu-0.25gb", "true", 2*time.Minute)
		queued = append(queued, d)
		s.waitGitHubDone([]int64{id}, time.Minute)
		// Let the runner VM go before the bare boot.
		s.waitFor("the runner VM to end", time.Minute, func() bool {
			var out struct{ Runners []struct{ Name string } }
			s.getJSON("/api/v1/runners?live=1", &out)
			return len(out.Runners) == 0
		})
		boots = append(boots, bare())
	}
	b.StopTimer()
	reportVersus(b, "queue", queued, "bare", boots)
	b.ReportMetric(0, "ns/op")
}

// reportVersus reports the p50 and p95 of two sides measured in one run,
// and the ratio of their p50s (a over b).
func reportVersus(b *testing.B, aName string, a []time.Duration, bName string, bs []time.Duration) {
	ap50, ap95 := stats.P50P95(a)
	bp50, bp95 := stats.P50P95(bs)
	b.ReportMetric(float64(ap50.Milliseconds()), aName+"_p50_ms")
	b.ReportMetric(float64(ap95.Milliseconds()), aName+"_p95_ms")
	b.ReportMetric(float64(bp50.Milliseconds()), bName+"_p50_ms")
	b.ReportMetric(float64(bp95.Milliseconds()), bName+"_p95_ms")
	b.ReportMetric(float64(ap50)/float64(bp50), "ratio_p50")
}

// bareEnv returns a function that boots the test image once with a bare
// `tandem run --json -- true` (own data dir, default bridge) and returns
// its prepare + boot time.
func bareEnv(b *testing.B) func() time.Duration {
	shared := testimages.DataDir(b)
	data := testenv.ShortTempDir(b)
	if err := os.Symlink(filepath.Join(shared, "images"), filepath.Join(data, "images")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { testenv.AssertNoLeaks(b, data, nil) })
	bin := binary(b)
	return func() time.Duration {
		out, err := exec.Command(bin, "--data-dir", data, "run", "--json", "--cpus", "1", "--memory", "256M", "--", "true").Output()
		if err != nil {
			b.Fatalf("tandem run: %v", err)
		}
		var res struct {
			Timings struct{ Prepare, Boot int64 } `json:"timings_ms"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatalf("tandem run --json: %v: %s", err, out)
		}
		return time.Duration(res.Timings.Prepare+res.Timings.Boot) * time.Millisecond
	}
}

// BenchmarkWarmVsCold measures, with real VMs in the same run, the time
// from a job being queued on GitHub (ghfake sends the webhook at once) to
// a runner claiming it: on a warm pool's VM, booted and waiting before the
// job came, and on a cold one booted for the job (a label of the same
// image that no pool keeps). The two alternate, each with the pool full
// and nothing else booting. It also reports the memory an idle pool VM
// holds on the host (its QEMU's resident set, test image).
//
//	TANDEM_BIN=$PWD/bin go test -run x -bench WarmVsCold -benchtime 8x ./test/e2e/
func BenchmarkWarmVsCold(b *testing.B) {
	s := newSystem(b, poolOptions(1))
	s.install("acme", "app")
	var warm, cold []time.Duration
	var rss []float64
	for i := 0; i < b.N; i++ {
		s.waitWarm(1, 3*time.Minute)
		if pids := testenv.QEMUPIDs(s.data); len(pids) == 1 {
			if kib, err := residentKiB(pids[0]); err == nil {
				rss = append(rss, float64(kib)/1024)
			}
		}
		id, d := s.claimTime(warmLabel, warmScript, 3*time.Minute)
		warm = append(warm, d)
		s.waitGitHubDone([]int64{id}, 3*time.Minute)
		s.waitWarm(1, 3*time.Minute)
		id, d = s.claimTime(coldLabel, warmScript, 3*time.Minute)
		cold = append(cold, d)
		s.waitGitHubDone([]int64{id}, 3*time.Minute)
	}
	b.StopTimer()
	reportVersus(b, "warm", warm, "cold", cold)
	if len(rss) > 0 {
		sort.Float64s(rss)
		b.ReportMetric(rss[len(rss)/2], "idle_rss_MiB")
	}
	b.ReportMetric(0, "ns/op")
}

// residentKiB is a process's resident set (VmRSS), in KiB.
func residentKiB(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
}
