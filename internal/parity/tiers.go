package parity

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Policy is the parity section of the config: the period views cover, the
// flaky margin, the support tiers, and who may see badges.
type Policy struct {
	// Days is the period of the matrix and of tiers, in UTC days (default
	// 14).
	Days int `yaml:"days"`
	// FlakyMargin: a job whose arm64 success rate is below its amd64 one
	// by more than this (0 to 1) is "arm64 flaky" (default 0.05).
	FlakyMargin float64 `yaml:"flaky_margin"`
	// Tiers, best first; a repository gets the first whose every
	// condition holds. The last must have none. Default: DefaultTiers.
	Tiers []Tier `yaml:"tiers"`
	// PublicBadges serves /badge/parity/ORG/REPO.svg without a token, for
	// public repositories only. Off by default: a badge then needs a token
	// or a dashboard session that sees the organisation.
	PublicBadges bool `yaml:"public_badges"`
	// CommitStatus has the App set each commit's "tandem/parity" status
	// to the release gate's verdict (both architectures required) as its
	// jobs end. Off by default: the App then needs "Commit statuses:
	// write".
	CommitStatus bool `yaml:"commit_status"`
}

// Tier is one support tier and its conditions (all must hold; a zero
// condition does not apply).
type Tier struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// EveryJobOnBoth: every logical job ran on both architectures.
	EveryJobOnBoth bool `yaml:"every_job_on_both"`
	// ARM64Runs: at least one logical job ran on arm64.
	ARM64Runs bool `yaml:"arm64_runs"`
	// MinSuccess: every logical job passed at least this share (0 to 1) of
	// its decided runs, on each architecture it ran on.
	MinSuccess float64 `yaml:"min_success"`
	// MinRuns: every logical job ran at least this often on each
	// architecture it ran on.
	MinRuns int `yaml:"min_runs"`
	// NoFailing: no logical job is "arm64 failing".
	NoFailing bool `yaml:"no_failing"`
}

// DefaultTiers: Tier 1, first-class Arm64 (every job on both, each passing
// ≥ 95% of ≥ 10 runs on each, none failing on arm64 only); Tier 2, Arm64
// runs; Tier 3, x86_64 only.
var DefaultTiers = []Tier{
	{Name: "tier-1", Description: "every job runs and passes on both architectures", EveryJobOnBoth: true,
		MinSuccess: 0.95, MinRuns: 10, NoFailing: true},
	{Name: "tier-2", Description: "Arm64 runs, below tier 1", ARM64Runs: true},
	{Name: "tier-3", Description: "x86_64 only"},
}

// Defaults fills what is unset.
func (p *Policy) Defaults() {
	if p.Days == 0 {
		p.Days = 14
	}
	if p.FlakyMargin == 0 {
		p.FlakyMargin = 0.05
	}
	if len(p.Tiers) == 0 {
		p.Tiers = slices.Clone(DefaultTiers)
	}
}

var tierName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}$`)

// Validate reports every problem, each naming its key under prefix.
func (p *Policy) Validate(prefix string) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(prefix+"."+format, a...)) }
	if p.Days < 1 || p.Days > 90 {
		bad("days %d: want 1 to 90", p.Days)
	}
	if p.FlakyMargin < 0 || p.FlakyMargin >= 1 {
		bad("flaky_margin %v: want 0 to 1", p.FlakyMargin)
	}
	seen := map[string]bool{}
	for i, t := range p.Tiers {
		if !tierName.MatchString(t.Name) {
			bad("tiers[%d].name %q: want 1 to 32 letters, digits, spaces, dots, dashes or underscores", i, t.Name)
		}
		if seen[strings.ToLower(t.Name)] {
			bad("tiers[%d].name %q: named twice", i, t.Name)
		}
		seen[strings.ToLower(t.Name)] = true
		if t.MinSuccess < 0 || t.MinSuccess > 1 {
			bad("tiers[%d].min_success %v: want 0 to 1", i, t.MinSuccess)
		}
		if t.MinRuns < 0 {
			bad("tiers[%d].min_runs %d: must not be negative", i, t.MinRuns)
		}
		if len(t.Description) > 200 {
			bad("tiers[%d].description: longer than 200 characters", i)
		}
	}
	if n := len(p.Tiers); n > 0 && p.Tiers[n-1].conditional() {
		bad("tiers[%d] (%s): the last tier must have no conditions, so that every repository has a tier", n-1, p.Tiers[n-1].Name)
	}
	return errors.Join(errs...)
}

func (t Tier) conditional() bool {
	return t.EveryJobOnBoth || t.ARM64Runs || t.MinSuccess > 0 || t.MinRuns > 0 || t.NoFailing
}

// Rank is a tier's place in the policy (0 best); len(Tiers) for a name
// it does not know.
func (p *Policy) Rank(name string) int {
	for i, t := range p.Tiers {
		if strings.EqualFold(t.Name, name) {
			return i
		}
	}
	return len(p.Tiers)
}

// unmet returns why rows (one repository's logical jobs) do not meet t:
// the first condition that fails, with the job that fails it; "" when all
// hold.
func (t Tier) unmet(rows []Row) string {
	for _, r := range rows {
		if t.EveryJobOnBoth && (r.AMD64 == nil || r.ARM64 == nil) {
			return fmt.Sprintf("%s runs on %s only (%s wants every job on both)", r.title(), r.only(), t.Name)
		}
		if t.NoFailing && r.Status == ARM64Failing {
			return fmt.Sprintf("%s fails on arm64 where amd64 passes (commit %s)", r.title(), short(r.LatestSHA))
		}
	}
	for _, r := range rows {
		for _, a := range []struct {
			name string
			s    *ArchStats
		}{{"amd64", r.AMD64}, {"arm64", r.ARM64}} {
			if a.s == nil {
				continue
			}
			if t.MinRuns > 0 && a.s.Runs < t.MinRuns {
				return fmt.Sprintf("%s ran %d times on %s (%s wants %d)", r.title(), a.s.Runs, a.name, t.Name, t.MinRuns)
			}
			if t.MinSuccess > 0 && a.s.SuccessRate >= 0 && a.s.SuccessRate < t.MinSuccess {
				return fmt.Sprintf("%s passed %s of %d runs on %s (%s wants %s)", r.title(), pct(a.s.SuccessRate),
					a.s.Passed+a.s.Failed, a.name, t.Name, pct(t.MinSuccess))
			}
		}
	}
	if t.ARM64Runs && !slices.ContainsFunc(rows, func(r Row) bool { return r.ARM64 != nil }) {
		return fmt.Sprintf("no job runs on arm64 (%s wants one)", t.Name)
	}
	return ""
}

func (r Row) title() string {
	if r.Workflow == "" {
		return r.Job
	}
	return r.Workflow + " / " + r.Job
}

func (r Row) only() string {
	if r.ARM64 == nil {
		return "amd64"
	}
	return "arm64"
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

func pct(x float64) string {
	s := fmt.Sprintf("%.1f", 100*x)
	return strings.TrimSuffix(s, ".0") + "%"
}

// RepoTier is a repository's tier as evaluated now.
type RepoTier struct {
	Org    string `json:"org"`
	Repo   string `json:"repo"`
	Tier   string `json:"tier"`
	Reason string `json:"reason"`
	Jobs   int    `json:"jobs"`      // logical jobs
	OnBoth int    `json:"jobs_both"` // of which ran on both
	// Statuses counts the logical jobs by status.
	Statuses map[Status]int `json:"statuses"`
	// ARM64Runs and ARM64SuccessRate are over all its arm64 runs (-1: no
	// decided run), the badge's figure.
	ARM64Runs        int     `json:"arm64_runs"`
	ARM64SuccessRate float64 `json:"arm64_success_rate"`
	// Since is when it entered the tier, as recorded (zero: not yet).
	Since time.Time `json:"since,omitzero"`
}

// Evaluate gives one repository its tier from its rows (all of one
// repository). The reason says why it is not in the tier just above, or,
// in the best tier, what it meets.
func (p *Policy) Evaluate(rows []Row) RepoTier {
	rt := RepoTier{Statuses: map[Status]int{}, ARM64SuccessRate: -1}
	passed, failed := 0, 0
	for _, r := range rows {
		rt.Org, rt.Repo = r.Org, r.Repo
		rt.Jobs++
		rt.Statuses[r.Status]++
		if r.AMD64 != nil && r.ARM64 != nil {
			rt.OnBoth++
		}
		if r.ARM64 != nil {
			rt.ARM64Runs += r.ARM64.Runs
			passed += r.ARM64.Passed
			failed += r.ARM64.Failed
		}
	}
	rt.ARM64SuccessRate = rate(passed, failed)
	why := ""
	for i, t := range p.Tiers {
		if i == len(p.Tiers)-1 {
			rt.Tier = t.Name
			break
		}
		if u := t.unmet(rows); u != "" {
			why = "not " + t.Name + ": " + u // the tier just above the one it gets
			continue
		}
		rt.Tier = t.Name
		break
	}
	rt.Reason = why
	if why == "" || p.Rank(rt.Tier) == 0 {
		rt.Reason = fmt.Sprintf("%s: %d of %d jobs on both architectures; arm64 passed %s of its runs", rt.Tier, rt.OnBoth, rt.Jobs,
			pctOrNone(rt.ARM64SuccessRate))
		if t := p.Tiers[p.Rank(rt.Tier)]; t.Description != "" {
			rt.Reason = fmt.Sprintf("%s (%s): %d of %d jobs on both architectures; arm64 passed %s of its runs", rt.Tier,
				t.Description, rt.OnBoth, rt.Jobs, pctOrNone(rt.ARM64SuccessRate))
		}
	}
	return rt
}

func pctOrNone(x float64) string {
	if x < 0 {
		return "none"
	}
	return pct(x)
}

// RepoTiers evaluates every repository of rows (sorted by org, repo, as
// Matrix returns them), in that order.
func (p *Policy) RepoTiers(rows []Row) []RepoTier {
	var out []RepoTier
	for i := 0; i < len(rows); {
		j := i
		for j < len(rows) && rows[j].Org == rows[i].Org && rows[j].Repo == rows[i].Repo {
			j++
		}
		out = append(out, p.Evaluate(rows[i:j]))
		i = j
	}
	return out
}

// OrgTier rolls an organisation's repositories up: how many are in each
// tier, and the tier every one of them reaches (the lowest).
type OrgTier struct {
	Org   string         `json:"org"`
	Tier  string         `json:"tier"`
	Repos map[string]int `json:"repos"` // tier → repositories
}

// OrgTiers rolls repos (sorted by org) up per organisation.
func (p *Policy) OrgTiers(repos []RepoTier) []OrgTier {
	var out []OrgTier
	for _, r := range repos {
		if len(out) == 0 || out[len(out)-1].Org != r.Org {
			out = append(out, OrgTier{Org: r.Org, Tier: r.Tier, Repos: map[string]int{}})
		}
		o := &out[len(out)-1]
		o.Repos[r.Tier]++
		if p.Rank(r.Tier) > p.Rank(o.Tier) {
			o.Tier = r.Tier
		}
	}
	slices.SortFunc(out, func(a, b OrgTier) int { return cmp.Compare(a.Org, b.Org) })
	return out
}
