package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/demo"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// seedBatch is how many jobs one transaction writes.
const seedBatch = 1000

func devSeedCmd(g *globals) *cobra.Command {
	var cfgPath, dbPath string
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "seed (--config FILE | --database PATH) [--days 28] [--per-day 300]",
		Short: "Fill a database with a realistic history of jobs and profiles, for a demo",
		Long: `Fill a Tandem database with a generated history: several organisations, both
architectures, failures (more on arm64 where a project is porting), rush hours, a
job that got slower this week, jobs asking for far more than they use and one
short of memory, with the last week's resource profiles. The dashboard,
tandem insights and tandem rightsize then have something to show on a new
machine. Job ids start at 9,000,000,000,000, far from GitHub's; seeding twice
with the same --seed adds nothing. Do not seed a production database.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (cfgPath == "") == (dbPath == "") {
				return errors.New("give --config or --database")
			}
			ctx := cmd.Context()
			st, where, err := seedStore(ctx, g, cfgPath, dbPath)
			if err != nil {
				return err
			}
			defer st.Close()
			h := demo.Make(time.Now().UTC(), o)
			jobs, profiles, err := seed(ctx, st, h)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d jobs and %d profiles added (%d and %d were there)\n",
				where, jobs, profiles, len(h.Jobs)-jobs, len(h.Profiles)-profiles)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "the config whose database (SQLite or PostgreSQL) to fill")
	f.StringVar(&dbPath, "database", "", "the SQLite database to fill")
	f.IntVar(&o.Days, "days", 28, "days of history, up to now")
	f.IntVar(&o.PerDay, "per-day", 300, "jobs a day, on average")
	f.Uint64Var(&o.Seed, "seed", 1, "the generator's seed")
	return cmd
}

// seedStore opens the database to fill: the config's, SQLite or
// PostgreSQL, or else the SQLite file dbPath. where names it for the
// report (a config's URL holds no password: config.Load refuses one).
func seedStore(ctx context.Context, g *globals, cfgPath, dbPath string) (_ store.Store, where string, _ error) {
	if cfgPath == "" {
		st, err := sqlite.Open(ctx, dbPath, sqlite.Options{})
		if err != nil {
			return nil, "", err
		}
		return st, filepath.Clean(dbPath), nil
	}
	cfg, dataDir, err := loadConfig(g, cfgPath)
	if err != nil {
		return nil, "", err
	}
	where = cfg.Database
	if !cfg.IsPostgres() {
		where = filepath.Clean(cfg.DatabasePath(dataDir))
	}
	st, err := openStore(ctx, cfg, dataDir, g.log)
	return st, where, err
}

// seed writes a history, skipping the jobs and profiles st has already,
// and says how many it added.
func seed(ctx context.Context, st store.Store, h demo.History) (jobs, profiles int, err error) {
	jobs, err = putBatches(ctx, st, h.Jobs, func(tx store.Tx, j store.Job) (bool, error) {
		err := tx.CreateJob(j, store.Event{Source: "demo", Reason: j.Reason})
		if errors.Is(err, store.ErrExists) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return jobs, 0, fmt.Errorf("seeding jobs: %w", err)
	}
	profiles, err = putBatches(ctx, st, h.Profiles, func(tx store.Tx, p store.Profile) (bool, error) {
		if _, err := tx.Profile(p.Runner); err == nil {
			return false, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
		return true, tx.PutProfile(p)
	})
	if err != nil {
		return jobs, profiles, fmt.Errorf("seeding profiles: %w", err)
	}
	return jobs, profiles, nil
}

// putBatches writes items seedBatch to a transaction with put, which says
// whether it added one, and returns how many were added.
func putBatches[T any](ctx context.Context, st store.Store, items []T, put func(store.Tx, T) (bool, error)) (int, error) {
	added := 0
	for lo := 0; lo < len(items); lo += seedBatch {
		n := 0
		err := st.Update(ctx, func(tx store.Tx) error {
			n = 0
			for _, it := range items[lo:min(lo+seedBatch, len(items))] {
				ok, err := put(tx, it)
				if err != nil {
					return err
				}
				if ok {
					n++
				}
			}
			return nil
		})
		if err != nil {
			return added, err
		}
		added += n
	}
	return added, nil
}
