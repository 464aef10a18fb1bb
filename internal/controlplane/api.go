package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/dashboard"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// Handler serves the control plane's HTTP surface:
//
//	POST /webhook                 GitHub's webhooks
//	GET  /healthz                 200 when the store answers
//	GET  /metrics                 Prometheus
//	GET  /api/v1/jobs             ?state=queued,running&org=&repo=&limit=
//	GET  /api/v1/jobs/{id}        a job and its transitions
//	GET  /api/v1/hosts            hosts, capacity, use, state
//	GET  /api/v1/runners          ?live=1&host=
//	GET  /api/v1/reconcilers      reconciler and dispatcher counters
//	GET  /api/v1/images           the images the control plane names (images.go)
//	GET  /api/v1/jobs/{id}/egress the policy a job's VM ran under, what it did (egress.go)
//	GET  /api/v1/jobs/{id}/profile what the job's VM used: summary and chart points (profiles.go)
//	GET  /api/v1/rightsize        ?org=&repo=&days=28&runs=30: sizes against use (rightsize.go)
//	GET  /api/v1/insights         ?days=7&by=repo&org=&repo=: a period against the one before (insights.go)
//	GET  /api/v1/hosts/{id}/load  ?hours=24: the host's load, a record a minute (hostload.go)
//	GET  /api/v1/egress/suggest   ?repo=OWNER/NAME&last=N: an allowlist from recent jobs
//	GET  /api/v1/audit            operator actions, newest first (admin; audit.go)
//	GET  /api/v1/pools            warm pools: idle VMs, target, hits (pools.go)
//	GET  /api/v1/jobs/{id}/ssh    a WebSocket: a debug session in the job's VM (debug.go)
//	GET  /api/v1/ssh              the jobs the token may open a debug session in
//	GET  /api/v1/parity[/check|/report], /badge/parity/ORG/REPO.svg  Arm64/x86 parity (parity.go)
//	GET  /, /jobs, /hosts, ...    the web dashboard (internal/dashboard; dashboard.go)
//
// and the operator endpoints of ops.go. API tokens (APITokens) guard
// everything under /api/; the dashboard's pages need a session, which a
// login with an API token starts.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/webhook", s.handleWebhook)
	mux.Handle("GET /metrics", s.metrics.handler())
	s.api.routes(mux)
	return mux
}

// api serves the JSON API and /healthz. It reads the store, the agents'
// links and the placer; what an operator changes beyond the store goes to
// the control plane through cp. It holds no state of its own.
type api struct {
	st       store.Store
	links    *links
	place    *placer
	images   func() ImageSet
	tokens   APITokens
	logDir   string // runner logs (ops.go)
	agentPin string // written into enrolment tokens
	cp       apiControl
	log      *slog.Logger
	now      func() time.Time
	labels   *labels.Parser       // the runs-on labels (right-sizing's suggested labels)
	advice   *adviceCache         // right-sizing's recent answers
	dash     *dashboard.Dashboard // its sessions live in memory
	parity   parity.Policy        // the parity policy (parity.go)
	// debugOrgs are the organisations whose scoped read tokens may open
	// debug sessions in their jobs (debug.go).
	debugOrgs []string
}

// apiControl is what the operator endpoints ask of the control plane.
type apiControl interface {
	// hostGone ends a host's runners, as when it leaves the fleet.
	hostGone(ctx context.Context, id string, kind failure.Kind, reason string) error
	// kickPlacement asks for a placement pass soon.
	kickPlacement()
	// retryJob queues an unmatched job again (groups.go).
	retryJob(ctx context.Context, id int64, by string) (store.Job, error)
	// health is what /healthz says of a control plane that answers.
	health(ctx context.Context) Health
	// reachable is the set of hosts whose agents are attached to a
	// replica now (replicas.go); holder the replica a host's record names,
	// when replicas share the store ("" otherwise).
	reachable(hosts []store.Host, now time.Time) map[string]bool
	holder(h store.Host) string
	// poolViews shows the warm pools (pools.go).
	poolViews(ctx context.Context) ([]PoolView, error)
	// execIn runs a debug session in a runner's VM; execs counts them
	// (debug.go).
	execIn(ctx context.Context, hostID, runner string, c agentapi.ExecConn) error
	execs() *execWaits
}

func newAPI(s *Server) *api {
	a := &api{st: s.st, links: s.links, place: s.place, images: s.Images, tokens: s.cfg.APITokens,
		logDir: s.cfg.LogDir, agentPin: s.cfg.AgentPin, cp: s, log: s.log, now: s.now, labels: s.cfg.Labels, advice: newAdviceCache(), parity: s.cfg.Parity,
		debugOrgs: s.cfg.DebugOrgs}
	a.dash = dashboard.New(dashboard.Config{Backend: dashBackend{a}, Logger: s.log.With("part", "dashboard"), Now: s.now})
	return a
}

func (a *api) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", a.handleHealth)
	mux.HandleFunc("GET /api/v1/jobs", a.guard(false, a.handleJobs))
	mux.HandleFunc("GET /api/v1/jobs/{id}", a.guard(false, a.handleJob))
	mux.HandleFunc("GET /api/v1/hosts", a.guard(false, a.handleHosts))
	mux.HandleFunc("GET /api/v1/runners", a.guard(false, a.handleRunners))
	mux.HandleFunc("GET /api/v1/reconcilers", a.guard(false, a.handleCounters))
	mux.HandleFunc("GET /api/v1/images", a.guard(false, a.handleImages))
	mux.HandleFunc("GET /api/v1/pools", a.guard(false, a.handlePools))
	mux.HandleFunc("GET /api/v1/jobs/{id}/ssh", a.guard(false, a.handleSSH))
	mux.HandleFunc("GET /api/v1/ssh", a.guard(false, a.handleDebuggable))
	mux.HandleFunc("GET /api/v1/jobs/{id}/egress", a.guard(false, a.handleJobEgress))
	mux.HandleFunc("GET /api/v1/jobs/{id}/profile", a.guard(false, a.handleJobProfile))
	mux.HandleFunc("GET /api/v1/rightsize", a.guard(false, a.handleRightsize))
	mux.HandleFunc("GET /api/v1/insights", a.guard(false, a.handleInsights))
	mux.HandleFunc("GET /api/v1/hosts/{id}/load", a.guard(false, a.handleHostLoad))
	mux.HandleFunc("GET /api/v1/egress/suggest", a.guard(false, a.handleEgressSuggest))
	mux.HandleFunc("GET /api/v1/audit", a.guard(false, a.handleAudit))
	mux.HandleFunc("GET /api/v1/parity", a.guard(false, a.handleParity))
	mux.HandleFunc("GET /api/v1/parity/check", a.guard(false, a.handleParityCheck))
	mux.HandleFunc("GET /api/v1/parity/report", a.guard(false, a.handleParityReport))
	mux.HandleFunc("GET /badge/parity/{org}/{file}", a.handleBadge)
	a.opsRoutes(mux)
	a.dash.Register(mux)
}

func (a *api) handleImages(w http.ResponseWriter, r *http.Request) {
	list := a.images().List()
	if list == nil {
		list = []NamedImage{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"images": list})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// storeFailed answers a request whose store work failed: 404 with
// notFound when a record is missing (or another tenant's), else 500. It
// reports whether it answered.
func storeFailed(w http.ResponseWriter, err error, notFound string) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusNotFound, notFound)
	default:
		httpError(w, http.StatusInternalServerError, err.Error())
	}
	return true
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// handleHealth says whether the store answers and whether this replica
// leads; why not, and which replica leads, only to a caller with an API
// token (an error's text may say more than a stranger should learn).
func (a *api) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.st.View(ctx, func(tx store.ReadTx) error { _, err := tx.CountJobs(); return err }); err != nil {
		if _, ok := a.authenticate(r); ok {
			httpError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		} else {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable"})
		}
		return
	}
	h := a.cp.health(ctx)
	if _, ok := a.authenticate(r); !ok {
		// The listener faces GitHub, so the internet: a load balancer
		// needs no more than this; the replicas' names are for operators.
		writeJSON(w, http.StatusOK, map[string]any{"status": h.Status, "leading": h.Leading})
		return
	}
	writeJSON(w, http.StatusOK, h)
}

// JobView is a job as the API shows it.
type JobView struct {
	ID          int64      `json:"id"`
	RunID       int64      `json:"run_id"`
	Repo        string     `json:"repo"`
	Org         string     `json:"org"`
	Name        string     `json:"name,omitempty"`
	Workflow    string     `json:"workflow,omitempty"`
	Labels      []string   `json:"labels"`
	Arch        string     `json:"arch,omitempty"`
	VCPUs       float64    `json:"vcpus,omitempty"`
	MemoryMiB   int        `json:"memory_mib,omitempty"`
	State       string     `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	Runner      string     `json:"runner,omitempty"`
	Host        string     `json:"host,omitempty"`
	RunAttempt  int        `json:"run_attempt,omitempty"`
	HeadBranch  string     `json:"head_branch,omitempty"`
	HeadSHA     string     `json:"head_sha,omitempty"`
	HTMLURL     string     `json:"html_url,omitempty"` // the job on GitHub
	Sender      string     `json:"sender,omitempty"`
	Public      bool       `json:"public,omitempty"` // its repository is public
	Attempts    int        `json:"attempts"`
	Reopens     int        `json:"reopens,omitempty"` // opened again after Tandem failed it
	Conclusion  string     `json:"conclusion,omitempty"`
	CreatedAt   *time.Time `json:"created_at,omitempty"` // on GitHub
	QueuedAt    time.Time  `json:"queued_at"`            // first heard of by Tandem
	UpdatedAt   time.Time  `json:"updated_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
	// GitHub's own times (StartedAt and CompletedAt are Tandem's).
	GitHubStartedAt   *time.Time `json:"github_started_at,omitempty"`
	GitHubCompletedAt *time.Time `json:"github_completed_at,omitempty"`
	// VMKeptUntil: the failed job's VM is kept for debugging until then
	// (debug.keep_failed; the job's detail only).
	VMKeptUntil *time.Time `json:"vm_kept_until,omitempty"`
	// Rerun: the job was lost to Tandem or its host, and this is its
	// re-run on GitHub (retry.infra_losses); RerunOf: the job is the
	// re-run of that one, lost for that cause (the job's detail only).
	Rerun   *RetryView  `json:"rerun,omitempty"`
	RerunOf *RetryView  `json:"rerun_of,omitempty"`
	Events  []EventView `json:"events,omitempty"`
}

// RetryView is the re-run of a job lost to Tandem or its host.
type RetryView struct {
	Job       int64     `json:"job"` // the lost job
	Cause     string    `json:"cause"`
	State     string    `json:"state"` // pending, requested, moot or refused
	Detail    string    `json:"detail,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

func retryView(r store.Retry) *RetryView {
	return &RetryView{Job: r.JobID, Cause: string(r.Cause), State: string(r.State), Detail: r.Detail, UpdatedAt: r.UpdatedAt}
}

// EventView is one transition of a job.
type EventView struct {
	At     time.Time `json:"at"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Source string    `json:"source"`
	Reason string    `json:"reason,omitempty"`
	Runner string    `json:"runner,omitempty"`
	Host   string    `json:"host,omitempty"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// jobView shows a job; a queued job's reason is the last placement pass's.
func (a *api) jobView(j store.Job) JobView {
	if j.State == store.JobQueued {
		if why, ok := a.place.whyWaiting(j.ID); ok {
			j.Reason = why
		}
	}
	return JobView{ID: j.ID, RunID: j.RunID, Repo: j.Repo, Org: j.Org, Name: j.Name, Workflow: j.Workflow,
		Labels: j.Labels, Arch: string(j.Arch), VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB,
		State: string(j.State), Reason: j.Reason, Runner: j.RunnerName, Host: j.HostID,
		RunAttempt: j.RunAttempt, HeadBranch: j.HeadBranch, HeadSHA: j.HeadSHA, HTMLURL: j.HTMLURL, Sender: j.Sender, Public: j.Public,
		CreatedAt: optTime(j.CreatedAt), GitHubStartedAt: optTime(j.GitHubStartedAt), GitHubCompletedAt: optTime(j.GitHubCompletedAt),
		Attempts: j.Attempts, Reopens: j.Reopens, Conclusion: j.Conclusion, QueuedAt: j.QueuedAt, UpdatedAt: j.UpdatedAt,
		StartedAt: optTime(j.StartedAt), CompletedAt: optTime(j.CompletedAt)}
}

func (a *api) handleJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := who(r)
	f := store.JobFilter{Org: q.Get("org"), Repo: q.Get("repo"), Orgs: p.scope(), Newest: true, Limit: 500}
	if v := q.Get("state"); v != "" {
		for _, st := range strings.Split(v, ",") {
			js := store.JobState(st)
			if !js.Valid() {
				httpError(w, http.StatusBadRequest, "unknown state "+strconv.Quote(st))
				return
			}
			f.States = append(f.States, js)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			httpError(w, http.StatusBadRequest, "limit: want 1 to 10000")
			return
		}
		f.Limit = n
	}
	out, err := a.listJobs(r.Context(), f)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

// listJobs returns the jobs f selects as the API shows them (the JSON API
// and the dashboard).
func (a *api) listJobs(ctx context.Context, f store.JobFilter) ([]JobView, error) {
	var jobs []store.Job
	if err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		jobs, err = tx.Jobs(f)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]JobView, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, a.jobView(j))
	}
	return out, nil
}

func (a *api) handleJob(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		httpError(w, http.StatusBadRequest, "job id: want a positive integer")
		return
	}
	v, err := a.jobDetail(r.Context(), who(r), id)
	if storeFailed(w, err, "no such job") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// jobDetail returns job id with its transitions, or store.ErrNotFound if p
// may not see it.
func (a *api) jobDetail(ctx context.Context, p principal, id int64) (JobView, error) {
	var j store.Job
	var evs []store.JobEvent
	var run store.Runner
	var retries []store.Retry
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if j, err = tx.Job(id); err != nil {
			return err
		}
		if !p.sees(j.Org) {
			return store.ErrNotFound // another tenant's: not even its existence
		}
		if j.RunID != 0 {
			// Its own retry, and those of its name in its run: what it
			// re-runs.
			if retries, err = tx.Retries(store.RetryFilter{Repo: j.Repo, RunID: j.RunID, Name: j.Name}); err != nil {
				return err
			}
		}
		if evs, err = tx.JobEvents(id); err != nil || j.RunnerName == "" {
			return err
		}
		if run, err = tx.Runner(j.RunnerName); errors.Is(err, store.ErrNotFound) {
			err = nil
		}
		return err
	})
	if err != nil {
		return JobView{}, err
	}
	v := a.jobView(j)
	if run.State != store.RunnerEnded && run.KeptUntil.After(a.now()) {
		v.VMKeptUntil = optTime(run.KeptUntil)
	}
	for _, r := range retries {
		switch {
		case r.JobID == j.ID:
			v.Rerun = retryView(r)
		case r.State == store.RetryRequested && r.JobID < j.ID && (v.RerunOf == nil || r.JobID > v.RerunOf.Job):
			// GitHub's job ids grow: the re-run of the latest
			// earlier job of its name.
			v.RerunOf = retryView(r)
		}
	}
	for _, e := range evs {
		v.Events = append(v.Events, EventView{At: e.At, From: string(e.From), To: string(e.To),
			Source: e.Source, Reason: e.Reason, Runner: e.Runner, Host: e.Host})
	}
	return v, nil
}

// HostView is a host as the API shows it.
type HostView struct {
	ID            string              `json:"id"`
	State         string              `json:"state"`
	Reason        string              `json:"reason,omitempty"`
	Connected     bool                `json:"connected"`
	Replica       string              `json:"replica,omitempty"` // the replica its agent is attached to (several replicas only)
	Arches        []store.ArchSupport `json:"arches"`
	VCPUs         float64             `json:"vcpus"`
	MemoryMiB     int                 `json:"memory_mib"`
	UsedVCPUs     float64             `json:"used_vcpus"`
	UsedMemoryMiB int                 `json:"used_memory_mib"`
	Runners       int                 `json:"runners"`
	LastSeen      time.Time           `json:"last_seen"`
	// From the last heartbeat of a remote host's agent.
	Load1       float64 `json:"load1,omitempty"`
	DiskFreeMiB int64   `json:"disk_free_mib,omitempty"`
}

func (a *api) handleHosts(w http.ResponseWriter, r *http.Request) {
	out, err := a.hostViews(r.Context())
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": out})
}

// hostViews returns every host as the API shows it.
func (a *api) hostViews(ctx context.Context) ([]HostView, error) {
	var hosts []store.Host
	var live []store.Runner
	if err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if hosts, err = tx.Hosts(); err != nil {
			return err
		}
		live, err = tx.Runners(store.RunnerFilter{Live: true})
		return err
	}); err != nil {
		return nil, err
	}
	conn := a.cp.reachable(hosts, a.now())
	out := make([]HostView, 0, len(hosts))
	for _, h := range hosts {
		v := HostView{ID: h.ID, State: string(h.State), Reason: h.Reason, Connected: conn[h.ID], Replica: a.cp.holder(h),
			Arches: h.Arches, VCPUs: h.VCPUs, MemoryMiB: h.MemoryMiB, LastSeen: h.LastSeen}
		seen, hb, beat := a.links.seen(h.ID)
		if seen.After(v.LastSeen) {
			v.LastSeen = seen
		}
		if beat {
			v.Load1, v.DiskFreeMiB = hb.Load1, hb.Capacity.DiskFreeMiB
		}
		for _, r := range live {
			if r.HostID == h.ID {
				v.UsedVCPUs += r.VCPUs
				v.UsedMemoryMiB += r.MemoryMiB
				v.Runners++
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// RunnerView is a runner as the API shows it.
type RunnerView struct {
	Name      string     `json:"name"`
	Host      string     `json:"host"`
	Job       int64      `json:"job,omitempty"`
	Repo      string     `json:"repo,omitempty"`
	Org       string     `json:"org"`
	Labels    []string   `json:"labels"`
	Arch      string     `json:"arch"`
	Emulated  bool       `json:"emulated"`
	VCPUs     float64    `json:"vcpus"`
	MemoryMiB int        `json:"memory_mib"`
	State     string     `json:"state"`
	Reason    string     `json:"reason,omitempty"`
	VMID      string     `json:"vm_id,omitempty"`
	ExitCode  int        `json:"exit_code"`
	CreatedAt time.Time  `json:"created_at"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	// Pool is the warm pool the runner's VM was booted for ahead of its
	// job; ClaimedAt when a job claimed it.
	Pool      string     `json:"pool,omitempty"`
	ClaimedAt *time.Time `json:"claimed_at,omitempty"`
}

func (a *api) handleRunners(w http.ResponseWriter, r *http.Request) {
	f := store.RunnerFilter{HostID: r.URL.Query().Get("host"), Live: r.URL.Query().Get("live") == "1", Limit: 1000}
	out, err := a.runnerViews(r.Context(), who(r), f)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"runners": out})
}

// runnerViews returns the runners f selects that p may see.
func (a *api) runnerViews(ctx context.Context, p principal, f store.RunnerFilter) ([]RunnerView, error) {
	var rs []store.Runner
	if err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		rs, err = tx.Runners(f)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]RunnerView, 0, len(rs))
	for _, x := range rs {
		if !p.sees(x.Org) {
			continue
		}
		out = append(out, RunnerView{Name: x.Name, Host: x.HostID, Job: x.JobID, Repo: x.Repo, Org: x.Org,
			Labels: x.Labels, Arch: string(x.Arch), Emulated: x.Emulated, VCPUs: x.VCPUs, MemoryMiB: x.MemoryMiB,
			State: string(x.State), Reason: x.Reason, VMID: x.VMID, ExitCode: x.ExitCode, CreatedAt: x.CreatedAt,
			StartedAt: optTime(x.StartedAt), EndedAt: optTime(x.EndedAt), Pool: x.Pool, ClaimedAt: optTime(x.ClaimedAt)})
	}
	return out, nil
}

// handlePools shows the warm pools: the fleet's, as hosts are, so any
// reader's. An idle pool VM belongs to no organisation; a claimed one is
// counted, not named.
func (a *api) handlePools(w http.ResponseWriter, r *http.Request) {
	out, err := a.cp.poolViews(r.Context())
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"pools": out})
}

func (a *api) handleCounters(w http.ResponseWriter, r *http.Request) {
	var c map[string]int64
	if err := a.st.View(r.Context(), func(tx store.ReadTx) error {
		var err error
		c, err = tx.Counters()
		return err
	}); err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"counters": c})
}
