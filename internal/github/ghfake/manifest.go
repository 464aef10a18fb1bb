package ghfake

// The App-manifest flow, as GitHub documents it ("Registering a GitHub App
// from a manifest"):
//
//  1. A page the operator opens POSTs a form whose manifest field is the
//     App's settings as JSON to /settings/apps/new (the App belongs to the
//     signed-in user) or /organizations/{org}/settings/apps/new, with
//     ?state=… on the form's action.
//  2. GitHub shows the settings for confirmation, creates the App and
//     redirects the browser to the manifest's redirect_url with
//     ?code=…&state=….
//  3. Within an hour, POST /app-manifests/{code}/conversions, without
//     authentication, exchanges the code, once, for the App's id, private
//     key (pem), webhook secret and OAuth client credentials.
//
// ghfake skips step 2's page: the POST creates the App and redirects at
// once. It emulates one App: the manifest flow makes it when the Config
// named none (no AppPublicKey), and a second manifest is refused (422).
// From then on ghfake accepts the new key's JWTs for the new id, sends
// webhooks to the manifest's hook URL signed with the new secret, and the
// installations it makes (AddInstallation) get the manifest's
// default_permissions; a private App (public: false, the default) can be
// installed only on its owner's account.
//
// Guesses: the manifest is decoded strictly (an unknown key is a 422: that
// catches a misspelt key, where GitHub may ignore it); a manifest without
// name or redirect_url is refused (GitHub would ask for a name on its page,
// and show the code when there is nowhere to redirect); the signed-in user
// of the user flow is "monalisa"; html_url is on ghfake's own host
// (https://github.com/apps/SLUG on GitHub), and its installations/new is a
// plain form for an account and repositories that calls AddInstallation
// (GitHub offers the signed-in user's accounts and their repositories).

import (
	"cmp"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// manifestCodeTTL is how long a manifest's code may be exchanged.
const manifestCodeTTL = time.Hour

// maxAppName is the longest name GitHub accepts for an App.
const maxAppName = 34

// manifestUser is the signed-in user who makes Apps through the user flow.
const manifestUser = "monalisa"

// app is the App ghfake emulates.
type app struct {
	id   int64
	key  *rsa.PublicKey // nil: no App yet, every JWT is refused
	hook hook
	// The manifest flow's App only (nil or "" for Config's):
	name, slug  string
	owner       *account
	public      bool
	permissions map[string]string // what its installations get
	events      []string
	clientID    string
	description *string
	externalURL string
	htmlURL     string
	created     time.Time
}

// hook is where the App's webhooks go and how they are signed.
type hook struct {
	url    string
	secret []byte
	appID  int64
}

// conversion is a manifest code waiting to be exchanged.
type conversion struct {
	expires time.Time
	body    apiAppConversion
}

// AppInfo describes the App, as the manifest flow made it or Config named it.
type AppInfo struct {
	ID          int64             `json:"id"`
	Name        string            `json:"name,omitempty"`
	Slug        string            `json:"slug,omitempty"`
	Owner       string            `json:"owner,omitempty"`
	OwnerType   string            `json:"owner_type,omitempty"` // "Organization" or "User"
	Public      bool              `json:"public"`
	WebhookURL  string            `json:"webhook_url,omitempty"`
	Permissions map[string]string `json:"permissions,omitempty"`
	Events      []string          `json:"events,omitempty"`
}

// App returns the App; its ID is 0 when there is none yet.
func (s *Server) App() AppInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.app
	info := AppInfo{
		ID: a.id, Name: a.name, Slug: a.slug, Public: a.public, WebhookURL: a.hook.url,
		Permissions: maps.Clone(a.permissions), Events: slices.Clone(a.events),
	}
	if a.owner != nil {
		info.Owner, info.OwnerType = a.owner.login, a.owner.typ
	}
	return info
}

// appManifest is the manifest form field.
type appManifest struct {
	Name           string `json:"name"`
	URL            string `json:"url"`
	HookAttributes *struct {
		URL    string `json:"url"`
		Active *bool  `json:"active"`
	} `json:"hook_attributes"`
	RedirectURL           string            `json:"redirect_url"`
	CallbackURLs          []string          `json:"callback_urls"`
	SetupURL              string            `json:"setup_url"`
	Description           string            `json:"description"`
	Public                bool              `json:"public"`
	DefaultEvents         []string          `json:"default_events"`
	DefaultPermissions    map[string]string `json:"default_permissions"`
	RequestOAuthOnInstall bool              `json:"request_oauth_on_install"`
	SetupOnUpdate         bool              `json:"setup_on_update"`
}

// apiAppConversion is the conversions endpoint's answer: the App, as GET
// /app shows it, with its secrets.
type apiAppConversion struct {
	apiApp
	ClientSecret  string `json:"client_secret"`
	WebhookSecret string `json:"webhook_secret"`
	PEM           string `json:"pem"`
}

func (s *Server) manifestRoutes(m *http.ServeMux) {
	m.HandleFunc("POST /settings/apps/new", s.newAppFromManifest)
	m.HandleFunc("POST /organizations/{org}/settings/apps/new", s.newAppFromManifest)
	m.HandleFunc("POST /app-manifests/{code}/conversions", s.convertManifest)
	m.HandleFunc("GET /apps/{slug}/installations/new", s.installPage)
	m.HandleFunc("POST /apps/{slug}/installations/new", s.installFromPage)
	m.HandleFunc("GET /_ghfake/app", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.App())
	})
}

// newAppFromManifest is the web side of the flow: it checks the manifest,
// makes the App and sends the browser to redirect_url with a code.
func (s *Server) newAppFromManifest(w http.ResponseWriter, r *http.Request) {
	refuse := func(msg string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnprocessableEntity)
		fmt.Fprintln(w, "ghfake: the App cannot be created from this manifest:", msg)
	}
	org := r.PathValue("org")
	if org != "" && !validName(org) {
		http.NotFound(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		refuse("the form does not parse")
		return
	}
	m, redirect, msg := parseManifest(r.PostForm.Get("manifest"))
	if msg != "" {
		refuse(msg)
		return
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		refuse("no key: " + err.Error())
		return
	}
	code, msg := s.createApp(m, org, key, webBase(r))
	if msg != "" {
		refuse(msg)
		return
	}
	q := redirect.Query()
	q.Set("code", code)
	if st := r.URL.Query().Get("state"); st != "" {
		q.Set("state", st)
	}
	redirect.RawQuery = q.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

// parseManifest decodes and checks a manifest; msg says what is wrong.
func parseManifest(raw string) (m appManifest, redirect *url.URL, msg string) {
	if strings.TrimSpace(raw) == "" {
		return m, nil, "no manifest field"
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, nil, "the manifest is not valid JSON: " + err.Error()
	}
	switch {
	case strings.TrimSpace(m.Name) == "":
		return m, nil, "name is required"
	case len(m.Name) > maxAppName:
		return m, nil, fmt.Sprintf("name is too long (maximum is %d characters)", maxAppName)
	case !webURL(m.URL):
		return m, nil, "url must be an http(s) URL"
	case m.RedirectURL == "":
		return m, nil, "redirect_url is required"
	}
	redirect, err := url.Parse(m.RedirectURL)
	if err != nil || !webURL(m.RedirectURL) {
		return m, nil, "redirect_url must be an http(s) URL"
	}
	if m.HookAttributes != nil && !webURL(m.HookAttributes.URL) {
		return m, nil, "hook_attributes.url must be an http(s) URL"
	}
	if len(m.DefaultEvents) > 0 && m.HookAttributes == nil {
		return m, nil, "default_events need hook_attributes"
	}
	for _, e := range m.DefaultEvents {
		if !identifier(e) {
			return m, nil, fmt.Sprintf("default_events: %q is not an event", e)
		}
	}
	for p, level := range m.DefaultPermissions {
		if !identifier(p) || permissionLevels[level] == 0 {
			return m, nil, fmt.Sprintf("default_permissions: %s: %q is not read, write or admin", p, level)
		}
	}
	return m, redirect, ""
}

// createApp makes the App the manifest describes, owned by org (or the
// signed-in user), and returns the code that exchanges it.
func (s *Server) createApp(m appManifest, org string, key *rsa.PrivateKey, web string) (code, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.app.key != nil {
		return "", "ghfake emulates one App, and it has one already"
	}
	owner := s.accountLocked(manifestUser, AccountUser)
	if org != "" {
		owner = s.accountLocked(org, AccountOrganization)
	}
	s.ids.app++
	now := s.now()
	a := app{
		id: s.ids.app, key: &key.PublicKey, name: m.Name, slug: slugOf(m.Name), owner: owner,
		public: m.Public, permissions: maps.Clone(m.DefaultPermissions), events: slices.Clone(m.DefaultEvents),
		clientID: "Iv1." + s.randHexLocked(8), externalURL: m.URL, created: now,
	}
	a.htmlURL = web + "/apps/" + a.slug
	if m.Description != "" {
		a.description = &m.Description
	}
	if a.permissions == nil {
		a.permissions = map[string]string{}
	}
	a.permissions["metadata"] = cmp.Or(a.permissions["metadata"], "read") // every App has it
	secretBytes := []byte(secret(""))
	if h := m.HookAttributes; h != nil && (h.Active == nil || *h.Active) {
		a.hook = hook{url: h.URL, secret: secretBytes, appID: a.id}
	}
	s.app = a
	body := apiAppConversion{apiApp: s.apiAppLocked(), ClientSecret: secret(""), WebhookSecret: string(secretBytes),
		PEM: string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))}
	code = s.randHexLocked(20)
	s.conversions[code] = &conversion{expires: now.Add(manifestCodeTTL), body: body}
	return code, ""
}

// convertManifest exchanges a manifest's code for the App's credentials,
// once, within the hour: an unknown, used or expired code is a 404.
func (s *Server) convertManifest(w http.ResponseWriter, r *http.Request) {
	if s.rateLimited(w) {
		return
	}
	code := r.PathValue("code")
	s.mu.Lock()
	c, ok := s.conversions[code]
	delete(s.conversions, code)
	expired := ok && !s.now().Before(c.expires)
	s.mu.Unlock()
	if !ok || expired {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusCreated, c.body)
}

// installPage is the App's install link (html_url/installations/new): a
// form for the account and its repositories. GitHub asks the signed-in
// user to choose among the accounts they may install on.
func (s *Server) installPage(w http.ResponseWriter, r *http.Request) {
	info := s.App()
	if info.Slug == "" || r.PathValue("slug") != info.Slug {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = installTmpl.Execute(w, info)
}

// installFromPage installs the App as the form says (AddInstallation).
func (s *Server) installFromPage(w http.ResponseWriter, r *http.Request) {
	info := s.App()
	if info.Slug == "" || r.PathValue("slug") != info.Slug {
		http.NotFound(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "the form does not parse", http.StatusBadRequest)
		return
	}
	acct, typ := r.PostForm.Get("account"), r.PostForm.Get("account_type")
	var repos []string
	for _, name := range strings.FieldsFunc(r.PostForm.Get("repos"), func(c rune) bool { return c == ',' || c == ' ' || c == '\n' || c == '\r' }) {
		repos = append(repos, acct+"/"+name)
	}
	id := s.AddInstallation(acct, typ, repos...)
	if id == 0 {
		http.Error(w, "ghfake: the App cannot be installed there (a bad name, or a private App and not its owner)", http.StatusUnprocessableEntity)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "ghfake: %s is installed on %s (installation %d)\n", info.Name, acct, id)
}

var installTmpl = template.Must(template.New("install").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Install {{.Name}}</title></head>
<body><main><h1>Install {{.Name}}</h1>
<form method="post">
<p><label>Account <input name="account" value="{{.Owner}}"></label>
<select name="account_type"><option>Organization</option><option{{if eq .OwnerType "User"}} selected{{end}}>User</option></select></p>
<p><label>Repositories (names, comma-separated) <input name="repos" value="app"></label></p>
<p><button id="install" type="submit">Install</button></p>
</form></main></body></html>
`))

// webURL reports whether s is an absolute http(s) URL.
func webURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// identifier accepts names like workflow_job and organization_self_hosted_runners.
func identifier(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// slugOf makes an App's slug of its name, as GitHub does: lower case, runs
// of other characters as one '-'.
func slugOf(name string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(name) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

// webBase is the scheme and host a request reached ghfake at.
func webBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// installableLocked reports whether the App may be installed on acct: a
// private App of the manifest flow only on its owner's account.
func (s *Server) installableLocked(acct *account) bool {
	return s.app.owner == nil || s.app.public || s.app.owner == acct
}
