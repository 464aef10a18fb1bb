package store

import (
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
)

// Profile is a runner's VM profile once its VM has ended: built from its
// samples (internal/profile), kept for ProfileRetention for right-sizing
// and history, under the job the runner ran.
type Profile struct {
	Runner  string
	JobID   int64 // the job the runner ran; 0: none
	EndedAt time.Time
	profile.Profile
}

// ProfileExtraRetention is how much longer than ended runners Prune keeps
// profiles: right-sizing looks at weeks of runs (with the control plane's
// week for runners, four weeks in all).
const ProfileExtraRetention = 21 * 24 * time.Hour

// ProfiledRun is a job that ran on one of Tandem's VMs, with its VM's
// profile summary (right-sizing's input).
type ProfiledRun struct {
	Job
	EndedAt time.Time
	Summary profile.Summary
}

// ProfiledRunFilter selects profiled runs, newest first. Org and Repo
// compare without case; Orgs, when not nil, keeps runs of those orgs only
// (an API token's scope).
type ProfiledRunFilter struct {
	Since time.Time
	Org   string
	Orgs  []string
	Repo  string
	Limit int // 0: all
}
