package sqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// BenchmarkParity computes the parity matrix and every repository's tier
// over a store of TANDEM_BENCH_JOBS jobs (default 1,000,000): four weeks
// of commits of 300 repositories, each running 8 logical jobs on both
// architectures (one on amd64 only), names in three matrix styles. The
// store is built once (several minutes) and kept in TANDEM_BENCH_DB when
// set, for the next run.
//
//	go test -run '^$' -bench Parity -benchtime 5x -timeout 60m ./internal/store/sqlite
func BenchmarkParity(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("TANDEM_BENCH_JOBS")); err == nil && v > 0 {
		n = v
	}
	path := os.Getenv("TANDEM_BENCH_DB")
	if path == "" {
		path = filepath.Join(b.TempDir(), "parity.db")
	}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	s, err := Open(context.Background(), path, Options{Synchronous: SyncNormal})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var have map[store.JobState]int
	s.View(context.Background(), func(tx store.ReadTx) error { have, err = tx.CountJobs(); return err })
	if total := have[store.JobCompleted] + have[store.JobCancelled]; total < n {
		t0 := time.Now()
		fillParityHistory(b, s, now, n)
		b.Logf("stored %d jobs in %s", n, time.Since(t0).Round(time.Second))
	}
	pol := parity.Policy{}
	pol.Defaults()
	since, until := parity.Period(now, pol.Days)
	f := store.StatsFilter{Since: since, Until: until}
	b.ResetTimer()
	for range b.N {
		var rows []parity.Row
		err := s.View(context.Background(), func(tx store.ReadTx) error {
			var err error
			rows, err = parity.Load(tx, f, pol, "tandem")
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if repos := pol.RepoTiers(rows); len(repos) == 0 || len(rows) < len(repos) {
			b.Fatalf("%d rows, %d repositories", len(rows), len(repos))
		}
	}
}

func fillParityHistory(b *testing.B, s *Store, now time.Time, n int) {
	rng := rand.New(rand.NewPCG(15, 15))
	start := now.Add(-28 * 24 * time.Hour)
	names := []func(job int, a arch.Arch) string{
		func(job int, a arch.Arch) string { return fmt.Sprintf("job%d (%s)", job, a) },
		func(job int, a arch.Arch) string {
			return fmt.Sprintf("job%d (ubuntu-24.04, %s)", job, map[arch.Arch]string{arch.AMD64: "x64", arch.ARM64: "arm64"}[a])
		},
		func(job int, a arch.Arch) string {
			return fmt.Sprintf("job%d-%s", job, map[arch.Arch]string{arch.AMD64: "x86_64", arch.ARM64: "aarch64"}[a])
		},
	}
	id := int64(1)
	batch := make([]store.Job, 0, 10000)
	flush := func() {
		if err := s.Update(context.Background(), func(tx store.Tx) error {
			for _, j := range batch {
				if err := tx.CreateJob(j, store.Event{}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	for made := 0; made < n; {
		repo := rng.IntN(300)
		job := rng.IntN(8)
		at := start.Add(time.Duration(float64(made) / float64(n) * float64(28*24*time.Hour)))
		sha := fmt.Sprintf("%016x%016x%08x", rng.Uint64(), rng.Uint64(), rng.Uint32())
		for _, a := range arch.Machines {
			if job == 7 && a == arch.ARM64 {
				continue
			}
			id++
			made++
			run := time.Duration(60+rng.IntN(1200)) * time.Second
			conclusion, state := "success", store.JobCompleted
			switch r := rng.Float64(); {
			case r < 0.03 || a == arch.ARM64 && r < 0.08:
				conclusion = "failure"
			case r < 0.09:
				conclusion, state = "cancelled", store.JobCancelled
			}
			org := fmt.Sprintf("org%d", repo%40)
			batch = append(batch, store.Job{ID: id, Org: org, Repo: fmt.Sprintf("%s/repo%d", org, repo), Workflow: "CI",
				Name: names[repo%3](job, a), Arch: a, VCPUs: 2, MemoryMiB: 4096, LabelKey: "tandem-" + string(a) + "-2cpu-4gb",
				State: state, Conclusion: conclusion, HeadSHA: sha, CreatedAt: at, QueuedAt: at, UpdatedAt: at.Add(run),
				StartedAt: at.Add(10 * time.Second), CompletedAt: at.Add(run)})
			if len(batch) == cap(batch) {
				flush()
			}
		}
	}
	flush()
}
