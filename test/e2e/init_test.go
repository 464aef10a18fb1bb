package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// TestInitThenUp: `tandem init` makes the GitHub App through ghfake's
// manifest flow and writes the key, the secret and the config; `tandem up`
// starts with that config (adjusted only where this test's host differs:
// its ports, bridge, subnet and small VMs) and a job queued in the
// organisation runs in a VM. A plain HTTP client stands in for the
// browser here; cmd/tandem's TestInitInBrowser drives a real one.
func TestInitThenUp(t *testing.T) {
	s := newSystem(t, options{viaInit: true})
	if app := s.gh.App(); app.Slug != "tandem-e2e" || app.Owner != "acme" {
		t.Fatalf("ghfake's App: %+v", app)
	}
	s.install("acme", "app")
	_, ids, err := s.gh.QueueRun("acme/app", ghfake.JobSpec{Labels: []string{"tandem-1cpu-0.25gb"}, Script: "echo made by tandem init"})
	if err != nil {
		t.Fatal(err)
	}
	s.waitGitHubDone(ids, 3*time.Minute)
	s.waitTandemState(ids, time.Minute, "completed")
	if j, _ := s.gh.Job(ids[0]); j.Conclusion != "success" || !strings.Contains(j.Output, "made by tandem init") {
		t.Errorf("the job: conclusion %q, output %q", j.Conclusion, j.Output)
	}
}

var (
	initForm     = regexp.MustCompile(`<form method="post" action="([^"]*)"`)
	initManifest = regexp.MustCompile(`name="manifest" value="([^"]*)"`)
)

// initApp runs `tandem init` for the organisation acme against ghfake at
// ghAddr, goes through its page and GitHub's redirect as a browser would,
// waits for it to exit and returns the webhook secret it wrote into dir.
func initApp(t testing.TB, o options, dir, ghAddr string, tandemPort int) []byte {
	t.Helper()
	bin := o.bin
	if bin == "" {
		bin = binary(t)
	}
	cmd := exec.Command(bin, "init", "--org", "acme", "--name", "tandem-e2e",
		"--github-url", "http://"+ghAddr, "--api-url", "http://"+ghAddr+"/",
		"--webhook-url", fmt.Sprintf("http://127.0.0.1:%d/webhook", tandemPort),
		"--config-dir", dir, "--timeout", "2m")
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out strings.Builder
	)
	page := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			out.WriteString(line + "\n")
			mu.Unlock()
			if u := strings.TrimSpace(line); strings.HasPrefix(u, "http://127.0.0.1:") {
				select {
				case page <- u:
				default:
				}
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	output := func() string { mu.Lock(); defer mu.Unlock(); return out.String() + errBuf.String() }

	var pageURL string
	select {
	case pageURL = <-page:
	case err := <-exited:
		t.Fatalf("tandem init exited (%v) before it served its page:\n%s", err, output())
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("tandem init printed no page address:\n%s", output())
	}
	body := httpBody(t, pageURL)
	action, manifest := initForm.FindStringSubmatch(body), initManifest.FindStringSubmatch(body)
	if action == nil || manifest == nil {
		t.Fatalf("tandem init's page has no form:\n%s", body)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.PostForm(html.UnescapeString(action[1]), url.Values{"manifest": {html.UnescapeString(manifest[1])}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("ghfake's form answered %d", resp.StatusCode)
	}
	if done := httpBody(t, resp.Header.Get("Location")); !strings.Contains(done, "/installations/new") {
		t.Fatalf("tandem init's callback:\n%s", done)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("tandem init: %v\n%s", err, output())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("tandem init did not exit:\n%s", output())
	}
	t.Logf("tandem init:\n%s", output())
	secret, err := os.ReadFile(filepath.Join(dir, "webhook-secret"))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimRight(secret, "\n")
}

// httpBody GETs u and returns the body of its 200 answer.
func httpBody(t testing.TB, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d\n%s", resp.Request.URL, resp.StatusCode, b)
	}
	return string(b)
}

// adaptInitConfig is the config tandem init wrote, changed as an operator
// would change it for this test's host: each edit must find its line, so
// that a change to what tandem init writes is noticed here.
func adaptInitConfig(t testing.TB, path string, tandemPort int, o options, bridge, subnet string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, e := range []struct{ re, with string }{
		{`(?m)^listen: 127\.0\.0\.1:8080$`, fmt.Sprintf("listen: 127.0.0.1:%d", tandemPort)},
		{`(?m)^labels:$`, "labels:\n  default_vcpus: 1\n  default_memory: 256MiB"},
		{`(?m)^  idle_timeout: 10m$`, fmt.Sprintf("  idle_timeout: %s\n  config_timeout: 60s", o.idle)},
		{`(?m)^  max_job_duration: 6h\n`, "  max_job_duration: 5m\n" + o.runner},
		{`(?m)^agent:$`, fmt.Sprintf("agent:\n  host_id: e2e-host\n  emulate: [arm64]\n  bridge: %s\n  subnet: %s", bridge, subnet)},
		{`(?m)^  vcpus: 0 .*$`, fmt.Sprintf("  vcpus: %g", o.vcpus)},
		{`(?m)^  memory: 0 .*$`, fmt.Sprintf("  memory: %dMiB", o.memoryMiB)},
	} {
		re := regexp.MustCompile(e.re)
		if n := len(re.FindAllStringIndex(cfg, -1)); n != 1 {
			t.Fatalf("tandem init's config has %d lines matching %s, want 1:\n%s", n, e.re, b)
		}
		cfg = re.ReplaceAllLiteralString(cfg, e.with)
	}
	return cfg + "reconcile:\n  missed_webhooks: 2s\n  failed_deliveries: 2s\n  orphans: 5s\n  lost_after: 10s\n" + o.extra
}
