package controlplane_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// browser is an HTTP client with a cookie jar that does not follow
// redirects: a stand-in for a browser in the dashboard's tests.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values) (int, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", b.base)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text)
}

func (b *browser) login(token string) {
	b.t.Helper()
	if code, text := b.do("POST", "/login", url.Values{"token": {token}}); code != http.StatusSeeOther {
		b.t.Fatalf("login: %d %s", code, text)
	}
}

// The dashboard on a real control plane: a read:ORG token sees its org's
// jobs and not another's (by list and by URL); an admin drains a host
// from the dashboard and the API, and both land in the audit log, which
// GET /api/v1/audit shows to admins only.
func TestDashboardScopesAndAudit(t *testing.T) {
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: acmeReader, Orgs: []string{"ACME"}})
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	r.gh.AddInstallation("globex", ghfake.AccountOrganization, "globex/web")
	acme := r.queue("acme/app", "tandem", "echo acme")
	globex := r.queue("globex/web", "tandem", "echo globex")
	r.waitStates([]int64{acme, globex}, 20*time.Second, store.JobCompleted)

	// The JSON API and the dashboard keep their own routes.
	if code := r.call("GET", "/api/v1/jobs", "", nil); code != http.StatusUnauthorized {
		t.Errorf("API without a token: %d", code)
	}
	b := newBrowser(t, r.web.URL)
	if code, _ := b.do("GET", "/jobs", nil); code != http.StatusSeeOther {
		t.Errorf("dashboard without a session: %d, want a redirect", code)
	}
	b.login(acmeReader)
	code, page := b.do("GET", "/jobs", nil)
	if code != 200 || !strings.Contains(page, "/jobs/"+strconv.FormatInt(acme, 10)) || strings.Contains(page, "globex") {
		t.Errorf("acme's jobs page (%d):\n%s", code, page)
	}
	if code, page := b.do("GET", "/jobs/"+strconv.FormatInt(globex, 10), nil); code != 404 || strings.Contains(page, "globex") {
		t.Errorf("globex's job by URL for acme's token: %d", code)
	}
	if code, page := b.do("GET", "/jobs/"+strconv.FormatInt(acme, 10), nil); code != 200 || !strings.Contains(page, "completed") ||
		!strings.Contains(page, "acme/app") {
		t.Errorf("acme's job page: %d\n%s", code, page)
	}
	if code, _ := b.do("GET", "/audit", nil); code != http.StatusForbidden {
		t.Errorf("audit page for a read token: %d", code)
	}

	admin := newBrowser(t, r.web.URL)
	admin.login(rigAdminToken)
	_, page = admin.do("GET", "/hosts/h1", nil)
	i := strings.Index(page, `name="csrf" value="`)
	if i < 0 {
		t.Fatalf("no CSRF token on the host page:\n%s", page)
	}
	csrf := page[i+len(`name="csrf" value="`):]
	csrf = csrf[:strings.IndexByte(csrf, '"')]
	if code, _ := admin.do("POST", "/hosts/h1/drain", url.Values{}); code != http.StatusForbidden {
		t.Errorf("drain without the CSRF token: %d, want 403", code)
	}
	if code, text := admin.do("POST", "/hosts/h1/drain", url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("drain from the dashboard: %d %s", code, text)
	}
	if st, _ := r.hostState("h1"); st != "draining" {
		t.Errorf("h1 is %s after a drain, want draining", st)
	}
	if code := r.call("POST", "/api/v1/hosts/h1/uncordon", rigAdminToken, nil); code != 200 {
		t.Errorf("uncordon through the API: %d", code)
	}

	var out struct {
		Audit []controlplane.AuditView `json:"audit"`
	}
	if code := r.call("GET", "/api/v1/audit", rigReadToken, nil); code != http.StatusForbidden {
		t.Errorf("audit with a read token: %d, want 403", code)
	}
	if code := r.call("GET", "/api/v1/audit", "", nil); code != http.StatusUnauthorized {
		t.Errorf("audit without a token: %d, want 401", code)
	}
	code, text := r.callBody("GET", "/api/v1/audit", rigAdminToken, nil)
	if code != 200 || strings.Contains(text, rigAdminToken) {
		t.Fatalf("audit: %d %s", code, text)
	}
	r.call("GET", "/api/v1/audit", rigAdminToken, &out)
	label := controlplane.TokenLabel(rigAdminToken)
	if len(out.Audit) != 2 {
		t.Fatalf("audit entries %+v, want 2", out.Audit)
	}
	for i, want := range []struct{ action, via string }{{"host.uncordon", "api"}, {"host.drain", "dashboard"}} {
		e := out.Audit[i]
		if e.Action != want.action || e.Via != want.via || e.Actor != label || e.Target != "h1" ||
			!strings.HasPrefix(e.Addr, "127.0.0.1:") || e.At.IsZero() || e.Result != "ok" {
			t.Errorf("audit entry %d: %+v, want %s via %s by %s", i, e, want.action, want.via, label)
		}
	}
	if len(label) != len("token:")+8 || strings.Contains(rigAdminToken, strings.TrimPrefix(label, "token:")) {
		t.Errorf("token label %q", label)
	}
	if _, page := admin.do("GET", "/audit", nil); !strings.Contains(page, "host.drain") || !strings.Contains(page, label) {
		t.Errorf("audit page:\n%s", page)
	}
}
