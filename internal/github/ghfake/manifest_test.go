package ghfake_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// newManifestFixture is a ghfake with no App yet.
func newManifestFixture(t *testing.T) *fixture {
	return newFixture(t, func(c *ghfake.Config) {
		c.AppID, c.AppPublicKey, c.WebhookURL, c.WebhookSecret = 0, nil, "", nil
	})
}

func (f *fixture) manifest(hookURL string) map[string]any {
	return map[string]any{
		"name": "tandem-test", "url": "https://ci.example.com/",
		"hook_attributes": map[string]any{"url": hookURL, "active": true},
		"redirect_url":    "http://127.0.0.1:9/callback?x=1",
		"public":          false,
		"default_events":  []string{"workflow_job"},
		"default_permissions": map[string]string{
			"actions": "read", "organization_self_hosted_runners": "write", "metadata": "read",
		},
	}
}

// postManifest posts the form as the browser does and returns the answer,
// without following a redirect.
func (f *fixture) postManifest(path string, manifest any) (*http.Response, string) {
	f.t.Helper()
	raw, ok := manifest.(string)
	if !ok {
		b, err := json.Marshal(manifest)
		if err != nil {
			f.t.Fatal(err)
		}
		raw = string(b)
	}
	c := *f.api.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.PostForm(f.api.URL+path, url.Values{"manifest": {raw}})
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// createApp runs the web side of the flow and returns the code.
func (f *fixture) createApp(path string, manifest any) string {
	f.t.Helper()
	resp, body := f.postManifest(path, manifest)
	if resp.StatusCode != http.StatusFound {
		f.t.Fatalf("POST %s: %d, want 302: %s", path, resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		f.t.Fatal(err)
	}
	return loc.Query().Get("code")
}

type conversion struct {
	ID            int64             `json:"id"`
	Slug          string            `json:"slug"`
	NodeID        string            `json:"node_id"`
	Name          string            `json:"name"`
	HTMLURL       string            `json:"html_url"`
	PEM           string            `json:"pem"`
	WebhookSecret string            `json:"webhook_secret"`
	ClientID      string            `json:"client_id"`
	ClientSecret  string            `json:"client_secret"`
	Permissions   map[string]string `json:"permissions"`
	Events        []string          `json:"events"`
	Owner         struct {
		Login string `json:"login"`
		Type  string `json:"type"`
	} `json:"owner"`
}

// TestManifestFlow: the form makes the App and redirects with the code and
// the state; the code is exchanged once for a key whose JWTs ghfake then
// accepts, and a secret that signs the webhooks sent to the manifest's
// hook URL; installations get the permissions the manifest asked for.
func TestManifestFlow(t *testing.T) {
	f := newManifestFixture(t)
	resp, body := f.postManifest("/organizations/acme/settings/apps/new?state=s3cr3t", f.manifest(f.sink.URL))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("form: %d, want 302: %s", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Host != "127.0.0.1:9" || loc.Path != "/callback" {
		t.Fatalf("redirected to %q (%v), want the manifest's redirect_url", resp.Header.Get("Location"), err)
	}
	q := loc.Query()
	if q.Get("state") != "s3cr3t" || q.Get("x") != "1" || q.Get("code") == "" {
		t.Fatalf("redirect query %v: want the state, the code and redirect_url's own query", q)
	}

	var c conversion
	f.expect(http.StatusCreated, "POST", "/app-manifests/"+q.Get("code")+"/conversions", "", nil, &c)
	if c.ID == 0 || c.Slug != "tandem-test" || c.Name != "tandem-test" || c.NodeID == "" || c.ClientID == "" || c.ClientSecret == "" {
		t.Errorf("conversion %+v: want id, slug, name, node_id and client credentials", c)
	}
	if c.Owner.Login != "acme" || c.Owner.Type != ghfake.AccountOrganization {
		t.Errorf("owner %+v, want the organization acme", c.Owner)
	}
	if !strings.HasSuffix(c.HTMLURL, "/apps/tandem-test") {
		t.Errorf("html_url %q, want …/apps/tandem-test", c.HTMLURL)
	}
	if len(c.WebhookSecret) < 16 || len(c.Events) != 1 || c.Events[0] != "workflow_job" {
		t.Errorf("webhook secret of %d bytes and events %v", len(c.WebhookSecret), c.Events)
	}
	f.expect(http.StatusNotFound, "POST", "/app-manifests/"+q.Get("code")+"/conversions", "", nil, nil)
	f.expect(http.StatusNotFound, "POST", "/app-manifests/nonsense/conversions", "", nil, nil)

	key, err := github.ParsePrivateKey([]byte(c.PEM))
	if err != nil {
		t.Fatalf("pem: %v", err)
	}
	now := f.clock.Now()
	tok := signJWT(t, key, jwt.MapClaims{
		"iat": now.Add(-30 * time.Second).Unix(), "exp": now.Add(9 * time.Minute).Unix(), "iss": strconv.FormatInt(c.ID, 10),
	})
	inst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	if inst == 0 {
		t.Fatal("the App cannot be installed on its owner's account")
	}
	var insts []struct {
		AppID       int64             `json:"app_id"`
		Permissions map[string]string `json:"permissions"`
	}
	f.expect(http.StatusOK, "GET", "/app/installations", "Bearer "+tok, nil, &insts)
	if len(insts) != 1 || insts[0].AppID != c.ID || !maps.Equal(insts[0].Permissions, c.Permissions) {
		t.Errorf("installations %+v, want one of app %d with %v", insts, c.ID, c.Permissions)
	}
	if info := f.srv.App(); info.ID != c.ID || info.Owner != "acme" || info.WebhookURL != f.sink.URL {
		t.Errorf("App() = %+v", info)
	}
	// GET /app shows the App the manifest made, as the conversion did.
	var got conversion
	f.expect(http.StatusOK, "GET", "/app", "Bearer "+tok, nil, &got)
	if got.ID != c.ID || got.Slug != c.Slug || got.Owner.Login != "acme" || got.HTMLURL != c.HTMLURL ||
		got.ClientID != c.ClientID || !maps.Equal(got.Permissions, c.Permissions) || !slices.Equal(got.Events, c.Events) {
		t.Errorf("GET /app = %+v, want the App of the conversion %+v", got, c)
	}
	if got.PEM != "" || got.ClientSecret != "" || got.WebhookSecret != "" {
		t.Errorf("GET /app shows the App's secrets")
	}

	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})
	waitFor(t, "the queued webhook", func() bool { return len(f.sink.hooks()) == 1 })
	h := f.sink.hooks()[0]
	m := hmac.New(sha256.New, []byte(c.WebhookSecret))
	m.Write(h.Body)
	if got := h.Header.Get("X-Hub-Signature-256"); got != "sha256="+hex.EncodeToString(m.Sum(nil)) {
		t.Errorf("webhook signed %q, not with the App's new secret", got)
	}
	if got := h.Header.Get("X-GitHub-Hook-Installation-Target-ID"); got != strconv.FormatInt(c.ID, 10) {
		t.Errorf("X-GitHub-Hook-Installation-Target-ID %q, want %d", got, c.ID)
	}

	// A private App: not on another account. And there is one App only.
	if id := f.srv.AddInstallation("globex", ghfake.AccountOrganization, "globex/web"); id != 0 {
		t.Errorf("a private App was installed on another organization (%d)", id)
	}
	if resp, body := f.postManifest("/settings/apps/new", f.manifest(f.sink.URL)); resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("a second App: %d, want 422: %s", resp.StatusCode, body)
	}
}

// TestManifestUserFlow: /settings/apps/new makes an App the signed-in user
// owns; a public one installs anywhere.
func TestManifestUserFlow(t *testing.T) {
	f := newManifestFixture(t)
	m := f.manifest(f.sink.URL)
	m["public"] = true
	var c conversion
	f.expect(http.StatusCreated, "POST", "/app-manifests/"+f.createApp("/settings/apps/new", m)+"/conversions", "", nil, &c)
	if c.Owner.Type != ghfake.AccountUser || c.Owner.Login == "" {
		t.Errorf("owner %+v, want a user", c.Owner)
	}
	if id := f.srv.AddInstallation("globex", ghfake.AccountOrganization, "globex/web"); id == 0 {
		t.Error("a public App could not be installed on another organization")
	}
}

// TestManifestCodeExpires: a code is good for an hour.
func TestManifestCodeExpires(t *testing.T) {
	f := newManifestFixture(t)
	code := f.createApp("/organizations/acme/settings/apps/new", f.manifest(f.sink.URL))
	f.clock.Advance(time.Hour + time.Second)
	f.expect(http.StatusNotFound, "POST", "/app-manifests/"+code+"/conversions", "", nil, nil)
}

// TestManifestRefused: a bad manifest is a 422 and makes no App.
func TestManifestRefused(t *testing.T) {
	f := newManifestFixture(t)
	with := func(k string, v any) map[string]any {
		m := f.manifest(f.sink.URL)
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for name, m := range map[string]any{
		"no manifest":     "",
		"not JSON":        "{name:",
		"unknown key":     with("default_permission", map[string]string{"actions": "read"}),
		"no name":         with("name", nil),
		"long name":       with("name", strings.Repeat("n", 35)),
		"no url":          with("url", nil),
		"no redirect_url": with("redirect_url", nil),
		"ftp redirect":    with("redirect_url", "ftp://127.0.0.1/"),
		"bad hook url":    with("hook_attributes", map[string]any{"url": "/webhook"}),
		"events, no hook": with("hook_attributes", nil),
		"bad level":       with("default_permissions", map[string]string{"actions": "everything"}),
		"bad event":       with("default_events", []string{"Workflow Job"}),
	} {
		resp, body := f.postManifest("/organizations/acme/settings/apps/new?state=x", m)
		if resp.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("%s: %d, want 422: %s", name, resp.StatusCode, body)
		}
	}
	if resp, _ := f.postManifest("/organizations/bad%20org/settings/apps/new", f.manifest(f.sink.URL)); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a bad organization name: %d, want 404", resp.StatusCode)
	}
	if info := f.srv.App(); info.ID != 0 {
		t.Errorf("an App was made: %+v", info)
	}
	// With an App in the Config, there is no room for another.
	g := newFixture(t)
	if resp, body := g.postManifest("/settings/apps/new", g.manifest(g.sink.URL)); resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("with an App already: %d, want 422: %s", resp.StatusCode, body)
	}
}

// TestManifestInstallPage: the App's install link serves a form that
// installs it.
func TestManifestInstallPage(t *testing.T) {
	f := newManifestFixture(t)
	f.expect(http.StatusCreated, "POST", "/app-manifests/"+f.createApp("/organizations/acme/settings/apps/new", f.manifest(f.sink.URL))+"/conversions", "", nil, nil)
	resp, page := f.do("GET", "/apps/tandem-test/installations/new", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `value="acme"`) {
		t.Fatalf("install page: %d\n%s", resp.StatusCode, page)
	}
	if resp, _ := f.do("GET", "/apps/other/installations/new", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another App's install page: %d, want 404", resp.StatusCode)
	}
	resp, err := f.api.Client().PostForm(f.api.URL+"/apps/tandem-test/installations/new",
		url.Values{"account": {"acme"}, "account_type": {"Organization"}, "repos": {"app, web"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("install: %d %s", resp.StatusCode, body)
	}
	id := f.srv.AddInstallation("acme", ghfake.AccountOrganization)
	if id == 0 || !strings.Contains(string(body), strconv.FormatInt(id, 10)) {
		t.Errorf("installed: %s; the installation is %d", body, id)
	}
	resp, err = f.api.Client().PostForm(f.api.URL+"/apps/tandem-test/installations/new",
		url.Values{"account": {"globex"}, "account_type": {"Organization"}, "repos": {"web"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("a private App on another account: %d, want 422", resp.StatusCode)
	}
}
