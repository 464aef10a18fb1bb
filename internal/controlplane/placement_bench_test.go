package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// BenchmarkPlacement10k times one placement pass over 10,000 queued jobs
// and 1,000 connected hosts (16 vCPUs, 64 GiB each; the jobs take 1 vCPU
// and 1 GiB), end to end in the store: reading the queue, the live runners
// and the hosts, the placer's plan, and writing 10,000 runners, job
// updates and their events in one transaction. Each iteration is a fresh
// store. SQLite (synchronous=FULL) and PostgreSQL (fsync on) side by side:
//
//	go test -run x -bench Placement10k -benchtime 3x ./internal/controlplane/
func BenchmarkPlacement10k(b *testing.B) {
	pg := pgtest.StartDurableServer(b) // here: a sub-benchmark runs several times
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run("store="+kind, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				var st store.Store
				var err error
				if kind == "sqlite" {
					st, err = sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
				} else {
					st, err = postgres.Open(context.Background(), postgres.Options{URL: pg.NewDatabase(b)})
				}
				if err != nil {
					b.Fatal(err)
				}
				benchPlacement(b, st, 10000, 1000)
				st.Close()
			}
		})
	}
}

// nullAgent takes launches and forgets them.
type nullAgent struct{}

func (nullAgent) Launch(agentapi.Assignment) error          { return errors.New("bench: no VM") }
func (nullAgent) Configure(string, map[string]string) error { return nil }
func (nullAgent) Stop(string, string) error                 { return nil }

func benchPlacement(b *testing.B, st store.Store, jobs, hosts int) {
	ctx := context.Background()
	parser, _ := labels.NewParser("tandem", 64, 1<<20)
	gh, _ := github.New(github.Config{BaseURL: "http://127.0.0.1:1/", AppID: 1})
	cp, err := controlplane.New(controlplane.Config{Store: st, GitHub: gh, WebhookSecret: []byte("bench-secret-bench-secret"),
		Labels: parser, Runner: controlplane.RunnerSpec{Command: []string{"x"}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	for i := range hosts {
		h := store.Host{ID: fmt.Sprintf("host-%04d", i), VCPUs: 16, MemoryMiB: 64 << 10, Arches: []store.ArchSupport{{Arch: arch.AMD64}}}
		if err := cp.AttachHost(ctx, h, nullAgent{}, agentapi.Inventory{}); err != nil {
			b.Fatal(err)
		}
	}
	ls := []string{"tandem-amd64-1cpu-1gb"}
	now := time.Now().UTC()
	err = st.Update(ctx, func(tx store.Tx) error {
		for i := range jobs {
			j := store.Job{ID: int64(i + 1), RunID: int64(i + 1), RunAttempt: 1, Installation: 1, Org: fmt.Sprintf("org%d", i%20),
				Repo: fmt.Sprintf("org%d/repo%d", i%20, i%100), Name: "build", Workflow: "CI", Labels: ls, LabelKey: store.LabelKey(ls),
				Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 1024, State: store.JobQueued, CreatedAt: now, QueuedAt: now, UpdatedAt: now}
			if err := tx.CreateJob(j, store.Event{Source: "bench"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	if err := cp.Dispatch(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cp.Quiesce()
	var live []store.Runner
	if err := st.View(ctx, func(tx store.ReadTx) error {
		live, err = tx.Runners(store.RunnerFilter{})
		return err
	}); err != nil || len(live) != jobs {
		b.Fatalf("%d runners after the pass, want %d (%v)", len(live), jobs, err)
	}
}
