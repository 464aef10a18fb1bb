package ghfake

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sentinel errors of the Go control API.
var (
	// ErrNotFound reports an unknown job or delivery.
	ErrNotFound = errors.New("not found")
	// ErrInvalid reports a malformed argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed reports a call on a closed Server.
	ErrClosed = errors.New("server closed")
)

// Job statuses and conclusions, as GitHub spells them.
const (
	StatusQueued     = "queued"
	StatusWaiting    = "waiting" // held for an environment's approval
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"

	ConclusionSuccess   = "success"
	ConclusionFailure   = "failure"
	ConclusionCancelled = "cancelled"
)

// Account types of an installation.
const (
	AccountOrganization = "Organization"
	AccountUser         = "User"
)

// Config configures a Server. Zero values get the defaults noted.
type Config struct {
	// AppID is the GitHub App's id, the iss claim of its JWTs.
	AppID int64
	// AppPublicKey verifies the App's RS256 JWTs. Without it every
	// JWT-authenticated request is refused until the App-manifest flow
	// makes an App (manifest.go), which then replaces AppID, AppPublicKey,
	// WebhookURL and WebhookSecret.
	AppPublicKey *rsa.PublicKey
	// WebhookURL receives the App's webhooks; empty sends none.
	WebhookURL string
	// WebhookSecret signs webhooks; empty sends them unsigned, as GitHub
	// does for an App without a secret.
	WebhookSecret []byte
	// WebhookTimeout is how long a delivery waits for an answer (GitHub: 10 s).
	WebhookTimeout time.Duration
	// RunnerURL is the base URL fake runners use to reach this server (it
	// goes into JIT configs). Empty: the scheme and Host of the
	// generate-jitconfig request.
	RunnerURL string
	// TokenTTL is the lifetime of installation tokens (default 1 h).
	TokenTTL time.Duration
	// RunnerLostAfter is how long a job in progress waits for its runner
	// to be heard from (a heartbeat) before GitHub gives up on the runner:
	// the job completes as a failure, annotated that the runner "lost
	// communication with the server", and the runner is removed. Default
	// 10 min; negative: never (the job stays in progress).
	RunnerLostAfter time.Duration
	// Seed seeds every random decision (job choice, faults, guids).
	Seed int64
	// Now is the clock for timestamps, token expiry and JWT checks
	// (default time.Now). Waiting (long polls, delays) uses real time.
	Now func() time.Time
	// Logger receives debug and warning logs (default: discard).
	Logger *slog.Logger
	// AppPermissions and AppEvents are what GET /app reports the App asks
	// for: its permissions (default: those installations get until
	// SetPermissions) and the webhook events it subscribes to (default:
	// workflow_job).
	AppPermissions map[string]string
	AppEvents      []string
}

// JobSpec describes a job to queue.
type JobSpec struct {
	// Repo is "owner/name". QueueRun takes the repository separately and
	// ignores this field.
	Repo string `json:"repo,omitempty"`
	// Labels are the job's runs-on labels; at least one.
	Labels []string `json:"labels"`
	// Script is what a fake runner runs with /bin/sh -c.
	Script string `json:"script"`
	// Name is the job's name (default "build").
	Name string `json:"name,omitempty"`
	// Environment names a protected environment the job deploys to, one
	// that needs a reviewer: the job waits (status waiting, a workflow_job
	// "waiting" webhook, no runner takes it) until ApproveJob.
	Environment string `json:"environment,omitempty"`
	// RunnerGroup names the runner group the job targets (runs-on:
	// {group: NAME, labels: [...]}): only that group's runners take it.
	// Its payloads do not say so, as GitHub's do not.
	RunnerGroup string `json:"runner_group,omitempty"`
}

// JobInfo is a snapshot of a job.
type JobInfo struct {
	ID              int64     `json:"id"`
	RunID           int64     `json:"run_id"`
	RunAttempt      int       `json:"run_attempt"` // the run attempt it belongs to (1, and more once re-run)
	Repo            string    `json:"repo"`
	Name            string    `json:"name"`
	Labels          []string  `json:"labels"`
	Script          string    `json:"script"`
	Status          string    `json:"status"`
	Conclusion      string    `json:"conclusion,omitempty"`
	RunnerID        int64     `json:"runner_id,omitempty"`
	RunnerName      string    `json:"runner_name,omitempty"`
	RunnerGroupID   int64     `json:"runner_group_id,omitempty"`
	ExitCode        int       `json:"exit_code"`
	Output          string    `json:"output,omitempty"`
	CancelRequested bool      `json:"cancel_requested"`
	Annotation      string    `json:"annotation,omitempty"` // why GitHub ended it, when its runner did not say
	Claims          int       `json:"claims"`               // times a runner was handed the job; never above 1
	CreatedAt       time.Time `json:"created_at"`
	StartedAt       time.Time `json:"started_at,omitzero"` // when a runner claimed it
	CompletedAt     time.Time `json:"completed_at,omitzero"`
	// RerunOf is the job of an earlier attempt that this one re-runs, and
	// RerunAs the job of a later attempt that re-runs this one; 0: none.
	RerunOf int64 `json:"rerun_of,omitempty"`
	RerunAs int64 `json:"rerun_as,omitempty"`
}

// RunnerInfo is a snapshot of a registered runner.
type RunnerInfo struct {
	ID      int64    `json:"id"`
	Name    string   `json:"name"`
	Scope   string   `json:"scope"` // "owner/repo" or "org"
	Org     bool     `json:"org"`
	Labels  []string `json:"labels"`
	GroupID int64    `json:"runner_group_id"`
	Status  string   `json:"status"` // "online" or "offline"
	Busy    bool     `json:"busy"`
	JobID   int64    `json:"job_id,omitempty"`
	// CreatedAt is when generate-jitconfig registered it.
	CreatedAt time.Time `json:"created_at"`
	// SessionAt is when its process opened a session ("runner process
	// started"); zero until then.
	SessionAt time.Time `json:"session_at,omitzero"`
}

// Server is the emulator. Create it with New, serve Handler, stop with Close.
type Server struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	ctx    context.Context
	cancel context.CancelFunc
	hooks  *http.Client
	mux    *http.ServeMux

	mu            sync.Mutex
	idle          *sync.Cond             // signalled when inflight drops to zero
	app           app                    // the App: from Config, or made by the manifest flow (manifest.go)
	conversions   map[string]*conversion // manifest codes not yet exchanged, by code (manifest.go)
	closed        bool
	rng           *mrand.Rand
	ids           idCounters
	accounts      map[string]*account // by lower-case login
	installations map[int64]*installation
	tokens        map[string]*instToken
	repos         map[string]*repo // by lower-case "owner/name"
	runners       map[int64]*runner
	jitTokens     map[string]int64          // JIT token → runner id
	usedJIT       map[string]bool           // JIT tokens of removed runners that had a session
	sessions      map[string]*session       // session token → session
	labelIDs      map[string]int64          // lower-case label → id
	groups        map[string][]*runnerGroup // runner groups by lower-case org, Default first (groups.go)
	statuses      map[string][]CommitStatus // commit statuses by lower-case "owner/name@sha", oldest first (statuses.go)
	runs          map[int64]*run
	jobs          map[int64]*job
	jobOrder      []int64
	deliveries    []*Delivery
	faults        Faults
	rate          rateState
	jobsChanged   chan struct{} // closed and replaced when runners should look again
	held          *outgoing     // a webhook held back by Faults.Reorder
	inflight      int
	senders       sync.WaitGroup
}

type idCounters struct {
	account, install, repo, runner, label, run, job, delivery, runNumber, group, status, app int64
}

type account struct {
	id    int64
	login string
	typ   string
}

type installation struct {
	id          int64
	account     *account
	repos       []string // lower-case full names, in order added
	createdAt   time.Time
	suspended   bool              // GitHub sends it no webhooks and refuses its tokens
	permissions map[string]string // permission → "read", "write" or "admin"
}

type instToken struct {
	installID int64
	expires   time.Time
}

type repo struct {
	id        int64
	owner     *account
	name      string
	installID int64 // 0: the App is not installed there
	public    bool  // private unless SetPublic says
}

func (r *repo) fullName() string { return r.owner.login + "/" + r.name }

// New returns a running Server.
func New(cfg Config) *Server {
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.WebhookTimeout <= 0 {
		cfg.WebhookTimeout = 10 * time.Second
	}
	if cfg.RunnerLostAfter == 0 {
		cfg.RunnerLostAfter = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "ghfake"),
		now:    func() time.Time { return cfg.Now().UTC() },
		ctx:    ctx,
		cancel: cancel,
		hooks: &http.Client{
			Timeout: cfg.WebhookTimeout,
			// Its own transport, so that Close can drop its idle connections.
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: cfg.WebhookTimeout}).DialContext,
				MaxIdleConnsPerHost: 16,
				IdleConnTimeout:     90 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // GitHub does not follow redirects
			},
		},
		rng: mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x6768_6661_6b65)),
		// Large starting ids catch int32 truncation, as GitHub's own ids do.
		ids: idCounters{
			account: 1000, install: 40_000_000, repo: 700_000_000, runner: 0,
			label: 0, run: 10_000_000_000, job: 30_000_000_000, delivery: 90_000_000_000,
			group: defaultGroupID, // every organization's Default group
			app:   2_000_000,
		},
		accounts:      map[string]*account{},
		installations: map[int64]*installation{},
		tokens:        map[string]*instToken{},
		repos:         map[string]*repo{},
		runners:       map[int64]*runner{},
		jitTokens:     map[string]int64{},
		usedJIT:       map[string]bool{},
		sessions:      map[string]*session{},
		labelIDs:      map[string]int64{},
		groups:        map[string][]*runnerGroup{},
		runs:          map[int64]*run{},
		jobs:          map[int64]*job{},
		jobsChanged:   make(chan struct{}),
		conversions:   map[string]*conversion{},
		app: app{id: cfg.AppID, key: cfg.AppPublicKey, hook: hook{
			url: cfg.WebhookURL, secret: slices.Clone(cfg.WebhookSecret), appID: cfg.AppID,
		}},
	}
	s.idle = sync.NewCond(&s.mu)
	s.rate.reset = s.now().Add(time.Hour)
	s.routes()
	if cfg.RunnerLostAfter > 0 {
		s.senders.Add(1)
		go s.watchRunners(cfg.RunnerLostAfter)
	}
	return s
}

// Handler serves the REST API at "/", the runner protocol under /_runner/
// and the control API under /_ghfake/.
func (s *Server) Handler() http.Handler { return s.mux }

// Close stops delivering webhooks, ends long polls and waits for every
// goroutine the Server started. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.held = nil
	s.wakeRunnersLocked()
	s.mu.Unlock()
	s.cancel()
	s.senders.Wait()
	s.hooks.CloseIdleConnections()
}

// AddInstallation installs the App on an account ("Organization" or "User")
// with access to the given repositories ("owner/name"; the owner must be the
// account). Installing again on the same account adds repositories to the
// existing installation and returns its id. Bad input is logged and skipped;
// 0 means nothing could be installed.
func (s *Server) AddInstallation(accountLogin, accountType string, repos ...string) int64 {
	if !validName(accountLogin) || (accountType != AccountOrganization && accountType != AccountUser) {
		s.log.Warn("ghfake: bad installation", "account", accountLogin, "type", accountType)
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	acct := s.accountLocked(accountLogin, accountType)
	if !s.installableLocked(acct) {
		s.log.Warn("ghfake: a private App is installed only on its owner's account",
			"account", accountLogin, "owner", s.app.owner.login)
		return 0
	}
	var inst *installation
	for _, in := range s.installations {
		if in.account == acct {
			inst = in
		}
	}
	if inst == nil {
		s.ids.install++
		perms := defaultPermissions()
		if s.app.permissions != nil { // made by the manifest flow: what it asked for
			perms = maps.Clone(s.app.permissions)
		}
		inst = &installation{id: s.ids.install, account: acct, createdAt: s.now(), permissions: perms}
		s.installations[inst.id] = inst
	}
	for _, full := range repos {
		owner, name, ok := splitRepo(full)
		if !ok || !strings.EqualFold(owner, acct.login) {
			s.log.Warn("ghfake: repository skipped: not owned by the installation's account",
				"repo", full, "account", acct.login)
			continue
		}
		r := s.repoLocked(owner, name)
		if r.installID == inst.id {
			continue
		}
		r.installID = inst.id
		inst.repos = append(inst.repos, strings.ToLower(r.fullName()))
	}
	return inst.id
}

// accountLocked returns the account with that login, creating it.
func (s *Server) accountLocked(login, typ string) *account {
	key := strings.ToLower(login)
	if a, ok := s.accounts[key]; ok {
		if typ != "" {
			a.typ = typ
		}
		return a
	}
	if typ == "" {
		typ = AccountUser
	}
	s.ids.account++
	a := &account{id: s.ids.account, login: login, typ: typ}
	s.accounts[key] = a
	return a
}

// repoLocked returns the repository, creating it.
func (s *Server) repoLocked(owner, name string) *repo {
	key := strings.ToLower(owner + "/" + name)
	if r, ok := s.repos[key]; ok {
		return r
	}
	s.ids.repo++
	r := &repo{id: s.ids.repo, owner: s.accountLocked(owner, ""), name: name}
	s.repos[key] = r
	return r
}

// splitRepo splits "owner/name".
func splitRepo(full string) (owner, name string, ok bool) {
	owner, name, ok = strings.Cut(full, "/")
	return owner, name, ok && validName(owner) && validName(name)
}

// validName accepts GitHub-like account and repository names.
func validName(s string) bool {
	if s == "" || len(s) > 100 || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// SetPublic makes a repository ("owner/name") public or private again
// (repositories are private until then); its payloads say so.
func (s *Server) SetPublic(full string, public bool) error {
	owner, name, ok := splitRepo(full)
	if !ok {
		return fmt.Errorf("%w: repository %q is not owner/name", ErrInvalid, full)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repoLocked(owner, name).public = public
	return nil
}

// SetPermissions changes an installation's permissions, as an owner does
// by accepting the App's request for new ones: each permission of perms
// ("actions", "administration", ...) gets its level, "read", "write" or
// "admin", or is taken away by "". Installations start with actions: read,
// administration: write, metadata: read and
// organization_self_hosted_runners: write. The installation and token
// payloads list the permissions, and requests are checked against them as
// they are now, tokens created before included. No webhook is sent.
func (s *Server) SetPermissions(id int64, perms map[string]string) error {
	for p, level := range perms {
		if p == "" || (level != "" && permissionLevels[level] == 0) {
			return fmt.Errorf("%w: permission %q: level %q is not read, write, admin or empty", ErrInvalid, p, level)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.installations[id]
	if !ok {
		return fmt.Errorf("set permissions of installation %d: %w", id, ErrNotFound)
	}
	for p, level := range perms {
		if level == "" {
			delete(in.permissions, p)
		} else {
			in.permissions[p] = level
		}
	}
	return nil
}

// SuspendInstallation suspends an installation, or lifts the suspension,
// as an owner does from the account's settings: an "installation" webhook
// ("suspend" or "unsuspend") is sent; while suspended, the installation's
// tokens are refused (403 for a new one) and none of its webhooks is sent.
func (s *Server) SuspendInstallation(id int64, suspend bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.installations[id]
	if !ok {
		return fmt.Errorf("suspend installation %d: %w", id, ErrNotFound)
	}
	if in.suspended == suspend {
		return nil
	}
	action := "unsuspend"
	if suspend {
		action = "suspend"
		s.emitInstallationLocked(in, action, nil) // sent before it goes quiet
		in.suspended = true
		return nil
	}
	in.suspended = false
	s.emitInstallationLocked(in, action, nil)
	return nil
}

// RemoveInstallation uninstalls the App from an account: an "installation"
// "deleted" webhook is sent, its repositories lose the App (no more
// webhooks), its tokens stop working and its runners are removed.
func (s *Server) RemoveInstallation(id int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.installations[id]
	if !ok {
		return fmt.Errorf("remove installation %d: %w", id, ErrNotFound)
	}
	s.emitInstallationLocked(in, "deleted", nil)
	delete(s.installations, id)
	for _, r := range s.repos {
		if r.installID == id {
			r.installID = 0
		}
	}
	for _, rr := range s.runners {
		if (rr.repo != nil && rr.repo.installID == 0 && strings.EqualFold(rr.repo.owner.login, in.account.login)) ||
			strings.EqualFold(rr.org, in.account.login) {
			s.removeRunnerLocked(rr)
		}
	}
	return nil
}

// RemoveRepos takes repositories ("owner/name") out of an installation,
// as an owner does in the App's settings: an installation_repositories
// "removed" webhook is sent, and the App gets no more webhooks from them.
func (s *Server) RemoveRepos(id int64, repos ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.installations[id]
	if !ok {
		return fmt.Errorf("remove repositories of installation %d: %w", id, ErrNotFound)
	}
	var removed []*repo
	for _, full := range repos {
		r, ok := s.repos[strings.ToLower(full)]
		if !ok || r.installID != id {
			return fmt.Errorf("remove %s from installation %d: %w", full, id, ErrInvalid)
		}
		removed = append(removed, r)
	}
	s.emitInstallationLocked(in, "removed", removed)
	for _, r := range removed {
		r.installID = 0
		in.repos = slices.DeleteFunc(in.repos, func(n string) bool { return n == strings.ToLower(r.fullName()) })
	}
	return nil
}

// QueueJob queues a new workflow run with one job and sends its
// workflow_job "queued" webhook. It returns 0, 0 for an invalid spec.
func (s *Server) QueueJob(spec JobSpec) (jobID, runID int64) {
	runID, ids, err := s.QueueRun(spec.Repo, spec)
	if err != nil {
		s.log.Warn("ghfake: job not queued", "err", err)
		return 0, 0
	}
	return ids[0], runID
}

// QueueRun queues one workflow run in repo ("owner/name") with the given
// jobs, in order, and sends a "queued" webhook for each.
func (s *Server) QueueRun(repoName string, specs ...JobSpec) (runID int64, jobIDs []int64, err error) {
	owner, name, ok := splitRepo(repoName)
	if !ok {
		return 0, nil, fmt.Errorf("%w: repository %q is not owner/name", ErrInvalid, repoName)
	}
	if len(specs) == 0 {
		return 0, nil, fmt.Errorf("%w: a run needs at least one job", ErrInvalid)
	}
	for i, sp := range specs {
		if len(sp.Labels) == 0 {
			return 0, nil, fmt.Errorf("%w: job %d has no labels", ErrInvalid, i)
		}
		for _, l := range sp.Labels {
			if strings.TrimSpace(l) == "" {
				return 0, nil, fmt.Errorf("%w: job %d has an empty label", ErrInvalid, i)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, nil, ErrClosed
	}
	r := s.repoLocked(owner, name)
	now := s.now()
	s.ids.run++
	s.ids.runNumber++
	rn := &run{
		id: s.ids.run, repo: r, number: s.ids.runNumber, name: "CI", attempt: 1,
		headSHA: s.randHexLocked(20), createdAt: now, updatedAt: now, startedAt: now,
	}
	s.runs[rn.id] = rn
	for _, sp := range specs {
		jname := sp.Name
		if jname == "" {
			jname = "build"
		}
		j := s.addJobLocked(&job{
			run: rn, name: jname, script: sp.Script, labels: slices.Clone(sp.Labels),
			group: sp.RunnerGroup, environment: sp.Environment,
		})
		jobIDs = append(jobIDs, j.id)
	}
	for _, j := range rn.jobs {
		s.emitLocked(j.status, j) // "queued", or "waiting" for an approval
	}
	s.wakeRunnersLocked()
	return rn.id, jobIDs, nil
}

// addJobLocked gives j an id and adds it to its run's latest attempt,
// queued, or waiting when it deploys to an environment.
func (s *Server) addJobLocked(j *job) *job {
	s.ids.job++
	j.id, j.attempt, j.createdAt = s.ids.job, j.run.attempt, s.now()
	j.status = StatusQueued
	if j.environment != "" {
		j.status = StatusWaiting
	}
	s.jobs[j.id] = j
	s.jobOrder = append(s.jobOrder, j.id)
	j.run.jobs = append(j.run.jobs, j)
	return j
}

// CancelJob cancels a job. A queued job completes at once as cancelled; a
// job in progress is cancelled at its runner's next heartbeat and completes
// as cancelled when the runner reports. Cancelling a completed job does
// nothing.
func (s *Server) CancelJob(id int64) error {
	return s.withJob("cancel", id, func(j *job) error {
		s.cancelLocked(j)
		return nil
	})
}

// withJob runs fn on job id under s.mu; verb names the call in its error.
func (s *Server) withJob(verb string, id int64, fn func(*job) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return fmt.Errorf("%s job %d: %w", verb, id, ErrNotFound)
	}
	if err := fn(j); err != nil {
		return fmt.Errorf("%s job %d: %w", verb, id, err)
	}
	return nil
}

func (s *Server) cancelLocked(j *job) {
	switch j.status {
	case StatusQueued, StatusWaiting:
		j.cancelRequested = true
		s.finishJobLocked(j, ConclusionCancelled)
	case StatusInProgress:
		j.cancelRequested = true
	}
}

// ApproveJob approves the deployment a waiting job waits for, as a
// reviewer does: the job is queued (a workflow_job "queued" webhook) and
// runners may take it. A job that is not waiting is an ErrInvalid.
func (s *Server) ApproveJob(id int64) error {
	return s.withJob("approve", id, func(j *job) error {
		if j.status != StatusWaiting {
			return fmt.Errorf("%w: it is %s, not waiting", ErrInvalid, j.status)
		}
		j.status = StatusQueued
		j.run.updatedAt = s.now()
		s.emitLocked("queued", j)
		s.wakeRunnersLocked()
		return nil
	})
}

// Job returns a snapshot of a job.
func (s *Server) Job(id int64) (JobInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return JobInfo{}, false
	}
	return j.info(), true
}

// Jobs returns snapshots of all jobs, oldest first.
func (s *Server) Jobs() []JobInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]JobInfo, 0, len(s.jobOrder))
	for _, id := range s.jobOrder {
		out = append(out, s.jobs[id].info())
	}
	return out
}

// Runners returns snapshots of the registered runners, by id. Ephemeral
// runners leave the registry when their job completes.
func (s *Server) Runners() []RunnerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RunnerInfo, 0, len(s.runners))
	for _, rr := range s.runners {
		out = append(out, rr.info())
	}
	slices.SortFunc(out, func(a, b RunnerInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// wakeRunnersLocked wakes every long-polling runner to look again.
func (s *Server) wakeRunnersLocked() {
	close(s.jobsChanged)
	s.jobsChanged = make(chan struct{})
}

// randHexLocked returns n random bytes, hex encoded, from the seeded RNG.
func (s *Server) randHexLocked(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(s.rng.Uint32())
	}
	return hex.EncodeToString(b)
}

// guidLocked returns a version-4-shaped UUID from the seeded RNG.
func (s *Server) guidLocked() string {
	h := s.randHexLocked(16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}

// secret returns a random secret with a prefix, from crypto/rand: secrets
// must not be predictable from the seed.
func secret(prefix string) string {
	return prefix + rand.Text()
}
