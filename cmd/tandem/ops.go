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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/termtext"
)

const defaultServer = "http://127.0.0.1:8080"

// apiOptions are the connection flags every operator command takes.
type apiOptions struct {
	server, pin, token, tokenFile string
	json                          bool
}

// call makes an API call, decoding the answer into v; with --json it
// prints the answer as it came instead and says so (printed).
func (o *apiOptions) call(cmd *cobra.Command, c *apiclient.Client, method, path string, q url.Values, body, v any) (printed bool, err error) {
	raw, err := c.Call(cmd.Context(), method, path, q, body, v)
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

// client resolves the flags into a client. cmd tells which flags were set.
func (o *apiOptions) client(cmd *cobra.Command, g *globals) (*apiclient.Client, error) {
	token, err := o.resolveToken(cmd, g)
	if err != nil {
		return nil, err
	}
	opts := apiclient.Options{Server: o.server, Token: token, UserAgent: "tandem/" + version}
	if strings.HasPrefix(strings.ToLower(o.server), "https:") {
		if opts.Pin, err = o.resolvePin(g); err != nil {
			return nil, err
		}
	}
	c, err := apiclient.New(opts)
	if err != nil {
		return nil, err
	}
	if c.TokenInClear() {
		fmt.Fprintf(cmd.ErrOrStderr(), "tandem: warning: the API token goes unencrypted to %s: prefer a loopback listen address, or https (agents.listen with serve_api: true)\n", c.Server())
	}
	return c, nil
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
	return tok, nil
}

// resolvePin returns the certificate pin for an https server: --pin, or
// $TANDEM_PIN, or the fingerprint of <data-dir>/tls/cert.pem; "" when none
// (the system's CAs then verify the server).
func (o *apiOptions) resolvePin(g *globals) (string, error) {
	if o.pin != "" {
		pin, err := apiclient.ParsePin(o.pin)
		if err != nil {
			return "", fmt.Errorf("--pin: %w", err)
		}
		return pin, nil
	}
	return apiclient.PinOfCertFile(filepath.Join(g.dataDir, "tls", "cert.pem"))
}

// printValue prints v as indented JSON (--json outputs).
func printValue(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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
	cmds := []*cobra.Command{hostsCmd(g), poolsCmd(g), sshCmd(g), jobsCmd(g), jobCmd(g), logsCmd(g), imagesCmd(g), egressCmd(g), rightsizeCmd(g), insightsCmd(g), parityCmd(g)}
	for _, a := range hostActions {
		cmds = append(cmds, hostActionCmd(g, a))
	}
	return append(cmds, enrollCmd(g))
}

// opsRun adapts an operator command's body: every failure exits 1 with
// its message (the server's own, for an API error).
func opsRun(g *globals, o *apiOptions, run func(cmd *cobra.Command, c *apiclient.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := o.client(cmd, g)
		if err == nil {
			err = run(cmd, c, args)
		}
		var ee *exitError
		if errors.As(err, &ee) { // the command chose its exit status
			return ee
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
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		resp, err := c.Do(cmd.Context(), http.MethodGet, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/log", nil, nil)
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
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
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
		state := termtext.Clean(res.State)
		if a.name == "revoke" {
			state = "revoked (" + state + ")"
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "host %s is %s: %s\n", termtext.Clean(res.Host), state, a.done)
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
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
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
		server, where := c.Server(), ""
		if !c.HTTPS() {
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
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		var res struct {
			Hosts []controlplane.HostView `json:"hosts"`
		}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/hosts", nil, nil, &res); printed || err != nil {
			return err
		}
		now := time.Now()
		tb := termtext.NewTable(cmd.OutOrStdout(), "ID", "STATE", "CONNECTED", "ARCHES", "VCPUS", "MEMORY", "RUNNERS", "LOAD", "LAST-SEEN", "REASON")
		for _, h := range res.Hosts {
			arches := make([]string, 0, len(h.Arches))
			for _, a := range h.Arches {
				s := string(a.Arch)
				if a.Emulated {
					s += "(emulated)"
				}
				arches = append(arches, s)
			}
			conn := "no"
			if h.Connected {
				conn = "yes"
			}
			load := ""
			if h.Load1 > 0 {
				load = strconv.FormatFloat(h.Load1, 'f', 2, 64)
			}
			tb.Row(h.ID, h.State, conn, strings.Join(arches, ","), fmt.Sprintf("%g/%g", h.UsedVCPUs, h.VCPUs),
				termtext.GiB(h.UsedMemoryMiB)+"/"+termtext.GiB(h.MemoryMiB)+" GiB", strconv.Itoa(h.Runners), load,
				termtext.Ago(now, h.LastSeen), termtext.Cut(h.Reason, reasonWidth))
		}
		if err := tb.Flush(); err != nil {
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
		Long: "List jobs, newest first. States: waiting (held by GitHub for an approval or\n" +
			"a concurrency group), queued, scheduled, launching, unmatched (GitHub will not\n" +
			"give it to Tandem's runners: another runner group), running, completed,\n" +
			"cancelled, failed, unschedulable, lost, refused (a public repository's).",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
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
		tb := termtext.NewTable(cmd.OutOrStdout(), "ID", "REPO", "BRANCH", "STATE", "ARCH", "SIZE", "RUNNER", "HOST", "AGE", "REASON")
		for _, j := range res.Jobs {
			tb.Row(strconv.FormatInt(j.ID, 10), j.Repo, termtext.Cut(j.HeadBranch, 30), jobState(j), j.Arch, termtext.Size(j.VCPUs, j.MemoryMiB),
				j.Runner, j.Host, termtext.Ago(now, j.QueuedAt), termtext.Cut(j.Reason, reasonWidth))
		}
		return tb.Flush()
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
	var showEgress, showProfile bool
	cmd := &cobra.Command{
		Use:   "job ID",
		Short: "Show a job and every transition it went through",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		if showProfile {
			var v controlplane.ProfileView
			if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/profile", nil, nil, &v); printed || err != nil {
				return err
			}
			return printProfile(cmd.OutOrStdout(), v)
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
	cmd.Flags().BoolVar(&showProfile, "profile", false, "show what the job's VM used: peaks, averages, time above 90%, a sparkline per series")
	cmd.MarkFlagsMutuallyExclusive("egress", "profile")
	cmd.AddCommand(jobRetryCmd(g))
	return cmd
}

// jobRetryCmd queues an unmatched job again.
func jobRetryCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "retry ID",
		Short: "Queue an unmatched job again, once its runner group lets Tandem's runners take it",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		var res struct {
			ID    int64  `json:"id"`
			State string `json:"state"`
		}
		if printed, err := o.call(cmd, c, http.MethodPost, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/retry", nil, nil, &res); printed || err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "job %d is %s again\n", res.ID, termtext.Clean(res.State))
		return err
	})
	o.register(cmd, true)
	return cmd
}

func printJob(w io.Writer, j controlplane.JobView, now time.Time) error {
	tb := termtext.NewTable(w)
	field := func(k, v string) {
		if v != "" {
			tb.Row(k+":", v)
		}
	}
	when := func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return t.Local().Format(time.RFC3339) + " (" + termtext.Ago(now, *t) + ")"
	}
	run := fmt.Sprintf("%d (run %d", j.ID, j.RunID)
	if j.RunAttempt > 1 {
		run += fmt.Sprintf(", attempt %d", j.RunAttempt)
	}
	field("job", run+")")
	field("repo", j.Repo)
	field("workflow", j.Workflow)
	field("name", j.Name)
	if j.HeadBranch != "" || j.HeadSHA != "" {
		field("commit", strings.TrimSpace(j.HeadBranch+" "+j.HeadSHA[:min(12, len(j.HeadSHA))]))
	}
	field("sender", j.Sender)
	field("on GitHub", j.HTMLURL)
	field("labels", strings.Join(j.Labels, ", "))
	field("state", jobState(j))
	field("reason", j.Reason)
	if j.VCPUs > 0 || j.MemoryMiB > 0 {
		field("size", strings.TrimSpace(j.Arch+" "+termtext.Size(j.VCPUs, j.MemoryMiB)))
	}
	field("runner", j.Runner)
	field("host", j.Host)
	if j.VMKeptUntil != nil {
		field("VM kept", fmt.Sprintf("for debugging until %s (tandem ssh %d)", j.VMKeptUntil.Local().Format("15:04:05"), j.ID))
	}
	if r := j.Rerun; r != nil {
		field("re-run", fmt.Sprintf("%s (lost: %s): %s", r.State, r.Cause, r.Detail))
	}
	if r := j.RerunOf; r != nil {
		field("re-run of", fmt.Sprintf("job %d, lost: %s", r.Job, r.Cause))
	}
	attempts := strconv.Itoa(j.Attempts)
	if j.Reopens > 0 {
		attempts += fmt.Sprintf(" (opened again %d times)", j.Reopens)
	}
	field("attempts", attempts)
	field("created", when(j.CreatedAt))
	field("queued", when(&j.QueuedAt))
	field("started", when(j.StartedAt))
	field("completed", when(j.CompletedAt))
	field("started on GitHub", when(j.GitHubStartedAt))
	field("completed on GitHub", when(j.GitHubCompletedAt))
	if err := tb.Flush(); err != nil {
		return err
	}
	if len(j.Events) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ntransitions:")
	tb = termtext.NewTable(w, "TIME", "FROM → TO", "SOURCE", "REASON")
	for _, e := range j.Events {
		tb.Row(e.At.Local().Format("2006-01-02 15:04:05.000"), termtext.OrDash(e.From)+" → "+e.To, e.Source, e.Reason)
	}
	return tb.Flush()
}

// reasonWidth is where tables cut reasons (--json has them whole).
const reasonWidth = 60

func jobState(j controlplane.JobView) string {
	if j.Conclusion != "" && j.Conclusion != j.State {
		return j.State + "(" + j.Conclusion + ")"
	}
	return j.State
}
