package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// BenchmarkInsertDelivery measures webhook ingest: many concurrent callers
// (as many as in-flight HTTP requests) insert distinct 2 KiB deliveries.
// It reports deliveries/s and the latency percentiles a caller sees; the
// "serial" case (one caller) shows the cost of one commit without group
// commit, which is dominated by the fsync under synchronous=FULL.
func BenchmarkInsertDelivery(b *testing.B) {
	payload := []byte(`{"action":"queued","workflow_job":{` + strings.Repeat("x", 2048-40) + `}}`)
	for _, c := range []struct {
		name        string
		sync        Synchronous
		parallelism int // callers per GOMAXPROCS
	}{
		{"sync=FULL", SyncFull, 32},
		{"sync=NORMAL", SyncNormal, 32},
		{"sync=FULL/serial", SyncFull, 0},
		{"sync=NORMAL/serial", SyncNormal, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), Options{Synchronous: c.sync})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			var (
				seq  atomic.Int64
				mu   sync.Mutex
				lats []time.Duration
			)
			insert := func(local *[]time.Duration) bool {
				n := seq.Add(1)
				start := time.Now()
				ok, err := s.InsertDelivery(ctx, store.Delivery{GUID: fmt.Sprintf("bench-%d", n),
					Event: "workflow_job", Payload: payload, ReceivedAt: start})
				*local = append(*local, time.Since(start))
				if err != nil || !ok {
					b.Errorf("InsertDelivery: inserted=%v err=%v", ok, err)
					return false
				}
				return true
			}
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			start := time.Now()
			if c.parallelism == 0 {
				for b.Loop() {
					if !insert(&lats) {
						return
					}
				}
			} else {
				b.SetParallelism(c.parallelism)
				b.RunParallel(func(pb *testing.PB) {
					local := make([]time.Duration, 0, 1024)
					for pb.Next() && insert(&local) {
					}
					mu.Lock()
					lats = append(lats, local...)
					mu.Unlock()
				})
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if len(lats) == 0 {
				return
			}
			slices.Sort(lats)
			pct := func(p float64) float64 {
				return float64(lats[int(p*float64(len(lats)-1))]) / float64(time.Millisecond)
			}
			b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			if n := s.batches.Load(); n > 0 {
				b.ReportMetric(float64(s.batched.Load())/float64(n), "deliveries/commit")
			}
		})
	}
}
