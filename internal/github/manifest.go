package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// The App-manifest flow creates a GitHub App from its settings in three
// steps: a browser POSTs a form whose "manifest" field is an AppManifest
// (as JSON) to NewAppURL, with ?state=… on the form's action; GitHub asks
// for confirmation, creates the App and redirects the browser to the
// manifest's RedirectURL with ?code=…&state=…; ConvertManifest then
// exchanges the code, once and within an hour, for the App's id, private
// key and webhook secret.

// AppManifest is a GitHub App's settings, as the manifest flow takes them.
type AppManifest struct {
	Name           string          `json:"name"`
	URL            string          `json:"url"` // the App's homepage
	HookAttributes *HookAttributes `json:"hook_attributes,omitempty"`
	// RedirectURL receives the browser, with ?code=…&state=…, once the
	// App is made.
	RedirectURL        string            `json:"redirect_url"`
	Description        string            `json:"description,omitempty"`
	Public             bool              `json:"public"`
	DefaultEvents      []string          `json:"default_events,omitempty"`
	DefaultPermissions map[string]string `json:"default_permissions,omitempty"`
}

// HookAttributes is where the App's webhooks go.
type HookAttributes struct {
	URL    string `json:"url"`
	Active bool   `json:"active"`
}

// NewAppURL is where the manifest form posts: web is GitHub's web root
// (https://github.com, or a GitHub Enterprise Server's https://HOST), org
// the organisation to own the App, "" for the signed-in user.
func NewAppURL(web, org string) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(web, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return "", fmt.Errorf("github: %w: web url must be an http(s) URL such as https://github.com", ErrInvalidArgument)
	}
	if org == "" {
		return u.JoinPath("settings", "apps", "new").String(), nil
	}
	if !pathSafe(org) {
		return "", fmt.Errorf("github: %w: organisation %q", ErrInvalidArgument, org)
	}
	return u.JoinPath("organizations", org, "settings", "apps", "new").String(), nil
}

// NewApp is a GitHub App the manifest flow made, with its secrets.
type NewApp struct {
	ID          int64
	Slug        string
	Name        string
	Owner       string // the login of the account that owns it
	OwnerType   string // "Organization" or "User"
	HTMLURL     string // the App's page; HTMLURL + "/installations/new" installs it
	Permissions map[string]string
	Events      []string
	ClientID    string
	// Secrets: never logged or printed.
	PEM           []byte
	WebhookSecret []byte
	ClientSecret  []byte
}

// LogValue keeps the secrets out of logs.
func (a *NewApp) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("id", a.ID), slog.String("slug", a.Slug), slog.String("owner", a.Owner),
		slog.String("secrets", "[REDACTED]"))
}

// String keeps the secrets out of formatted output.
func (a *NewApp) String() string {
	return fmt.Sprintf("NewApp{ID:%d Slug:%s Owner:%s secrets:[REDACTED]}", a.ID, a.Slug, a.Owner)
}

// GoString keeps the secrets out of %#v output.
func (a *NewApp) GoString() string { return a.String() }

// ConvertManifest exchanges the manifest flow's code for the App it made:
// POST {base}app-manifests/{code}/conversions, without authentication.
// base is the API root (DefaultBaseURL, or https://HOST/api/v3/); hc nil
// means http.DefaultClient. A code that is unknown, already used or more
// than an hour old is ErrNotFound.
func ConvertManifest(ctx context.Context, hc *http.Client, base, code string) (*NewApp, error) {
	const op = "github: convert app manifest"
	u, err := parseBaseURL(base)
	if err != nil {
		return nil, err
	}
	if !pathSafe(code) {
		return nil, fmt.Errorf("%s: %w: the code is not one GitHub issues", op, ErrInvalidArgument)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.JoinPath("app-manifests", code, "conversions").String(), http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", apiVersion)
	req.Header.Set("User-Agent", defaultUserAgent)
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its URL holds the code
		}
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("%s: read response: %w", op, err)
	}
	if resp.StatusCode != http.StatusCreated {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(body, &e)
		se := newStatusError(resp, e.Message, nil)
		se.Path = "/app-manifests/{code}/conversions" // the code is a credential
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s: the code is unknown, already used or more than an hour old: %w", op, se)
		}
		return nil, fmt.Errorf("%s: %w", op, se)
	}
	var out struct {
		ID    int64  `json:"id"`
		Slug  string `json:"slug"`
		Name  string `json:"name"`
		Owner struct {
			Login string `json:"login"`
			Type  string `json:"type"`
		} `json:"owner"`
		HTMLURL       string            `json:"html_url"`
		Permissions   map[string]string `json:"permissions"`
		Events        []string          `json:"events"`
		ClientID      string            `json:"client_id"`
		ClientSecret  string            `json:"client_secret"`
		WebhookSecret *string           `json:"webhook_secret"`
		PEM           string            `json:"pem"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		// Not wrapped: a JSON error could quote the body, which holds the key.
		return nil, fmt.Errorf("%s: response is not valid JSON", op)
	}
	if out.ID <= 0 || out.PEM == "" || out.HTMLURL == "" {
		return nil, fmt.Errorf("%s: response lacks id, pem or html_url", op)
	}
	if _, err := ParsePrivateKey([]byte(out.PEM)); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	app := &NewApp{
		ID: out.ID, Slug: out.Slug, Name: out.Name, Owner: out.Owner.Login, OwnerType: out.Owner.Type,
		HTMLURL: strings.TrimSuffix(out.HTMLURL, "/"), Permissions: out.Permissions, Events: out.Events,
		ClientID: out.ClientID, PEM: []byte(out.PEM), ClientSecret: []byte(out.ClientSecret),
	}
	if out.WebhookSecret != nil {
		app.WebhookSecret = []byte(*out.WebhookSecret)
	}
	return app, nil
}

// pathSafe accepts a path segment of letters, digits, '-', '_' and '.'
// (not "." or "..").
func pathSafe(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 200 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
