package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/agentapi"
)

// --server compares as a set with the enrolled addresses: the same set in
// any order changes nothing, a set sharing an address replaces them (the
// same control plane's replicas), a disjoint one is refused.
func TestWithServers(t *testing.T) {
	const a, b, c = "https://a.test:8443", "https://b.test:8443", "https://c.test:8443"
	enrolled := agentapi.Credentials{Server: a, Servers: []string{b}, Pin: strings.Repeat("ab", 32), HostID: "h1", Credential: "x"}
	legacy := agentapi.Credentials{Server: "https://A.test:8443/", Pin: enrolled.Pin, HostID: "h1", Credential: "x"}
	for name, tc := range map[string]struct {
		creds   agentapi.Credentials
		given   []string
		want    []string // Addrs after
		wantErr string
	}{
		"none given":       {enrolled, nil, []string{a, b}, ""},
		"same order":       {enrolled, []string{a, b}, []string{a, b}, ""},
		"other order":      {enrolled, []string{b, a}, []string{a, b}, ""},
		"one more":         {enrolled, []string{b, a, c}, []string{b, a, c}, ""},
		"one shared":       {enrolled, []string{c, b}, []string{c, b}, ""},
		"a subset":         {enrolled, []string{b}, []string{b}, ""},
		"disjoint":         {enrolled, []string{c}, nil, "enrolled with " + a + ", " + b + ", not " + c},
		"legacy same":      {legacy, []string{a}, []string{"https://A.test:8443/"}, ""},
		"legacy plus one":  {legacy, []string{a, c}, []string{a, c}, ""},
		"legacy disjoint":  {legacy, []string{b}, nil, "enrolled with https://A.test:8443/, not " + b},
		"single unchanged": {agentapi.Credentials{Server: c}, []string{c}, []string{c}, ""},
	} {
		got, err := withServers(tc.creds, tc.given)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want %q", name, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%s: %v", name, err)
		case !slices.Equal(got.Addrs(), tc.want):
			t.Errorf("%s: %q, want %q", name, got.Addrs(), tc.want)
		case got.Credential != tc.creds.Credential || got.Pin != tc.creds.Pin:
			t.Errorf("%s: the credential or pin changed", name)
		}
	}
}

// An enrolled host started with a new set of replicas keeps it in its
// credentials file; a bad address is refused by name before anything.
func TestAgentCredentialsUpdatesServers(t *testing.T) {
	g := &globals{dataDir: t.TempDir(), log: slog.New(slog.DiscardHandler)}
	path := filepath.Join(g.dataDir, "agent", "credentials.json")
	os.MkdirAll(filepath.Dir(path), 0o700)
	enrolled := agentapi.Credentials{Server: "https://a.test:8443", Pin: strings.Repeat("ab", 32), HostID: "h1", Credential: "x"}
	if err := enrolled.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := agentCredentials(t.Context(), g, []string{"https://b.test:8443", "https://a.test:8443"}, "", "h1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://b.test:8443", "https://a.test:8443"}
	if !slices.Equal(got.Addrs(), want) {
		t.Errorf("addresses %q", got.Addrs())
	}
	if saved, err := agentapi.LoadCredentials(path); err != nil || !slices.Equal(saved.Addrs(), want) || saved.Credential != "x" {
		t.Errorf("saved %q, %v", saved.Addrs(), err)
	}
	if _, err := agentCredentials(t.Context(), g, []string{"https://a.test:8443", "a.test:8443"}, "", "h1"); err == nil ||
		!strings.Contains(err.Error(), `--server: control-plane address "a.test:8443"`) {
		t.Errorf("bad address: %v", err)
	}
	if _, err := agentCredentials(t.Context(), g, []string{"https://c.test:8443"}, "", "h1"); err == nil ||
		!strings.Contains(err.Error(), "not https://c.test:8443: remove "+path) {
		t.Errorf("another control plane: %v", err)
	}
}

// --server takes a comma-separated list, and may be repeated.
func TestAgentServerFlag(t *testing.T) {
	cmd := agentCmd(&globals{})
	if err := cmd.Flags().Parse([]string{"--server", "https://a.test:1,https://b.test:2", "--server", "https://c.test:3"}); err != nil {
		t.Fatal(err)
	}
	got, err := cmd.Flags().GetStringSlice("server")
	if want := []string{"https://a.test:1", "https://b.test:2", "https://c.test:3"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("--server: %q, %v", got, err)
	}
}
