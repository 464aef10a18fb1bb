package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/store"
)

// Debug sessions (`tandem ssh JOB`): a shell or a command in a running
// job's VM, carried over connections that exist or that the agent opens
// (agentapi's exec.go): the CLI's WebSocket to the API, GET
// /api/v1/jobs/{id}/ssh; for a remote agent, CmdExec on its stream and its
// WebSocket back to the agent listener, GET /agent/v1/exec/SESSION, which
// the control plane joins to the CLI's. Nothing listens in the VM or on
// its network.
//
// Who may: an admin token, for any job; a read token scoped to
// organisations, for their jobs when the config lets those organisations
// debug (DebugOrgs). An unscoped read token may not: reading is not
// running code. Every session is in the audit log with who, the job, and
// its start and end.

// maxDebugSessions bounds the sessions open at once through one control
// plane (each VM's guest takes at most 8 of its own).
const maxDebugSessions = 64

// execWaits are the exec sessions whose agent has been asked to dial back.
type execWaits struct {
	mu   sync.Mutex
	byID map[string]*execWait
	open int // sessions running through this control plane
}

type execWait struct {
	host string
	conn chan agentapi.ExecConn // the agent's end, once it dials; buffered
	done chan struct{}          // closed when the session is over: the agent's handler may return
}

func newExecWaits() *execWaits { return &execWaits{byID: map[string]*execWait{}} }

// begin counts a session in, unless too many are open.
func (e *execWaits) begin() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.open >= maxDebugSessions {
		return false
	}
	e.open++
	return true
}

func (e *execWaits) end() {
	e.mu.Lock()
	e.open--
	e.mu.Unlock()
}

// expect registers a session id for host's agent to dial back to.
func (e *execWaits) expect(host string) (string, *execWait) {
	b := make([]byte, 16)
	rand.Read(b)
	id := hex.EncodeToString(b)
	w := &execWait{host: host, conn: make(chan agentapi.ExecConn, 1), done: make(chan struct{})}
	e.mu.Lock()
	e.byID[id] = w
	e.mu.Unlock()
	return id, w
}

// take removes and returns the session id's wait, if host is the one it
// was for: a session id serves one dial, by its host.
func (e *execWaits) take(id, host string) *execWait {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.byID[id]
	if w == nil || w.host != host {
		return nil
	}
	delete(e.byID, id)
	return w
}

func (e *execWaits) forget(id string) {
	e.mu.Lock()
	delete(e.byID, id)
	e.mu.Unlock()
}

// execIn runs an exec session in runner's VM on hostID, for the client's
// end c, until it ends. A host this replica does not hold cannot be
// reached from here.
func (s *Server) execIn(ctx context.Context, hostID, runner string, c agentapi.ExecConn) error {
	a, ok := s.links.agent(hostID)
	if !ok {
		return fmt.Errorf("host %s's agent is not connected to this control plane: %w", hostID, errDisconnected)
	}
	rh, remote := a.(*remoteHost)
	if !remote {
		er, ok := a.(agentapi.ExecRunner)
		if !ok {
			return fmt.Errorf("host %s runs no exec sessions", hostID)
		}
		return er.Exec(ctx, runner, c)
	}
	id, w := s.execWait.expect(hostID)
	defer s.execWait.forget(id)
	defer close(w.done)
	if err := rh.send(agentapi.Command{Type: agentapi.CmdExec, Runner: runner,
		Exec: &agentapi.ExecCommand{Session: id, Runner: runner}}); err != nil {
		return err
	}
	t := time.NewTimer(agentapi.ExecDialTimeout + 5*time.Second)
	defer t.Stop()
	select {
	case ac := <-w.conn:
		agentapi.Bridge(ctx, c, ac)
		return nil
	case <-t.C:
		return fmt.Errorf("host %s's agent did not open the session (an agent older than exec sessions, or one that cannot reach this control plane)", hostID)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handleAgentExec takes an agent's dial-back for an exec session.
func (s *Server) handleAgentExec(w http.ResponseWriter, r *http.Request) {
	host, ok := s.authAgent(w, r)
	if !ok {
		return
	}
	wait := s.execWait.take(r.PathValue("session"), host)
	if wait == nil {
		httpError(w, http.StatusNotFound, "no such exec session for this host (expired, or taken)")
		return
	}
	noDeadlines(w)
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered
	}
	wait.conn <- agentapi.WS(ws)
	<-wait.done
}

// noDeadlines lifts the listener's read and write deadlines from a request
// that becomes a long-lived WebSocket.
func noDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
}

// mayDebug reports whether p may open sessions in org's jobs.
func (a *api) mayDebug(p principal, org string) bool {
	if p.admin {
		return true
	}
	if p.orgs == nil || !p.sees(org) {
		return false
	}
	for _, o := range a.debugOrgs {
		if strings.EqualFold(o, org) {
			return true
		}
	}
	return false
}

// debugTarget is the job's runner whose VM a session goes into, or an
// HTTP status and why there is none.
func (a *api) debugTarget(ctx context.Context, p principal, id int64) (store.Job, store.Runner, int, string) {
	var j store.Job
	var r store.Runner
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if j, err = tx.Job(id); err != nil {
			return err
		}
		if j.RunnerName == "" {
			return nil
		}
		r, err = tx.Runner(j.RunnerName)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound) || err == nil && !p.sees(j.Org):
		return j, r, http.StatusNotFound, "no such job"
	case err != nil:
		return j, r, http.StatusInternalServerError, err.Error()
	case !a.mayDebug(p, j.Org):
		return j, r, http.StatusForbidden, "this token may not open sessions in " + j.Org + "'s jobs: an admin token, or a read token of " +
			j.Org + " with " + j.Org + " in the config's debug.orgs, is required"
	case j.RunnerName == "" || r.State == store.RunnerEnded:
		return j, r, http.StatusConflict, fmt.Sprintf("job %d has no running VM (it is %s)", id, j.State)
	case r.State == store.RunnerAssigned || r.State == store.RunnerBooting && r.StartedAt.IsZero():
		return j, r, http.StatusConflict, fmt.Sprintf("job %d's VM is still booting: try again in a moment", id)
	}
	return j, r, 0, ""
}

// handleSSH is GET /api/v1/jobs/{id}/ssh: a WebSocket carrying one exec
// session (agentapi's exec.go) in the job's VM.
func (a *api) handleSSH(w http.ResponseWriter, r *http.Request) {
	p := who(r)
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		httpError(w, http.StatusBadRequest, "job id: want a number")
		return
	}
	j, run, code, why := a.debugTarget(r.Context(), p, id)
	if code != 0 {
		httpError(w, code, why)
		return
	}
	if !a.cp.execs().begin() {
		httpError(w, http.StatusServiceUnavailable, fmt.Sprintf("%d debug sessions are open: try again later", maxDebugSessions))
		return
	}
	defer a.cp.execs().end()
	noDeadlines(w)
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	conn := agentapi.WS(ws)
	by := auditActor{label: p.label, addr: r.RemoteAddr, via: "api"}
	target := fmt.Sprintf("job %d (%s, runner %s on %s)", j.ID, j.Repo, run.Name, run.HostID)
	start := a.now()
	a.audit(r.Context(), by, start, "debug.session.start", target, "ok")
	a.log.Info("debug session opened", "job", j.ID, "runner", run.Name, "host", run.HostID, "by", by.label)
	err = a.cp.execIn(r.Context(), run.HostID, run.Name, conn)
	result := "ok"
	if err != nil {
		result = err.Error()
		agentapi.WriteJSON(r.Context(), conn, agentapi.ExecMsgExit, agentapi.ExecResult{Code: 125, Error: err.Error()})
	}
	conn.Close("session over")
	a.audit(context.WithoutCancel(r.Context()), by, a.now(), "debug.session.end",
		fmt.Sprintf("%s after %s", target, a.now().Sub(start).Round(time.Second)), result)
	a.log.Info("debug session closed", "job", j.ID, "runner", run.Name, "by", by.label, "result", result)
}

// audit appends one entry, outside any other change: result is "ok" or
// why the action failed.
func (a *api) audit(ctx context.Context, by auditActor, at time.Time, action, target, result string) {
	err := a.st.Update(ctx, func(tx store.Tx) error {
		_, err := tx.AppendAudit(by.entry(at, action, target, firstLine(result)))
		return err
	})
	if err != nil {
		a.log.Warn("audit log", "action", action, "err", err)
	}
}

// DebuggableView is a job whose VM a session may go into now.
type DebuggableView struct {
	Job     int64     `json:"job"`
	Repo    string    `json:"repo"`
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Runner  string    `json:"runner"`
	Host    string    `json:"host"`
	Arch    string    `json:"arch"`
	Since   time.Time `json:"since"` // its runner started
	Command string    `json:"command"`
}

// handleDebuggable is GET /api/v1/ssh: the jobs the token may open a
// session in now.
func (a *api) handleDebuggable(w http.ResponseWriter, r *http.Request) {
	p := who(r)
	out := []DebuggableView{}
	err := a.st.View(r.Context(), func(tx store.ReadTx) error {
		out = out[:0]
		runners, err := tx.Runners(store.RunnerFilter{Live: true})
		if err != nil {
			return err
		}
		for _, x := range runners {
			if x.JobID == 0 || x.StartedAt.IsZero() || !a.mayDebug(p, x.Org) {
				continue
			}
			j, err := tx.Job(x.JobID)
			if errors.Is(err, store.ErrNotFound) || err == nil && j.RunnerName != x.Name {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, DebuggableView{Job: j.ID, Repo: j.Repo, Name: j.Name, State: string(j.State), Runner: x.Name,
				Host: x.HostID, Arch: string(x.Arch), Since: x.StartedAt, Command: "tandem ssh " + strconv.FormatInt(j.ID, 10)})
		}
		return nil
	})
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

func (s *Server) execs() *execWaits { return s.execWait }

// Keeping a failed job's VM (debug.keep_failed): a VM that may be kept
// (agentapi.Assignment.MayKeep) waits after its runner's exit for the
// control plane's word. When GitHub reports its job completed, the word
// is sent: keep it until now + keep_failed when the job failed, else let
// it go. Its runner stays live (its capacity counted) until the VM ends;
// the job shows until when it is kept.

// keepFor is how long a failed job of org/repo keeps its VM.
func (s *Server) keepFor(org, repo string) time.Duration {
	if s.cfg.KeepFailed == nil {
		return 0
	}
	return s.cfg.KeepFailed(org, repo)
}

// holder is a host agent that keeps VMs after their jobs.
type holder interface {
	Hold(runner string, until time.Time) error
}

// keepVerdict tells the VM of completed job j whether to stay, in the
// transaction that completes it.
func (s *Server) keepVerdict(tx store.Tx, fx *afterCommit, j store.Job, now time.Time) error {
	if j.RunnerName == "" {
		return nil
	}
	r, err := tx.Runner(j.RunnerName)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil || r.State == store.RunnerEnded || r.JobID != j.ID {
		return err
	}
	var until time.Time
	if j.Conclusion == "failure" || j.Conclusion == "timed_out" {
		if d := s.keepFor(j.Org, j.Repo); d > 0 {
			until = now.Add(d).Truncate(time.Millisecond) // as the store keeps it
		}
	}
	a, local := s.links.agent(r.HostID)
	h, ok := a.(holder)
	if !local || !ok {
		if !until.IsZero() {
			fx.do(func() {
				s.log.Warn("not keeping a failed job's VM: its host's agent is attached to another replica, or keeps none",
					"job", j.ID, "runner", r.Name, "host", r.HostID)
			})
		}
		return nil
	}
	if !until.IsZero() {
		r.KeptUntil, r.UpdatedAt = until, now
		if err := tx.PutRunner(r); err != nil {
			return err
		}
		fx.do(func() {
			s.log.Info("keeping a failed job's VM for debugging", "job", j.ID, "runner", r.Name, "until", until)
		})
	}
	fx.do(func() {
		if err := h.Hold(r.Name, until); err != nil {
			s.log.Warn("telling a host whether to keep a VM", "runner", r.Name, "host", r.HostID, "err", err)
		}
	})
	return nil
}
