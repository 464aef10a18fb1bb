package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// Exec makes goHost an agentapi.ExecRunner: a session in one of its runs
// echoes its input in upper case, then exits with as many as the words
// of its command.
func (h *goHost) Exec(ctx context.Context, runner string, c agentapi.ExecConn) error {
	h.mu.Lock()
	_, ok := h.runs[runner]
	h.mu.Unlock()
	if !ok {
		return errors.New("no such runner on this host")
	}
	k, p, err := c.Read(ctx)
	if err != nil || k != agentapi.ExecMsgOpen {
		return errors.New("the first message must open the session")
	}
	var open agentapi.ExecOpen
	if err := json.Unmarshal(p, &open); err != nil {
		return err
	}
	for {
		k, p, err := c.Read(ctx)
		if err != nil {
			return err
		}
		switch k {
		case agentapi.ExecMsgStdin:
			if err := c.Write(ctx, agentapi.ExecMsgStdout, bytes.ToUpper(p)); err != nil {
				return err
			}
		case agentapi.ExecMsgEOF:
			return agentapi.WriteJSON(ctx, c, agentapi.ExecMsgExit, agentapi.ExecResult{Code: len(open.Argv)})
		}
	}
}

// session opens a debug session in job id as token, sends input, and
// returns what came back and the exit.
func (f *fleet) session(t *testing.T, token string, id int64, argv []string, input string) (string, agentapi.ExecResult, error) {
	t.Helper()
	c, err := apiclient.New(apiclient.Options{Server: f.tlsSrv.URL, Token: token, Pin: f.pin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/ssh")
	if err != nil {
		return "", agentapi.ExecResult{}, err
	}
	defer conn.Close("done")
	agentapi.WriteJSON(ctx, conn, agentapi.ExecMsgOpen, agentapi.ExecOpen{Argv: argv})
	conn.Write(ctx, agentapi.ExecMsgStdin, []byte(input))
	conn.Write(ctx, agentapi.ExecMsgEOF, nil)
	var out strings.Builder
	for {
		k, p, err := conn.Read(ctx)
		if err != nil {
			return out.String(), agentapi.ExecResult{}, err
		}
		switch k {
		case agentapi.ExecMsgStdout:
			out.Write(p)
		case agentapi.ExecMsgExit:
			var res agentapi.ExecResult
			json.Unmarshal(p, &res)
			return out.String(), res, nil
		}
	}
}

// A debug session through a remote agent: the control plane asks it on its
// stream, it dials back with its credentials, and the two WebSockets are
// joined. Nobody but that agent may take the session's dial-back.
func TestDebugSessionThroughARemoteAgent(t *testing.T) {
	f := newFleetWith(t, func(c *controlplane.Config) { c.DebugOrgs = []string{"acme"} })
	a := f.join("a1")
	a.host.set(nil, true) // its runners start and wait
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := f.queue("acme/app", "tandem-2cpu-1gb", "true")
	f.waitFor("the job's runner to start", 20*time.Second, func() bool {
		j, _ := f.job(id)
		x := f.runner(j.RunnerName)
		return j.RunnerName != "" && !x.StartedAt.IsZero()
	})
	out, res, err := f.session(t, rigAdminToken, id, []string{"sh", "-c", "cat"}, "hello there")
	if err != nil || out != "HELLO THERE" || res.Code != 3 || res.Error != "" {
		t.Fatalf("session: output %q, exit %+v, err %v", out, res, err)
	}
	// A read token: may read, not run.
	_, _, err = f.session(t, rigReadToken, id, nil, "x")
	var ae *apiclient.Error
	if !errors.As(err, &ae) || ae.Status != 403 {
		t.Errorf("a read token's session: %v, want 403", err)
	}
	// A dial-back for a session nobody asked for, or by another host.
	for _, who := range []struct{ host, secret string }{{a.creds.HostID, a.creds.Credential}, {"a2", "nope"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, resp, err := websocket.Dial(ctx, f.tlsSrv.URL+agentapi.PathExec+"0123456789abcdef0123456789abcdef",
			&websocket.DialOptions{HTTPClient: f.tlsSrv.Client(), HTTPHeader: map[string][]string{
				agentapi.HeaderVersion: {strconv.Itoa(agentapi.Version)}, agentapi.HeaderHost: {who.host},
				"Authorization": {"Bearer " + who.secret}}})
		cancel()
		if err == nil || resp == nil || (resp.StatusCode != 404 && resp.StatusCode != 401) {
			t.Errorf("a dial-back by %s for an unknown session: %v (%v)", who.host, err, resp)
		}
	}
	var audit struct{ Audit []controlplane.AuditView }
	f.call("GET", "/api/v1/audit", rigAdminToken, &audit)
	n := 0
	for _, e := range audit.Audit {
		if strings.HasPrefix(e.Action, "debug.session.") && strings.Contains(e.Target, "job "+strconv.FormatInt(id, 10)) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("audit: %d debug entries for the job, want a start and an end: %+v", n, audit.Audit)
	}
	if j, _ := f.job(id); j.State == store.JobCompleted {
		t.Errorf("the job ended with the session")
	}
}

// A failed job's VM is kept for debug.keep_failed after its job, its
// runner live (capacity counted) and the job saying until when; then it
// goes. A job that succeeds lets its VM go at once.
func TestFailedJobsVMIsKept(t *testing.T) {
	keep := 1500 * time.Millisecond
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.KeepFailedAny = true
		c.KeepFailed = func(org, repo string) time.Duration {
			if repo == "acme/app" {
				return keep
			}
			return 0
		}
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app", "acme/web")
	failed := r.queue("acme/app", "tandem-2cpu-1gb", "echo failing; exit 3")
	passed := r.queue("acme/app", "tandem-2cpu-1gb", "echo ok")
	other := r.queue("acme/web", "tandem-2cpu-1gb", "exit 1") // keeps none
	r.waitStates([]int64{failed, passed, other}, 20*time.Second, store.JobCompleted)
	j, _ := r.job(failed)
	run := r.runner(j.RunnerName)
	if j.Conclusion != "failure" || run.KeptUntil.IsZero() || run.State == store.RunnerEnded {
		t.Fatalf("the failed job %+v: its runner %+v, want it live and kept", j, run)
	}
	var v controlplane.JobView
	if code := r.call("GET", "/api/v1/jobs/"+strconv.FormatInt(failed, 10), rigReadToken, &v); code != 200 ||
		v.VMKeptUntil == nil || !v.VMKeptUntil.Equal(run.KeptUntil) {
		t.Errorf("the job's detail: %d, vm_kept_until %v, want %v", code, v.VMKeptUntil, run.KeptUntil)
	}
	r.waitFor("the kept VM to go", 20*time.Second, func() bool { return r.runner(j.RunnerName).State == store.RunnerEnded })
	if ended := r.runner(j.RunnerName).EndedAt; ended.Before(run.KeptUntil) {
		t.Errorf("the kept VM ended at %s, before its time %s", ended, run.KeptUntil)
	}
	r.waitFor("every runner to end", 20*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	h := r.hosts[0]
	h.mu.Lock()
	defer h.mu.Unlock()
	words := map[string]time.Time{}
	for _, w := range h.verdicts {
		words[w.runner] = w.until
	}
	pj, _ := r.job(passed)
	oj, _ := r.job(other)
	if u, ok := words[pj.RunnerName]; !ok || !u.IsZero() {
		t.Errorf("the passed job's VM: word %v (given %v), want let go", u, ok)
	}
	for _, a := range h.assigned {
		if a.Runner == oj.RunnerName && a.MayKeep {
			t.Errorf("a VM of a repository that keeps none was launched to wait for a word: %+v", a)
		}
		if a.Runner == pj.RunnerName && !a.MayKeep {
			t.Errorf("a VM of a repository that keeps failed VMs was not launched to wait for a word: %+v", a)
		}
	}
	if u := words[j.RunnerName]; !u.Equal(run.KeptUntil) {
		t.Errorf("the failed job's VM: kept until %v, the store says %v", u, run.KeptUntil)
	}
}

// A job whose completed webhook comes before its in_progress one (lost,
// or late) was done by the runner made for it: that runner is taken for
// busy with it, not freed as a spare, which would be stopped before its
// VM ends by itself, and the VM of a failed job is kept as it should be.
func TestCompletedBeforeInProgressKeepsTheRunnersVM(t *testing.T) {
	r := newRig(t, rigOptions{noReconcile: true, faults: ghfake.Faults{Fail: 1}, configure: func(c *controlplane.Config) {
		c.KeepFailedAny = true
		c.KeepFailed = func(string, string) time.Duration { return time.Minute }
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem-2cpu-1gb", "echo failing; exit 3")
	redeliver := func(action string) {
		t.Helper()
		r.gh.Quiesce()
		for _, d := range r.gh.Deliveries() {
			if d.JobID == id && d.Action == action && !d.Redelivery {
				if err := r.gh.Redeliver(d.ID); err != nil {
					t.Fatal(err)
				}
				r.gh.Quiesce()
				return
			}
		}
		t.Fatalf("no %s delivery of job %d", action, id)
	}
	redeliver("queued")
	r.waitFor("the job to be done on GitHub", 20*time.Second, func() bool {
		gj, _ := r.gh.Job(id)
		return gj.Status == "completed"
	})
	redeliver("completed") // its in_progress never comes
	r.waitStates([]int64{id}, 10*time.Second, store.JobCompleted)
	j, _ := r.job(id)
	gj, _ := r.gh.Job(id)
	if j.RunnerName != gj.RunnerName || j.Conclusion != "failure" {
		t.Fatalf("job %+v, GitHub %+v: want it failed on its runner", j, gj)
	}
	r.waitFor("the failed job's VM to be kept", 10*time.Second, func() bool {
		return !r.runner(j.RunnerName).KeptUntil.IsZero()
	})
	if run := r.runner(j.RunnerName); run.State == store.RunnerEnded || run.JobID != id {
		t.Errorf("the runner that ran the job: %+v; want it live, kept, still bound to job %d", run, id)
	}
}
