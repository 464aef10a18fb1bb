package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/stats"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
)

// BenchmarkReattach measures an agent's restart with n jobs running: from
// the new process's host (driver and network over the old one's state) to
// every job's guest answering again (Recover, WaitTakenOver), and the jobs
// lost per restart (goal 0). The baseline, in the same run, is what the
// restart saves a job: its VM's boot, from Launch to the job's first line.
//
//	go test -run x -bench Reattach -benchtime 10x ./internal/agent
func BenchmarkReattach(b *testing.B) {
	for _, n := range []int{1, 4, 8} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) { benchReattach(b, n) })
	}
}

func benchReattach(b *testing.B, n int) {
	h := testhost.New(b)
	x := resumable{h: h, logs: b.TempDir(), runDir: b.TempDir()}
	a := x.start(b, newRecorder())
	var names []string
	t0 := time.Now()
	for i := range n {
		name := fmt.Sprintf("r%d", i)
		names = append(names, name)
		if err := a.Launch(asg(name, "sh", "-c", "while :; do echo tick; sleep 0.2; done")); err != nil {
			b.Fatal(err)
		}
		if err := a.Configure(name, nil); err != nil {
			b.Fatal(err)
		}
	}
	var boots []time.Duration
	for _, name := range names {
		waitLog(b, x.logs, name, "tick\n")
		boots = append(boots, time.Since(t0))
	}
	var took []time.Duration
	lost := 0
	b.ResetTimer()
	for range b.N {
		if got := a.Detach(); got != n {
			b.Fatalf("Detach let %d jobs go, want %d", got, n)
		}
		t := time.Now()
		x.h = testhost.Restart(b, x.h)
		keep, err := agent.Keep(x.runDir, "agent")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := x.h.Collect(context.Background(), keep); err != nil {
			b.Fatal(err)
		}
		a = x.start(b, newRecorder())
		taken, err := a.Recover(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err = a.WaitTakenOver(ctx)
		cancel()
		if err != nil {
			b.Fatalf("the jobs were not all taken over in 2 minutes: %v", err)
		}
		took = append(took, time.Since(t))
		// Lost: not taken over, or ended meanwhile.
		lost += n - len(taken)
		if rs := a.Runners(); !slices.Equal(rs, names) {
			lost += n - len(rs)
		}
	}
	b.StopTimer()
	// Each job's output goes on after the restarts.
	for _, name := range names {
		before, _ := os.ReadFile(filepath.Join(x.logs, name+".log"))
		waitLog(b, x.logs, name, strings.Repeat("tick\n", strings.Count(string(before), "tick\n")+1))
	}
	a.Close()
	p50, p95 := stats.P50P95(took)
	bp50, _ := stats.P50P95(boots)
	b.ReportMetric(float64(p50.Milliseconds()), "reattach-p50-ms")
	b.ReportMetric(float64(p95.Milliseconds()), "reattach-p95-ms")
	b.ReportMetric(float64(bp50.Milliseconds()), "boot-p50-ms")
	b.ReportMetric(float64(p50)/float64(bp50), "reattach/boot")
	b.ReportMetric(float64(lost)/float64(b.N), "lost/restart")
}
