package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMirrorDefaults(t *testing.T) {
	c, err := load(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Agent.Mirror
	// No upstream, no mirror: Tandem names no registry of its own.
	if m.On() || m.Explicit() || m.Port != 5000 || m.Upstream != "" ||
		m.Username != "" || m.CachePath("/d") != "/d/mirror" || c.MirrorPassword != nil ||
		m.InsecureUpstream || m.CacheMax != DefaultMirrorCacheMax {
		t.Errorf("mirror defaults: %+v", m)
	}
	c, err = load(t, minimal+"agent: {mirror: {upstream: 'https://registry.example'}}\n")
	if err != nil || !c.Agent.Mirror.On() || !c.Agent.Mirror.Explicit() {
		t.Errorf("an upstream turns the mirror on: %+v %v", c.Agent.Mirror, err)
	}
}

func TestMirrorFull(t *testing.T) {
	dir := t.TempDir()
	writeSecrets(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "hub-token"), []byte("dckr_pat_abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.yaml")
	os.WriteFile(p, []byte(minimal+`
agent:
  mirror:
    enabled: true
    port: 5001
    upstream: https://registry.example.com:8443/
    username: ci-bot
    password_file: hub-token
    cache_dir: /var/cache/tandem-mirror
    cache_max: 50GiB
`), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Agent.Mirror
	if !m.On() || !m.Explicit() || m.Port != 5001 || m.Upstream != "https://registry.example.com:8443/" ||
		m.Username != "ci-bot" || m.CachePath("/d") != "/var/cache/tandem-mirror" || m.CacheMax != 50<<10 {
		t.Errorf("mirror: %+v", m)
	}
	if string(c.MirrorPassword) != "dckr_pat_abc" {
		t.Error("password not read, or its newline kept")
	}
	if s := fmt.Sprintf("%v %+v %#v", c.MirrorPassword, c, c.MirrorPassword); strings.Contains(s, "dckr_pat_abc") {
		t.Error("the mirror password prints")
	}

	if c, err := load(t, minimal+"agent: {mirror: {upstream: 'http://10.0.0.9:5000', insecure_upstream: true}}\n"); err != nil || !c.Agent.Mirror.InsecureUpstream {
		t.Errorf("insecure_upstream allows http: %v", err)
	}

	off, err := load(t, minimal+"agent: {mirror: {enabled: false, password_file: nowhere, username: u}}\n")
	if err != nil {
		t.Fatalf("a disabled mirror's password file is not read: %v", err)
	}
	if off.Agent.Mirror.On() || !off.Agent.Mirror.Explicit() {
		t.Errorf("enabled: false: %+v", off.Agent.Mirror)
	}
}

func TestMirrorInvalid(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"agent: {mirror: {port: 70000}}", "agent.mirror.port 70000: want 1 to 65535"},
		{"agent: {mirror: {port: -1}}", "agent.mirror.port -1"},
		{"agent: {mirror: {upstream: ftp://hub}}", "want an http or https URL"},
		{"agent: {mirror: {upstream: registry.example}}", "want an http or https URL"},
		{"agent: {mirror: {upstream: 'http://registry.example'}}", "use https, or allow it explicitly (insecure_upstream)"},
		{"agent: {mirror: {enabled: true}}", "agent.mirror.upstream: required when the mirror is enabled"},
		{"agent: {mirror: {upstream: 'https://u:p@hub'}}", "not in the URL"},
		{"agent: {mirror: {upstream: 'https://hub/v2/x'}}", "no path or query"},
		{"agent: {mirror: {username: u}}", "give both username and password_file"},
		{"agent: {mirror: {password_file: p}}", "give both username and password_file"},
		{"agent: {mirror: {cache_dir: rel/dir}}", `cache_dir "rel/dir": want an absolute path`},
		{"agent: {mirror: {enabled: maybe}}", "cannot unmarshal"},
		{"agent: {mirror: {prot: 5000}}", "agent.mirror.prot: unknown key (did you mean agent.mirror.port?)"},
		{"agent: {mirror: {upstream: 'https://registry.example', username: u, password_file: missing}}", "agent.mirror.password_file"},
	} {
		_, err := load(t, minimal+tc.yaml+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
	dir := t.TempDir()
	writeSecrets(t, dir)
	os.WriteFile(filepath.Join(dir, "empty"), []byte("\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "two"), []byte("a\nb\n"), 0o600)
	for file, want := range map[string]string{"empty": "empty", "two": "more than one line"} {
		p := filepath.Join(dir, "config.yaml")
		os.WriteFile(p, []byte(minimal+"agent: {mirror: {upstream: 'https://registry.example', username: u, password_file: "+file+"}}\n"), 0o600)
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("password file %s: %v", file, err)
		}
	}
}
