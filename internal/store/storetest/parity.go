package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/archname"
	"github.com/tandem-ci/tandem/internal/store"
)

// parityHistory is commits of a few repositories whose logical jobs ran on
// one or both architectures, named in several matrix styles, some run
// again (a later attempt), some cancelled, some without a commit id.
func parityHistory(rng *rand.Rand, commits int) []store.Job {
	styles := []func(n string, a arch.Arch) string{
		func(n string, a arch.Arch) string { return fmt.Sprintf("%s (%s)", n, a) },
		func(n string, a arch.Arch) string {
			return map[arch.Arch]string{arch.AMD64: n + " (ubuntu, x64)", arch.ARM64: n + " (ubuntu, arm64)"}[a]
		},
		func(n string, a arch.Arch) string {
			return map[arch.Arch]string{arch.AMD64: n + "-x86_64", arch.ARM64: n + "-aarch64"}[a]
		},
	}
	var out []store.Job
	id := int64(5000)
	for c := range commits {
		sha := fmt.Sprintf("%040x", rng.Uint64()^uint64(c))
		repo := []string{"Acme/web", "acme/db", "bob/cli"}[rng.IntN(3)]
		day := at(time.Duration(rng.IntN(20*24)) * time.Hour)
		for n := range 3 {
			name := fmt.Sprintf("job%d", n)
			for _, a := range arch.Machines {
				if n == 2 && a == arch.ARM64 { // job2 is amd64 only
					continue
				}
				for attempt := 1; attempt <= 1+rng.IntN(2); attempt++ {
					id++
					end := day.Add(time.Duration(n*10+attempt*100+rng.IntN(50)) * time.Minute)
					j := store.Job{ID: id, RunAttempt: attempt, Org: strings.Split(repo, "/")[0], Repo: repo, Workflow: "ci",
						Name: styles[n%len(styles)](name, a), Arch: a, VCPUs: 2, MemoryMiB: 1024,
						HeadSHA: sha, State: store.JobCompleted, Conclusion: "success",
						CreatedAt: end.Add(-time.Hour), QueuedAt: end.Add(-time.Hour), StartedAt: end.Add(-30 * time.Minute),
						CompletedAt: end, UpdatedAt: end}
					switch rng.IntN(10) {
					case 0, 1:
						j.Conclusion = "failure"
					case 2:
						j.Conclusion = "timed_out"
					case 3:
						j.State, j.Conclusion = store.JobCancelled, "cancelled"
					case 4:
						j.HeadSHA = ""
					}
					if a == arch.ARM64 && rng.IntN(4) == 0 {
						j.Conclusion = "failure"
					}
					out = append(out, j)
				}
			}
		}
	}
	return out
}

// bruteParity computes what ParityCommits must say from the jobs, in the
// order they were stored: the latest-ending result per commit, logical
// job and architecture.
func bruteParity(jobs []store.Job, f store.ParityFilter) map[string]store.CommitParity {
	type commit struct {
		org, repo, wf, logical, sha string
		res                         [2]store.Result
		end                         [2]time.Time
	}
	commits := map[string]*commit{}
	var order []string
	for _, j := range jobs {
		r := store.ResultOf(j)
		if j.HeadSHA == "" || r == store.NoResult {
			continue
		}
		c := &commit{org: strings.ToLower(j.Org), repo: strings.ToLower(j.Repo), wf: j.Workflow, logical: archname.Logical(j.Name), sha: j.HeadSHA}
		k := strings.Join([]string{c.org, c.repo, c.wf, c.logical, c.sha}, "\x00")
		if old := commits[k]; old != nil {
			c = old
		} else {
			commits[k] = c
			order = append(order, k)
		}
		i := 0
		if j.Arch == arch.ARM64 {
			i = 1
		}
		if !j.CompletedAt.Before(c.end[i]) {
			c.res[i], c.end[i] = r, j.CompletedAt
		}
	}
	dayOf := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	out := map[string]store.CommitParity{}
	for _, k := range order {
		c := commits[k]
		if c.res[0] == store.NoResult || c.res[1] == store.NoResult {
			continue
		}
		end := c.end[0]
		if c.end[1].After(end) {
			end = c.end[1]
		}
		if dayOf(end).Before(dayOf(f.Since)) || dayOf(end).After(dayOf(f.Until)) || (f.Org != "" && !strings.EqualFold(f.Org, c.org)) {
			continue
		}
		lk := strings.Join([]string{c.org, c.repo, c.wf, c.logical}, "/")
		p := out[lk]
		p.Org, p.Repo, p.Workflow, p.Logical = c.org, c.repo, c.wf, c.logical
		p.Compared++
		if c.res[0] == store.Passed && c.res[1] == store.Failed {
			p.ARM64Failed++
		}
		if c.res[0] == store.Failed && c.res[1] == store.Passed {
			p.AMD64Failed++
		}
		if !end.Before(p.LatestAt) {
			p.LatestAt, p.LatestSHA, p.LatestAMD64, p.LatestARM64 = ms(end), c.sha, c.res[0], c.res[1]
		}
		out[lk] = p
	}
	return out
}

// ParityCommits agrees with a brute-force computation over a history of
// matrix jobs, for a period and an org (a job that can be opened again,
// lifecycle's failed, has no result, so none is ever taken back); a
// commit's jobs are found by HeadSHA.
func testParityCommits(t *testing.T, s store.Store) {
	jobs := parityHistory(rand.New(rand.NewPCG(3, 4)), 150)
	update(t, s, func(tx store.Tx) error {
		for _, j := range jobs {
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		return nil
	})
	check := func(what string) {
		for _, org := range []string{"", "ACME"} {
			f := store.ParityFilter{Since: at(3 * 24 * time.Hour), Until: at(15 * 24 * time.Hour), Org: org}
			want := bruteParity(jobs, f)
			var got []store.CommitParity
			view(t, s, func(tx store.ReadTx) error {
				var err error
				got, err = tx.ParityCommits(f)
				return err
			})
			if len(got) != len(want) {
				t.Errorf("%s, org %q: %d logical jobs, want %d", what, org, len(got), len(want))
			}
			for _, g := range got {
				w := want[strings.Join([]string{g.Org, g.Repo, g.Workflow, g.Logical}, "/")]
				if g != w {
					t.Errorf("%s, org %q:\n got %+v\nwant %+v", what, org, g, w)
				}
			}
		}
	}
	check("stored")
	// Prune keeps a commit's records for ParityExtraRetention past its
	// cut-off, then forgets them.
	if _, err := s.Prune(testCtx(t), at(3*24*time.Hour).UTC().Truncate(24*time.Hour).Add(store.ParityExtraRetention)); err != nil {
		t.Fatal(err)
	}
	check("pruned up to day 3")
	if _, err := s.Prune(testCtx(t), at(30*24*time.Hour).Add(store.ParityExtraRetention)); err != nil {
		t.Fatal(err)
	}
	view(t, s, func(tx store.ReadTx) error {
		got, err := tx.ParityCommits(store.ParityFilter{Since: at(0), Until: at(30 * 24 * time.Hour)})
		if len(got) != 0 {
			t.Errorf("after pruning everything: %+v", got)
		}
		return err
	})
	var one store.Job
	for _, j := range jobs {
		if j.HeadSHA != "" {
			one = j
			break
		}
	}
	view(t, s, func(tx store.ReadTx) error {
		got, err := tx.Jobs(store.JobFilter{HeadSHA: one.HeadSHA})
		if err != nil {
			return err
		}
		n := 0
		for _, j := range jobs {
			if j.HeadSHA == one.HeadSHA {
				n++
			}
		}
		if len(got) != n || n == 0 {
			t.Errorf("jobs of commit %s: %d, want %d", one.HeadSHA, len(got), n)
		}
		return nil
	})
}

// Tiers: the first evaluation records a change from nothing; the same tier
// again keeps its Since and takes the new reason; a move records a change;
// lists are scoped by org and repository without case.
func testRepoTiers(t *testing.T, s store.Store) {
	set := func(r store.RepoTier) bool {
		t.Helper()
		var changed bool
		update(t, s, func(tx store.Tx) error {
			var err error
			changed, err = tx.SetRepoTier(r)
			return err
		})
		return changed
	}
	if !set(store.RepoTier{Org: "Acme", Repo: "Acme/Web", Tier: "tier-2", Reason: "arm64 runs", CheckedAt: at(time.Hour)}) {
		t.Error("first tier: not a change")
	}
	if set(store.RepoTier{Org: "acme", Repo: "acme/web", Tier: "tier-2", Reason: "arm64 runs, 3 jobs", CheckedAt: at(2 * time.Hour)}) {
		t.Error("same tier: a change")
	}
	if !set(store.RepoTier{Org: "acme", Repo: "acme/web", Tier: "tier-1", Reason: "every job on both", CheckedAt: at(3 * time.Hour)}) {
		t.Error("a move: not a change")
	}
	set(store.RepoTier{Org: "bob", Repo: "bob/cli", Tier: "tier-3", Reason: "amd64 only", CheckedAt: at(4 * time.Hour)})
	view(t, s, func(tx store.ReadTx) error {
		tiers, err := tx.RepoTiers(store.TierFilter{})
		if err != nil {
			return err
		}
		want := []store.RepoTier{
			{Org: "acme", Repo: "acme/web", Tier: "tier-1", Reason: "every job on both", Since: ms(at(3 * time.Hour)), CheckedAt: ms(at(3 * time.Hour))},
			{Org: "bob", Repo: "bob/cli", Tier: "tier-3", Reason: "amd64 only", Since: ms(at(4 * time.Hour)), CheckedAt: ms(at(4 * time.Hour))},
		}
		if fmt.Sprint(tiers) != fmt.Sprint(want) {
			t.Errorf("tiers:\n got %+v\nwant %+v", tiers, want)
		}
		if got, err := tx.RepoTiers(store.TierFilter{Orgs: []string{"BOB"}}); err != nil || len(got) != 1 || got[0].Repo != "bob/cli" {
			t.Errorf("tiers in scope bob: %+v, %v", got, err)
		}
		if got, err := tx.RepoTiers(store.TierFilter{Repo: "ACME/WEB"}); err != nil || len(got) != 1 {
			t.Errorf("tiers of ACME/WEB: %+v, %v", got, err)
		}
		changes, err := tx.TierChanges(store.TierFilter{Org: "Acme"})
		if err != nil {
			return err
		}
		var moves []string
		for _, c := range changes {
			moves = append(moves, fmt.Sprintf("%s %q→%q %s @%v", c.Repo, c.From, c.To, c.Reason, c.At.Sub(ms(t0))))
		}
		if want := `[acme/web ""→"tier-2" arm64 runs @1h0m0s acme/web "tier-2"→"tier-1" every job on both @3h0m0s]`; fmt.Sprint(moves) != want {
			t.Errorf("changes of acme:\n got %s\nwant %s", moves, want)
		}
		if got, err := tx.TierChanges(store.TierFilter{Since: at(3 * time.Hour)}); err != nil || len(got) != 2 {
			t.Errorf("changes since 3h: %+v, %v", got, err)
		}
		if got, err := tx.TierChanges(store.TierFilter{Orgs: []string{}}); err != nil || len(got) != 0 {
			t.Errorf("changes in an empty scope: %+v, %v", got, err)
		}
		return nil
	})
	err := s.Update(testCtx(t), func(tx store.Tx) error {
		_, err := tx.SetRepoTier(store.RepoTier{Repo: "acme/web", CheckedAt: at(5 * time.Hour)})
		return err
	})
	if !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a tier without a name: %v", err)
	}
}
