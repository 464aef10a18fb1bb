package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/demo"
	"github.com/tandem-ci/tandem/internal/store"
)

// BenchmarkJobStats computes a week's and four weeks' statistics by job
// over a store of 100,000 jobs (a four-week history).
//
//	go test -run '^$' -bench JobStats -benchtime 5x ./internal/store/sqlite
func BenchmarkJobStats(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), Options{Synchronous: SyncNormal})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	h := demo.Make(now, demo.Options{Days: 28, PerDay: 3600, ProfileDays: -1, Seed: 7})
	for lo := 0; lo < len(h.Jobs); lo += 5000 {
		if err := s.Update(context.Background(), func(tx store.Tx) error {
			for _, j := range h.Jobs[lo:min(lo+5000, len(h.Jobs))] {
				if err := tx.CreateJob(j, store.Event{}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		days  int
		level store.StatsLevel
	}{{"7d-by-job", 7, store.ByJob}, {"28d-by-repo", 28, store.ByRepo}} {
		b.Run(c.name, func(b *testing.B) {
			f := store.StatsFilter{Since: now.Add(-time.Duration(c.days) * 24 * time.Hour), Until: now, Level: c.level}
			for range b.N {
				if err := s.View(context.Background(), func(tx store.ReadTx) error {
					_, err := tx.JobStats(f)
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
