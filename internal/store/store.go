// Package store keeps the control plane's state: received webhooks, jobs and
// their state machine, runners (one per VM), hosts, and counters.
//
// Every change happens inside Update, in one transaction: a job transition
// and the event that records it, the delivery that caused it and the runner
// it moved commit together or not at all. Implementations (store/sqlite, and
// a PostgreSQL one for several control-plane replicas) pass the conformance
// suite in store/storetest, which also pins down the semantics documented
// here.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/profile"
)

// Sentinel errors. Implementations wrap them.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrBadTransition = errors.New("job state transition not allowed")
	ErrInvalid       = errors.New("invalid record")
	ErrClosed        = errors.New("store closed")
	ErrTokenSpent    = errors.New("enrolment token used or expired")
	ErrTokenHost     = errors.New("enrolment token issued for another host")
)

// Store is the control plane's database.
type Store interface {
	// InsertDelivery stores a received webhook durably and reports whether
	// it was new: false when a delivery with the same GUID is already kept
	// (a duplicate). When it returns, the delivery survives a crash of the
	// process. Concurrent calls may be committed together (group commit).
	InsertDelivery(ctx context.Context, d Delivery) (inserted bool, err error)

	// PendingDeliveries returns up to limit unprocessed deliveries with
	// Seq > after, in Seq order.
	PendingDeliveries(ctx context.Context, after int64, limit int) ([]Delivery, error)

	// PruneDeliveries forgets processed deliveries received before t, job
	// events, ended runners and profile samples older than t, profiles
	// older than t less ProfileExtraRetention and commits' parity records
	// older than t less ParityExtraRetention, and returns how many rows
	// went. Jobs, their daily statistics and tiers are kept.
	Prune(ctx context.Context, before time.Time) (int64, error)

	// Update runs fn in a read-write transaction, committing if fn returns
	// nil and rolling back otherwise. fn may run more than once (a
	// serialisation retry), so it must have no side effects outside tx.
	Update(ctx context.Context, fn func(Tx) error) error

	// View runs fn in a read-only transaction with a consistent snapshot.
	View(ctx context.Context, fn func(ReadTx) error) error

	Close() error
}

// ReadTx reads within a transaction. Slices come back in a defined order:
// jobs by ID, runners by Name, hosts by ID, events by Seq, unless a filter
// says otherwise.
type ReadTx interface {
	Job(id int64) (Job, error) // ErrNotFound
	Jobs(f JobFilter) ([]Job, error)
	// CountJobs returns how many jobs are in each state (states with none
	// are absent).
	CountJobs() (map[JobState]int, error)
	// CountQueuedSince counts the jobs Tandem learnt of at or after since,
	// of orgs only when orgs is not nil (compared without case).
	CountQueuedSince(since time.Time, orgs []string) (int, error)
	JobEvents(jobID int64) ([]JobEvent, error)
	Runner(name string) (Runner, error) // ErrNotFound
	Runners(f RunnerFilter) ([]Runner, error)
	Host(id string) (Host, error) // ErrNotFound
	Hosts() ([]Host, error)
	// Repos returns repositories active at or after since, but for those
	// of an installation that is not active (suspended or removed).
	Repos(since time.Time) ([]Repo, error)
	// Installation returns what Tandem knows of an installation of the
	// App (ErrNotFound: nothing, which is as good as active).
	Installation(id int64) (Installation, error)
	Counters() (map[string]int64, error)
	Delivery(guid string) (Delivery, error) // ErrNotFound
	// AgentCredential returns a host's credential (ErrNotFound if none).
	AgentCredential(hostID string) (AgentCredential, error)
	// EnrollTokens lists enrolment tokens, newest first.
	EnrollTokens() ([]EnrollToken, error)
	// ProfileSamples returns the samples a live runner's VM has sent so
	// far, oldest first (none once its profile is made).
	ProfileSamples(runner string) ([]profile.Sample, error)
	// Profile returns a runner's profile, made when its VM ended
	// (ErrNotFound: none yet, or none kept).
	Profile(runner string) (Profile, error)
	// ProfiledRuns lists jobs that ran on Tandem's VMs with their profile
	// summaries, newest profile first.
	ProfiledRuns(f ProfiledRunFilter) ([]ProfiledRun, error)
	// JobStats computes, in the store, the numbers of the jobs f selects,
	// per group (f.Level) and architecture, in no particular order.
	JobStats(f StatsFilter) ([]JobStats, error)
	// SlowestRuns returns the n longest runs of the jobs f selects
	// (f.Level is ignored), longest first.
	SlowestRuns(f StatsFilter, n int) ([]SlowRun, error)
	// ParityCommits sums up, per logical job, the commits of f's period
	// that have a result on both architectures (f.Level is ignored), in no
	// particular order.
	ParityCommits(f ParityFilter) ([]CommitParity, error)
	// RepoTiers lists repositories' support tiers by repository;
	// TierChanges lists tier moves (at or after f.Since), oldest first.
	RepoTiers(f TierFilter) ([]RepoTier, error)
	TierChanges(f TierFilter) ([]TierChange, error)
	// HostLoad returns a host's load records at or after since, oldest
	// first.
	HostLoad(host string, since time.Time) ([]HostLoad, error)
	// Audit lists audit entries, newest (highest Seq) first.
	Audit(f AuditFilter) ([]AuditEntry, error)
	// Retries lists retries of lost jobs (see Retry).
	Retries(f RetryFilter) ([]Retry, error)
}

// Tx reads and writes within a transaction.
type Tx interface {
	ReadTx

	// CreateJob adds a job (ErrExists if its ID is known) and records an
	// event from "" to its state, at j.UpdatedAt.
	CreateJob(j Job, ev Event) error
	// UpdateJob replaces a job. Its state may change only along the state
	// machine (CanTransition; ErrBadTransition otherwise, nothing written);
	// every call records a JobEvent from the stored state to j.State at
	// j.UpdatedAt, with ev's source and reason and j's runner and host.
	UpdateJob(j Job, ev Event) error

	// PutRunner creates or replaces a runner. An ended runner cannot come
	// back (ErrBadTransition).
	PutRunner(r Runner) error
	// PutHost creates or replaces a host.
	PutHost(h Host) error
	// TouchHosts sets LastSeen to at for those of ids that replica holds
	// (Host.Replica) and says how many it set.
	TouchHosts(replica string, ids []string, at time.Time) (int, error)

	// AddRunnerCommand queues a command for the replica that holds
	// c.HostID's agent (c.Seq is assigned); TakeRunnerCommands removes
	// and returns, oldest first, at most max of the commands queued for
	// any of hosts.
	AddRunnerCommand(c RunnerCommand) error
	TakeRunnerCommands(hosts []string, max int) ([]RunnerCommand, error)

	// TouchRepo records that repo had activity at t (keeping the latest).
	TouchRepo(fullName string, installation int64, t time.Time) error
	// RemoveRepo forgets a repository (compared without case); removing
	// one not known is not an error.
	RemoveRepo(fullName string) error
	// PutInstallation creates or replaces what Tandem knows of an
	// installation.
	PutInstallation(i Installation) error
	// AddCounter adds delta to a named counter, creating it at 0.
	AddCounter(name string, delta int64) error
	// MarkDelivery records that a delivery was processed at t, with errText
	// when processing failed for good. ErrNotFound for an unknown GUID.
	MarkDelivery(guid string, t time.Time, errText string) error

	// CreateEnrollToken stores a new token (ErrExists for a known hash).
	CreateEnrollToken(t EnrollToken) error
	// UseEnrollToken marks the token with this hash used by hostID at now
	// and returns it. It fails with ErrNotFound for an unknown hash,
	// ErrTokenSpent for one already used or expired at now, and
	// ErrTokenHost for one issued for another host; nothing changes then.
	UseEnrollToken(hash, hostID string, now time.Time) (EnrollToken, error)
	// PutAgentCredential creates or replaces a host's credential (a host
	// enrolled again gets a new one; the old one stops working).
	PutAgentCredential(c AgentCredential) error
	// RevokeAgent marks a host's credential revoked at t (ErrNotFound if
	// it has none). Revoking twice keeps the first time.
	RevokeAgent(hostID string, t time.Time) error

	// AddProfileSamples appends samples of a runner's VM, received at at.
	AddProfileSamples(runner string, at time.Time, samples []profile.Sample) error
	// PutProfile stores a runner's profile (replacing one it had) and
	// deletes its samples.
	PutProfile(p Profile) error

	// AddHostLoad records hosts' load (one record per host and time; a
	// second one for the same replaces the first). PruneHostLoad deletes
	// the records from before a time and says how many went.
	AddHostLoad(loads []HostLoad) error
	PruneHostLoad(before time.Time) (int64, error)

	// SetRepoTier records a repository's tier as evaluated at
	// r.CheckedAt. When the tier differs from the one stored (or there was
	// none), it records a TierChange with r.Reason, sets Since to
	// CheckedAt and reports true; otherwise it keeps Since and updates the
	// reason. Prune keeps tiers and their changes.
	SetRepoTier(r RepoTier) (changed bool, err error)

	// AppendAudit adds an entry to the audit log and returns its Seq. An
	// entry needs a time, an actor and an action (ErrInvalid otherwise).
	// Prune keeps the audit log.
	AppendAudit(e AuditEntry) (int64, error)

	// AddRetry records a retry of a lost job and reports whether it did:
	// false, with nothing written, when one exists already for the job or
	// for its repository, run, name and cause. PutRetry replaces a
	// stored retry (ErrNotFound for one not there). A retry needs a job,
	// a repository, a run, a cause and a valid state (ErrInvalid).
	AddRetry(r Retry) (bool, error)
	PutRetry(r Retry) error
}

// JobFilter selects jobs. Zero fields do not filter.
type JobFilter struct {
	IDs    []int64
	States []JobState
	// Org and Repo ("owner/name") compare without case, as GitHub's names
	// do; so does Orgs, which selects the jobs of any of its organisations
	// (an API token's scope).
	Org        string
	Orgs       []string
	Repo       string
	RunnerName string
	LabelKey   string
	Arch       arch.Arch
	HeadSHA    string // a commit's jobs
	// QueuedSince selects jobs Tandem learnt of at or after it.
	QueuedSince time.Time
	// Newest orders by QueuedAt descending (then ID descending) instead of
	// ID ascending, for listings.
	Newest bool
	Limit  int // 0: all
	Offset int // skip this many, after ordering (paging)
}

// RunnerFilter selects runners. Zero fields do not filter.
type RunnerFilter struct {
	Names    []string
	States   []RunnerState
	HostID   string
	JobID    int64
	LabelKey string
	Pool     string // runners of that warm pool (claimed or not)
	// Live selects runners that have not ended (overrides nothing: it is
	// combined with States).
	Live  bool
	Limit int
}
