package postgres

import (
	"bufio"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
)

// BenchmarkFailover kills a leading replica (a process of its own: this
// test binary again, as TestLeaderKilled's child) with SIGKILL, 20 times,
// and times each from the kill to the waiting replica's term beginning.
// The server is a durable one (fsync on), on a unix socket:
//
//	go test -run x -bench Failover -benchtime 20x ./internal/store/postgres
func BenchmarkFailover(b *testing.B) {
	url := pgtest.StartDurableServer(b).NewDatabase(b)
	s, err := Open(b.Context(), Options{URL: url, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		cmd := exec.Command(os.Args[0], "-test.run=^TestLeaderChild$")
		cmd.Env = append(os.Environ(), "TANDEM_LEADER_CHILD="+url)
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		lines := bufio.NewScanner(out)
		for lines.Scan() && !strings.HasPrefix(lines.Text(), "leading ") {
		}
		terms := make(chan error, 1)
		go func() {
			t, err := s.Campaign(b.Context(), "survivor")
			if err == nil {
				defer t.Resign()
			}
			terms <- err
		}()
		time.Sleep(100 * time.Millisecond) // the survivor waits for the lock
		b.StartTimer()
		start := time.Now()
		cmd.Process.Kill()
		err = <-terms
		took = append(took, time.Since(start))
		b.StopTimer()
		cmd.Wait()
		if err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(took)
	pct := func(p float64) float64 { return float64(took[int(p*float64(len(took)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50_ms")
	b.ReportMetric(pct(0.95), "p95_ms")
	b.ReportMetric(pct(1), "max_ms")
	b.ReportMetric(0, "ns/op")
}
