package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// TestUpgradeFromV1 opens a database left by a binary that knew only
// migration 0001, with data in it: Open applies the rest, the data stays,
// and the new tables work.
func TestUpgradeFromV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tandem.db")
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) < 2 || ms[1].Name != "0002_agents.sql" {
		t.Fatalf("migrations %v: want 0002_agents.sql second", ms)
	}

	// The old binary: schema 0001 and a few rows written with it.
	old, err := sql.Open("sqlite", dsn(path, url.Values{"_pragma": {"journal_mode(WAL)"}, "_txlock": {"immediate"}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctxT(t), old, ms[:1]); err != nil {
		t.Fatalf("migrate to 0001: %v", err)
	}
	if v, n := schemaVersion(t, old); v != 1 || n != 1 {
		t.Fatalf("old schema version %d in %d rows, want 1", v, n)
	}
	now := time.Now().UnixMilli()
	for _, w := range []struct {
		q    string
		args []any
	}{
		{`INSERT INTO hosts (id, arches, vcpus, memory_mib, state, reason, version, last_seen, created_at)
			VALUES ('host-a', '[]', 8, 16384, 'online', '', 'v0.1.0', ?, ?)`, []any{now, now}},
		{`INSERT INTO counters (name, value) VALUES ('n', 41)`, nil},
	} {
		if _, err := old.ExecContext(ctxT(t), w.q, w.args...); err != nil {
			t.Fatalf("write with the old schema: %v", err)
		}
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	// The new binary.
	s := openT(t, path, Options{})
	if v, n := schemaVersion(t, s.w); v != len(ms) || n != len(ms) {
		t.Errorf("schema version %d in %d rows, want %d", v, n, len(ms))
	}
	err = s.View(ctxT(t), func(tx store.ReadTx) error {
		h, err := tx.Host("host-a")
		if err != nil {
			return err
		}
		if h.Version != "v0.1.0" || h.MemoryMiB != 16384 {
			t.Errorf("host after upgrade: %+v", h)
		}
		c, err := tx.Counters()
		if err != nil {
			return err
		}
		if c["n"] != 41 {
			t.Errorf("counters after upgrade: %v", c)
		}
		ts, err := tx.EnrollTokens()
		if err != nil {
			return err
		}
		if len(ts) != 0 {
			t.Errorf("tokens after upgrade: %+v", ts)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read after upgrade: %v", err)
	}

	at := time.Now()
	err = s.Update(ctxT(t), func(tx store.Tx) error {
		if err := tx.CreateEnrollToken(store.EnrollToken{Hash: "t", CreatedAt: at, ExpiresAt: at.Add(time.Hour)}); err != nil {
			return err
		}
		if _, err := tx.UseEnrollToken("t", "host-a", at); err != nil {
			return err
		}
		return tx.PutAgentCredential(store.AgentCredential{HostID: "host-a", Hash: "c", CreatedAt: at})
	})
	if err != nil {
		t.Fatalf("enrol after upgrade: %v", err)
	}
	err = s.View(ctxT(t), func(tx store.ReadTx) error {
		c, err := tx.AgentCredential("host-a")
		if err == nil && c.Hash != "c" {
			t.Errorf("credential after upgrade: %+v", c)
		}
		return err
	})
	if err != nil {
		t.Fatalf("read credential after upgrade: %v", err)
	}
}

// The jobs that ended before the statistics were kept are added to them
// once, when the store opens (as after migration 0015).
func TestJobStatsBackfill(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tandem.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	err = s.Update(ctx, func(tx store.Tx) error {
		for i, run := range []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute} {
			j := store.Job{ID: int64(i + 1), Org: "acme", Repo: "acme/app", Name: "unit", Arch: "amd64", VCPUs: 2,
				State: store.JobCompleted, Conclusion: "success", QueuedAt: t0, StartedAt: t0, CompletedAt: t0.Add(run), UpdatedAt: t0,
				HeadSHA: "c0ffee"}
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		// The same logical job on arm64, failing on the same commit.
		return tx.CreateJob(store.Job{ID: 4, Org: "acme", Repo: "acme/app", Name: "unit (arm64)", Arch: "arm64", VCPUs: 2,
			State: store.JobCompleted, Conclusion: "failure", QueuedAt: t0, StartedAt: t0, CompletedAt: t0.Add(time.Minute),
			UpdatedAt: t0, HeadSHA: "c0ffee"}, store.Event{})
	})
	if err != nil {
		t.Fatal(err)
	}
	// As a database from before 0015: no statistics, no run times.
	for _, q := range []string{"DELETE FROM job_stats_daily", "DELETE FROM store_tasks", "UPDATE jobs SET run_ms = 0", "DELETE FROM parity_commits", "DELETE FROM parity_daily"} {
		if _, err := s.w.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	for range 2 { // the second open adds nothing
		if s, err = Open(ctx, path, Options{}); err != nil {
			t.Fatal(err)
		}
		err = s.View(ctx, func(tx store.ReadTx) error {
			st, err := tx.JobStats(store.StatsFilter{Since: t0, Until: t0, Level: store.ByJob, Repo: "acme/app"})
			if err != nil {
				return err
			}
			slices.SortFunc(st, func(a, b store.JobStats) int { return strings.Compare(string(a.Arch), string(b.Arch)) })
			slow, err := tx.SlowestRuns(store.StatsFilter{Since: t0, Until: t0}, 5)
			if len(st) != 2 || st[0].Jobs != 3 || st[0].Ran != 3 || st[0].VCPUMinutes != 12 || st[1].Failed != 1 ||
				len(slow) != 4 || slow[0].RunS != 180 {
				t.Errorf("after the backfill: %+v, slowest %+v", st, slow)
			}
			pc, err := tx.ParityCommits(store.ParityFilter{Since: t0, Until: t0})
			if len(pc) != 1 || pc[0].Logical != "unit" || pc[0].Compared != 1 || pc[0].ARM64Failed != 1 {
				t.Errorf("parity after the backfill: %+v", pc)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}

// Migration 0018 makes parity_daily from the commits a database at
// schema 17 recorded: the matrix reads the same sums as before.
func TestParityDailyMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tandem.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)
	id := int64(0)
	err = s.Update(ctx, func(tx store.Tx) error {
		for c := range 12 {
			for _, a := range []arch.Arch{arch.AMD64, arch.ARM64} {
				for attempt := range 1 + c%2 { // some commits run again, later
					id++
					end := t0.Add(time.Duration(c)*37*time.Minute + time.Duration(attempt)*time.Hour)
					conclusion := "success"
					if a == arch.ARM64 && (c+attempt)%3 == 0 {
						conclusion = "failure"
					}
					j := store.Job{ID: id, Org: "acme", Repo: "acme/app", Workflow: "ci", Name: "unit (" + string(a) + ")", Arch: a,
						VCPUs: 2, State: store.JobCompleted, Conclusion: conclusion, QueuedAt: end.Add(-time.Hour),
						StartedAt: end.Add(-time.Minute), CompletedAt: end, UpdatedAt: end, HeadSHA: fmt.Sprintf("%040x", c)}
					if err := tx.CreateJob(j, store.Event{}); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	read := func(s *Store) []store.CommitParity {
		var pc []store.CommitParity
		for _, d := range []time.Time{t0, t0.Add(24 * time.Hour)} { // the commits span two days
			err := s.View(ctx, func(tx store.ReadTx) error {
				got, err := tx.ParityCommits(store.ParityFilter{Since: d, Until: d})
				pc = append(pc, got...)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		return pc
	}
	want := read(s)
	if len(want) != 2 || want[0].Compared+want[1].Compared != 12 {
		t.Fatalf("before: %+v", want)
	}
	// Back to schema 17 (undoing 0021, 0020 and 0019 on the way).
	for _, q := range []string{"DROP TABLE job_retries", "DELETE FROM schema_migrations WHERE version = 21", "DROP INDEX runners_pool", "ALTER TABLE runners DROP COLUMN pool", "ALTER TABLE runners DROP COLUMN image",
		"ALTER TABLE runners DROP COLUMN ready_at", "ALTER TABLE runners DROP COLUMN claimed_at", "ALTER TABLE runners DROP COLUMN kept_until", "DELETE FROM schema_migrations WHERE version = 20",
		"DROP TABLE runner_commands", "ALTER TABLE hosts DROP COLUMN replica", "DELETE FROM schema_migrations WHERE version = 19",
		"DROP TABLE parity_daily", "DELETE FROM schema_migrations WHERE version = 18",
		"CREATE INDEX parity_commits_compared ON parity_commits (at, org, repo, workflow, logical, sha, amd64, arm64) WHERE amd64 <> 0 AND arm64 <> 0"} {
		if _, err := s.w.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s, err = Open(ctx, path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := read(s); !reflect.DeepEqual(got, want) {
		t.Errorf("after 0018:\n got %+v\nwant %+v", got, want)
	}
}
