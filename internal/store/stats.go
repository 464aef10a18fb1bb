package store

import (
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

// StatsLevel is how finely job statistics are grouped.
type StatsLevel string

// Levels, coarsest first: a job's key holds the fields of its level and
// the coarser ones.
const (
	ByOrg      StatsLevel = "org"
	ByRepo     StatsLevel = "repo"
	ByWorkflow StatsLevel = "workflow"
	ByJob      StatsLevel = "job"
)

// StatsLevels lists the levels, coarsest first.
var StatsLevels = []StatsLevel{ByOrg, ByRepo, ByWorkflow, ByJob}

// StatsFilter selects the jobs that ended (CompletedAt) in [Since, Until),
// grouped at Level and by architecture. Org and Repo compare without
// case; Orgs, when not nil, keeps only those organisations' jobs.
type StatsFilter struct {
	Since, Until time.Time
	Level        StatsLevel
	Org          string
	Orgs         []string
	Repo         string
}

// StatsKey is a group of jobs: the fields of its level (and the coarser
// ones), and the architecture. Org and Repo are lower case.
type StatsKey struct {
	Org      string    `json:"org"`
	Repo     string    `json:"repo,omitempty"`
	Workflow string    `json:"workflow,omitempty"`
	Name     string    `json:"job,omitempty"`
	Arch     arch.Arch `json:"arch"`
}

// JobStats are a group's numbers over a period. Times are seconds; a
// percentile is the nearest rank's (0 when no job had the time).
type JobStats struct {
	StatsKey
	Jobs int `json:"jobs"` // ended in the period, in any terminal state
	// Ran counts those that ran (a runner took them); Succeeded those
	// GitHub concluded "success".
	Ran         int     `json:"ran"`
	Succeeded   int     `json:"succeeded"`
	VCPUMinutes float64 `json:"vcpu_minutes"` // of the jobs that ran, by their size asked
	QueueP50    float64 `json:"queue_p50_s"`
	QueueP95    float64 `json:"queue_p95_s"`
	RunP50      float64 `json:"run_p50_s"`
	RunP95      float64 `json:"run_p95_s"`
}

// SlowRun is one of a period's longest runs.
type SlowRun struct {
	JobID    int64     `json:"id"`
	Repo     string    `json:"repo"`
	Workflow string    `json:"workflow"`
	Name     string    `json:"job"`
	Arch     arch.Arch `json:"arch"`
	RunS     float64   `json:"run_s"`
	HTMLURL  string    `json:"html_url,omitempty"`
}
