package store

import "time"

// Parity: the store keeps, for every commit and logical job (a job name
// without its architecture words, archname.Logical), the latest result on
// each architecture, so that the parity matrix can count the commits where
// arm64 failed and amd64 passed without reading every job; and the
// support tier of each repository, with its changes.

// ParityExtraRetention is how much longer than the rest Prune keeps the
// parity records of commits: long enough for the longest period a parity
// view covers (90 days) past a week's retention.
const ParityExtraRetention = 84 * 24 * time.Hour

// Result is how a job ended, as parity counts it.
type Result int

const (
	NoResult Result = iota // did not run, or ended without passing or failing (cancelled, skipped)
	Passed                 // GitHub concluded success
	Failed                 // GitHub concluded failure or timed_out
)

// ResultOf is a finished job's result.
func ResultOf(j Job) Result {
	if j.State != JobCompleted {
		return NoResult
	}
	switch j.Conclusion {
	case "success":
		return Passed
	case "failure", "timed_out":
		return Failed
	}
	return NoResult
}

// ParityFilter selects the logical jobs of a StatsFilter's period (by when
// their commits' latest results ended); Level is ignored.
type ParityFilter = StatsFilter

// CommitParity sums up one logical job's commits that have a result on
// both architectures in a period. Org and Repo are lower case.
type CommitParity struct {
	Org, Repo, Workflow, Logical string
	Compared                     int // commits with a result on both
	// ARM64Failed counts the commits where arm64 failed and amd64 passed;
	// AMD64Failed the reverse.
	ARM64Failed, AMD64Failed int
	// The latest compared commit (by its later end) and its results.
	LatestSHA                string
	LatestAt                 time.Time
	LatestAMD64, LatestARM64 Result
}

// RepoTier is a repository's support tier as last evaluated.
type RepoTier struct {
	Org, Repo string // lower case
	Tier      string
	Reason    string    // why it is in that tier (for humans)
	Since     time.Time // when it entered the tier
	CheckedAt time.Time // last evaluation
}

// TierChange is a repository moving between tiers.
type TierChange struct {
	Seq       int64
	At        time.Time
	Org, Repo string
	From, To  string // From is "" for a repository's first tier
	Reason    string
}

// TierFilter selects tiers and tier changes. Zero fields do not filter;
// Org, Repo and Orgs compare without case (Orgs: an API token's scope,
// nil for every organisation).
type TierFilter struct {
	Org, Repo string
	Orgs      []string
	Since     time.Time // tier changes at or after
}
