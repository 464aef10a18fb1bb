package storetest

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// statsHistory is a generated history: jobs of three orgs (names in
// mixed case), repositories, workflows, both architectures, GitHub's times
// or only Tandem's, ended in and around the period, some never run.
func statsHistory(rng *rand.Rand, n int) []store.Job {
	var out []store.Job
	orgs := []string{"Acme", "acme", "Bob", "carol"}
	for i := range n {
		org := orgs[rng.IntN(len(orgs))]
		repo := fmt.Sprintf("%s/r%d", org, rng.IntN(3))
		if rng.IntN(2) == 0 {
			repo = strings.ToUpper(repo[:1]) + repo[1:]
		}
		created := at(time.Duration(rng.IntN(30*24)) * time.Hour)
		j := store.Job{ID: int64(1000 + i), Org: org, Repo: repo, Workflow: fmt.Sprintf("wf%d", rng.IntN(2)),
			Name: fmt.Sprintf("job%d", rng.IntN(3)), Arch: []arch.Arch{arch.AMD64, arch.ARM64}[rng.IntN(2)],
			VCPUs: float64(1 + rng.IntN(4)), MemoryMiB: 1024, CreatedAt: created, QueuedAt: created.Add(time.Second),
			State: store.JobCompleted, UpdatedAt: created}
		start := created.Add(time.Duration(rng.IntN(600)) * time.Second)
		end := start.Add(time.Duration(1+rng.IntN(3600)) * time.Second)
		switch rng.IntN(6) {
		case 0: // never ran
			j.State, j.CompletedAt = store.JobFailed, end
		case 1: // Tandem's times only
			j.StartedAt, j.CompletedAt, j.Conclusion = start, end, "failure"
		case 2: // no GitHub created_at
			j.CreatedAt = time.Time{}
			j.StartedAt, j.CompletedAt, j.Conclusion = start, end, "success"
		default:
			j.StartedAt, j.CompletedAt = start.Add(time.Second), end.Add(time.Second)
			j.GitHubStartedAt, j.GitHubCompletedAt, j.Conclusion = start, end, "success"
		}
		out = append(out, j)
	}
	return out
}

// bruteStats computes what JobStats must say, job by job: the jobs that
// ended on the period's UTC days, percentiles by nearest rank over the
// sorted times, reported as their bucket's time.
func bruteStats(jobs []store.Job, f store.StatsFilter) map[store.StatsKey]store.JobStats {
	dayOf := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	type acc struct {
		s          store.JobStats
		run, queue []float64
	}
	groups := map[store.StatsKey]*acc{}
	for _, j := range jobs {
		if j.CompletedAt.IsZero() || !j.State.Terminal() || dayOf(j.CompletedAt).Before(dayOf(f.Since)) || dayOf(j.CompletedAt).After(dayOf(f.Until)) {
			continue
		}
		if f.Org != "" && !strings.EqualFold(j.Org, f.Org) {
			continue
		}
		k := store.StatsKey{Org: strings.ToLower(j.Org), Arch: j.Arch}
		if f.Level != store.ByOrg {
			k.Repo = strings.ToLower(j.Repo)
		}
		if f.Level == store.ByWorkflow || f.Level == store.ByJob {
			k.Workflow = j.Workflow
		}
		if f.Level == store.ByJob {
			k.Name = j.Name
		}
		g := groups[k]
		if g == nil {
			g = &acc{s: store.JobStats{StatsKey: k}}
			groups[k] = g
		}
		g.s.Jobs++
		st, en, cr := j.StartedAt, j.CompletedAt, j.CreatedAt
		if !j.GitHubStartedAt.IsZero() {
			st = j.GitHubStartedAt
		}
		if !j.GitHubCompletedAt.IsZero() {
			en = j.GitHubCompletedAt
		}
		if cr.IsZero() {
			cr = j.QueuedAt
		}
		if st.IsZero() || en.Before(st) {
			continue
		}
		run := float64(en.UnixMilli()-st.UnixMilli()) / 1000
		g.s.Ran++
		g.run = append(g.run, run)
		g.s.VCPUMinutes += j.VCPUs * run / 60
		switch j.Conclusion {
		case "success":
			g.s.Succeeded++
		case "failure", "timed_out":
			g.s.Failed++
		}
		if !st.Before(cr) {
			g.queue = append(g.queue, float64(st.UnixMilli()-cr.UnixMilli())/1000)
		}
	}
	rank := func(xs []float64, q float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		s := slices.Clone(xs)
		slices.Sort(s)
		return store.BucketTime(store.TimeBucket(s[int(math.Ceil(q*float64(len(s))))-1]))
	}
	out := map[store.StatsKey]store.JobStats{}
	for k, g := range groups {
		g.s.RunP50, g.s.RunP95 = rank(g.run, 0.5), rank(g.run, 0.95)
		g.s.QueueP50, g.s.QueueP95 = rank(g.queue, 0.5), rank(g.queue, 0.95)
		out[k] = g.s
	}
	return out
}

// JobStats agrees with a brute-force computation at every level, for a
// period and an org; SlowestRuns with sorting by hand.
func testJobStats(t *testing.T, s store.Store) {
	jobs := statsHistory(rand.New(rand.NewPCG(7, 8)), 400)
	update(t, s, func(tx store.Tx) error {
		for _, j := range jobs {
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		return nil
	})
	// Jobs opened again after they ended count no more.
	reopened := 0
	update(t, s, func(tx store.Tx) error {
		for i, j := range jobs {
			if j.State != store.JobFailed || reopened == 5 {
				continue
			}
			j.State, j.CompletedAt, j.UpdatedAt = store.JobQueued, time.Time{}, j.UpdatedAt.Add(time.Second)
			if err := tx.UpdateJob(j, store.Event{}); err != nil {
				return err
			}
			jobs[i] = j
			reopened++
		}
		return nil
	})
	if reopened != 5 {
		t.Fatalf("%d jobs reopened", reopened)
	}
	period := store.StatsFilter{Since: at(7 * 24 * time.Hour), Until: at(21 * 24 * time.Hour)}
	for _, level := range store.StatsLevels {
		for _, org := range []string{"", "ACME"} {
			f := period
			f.Level, f.Org = level, org
			want := bruteStats(jobs, f)
			var got []store.JobStats
			view(t, s, func(tx store.ReadTx) error {
				var err error
				got, err = tx.JobStats(f)
				return err
			})
			if len(got) != len(want) {
				t.Errorf("level %s org %q: %d groups, want %d", level, org, len(got), len(want))
			}
			for _, g := range got {
				w := want[g.StatsKey]
				if g.Jobs != w.Jobs || g.Ran != w.Ran || g.Succeeded != w.Succeeded || g.Failed != w.Failed || math.Abs(g.VCPUMinutes-w.VCPUMinutes) > 1e-6 ||
					g.RunP50 != w.RunP50 || g.RunP95 != w.RunP95 || g.QueueP50 != w.QueueP50 || g.QueueP95 != w.QueueP95 {
					t.Errorf("level %s org %q group %+v:\n got %+v\nwant %+v", level, org, g.StatsKey, g, w)
				}
			}
		}
	}
	var slow []store.SlowRun
	view(t, s, func(tx store.ReadTx) error {
		var err error
		slow, err = tx.SlowestRuns(period, 5)
		if _, e := tx.JobStats(store.StatsFilter{Level: "team"}); !errors.Is(e, store.ErrInvalid) {
			t.Errorf("an unknown level: %v", e)
		}
		if _, e := tx.SlowestRuns(period, 0); !errors.Is(e, store.ErrInvalid) {
			t.Errorf("n 0: %v", e)
		}
		return err
	})
	var runs []float64
	dayOf := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	for _, j := range jobs {
		if !j.State.Terminal() || j.CompletedAt.IsZero() || j.StartedAt.IsZero() ||
			dayOf(j.CompletedAt).Before(dayOf(period.Since)) || dayOf(j.CompletedAt).After(dayOf(period.Until)) {
			continue
		}
		st, en := j.StartedAt, j.CompletedAt
		if !j.GitHubStartedAt.IsZero() {
			st, en = j.GitHubStartedAt, j.GitHubCompletedAt
		}
		runs = append(runs, float64(en.UnixMilli()-st.UnixMilli())/1000)
	}
	slices.SortFunc(runs, func(a, b float64) int { return cmp.Compare(b, a) })
	if len(slow) != 5 {
		t.Fatalf("%d slowest runs", len(slow))
	}
	for i, r := range slow {
		if r.RunS != runs[i] {
			t.Errorf("slowest %d: %v s, want %v", i, r.RunS, runs[i])
		}
	}
}

// CountQueuedSince counts by when Tandem learnt of a job, within an org
// scope.
func testCountQueuedSince(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		for i, org := range []string{"Acme", "acme", "bob", "acme"} {
			j := minJob(int64(i+1), store.JobQueued)
			j.Org, j.QueuedAt = org, at(time.Duration(i)*time.Hour)
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.ReadTx) error {
		for _, c := range []struct {
			since time.Duration
			orgs  []string
			want  int
		}{{0, nil, 4}, {time.Hour, nil, 3}, {0, []string{"ACME"}, 3}, {2 * time.Hour, []string{"acme", "bob"}, 2}, {0, []string{}, 0}} {
			n, err := tx.CountQueuedSince(at(c.since), c.orgs)
			if err != nil || n != c.want {
				t.Errorf("since %v orgs %v: %d, %v; want %d", c.since, c.orgs, n, err, c.want)
			}
		}
		return nil
	})
}
