package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/controlplane/cptest"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/pool"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// These tests run the operator commands in process against a real control
// plane (SQLite store, ghfake for GitHub) served by httptest, with a host
// whose agent only records what it is asked to launch: no VMs.

const (
	opsAdmin = "adm-5b1e0c7d9a"
	opsRead  = "rd-3f8a2c6e41"
	opsPin   = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

// opsHost is a HostAgent that launches nothing.
type opsHost struct {
	mu       sync.Mutex
	launched []string
}

func (h *opsHost) Launch(a agentapi.Assignment) error {
	h.mu.Lock()
	h.launched = append(h.launched, a.Runner)
	h.mu.Unlock()
	return nil
}
func (h *opsHost) Configure(string, map[string]string) error { return nil }
func (h *opsHost) Stop(string, string) error                 { return nil }

type opsRig struct {
	t      *testing.T
	gh     *ghfake.Server
	cp     *controlplane.Server
	st     store.Store
	web    *httptest.Server // the API over plain http
	logDir string
	data   string // the CLI's --data-dir
}

func newOpsRig(t *testing.T, configure ...func(*controlplane.Config)) *opsRig {
	t.Helper()
	for _, k := range []string{"TANDEM_SERVER", "TANDEM_TOKEN", "TANDEM_PIN"} {
		t.Setenv(k, "")
	}
	r := &opsRig{t: t, logDir: t.TempDir(), data: t.TempDir()}
	sys := cptest.Start(t, 1, func(c *controlplane.Config) {
		c.LogDir, c.AgentPin = r.logDir, opsPin
		c.APITokens = controlplane.APITokens{{Secret: opsAdmin, Admin: true}, {Secret: opsRead}}
		// Tests record parity tiers themselves, when their history is
		// whole: the loop's first pass could record a half-written one.
		c.ParityEvery = -1
		for _, f := range configure {
			f(c)
		}
	})
	r.gh, r.cp, r.st, r.web = sys.GH, sys.CP, sys.Store, sys.Web
	cp, ctx := sys.CP, sys.Ctx
	if err := cp.AttachHost(ctx, store.Host{ID: "h1", VCPUs: 8, MemoryMiB: 16 << 10,
		Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: true}}}, &opsHost{}, agentapi.Inventory{}); err != nil {
		t.Fatal(err)
	}
	return r
}

// job returns a job from the store, and whether it is there.
func (r *opsRig) job(id int64) (store.Job, bool) { return cptest.Job(r.st, id) }

func (r *opsRig) waitJob(id int64, what string, cond func(store.Job) bool) store.Job {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, ok := r.job(id)
		if ok && cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("job %d: timed out waiting for %s (now %+v)", id, what, j)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type cliResult struct {
	stdout, stderr string
	err            error
}

// run runs `tandem args...` in process, as main builds it.
func (r *opsRig) run(args ...string) cliResult {
	r.t.Helper()
	g := &globals{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	root := &cobra.Command{Use: "tandem", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", r.data, "")
	root.AddCommand(opsCommands(g)...)
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	res := cliResult{out.String(), errb.String(), err}
	all := res.stdout + res.stderr
	if err != nil {
		all += err.Error()
	}
	for _, secret := range []string{opsAdmin, opsRead} {
		if strings.Contains(all, secret) {
			r.t.Errorf("tandem %v shows an API token:\n%s", args, all)
		}
	}
	return res
}

// as runs a command against the plain-http API with a token.
func (r *opsRig) as(token string, args ...string) cliResult {
	r.t.Helper()
	return r.run(append(args, "--server", r.web.URL, "--token", token)...)
}

func (r *opsRig) ok(res cliResult) cliResult {
	r.t.Helper()
	if res.err != nil {
		r.t.Fatalf("failed: %v\nstderr: %s", res.err, res.stderr)
	}
	return res
}

// fails checks that a command failed with exit code 1 and a message
// containing want, as main would print it ("tandem: " + message).
func fails(t *testing.T, res cliResult, want string) error {
	t.Helper()
	var ee *exitError
	if !errors.As(res.err, &ee) || ee.code != 1 || ee.err == nil {
		t.Fatalf("want exit 1 with %q; got %v (stdout %q)", want, res.err, res.stdout)
	}
	if !strings.Contains(ee.err.Error(), want) {
		t.Fatalf("error %q: want it to contain %q", ee.err, want)
	}
	return ee.err
}

// table splits a table's output into rows of fields.
func table(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

func rowOf(t *testing.T, out, first string) []string {
	t.Helper()
	for _, f := range table(out) {
		if len(f) > 0 && f[0] == first {
			return f
		}
	}
	t.Fatalf("no row %q in:\n%s", first, out)
	return nil
}

// queueJobs queues one job that is placed on h1 and one no host can hold.
func (r *opsRig) queueJobs() (placed, unschedulable store.Job) {
	r.t.Helper()
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-2cpu-1gb"}, Script: "true"})
	b, _ := r.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-64cpu-8gb"}, Script: "true"})
	if a == 0 || b == 0 {
		r.t.Fatal("ghfake queued no job")
	}
	placed = r.waitJob(a, "a runner on h1", func(j store.Job) bool { return j.RunnerName != "" && j.HostID == "h1" })
	unschedulable = r.waitJob(b, "unschedulable", func(j store.Job) bool { return j.State == store.JobUnschedulable })
	return placed, unschedulable
}

func TestOpsHostsAndJobs(t *testing.T) {
	r := newOpsRig(t)
	a, b := r.queueJobs()
	ida, idb := itoa(a.ID), itoa(b.ID)

	out := r.ok(r.as(opsRead, "hosts")).stdout
	if h := table(out)[0]; strings.Join(h, " ") != "ID STATE CONNECTED ARCHES VCPUS MEMORY RUNNERS LOAD LAST-SEEN REASON" {
		t.Errorf("hosts header %q", h)
	}
	row := rowOf(t, out, "h1")
	if want := []string{"h1", "online", "yes", "amd64,arm64(emulated)", "2/8", "1.0/16.0", "GiB", "1"}; strings.Join(row[:8], " ") != strings.Join(want, " ") {
		t.Errorf("hosts row %q, want it to start with %q", row, want)
	}

	var hosts struct{ Hosts []controlplane.HostView }
	if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "hosts", "--json")).stdout), &hosts); err != nil {
		t.Fatal(err)
	}
	if len(hosts.Hosts) != 1 || hosts.Hosts[0].ID != "h1" || hosts.Hosts[0].UsedVCPUs != 2 || !hosts.Hosts[0].Connected {
		t.Errorf("hosts --json: %+v", hosts.Hosts)
	}

	out = r.ok(r.as(opsRead, "jobs")).stdout
	if h := table(out)[0]; strings.Join(h, " ") != "ID REPO BRANCH STATE ARCH SIZE RUNNER HOST AGE REASON" {
		t.Errorf("jobs header %q", h)
	}
	if row := rowOf(t, out, ida); row[1] != "acme/app" || row[2] != "main" || row[4] != "amd64" || row[5] != "2cpu-1gb" ||
		row[6] != a.RunnerName || row[7] != "h1" {
		t.Errorf("placed job's row %q (job %+v)", row, a)
	}
	if row := rowOf(t, out, idb); row[3] != "unschedulable" || row[5] != "64cpu-8gb" || row[6] != "-" {
		t.Errorf("unschedulable job's row %q", row)
	}

	// The table cuts reasons; --json has them whole.
	var jobs struct{ Jobs []controlplane.JobView }
	if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "jobs", "--json", "--state", "unschedulable")).stdout), &jobs); err != nil {
		t.Fatal(err)
	}
	if len(jobs.Jobs) != 1 || jobs.Jobs[0].ID != b.ID || jobs.Jobs[0].Reason != b.Reason || b.Reason == "" {
		t.Fatalf("jobs --json --state unschedulable: %+v, want job %d with reason %q", jobs.Jobs, b.ID, b.Reason)
	}
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, idb+" ") {
			line = l
		}
	}
	shown := strings.TrimSuffix(line[strings.Index(line, "unschedulable")+len("unschedulable"):], " ")
	if want := termtext.Cut(b.Reason, reasonWidth); !strings.HasSuffix(shown, want) {
		t.Errorf("table reason: line %q, want it to end with %q", line, want)
	}

	// Filters reach the server.
	if rows := table(r.ok(r.as(opsRead, "jobs", "--state", "unschedulable")).stdout); len(rows) != 2 || rows[1][0] != idb {
		t.Errorf("--state unschedulable: %q", rows)
	}
	if rows := table(r.ok(r.as(opsRead, "jobs", "--repo", "acme/other")).stdout); len(rows) != 1 {
		t.Errorf("--repo acme/other: %q", rows)
	}
	if rows := table(r.ok(r.as(opsRead, "jobs", "--org", "acme", "--limit", "1")).stdout); len(rows) != 2 {
		t.Errorf("--limit 1: %q", rows)
	}
	fails(t, r.as(opsRead, "jobs", "--state", "queued,bogus"), `unknown state "bogus"`)

	// One job and its transitions.
	out = r.ok(r.as(opsRead, "job", ida)).stdout
	for _, want := range []string{"repo:", "acme/app", "runner:", a.RunnerName, "host:", "transitions:",
		"FROM → TO", "- → queued", "queued → scheduled", "commit:", "main " + a.HeadSHA[:12], "sender:", "monalisa",
		"on GitHub:", a.HTMLURL, "created:"} {
		if !strings.Contains(out, want) {
			t.Errorf("job %s: no %q in:\n%s", ida, want, out)
		}
	}
	var jv controlplane.JobView
	if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "job", ida, "--json")).stdout), &jv); err != nil {
		t.Fatal(err)
	}
	if jv.ID != a.ID || len(jv.Events) < 2 || jv.Events[0].To != "queued" {
		t.Errorf("job --json: %+v", jv)
	}
	fails(t, r.as(opsRead, "job", "999999"), "no such job")
	fails(t, r.as(opsRead, "job", "x1"), `job id "x1": want a positive integer`)
	// Only an unmatched job is queued again, and only by an admin.
	fails(t, r.as(opsAdmin, "job", "retry", ida), "only an unmatched job can be queued again")
	fails(t, r.as(opsRead, "job", "retry", ida), "an admin token is required")
	fails(t, r.as(opsAdmin, "job", "retry", "999999"), "no job 999999")
}

func TestOpsLogs(t *testing.T) {
	r := newOpsRig(t)
	a, b := r.queueJobs()
	log := []byte("step 1\n\x1b[32mok\x1b[0m\tdone\nno newline at the end")
	if err := os.WriteFile(filepath.Join(r.logDir, a.RunnerName+".log"), log, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := r.ok(r.as(opsRead, "logs", itoa(a.ID))); res.stdout != string(log) {
		t.Errorf("logs: got %q, want the raw log %q", res.stdout, log)
	}
	fails(t, r.as(opsRead, "logs", itoa(b.ID)), "no runner log for this job")
	fails(t, r.as(opsRead, "logs", "0"), "want a positive integer")
}

func TestOpsDrainCordonUncordon(t *testing.T) {
	r := newOpsRig(t)
	state := func() []string {
		t.Helper()
		row := rowOf(t, r.ok(r.as(opsRead, "hosts")).stdout, "h1")
		return []string{row[1], strings.Join(row[10:], " ")} // state, reason
	}
	if s := state(); s[0] != "online" || s[1] != "-" {
		t.Fatalf("before: %q", s)
	}
	if out := r.ok(r.as(opsAdmin, "drain", "h1")).stdout; out != "host h1 is draining: no new VMs; running ones finish\n" {
		t.Errorf("drain said %q", out)
	}
	if s := state(); s[0] != "draining" || !strings.HasPrefix(s[1], "drain by an operator") {
		t.Errorf("after drain: %q", s)
	}
	var res map[string]string
	if err := json.Unmarshal([]byte(r.ok(r.as(opsAdmin, "cordon", "h1", "--json")).stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res["host"] != "h1" || res["state"] != "cordoned" {
		t.Errorf("cordon --json: %v", res)
	}
	if s := state(); s[0] != "cordoned" || !strings.HasPrefix(s[1], "cordon by an operator") {
		t.Errorf("after cordon: %q", s)
	}
	if out := r.ok(r.as(opsAdmin, "uncordon", "h1")).stdout; !strings.HasPrefix(out, "host h1 is online") {
		t.Errorf("uncordon said %q", out)
	}
	if s := state(); s[0] != "online" || s[1] != "-" {
		t.Errorf("after uncordon: %q", s)
	}
	fails(t, r.as(opsAdmin, "drain", "nope"), `no host "nope"`)
	// h1's agent runs in process: it never enrolled.
	fails(t, r.as(opsAdmin, "revoke", "h1"), `no enrolled host "h1"`)
}

func TestOpsEnroll(t *testing.T) {
	r := newOpsRig(t)
	res := r.ok(r.as(opsAdmin, "enroll", "--comment", "rack 4"))
	token := strings.TrimSuffix(res.stdout, "\n")
	if strings.Contains(token, "\n") {
		t.Fatalf("stdout holds more than the token: %q", res.stdout)
	}
	if _, pin, err := agentapi.ParseEnrollToken(token); err != nil || pin != opsPin {
		t.Fatalf("token %q: pin %q, %v", token, pin, err)
	}
	if !strings.Contains(res.stderr, "tandem agent --server https://") || !strings.Contains(res.stderr, "--enroll-token <token>") {
		t.Errorf("stderr does not say how to use the token:\n%s", res.stderr)
	}
	if strings.Contains(res.stderr, token) {
		t.Errorf("the token went to stderr too")
	}
	var js struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(r.ok(r.as(opsAdmin, "enroll", "--ttl", "2h", "--json")).stdout), &js); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(js.ExpiresAt); js.Token == token || d < 119*time.Minute || d > 121*time.Minute {
		t.Errorf("enroll --ttl 2h --json: %+v", js)
	}
	fails(t, r.as(opsAdmin, "enroll", "--ttl", "500h"), "ttl: want a duration up to 168h")
	fails(t, r.as(opsRead, "enroll"), "an admin token is required")
}

func TestOpsAuthCLI(t *testing.T) {
	r := newOpsRig(t)
	// A read token may not write; nothing changes.
	fails(t, r.as(opsRead, "drain", "h1"), "an admin token is required")
	if row := rowOf(t, r.ok(r.as(opsRead, "hosts")).stdout, "h1"); row[1] != "online" {
		t.Errorf("a refused drain changed the host: %q", row)
	}
	// No token at all: the server's message, and where a token comes from.
	err := fails(t, r.run("hosts", "--server", r.web.URL), "an API token is required")
	var ae *apiclient.Error
	if !strings.Contains(err.Error(), "--token") || !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("want a 401 apiclient.Error with a hint where a token comes from: %v", err)
	}
	fails(t, r.as("wrong-token", "hosts"), "an API token is required")

	// `tandem up` leaves the admin token in the data dir; it is found there.
	if err := os.WriteFile(filepath.Join(r.data, "api-admin-token"), []byte(opsAdmin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.ok(r.run("drain", "h1", "--server", r.web.URL))
	// --token-file and $TANDEM_TOKEN.
	tf := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tf, []byte(" "+opsRead+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fails(t, r.run("uncordon", "h1", "--server", r.web.URL, "--token-file", tf), "an admin token is required")
	fails(t, r.run("hosts", "--server", r.web.URL, "--token-file", tf, "--token", opsRead), "not both")
	fails(t, r.run("hosts", "--server", r.web.URL, "--token-file", filepath.Join(tf, "absent")), "--token-file")
	t.Setenv("TANDEM_TOKEN", opsAdmin)
	t.Setenv("TANDEM_SERVER", r.web.URL)
	r.ok(r.run("uncordon", "h1"))
	r.ok(r.run("hosts", "--help")) // run checks the token is not shown
	if row := rowOf(t, r.ok(r.run("hosts")).stdout, "h1"); row[1] != "online" {
		t.Errorf("after uncordon with $TANDEM_TOKEN: %q", row)
	}
}

func TestOpsServerErrorsCLI(t *testing.T) {
	r := newOpsRig(t)

	// Nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	res := r.run("hosts", "--server", dead, "--token", opsRead)
	err = fails(t, res, "cannot reach the control plane at "+dead+": connection refused")
	if !errors.Is(err, apiclient.ErrUnreachable) {
		t.Errorf("%v: not apiclient.ErrUnreachable", err)
	}
	fails(t, r.run("hosts", "--server", "ftp://example.org"), "want http://HOST:PORT")
	fails(t, r.run("hosts", "--server", "http://u:"+opsAdmin+"@127.0.0.1:1"), "no credentials in the URL")
	fails(t, r.run("hosts", "--server", "http://127.0.0.1:1/?token="+opsAdmin), "no query")

	// Something that is not the control plane answers.
	junk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	defer junk.Close()
	fails(t, r.run("jobs", "--server", junk.URL, "--token", opsRead), "502 Bad Gateway: upstream down")

	// https: the control plane's self-signed certificate is pinned.
	tlsSrv := httptest.NewTLSServer(r.cp.Handler())
	defer tlsSrv.Close()
	pin := agentapi.Fingerprint(tlsSrv.Certificate().Raw)
	r.ok(r.run("hosts", "--server", tlsSrv.URL, "--token", opsRead, "--pin", strings.ToUpper(pin)))
	fails(t, r.run("hosts", "--server", tlsSrv.URL, "--token", opsRead, "--pin", opsPin), "is not the pinned")
	fails(t, r.run("hosts", "--server", tlsSrv.URL, "--token", opsRead, "--pin", "abc"), "--pin: want the 64 hex digits")
	fails(t, r.run("hosts", "--server", tlsSrv.URL, "--token", opsRead), "give --pin")
	// The data dir's certificate gives the pin by itself (tandem server made it).
	if err := os.MkdirAll(filepath.Join(r.data, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(r.data, "tls", "cert.pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	r.ok(r.run("hosts", "--server", tlsSrv.URL, "--token", opsRead))
	res = r.ok(r.run("enroll", "--server", tlsSrv.URL, "--token", opsAdmin))
	if !strings.Contains(res.stderr, "tandem agent --server "+tlsSrv.URL+" --enroll-token <token>") {
		t.Errorf("enroll over https: hint %q does not name %s", res.stderr, tlsSrv.URL)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestOpsPools(t *testing.T) {
	empty := newOpsRig(t)
	res := empty.ok(empty.as(opsRead, "pools"))
	if !strings.Contains(res.stderr, "no warm pools") {
		t.Errorf("pools without any: stderr %q", res.stderr)
	}
	sched, err := pool.ParseSchedule("Mon-Fri 07:00-20:00 Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	r := newOpsRig(t, func(c *controlplane.Config) {
		c.Pools = []controlplane.PoolSpec{
			{Label: "tandem-2cpu-1gb", Sizing: pool.Sizing{MinIdle: 2, MaxIdle: 3}, MaxAge: 30 * time.Minute},
			{Label: "tandem-arm64-4cpu-2gb", Sizing: pool.Sizing{MaxIdle: 4, Demand: true, Schedule: sched}, MaxAge: time.Hour},
		}
	})
	// The host records launches and reports nothing: the pool's VMs stay
	// booting.
	var pools struct{ Pools []controlplane.PoolView }
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "pools", "--json")).stdout), &pools); err != nil {
			t.Fatal(err)
		}
		if len(pools.Pools) == 2 && pools.Pools[0].Booting == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	p := pools.Pools[0]
	if p.Label != "tandem-amd64-2cpu-1gb" || p.Booting != 2 || p.Ready != 0 || p.Target != 2 || len(p.VMs) != 2 ||
		p.VMs[0].Host != "h1" || p.VMs[0].ExpiresAt.Sub(p.VMs[0].CreatedAt) != 30*time.Minute || p.Schedule != "always" {
		t.Errorf("pool %+v", p)
	}
	if q := pools.Pools[1]; q.Label != "tandem-arm64-4cpu-2gb" || !q.Demand || q.Target != 0 || q.Booting != 0 ||
		q.Schedule != "Mon-Fri 07:00-20:00 Europe/Berlin" || q.Active != sched.Active(time.Now()) {
		t.Errorf("demand pool with no jobs yet %+v", q)
	}
	out := r.ok(r.as(opsRead, "pools", "--vms")).stdout
	if h := table(out)[0]; strings.Join(h, " ") != "POOL READY BOOTING TARGET MIN MAX MAX-AGE SCHEDULE HITS MISSES HIT-RATE BOOT-P50" {
		t.Errorf("pools header %q", h)
	}
	if row := rowOf(t, out, "tandem-amd64-2cpu-1gb"); strings.Join(row[:7], " ") != "tandem-amd64-2cpu-1gb 0 2 2 2 3 30m0s" {
		t.Errorf("pool row %q", row)
	}
	if !strings.Contains(out, p.VMs[0].Runner) || !strings.Contains(out, "RECYCLED-IN") {
		t.Errorf("pools --vms lists no VM:\n%s", out)
	}
}
