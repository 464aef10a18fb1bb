package dashboard

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// fakeBackend keeps a few jobs and hosts and scopes them as the control
// plane does: a scoped token sees only its orgs' jobs.
type fakeBackend struct {
	mu        sync.Mutex
	tokens    map[string]Scope
	jobs      []Job
	hosts     []Host
	actions   []string // "label action host addr"
	logs      map[int64]string
	profiles  map[int64]Profile
	advice    []rightsize.Advice // with the org of each in orgOf
	rsQueries []RightsizeQuery
	jobCalls  int
	insights  Insights // Rows, Increases and Slowest of every org; Insights scopes them
	inQueries []InsightsQuery
	parity    parity.View // of every org; Parity scopes it
	pQueries  []ParityQuery
	loads     map[string][]store.HostLoad // by host, oldest first
	loadSince []time.Time
	queue     map[string][]int // queue seconds of jobs by org, started in the first hour asked for
	qCalls    int
	leader    string // Summary's Leader and Replica, when set
	replica   string
}

func newFake() *fakeBackend {
	return &fakeBackend{
		tokens: map[string]Scope{
			"admin-token": {Admin: true, Label: "token:aaaa0000"},
			"read-token":  {Label: "token:bbbb0000"},
			"acme-token":  {Orgs: []string{"acme"}, Label: "token:cccc0000"},
		},
		jobs: []Job{
			{ID: 1, Org: "acme", Repo: "acme/app", Name: "build", State: "queued", Reason: "no host has 64 vCPU free",
				HTMLURL: "https://github.com/acme/app/actions/runs/1/job/1"},
			{ID: 2, Org: "globex", Repo: "globex/secret", Name: `<script>alert("x")</script>`, State: "running",
				HTMLURL: "javascript:alert(1)"},
		},
		hosts: []Host{{ID: "h1", State: "online", VCPUs: 8, MemoryMiB: 16384, Connected: true}},
	}
}

func (f *fakeBackend) Authenticate(tok string) (Scope, bool) { s, ok := f.tokens[tok]; return s, ok }

func (f *fakeBackend) sees(s Scope, org string) bool {
	return s.Orgs == nil || slices.Contains(s.Orgs, org)
}

func (f *fakeBackend) Summary(ctx context.Context, s Scope, since time.Time) (Summary, error) {
	return Summary{States: map[string]int{}, Hosts: len(f.hosts), Leader: f.leader, Replica: f.replica}, nil
}

func (f *fakeBackend) Jobs(ctx context.Context, s Scope, q JobQuery) ([]Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobCalls++
	var out []Job
	for _, j := range f.jobs {
		if f.sees(s, j.Org) && (len(q.States) == 0 || slices.Contains(q.States, j.State)) &&
			(q.Repo == "" || strings.EqualFold(q.Repo, j.Repo)) {
			out = append(out, j)
		}
	}
	out = out[min(q.Offset, len(out)):]
	if q.Limit > 0 {
		out = out[:min(q.Limit, len(out))]
	}
	return out, nil
}

// QueueTimes puts each org's queue times in the first hour, scoped.
func (f *fakeBackend) QueueTimes(ctx context.Context, s Scope, start time.Time, hours int) ([]QueueHour, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.qCalls++
	out := make([]QueueHour, hours)
	var qs []float64
	for org, secs := range f.queue {
		if f.sees(s, org) {
			for _, q := range secs {
				qs = append(qs, float64(q))
			}
		}
	}
	slices.Sort(qs)
	for i := range out {
		out[i].Start = start.Add(time.Duration(i) * time.Hour)
	}
	if len(qs) > 0 {
		out[0].Jobs, out[0].P50, out[0].P95 = len(qs), qs[(len(qs)-1)/2], qs[len(qs)-1]
	}
	return out, nil
}

func (f *fakeBackend) Job(ctx context.Context, s Scope, id int64) (Job, error) {
	for _, j := range f.jobs {
		if j.ID == id && f.sees(s, j.Org) {
			return j, nil
		}
	}
	return Job{}, ErrNotFound
}

func (f *fakeBackend) JobLog(ctx context.Context, s Scope, id int64, max int64) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.logs[id]; ok {
		return l[max64(0, int64(len(l))-max):], true, nil
	}
	return "line 1\n<b>not bold</b>\n", true, nil
}

func max64(a, b int64) int64 { return max(a, b) }

func (f *fakeBackend) JobProfile(ctx context.Context, s Scope, id int64) (Profile, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.profiles[id]
	return p, ok, nil
}

// Rightsize scopes advice as the control plane does: by the org of each
// logical job's repository.
func (f *fakeBackend) Rightsize(ctx context.Context, s Scope, q RightsizeQuery) (Rightsize, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rsQueries = append(f.rsQueries, q)
	out := Rightsize{Days: q.Days, Advice: []rightsize.Advice{}}
	for _, a := range f.advice {
		org, _, _ := strings.Cut(a.Repo, "/")
		if f.sees(s, org) && (q.Org == "" || strings.EqualFold(q.Org, org)) && (q.Repo == "" || strings.EqualFold(q.Repo, a.Repo)) {
			out.Advice = append(out.Advice, a)
			out.Runs += a.Runs
		}
	}
	return out, nil
}

func (f *fakeBackend) Hosts(ctx context.Context) ([]Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hosts), nil
}

func (f *fakeBackend) HostLoad(ctx context.Context, host string, since time.Time) ([]store.HostLoad, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loadSince = append(f.loadSince, since)
	if !slices.ContainsFunc(f.hosts, func(h Host) bool { return h.ID == host }) {
		return nil, ErrNotFound
	}
	var out []store.HostLoad
	for _, l := range f.loads[host] {
		if !l.At.Before(since) {
			out = append(out, l)
		}
	}
	return out, nil
}

func (f *fakeBackend) Runners(ctx context.Context, s Scope, host string) ([]Runner, error) {
	return nil, nil
}

func (f *fakeBackend) Audit(ctx context.Context, before int64, limit int) ([]store.AuditEntry, error) {
	return []store.AuditEntry{{Seq: 1, At: time.Now(), Actor: "token:aaaa0000", Action: "host.drain", Target: "h1"}}, nil
}

func (f *fakeBackend) HostAction(ctx context.Context, host, action string, by Actor) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.hosts {
		if f.hosts[i].ID == host {
			f.hosts[i].State = map[string]string{"drain": "draining", "cordon": "cordoned", "uncordon": "online"}[action]
			f.actions = append(f.actions, by.Label+" "+action+" "+host+" "+by.Addr)
			return f.hosts[i].State, nil
		}
	}
	return "", ErrNotFound
}

type env struct {
	t   *testing.T
	be  *fakeBackend
	h   http.Handler
	now time.Time
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, be: newFake(), now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	d := New(Config{Backend: e.be, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return e.now }})
	mux := http.NewServeMux()
	d.Register(mux)
	e.h = mux
	return e
}

// do sends a request through the handler; form, if not nil, is posted.
func (e *env) do(method, target string, cookie *http.Cookie, form url.Values, hdr map[string]string) *httptest.ResponseRecorder {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req := httptest.NewRequest(method, target, body)
	req.RemoteAddr = "192.0.2.1:5555"
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	return w
}

// login logs in with tok and returns the session cookie.
func (e *env) login(tok string) *http.Cookie {
	e.t.Helper()
	w := e.do("POST", "/login", nil, url.Values{"token": {tok}, "next": {"/"}}, nil)
	if w.Code != http.StatusSeeOther {
		e.t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	for _, c := range w.Result().Cookies() {
		if c.Name == cookieName {
			return c
		}
	}
	e.t.Fatal("login set no session cookie")
	return nil
}

// csrf reads the CSRF token from a page.
func csrfOf(t *testing.T, body string) string {
	t.Helper()
	const mark = `name="csrf" value="`
	i := strings.Index(body, mark)
	if i < 0 {
		t.Fatal("no CSRF token in the page")
	}
	rest := body[i+len(mark):]
	return rest[:strings.IndexByte(rest, '"')]
}

func TestUnauthenticatedRedirects(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/", "/queue", "/jobs?state=queued", "/jobs/1", "/rightsize", "/insights", "/parity", "/hosts", "/hosts/h1", "/audit"} {
		w := e.do("GET", p, nil, nil, nil)
		if w.Code != http.StatusSeeOther || !strings.HasPrefix(w.Header().Get("Location"), "/login?next=") {
			t.Errorf("GET %s without a session: %d %q, want a redirect to /login", p, w.Code, w.Header().Get("Location"))
		}
		if strings.Contains(w.Body.String(), "acme") {
			t.Errorf("GET %s without a session shows data", p)
		}
	}
	if w := e.do("GET", "/jobs?fragment=1", nil, nil, nil); w.Code != http.StatusUnauthorized {
		t.Errorf("fragment without a session: %d, want 401", w.Code)
	}
	if w := e.do("POST", "/hosts/h1/drain", nil, url.Values{"csrf": {"x"}}, nil); w.Code != http.StatusUnauthorized {
		t.Errorf("POST without a session: %d, want 401", w.Code)
	}
	if w := e.do("GET", "/static/style.css", nil, nil, nil); w.Code != http.StatusOK {
		t.Errorf("static asset without a session: %d, want 200", w.Code)
	}
	if w := e.do("GET", "/static/", nil, nil, nil); w.Code != http.StatusNotFound {
		t.Errorf("static directory listing: %d, want 404", w.Code)
	}
}

func TestLoginSessionCookie(t *testing.T) {
	e := newEnv(t)
	w := e.do("POST", "/login", nil, url.Values{"token": {"wrong"}}, nil)
	if w.Code != http.StatusUnauthorized || len(w.Result().Cookies()) != 0 || !strings.Contains(w.Body.String(), "not valid") {
		t.Errorf("bad token: %d, cookies %v", w.Code, w.Result().Cookies())
	}
	w = e.do("POST", "/login", nil, url.Values{"token": {"admin-token"}, "next": {"/jobs?state=queued&fragment=1"}}, nil)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/jobs?state=queued" {
		t.Fatalf("login: %d to %q", w.Code, w.Header().Get("Location"))
	}
	c := w.Result().Cookies()[0]
	if c.Name != cookieName || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" ||
		c.MaxAge != 12*3600 || c.Secure || len(c.Value) < 43 || strings.Contains(c.Value, "admin-token") {
		t.Errorf("session cookie over http: %+v", c)
	}
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("login answer Cache-Control %q", got)
	}
	// Over TLS the cookie is Secure.
	req := httptest.NewRequest("POST", "/login", strings.NewReader("token=read-token"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.TLS = &tls.ConnectionState{}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	if cs := rec.Result().Cookies(); len(cs) != 1 || !cs[0].Secure {
		t.Errorf("session cookie over TLS: %+v", cs)
	}
	// A login from another site is refused.
	w = e.do("POST", "/login", nil, url.Values{"token": {"admin-token"}}, map[string]string{"Origin": "https://evil.example"})
	if w.Code != http.StatusForbidden || len(w.Result().Cookies()) != 0 {
		t.Errorf("cross-site login: %d", w.Code)
	}
	// Open redirects are not.
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/\\evil.example", "jobs"} {
		w = e.do("POST", "/login", nil, url.Values{"token": {"admin-token"}, "next": {next}}, nil)
		if loc := w.Header().Get("Location"); loc != "/" {
			t.Errorf("login with next=%q goes to %q, want /", next, loc)
		}
	}
}

func TestPagesAndHeaders(t *testing.T) {
	e := newEnv(t)
	c := e.login("admin-token")
	for _, p := range []string{"/", "/queue", "/jobs", "/jobs?state=running&arch=arm64&page=2", "/jobs?label=x&q=app", "/jobs/1", "/jobs/2",
		"/rightsize", "/rightsize?org=acme&days=7", "/insights", "/insights?days=28&by=job&org=acme", "/hosts", "/hosts/h1", "/audit"} {
		w := e.do("GET", p, c, nil, nil)
		if w.Code != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, w.Code, w.Body)
			continue
		}
		h := w.Header()
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") ||
			strings.Contains(csp, "unsafe-inline") || h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" ||
			h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: headers %v", p, h)
		}
		if body := w.Body.String(); strings.Contains(body, "<script>") || strings.Contains(body, "onclick") {
			t.Errorf("GET %s: inline script in the page", p)
		}
	}
	// Client and GitHub bytes are escaped; a javascript: URL is neutralised.
	body := e.do("GET", "/jobs/2", c, nil, nil).Body.String()
	if !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") || strings.Contains(body, `href="javascript:`) ||
		!strings.Contains(body, "&lt;b&gt;not bold&lt;/b&gt;") {
		t.Errorf("job page does not escape what it shows:\n%s", body)
	}
	if body := e.do("GET", "/jobs/1", c, nil, nil).Body.String(); !strings.Contains(body, `href="https://github.com/acme/app/actions/runs/1/job/1"`) ||
		!strings.Contains(body, "no host has 64 vCPU free") {
		t.Errorf("job page lacks the GitHub link or the reason:\n%s", body)
	}
	// A fragment is the live region only.
	w := e.do("GET", "/queue?fragment=1", c, nil, nil)
	if w.Code != 200 || strings.Contains(w.Body.String(), "<html") || !strings.Contains(w.Body.String(), "no host has 64 vCPU free") {
		t.Errorf("queue fragment: %d\n%s", w.Code, w.Body)
	}
	for _, bad := range []string{"/jobs?state=nonsense", "/jobs?page=-1", "/jobs?arch=sparc", "/audit?before=x",
		"/jobs?q=" + strings.Repeat("x", 201), "/rightsize?days=90", "/rightsize?days=x", "/rightsize?repo=" + strings.Repeat("x", 201),
		"/insights?days=3", "/insights?days=x", "/insights?by=host", "/insights?org=" + strings.Repeat("x", 101)} {
		if w := e.do("GET", bad, c, nil, nil); w.Code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", bad, w.Code)
		}
	}
	for _, missing := range []string{"/jobs/999", "/jobs/abc", "/hosts/nope"} {
		if w := e.do("GET", missing, c, nil, nil); w.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", missing, w.Code)
		}
	}
}

func TestScopedTokenSeesOnlyItsOrgs(t *testing.T) {
	e := newEnv(t)
	c := e.login("acme-token")
	body := e.do("GET", "/jobs", c, nil, nil).Body.String()
	if !strings.Contains(body, `href="/jobs/1"`) || strings.Contains(body, "globex") {
		t.Errorf("acme's job list:\n%s", body)
	}
	if w := e.do("GET", "/jobs/2", c, nil, nil); w.Code != http.StatusNotFound || strings.Contains(w.Body.String(), "globex") {
		t.Errorf("another org's job by URL: %d", w.Code)
	}
	if w := e.do("GET", "/audit", c, nil, nil); w.Code != http.StatusForbidden {
		t.Errorf("audit page for a read token: %d, want 403", w.Code)
	}
	if body := e.do("GET", "/hosts/h1", c, nil, nil).Body.String(); strings.Contains(body, `name="csrf" value=""`) || strings.Contains(body, "btn-drain") {
		t.Errorf("a read token is offered host actions:\n%s", body)
	}
}

func TestHostActionCSRF(t *testing.T) {
	e := newEnv(t)
	c := e.login("admin-token")
	page := e.do("GET", "/hosts/h1", c, nil, nil).Body.String()
	tok := csrfOf(t, page)
	if !strings.Contains(page, "btn-drain") {
		t.Fatal("no drain button for an admin")
	}
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"no token":         {url.Values{}, nil},
		"wrong token":      {url.Values{"csrf": {tok[:len(tok)-1] + "x"}}, nil},
		"other origin":     {url.Values{"csrf": {tok}}, map[string]string{"Origin": "https://evil.example"}},
		"cross-site fetch": {url.Values{"csrf": {tok}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
	} {
		if w := e.do("POST", "/hosts/h1/drain", c, tc.form, tc.hdr); w.Code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, w.Code)
		}
	}
	if len(e.be.actions) != 0 {
		t.Fatalf("refused requests acted: %v", e.be.actions)
	}
	// Another session's CSRF token does not work in this one.
	other := e.login("admin-token")
	otherTok := csrfOf(t, e.do("GET", "/hosts/h1", other, nil, nil).Body.String())
	if w := e.do("POST", "/hosts/h1/drain", c, url.Values{"csrf": {otherTok}}, nil); w.Code != http.StatusForbidden {
		t.Errorf("another session's CSRF token: %d, want 403", w.Code)
	}
	w := e.do("POST", "/hosts/h1/drain", c, url.Values{"csrf": {tok}}, map[string]string{"Origin": "http://example.com"})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/hosts/h1" {
		t.Fatalf("drain: %d %s", w.Code, w.Body)
	}
	if want := []string{"token:aaaa0000 drain h1 192.0.2.1:5555"}; !slices.Equal(e.be.actions, want) {
		t.Errorf("actions %v, want %v", e.be.actions, want)
	}
	if body := e.do("GET", "/hosts/h1", c, nil, nil).Body.String(); !strings.Contains(body, `id="host-state">draining`) {
		t.Errorf("host page after drain:\n%s", body)
	}
	if w := e.do("POST", "/hosts/h1/revoke", c, url.Values{"csrf": {tok}}, nil); w.Code != http.StatusNotFound {
		t.Errorf("an action the dashboard does not offer: %d, want 404", w.Code)
	}
	// A read token may not act, even with its own valid CSRF token.
	r := e.login("read-token")
	rtok := csrfOf(t, e.do("GET", "/hosts/h1", r, nil, nil).Body.String())
	if w := e.do("POST", "/hosts/h1/cordon", r, url.Values{"csrf": {rtok}}, nil); w.Code != http.StatusForbidden {
		t.Errorf("cordon with a read token: %d, want 403", w.Code)
	}
	if len(e.be.actions) != 1 {
		t.Errorf("actions %v", e.be.actions)
	}
}

func TestLogoutAndExpiry(t *testing.T) {
	e := newEnv(t)
	c := e.login("read-token")
	tok := csrfOf(t, e.do("GET", "/", c, nil, nil).Body.String())
	if w := e.do("POST", "/logout", c, url.Values{"csrf": {tok}}, nil); w.Code != http.StatusSeeOther {
		t.Fatalf("logout: %d", w.Code)
	}
	if w := e.do("GET", "/", c, nil, nil); w.Code != http.StatusSeeOther {
		t.Errorf("after logout: %d, want a redirect to login", w.Code)
	}
	c = e.login("read-token")
	e.now = e.now.Add(12*time.Hour - time.Second)
	if w := e.do("GET", "/", c, nil, nil); w.Code != http.StatusOK {
		t.Errorf("before expiry: %d", w.Code)
	}
	e.now = e.now.Add(time.Second)
	if w := e.do("GET", "/", c, nil, nil); w.Code != http.StatusSeeOther {
		t.Errorf("after expiry: %d, want a redirect to login", w.Code)
	}
	if w := e.do("GET", "/", &http.Cookie{Name: cookieName, Value: "read-token"}, nil, nil); w.Code != http.StatusSeeOther {
		t.Errorf("a token as the cookie: %d, want a redirect to login", w.Code)
	}
}

// With several control-plane replicas, the overview says which leads and
// which serves the page, and the hosts which replica holds each agent;
// with one, neither.
func TestReplicasShown(t *testing.T) {
	e := newEnv(t)
	c := e.login("admin-token")
	if body := e.do("GET", "/", c, nil, nil).Body.String(); strings.Contains(body, `id="leader"`) || strings.Contains(body, "connected to") {
		t.Errorf("one control plane, yet the overview speaks of replicas:\n%s", body)
	}
	e.be.leader, e.be.replica = "cp-1", "cp-2"
	e.be.hosts[0].Replica = "cp-3"
	body := e.do("GET", "/", c, nil, nil).Body.String()
	if !strings.Contains(body, "Control plane: cp-1 leads; this page is from cp-2.") || !strings.Contains(body, "connected to cp-3") {
		t.Errorf("overview with replicas:\n%s", body)
	}
	if body := e.do("GET", "/hosts/h1", c, nil, nil).Body.String(); !strings.Contains(body, "connected to cp-3") {
		t.Errorf("host page with replicas:\n%s", body)
	}
}
