package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

const acmeReader = "acme-maintainers-read-token-0123"

// callBody is rig.call with a JSON body, returning the answer's text too.
func (r *rig) callBody(method, path, token string, body any) (int, string) {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, r.web.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAPIScopes calls every endpoint without a token, with a read token
// of one organisation, with a read token of all, and with an admin token.
func TestAPIScopes(t *testing.T) {
	ps, err := egress.Config{Default: egress.Rule{Mode: "audit"}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	logs := t.TempDir()
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: acmeReader, Orgs: []string{"ACME"}})
		c.Egress, c.LogDir = ps, logs
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	r.gh.AddInstallation("globex", ghfake.AccountOrganization, "globex/web")
	acme := r.queue("acme/app", "tandem", "echo acme")
	globex := r.queue("globex/web", "tandem", "echo globex")
	r.waitStates([]int64{acme, globex}, 30*time.Second, store.JobCompleted)
	r.waitFor("runners to end", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	id := func(n int64) string { return strconv.FormatInt(n, 10) }
	for _, n := range []int64{acme, globex} { // (in-process hosts ship no logs)
		j, _ := r.job(n)
		os.WriteFile(filepath.Join(logs, j.RunnerName+".log"), []byte("output of "+j.Repo+"\n"), 0o600)
	}

	reads := []string{"/api/v1/jobs", "/api/v1/jobs/" + id(acme), "/api/v1/jobs/" + id(acme) + "/log",
		"/api/v1/jobs/" + id(acme) + "/egress", "/api/v1/egress/suggest?repo=acme/app", "/api/v1/hosts",
		"/api/v1/runners", "/api/v1/reconcilers", "/api/v1/images", "/api/v1/parity", "/api/v1/parity/report",
		"/api/v1/parity/check?repo=acme/app&sha=" + strings.Repeat("a", 40)}
	for _, p := range reads {
		if code, body := r.callBody("GET", p, "", nil); code != 401 || !strings.Contains(body, "token is required") {
			t.Errorf("GET %s without a token: %d %s", p, code, body)
		}
		if code, _ := r.callBody("GET", p, "not-a-token-at-all-0123456789", nil); code != 401 {
			t.Errorf("GET %s with a wrong token: %d", p, code)
		}
		for _, tok := range []string{rigReadToken, rigAdminToken, acmeReader} {
			if code, body := r.callBody("GET", p, tok, nil); code != 200 {
				t.Errorf("GET %s with %s: %d %s", p, tok[:8], code, body)
			}
		}
	}
	// Another org's job does not exist for acme's maintainers.
	for _, p := range []string{"/api/v1/jobs/" + id(globex), "/api/v1/jobs/" + id(globex) + "/log", "/api/v1/jobs/" + id(globex) + "/egress"} {
		if code, body := r.callBody("GET", p, acmeReader, nil); code != 404 {
			t.Errorf("GET %s with acme's token: %d %s", p, code, body)
		}
		if code, _ := r.callBody("GET", p, rigReadToken, nil); code != 200 {
			t.Errorf("GET %s with a read token: %d", p, code)
		}
	}
	if code, _ := r.callBody("GET", "/api/v1/egress/suggest?repo=globex/web", acmeReader, nil); code != 403 {
		t.Errorf("suggest for globex with acme's token: %d", code)
	}
	var list struct{ Jobs []controlplane.JobView }
	_, body := r.callBody("GET", "/api/v1/jobs", acmeReader, nil)
	json.Unmarshal([]byte(body), &list)
	if len(list.Jobs) != 1 || list.Jobs[0].ID != acme {
		t.Errorf("acme's token lists %+v", list.Jobs)
	}
	_, body = r.callBody("GET", "/api/v1/jobs?org=globex", acmeReader, nil)
	if json.Unmarshal([]byte(body), &list); len(list.Jobs) != 0 {
		t.Errorf("acme's token asking for globex's jobs got %d", len(list.Jobs))
	}
	_, body = r.callBody("GET", "/api/v1/jobs?org=GLOBEX", rigReadToken, nil) // names compare without case
	if json.Unmarshal([]byte(body), &list); len(list.Jobs) != 1 || list.Jobs[0].ID != globex {
		t.Errorf("a read token asking for GLOBEX's jobs: %+v", list.Jobs)
	}
	var runners struct{ Runners []controlplane.RunnerView }
	_, body = r.callBody("GET", "/api/v1/runners", acmeReader, nil)
	json.Unmarshal([]byte(body), &runners)
	for _, x := range runners.Runners {
		if !strings.EqualFold(x.Org, "acme") {
			t.Errorf("acme's token sees runner %s of %s", x.Name, x.Org)
		}
	}
	if len(runners.Runners) == 0 {
		t.Error("acme's token sees none of acme's runners")
	}

	// The job's egress: the policy its VM ran under and what it recorded;
	// the suggestion from it.
	var ev controlplane.EgressView
	_, body = r.callBody("GET", "/api/v1/jobs/"+id(acme)+"/egress", acmeReader, nil)
	if json.Unmarshal([]byte(body), &ev); ev.Policy.Mode != egress.Audit || ev.Record == nil || len(ev.Record.Flows) != 1 {
		t.Errorf("egress of job %d: %s", acme, body)
	}
	var sv controlplane.SuggestView
	_, body = r.callBody("GET", "/api/v1/egress/suggest?repo=acme/app", acmeReader, nil)
	if json.Unmarshal([]byte(body), &sv); sv.Recorded != 1 || len(sv.Suggestions) != 1 || sv.Suggestions[0].Entry != "registry.example.org" {
		t.Errorf("suggestion: %s", body)
	}

	// Writes: admin only.
	for _, tok := range []string{"", rigReadToken, acmeReader} {
		want := 403
		if tok == "" {
			want = 401
		}
		if code, _ := r.callBody("POST", "/api/v1/hosts/h1/drain", tok, nil); code != want {
			t.Errorf("drain with %q: %d, want %d", tok, code, want)
		}
		if code, _ := r.callBody("POST", "/api/v1/enroll-tokens", tok, nil); code != want {
			t.Errorf("enroll-tokens with %q: %d, want %d", tok, code, want)
		}
	}
	if h, _ := r.hostState("h1"); h != "online" {
		t.Errorf("a refused drain changed the host: %s", h)
	}
	if code, _ := r.callBody("POST", "/api/v1/hosts/h1/drain", rigAdminToken, nil); code != 200 {
		t.Errorf("drain with the admin token: %d", code)
	}
}

func (r *rig) hostState(id string) (string, bool) {
	var out struct{ Hosts []controlplane.HostView }
	r.call("GET", "/api/v1/hosts", rigReadToken, &out)
	for _, h := range out.Hosts {
		if h.ID == id {
			return h.State, true
		}
	}
	return "", false
}

// TestHealthzSaysWhyOnlyToTokenHolders: a failing store is "unavailable"
// to anyone, and the error's text only to a caller with a token.
func TestHealthzSaysWhyOnlyToTokenHolders(t *testing.T) {
	r := newRig(t, rigOptions{})
	if code, body := r.callBody("GET", "/healthz", "", nil); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("healthz: %d %s", code, body)
	}
	r.st.Close()
	code, body := r.callBody("GET", "/healthz", "", nil)
	if code != 503 || strings.Contains(body, "store") || strings.Contains(body, "sql") || !strings.Contains(body, "unavailable") {
		t.Errorf("healthz without a token, store down: %d %s", code, body)
	}
	if code, body := r.callBody("GET", "/healthz", rigReadToken, nil); code != 503 || !strings.Contains(body, "store:") {
		t.Errorf("healthz with a token, store down: %d %s", code, body)
	}
}

// TestEnrolmentCannotTakeOver: a token for a new host cannot enrol an
// enrolled one; a token for a host enrols it only when it is not
// connected; a revoked host comes back only with a re-admitting token.
func TestEnrolmentCannotTakeOver(t *testing.T) {
	f := newFleet(t)
	a1 := f.join("a1")
	tokenFor := func(host string, readmit bool) string {
		t.Helper()
		code, body := f.callBody("POST", "/api/v1/enroll-tokens", rigAdminToken, map[string]any{"host": host, "readmit": readmit})
		var out struct{ Token string }
		if json.Unmarshal([]byte(body), &out); code != 201 || out.Token == "" {
			t.Fatalf("enroll-tokens for %s: %d %s", host, code, body)
		}
		return out.Token
	}
	enrol := func(tok, host string) error {
		_, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, tok, host)
		return err
	}
	if err := enrol(f.enrollToken(), "a1"); err == nil || !strings.Contains(err.Error(), "enrolled already") {
		t.Errorf("a new host's token enrolling a1: %v", err)
	}
	if err := enrol(tokenFor("a1", false), "a1"); err == nil || !strings.Contains(err.Error(), "connected") {
		t.Errorf("a1's token while a1 is connected: %v", err)
	}
	if err := enrol(tokenFor("a2", false), "a3"); err == nil || !strings.Contains(err.Error(), "another host") {
		t.Errorf("a2's token enrolling a3: %v", err)
	}
	// A refused enrolment spent nothing: the same token still enrols a new host.
	tok := f.enrollToken()
	enrol(tok, "a1")
	if err := enrol(tok, "b1"); err != nil {
		t.Errorf("a token refused for a1, then for a new host: %v", err)
	}

	a1.stop()
	f.waitHost("a1", "offline", false)
	if err := enrol(tokenFor("a1", false), "a1"); err != nil {
		t.Errorf("a1's own token, a1 not connected: %v", err)
	}
	if code, _ := f.callBody("POST", "/api/v1/hosts/a1/revoke", rigAdminToken, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if err := enrol(tokenFor("a1", false), "a1"); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a revoked host, with its own token: %v", err)
	}
	if err := enrol(f.enrollToken(), "a1"); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a revoked host, with a new host's token: %v", err)
	}
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, tokenFor("a1", true), "a1")
	if err != nil {
		t.Fatalf("re-admitting a1: %v", err)
	}
	f.start(creds)
	if code, _ := f.callBody("POST", "/api/v1/enroll-tokens", rigAdminToken, map[string]any{"readmit": true}); code != 400 {
		t.Errorf("a re-admitting token for no host: %d", code)
	}
}
