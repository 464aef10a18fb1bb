package store

import (
	"time"

	"github.com/tandem-ci/tandem/internal/failure"
)

// Retry is Tandem's intent to have GitHub run a job again because Tandem or
// its host lost it while it ran (config retry.infra_losses): made when the
// loss is seen, carried out once GitHub has failed the job (GitHub re-runs
// only a finished job, of a finished run), kept as the record of what was
// done. A job is retried at most once for a cause: a re-run job has the
// repository, run and name of the one it re-runs, and at most one Retry
// exists per repository, run, name and cause.
type Retry struct {
	JobID        int64 // the job that was lost
	Installation int64
	Org          string
	Repo         string // owner/name
	RunID        int64
	Name         string // the job's name in its run
	Cause        failure.Kind
	State        RetryState
	// Detail says, for humans, what GitHub answered last or why the
	// retry was not made.
	Detail    string
	Tries     int       // requests to GitHub so far
	NextAt    time.Time // when a pending retry is looked at next
	CreatedAt time.Time
	UpdatedAt time.Time
}

// RetryState is where a Retry stands.
type RetryState string

const (
	// RetryPending waits for GitHub to end the job, or for its run to
	// end (GitHub re-runs a job only then).
	RetryPending RetryState = "pending"
	// RetryRequested: GitHub accepted the re-run; a new job, in the run's
	// next attempt, is on its way.
	RetryRequested RetryState = "requested"
	// RetryMoot: GitHub ended the job other than as failed (it succeeded
	// after all, or was cancelled): there is nothing to re-run.
	RetryMoot RetryState = "moot"
	// RetryRefused: GitHub refused the re-run for good (the App lacks
	// "Actions: write", the job is gone), or GitHub never ended the job.
	RetryRefused RetryState = "refused"
)

// Valid reports whether s is a known state.
func (s RetryState) Valid() bool {
	switch s {
	case RetryPending, RetryRequested, RetryMoot, RetryRefused:
		return true
	}
	return false
}

// RetryFilter selects retries, oldest (by CreatedAt, then JobID) first.
// Zero fields do not filter.
type RetryFilter struct {
	JobIDs []int64
	States []RetryState
	// DueBy selects retries whose NextAt is at or before it.
	DueBy time.Time
	// Repo (compared without case), RunID and Name select the retries of
	// one job's name in one run: what a re-run job was re-run for.
	Repo  string
	RunID int64
	Name  string
	Limit int // 0: all
}
