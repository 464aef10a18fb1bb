package doctor

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// appEnv is an Env whose config's App is served by a ghfake with these
// permissions and events, its webhooks answered with hookStatus.
func appEnv(t *testing.T, perms map[string]string, events []string, hookStatus int) (*Env, *ghfake.Server) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(hookStatus) }))
	t.Cleanup(hook.Close)
	gh := ghfake.New(ghfake.Config{AppID: 7, AppPublicKey: &key.PublicKey, WebhookURL: hook.URL,
		AppPermissions: perms, AppEvents: events})
	t.Cleanup(gh.Close)
	api := httptest.NewServer(gh.Handler())
	t.Cleanup(api.Close)
	cfg, err := config.Parse([]byte("github: {api_url: " + api.URL + "/, app_id: 7}\nlisten: 127.0.0.1:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.AppKey = key
	return &Env{DataDir: t.TempDir(), Config: cfg}, gh
}

func run(t *testing.T, e *Env, only ...string) map[string]Result {
	t.Helper()
	rs, err := Run(context.Background(), e, only, false)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Result{}
	for _, r := range rs {
		out[r.Check] = r
	}
	return out
}

func TestGitHubChecks(t *testing.T) {
	e, gh := appEnv(t, nil, nil, http.StatusOK) // ghfake's defaults: what Tandem needs
	gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})
	gh.Flush()
	got := run(t, e, "github", "github_app", "webhook_deliveries", "control_plane")
	if r := got["github"]; r.Status != OK {
		t.Errorf("github: %+v", r)
	}
	if r := got["github_app"]; r.Status != OK || !strings.Contains(r.Detail, "administration: write") || !strings.Contains(r.Detail, "1 installation") {
		t.Errorf("github_app: %+v", r)
	}
	if r := got["webhook_deliveries"]; r.Status != OK || !strings.Contains(r.Detail, "workflow_job.queued → 200") {
		t.Errorf("webhook_deliveries: %+v", r)
	}
	// Nothing listens at 127.0.0.1:1: tandem up is not running.
	if r := got["control_plane"]; r.Status != Warn || !strings.Contains(r.Fix, "tandem up") {
		t.Errorf("control_plane: %+v", r)
	}
}

func TestGitHubAppLacks(t *testing.T) {
	e, gh := appEnv(t, map[string]string{"actions": "read", "metadata": "read", "administration": "read"}, []string{"push"}, http.StatusUnauthorized)
	gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem"}})
	gh.Flush()
	got := run(t, e, "github_app", "webhook_deliveries")
	r := got["github_app"]
	if r.Status != Fail || !strings.Contains(r.Detail, "administration: write (has read)") || !strings.Contains(r.Detail, "the workflow_job event") ||
		!strings.Contains(r.Fix, "Permissions & events") {
		t.Errorf("github_app: %+v", r)
	}
	if r := got["webhook_deliveries"]; r.Status != Warn || !strings.Contains(r.Detail, "→ 401") || !strings.Contains(r.Fix, "401: the secrets differ") {
		t.Errorf("webhook_deliveries: %+v", r)
	}
	// An App key GitHub does not know.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	e.Config.AppKey, e.gh = other, nil
	if r := run(t, e, "github_app")["github_app"]; r.Status != Fail || !strings.Contains(r.Fix, "github.app_id") {
		t.Errorf("wrong key: %+v", r)
	}
}

func TestNoConfigNoRemoteChecks(t *testing.T) {
	got := run(t, &Env{DataDir: t.TempDir()}, "github", "github_app", "webhook_deliveries", "control_plane")
	if len(got) != 0 {
		t.Errorf("without a config: %+v", got)
	}
	if _, err := Run(context.Background(), &Env{}, []string{"nope"}, false); err == nil || !strings.Contains(err.Error(), "kvm") {
		t.Errorf("unknown check: %v", err)
	}
}

func TestReport(t *testing.T) {
	rs := []Result{{Check: "kvm", Status: Warn, Detail: "tcg", Fix: "get kvm"}, {Check: "tun", Status: OK, Detail: "fine"}}
	var b bytes.Buffer
	WriteText(&b, rs)
	want := "! kvm  tcg\n       fix: get kvm\n✓ tun  fine\n\nJobs can run here; 1 warning(s).\n"
	if b.String() != want {
		t.Errorf("text:\n%q\nwant\n%q", b.String(), want)
	}
	if Failed(rs) || !Failed(append(rs, Result{Status: Fail})) {
		t.Error("Failed")
	}
	b.Reset()
	if err := WriteJSON(&b, nil); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("empty JSON: %q", b.String())
	}
	b.Reset()
	WriteJSON(&b, rs[1:])
	var back []map[string]string
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back[0]["fix"] != "" || len(back[0]) != 4 {
		t.Errorf("JSON: %s", b.String())
	}
}

// TestControlPlanePin: an agent's enrolled control plane answers with the
// certificate it enrolled with, or the check fails naming both.
func TestControlPlanePin(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	pin := agentapi.Fingerprint(srv.Certificate().Raw)
	addr := "https://" + srv.Listener.Addr().String()
	creds := filepath.Join(t.TempDir(), "credentials.json")
	save := func(pin string) {
		c := agentapi.Credentials{Server: addr, Pin: pin, HostID: "h1", Credential: "cred-0123456789abcdef"}
		if err := c.Save(creds); err != nil {
			t.Fatal(err)
		}
	}
	save(pin)
	e := &Env{DataDir: t.TempDir(), CredentialsFile: creds}
	if r := run(t, e, "control_plane")["control_plane"]; r.Status != OK || !strings.Contains(r.Detail, addr) {
		t.Errorf("enrolled pin: %+v", r)
	}
	save(strings.Repeat("ab", 32))
	if r := run(t, e, "control_plane")["control_plane"]; r.Status != Fail || !strings.Contains(r.Detail, "not the one this host enrolled with (abababab") ||
		!strings.Contains(r.Fix, "enrol again") {
		t.Errorf("another certificate: %+v", r)
	}
	// Not enrolled: --server is dialled, and enrolment is the fix.
	e = &Env{DataDir: t.TempDir(), CredentialsFile: filepath.Join(t.TempDir(), "none.json"), Servers: []string{addr}}
	if r := run(t, e, "control_plane")["control_plane"]; r.Status != Warn || !strings.Contains(r.Detail, pin[:16]) || !strings.Contains(r.Fix, "--enroll-token") {
		t.Errorf("not enrolled: %+v", r)
	}
	srv.Close()
	if r := run(t, e, "control_plane")["control_plane"]; r.Status != Fail {
		t.Errorf("nothing answers: %+v", r)
	}
}
