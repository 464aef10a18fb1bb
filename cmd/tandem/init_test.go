package main

import (
	"bytes"
	"context"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// TestInitRefuses: bad flags, a listener other machines could reach and
// files that exist are refused before anything is served or made.
func TestInitRefuses(t *testing.T) {
	dir := t.TempDir()
	taken := t.TempDir()
	if err := os.WriteFile(filepath.Join(taken, "app.pem"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ok := initOptions{org: "acme", webhookURL: "https://ci.example.com/webhook", githubURL: "https://github.com",
		listen: "127.0.0.1:0", configDir: dir, timeout: time.Second}
	for _, c := range []struct {
		name string
		edit func(*initOptions)
		want string
	}{
		{"no owner", func(o *initOptions) { o.org = "" }, "--org ORG or --user"},
		{"two owners", func(o *initOptions) { o.user = true }, "give one"},
		{"bad org", func(o *initOptions) { o.org = "a/b" }, "not an organisation"},
		{"org runners of a user", func(o *initOptions) { o.org, o.user, o.scope = "", true, "org" }, "needs --org"},
		{"bad scope", func(o *initOptions) { o.scope = "enterprise" }, "want org or repo"},
		{"no webhook url", func(o *initOptions) { o.webhookURL = "" }, "--webhook-url is required"},
		{"relative webhook url", func(o *initOptions) { o.webhookURL = "/webhook" }, "--webhook-url"},
		{"bad github url", func(o *initOptions) { o.githubURL = "github.com" }, "--github-url"},
		{"long name", func(o *initOptions) { o.name = strings.Repeat("x", 35) }, "--name"},
		{"every address", func(o *initOptions) { o.listen = "0.0.0.0:0" }, "only a loopback address"},
		{"no host", func(o *initOptions) { o.listen = ":0" }, "only a loopback address"},
		{"another address", func(o *initOptions) { o.listen = "192.0.2.1:0" }, "only a loopback address"},
		{"a name", func(o *initOptions) { o.listen = "example.com:0" }, "only a loopback address"},
		{"files exist", func(o *initOptions) { o.configDir = taken }, filepath.Join(taken, "app.pem") + " exists"},
		{"unwritable dir", func(o *initOptions) { o.configDir = filepath.Join(notDir, "tandem") }, "cannot take the App's files"},
		{"unwritable dir, forced", func(o *initOptions) { o.configDir, o.force = filepath.Join(notDir, "tandem"), true }, "give another --config-dir"},
	} {
		o := ok
		c.edit(&o)
		served := false
		o.onListen = func(string) { served = true }
		var out bytes.Buffer
		err := runInit(context.Background(), o, &out, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
		if served {
			t.Errorf("%s: the page was served", c.name)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refusals wrote %d files", len(ents))
	}
	// The command itself: flags reach runInit.
	cmd := initCmd(&globals{})
	cmd.SetArgs([]string{"--user", "--webhook-url", "https://ci.example.com/webhook", "--listen", "0.0.0.0:0", "--config-dir", dir})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("tandem init --listen 0.0.0.0:0: %v, want a refusal", err)
	}
}

func TestInitDefaults(t *testing.T) {
	for web, want := range map[string]string{
		"https://github.com":           "https://api.github.com/",
		"https://ghe.example.com":      "https://ghe.example.com/api/v3/",
		"http://127.0.0.1:8080":        "http://127.0.0.1:8080/api/v3/",
		"https://ghe.example.com/path": "https://ghe.example.com/path/api/v3/",
	} {
		if got := apiURLFor(web); got != want {
			t.Errorf("apiURLFor(%q) = %q, want %q", web, got, want)
		}
	}
	for host, want := range map[string]string{
		"":                            "tandem",
		"ci-1.example.com":            "tandem-ci-1",
		"Build_Box":                   "tandem-buildbox",
		strings.Repeat("h", 40):       "tandem-" + strings.Repeat("h", 27),
		"x" + strings.Repeat("-", 40): "tandem-x",
	} {
		if got := defaultAppName(host); got != want || len(got) > maxAppName {
			t.Errorf("defaultAppName(%q) = %q, want %q", host, got, want)
		}
	}
}

// initRig is ghfake with no App yet, a webhook receiver, and tandem init
// running against both.
type initRig struct {
	t      *testing.T
	gh     *ghfake.Server
	api    *httptest.Server
	hooks  *httptest.Server
	dir    string
	page   string // the page's URL
	out    *syncBuffer
	result chan error

	mu  sync.Mutex
	got [][]byte // webhook bodies
	sig []string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newInitRig(t *testing.T, org string) *initRig {
	t.Helper()
	r := &initRig{t: t, gh: ghfake.New(ghfake.Config{}), dir: filepath.Join(t.TempDir(), "etc"),
		out: &syncBuffer{}, result: make(chan error, 1)}
	r.api = httptest.NewServer(r.gh.Handler())
	r.hooks = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got, r.sig = append(r.got, b), append(r.sig, req.Header.Get("X-Hub-Signature-256"))
		r.mu.Unlock()
	}))
	t.Cleanup(func() { r.gh.Close(); r.api.Close(); r.hooks.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	listening := make(chan string, 1)
	o := initOptions{
		org: org, user: org == "", githubURL: r.api.URL, apiURL: r.api.URL + "/", webhookURL: r.hooks.URL + "/webhook",
		name: "tandem-test", listen: "127.0.0.1:0", configDir: r.dir, timeout: 2 * time.Minute,
		onListen: func(u string) { listening <- u },
	}
	go func() { r.result <- runInit(ctx, o, r.out, nil) }()
	select {
	case r.page = <-listening:
	case err := <-r.result:
		t.Fatalf("tandem init: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("tandem init did not serve its page")
	}
	if !strings.Contains(r.out.String(), r.page) {
		t.Errorf("tandem init did not print its page's URL %s:\n%s", r.page, r.out.String())
	}
	return r
}

// wait returns tandem init's outcome.
func (r *initRig) wait() error {
	r.t.Helper()
	select {
	case err := <-r.result:
		return err
	case <-time.After(time.Minute):
		r.t.Fatal("tandem init did not finish")
		return nil
	}
}

// check verifies what tandem init left: files of mode 0600, a config that
// loads, whose key is the App's (an installation token can be had with
// it) and whose secret signs the App's webhooks; and the printed next
// steps.
func (r *initRig) check(owner string) {
	t := r.t
	t.Helper()
	for _, name := range []string{"config.yaml", "app.pem", "webhook-secret"} {
		fi, err := os.Stat(filepath.Join(r.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	cfg, err := config.Load(filepath.Join(r.dir, "config.yaml"))
	if b, _ := os.ReadFile(filepath.Join(r.dir, "config.yaml")); err != nil {
		t.Fatalf("the config does not load: %v\n%s", err, b)
	} else {
		t.Logf("config.yaml:\n%s", b)
	}
	app := r.gh.App()
	if cfg.GitHub.AppID != app.ID || app.ID == 0 {
		t.Errorf("config app_id %d, ghfake's App %d", cfg.GitHub.AppID, app.ID)
	}
	wantScope, runnerPerm := "org", "organization_self_hosted_runners"
	if owner == "" {
		wantScope, runnerPerm = "repo", "administration"
	}
	if app.Permissions[runnerPerm] != "write" || app.Permissions["actions"] != "read" || app.Public {
		t.Errorf("the App's permissions %v lack %s: write or actions: read, or it is public", app.Permissions, runnerPerm)
	}
	if cfg.Runner.Scope != wantScope || app.Events[0] != "workflow_job" || app.WebhookURL != r.hooks.URL+"/webhook" {
		t.Errorf("runner scope %q (want %s), App %+v", cfg.Runner.Scope, wantScope, app)
	}
	login := owner
	if login == "" {
		login = app.Owner
	}
	inst := r.gh.AddInstallation(login, map[bool]string{true: ghfake.AccountOrganization, false: ghfake.AccountUser}[owner != ""], login+"/app")
	if inst == 0 {
		t.Fatalf("the App cannot be installed on %s", login)
	}
	client, err := github.New(github.Config{BaseURL: cfg.GitHub.APIURL, AppID: cfg.GitHub.AppID, PrivateKey: cfg.AppKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Auth().InstallationToken(context.Background(), inst); err != nil {
		t.Errorf("an installation token with the written key: %v", err)
	}
	r.gh.QueueJob(ghfake.JobSpec{Repo: login + "/app", Labels: []string{"tandem"}})
	r.gh.Quiesce()
	r.mu.Lock()
	if len(r.got) != 1 {
		t.Errorf("%d webhooks reached --webhook-url, want 1", len(r.got))
	} else if err := github.VerifySignature(cfg.WebhookSecret, r.got[0], r.sig[0]); err != nil {
		t.Errorf("the written webhook secret does not verify the App's webhook: %v", err)
	}
	r.mu.Unlock()
	out := r.out.String()
	t.Logf("tandem init printed:\n%s", out)
	for _, want := range []string{"/apps/tandem-test/installations/new", "runs-on: tandem-arm64-4cpu-8gb", "tandem up --config " + filepath.Join(r.dir, "config.yaml")} {
		if !strings.Contains(out, want) {
			t.Errorf("tandem init's output lacks %q:\n%s", want, out)
		}
	}
}

var (
	formAction   = regexp.MustCompile(`<form method="post" action="([^"]*)"`)
	formManifest = regexp.MustCompile(`name="manifest" value="([^"]*)"`)
)

// TestInitFlow runs the flow with a plain HTTP client in the browser's
// place (TestInitInBrowser uses a real one): a redirect with another state
// is refused and changes nothing; GitHub's redirect writes the files.
func TestInitFlow(t *testing.T) {
	r := newInitRig(t, "")
	resp, err := http.Get(r.page)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	action, manifest := formAction.FindSubmatch(page), formManifest.FindSubmatch(page)
	if resp.StatusCode != 200 || action == nil || manifest == nil {
		t.Fatalf("the page (%d) has no form:\n%s", resp.StatusCode, page)
	}
	if u, _ := url.Parse(r.page); true {
		if resp, err := http.Get(u.Scheme + "://" + u.Host + "/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("the page is served at / too (%d): only its random path should", resp.StatusCode)
			}
		}
	}
	// The form, as the browser posts it: GitHub redirects to the callback.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.PostForm(html.UnescapeString(string(action[1])), url.Values{"manifest": {html.UnescapeString(string(manifest[1]))}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	callback, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil || !strings.HasPrefix(callback.String(), r.page[:strings.LastIndex(r.page[:len(r.page)-1], "/")]+"/callback") {
		t.Fatalf("GitHub answered %d, to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// A redirect with another state: 400, and tandem init keeps waiting.
	forged := *callback
	q := forged.Query()
	q.Set("state", strings.Repeat("0", 32))
	forged.RawQuery = q.Encode()
	if resp, err := http.Get(forged.String()); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a forged redirect: %v %v, want 400", resp, err)
	}
	if ents, _ := os.ReadDir(r.dir); len(ents) != 0 {
		t.Fatalf("a forged redirect wrote %d files", len(ents))
	}
	select {
	case err := <-r.result:
		t.Fatalf("tandem init ended on a forged redirect: %v", err)
	default:
	}
	// A code GitHub does not know: 502, nothing written, still waiting.
	bogus := *callback
	q = bogus.Query()
	q.Set("code", "0123abcd")
	bogus.RawQuery = q.Encode()
	if resp, err := http.Get(bogus.String()); err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("an unknown code: %v %v, want 502", resp, err)
	}
	// The files cannot be written (a file where the directory should be,
	// made after tandem init checked it): 502; once they can, the same
	// redirect again writes them, though GitHub's code works only once.
	if err := os.Remove(r.dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(callback.String()); err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("no config directory: %v %v, want 502", resp, err)
	}
	if err := os.Remove(r.dir); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.result:
		t.Fatalf("tandem init ended on a failed exchange: %v", err)
	default:
	}
	resp, err = http.Get(callback.String())
	if err != nil {
		t.Fatal(err)
	}
	done, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(done, []byte("/installations/new")) {
		t.Fatalf("the callback: %d\n%s", resp.StatusCode, done)
	}
	if err := r.wait(); err != nil {
		t.Fatalf("tandem init: %v", err)
	}
	r.check("")
}

// TestInitTimeout: without an answer, tandem init ends with an error that
// says so, and writes nothing.
func TestInitTimeout(t *testing.T) {
	dir := t.TempDir()
	o := initOptions{org: "acme", webhookURL: "https://ci.example.com/webhook", githubURL: "https://github.com",
		listen: "127.0.0.1:0", configDir: dir, timeout: 50 * time.Millisecond}
	err := runInit(context.Background(), o, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "not created within 50ms") {
		t.Errorf("%v, want a timeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o.timeout = time.Minute
	if err := runInit(ctx, o, io.Discard, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("wrote %d files", len(ents))
	}
}
