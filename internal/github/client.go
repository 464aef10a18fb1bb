package github

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	gh "github.com/google/go-github/v89/github"
)

const (
	// DefaultBaseURL is github.com's API root.
	DefaultBaseURL   = "https://api.github.com/"
	defaultUserAgent = "tandem"
	// DefaultRequestTimeout bounds one HTTP attempt.
	DefaultRequestTimeout = 30 * time.Second
	perPage               = 100
	// maxPages bounds every listing, against a server that never stops paging.
	maxPages = 1000
	// defaultRunnerGroupID is the ID of the "Default" runner group.
	defaultRunnerGroupID = 1
)

// Scope is where runners are registered: an organisation, or one repository.
type Scope struct {
	Owner string
	Repo  string // "" means organisation scope
}

// String returns "org <owner>" or "repo <owner>/<repo>".
func (s Scope) String() string {
	if s.Repo == "" {
		return "org " + s.Owner
	}
	return "repo " + s.Owner + "/" + s.Repo
}

// JITRequest describes a just-in-time runner to create.
type JITRequest struct {
	Name string
	// RunnerGroupID; 0 means the default group (ID 1).
	RunnerGroupID int64
	Labels        []string // 1 to 100 labels
	WorkFolder    string   // "" means the runner's default, "_work"
}

// JITConfig is a created just-in-time runner. EncodedConfig is a secret: it
// registers a runner. String, GoString and LogValue redact it; do not log or
// marshal the field itself.
type JITConfig struct {
	RunnerID      int64
	RunnerName    string
	EncodedConfig string
}

// String implements fmt.Stringer without the encoded config.
func (c JITConfig) String() string {
	return fmt.Sprintf("JITConfig{RunnerID:%d RunnerName:%q EncodedConfig:[REDACTED]}", c.RunnerID, c.RunnerName)
}

// GoString keeps the encoded config out of %#v output.
func (c JITConfig) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the encoded config.
func (c JITConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int64("runner_id", c.RunnerID),
		slog.String("runner_name", c.RunnerName),
		slog.String("encoded_config", "[REDACTED]"),
	)
}

// Runner is a self-hosted runner registered with GitHub.
type Runner struct {
	ID     int64
	Name   string
	Status string // "online" or "offline"
	Busy   bool
	Labels []string
}

// Job is a workflow job.
type Job struct {
	ID, RunID     int64
	RunAttempt    int
	Repo          string // owner/name
	Name          string
	WorkflowName  string
	Status        string // queued, in_progress, completed, waiting, ...
	Conclusion    string
	Labels        []string
	RunnerID      int64
	RunnerName    string
	RunnerGroupID int64
	HeadBranch    string
	HeadSHA       string
	HTMLURL       string // the job's page on GitHub
	// RepoVisibility is its repository's (Repository.Visibility), when the
	// call that found the job says.
	RepoVisibility string
	CreatedAt      time.Time
	StartedAt      time.Time
	CompletedAt    time.Time
}

// Installation is an installation of the App on an account.
type Installation struct {
	ID          int64
	Account     string // login
	AccountType string // "Organization" or "User"
}

// Repository is a repository an installation can access.
type Repository struct {
	ID       int64
	FullName string
	Owner    string
	Name     string
	// Visibility is "public", "private" or "internal"; "" when GitHub did
	// not say (Tandem then treats it as public).
	Visibility string
}

// Delivery is one delivery attempt of the App's webhook.
type Delivery struct {
	ID             int64
	GUID           string
	DeliveredAt    time.Time
	Redelivery     bool
	Status         string
	StatusCode     int
	Event, Action  string
	InstallationID int64
	RepositoryID   int64
}

// API is what Tandem needs from GitHub. installation is the App installation
// whose token authorises the call; repo is "owner/name".
type API interface {
	GenerateJITConfig(ctx context.Context, installation int64, s Scope, r JITRequest) (JITConfig, error)
	// ListRunners returns every runner of the scope, all pages.
	ListRunners(ctx context.Context, installation int64, s Scope) ([]Runner, error)
	// DeleteRunner removes a runner; ErrNotFound if it does not exist.
	DeleteRunner(ctx context.Context, installation int64, s Scope, runnerID int64) error
	// ListQueuedJobs returns the queued jobs of the repository's queued and
	// in-progress runs (latest attempt of each run).
	ListQueuedJobs(ctx context.Context, installation int64, repo string) ([]Job, error)
	GetJob(ctx context.Context, installation int64, repo string, jobID int64) (Job, error)
	// RerunJob re-runs a job of a completed run (the App needs "actions:
	// write"). The job comes again as a new job: a new id, the run's next
	// run_attempt, a workflow_job "queued" webhook.
	RerunJob(ctx context.Context, installation int64, repo string, jobID int64) error
	// ListInstallations returns the App's installations (App JWT).
	ListInstallations(ctx context.Context) ([]Installation, error)
	ListInstallationRepos(ctx context.Context, installation int64) ([]Repository, error)
	// ListDeliveries returns the App webhook's deliveries at or after since,
	// newest first (App JWT). A zero since returns all.
	ListDeliveries(ctx context.Context, since time.Time) ([]Delivery, error)
	// Redeliver asks GitHub to deliver a past delivery again (App JWT).
	Redeliver(ctx context.Context, deliveryID int64) error
	// ListRunnerGroups returns an organisation's runner groups, all pages;
	// with repo (a repository's name, without its owner), only the groups
	// that repository may use.
	ListRunnerGroups(ctx context.Context, installation int64, org, repo string) ([]RunnerGroup, error)
	// CreateCommitStatus sets a status of a repository's commit (the App
	// needs "Commit statuses: write").
	CreateCommitStatus(ctx context.Context, installation int64, repo, sha string, st CommitStatus) error
}

// CommitStatus is a status of a commit: State is pending, success,
// failure or error; Context names the check ("tandem/parity");
// Description is at most 140 characters (longer is cut); TargetURL, when
// set, is an http(s) link.
type CommitStatus struct {
	State, Context, Description, TargetURL string
}

// RunnerGroup is one of an organisation's self-hosted runner groups.
type RunnerGroup struct {
	ID   int64
	Name string
	// Visibility says which repositories may use it: "all", "selected"
	// (listed ones) or "private" (private and internal ones).
	Visibility string
	// Default is the organisation's "Default" group (ID 1).
	Default bool
	// AllowsPublicRepos: public repositories may use it (off by default:
	// a fork's pull request could run code on its runners).
	AllowsPublicRepos bool
	// RestrictedToWorkflows: only the workflows it names may use it.
	RestrictedToWorkflows bool
	// Inherited from the enterprise.
	Inherited bool
}

// Config configures a Client.
type Config struct {
	// BaseURL is the API root, used as is: "https://api.github.com/",
	// "https://ghe.example.com/api/v3/" or a test server's root. A trailing
	// slash is added if missing. Default DefaultBaseURL.
	BaseURL    string
	AppID      int64
	PrivateKey *rsa.PrivateKey
	// HTTPClient supplies the base transport (default http.DefaultTransport).
	// Its Timeout, if set, bounds a whole call including rate-limit waits;
	// leave it zero and rely on RequestTimeout and the caller's context.
	HTTPClient *http.Client
	// RequestTimeout bounds each HTTP attempt; 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	UserAgent      string // default "tandem"
	Logger         *slog.Logger
	Now            func() time.Time // default time.Now
	// MaxRetries bounds retries of a rate-limited request: 0 means
	// DefaultMaxRetries, negative means none.
	MaxRetries int
	// MaxRateLimitWait caps a single rate-limit wait; 0 means DefaultMaxWait.
	MaxRateLimitWait time.Duration
	// TokenRefreshMargin: 0 means DefaultTokenRefreshMargin.
	TokenRefreshMargin time.Duration
	// Sleep replaces the rate limiter's sleep, for tests.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Client implements API with go-github. It is safe for concurrent use.
type Client struct {
	gh   *gh.Client
	auth *Auth
	rl   *RateLimitTransport
	log  *slog.Logger
}

var _ API = (*Client)(nil)

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ua := cfg.UserAgent
	if ua == "" {
		ua = defaultUserAgent
	}
	hc := &http.Client{}
	if cfg.HTTPClient != nil {
		copied := *cfg.HTTPClient
		hc = &copied
	}
	rl := &RateLimitTransport{
		Base:           hc.Transport,
		MaxRetries:     cfg.MaxRetries,
		MaxWait:        cfg.MaxRateLimitWait,
		AttemptTimeout: cfg.RequestTimeout,
		Now:            cfg.Now,
		Sleep:          cfg.Sleep,
		Logger:         log,
	}
	if rl.AttemptTimeout <= 0 {
		rl.AttemptTimeout = DefaultRequestTimeout
	}
	hc.Transport = rl

	auth, err := NewAuth(AuthConfig{
		Credentials:   AppCredentials{AppID: cfg.AppID, PrivateKey: cfg.PrivateKey},
		BaseURL:       base.String(),
		HTTPClient:    hc,
		UserAgent:     ua,
		Logger:        log,
		Now:           cfg.Now,
		RefreshMargin: cfg.TokenRefreshMargin,
	})
	if err != nil {
		return nil, err
	}

	apiHC := *hc
	apiHC.Transport = &authTransport{base: rl, auth: auth, scheme: base.Scheme, host: base.Host}
	baseStr := base.String()
	ghc, err := gh.NewClient(
		gh.WithHTTPClient(&apiHC),
		gh.WithURLs(&baseStr, &baseStr),
		gh.WithUserAgent(ua),
		// RateLimitTransport tracks limits per credential; go-github's own
		// check is per client and would mix installations.
		gh.WithDisableRateLimitCheck(),
	)
	if err != nil {
		return nil, fmt.Errorf("github: create client: %w", err)
	}
	return &Client{gh: ghc, auth: auth, rl: rl, log: log}, nil
}

// Stats returns the rate-limit transport's counters.
func (c *Client) Stats() *TransportStats { return &c.rl.Stats }

// Auth returns the App authenticator the client uses.
func (c *Client) Auth() *Auth { return c.auth }

// credential selects how a request authenticates; carried in its context.
type credential struct {
	app          bool
	installation int64
}

type credentialCtxKey struct{}

func asApp(ctx context.Context) context.Context {
	return context.WithValue(ctx, credentialCtxKey{}, credential{app: true})
}

func asInstallation(ctx context.Context, id int64) context.Context {
	return context.WithValue(ctx, credentialCtxKey{}, credential{installation: id})
}

// authTransport adds the credential chosen by the request's context. It only
// authenticates requests to the API host, so a redirect elsewhere (e.g. to
// blob storage) never carries a token.
type authTransport struct {
	base         http.RoundTripper
	auth         *Auth
	scheme, host string
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != t.scheme || req.URL.Host != t.host {
		return t.base.RoundTrip(req)
	}
	cred, ok := req.Context().Value(credentialCtxKey{}).(credential)
	if !ok {
		closeBody(req)
		return nil, errors.New("github: request carries no credential")
	}
	var (
		token string
		err   error
	)
	if cred.app {
		token, err = t.auth.AppJWT()
	} else {
		token, err = t.auth.InstallationToken(req.Context(), cred.installation)
	}
	if err != nil {
		closeBody(req)
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := t.base.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		// The credential may have been revoked or may have expired early:
		// mint a new one next time.
		if cred.app {
			t.auth.invalidateJWT()
		} else {
			t.auth.InvalidateInstallationToken(cred.installation)
		}
	}
	return resp, err
}

var (
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$`)
	repoRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)
)

func (s Scope) validate() error {
	if !ownerRE.MatchString(s.Owner) {
		return fmt.Errorf("github: %w: invalid owner %.100q", ErrInvalidArgument, s.Owner)
	}
	if s.Repo != "" && (!repoRE.MatchString(s.Repo) || s.Repo == "." || s.Repo == "..") {
		return fmt.Errorf("github: %w: invalid repository name %.100q", ErrInvalidArgument, s.Repo)
	}
	return nil
}

// splitRepo splits and validates "owner/name".
func splitRepo(full string) (owner, name string, err error) {
	owner, name, ok := strings.Cut(full, "/")
	s := Scope{Owner: owner, Repo: name}
	if !ok || name == "" {
		return "", "", fmt.Errorf("github: %w: repository must be owner/name, got %.100q", ErrInvalidArgument, full)
	}
	if err := s.validate(); err != nil {
		return "", "", err
	}
	return owner, name, nil
}

func validateID(what string, id int64) error {
	if id <= 0 {
		return fmt.Errorf("github: %w: %s must be positive", ErrInvalidArgument, what)
	}
	return nil
}

// GenerateJITConfig creates a just-in-time runner in the scope.
func (c *Client) GenerateJITConfig(ctx context.Context, installation int64, s Scope, r JITRequest) (JITConfig, error) {
	if err := validateID("installation id", installation); err != nil {
		return JITConfig{}, err
	}
	if err := s.validate(); err != nil {
		return JITConfig{}, err
	}
	if strings.TrimSpace(r.Name) == "" {
		return JITConfig{}, fmt.Errorf("github: %w: runner name is required", ErrInvalidArgument)
	}
	if len(r.Labels) == 0 || len(r.Labels) > 100 {
		return JITConfig{}, fmt.Errorf("github: %w: need 1 to 100 runner labels, got %d", ErrInvalidArgument, len(r.Labels))
	}
	for _, l := range r.Labels {
		if strings.TrimSpace(l) == "" {
			return JITConfig{}, fmt.Errorf("github: %w: empty runner label", ErrInvalidArgument)
		}
	}
	if r.RunnerGroupID < 0 {
		return JITConfig{}, fmt.Errorf("github: %w: negative runner group id", ErrInvalidArgument)
	}
	body := gh.CreateJITConfigRequest{
		Name:          r.Name,
		RunnerGroupID: r.RunnerGroupID,
		Labels:        r.Labels,
	}
	if body.RunnerGroupID == 0 {
		body.RunnerGroupID = defaultRunnerGroupID
	}
	if r.WorkFolder != "" {
		body.WorkFolder = &r.WorkFolder
	}

	ctx = asInstallation(ctx, installation)
	var (
		jit *gh.JITRunnerConfig
		err error
	)
	if s.Repo == "" {
		jit, _, err = c.gh.Actions.CreateOrgJITConfig(ctx, s.Owner, body)
	} else {
		jit, _, err = c.gh.Actions.CreateRepoJITConfig(ctx, s.Owner, s.Repo, body)
	}
	op := fmt.Sprintf("generate jit config for %s", s)
	if err != nil {
		return JITConfig{}, wrapErr(op, err)
	}
	if jit == nil || jit.GetEncodedJITConfig() == "" || jit.GetRunner().GetID() <= 0 {
		return JITConfig{}, fmt.Errorf("github: %s: response lacks runner id or encoded config", op)
	}
	name := jit.GetRunner().GetName()
	if name == "" {
		name = r.Name
	}
	c.log.Debug("github jit runner created", "scope", s.String(), "runner_id", jit.GetRunner().GetID(), "runner_name", name)
	return JITConfig{RunnerID: jit.GetRunner().GetID(), RunnerName: name, EncodedConfig: jit.GetEncodedJITConfig()}, nil
}

// ListRunners returns every self-hosted runner of the scope.
func (c *Client) ListRunners(ctx context.Context, installation int64, s Scope) ([]Runner, error) {
	if err := validateID("installation id", installation); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	ctx = asInstallation(ctx, installation)
	runners, err := collectPages(func(page int) ([]*gh.Runner, *gh.Response, error) {
		opts := &gh.ListRunnersOptions{ListOptions: gh.ListOptions{Page: page, PerPage: perPage}}
		var (
			rs   *gh.Runners
			resp *gh.Response
			err  error
		)
		if s.Repo == "" {
			rs, resp, err = c.gh.Actions.ListOrganizationRunners(ctx, s.Owner, opts)
		} else {
			rs, resp, err = c.gh.Actions.ListRunners(ctx, s.Owner, s.Repo, opts)
		}
		if rs == nil {
			return nil, resp, err
		}
		return rs.Runners, resp, err
	})
	if err != nil {
		return nil, wrapErr(fmt.Sprintf("list runners for %s", s), err)
	}
	out := make([]Runner, 0, len(runners))
	for _, r := range runners {
		out = append(out, convertRunner(r))
	}
	return out, nil
}

// DeleteRunner removes a runner from the scope.
func (c *Client) DeleteRunner(ctx context.Context, installation int64, s Scope, runnerID int64) error {
	if err := validateID("installation id", installation); err != nil {
		return err
	}
	if err := validateID("runner id", runnerID); err != nil {
		return err
	}
	if err := s.validate(); err != nil {
		return err
	}
	ctx = asInstallation(ctx, installation)
	var err error
	if s.Repo == "" {
		_, err = c.gh.Actions.RemoveOrganizationRunner(ctx, s.Owner, runnerID)
	} else {
		_, err = c.gh.Actions.RemoveRunner(ctx, s.Owner, s.Repo, runnerID)
	}
	return wrapErr(fmt.Sprintf("delete runner %d from %s", runnerID, s), err)
}

// ListQueuedJobs lists the repository's runs with status queued and with
// status in_progress (a run is in progress as soon as one of its jobs starts,
// while others may still be queued), then each run's latest-attempt jobs, and
// returns those whose status is "queued". A run that changes status between
// the two listings may be missed; callers poll periodically, so the next poll
// sees it.
func (c *Client) ListQueuedJobs(ctx context.Context, installation int64, repo string) ([]Job, error) {
	if err := validateID("installation id", installation); err != nil {
		return nil, err
	}
	owner, name, err := splitRepo(repo)
	if err != nil {
		return nil, err
	}
	ctx = asInstallation(ctx, installation)

	var runIDs []int64
	seen := make(map[int64]bool)
	vis := "" // the repository's visibility, as its runs say
	for _, status := range []string{"queued", "in_progress"} {
		runs, err := collectPages(func(page int) ([]*gh.WorkflowRun, *gh.Response, error) {
			opts := &gh.ListWorkflowRunsOptions{Status: status, ListOptions: gh.ListOptions{Page: page, PerPage: perPage}}
			wr, resp, err := c.gh.Actions.ListRepositoryWorkflowRuns(ctx, owner, name, opts)
			if wr == nil {
				return nil, resp, err
			}
			return wr.WorkflowRuns, resp, err
		})
		if err != nil {
			return nil, wrapErr(fmt.Sprintf("list %s runs of %s", status, repo), err)
		}
		for _, r := range runs {
			if rp := r.GetRepository(); rp != nil {
				if v := visibility(rp.GetVisibility(), rp.Private); v != "" {
					vis = v
				}
			}
			if id := r.GetID(); id > 0 && !seen[id] {
				seen[id] = true
				runIDs = append(runIDs, id)
			}
		}
	}

	var out []Job
	for _, runID := range runIDs {
		jobs, err := collectPages(func(page int) ([]*gh.WorkflowJob, *gh.Response, error) {
			opts := &gh.ListWorkflowJobsOptions{Filter: "latest", ListOptions: gh.ListOptions{Page: page, PerPage: perPage}}
			js, resp, err := c.gh.Actions.ListWorkflowJobs(ctx, owner, name, runID, opts)
			if js == nil {
				return nil, resp, err
			}
			return js.Jobs, resp, err
		})
		if err != nil {
			werr := wrapErr(fmt.Sprintf("list jobs of run %d in %s", runID, repo), err)
			if errors.Is(werr, ErrNotFound) {
				continue // the run was deleted after it was listed
			}
			return nil, werr
		}
		for _, j := range jobs {
			if j.GetStatus() == "queued" {
				cj := convertJob(j, repo)
				cj.RepoVisibility = vis
				out = append(out, cj)
			}
		}
	}
	return out, nil
}

// GetJob returns one workflow job.
func (c *Client) GetJob(ctx context.Context, installation int64, repo string, jobID int64) (Job, error) {
	if err := validateID("installation id", installation); err != nil {
		return Job{}, err
	}
	if err := validateID("job id", jobID); err != nil {
		return Job{}, err
	}
	owner, name, err := splitRepo(repo)
	if err != nil {
		return Job{}, err
	}
	j, _, err := c.gh.Actions.GetWorkflowJobByID(asInstallation(ctx, installation), owner, name, jobID)
	if err != nil {
		return Job{}, wrapErr(fmt.Sprintf("get job %d in %s", jobID, repo), err)
	}
	return convertJob(j, repo), nil
}

// msgNoPermission is GitHub's 403 message to an App that lacks the
// permission an endpoint needs.
const msgNoPermission = "Resource not accessible by integration"

// RerunJob asks GitHub to re-run a job: POST
// /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun, answered 201. GitHub
// starts a new attempt of the job's run in which the job runs again as a
// new job; the answer does not say which. Errors:
//
//   - ErrUnauthorized, saying the App needs "actions: write", when GitHub
//     answers 403 "Resource not accessible by integration";
//   - ErrConflict for any other 403 that is not a rate limit: GitHub
//     refuses the job in its state, e.g. "This workflow is already
//     running" while the job's run has not completed (retry once it has);
//   - ErrNotFound for a job or repository the installation cannot see.
func (c *Client) RerunJob(ctx context.Context, installation int64, repo string, jobID int64) error {
	if err := validateID("installation id", installation); err != nil {
		return err
	}
	if err := validateID("job id", jobID); err != nil {
		return err
	}
	owner, name, err := splitRepo(repo)
	if err != nil {
		return err
	}
	_, err = c.gh.Actions.RerunJobByID(asInstallation(ctx, installation), owner, name, jobID)
	op := fmt.Sprintf("rerun job %d in %s", jobID, repo)
	var er *gh.ErrorResponse
	if !errors.As(err, &er) || er.Response == nil || er.Response.StatusCode != http.StatusForbidden ||
		classifyStatus(http.StatusForbidden, er.Response.Header) != ErrUnauthorized {
		return wrapErr(op, err)
	}
	if strings.Contains(er.Message, msgNoPermission) {
		return fmt.Errorf("github: %s: the App needs the \"actions: write\" permission: %w",
			op, newStatusError(er.Response, er.Message, ErrUnauthorized))
	}
	return fmt.Errorf("github: %s: %w", op, newStatusError(er.Response, er.Message, ErrConflict))
}

// ListInstallations returns every installation of the App.
func (c *Client) ListInstallations(ctx context.Context) ([]Installation, error) {
	ctx = asApp(ctx)
	insts, err := collectPages(func(page int) ([]*gh.Installation, *gh.Response, error) {
		return c.gh.Apps.ListInstallations(ctx, &gh.ListOptions{Page: page, PerPage: perPage})
	})
	if err != nil {
		return nil, wrapErr("list installations", err)
	}
	out := make([]Installation, 0, len(insts))
	for _, in := range insts {
		typ := in.GetAccount().GetType()
		if typ == "" {
			typ = in.GetTargetType()
		}
		out = append(out, Installation{ID: in.GetID(), Account: in.GetAccount().GetLogin(), AccountType: typ})
	}
	return out, nil
}

// ListInstallationRepos returns every repository the installation can access.
func (c *Client) ListInstallationRepos(ctx context.Context, installation int64) ([]Repository, error) {
	if err := validateID("installation id", installation); err != nil {
		return nil, err
	}
	ctx = asInstallation(ctx, installation)
	repos, err := collectPages(func(page int) ([]*gh.Repository, *gh.Response, error) {
		lr, resp, err := c.gh.Apps.ListRepos(ctx, &gh.ListOptions{Page: page, PerPage: perPage})
		if lr == nil {
			return nil, resp, err
		}
		return lr.Repositories, resp, err
	})
	if err != nil {
		return nil, wrapErr(fmt.Sprintf("list repositories of installation %d", installation), err)
	}
	out := make([]Repository, 0, len(repos))
	for _, r := range repos {
		out = append(out, Repository{
			ID:         r.GetID(),
			FullName:   r.GetFullName(),
			Owner:      r.GetOwner().GetLogin(),
			Name:       r.GetName(),
			Visibility: visibility(r.GetVisibility(), r.Private),
		})
	}
	return out, nil
}

// ListDeliveries pages through the App webhook's deliveries, newest first,
// and stops at the first one delivered before since.
func (c *Client) ListDeliveries(ctx context.Context, since time.Time) ([]Delivery, error) {
	ctx = asApp(ctx)
	opts := &gh.ListCursorOptions{PerPage: perPage}
	seenCursors := make(map[string]bool)
	var out []Delivery
	for range maxPages {
		ds, resp, err := c.gh.Apps.ListHookDeliveries(ctx, opts)
		if err != nil {
			return nil, wrapErr("list webhook deliveries", err)
		}
		for _, d := range ds {
			at := d.GetDeliveredAt().Time
			if !since.IsZero() && at.Before(since) {
				return out, nil
			}
			out = append(out, Delivery{
				ID:             d.GetID(),
				GUID:           d.GetGUID(),
				DeliveredAt:    at,
				Redelivery:     d.GetRedelivery(),
				Status:         d.GetStatus(),
				StatusCode:     d.GetStatusCode(),
				Event:          d.GetEvent(),
				Action:         d.GetAction(),
				InstallationID: d.GetInstallationID(),
				RepositoryID:   d.GetRepositoryID(),
			})
		}
		if resp == nil || resp.Cursor == "" || len(ds) == 0 {
			return out, nil
		}
		if seenCursors[resp.Cursor] {
			return nil, errors.New("github: list webhook deliveries: pagination cursor repeats")
		}
		seenCursors[resp.Cursor] = true
		opts.Cursor = resp.Cursor
	}
	return nil, fmt.Errorf("github: list webhook deliveries: more than %d pages", maxPages)
}

// Redeliver asks GitHub to redeliver a webhook delivery. GitHub answers 202.
func (c *Client) Redeliver(ctx context.Context, deliveryID int64) error {
	if err := validateID("delivery id", deliveryID); err != nil {
		return err
	}
	_, _, err := c.gh.Apps.RedeliverHookDelivery(asApp(ctx), deliveryID)
	var accepted *gh.AcceptedError
	if errors.As(err, &accepted) {
		return nil
	}
	return wrapErr(fmt.Sprintf("redeliver webhook delivery %d", deliveryID), err)
}

// ListRunnerGroups returns an organisation's runner groups; with repo, the
// ones that repository (of org) may use.
func (c *Client) ListRunnerGroups(ctx context.Context, installation int64, org, repo string) ([]RunnerGroup, error) {
	if err := validateID("installation id", installation); err != nil {
		return nil, err
	}
	if err := (Scope{Owner: org, Repo: repo}).validate(); err != nil {
		return nil, err
	}
	ctx = asInstallation(ctx, installation)
	groups, err := collectPages(func(page int) ([]*gh.RunnerGroup, *gh.Response, error) {
		gs, resp, err := c.gh.Actions.ListOrganizationRunnerGroups(ctx, org, &gh.ListOrgRunnerGroupOptions{
			ListOptions: gh.ListOptions{Page: page, PerPage: perPage}, VisibleToRepository: repo})
		if gs == nil {
			return nil, resp, err
		}
		return gs.RunnerGroups, resp, err
	})
	if err != nil {
		return nil, wrapErr("list runner groups of "+org, err)
	}
	out := make([]RunnerGroup, 0, len(groups))
	for _, g := range groups {
		out = append(out, RunnerGroup{ID: g.GetID(), Name: g.GetName(), Visibility: g.GetVisibility(),
			Default: g.GetDefault(), AllowsPublicRepos: g.GetAllowsPublicRepositories(),
			RestrictedToWorkflows: g.GetRestrictedToWorkflows(), Inherited: g.GetInherited()})
	}
	return out, nil
}

var commitSHA = regexp.MustCompile(`^[0-9a-f]{40}$`)

// CreateCommitStatus sets a status of a repository's commit.
func (c *Client) CreateCommitStatus(ctx context.Context, installation int64, repo, sha string, st CommitStatus) error {
	if err := validateID("installation id", installation); err != nil {
		return err
	}
	owner, name, err := splitRepo(repo)
	if err != nil {
		return err
	}
	switch {
	case !commitSHA.MatchString(sha):
		return fmt.Errorf("github: %w: commit %.100q: want 40 lower-case hex digits", ErrInvalidArgument, sha)
	case st.State != "pending" && st.State != "success" && st.State != "failure" && st.State != "error":
		return fmt.Errorf("github: %w: status state %.20q", ErrInvalidArgument, st.State)
	case st.Context == "":
		return fmt.Errorf("github: %w: a status needs a context", ErrInvalidArgument)
	}
	if r := []rune(st.Description); len(r) > 140 {
		st.Description = string(r[:139]) + "…"
	}
	rs := gh.RepoStatus{State: &st.State, Context: &st.Context, Description: &st.Description}
	if st.TargetURL != "" {
		rs.TargetURL = &st.TargetURL
	}
	_, _, err = c.gh.Repositories.CreateStatus(asInstallation(ctx, installation), owner, name, sha, rs)
	return wrapErr(fmt.Sprintf("set status %s of %s@%s", st.Context, repo, sha[:12]), err)
}

// collectPages follows page-number pagination until there is no next page.
func collectPages[T any](fetch func(page int) ([]T, *gh.Response, error)) ([]T, error) {
	var all []T
	page := 1
	for range maxPages {
		items, resp, err := fetch(page)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if resp == nil || resp.NextPage == 0 {
			return all, nil
		}
		if resp.NextPage <= page {
			return nil, fmt.Errorf("next page %d does not follow page %d", resp.NextPage, page)
		}
		page = resp.NextPage
	}
	return nil, fmt.Errorf("more than %d pages", maxPages)
}

func convertRunner(r *gh.Runner) Runner {
	out := Runner{ID: r.GetID(), Name: r.GetName(), Status: r.GetStatus(), Busy: r.GetBusy()}
	for _, l := range r.Labels {
		if n := l.GetName(); n != "" {
			out.Labels = append(out.Labels, n)
		}
	}
	return out
}

func convertJob(j *gh.WorkflowJob, repo string) Job {
	return Job{
		ID:            j.GetID(),
		RunID:         j.GetRunID(),
		RunAttempt:    int(j.GetRunAttempt()),
		Repo:          repo,
		Name:          j.GetName(),
		WorkflowName:  j.GetWorkflowName(),
		Status:        j.GetStatus(),
		Conclusion:    j.GetConclusion(),
		Labels:        j.Labels,
		RunnerID:      j.GetRunnerID(),
		RunnerName:    j.GetRunnerName(),
		RunnerGroupID: j.GetRunnerGroupID(),
		HeadBranch:    j.GetHeadBranch(),
		HeadSHA:       j.GetHeadSHA(),
		HTMLURL:       j.GetHTMLURL(),
		CreatedAt:     j.GetCreatedAt().Time,
		StartedAt:     j.GetStartedAt().Time,
		CompletedAt:   j.GetCompletedAt().Time,
	}
}
