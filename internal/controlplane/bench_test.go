package controlplane_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/stats"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// queuedPayload is a workflow_job "queued" webhook of the size GitHub sends
// (~3 KiB: the job, the repository with its URLs, the organisation, sender).
func queuedPayload(jobID int64) []byte {
	pad := bytes.Repeat([]byte("x"), 1800) // repository and sender URLs, node ids, ...
	return []byte(fmt.Sprintf(`{"action":"queued","workflow_job":{"id":%d,"run_id":%d,"run_attempt":1,`+
		`"run_url":"https://api.example.test/repos/acme/app/actions/runs/%d","node_id":"CR_%d","head_sha":"0123456789abcdef0123456789abcdef01234567",`+
		`"status":"queued","conclusion":null,"created_at":"2026-11-26T10:00:00Z","started_at":"2026-11-26T10:00:00Z","completed_at":null,`+
		`"name":"build","steps":[],"labels":["tandem-arm64-4cpu-8gb"],"runner_id":null,"runner_name":null,"runner_group_id":null,`+
		`"runner_group_name":null,"workflow_name":"CI","head_branch":"main"},`+
		`"repository":{"id":1,"node_id":"R_1","name":"app","full_name":"acme/app","private":true,"owner":{"login":"acme","id":2,"type":"Organization"},"description":"%s"},`+
		`"organization":{"login":"acme","id":2},"installation":{"id":3,"node_id":"I_3"},"sender":{"login":"dev","type":"User"}}`,
		jobID, jobID, jobID, jobID, pad))
}

// BenchmarkWebhookIngest measures signed workflow_job webhooks through the
// whole ingest path over loopback HTTP: read, verify, parse, durable insert,
// 202, while the apply loop and placement passes run against the same
// store. Each sub-benchmark has a number of concurrent senders; it reports
// webhooks/s and latency percentiles. Run:
//
//	go test -run x -bench WebhookIngest -benchtime 20000x ./internal/controlplane/
//
// The store is SQLite (synchronous=FULL) or PostgreSQL with its durable
// defaults (fsync on; a server the benchmark starts, on a unix socket):
//
//	go test -run x -bench 'WebhookIngest/store=postgres' -benchtime 20000x ./internal/controlplane/
func BenchmarkWebhookIngest(b *testing.B) {
	pg := pgtest.StartDurableServer(b)
	stores := []struct {
		name string
		open func(b *testing.B) (store.Store, error)
	}{
		{"sqlite", func(b *testing.B) (store.Store, error) {
			return sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
		}},
		{"postgres", func(b *testing.B) (store.Store, error) {
			return postgres.Open(context.Background(), postgres.Options{URL: pg.NewDatabase(b), MaxConns: 64})
		}},
	}
	for _, sk := range stores {
		b.Run("store="+sk.name, func(b *testing.B) {
			for _, senders := range []int{1, 8, 32, 128, 512} {
				b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
					st, err := sk.open(b)
					if err != nil {
						b.Fatal(err)
					}
					defer st.Close()
					benchIngest(b, st, senders)
				})
			}
		})
	}
}

func benchIngest(b *testing.B, st store.Store, senders int) {
	secret := []byte("bench-secret-bench-secret")
	parser, _ := labels.NewParser("tandem", 2, 4096)
	gh, _ := github.New(github.Config{BaseURL: "http://127.0.0.1:1/", AppID: 1})
	cp, err := controlplane.New(controlplane.Config{Store: st, GitHub: gh, WebhookSecret: secret, Labels: parser,
		Runner:    controlplane.RunnerSpec{Command: []string{"x"}},
		Reconcile: controlplane.Intervals{MissedWebhooks: -1, FailedDeliveries: -1, Orphans: -1},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cp.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	srv := httptest.NewServer(cp.Handler())
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: senders, MaxConnsPerHost: senders}}

	// Bodies and signatures are made before the clock starts.
	type req struct {
		body []byte
		sig  string
		guid string
	}
	reqs := make([]req, b.N)
	base := time.Now().UnixNano() % 1e9 * 1000
	for i := range reqs {
		body := queuedPayload(base + int64(i) + 1)
		reqs[i] = req{body, sign(secret, body), fmt.Sprintf("bench-%d-%d", base, i)}
	}
	lat := make([]time.Duration, b.N)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < senders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				r := reqs[i]
				hr, _ := http.NewRequest("POST", srv.URL+"/webhook", bytes.NewReader(r.body))
				hr.Header.Set("Content-Type", "application/json")
				hr.Header.Set("X-GitHub-Event", "workflow_job")
				hr.Header.Set("X-GitHub-Delivery", r.guid)
				hr.Header.Set("X-Hub-Signature-256", r.sig)
				t0 := time.Now()
				resp, err := client.Do(hr)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				lat[i] = time.Since(t0)
				if err != nil || resp.StatusCode != http.StatusAccepted {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d webhooks not accepted", n, b.N)
	}
	pct := func(q float64) float64 { return float64(stats.Quantile(lat, q).Microseconds()) / 1000 }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "webhooks/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(0, "ns/op")
}

func sign(secret, body []byte) string {
	r := &rig{secret: secret}
	return r.sign(body)
}
