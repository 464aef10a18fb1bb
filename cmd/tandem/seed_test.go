package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// tandem dev seed fills a database once: seeding again with the same seed
// adds nothing.
func TestDevSeed(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tandem.db")
	seedOnce := func() string {
		g := &globals{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		root := &cobra.Command{Use: "tandem", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(devCmd(g))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs([]string{"dev", "seed", "--database", db, "--days", "3", "--per-day", "40"})
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	first := seedOnce()
	if !strings.Contains(first, "jobs and") || strings.Contains(first, ": 0 jobs") {
		t.Errorf("first seed: %q", first)
	}
	if second := seedOnce(); !strings.Contains(second, ": 0 jobs and 0 profiles added") {
		t.Errorf("second seed: %q", second)
	}
	st, err := sqlite.Open(t.Context(), db, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.View(t.Context(), func(tx store.ReadTx) error {
		jobs, err := tx.Jobs(store.JobFilter{})
		if err != nil || len(jobs) < 100 {
			t.Errorf("%d jobs seeded, %v", len(jobs), err)
		}
		runs, err := tx.ProfiledRuns(store.ProfiledRunFilter{})
		if err != nil || len(runs) < 50 {
			t.Errorf("%d profiled runs, %v", len(runs), err)
		}
		return nil
	})
}
