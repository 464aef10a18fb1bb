package doctor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/github"
)

// remoteTimeout bounds each network check.
const remoteTimeout = 10 * time.Second

// checkControlPlane reaches the control plane: an agent's enrolled
// addresses, checking the certificate pin it enrolled with; else the
// --server addresses; else the config's own listener (tandem up).
func checkControlPlane(ctx context.Context, e *Env) Result {
	if e.CredentialsFile != "" {
		if creds, err := agentapi.LoadCredentials(e.CredentialsFile); err == nil {
			return checkPinned(ctx, creds)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fail(err.Error(), "enrol this host again: tandem agent --server https://HOST:PORT --enroll-token TOKEN (tandem enroll prints one)")
		}
	}
	if len(e.Servers) > 0 {
		var seen []string
		for _, s := range e.Servers {
			addr, err := agentapi.ParseAddr(s)
			if err != nil {
				return fail(err.Error(), "give --server as https://HOST:PORT, the control plane's agents.listen")
			}
			fp, err := dialPin(ctx, addr)
			if err != nil {
				return fail(fmt.Sprintf("%s: %v", addr, err), "start the control plane (tandem server, agents.listen set), or check the address and the firewall between")
			}
			seen = append(seen, fmt.Sprintf("%s (certificate %s…)", addr, fp[:16]))
		}
		return warn("answers: "+strings.Join(seen, ", ")+"; this host is not enrolled yet",
			"tandem agent --server ADDR --enroll-token TOKEN (tandem enroll, on the control plane, prints one and the pin it carries)")
	}
	if e.Config == nil {
		return Result{}
	}
	u := "http://" + dialable(e.Config.Listen) + "/healthz"
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return warn(fmt.Sprintf("nothing answers at %s (listen): the control plane is not running", e.Config.Listen),
			"start it: tandem up (or tandem server); if it runs, check listen in the config")
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Sprintf("%s answers %s: its store does not", u, resp.Status), "see the control plane's log")
	}
	return ok(u + " answers 200")
}

// checkPinned dials each enrolled address and compares its certificate with
// the pin the host enrolled with.
func checkPinned(ctx context.Context, c agentapi.Credentials) Result {
	var good []string
	for _, addr := range c.Addrs() {
		fp, err := dialPin(ctx, addr)
		if err != nil {
			return fail(fmt.Sprintf("%s: %v", addr, err), "start the control plane, or check the address and the firewall between (tandem agent --server updates the addresses)")
		}
		if fp != c.Pin {
			return fail(fmt.Sprintf("%s presents certificate %s…, not the one this host enrolled with (%s…)", addr, fp[:16], c.Pin[:16]),
				"if the control plane's certificate was replaced on purpose, enrol again (tandem enroll prints a token with the new pin); if not, something else answers at that address")
		}
		good = append(good, addr)
	}
	return ok(strings.Join(good, ", ") + " answer(s) with the enrolled certificate")
}

// dialPin opens a TLS connection to addr (https://HOST:PORT) and returns
// the fingerprint of the certificate it presents, verified by pin later,
// as the agent does.
func dialPin(ctx context.Context, addr string) (string, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: remoteTimeout}, Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} // #nosec: the pin is compared below
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", errors.New("no certificate")
	}
	return agentapi.Fingerprint(certs[0].Raw), nil
}

// dialable turns a listen address into one to dial: an unspecified host is
// this host.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// checkGitHub reaches github.api_url.
func checkGitHub(ctx context.Context, e *Env) Result {
	if e.Config == nil {
		return Result{}
	}
	api := e.Config.GitHub.APIURL
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api, nil)
	if err != nil {
		return fail(fmt.Sprintf("github.api_url %s: %v", api, err), "fix github.api_url")
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fail(fmt.Sprintf("%s: %v", api, err),
			"check DNS, the proxy (HTTPS_PROXY) and the firewall between this host and GitHub, and github.api_url (GitHub Enterprise: https://HOST/api/v3/)")
	}
	resp.Body.Close()
	return ok(fmt.Sprintf("%s answers (%s) in %s", api, resp.Status, time.Since(start).Round(time.Millisecond)))
}

// client is the GitHub client of the config's App, made once.
func (e *Env) client() (*github.Client, error) {
	if e.gh == nil && e.ghErr == nil {
		c := e.Config
		e.gh, e.ghErr = github.New(github.Config{BaseURL: c.GitHub.APIURL, AppID: c.GitHub.AppID, PrivateKey: c.AppKey,
			Logger: e.Logger, MaxRetries: -1, RequestTimeout: remoteTimeout})
	}
	return e.gh, e.ghErr
}

// requiredPermissions are what the App needs for this config: permission →
// level, and why.
func (e *Env) requiredPermissions() map[string][2]string {
	need := map[string][2]string{
		"actions":  {"read", "to read queued runs and jobs"},
		"metadata": {"read", "to read repositories"},
	}
	if e.Config.Runner.Scope == "org" {
		need["organization_self_hosted_runners"] = [2]string{"write", "to register organisation runners (runner.scope: org)"}
	} else {
		need["administration"] = [2]string{"write", "to register repository runners (runner.scope: repo)"}
	}
	if e.Config.Parity.CommitStatus {
		need["statuses"] = [2]string{"write", "to set tandem/parity commit statuses (parity.commit_status)"}
	}
	return need
}

var levels = map[string]int{"read": 1, "write": 2, "admin": 3}

// checkGitHubApp asks GitHub for the App (GET /app, with its JWT): that the
// key and id are right, and that its permissions and events are what
// Tandem needs.
func checkGitHubApp(ctx context.Context, e *Env) Result {
	if e.Config == nil {
		return Result{}
	}
	gh, err := e.client()
	if err != nil {
		return fail(err.Error(), "check github.app_id and github.private_key_file")
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	app, err := gh.GetApp(ctx)
	if err != nil {
		if errors.Is(err, github.ErrUnauthorized) {
			return fail("GitHub refuses the App's JWT: "+err.Error(),
				"check github.app_id (the App's ID, on its settings page) and that github.private_key_file is one of its keys; a clock far off also breaks JWTs")
		}
		return fail("GET /app: "+err.Error(), "see the github check")
	}
	var missing []string
	need := e.requiredPermissions()
	for _, p := range slices.Sorted(maps.Keys(need)) {
		if levels[app.Permissions[p]] < levels[need[p][0]] {
			have := app.Permissions[p]
			if have == "" {
				have = "none"
			}
			missing = append(missing, fmt.Sprintf("%s: %s (has %s) %s", p, need[p][0], have, need[p][1]))
		}
	}
	if !slices.Contains(app.Events, "workflow_job") {
		missing = append(missing, "the workflow_job event (it subscribes to "+strings.Join(app.Events, ", ")+")")
	}
	name := fmt.Sprintf("App %q (id %d, %d installation(s))", app.Slug, app.ID, app.Installations)
	if len(missing) > 0 {
		return fail(name+" lacks "+strings.Join(missing, "; "),
			"GitHub: Settings → Developer settings → GitHub Apps → "+app.Slug+" → Permissions & events; then each installation must accept the new permissions")
	}
	perms := make([]string, 0, len(need))
	for _, p := range slices.Sorted(maps.Keys(need)) {
		perms = append(perms, p+": "+app.Permissions[p])
	}
	return ok(name + ": " + strings.Join(perms, ", ") + "; events include workflow_job")
}

// checkDeliveries lists the App webhook's last deliveries and their status
// codes (GET /app/hook/deliveries).
func checkDeliveries(ctx context.Context, e *Env) Result {
	if e.Config == nil {
		return Result{}
	}
	gh, err := e.client()
	if err != nil {
		return fail(err.Error(), "see the github_app check")
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	ds, err := gh.ListDeliveries(ctx, time.Now().Add(-24*time.Hour))
	if err != nil {
		return fail("GET /app/hook/deliveries: "+err.Error(), "see the github_app check")
	}
	if len(ds) == 0 {
		return ok("no webhook deliveries in the last 24 h")
	}
	var last []string
	failed := 0
	for i, d := range ds {
		good := d.StatusCode >= 200 && d.StatusCode < 300
		if !good {
			failed++
		}
		if i < 5 {
			ev := d.Event
			if d.Action != "" {
				ev += "." + d.Action
			}
			last = append(last, fmt.Sprintf("%s %s → %d", d.DeliveredAt.UTC().Format(time.RFC3339), ev, d.StatusCode))
		}
	}
	detail := fmt.Sprintf("%d deliveries in 24 h, %d failed; the last: %s", len(ds), failed, strings.Join(last, "; "))
	newest := ds[0].StatusCode
	if newest < 200 || newest >= 300 {
		return warn(detail, "the App's webhook URL must reach this control plane's /webhook (listen, or a proxy to it), "+
			"and its secret must be github.webhook_secret_file's; 401: the secrets differ; 0 or 5xx: nothing answered. "+
			"Missed jobs are found by polling meanwhile, later")
	}
	return ok(detail)
}
