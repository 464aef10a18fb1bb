package mirror

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// startMirror starts a mirror of up on the test's side of the link.
func startMirror(t testing.TB, up *upstream, cacheDir string, mod func(*Config)) *Mirror {
	t.Helper()
	log, logBuf := testLogger()
	cfg := Config{Listen: up.hostAddr + ":0", Upstream: up.url, InsecureUpstream: true, CacheDir: cacheDir, Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Stop()
		if t.Failed() {
			t.Logf("mirror log:\n%s", logBuf)
		}
	})
	return m
}

// TestPullThrough pulls an image through the mirror three times and counts
// what reached the upstream each time.
func TestPullThrough(t *testing.T) {
	up := startUpstream(t)
	ctx := context.Background()
	im := busybox(t, 0)
	const repo = "library/tandem-busybox"
	if err := im.Push(ctx, nil, up.url, repo, "v1"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	m := startMirror(t, up, cache, nil)
	if !strings.HasPrefix(m.URL(), "http://"+up.hostAddr+":") {
		t.Errorf("URL %s", m.URL())
	}
	client := &http.Client{Timeout: 30 * time.Second}
	before := len(up.quiet())

	// First pull: the blobs come from the upstream.
	if _, err := pull(ctx, client, m.URL(), repo, "v1", im.Digest()); err != nil {
		t.Fatalf("first pull: %v", err)
	}
	waitCached(t, cache, repo, im)
	first := up.quiet()[before:]
	t.Logf("first pull, upstream saw %d requests: %v", len(first), first)
	for _, d := range append([]string{im.ConfigDigest()}, im.LayerDigests()...) {
		if !slices.Contains(first, "GET /v2/"+repo+"/blobs/"+d) {
			t.Errorf("first pull: the upstream never served blob %s", d)
		}
	}

	// Second pull by tag: no blob and no manifest body from the upstream;
	// distribution's proxy re-validates the tag (HEAD) every time.
	if _, err := pull(ctx, client, m.URL(), repo, "v1", im.Digest()); err != nil {
		t.Fatalf("second pull: %v", err)
	}
	second := up.quiet()[before+len(first):]
	t.Logf("second pull by tag, upstream saw %d requests: %v", len(second), second)
	if b := filter(second, isBlob); len(b) > 0 {
		t.Errorf("second pull fetched blobs upstream: %v", b)
	}
	if g := filter(second, func(r string) bool { return strings.HasPrefix(r, "GET /v2/"+repo+"/manifests/") }); len(g) > 0 {
		t.Errorf("second pull fetched the manifest upstream: %v", g)
	}

	// Third pull, by digest: nothing at all reaches the upstream.
	if _, err := pull(ctx, client, m.URL(), repo, im.Digest(), im.Digest()); err != nil {
		t.Fatalf("pull by digest: %v", err)
	}
	third := up.quiet()[before+len(first)+len(second):]
	if len(third) > 0 {
		t.Errorf("pull by digest reached the upstream: %v", third)
	}

	// Jobs can read the cache but not change it.
	for _, r := range []struct{ method, path string }{
		{http.MethodPost, "/v2/" + repo + "/blobs/uploads/"},
		{http.MethodDelete, "/v2/" + repo + "/manifests/" + im.Digest()},
		{http.MethodDelete, "/v2/" + repo + "/blobs/" + im.ConfigDigest()},
	} {
		req, _ := http.NewRequest(r.method, m.URL()+r.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s through the mirror: %s", r.method, r.path, resp.Status)
		}
	}
	if _, err := pull(ctx, client, m.URL(), repo, im.Digest(), im.Digest()); err != nil {
		t.Fatalf("pull after refused writes: %v", err)
	}
}

// TestCacheSurvivesRestart: what one mirror process cached, the next
// serves, with the upstream gone.
func TestCacheSurvivesRestart(t *testing.T) {
	up := startUpstream(t)
	ctx := context.Background()
	im := busybox(t, 0)
	const repo = "team/app"
	if err := im.Push(ctx, nil, up.url, repo, "stable"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	m := startMirror(t, up, cache, nil)
	client := &http.Client{Timeout: 30 * time.Second}
	if _, err := pull(ctx, client, m.URL(), repo, "stable", im.Digest()); err != nil {
		t.Fatal(err)
	}
	waitCached(t, cache, repo, im)
	m.Stop()
	m.Stop() // twice is fine

	// distribution 2.8 asks the upstream for its auth endpoint at start,
	// so the second mirror starts while the upstream is still there.
	m2 := startMirror(t, up, cache, nil)
	up.stop()
	if _, err := pull(ctx, client, m2.URL(), repo, im.Digest(), im.Digest()); err != nil {
		t.Errorf("pull by digest, upstream down: %v", err)
	}
	if _, err := pull(ctx, client, m2.URL(), repo, "stable", im.Digest()); err != nil {
		t.Errorf("pull by tag, upstream down (the proxy falls back to the tag it saw): %v", err)
	}
	if _, err := pull(ctx, client, m2.URL(), "team/other", "stable", im.Digest()); err == nil {
		t.Error("pulled an image never cached with the upstream down")
	}
	m2.Stop()

	// With the upstream down, a mirror cannot start, and says why.
	log, _ := testLogger()
	_, err := Start(ctx, Config{Listen: up.hostAddr + ":0", Upstream: up.url, InsecureUpstream: true, CacheDir: cache, Logger: log})
	if err == nil || !strings.Contains(err.Error(), "exited at start") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("start with the upstream down: %v", err)
	} else {
		t.Logf("start with the upstream down: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cache, "config.yml")); err != nil {
		t.Error(err)
	}
}

func TestRenderConfig(t *testing.T) {
	const pw = "p: 'a\"#{}\n\tb"
	b, err := renderConfig("172.30.0.1:5000", "/var/cache/m", "https://registry.example", "bot", pw, "abc")
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	get := func(path ...string) any {
		var v any = c
		for _, p := range path {
			m, _ := v.(map[string]any)
			v = m[p]
		}
		return v
	}
	for _, f := range []struct {
		path []string
		want any
	}{
		{[]string{"version"}, "0.1"},
		{[]string{"log", "level"}, "info"},
		{[]string{"storage", "filesystem", "rootdirectory"}, "/var/cache/m"},
		{[]string{"storage", "delete", "enabled"}, true},
		{[]string{"http", "addr"}, "172.30.0.1:5000"},
		{[]string{"health", "storagedriver", "enabled"}, true},
		{[]string{"proxy", "remoteurl"}, "https://registry.example"},
		{[]string{"proxy", "username"}, "bot"},
		{[]string{"proxy", "password"}, pw},
	} {
		if got := get(f.path...); got != f.want {
			t.Errorf("%s = %#v, want %#v", strings.Join(f.path, "."), got, f.want)
		}
	}
	if h, _ := get("http", "headers", instanceHeader).([]any); len(h) != 1 || h[0] != "abc" {
		t.Errorf("instance header %v", h)
	}
	plain, _ := renderConfig("127.0.0.1:1", "/x", "", "", "", "")
	if strings.Contains(string(plain), "proxy") {
		t.Errorf("a plain registry's config has a proxy section:\n%s", plain)
	}
}
