// Package parity says how well each project runs on Arm64 beside x86_64:
// a matrix of every logical job (a job name without its architecture
// words, archname.Logical) with its numbers on each architecture, a
// status, support tiers per repository rolled up per organisation, the
// release gate of one commit, a badge and a report.
//
// It is pure: the store computes the sums (store.JobStats per job name and
// architecture, store.CommitParity per logical job) and this package
// combines them. The rules:
//
//   - A logical job's status is, in order: "amd64 only" or "arm64 only"
//     when it ran on one architecture in the period; "arm64 failing" when
//     the latest commit that has a result on both failed on arm64 and
//     passed on amd64 (it is broken now); "arm64 flaky" when its arm64
//     success rate is lower than its amd64 one by more than the policy's
//     margin; "both" otherwise.
//   - A success rate counts the runs that passed or failed (GitHub's
//     success against failure or timed_out): a cancelled run says nothing
//     of the architecture.
//   - A repository's tier is the first of the policy's tiers whose every
//     condition its logical jobs meet; the last tier has none, so every
//     repository has one. An organisation's tier is the lowest of its
//     repositories'.
package parity

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/archname"
	"github.com/tandem-ci/tandem/internal/store"
)

// Status is where a logical job stands.
type Status string

const (
	Both         Status = "both"
	AMD64Only    Status = "amd64 only"
	ARM64Only    Status = "arm64 only"
	ARM64Failing Status = "arm64 failing"
	ARM64Flaky   Status = "arm64 flaky"
)

// Statuses lists them, worst first (for sorting and summaries).
var Statuses = []Status{ARM64Failing, AMD64Only, ARM64Flaky, ARM64Only, Both}

// ArchStats is a logical job's numbers on one architecture.
type ArchStats struct {
	Runs   int `json:"runs"` // that ran, in any conclusion
	Passed int `json:"passed"`
	Failed int `json:"failed"`
	// SuccessRate is Passed / (Passed + Failed); -1 when none was either.
	SuccessRate float64 `json:"success_rate"`
	RunP50      float64 `json:"run_p50_s"`
	RunP95      float64 `json:"run_p95_s"`
	QueueP50    float64 `json:"queue_p50_s"`
	Emulated    int     `json:"emulated_runs"` // runs whose VM emulated the architecture
	// Names are the job names that were matched into this logical job.
	Names  []string `json:"names"`
	Labels string   `json:"labels,omitempty"` // runs-on label key of the latest run

	run, queue store.Histogram
}

// Row is one logical job of the matrix.
type Row struct {
	Org      string     `json:"org"`
	Repo     string     `json:"repo"`
	Workflow string     `json:"workflow"`
	Job      string     `json:"job"` // the logical name
	AMD64    *ArchStats `json:"amd64,omitempty"`
	ARM64    *ArchStats `json:"arm64,omitempty"`
	// Ratio is arm64's median run time over amd64's (0: not both). Mind
	// Emulated: an emulated run is many times slower than a native one.
	Ratio  float64 `json:"arm64_amd64_ratio,omitempty"`
	Status Status  `json:"status"`
	// Commits compared (a result on both architectures), those where
	// arm64 failed and amd64 passed, and the latest compared.
	Compared    int    `json:"commits_compared"`
	ARM64Failed int    `json:"commits_arm64_failed"`
	LatestSHA   string `json:"latest_compared_sha,omitempty"`
	// Nudge is, for an amd64-only job, the runs-on change that adds arm64.
	Nudge string `json:"nudge,omitempty"`
}

// Arch returns the row's numbers on a, nil when it did not run there.
func (r *Row) Arch(a arch.Arch) *ArchStats {
	if a == arch.ARM64 {
		return r.ARM64
	}
	return r.AMD64
}

// Matrix builds the rows from the store's statistics per job name
// (store.ByJob) and its commit sums, sorted by org, repo, workflow, job.
// prefix is the label prefix of Tandem's runs-on labels (for nudges).
func Matrix(stats []store.JobStats, commits []store.CommitParity, pol Policy, prefix string) []Row {
	type key struct{ org, repo, wf, job string }
	rows := map[key]*Row{}
	for _, s := range stats {
		if !s.Arch.IsMachine() || s.Ran == 0 {
			continue
		}
		k := key{s.Org, s.Repo, s.Workflow, archname.Logical(s.Name)}
		r := rows[k]
		if r == nil {
			r = &Row{Org: k.org, Repo: k.repo, Workflow: k.wf, Job: k.job}
			rows[k] = r
		}
		as := r.Arch(s.Arch)
		if as == nil {
			as = &ArchStats{run: store.Histogram{}, queue: store.Histogram{}}
			if s.Arch == arch.ARM64 {
				r.ARM64 = as
			} else {
				r.AMD64 = as
			}
		}
		as.Runs += s.Ran
		as.Passed += s.Succeeded
		as.Failed += s.Failed
		as.Emulated += s.Emulated
		as.Names = append(as.Names, s.Name)
		if s.Labels != "" {
			as.Labels = s.Labels
		}
		// The store gives percentiles, not histograms: a logical job
		// matched from several names weighs each name's percentile by its
		// runs (exact when, as usual, there is one name per architecture).
		as.run.Add(s.RunP50, s.Ran)
		as.queue.Add(s.QueueP50, s.Ran)
		as.RunP95 = max(as.RunP95, s.RunP95)
	}
	failing := map[*Row]bool{} // the latest compared commit failed on arm64 only
	for _, c := range commits {
		r := rows[key{c.Org, c.Repo, c.Workflow, c.Logical}]
		if r == nil {
			continue // ended in the period but ran outside it: no numbers
		}
		r.Compared, r.ARM64Failed, r.LatestSHA = c.Compared, c.ARM64Failed, c.LatestSHA
		failing[r] = c.LatestAMD64 == store.Passed && c.LatestARM64 == store.Failed
	}
	out := make([]Row, 0, len(rows))
	for _, r := range rows {
		for _, as := range []*ArchStats{r.AMD64, r.ARM64} {
			if as == nil {
				continue
			}
			slices.Sort(as.Names)
			as.Names = slices.Compact(as.Names)
			as.SuccessRate = rate(as.Passed, as.Failed)
			if len(as.run) > 0 {
				as.RunP50, as.QueueP50 = as.run.Quantile(0.5), as.queue.Quantile(0.5)
			}
		}
		r.Status = status(r, failing[r], pol)
		if r.AMD64 != nil && r.ARM64 != nil && r.AMD64.RunP50 > 0 {
			r.Ratio = r.ARM64.RunP50 / r.AMD64.RunP50
		}
		if r.Status == AMD64Only {
			r.Nudge = Nudge(r.AMD64.Labels, prefix)
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.Org, b.Org), cmp.Compare(a.Repo, b.Repo), cmp.Compare(a.Workflow, b.Workflow), cmp.Compare(a.Job, b.Job))
	})
	return out
}

// Load builds the matrix of the jobs f selects (f.Level is ignored) from
// the store's sums, within tx.
func Load(tx store.ReadTx, f store.StatsFilter, pol Policy, prefix string) ([]Row, error) {
	f.Level = store.ByJob
	stats, err := tx.JobStats(f)
	if err != nil {
		return nil, err
	}
	commits, err := tx.ParityCommits(f)
	if err != nil {
		return nil, err
	}
	return Matrix(stats, commits, pol, prefix), nil
}

func rate(passed, failed int) float64 {
	if passed+failed == 0 {
		return -1
	}
	return float64(passed) / float64(passed+failed)
}

// status applies the rules of the package comment; failing says that the
// latest compared commit failed on arm64 and passed on amd64.
func status(r *Row, failing bool, pol Policy) Status {
	switch {
	case r.ARM64 == nil:
		return AMD64Only
	case r.AMD64 == nil:
		return ARM64Only
	case failing:
		return ARM64Failing
	case r.ARM64.SuccessRate >= 0 && r.AMD64.SuccessRate >= 0 && r.AMD64.SuccessRate-r.ARM64.SuccessRate > pol.FlakyMargin:
		return ARM64Flaky
	}
	return Both
}

// Nudge is the runs-on change that runs a job of these labels (a label
// key: lower case, comma-separated) on both architectures: a matrix over
// Tandem's label for amd64 and the same size on arm64. "" when no label
// is Tandem's amd64 one.
func Nudge(labels, prefix string) string {
	amd := ""
	for _, l := range strings.Split(labels, ",") {
		if strings.HasPrefix(l, prefix+"-amd64") {
			amd = l
			break
		}
	}
	if amd == "" {
		return ""
	}
	arm := prefix + "-arm64" + strings.TrimPrefix(amd, prefix+"-amd64")
	return fmt.Sprintf("strategy:\n  matrix:\n    runner: [%s, %s]\nruns-on: ${{ matrix.runner }}", amd, arm)
}

// Period is the UTC days a view covers: the last days of them, today's so
// far included (the store keeps statistics per day).
func Period(now time.Time, days int) (since, until time.Time) {
	today := now.UTC().Truncate(24 * time.Hour)
	return today.AddDate(0, 0, 1-days), now.UTC()
}
