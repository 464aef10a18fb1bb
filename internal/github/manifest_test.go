package github_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// TestConvertManifest runs the manifest flow against ghfake: the form makes
// the App, the code is exchanged once for credentials that work, and the
// secrets never print.
func TestConvertManifest(t *testing.T) {
	gh := ghfake.New(ghfake.Config{})
	srv := httptest.NewServer(gh.Handler())
	t.Cleanup(func() { gh.Close(); srv.Close() })

	m := github.AppManifest{
		Name: "tandem-x", URL: "https://ci.example.com/", RedirectURL: "http://127.0.0.1:9/cb",
		HookAttributes: &github.HookAttributes{URL: "https://ci.example.com/webhook", Active: true},
		DefaultEvents:  []string{"workflow_job"},
		DefaultPermissions: map[string]string{
			"actions": "read", "administration": "write", "metadata": "read",
		},
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	form, err := github.NewAppURL(srv.URL, "acme")
	if err != nil {
		t.Fatal(err)
	}
	c := *srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.PostForm(form+"?state=abc", url.Values{"manifest": {string(b)}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc == nil || loc.Query().Get("state") != "abc" {
		t.Fatalf("form: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	code := loc.Query().Get("code")

	ctx := context.Background()
	app, err := github.ConvertManifest(ctx, srv.Client(), srv.URL, code)
	if err != nil {
		t.Fatal(err)
	}
	if app.ID != gh.App().ID || app.Owner != "acme" || app.OwnerType != "Organization" || app.Slug != "tandem-x" ||
		len(app.WebhookSecret) < 16 || app.Permissions["administration"] != "write" {
		t.Errorf("app %v: permissions %v", app, app.Permissions)
	}
	key, err := github.ParsePrivateKey(app.PEM)
	if err != nil {
		t.Fatal(err)
	}
	inst := gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	client, err := github.New(github.Config{BaseURL: srv.URL, AppID: app.ID, PrivateKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Auth().InstallationToken(ctx, inst); err != nil {
		t.Errorf("an installation token with the new App's key: %v", err)
	}

	if _, err := github.ConvertManifest(ctx, srv.Client(), srv.URL, code); !errors.Is(err, github.ErrNotFound) {
		t.Errorf("the code again: %v, want ErrNotFound", err)
	} else if strings.Contains(err.Error(), code) {
		t.Errorf("the error quotes the code: %v", err)
	}
	if _, err := github.ConvertManifest(ctx, srv.Client(), srv.URL, "../app"); !errors.Is(err, github.ErrInvalidArgument) {
		t.Errorf("a code that is not a path segment: %v, want ErrInvalidArgument", err)
	}

	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("made", "app", app)
	for _, out := range []string{fmt.Sprint(app), fmt.Sprintf("%+v", app), fmt.Sprintf("%#v", app), logged.String()} {
		for _, s := range [][]byte{app.WebhookSecret, app.ClientSecret, app.PEM[40:80]} {
			if strings.Contains(out, string(s)) {
				t.Errorf("a secret in %q", out)
			}
		}
	}
}

func TestNewAppURL(t *testing.T) {
	for _, c := range []struct{ web, org, want string }{
		{"https://github.com", "", "https://github.com/settings/apps/new"},
		{"https://github.com/", "acme", "https://github.com/organizations/acme/settings/apps/new"},
		{"https://ghe.example.com", "acme", "https://ghe.example.com/organizations/acme/settings/apps/new"},
	} {
		if got, err := github.NewAppURL(c.web, c.org); err != nil || got != c.want {
			t.Errorf("NewAppURL(%q, %q) = %q, %v; want %q", c.web, c.org, got, err, c.want)
		}
	}
	for _, c := range []struct{ web, org string }{
		{"github.com", ""}, {"ftp://github.com", ""}, {"https://u:p@github.com", ""}, {"https://github.com", "a/b"},
	} {
		if _, err := github.NewAppURL(c.web, c.org); !errors.Is(err, github.ErrInvalidArgument) {
			t.Errorf("NewAppURL(%q, %q): %v, want ErrInvalidArgument", c.web, c.org, err)
		}
	}
}
