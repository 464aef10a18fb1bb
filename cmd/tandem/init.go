package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
)

// initOptions are tandem init's flags.
type initOptions struct {
	org        string // the organisation to own the App; "" with user
	user       bool   // the signed-in user owns the App
	githubURL  string // GitHub's web root
	apiURL     string // its REST API root; "" derives it from githubURL
	webhookURL string // where GitHub sends the App's webhooks
	name       string // the App's name; "" makes one of the host name
	public     bool   // anyone may install the App, not only its owner
	listen     string // the local page's address: loopback only
	configDir  string // where config.yaml, app.pem and webhook-secret go
	scope      string // runner.scope: org or repo; "" org with --org, else repo
	force      bool   // replace the files if they exist
	timeout    time.Duration

	// onListen, when set, gets the page's URL once it is served (tests).
	onListen func(pageURL string)
	// httpClient exchanges the code (default http.DefaultClient).
	httpClient *http.Client
}

// initFiles are what tandem init writes into the config directory.
var initFiles = struct{ config, key, secret string }{"config.yaml", "app.pem", "webhook-secret"}

// maxAppName is the longest name GitHub takes for an App.
const maxAppName = 34

func initCmd(g *globals) *cobra.Command {
	o := initOptions{}
	cmd := &cobra.Command{
		Use:   "init (--org ORG | --user) --webhook-url URL",
		Short: "Create Tandem's GitHub App with GitHub's App-manifest flow and write a config for it",
		Long: `Create the GitHub App Tandem acts as, through GitHub's App-manifest flow, and
write a configuration that uses it.

tandem init serves a one-page form on this machine's loopback address only
(127.0.0.1 or ::1: no other machine can reach it) and prints its address:
open it in a browser on this machine, or through an SSH tunnel
(ssh -L PORT:127.0.0.1:PORT HOST). The page posts the App's manifest to
GitHub (--github-url: https://github.com, or a GitHub Enterprise Server's
https://HOST), which asks you to confirm and sends your browser back here.
tandem init then exchanges the one-time code for the App's id, private key
and webhook secret, writes app.pem, webhook-secret and a commented
config.yaml (all mode 0600) into --config-dir, prints the link that
installs the App and the runs-on line for a workflow, and exits.

The App: subscribed to workflow_job webhooks sent to --webhook-url (the
public address of tandem up or tandem server, path /webhook), with Actions:
read, Metadata: read, and Self-hosted runners: write (runner scope org) or
Administration: write (runner scope repo). It is private to its owner unless
--public. Nothing is replaced without --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runInit(ctx, o, cmd.OutOrStdout(), g.log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.org, "org", "", "the GitHub organisation to own the App")
	f.BoolVar(&o.user, "user", false, "the signed-in GitHub user owns the App (repository runners only)")
	f.StringVar(&o.githubURL, "github-url", "https://github.com", "GitHub's web address (GitHub Enterprise Server: https://HOST)")
	f.StringVar(&o.apiURL, "api-url", "", "GitHub's REST API root (default: derived from --github-url; https://HOST/api/v3/ for Enterprise Server)")
	f.StringVar(&o.webhookURL, "webhook-url", "", "where GitHub sends the App's webhooks: tandem's public address and /webhook (required)")
	f.StringVar(&o.name, "name", "", "the App's name, unique on GitHub, at most 34 characters (default tandem-HOSTNAME)")
	f.BoolVar(&o.public, "public", false, "let any account install the App, not only its owner")
	f.StringVar(&o.listen, "listen", "127.0.0.1:0", "the local page's address: a loopback address only")
	f.StringVar(&o.configDir, "config-dir", "/etc/tandem", "where to write config.yaml, app.pem and webhook-secret")
	f.StringVar(&o.scope, "runner-scope", "", "register runners to the organisation (org) or each job's repository (repo) (default org with --org, repo with --user)")
	f.BoolVar(&o.force, "force", false, "replace config.yaml, app.pem and webhook-secret if they exist")
	f.DurationVar(&o.timeout, "timeout", 15*time.Minute, "how long to wait for the App to be created")
	return cmd
}

// runInit runs the whole flow: check, serve the page, wait for GitHub's
// redirect, exchange the code, write the files, print what comes next.
func runInit(ctx context.Context, o initOptions, stdout io.Writer, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := o.complete(); err != nil {
		return err
	}
	if err := o.checkFiles(); err != nil {
		return err
	}
	ln, err := listenLoopback(o.listen)
	if err != nil {
		return err
	}
	fl, err := newInitFlow(o, ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: fl.handler(log), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer srv.Close()

	fmt.Fprintf(stdout, "Open this page in a browser on this machine to create the GitHub App %q:\n\n    %s\n\n", o.name, fl.pageURL)
	fmt.Fprintf(stdout, "It listens on %s only. From another machine, tunnel to it first:\n    ssh -L %s:%s THIS-HOST\n",
		ln.Addr(), portOf(ln.Addr()), ln.Addr())
	if o.onListen != nil {
		o.onListen(fl.pageURL)
	}

	timer := time.NewTimer(o.timeout)
	defer timer.Stop()
	select {
	case app := <-fl.done:
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(shutdownCtx) // lets the success page finish
		cancel()
		fl.printNext(stdout, app)
		return nil
	case err := <-served:
		return fmt.Errorf("init: the local page stopped: %w", err)
	case <-timer.C:
		return fmt.Errorf("init: the GitHub App was not created within %s: run tandem init again, with a longer --timeout if need be", o.timeout)
	case <-ctx.Done():
		return fmt.Errorf("init: interrupted before the GitHub App was created: %w", ctx.Err())
	}
}

// complete checks the options and fills in the defaults.
func (o *initOptions) complete() error {
	switch {
	case o.org != "" && o.user:
		return errors.New("init: --org and --user: give one")
	case o.org == "" && !o.user:
		return errors.New("init: say who owns the App: --org ORG or --user")
	case o.org != "" && !githubLogin(o.org):
		return fmt.Errorf("init: --org %q is not an organisation's name", o.org)
	}
	switch o.scope {
	case "":
		o.scope = "repo"
		if o.org != "" {
			o.scope = "org"
		}
	case "repo":
	case "org":
		if o.org == "" {
			return errors.New("init: --runner-scope org needs --org (a user has no organisation runners)")
		}
	default:
		return fmt.Errorf("init: --runner-scope %q: want org or repo", o.scope)
	}
	if o.webhookURL == "" {
		return errors.New("init: --webhook-url is required: the address GitHub sends webhooks to, tandem's public address and /webhook")
	}
	if u, err := url.Parse(o.webhookURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return fmt.Errorf("init: --webhook-url %q: want an http(s) URL such as https://ci.example.com/webhook", o.webhookURL)
	}
	if _, err := github.NewAppURL(o.githubURL, o.org); err != nil {
		return fmt.Errorf("init: --github-url %q: want GitHub's web address, such as https://github.com", o.githubURL)
	}
	o.githubURL = strings.TrimSuffix(o.githubURL, "/")
	if o.apiURL == "" {
		o.apiURL = apiURLFor(o.githubURL)
	}
	if u, err := url.Parse(o.apiURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("init: --api-url %q: want an http(s) URL", o.apiURL)
	}
	if o.name == "" {
		host, _ := os.Hostname()
		o.name = defaultAppName(host)
	}
	if strings.TrimSpace(o.name) == "" || len(o.name) > maxAppName {
		return fmt.Errorf("init: --name %q: want 1 to %d characters", o.name, maxAppName)
	}
	if o.configDir == "" {
		return errors.New("init: --config-dir is empty")
	}
	if o.timeout <= 0 {
		return fmt.Errorf("init: --timeout %s: want a positive duration", o.timeout)
	}
	return nil
}

// apiURLFor derives the REST API root from GitHub's web address:
// api.HOST for github.com, HOST/api/v3/ for GitHub Enterprise Server.
func apiURLFor(web string) string {
	u, err := url.Parse(web)
	if err != nil {
		return ""
	}
	if strings.EqualFold(u.Hostname(), "github.com") {
		return u.Scheme + "://api.github.com/"
	}
	return strings.TrimSuffix(u.String(), "/") + "/api/v3/"
}

// defaultAppName is tandem-HOST, cut to GitHub's limit.
func defaultAppName(host string) string {
	host, _, _ = strings.Cut(host, ".")
	var b strings.Builder
	for _, c := range strings.ToLower(host) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteRune(c)
		}
	}
	name := "tandem"
	if b.Len() > 0 {
		name += "-" + b.String()
	}
	return strings.TrimRight(name[:min(len(name), maxAppName)], "-")
}

// githubLogin accepts GitHub account names.
func githubLogin(s string) bool {
	if s == "" || len(s) > 39 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// checkFiles makes sure, before anything is made on GitHub, that the
// config directory can take the files (making it), and refuses to replace
// what is there unless --force.
func (o *initOptions) checkFiles() error {
	// The files are written once GitHub has made the App: a directory
	// that cannot take them is found now, not then.
	err := os.MkdirAll(o.configDir, 0o750)
	if err == nil {
		var f *os.File
		if f, err = os.CreateTemp(o.configDir, ".tandem-init-check-*"); err == nil {
			f.Close()
			err = os.Remove(f.Name())
		}
	}
	if err != nil {
		return fmt.Errorf("init: --config-dir %s cannot take the App's files: %w (run as a user who may write there, root for /etc/tandem, or give another --config-dir)", o.configDir, err)
	}
	if o.force {
		return nil
	}
	for _, name := range []string{initFiles.config, initFiles.key, initFiles.secret} {
		p := filepath.Join(o.configDir, name)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("init: %s exists: tandem init does not replace it (move it away, or give --force)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("init: %w", err)
		}
	}
	return nil
}

// listenLoopback listens on addr, which must be a loopback address: the
// page hands out the App's credentials to whoever completes the flow.
func listenLoopback(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("init: --listen %q: %w", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("init: --listen %q: only a loopback address (127.0.0.1 or ::1) may serve the page", addr)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), port))
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	return ln, nil
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// randomHex returns n random bytes, hex encoded.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// initFlow is one run's page, state and outcome.
type initFlow struct {
	o        initOptions
	base     string // http://127.0.0.1:PORT
	pagePath string // /RANDOM/: only who reads stdout knows it
	pageURL  string
	state    string // 128 random bits, checked on the redirect
	manifest github.AppManifest
	formURL  string // GitHub's form, with the state

	mu       sync.Mutex     // one exchange at a time
	app      *github.NewApp // once the code is exchanged (it works once)
	finished bool
	done     chan *github.NewApp
}

func newInitFlow(o initOptions, addr string) (*initFlow, error) {
	fl := &initFlow{o: o, base: "http://" + addr, pagePath: "/" + randomHex(16) + "/", state: randomHex(16),
		done: make(chan *github.NewApp, 1)}
	fl.pageURL = fl.base + fl.pagePath
	form, err := github.NewAppURL(o.githubURL, o.org)
	if err != nil {
		return nil, err
	}
	fl.formURL = form + "?state=" + url.QueryEscape(fl.state)
	hookURL, _ := url.Parse(o.webhookURL)
	fl.manifest = github.AppManifest{
		Name:           o.name,
		URL:            hookURL.Scheme + "://" + hookURL.Host,
		HookAttributes: &github.HookAttributes{URL: o.webhookURL, Active: true},
		RedirectURL:    fl.base + "/callback",
		Description:    "Tandem runs each GitHub Actions job in its own fresh microVM on its owner's servers.",
		Public:         o.public,
		DefaultEvents:  []string{"workflow_job"},
		DefaultPermissions: map[string]string{
			"actions":  "read", // queued jobs and their labels (reconcilers)
			"metadata": "read",
		},
	}
	if o.scope == "org" {
		fl.manifest.DefaultPermissions["organization_self_hosted_runners"] = "write" // JIT runners, runner groups
	} else {
		fl.manifest.DefaultPermissions["administration"] = "write" // repositories' JIT runners
	}
	return fl, nil
}

func (fl *initFlow) handler(log *slog.Logger) http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET "+fl.pagePath+"{$}", fl.servePage)
	m.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) { fl.callback(w, r, log) })
	return m
}

func (fl *initFlow) servePage(w http.ResponseWriter, _ *http.Request) {
	manifest, err := json.Marshal(fl.manifest)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	owner := "your GitHub account"
	if fl.o.org != "" {
		owner = "the organisation " + fl.o.org
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = initPage.Execute(w, map[string]any{
		"Name": fl.o.name, "Owner": owner, "Webhook": fl.o.webhookURL, "Form": fl.formURL,
		"Manifest": string(manifest), "Permissions": fl.manifest.DefaultPermissions, "Public": fl.o.public,
		"GitHub": fl.o.githubURL,
	})
}

// callback is where GitHub sends the browser back: the state first (a
// mismatch changes nothing, and the flow keeps waiting), then the code's
// exchange, then the files, then the success page.
func (fl *initFlow) callback(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	q := r.URL.Query()
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(fl.state)) != 1 {
		log.Warn("init: a redirect with the wrong state was refused", "from", r.RemoteAddr)
		http.Error(w, "This answer does not belong to this tandem init (its state does not match). tandem init is still waiting.", http.StatusBadRequest)
		return
	}
	code := q.Get("code")
	if code == "" {
		http.Error(w, "GitHub sent no code. tandem init is still waiting.", http.StatusBadRequest)
		return
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.finished {
		http.Error(w, "tandem init has finished already.", http.StatusGone)
		return
	}
	// Not cancelled with the request: GitHub may consume the code even if
	// the browser goes away meanwhile.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Minute)
	defer cancel()
	var err error
	if fl.app == nil {
		fl.app, err = github.ConvertManifest(ctx, fl.o.httpClient, fl.o.apiURL, code)
	}
	app := fl.app
	if err == nil {
		err = fl.write(app)
	}
	if err != nil {
		log.Error("init: the App's credentials could not be saved", "err", err)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusBadGateway)
		_ = initFailedPage.Execute(w, map[string]any{"Err": err.Error()})
		return
	}
	fl.finished = true
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = initDonePage.Execute(w, map[string]any{
		"App": app, "Install": app.HTMLURL + "/installations/new", "Dir": fl.o.configDir,
		"Files": []string{initFiles.config, initFiles.key, initFiles.secret}, "RunsOn": exampleLabel(),
	})
	fl.done <- app
}

// exampleLabel is a runs-on label for the printed example.
func exampleLabel() string { return labels.DefaultPrefix + "-arm64-4cpu-8gb" }

// printNext tells the operator what comes next.
func (fl *initFlow) printNext(w io.Writer, app *github.NewApp) {
	cfg := filepath.Join(fl.o.configDir, initFiles.config)
	fmt.Fprintf(w, `
Created the GitHub App %q (id %d), owned by %s.
Wrote %s, and the App's key and webhook secret beside it (mode 0600).

Next:
  1. Install the App on the repositories Tandem should run jobs for:
         %s/installations/new
  2. Make %s reach this machine's Tandem (listen: in the config), then start it:
         tandem up --config %s
  3. Opt a workflow's job in with one line:
         runs-on: %s

Some settings need more of the App than it asks for now: retry.infra_losses
needs Actions: write, and parity.commit_status Commit statuses: write. Add
them in the App's settings (Permissions & events); each installation's owner
then accepts them.
`, app.Name, app.ID, app.Owner, cfg, app.HTMLURL, fl.o.webhookURL, cfg, exampleLabel())
}
