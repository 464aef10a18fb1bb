package main

// The operator commands: thin clients of the control plane's JSON API
// (internal/controlplane, api.go and ops.go).
//
// Every command takes the same connection flags:
//
//	--server URL        $TANDEM_SERVER, else http://127.0.0.1:8080
//	--pin SHA256HEX     for https: $TANDEM_PIN, else the fingerprint of
//	                    <data-dir>/tls/cert.pem when present, else the
//	                    system's CAs verify the server
//	--token T           $TANDEM_TOKEN
//	--token-file FILE   else <data-dir>/api-admin-token when readable
//	--json              the server's JSON instead of a table
//
// The token travels only in the Authorization header; it is never printed
// and never part of a URL or an error message.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
)

const (
	defaultServer = "http://127.0.0.1:8080"
	// apiTimeout bounds one JSON call; a log download is bounded only
	// until its first byte (it may be long).
	apiTimeout  = 30 * time.Second
	maxJSONBody = 64 << 20
)

// errUnreachable: the control plane did not answer at all.
var errUnreachable = errors.New("cannot reach the control plane")

// apiError is a non-2xx answer; its text is the server's message.
type apiError struct {
	Status int
	Msg    string
}

func (e *apiError) Error() string { return e.Msg }

// apiOptions are the connection flags every operator command takes.
type apiOptions struct {
	server, pin, token, tokenFile string
	json                          bool
}

// call makes an API call, decoding the answer into v; with --json it
// prints the answer as it came instead and says so (printed).
func (o *apiOptions) call(cmd *cobra.Command, c *apiClient, method, path string, q url.Values, body, v any) (printed bool, err error) {
	raw, err := c.callJSON(cmd.Context(), method, path, q, body, v)
	if err != nil || !o.json {
		return false, err
	}
	return true, printJSON(cmd.OutOrStdout(), raw)
}

// register adds the flags to cmd; jsonOut adds --json.
func (o *apiOptions) register(cmd *cobra.Command, jsonOut bool) {
	f := cmd.Flags()
	f.StringVar(&o.server, "server", orText(os.Getenv("TANDEM_SERVER"), defaultServer), "control plane URL ($TANDEM_SERVER)")
	f.StringVar(&o.pin, "pin", os.Getenv("TANDEM_PIN"),
		"SHA-256 of an https server's certificate ($TANDEM_PIN; default: that of <data-dir>/tls/cert.pem)")
	// No default from $TANDEM_TOKEN here: --help would print it.
	f.StringVar(&o.token, "token", "", "API token (default $TANDEM_TOKEN; prefer it or --token-file: flags show in ps)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (default <data-dir>/api-admin-token when readable)")
	if jsonOut {
		f.BoolVar(&o.json, "json", false, "print the server's JSON")
	}
}

// apiClient talks to one control plane's JSON API.
type apiClient struct {
	server string // as given, for messages
	base   *url.URL
	token  string
	hc     *http.Client
}

// client resolves the flags into a client. cmd tells which flags were set.
func (o *apiOptions) client(cmd *cobra.Command, g *globals) (*apiClient, error) {
	u, err := url.Parse(strings.TrimRight(o.server, "/"))
	switch {
	case err == nil && u.User != nil:
		return nil, errors.New("--server: no credentials in the URL: use --token or --token-file")
	case err == nil && (u.RawQuery != "" || u.Fragment != "" || u.ForceQuery):
		return nil, errors.New("--server: no query or fragment in the URL")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("--server %q: want http://HOST:PORT or https://HOST:PORT", o.server)
	}
	token, err := o.resolveToken(cmd, g)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = apiTimeout
	if u.Scheme == "https" {
		pin, err := o.resolvePin(g)
		if err != nil {
			return nil, err
		}
		if pin != "" {
			tr.TLSClientConfig = agentapi.PinnedTLS(pin)
		}
	} else if token != "" && !isLoopback(u.Hostname()) {
		fmt.Fprintf(cmd.ErrOrStderr(), "tandem: warning: the API token goes unencrypted to %s: prefer a loopback listen address, or https (agents.listen with serve_api: true)\n", u.Host)
	}
	return &apiClient{server: u.String(), base: u, token: token, hc: &http.Client{
		Transport: tr,
		// A redirect would carry the token elsewhere; the API never sends one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// resolveToken picks the token: --token, then --token-file, then
// $TANDEM_TOKEN, then <data-dir>/api-admin-token if it can be read.
func (o *apiOptions) resolveToken(cmd *cobra.Command, g *globals) (string, error) {
	tokenSet, fileSet := cmd.Flags().Changed("token"), cmd.Flags().Changed("token-file")
	var tok string
	switch {
	case tokenSet && fileSet:
		return "", errors.New("give --token or --token-file, not both")
	case tokenSet:
		tok = o.token
	case fileSet:
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		if tok = strings.TrimSpace(string(b)); tok == "" {
			return "", fmt.Errorf("--token-file %s: empty", o.tokenFile)
		}
	case os.Getenv("TANDEM_TOKEN") != "":
		tok = os.Getenv("TANDEM_TOKEN")
	default:
		// The one-machine case: `tandem up` wrote it. Unreadable (not
		// root, say) means no token; the server then says what it wants.
		if b, err := os.ReadFile(filepath.Join(g.dataDir, "api-admin-token")); err == nil {
			tok = strings.TrimSpace(string(b))
		}
	}
	tok = strings.TrimSpace(tok)
	if strings.ContainsFunc(tok, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return "", errors.New("the API token contains spaces or control characters")
	}
	return tok, nil
}

// resolvePin returns the certificate pin for an https server: --pin, or
// $TANDEM_PIN, or the fingerprint of <data-dir>/tls/cert.pem; "" when none
// (the system's CAs then verify the server).
func (o *apiOptions) resolvePin(g *globals) (string, error) {
	if o.pin != "" {
		pin := strings.ToLower(strings.TrimSpace(o.pin))
		if len(pin) != 64 || strings.Trim(pin, "0123456789abcdef") != "" {
			return "", errors.New("--pin: want the 64 hex digits of the certificate's SHA-256")
		}
		return pin, nil
	}
	path := filepath.Join(g.dataDir, "tls", "cert.pem")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("certificate pin: %w", err)
	}
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return "", fmt.Errorf("certificate pin: %s holds no certificate", path)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "", fmt.Errorf("certificate pin: %s: %w", path, err)
		}
		return agentapi.Fingerprint(blk.Bytes), nil
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// do sends a request and returns a 2xx response; any other answer becomes
// an *apiError, and no answer an errUnreachable.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	// path is already escaped; base has no query (client checks).
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tandem/"+version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, c.statusError(resp)
}

func (c *apiClient) unreachable(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its text repeats the URL
	}
	var ua x509.UnknownAuthorityError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w at %s: connection refused (is it running? --server or $TANDEM_SERVER names it)",
			errUnreachable, c.server)
	case errors.As(err, &ua):
		return fmt.Errorf("%w at %s: %w (give --pin, the sha256 `tandem server` prints, or $TANDEM_PIN)",
			errUnreachable, c.server, err)
	}
	return fmt.Errorf("%w at %s: %w", errUnreachable, c.server, err)
}

func (c *apiClient) statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb struct {
		Error string `json:"error"`
	}
	msg := resp.Status
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	} else if t := strings.TrimSpace(string(b)); t != "" {
		msg += ": " + cut(t, 200)
	}
	if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
		msg += " (no API token: give --token, $TANDEM_TOKEN or --token-file)"
	}
	return &apiError{Status: resp.StatusCode, Msg: clean(msg)}
}

// callJSON sends in (when not nil) as JSON, decodes the answer into out
// and returns it raw too (for --json).
func (c *apiClient) callJSON(ctx context.Context, method, path string, query url.Values, in, out any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	resp, err := c.do(ctx, method, path, query, in)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody+1))
	if err != nil {
		return nil, c.unreachable(err)
	}
	if len(b) > maxJSONBody {
		return nil, fmt.Errorf("%s: answer over %d MiB", path, maxJSONBody>>20)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("%s: bad answer from the control plane: %w", path, err)
	}
	return b, nil
}

// printJSON prints a server's JSON answer indented.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// opsCommands returns the operator commands: hosts, jobs, job, logs,
// drain, cordon, uncordon, revoke, enroll.
func opsCommands(g *globals) []*cobra.Command {
	cmds := []*cobra.Command{hostsCmd(g), jobsCmd(g), jobCmd(g), logsCmd(g), imagesCmd(g), egressCmd(g)}
	for _, a := range hostActions {
		cmds = append(cmds, hostActionCmd(g, a))
	}
	return append(cmds, enrollCmd(g))
}

// opsRun adapts an operator command's body: every failure exits 1 with
// its message (the server's own, for an API error).
func opsRun(g *globals, o *apiOptions, run func(cmd *cobra.Command, c *apiClient, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := o.client(cmd, g)
		if err == nil {
			err = run(cmd, c, args)
		}
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		return nil
	}
}

func parseJobID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("job id %q: want a positive integer", s)
	}
	return id, nil
}

func logsCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "logs JOB",
		Short: "Print a job's runner output, as the runner wrote it",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		resp, err := c.do(cmd.Context(), http.MethodGet, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/log", nil, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(cmd.OutOrStdout(), resp.Body); err != nil {
			return fmt.Errorf("log of job %d: %w", id, err)
		}
		return nil
	})
	o.register(cmd, false)
	return cmd
}

// hostAction is one of the POST /api/v1/hosts/{id}/{action} endpoints.
type hostAction struct {
	name, short, done string
}

var hostActions = []hostAction{
	{"drain", "Take no new VMs on a host; its running VMs finish", "no new VMs; running ones finish"},
	{"cordon", "Take no new VMs on a host until it is uncordoned", "no new VMs until uncordoned"},
	{"uncordon", "Let a drained or cordoned host take VMs again", "takes new VMs"},
	{"revoke", "Refuse a host's agent from now on; its VMs' jobs are placed elsewhere",
		"its agent is refused from now on; enrol it again to bring it back"},
}

func hostActionCmd(g *globals, a hostAction) *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{Use: a.name + " HOST", Short: a.short, Args: cobra.ExactArgs(1)}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		if args[0] == "" {
			return errors.New("host id: empty")
		}
		var res struct {
			Host  string `json:"host"`
			State string `json:"state"`
		}
		if printed, err := o.call(cmd, c, http.MethodPost, "/api/v1/hosts/"+url.PathEscape(args[0])+"/"+a.name, nil, nil, &res); printed || err != nil {
			return err
		}
		state := clean(res.State)
		if a.name == "revoke" {
			state = "revoked (" + state + ")"
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "host %s is %s: %s\n", clean(res.Host), state, a.done)
		return err
	})
	o.register(cmd, true)
	return cmd
}

func enrollCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var ttl, comment, host string
	var readmit bool
	cmd := &cobra.Command{
		Use:   "enroll [--ttl 1h] [--comment TEXT] [--host ID [--readmit]]",
		Short: "Issue a one-time token with which a new host's agent joins",
		Long: "Issue a one-time enrolment token. The token alone goes to stdout, for scripts;\n" +
			"how to use it goes to stderr. It carries the control plane's certificate\n" +
			"fingerprint, so the agent needs nothing else to connect securely.",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		var res struct {
			Token     string    `json:"token"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		if printed, err := o.call(cmd, c, http.MethodPost, "/api/v1/enroll-tokens", nil,
			map[string]any{"ttl": ttl, "comment": comment, "host": host, "readmit": readmit}, &res); printed || err != nil {
			return err
		}
		if _, _, err := agentapi.ParseEnrollToken(res.Token); err != nil {
			return fmt.Errorf("the control plane answered with a malformed enrolment token: %w", err)
		}
		if _, err := fmt.Fprintln(cmd.OutOrStdout(), res.Token); err != nil {
			return err
		}
		// The agents' listener is not the API's address unless the CLI
		// already talks to it over https.
		server, where := c.server, ""
		if c.base.Scheme != "https" {
			server, where = "https://CONTROL-PLANE:PORT", "where CONTROL-PLANE:PORT is the control plane's agents.listen address\n"
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "One-time token, valid until %s. On the new host, as root:\n"+
			"  tandem agent --server %s --enroll-token <token>\n%s",
			res.ExpiresAt.Local().Format(time.RFC3339), server, where)
		return nil
	})
	o.register(cmd, true)
	cmd.Flags().StringVar(&ttl, "ttl", "1h", "how long the token stays usable (at most 168h)")
	cmd.Flags().StringVar(&comment, "comment", "", "a note stored with the token (which host it is for, say)")
	cmd.Flags().StringVar(&host, "host", "", "enrol only this host id: an enrolled host enrolling again (a token without it enrols only new hosts)")
	cmd.Flags().BoolVar(&readmit, "readmit", false, "with --host: enrol that host though it was revoked, lifting the revocation")
	return cmd
}

func hostsCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List hosts: state, capacity and use, runners",
		Args:  cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		var res struct {
			Hosts []controlplane.HostView `json:"hosts"`
		}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/hosts", nil, nil, &res); printed || err != nil {
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tCONNECTED\tARCHES\tVCPUS\tMEMORY\tRUNNERS\tLOAD\tLAST-SEEN\tREASON")
		for _, h := range res.Hosts {
			arches := make([]string, 0, len(h.Arches))
			for _, a := range h.Arches {
				s := clean(string(a.Arch))
				if a.Emulated {
					s += "(emulated)"
				}
				arches = append(arches, s)
			}
			conn := "no"
			if h.Connected {
				conn = "yes"
			}
			load := "-"
			if h.Load1 > 0 {
				load = strconv.FormatFloat(h.Load1, 'f', 2, 64)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g/%g\t%s/%s GiB\t%d\t%s\t%s\t%s\n", clean(h.ID), clean(h.State), conn,
				orDash(strings.Join(arches, ",")), h.UsedVCPUs, h.VCPUs, gib(h.UsedMemoryMiB), gib(h.MemoryMiB),
				h.Runners, load, ago(now, h.LastSeen), orDash(cut(clean(h.Reason), reasonWidth)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(res.Hosts) == 0 {
			fmt.Fprintln(cmd.ErrOrStderr(), "no hosts yet: `tandem enroll` issues a token for one to join")
		}
		return nil
	})
	o.register(cmd, true)
	return cmd
}

func jobsCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var states, repo, org string
	var limit int
	cmd := &cobra.Command{
		Use:   "jobs [--state s1,s2] [--repo OWNER/NAME] [--org ORG] [--limit N]",
		Short: "List jobs, newest first",
		Long: "List jobs, newest first. States: queued, scheduled, launching, running,\n" +
			"completed, cancelled, failed, unschedulable, lost.",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		if limit < 0 {
			return errors.New("--limit: want a positive number")
		}
		q := url.Values{}
		if states != "" {
			q.Set("state", strings.ReplaceAll(states, " ", ""))
		}
		if repo != "" {
			q.Set("repo", repo)
		}
		if org != "" {
			q.Set("org", org)
		}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		var res struct {
			Jobs []controlplane.JobView `json:"jobs"`
		}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/jobs", q, nil, &res); printed || err != nil {
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tREPO\tSTATE\tARCH\tSIZE\tRUNNER\tHOST\tAGE\tREASON")
		for _, j := range res.Jobs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, clean(j.Repo), jobState(j),
				orDash(clean(j.Arch)), jobSize(j.VCPUs, j.MemoryMiB), orDash(clean(j.Runner)), orDash(clean(j.Host)),
				ago(now, j.QueuedAt), orDash(cut(clean(j.Reason), reasonWidth)))
		}
		return tw.Flush()
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&states, "state", "", "only jobs in these states (comma-separated)")
	f.StringVar(&repo, "repo", "", "only this repository's jobs (owner/name)")
	f.StringVar(&org, "org", "", "only this organisation's (or user's) jobs")
	f.IntVar(&limit, "limit", 0, "at most this many jobs (server default 500, at most 10000)")
	return cmd
}

func jobCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var showEgress bool
	cmd := &cobra.Command{
		Use:   "job ID",
		Short: "Show a job and every transition it went through",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiClient, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		if showEgress {
			var v controlplane.EgressView
			if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/egress", nil, nil, &v); printed || err != nil {
				return err
			}
			return printEgress(cmd.OutOrStdout(), v)
		}
		var j controlplane.JobView
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/jobs/"+strconv.FormatInt(id, 10), nil, nil, &j); printed || err != nil {
			return err
		}
		return printJob(cmd.OutOrStdout(), j, time.Now())
	})
	o.register(cmd, true)
	cmd.Flags().BoolVar(&showEgress, "egress", false, "show the job's egress policy and the flows its VM opened (audit, allowlist)")
	return cmd
}

func printJob(w io.Writer, j controlplane.JobView, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	when := func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return t.Local().Format(time.RFC3339) + " (" + ago(now, *t) + ")"
	}
	field("job", fmt.Sprintf("%d (run %d)", j.ID, j.RunID))
	field("repo", clean(j.Repo))
	field("workflow", clean(j.Workflow))
	field("name", clean(j.Name))
	field("labels", clean(strings.Join(j.Labels, ", ")))
	field("state", jobState(j))
	field("reason", clean(j.Reason))
	if j.VCPUs > 0 || j.MemoryMiB > 0 {
		field("size", strings.TrimSpace(clean(j.Arch)+" "+jobSize(j.VCPUs, j.MemoryMiB)))
	}
	field("runner", clean(j.Runner))
	field("host", clean(j.Host))
	field("attempts", strconv.Itoa(j.Attempts))
	field("queued", when(&j.QueuedAt))
	field("started", when(j.StartedAt))
	field("completed", when(j.CompletedAt))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(j.Events) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ntransitions:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tFROM → TO\tSOURCE\tREASON")
	for _, e := range j.Events {
		fmt.Fprintf(tw, "%s\t%s → %s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05.000"),
			orDash(clean(e.From)), clean(e.To), orDash(clean(e.Source)), clean(e.Reason))
	}
	return tw.Flush()
}

// reasonWidth is where tables cut reasons (--json has them whole).
const reasonWidth = 60

func jobState(j controlplane.JobView) string {
	if j.Conclusion != "" && j.Conclusion != j.State {
		return clean(j.State) + "(" + clean(j.Conclusion) + ")"
	}
	return clean(j.State)
}

// jobSize writes a size as runs-on labels do: 2cpu-8gb, 0.5cpu-512mb.
func jobSize(vcpus float64, mib int) string {
	if vcpus <= 0 && mib <= 0 {
		return "-"
	}
	mem := strconv.Itoa(mib) + "mb"
	if mib%1024 == 0 {
		mem = strconv.Itoa(mib/1024) + "gb"
	}
	return strconv.FormatFloat(vcpus, 'f', -1, 64) + "cpu-" + mem
}

func gib(mib int) string { return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) }

// ago is a coarse age: 42s, 5m, 3h, 2d.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// cut shortens s to n runes, marking the cut with "…".
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// clean makes server-provided text safe for a terminal table: control
// characters (newlines, tabs, escapes) become spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

func orDash(s string) string { return orText(s, "-") }
