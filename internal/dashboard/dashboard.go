// Package dashboard is the control plane's web dashboard: server-rendered
// pages (html/template) over the same data as the JSON API, with its
// assets embedded in the binary.
//
// Security is the order of operations in every handler, and these rules:
//   - Every page needs a session. A session starts when someone pastes an
//     API token into the login form; the cookie holds a random id, never
//     the token, and the server keeps id → the token's scope in memory.
//     Sessions end on logout, after Lifetime, or when the process exits.
//   - A scoped token (read:ORG) sees only its organisations' jobs and
//     runners, in lists and by URL: another org's job is "not found", as in
//     the API. The Backend enforces it; the dashboard passes the scope.
//   - Every POST but login carries the session's CSRF token (compared in
//     constant time); a POST whose Origin (or Sec-Fetch-Site) says it came
//     from another site is refused before anything else is read.
//   - Operator actions (drain, cordon, uncordon) need an admin token and
//     are written to the audit log by the Backend, with the token's label.
//   - Client bytes reach the page only through html/template's escaping;
//     no script is inline (the Content-Security-Policy forbids it), and no
//     client input is written into a script.
//
// Pages refresh themselves without a reload: static/live.js fetches the
// same URL with ?fragment=1 every two seconds and swaps the page's live
// region (a job's log tail stays scrolled to its end while it grows).
// Without JavaScript the pages are plain tables, and charts are inline SVG
// drawn on the server (chart.go).
package dashboard

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// Backend is what the dashboard reads and asks of the control plane. Its
// reads honour the scope they are given; ErrNotFound (store.ErrNotFound)
// for a job that is missing or not the scope's.
type Backend interface {
	// Authenticate returns the scope of an API token.
	Authenticate(token string) (Scope, bool)
	// Summary counts what the overview shows, within s.
	Summary(ctx context.Context, s Scope, since time.Time) (Summary, error)
	// QueueTimes returns, for each of hours hours from start, the queue
	// times of the jobs s sees that started in that hour.
	QueueTimes(ctx context.Context, s Scope, start time.Time, hours int) ([]QueueHour, error)
	// Jobs lists jobs, newest first.
	Jobs(ctx context.Context, s Scope, q JobQuery) ([]Job, error)
	// Job returns one job with its transitions.
	Job(ctx context.Context, s Scope, id int64) (Job, error)
	// JobLog returns up to the last max bytes of a job's runner log and
	// whether there is one.
	JobLog(ctx context.Context, s Scope, id int64, max int64) (string, bool, error)
	// Hosts lists every host.
	Hosts(ctx context.Context) ([]Host, error)
	// HostLoad returns a host's load records at or after since, oldest
	// first (ErrNotFound for no such host).
	HostLoad(ctx context.Context, host string, since time.Time) ([]store.HostLoad, error)
	// Runners lists the live runners of a host ("" for all) that s sees.
	Runners(ctx context.Context, s Scope, host string) ([]Runner, error)
	// Audit lists the audit log, newest first (before: a Seq, 0 for the
	// newest).
	Audit(ctx context.Context, before int64, limit int) ([]store.AuditEntry, error)
	// JobProfile returns a job's resource profile, and false when its VM
	// has sent no samples (it has not run, or ran where none are taken).
	JobProfile(ctx context.Context, s Scope, id int64) (Profile, bool, error)
	// Rightsize advises on the logical jobs s sees, from the profiles of
	// their runs over the last q.Days days.
	Rightsize(ctx context.Context, s Scope, q RightsizeQuery) (Rightsize, error)
	// Insights compares the period q asks for with the one before, over
	// the jobs s sees.
	Insights(ctx context.Context, s Scope, q InsightsQuery) (Insights, error)
	// Parity computes the Arm64/x86 parity of the period q asks for (the
	// matrix, repository and organisation tiers, recent tier moves) over
	// the jobs s sees.
	Parity(ctx context.Context, s Scope, q ParityQuery) (parity.View, error)
	// HostAction drains, cordons or uncordons a host for by, recording it
	// in the audit log, and returns the host's new state.
	HostAction(ctx context.Context, host, action string, by Actor) (string, error)
}

// ErrNotFound is what Backend returns for a missing (or unseen) record.
var ErrNotFound = store.ErrNotFound

// Scope is what an API token may see and do.
type Scope struct {
	Admin bool
	Orgs  []string // a read:ORG token's organisations; nil: every one
	Label string   // names the token without revealing it (audit log)
}

// Actor is who asks for an operator action.
type Actor struct {
	Label string // Scope.Label
	Addr  string // the client's address
}

// JobQuery selects jobs for the Jobs page.
type JobQuery struct {
	Org, Repo string // exact, without case
	States    []string
	Arch      string
	Offset    int
	Limit     int
}

// Summary is the overview's numbers.
type Summary struct {
	States  map[string]int // jobs by state (active states only for scoped tokens)
	Queued  int            // waiting, queued, scheduled or launching
	Running int
	Today   int // jobs Tandem learnt of since midnight UTC
	Hosts   int
	Online  int // hosts online
	// Leader is the control-plane replica that leads and Replica the one
	// serving the page, when several share the store ("" otherwise).
	Leader, Replica string
}

// Job is a job as the dashboard shows it.
type Job struct {
	ID          int64
	RunID       int64
	Repo, Org   string
	Name        string
	Workflow    string
	Labels      []string
	Arch        string
	VCPUs       float64
	MemoryMiB   int
	State       string
	Reason      string // why it is in State; for a queued job, why it waits
	Runner      string
	Host        string
	HTMLURL     string // the job on GitHub
	HeadBranch  string
	HeadSHA     string
	Sender      string
	Attempts    int
	Conclusion  string
	QueuedAt    time.Time
	UpdatedAt   time.Time
	StartedAt   time.Time
	CompletedAt time.Time
	// VMKeptUntil: the failed job's VM is kept for debugging until then
	// (zero: it is not).
	VMKeptUntil time.Time
	// Rerun says what became of re-running the job on GitHub after
	// Tandem or its host lost it ("": no re-run); RerunOf is the lost job
	// this one re-runs (0: none) and RerunCause what lost it.
	Rerun      string
	RerunOf    int64
	RerunCause string
	Events     []Event
}

// Event is one transition of a job.
type Event struct {
	At             time.Time
	From, To       string
	Source, Reason string
	Runner, Host   string
}

// Host is a host as the dashboard shows it.
type Host struct {
	ID            string
	State         string
	Reason        string
	Connected     bool
	Replica       string // the control-plane replica its agent is attached to (several replicas only)
	Arches        []string
	VCPUs         float64
	MemoryMiB     int
	UsedVCPUs     float64
	UsedMemoryMiB int
	Runners       int
	LastSeen      time.Time
	Load1         float64
	DiskFreeMiB   int64
}

// Runner is a runner (one VM) as the dashboard shows it.
type Runner struct {
	Name      string
	Host      string
	Job       int64
	Repo, Org string
	Arch      string
	Emulated  bool
	VCPUs     float64
	MemoryMiB int
	State     string
	VMID      string
	CreatedAt time.Time
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures a Dashboard.
type Config struct {
	Backend  Backend
	Logger   *slog.Logger
	Now      func() time.Time
	Lifetime time.Duration // of a session; default 12h
}

// Dashboard serves the pages. Its sessions live in memory.
type Dashboard struct {
	be       Backend
	log      *slog.Logger
	now      func() time.Time
	sessions *sessions
	pages    map[string]*template.Template
	static   http.Handler
	notes    noteCache  // right-size advice for job pages
	queues   queueCache // the overview's queue times
}

// New returns a Dashboard.
func New(cfg Config) *Dashboard {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 12 * time.Hour
	}
	sub, _ := fs.Sub(staticFS, "static")
	return &Dashboard{be: cfg.Backend, log: cfg.Logger, now: cfg.Now,
		sessions: newSessions(cfg.Lifetime, cfg.Now), pages: parsePages(), static: http.FileServerFS(sub)}
}

// Register adds the dashboard's routes to mux, beside whatever else mux
// serves (the control plane's /webhook, /metrics, /healthz and /api/).
func (d *Dashboard) Register(mux *http.ServeMux) {
	page := func(pattern string, admin bool, h func(http.ResponseWriter, *http.Request, *session)) {
		mux.Handle(pattern, d.headers(d.authed(admin, h)))
	}
	mux.Handle("GET /static/", d.headers(http.HandlerFunc(d.serveStatic)))
	mux.Handle("GET /login", d.headers(http.HandlerFunc(d.loginPage)))
	mux.Handle("POST /login", d.headers(http.HandlerFunc(d.login)))
	page("POST /logout", false, d.logout)
	page("GET /{$}", false, d.overview)
	page("GET /queue", false, d.queue)
	page("GET /jobs", false, d.jobs)
	page("GET /jobs/{id}", false, d.job)
	page("GET /rightsize", false, d.rightsizePage)
	page("GET /insights", false, d.insightsPage)
	page("GET /parity", false, d.parityPage)
	page("GET /hosts", false, d.hosts)
	page("GET /hosts/{id}", false, d.host)
	page("POST /hosts/{id}/{action}", true, d.hostAction)
	page("GET /audit", true, d.audit)
}

// headers sets what every dashboard answer carries: no framing, no inline
// script, no sniffing, no referrer to other sites.
func (d *Dashboard) headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

func (d *Dashboard) serveStatic(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/") { // no directory listings
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=3600")
	http.StripPrefix("/static", d.static).ServeHTTP(w, r)
}

// authed wraps a page: no session → the login page (a GET) or 401 (a
// fragment or a POST); a POST must also pass the CSRF and origin checks,
// and admin pages need an admin token. Authenticated answers are never
// cached.
func (d *Dashboard) authed(admin bool, h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if r.Method == http.MethodPost && !sameOrigin(r) {
			http.Error(w, "cross-site request refused", http.StatusForbidden)
			return
		}
		s := d.sessions.fromRequest(r)
		if s == nil {
			if r.Method != http.MethodGet || r.URL.Query().Get("fragment") != "" {
				http.Error(w, "not logged in", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !s.checkCSRF(r.PostFormValue("csrf")) {
			http.Error(w, "bad or missing CSRF token: reload the page and try again", http.StatusForbidden)
			return
		}
		if admin && !s.scope.Admin {
			d.render(w, r, s, http.StatusForbidden, "error", errorPage{Title: "Forbidden", Message: "This page needs an admin token."})
			return
		}
		h(w, r, s)
	})
}

// sameOrigin reports whether a POST came from this site: its Origin, when
// the browser sends one, names this host; Sec-Fetch-Site, when sent, is not
// cross-site.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return origin == scheme+"://"+r.Host
}

var errBadRequest = errors.New("bad request")
