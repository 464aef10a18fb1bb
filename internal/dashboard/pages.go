package dashboard

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// pageNames are the templates in templates/, each rendered inside
// layout.html (or alone, as its "content", for a live fragment).
var pageNames = []string{"overview", "queue", "jobs", "job", "rightsize", "insights", "parity", "hosts", "host", "audit", "login", "error"}

// waitingStates are the states of a job that has not started yet.
var waitingStates = []string{string(store.JobWaiting), string(store.JobQueued), string(store.JobScheduled),
	string(store.JobLaunching), string(store.JobUnmatched)}

const (
	jobsPerPage  = 50
	auditPerPage = 50
	logTail      = 32 << 10
)

var funcs = template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return fmtDuration(now.Sub(t)) + " ago"
	},
	"dur": func(from, to time.Time) string {
		if from.IsZero() || to.IsZero() {
			return ""
		}
		return fmtDuration(to.Sub(from))
	},
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05")
	},
	"gib":    func(mib int) string { return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) },
	"cpu":    func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) },
	"pct":    pct,
	"pctmem": func(used, total int) int { return pct(float64(used), float64(total)) },
	"join":   strings.Join,
	"gib64":  func(mib int64) string { return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) },
	"rows": func(now time.Time, jobs []Job) any {
		return struct {
			Now  time.Time
			Jobs []Job
		}{now, jobs}
	},
	"short":        func(s string) string { return s[:min(len(s), 12)] },
	"gibbytes":     gbOf,
	"cpu1":         cpuOf,
	"rightsizeURL": rightsizeURL,
	"secs":         fmtSeconds,
	"day":          func(t time.Time) string { return t.UTC().Format("2006-01-02") },
	"columns":      func() []string { return insightColumns },
}

func pct(used, total float64) int {
	if total <= 0 {
		return 0
	}
	return min(100, int(used*100/total+0.5))
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func parsePages() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		out[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS,
			"templates/layout.html", "templates/chart.html", "templates/"+name+".html"))
	}
	return out
}

// page is what layout.html gets: the page's own data in Data.
type page struct {
	Title string
	Nav   string // the menu entry to mark
	Live  bool   // the content refreshes itself
	Now   time.Time
	Scope *Scope // nil: not logged in
	CSRF  string
	Data  any
}

type errorPage struct {
	Title, Message string
}

// render writes page name with data: the whole page, or only its content
// when the request asks for a live fragment (?fragment=1). It renders into
// a buffer first, so that a template error is a clean 500.
func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, s *session, code int, name string, data any) {
	p := page{Title: titles[name], Nav: name, Now: d.now(), Data: data, Live: liveNames[name]}
	if e, ok := data.(errorPage); ok {
		p.Title = e.Title
	}
	if s != nil {
		p.Scope, p.CSRF = &s.scope, s.csrf
	}
	tmpl := "layout"
	if r.URL.Query().Get("fragment") == "1" {
		tmpl = "content"
	}
	var buf bytes.Buffer
	if err := d.pages[name].ExecuteTemplate(&buf, tmpl, p); err != nil {
		d.log.Error("dashboard template", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

var titles = map[string]string{"overview": "Overview", "queue": "Queue", "jobs": "Jobs", "job": "Job", "rightsize": "Right-sizing",
	"insights": "Insights", "parity": "Arm64 parity", "hosts": "Hosts", "host": "Host", "audit": "Audit log", "login": "Log in", "error": "Error"}

var liveNames = map[string]bool{"overview": true, "queue": true, "jobs": true, "job": true, "hosts": true, "host": true}

// fail renders an error page: 404 for ErrNotFound, 500 (without the
// error's text, which is logged) otherwise.
func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, s *session, err error, what string) {
	switch {
	case errors.Is(err, ErrNotFound):
		d.render(w, r, s, http.StatusNotFound, "error", errorPage{Title: "Not found", Message: "No such " + what + "."})
	case errors.Is(err, errBadRequest):
		d.render(w, r, s, http.StatusBadRequest, "error", errorPage{Title: "Bad request", Message: err.Error()})
	default:
		d.log.Error("dashboard", "path", r.URL.Path, "err", err)
		d.render(w, r, s, http.StatusInternalServerError, "error", errorPage{Title: "Error", Message: "Something went wrong; the control plane's log says what."})
	}
}

type overviewData struct {
	Summary Summary
	Queue   queueView
	Waiting []Job
	Hosts   []Host
}

func (d *Dashboard) overview(w http.ResponseWriter, r *http.Request, s *session) {
	ctx := r.Context()
	now := d.now().UTC()
	sum, err := d.be.Summary(ctx, s.scope, time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC))
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	waiting, err := d.be.Jobs(ctx, s.scope, JobQuery{States: waitingStates, Limit: 10})
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	hosts, err := d.be.Hosts(ctx)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	queue, err := d.queueTimes(ctx, s.scope)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	d.render(w, r, s, http.StatusOK, "overview", overviewData{Summary: sum, Queue: queue, Waiting: waiting, Hosts: hosts})
}

func (d *Dashboard) queue(w http.ResponseWriter, r *http.Request, s *session) {
	jobs, err := d.be.Jobs(r.Context(), s.scope, JobQuery{States: waitingStates, Limit: 500})
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	slices.Reverse(jobs) // oldest first: the head of the queue
	d.render(w, r, s, http.StatusOK, "queue", jobs)
}

type jobsData struct {
	Query            JobQuery
	State            string
	Label, Search    string
	States, Arches   []string
	Jobs             []Job
	Page             int
	PrevURL, NextURL string
	Truncated        bool // the search stopped at searchWindow jobs
	Window           int
}

func (d *Dashboard) jobs(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	data := jobsData{Query: JobQuery{Org: q.Get("org"), Repo: q.Get("repo"), Arch: q.Get("arch")},
		State: q.Get("state"), Label: q.Get("label"), Search: q.Get("q"), Arches: []string{"amd64", "arm64"}, Page: 1,
		Window: searchWindow}
	for _, st := range store.JobStates {
		data.States = append(data.States, string(st))
	}
	if data.State != "" {
		if !slices.Contains(data.States, data.State) {
			d.fail(w, r, s, fmt.Errorf("%w: unknown state", errBadRequest), "")
			return
		}
		data.Query.States = []string{data.State}
	}
	if data.Query.Arch != "" && !slices.Contains(data.Arches, data.Query.Arch) {
		d.fail(w, r, s, fmt.Errorf("%w: unknown arch", errBadRequest), "")
		return
	}
	if len(data.Query.Org) > 100 || len(data.Query.Repo) > 200 || len(data.Label) > 200 || len(data.Search) > 200 {
		d.fail(w, r, s, fmt.Errorf("%w: org, repo, label or search too long", errBadRequest), "")
		return
	}
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100000 {
			d.fail(w, r, s, fmt.Errorf("%w: page: want a positive integer", errBadRequest), "")
			return
		}
		data.Page = n
	}
	data.Query.Offset, data.Query.Limit = (data.Page-1)*jobsPerPage, jobsPerPage+1
	var jobs []Job
	var err error
	if m := newJobMatch(data.Label, data.Search); m.empty() {
		jobs, err = d.be.Jobs(r.Context(), s.scope, data.Query)
	} else {
		jobs, data.Truncated, err = d.searchJobs(r.Context(), s.scope, data.Query, m)
	}
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	pageURL := func(n int) string {
		v := url.Values{}
		for k, x := range map[string]string{"org": data.Query.Org, "repo": data.Query.Repo, "state": data.State,
			"arch": data.Query.Arch, "label": data.Label, "q": data.Search} {
			if x != "" {
				v.Set(k, x)
			}
		}
		v.Set("page", strconv.Itoa(n))
		return "/jobs?" + v.Encode()
	}
	if len(jobs) > jobsPerPage {
		jobs = jobs[:jobsPerPage]
		data.NextURL = pageURL(data.Page + 1)
	}
	if data.Page > 1 {
		data.PrevURL = pageURL(data.Page - 1)
	}
	data.Jobs = jobs
	d.render(w, r, s, http.StatusOK, "jobs", data)
}

type jobData struct {
	Job     Job
	Log     string
	HasLog  bool
	Follow  bool // the job runs: its log grows
	Profile *profileView
	Advice  *rightsize.Advice // for the job's logical job, if any
}

func (d *Dashboard) job(w http.ResponseWriter, r *http.Request, s *session) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		d.fail(w, r, s, ErrNotFound, "job")
		return
	}
	j, err := d.be.Job(r.Context(), s.scope, id)
	if err != nil {
		d.fail(w, r, s, err, "job")
		return
	}
	log, ok, err := d.be.JobLog(r.Context(), s.scope, id, logTail)
	if err != nil {
		d.fail(w, r, s, err, "job")
		return
	}
	data := jobData{Job: j, Log: log, HasLog: ok, Follow: j.State == string(store.JobRunning)}
	p, ok, err := d.be.JobProfile(r.Context(), s.scope, id)
	if err != nil {
		d.fail(w, r, s, err, "job")
		return
	}
	if ok {
		v := makeProfileView(p)
		data.Profile = &v
	}
	if data.Advice, err = d.note(r.Context(), s.scope, j); err != nil {
		d.fail(w, r, s, err, "job")
		return
	}
	d.render(w, r, s, http.StatusOK, "job", data)
}

func (d *Dashboard) hosts(w http.ResponseWriter, r *http.Request, s *session) {
	hosts, err := d.be.Hosts(r.Context())
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	d.render(w, r, s, http.StatusOK, "hosts", hosts)
}

type hostData struct {
	Host    Host
	Runners []Runner
	Load    hostLoadView
	Actions []string
	Message string
}

func (d *Dashboard) host(w http.ResponseWriter, r *http.Request, s *session) {
	data, err := d.hostData(r, s, r.PathValue("id"))
	if err != nil {
		d.fail(w, r, s, err, "host")
		return
	}
	d.render(w, r, s, http.StatusOK, "host", data)
}

// hostData reads what the host page shows: the host, its VMs that s sees
// and its load over the last day.
func (d *Dashboard) hostData(r *http.Request, s *session, id string) (hostData, error) {
	hosts, err := d.be.Hosts(r.Context())
	if err != nil {
		return hostData{}, err
	}
	i := slices.IndexFunc(hosts, func(h Host) bool { return h.ID == id })
	if i < 0 {
		return hostData{}, ErrNotFound
	}
	rs, err := d.be.Runners(r.Context(), s.scope, id)
	if err != nil {
		return hostData{}, err
	}
	now := d.now()
	loads, err := d.be.HostLoad(r.Context(), id, now.Add(-hostLoadWindow))
	if err != nil {
		return hostData{}, err
	}
	return hostData{Host: hosts[i], Runners: rs, Load: makeHostLoadView(loads, now), Actions: hostActions}, nil
}

// hostActions are the operator actions the dashboard offers.
var hostActions = []string{"drain", "cordon", "uncordon"}

// hostAction runs an operator action (authed has checked the session, the
// CSRF token, the origin and that the token is an admin's), then sends the
// browser back to the host's page.
func (d *Dashboard) hostAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	if !slices.Contains(hostActions, action) {
		d.fail(w, r, s, ErrNotFound, "action")
		return
	}
	_, err := d.be.HostAction(r.Context(), id, action, Actor{Label: s.scope.Label, Addr: r.RemoteAddr})
	if errors.Is(err, ErrNotFound) {
		d.fail(w, r, s, err, "host")
		return
	}
	if err != nil {
		d.log.Warn("dashboard host action", "host", id, "action", action, "err", err)
		data, herr := d.hostData(r, s, id)
		if herr != nil {
			d.fail(w, r, s, herr, "host")
			return
		}
		data.Message = action + " failed: " + err.Error()
		d.render(w, r, s, http.StatusConflict, "host", data)
		return
	}
	http.Redirect(w, r, "/hosts/"+url.PathEscape(id), http.StatusSeeOther)
}

type auditData struct {
	Entries []store.AuditEntry
	NextURL string
}

func (d *Dashboard) audit(w http.ResponseWriter, r *http.Request, s *session) {
	var before int64
	if v := r.URL.Query().Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			d.fail(w, r, s, fmt.Errorf("%w: before: want a positive integer", errBadRequest), "")
			return
		}
		before = n
	}
	es, err := d.be.Audit(r.Context(), before, auditPerPage+1)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	data := auditData{Entries: es}
	if len(es) > auditPerPage {
		data.Entries = es[:auditPerPage]
		data.NextURL = "/audit?before=" + strconv.FormatInt(data.Entries[auditPerPage-1].Seq, 10)
	}
	d.render(w, r, s, http.StatusOK, "audit", data)
}
