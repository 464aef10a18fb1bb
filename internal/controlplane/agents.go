package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/store"
)

// errDisconnected: the host's agent is not connected.
var errDisconnected = errors.New("the host's agent is not connected")

// remoteHost is a connected agent: commands go into its stream.
type remoteHost struct {
	id   string
	cmds chan agentapi.Command
	done chan struct{} // closed when the stream must end (replaced, revoked)
	once sync.Once

	arches []arch.Arch // what it runs: it is told the images of these
}

func newRemoteHost(id string) *remoteHost {
	return &remoteHost{id: id, cmds: make(chan agentapi.Command, 4096), done: make(chan struct{})}
}

func (h *remoteHost) close() { h.once.Do(func() { close(h.done) }) }

func (h *remoteHost) send(c agentapi.Command) error {
	c.SentAt = time.Now()
	select {
	case <-h.done:
		return errDisconnected
	default:
	}
	select {
	case h.cmds <- c:
		return nil
	default:
		return fmt.Errorf("agent %s: command queue full", h.id)
	}
}

func (h *remoteHost) Launch(a agentapi.Assignment) error {
	return h.send(agentapi.Command{Type: agentapi.CmdLaunch, Assignment: &a, Runner: a.Runner})
}

func (h *remoteHost) Configure(runner string, env map[string]string) error {
	return h.send(agentapi.Command{Type: agentapi.CmdConfigure, Runner: runner, Env: env})
}

// Hold tells the agent until when to keep runner's VM after its job.
func (h *remoteHost) Hold(runner string, until time.Time) error {
	return h.send(agentapi.Command{Type: agentapi.CmdHold, Runner: runner, Until: until})
}

func (h *remoteHost) Stop(runner, reason string) error {
	return h.send(agentapi.Command{Type: agentapi.CmdStop, Runner: runner, Reason: reason})
}

var hostIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// AgentHandler serves the agent protocol (package agentapi); mount it on
// the TLS listener.
func (s *Server) AgentHandler() http.Handler {
	mux := http.NewServeMux()
	// The stream stays open; every other request must arrive whole within
	// its deadline, so a slow sender holds nothing for long.
	mux.HandleFunc("POST "+agentapi.PathEnroll, readWithin(30*time.Second, s.handleEnroll))
	mux.HandleFunc("POST "+agentapi.PathStream, s.handleStream)
	mux.HandleFunc("POST "+agentapi.PathReport, readWithin(time.Minute, s.handleReport))
	mux.HandleFunc("POST "+agentapi.PathLogs, readWithin(time.Minute, s.handleAgentLog))
	mux.HandleFunc("GET "+agentapi.PathExec+"{session}", readWithin(30*time.Second, s.handleAgentExec))
	mux.HandleFunc("GET "+agentapi.PathImages+"{id}/manifest", readWithin(30*time.Second, s.handleImageManifest))
	mux.HandleFunc("GET "+agentapi.PathImages+"{id}/files/{name}", readWithin(30*time.Second, s.handleImageFile))
	return mux
}

// readWithin gives a request d from now to arrive in full.
func readWithin(d time.Duration, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		h(w, r)
	}
}

func (s *Server) agentVersionOK(w http.ResponseWriter, r *http.Request) bool {
	if v := r.Header.Get(agentapi.HeaderVersion); v != strconv.Itoa(agentapi.Version) {
		httpError(w, http.StatusUpgradeRequired, fmt.Sprintf(
			"this control plane speaks agent protocol %d and the agent sent %q: run the same Tandem version on both", agentapi.Version, v))
		return false
	}
	return true
}

// authAgent returns the host an agent request comes from, or answers 401.
func (s *Server) authAgent(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !s.agentVersionOK(w, r) {
		return "", false
	}
	host := r.Header.Get(agentapi.HeaderHost)
	secret, ok := bearer(r)
	if !ok || !hostIDPattern.MatchString(host) {
		httpError(w, http.StatusUnauthorized, "agent credentials required")
		return "", false
	}
	var c store.AgentCredential
	err := s.st.View(r.Context(), func(tx store.ReadTx) error {
		var err error
		c, err = tx.AgentCredential(host)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusUnauthorized, "unknown host: enrol it first")
		return "", false
	case err != nil:
		httpError(w, http.StatusServiceUnavailable, "store unavailable")
		return "", false
	case !c.RevokedAt.IsZero():
		httpError(w, http.StatusUnauthorized, "this host was revoked at "+c.RevokedAt.Format(time.RFC3339))
		return "", false
	case !agentapi.SameHash(agentapi.HashSecret(secret), c.Hash):
		httpError(w, http.StatusUnauthorized, "wrong credential for this host")
		return "", false
	}
	return host, true
}

func bearer(r *http.Request) (string, bool) {
	const p = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) <= len(p) || h[:len(p)] != p {
		return "", false
	}
	return h[len(p):], true
}

func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit)).Decode(v); err != nil {
		httpError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	return true
}

func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	if !s.agentVersionOK(w, r) {
		return
	}
	var req agentapi.EnrollRequest
	if !decodeBody(w, r, 64<<10, &req) {
		return
	}
	if !hostIDPattern.MatchString(req.HostID) {
		httpError(w, http.StatusBadRequest, "host id: want 1-63 of [a-z0-9.-], starting with a letter or digit")
		return
	}
	secret, hash, err := agentapi.NewCredential()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "no randomness")
		return
	}
	// A token enrols a new host, or only the host it was issued for; it
	// never takes over a connected host, and only a re-admitting token
	// lifts a revocation. A refusal rolls back: the token stays unspent.
	now := s.now().UTC()
	var refusal *enrolRefusal
	err = s.st.Update(r.Context(), func(tx store.Tx) error {
		refusal = nil
		tok, err := tx.UseEnrollToken(agentapi.HashSecret(req.Token), req.HostID, now)
		if err != nil {
			return err
		}
		cur, err := tx.AgentCredential(req.HostID)
		switch {
		case errors.Is(err, store.ErrNotFound): // a new host
		case err != nil:
			return err
		case !cur.RevokedAt.IsZero() && !tok.Readmit:
			refusal = &enrolRefusal{http.StatusForbidden, fmt.Sprintf("host %s is revoked: only a token made with "+
				"`tandem enroll --host %s --readmit` enrols it again", req.HostID, req.HostID)}
		case cur.RevokedAt.IsZero() && tok.HostID != req.HostID:
			refusal = &enrolRefusal{http.StatusConflict, fmt.Sprintf("host %s is enrolled already: a token for a new host "+
				"cannot enrol it (`tandem enroll --host %s` makes one for it)", req.HostID, req.HostID)}
		case cur.RevokedAt.IsZero() && s.links.streaming(req.HostID):
			refusal = &enrolRefusal{http.StatusConflict, fmt.Sprintf("host %s is connected: stop its agent before enrolling it again", req.HostID)}
		}
		if refusal != nil {
			return refusal
		}
		return tx.PutAgentCredential(store.AgentCredential{HostID: req.HostID, Hash: hash, CreatedAt: now})
	})
	if refusal != nil {
		s.log.Warn("enrolment refused", "host", req.HostID, "remote", r.RemoteAddr, "why", refusal.msg)
		httpError(w, refusal.code, refusal.msg)
		return
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrTokenSpent) || errors.Is(err, store.ErrTokenHost) {
		s.log.Warn("enrolment refused", "host", req.HostID, "remote", r.RemoteAddr, "err", err)
		msg := "enrolment token unknown, already used or expired"
		if errors.Is(err, store.ErrTokenHost) {
			msg = "this enrolment token was issued for another host"
		}
		httpError(w, http.StatusUnauthorized, msg)
		return
	}
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	s.log.Info("host enrolled", "host", req.HostID, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, agentapi.EnrollResponse{HostID: req.HostID, Credential: secret})
}

// enrolRefusal is why an enrolment with a valid token is refused.
type enrolRefusal struct {
	code int
	msg  string
}

func (e *enrolRefusal) Error() string { return e.msg }

// agentRequest authenticates an agent's request and decodes its body, of
// at most limit bytes, into a T. When it fails it has answered.
func agentRequest[T any](s *Server, w http.ResponseWriter, r *http.Request, limit int64) (string, T, bool) {
	var v T
	id, ok := s.authAgent(w, r)
	if !ok || !decodeBody(w, r, limit, &v) {
		return "", v, false
	}
	return id, v, true
}

// handleStream attaches the agent and streams its commands until it goes.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	id, hello, ok := agentRequest[agentapi.Hello](s, w, r, 1<<20)
	if !ok {
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		httpError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	rh := newRemoteHost(id)
	for _, a := range hello.Capacity.Arches {
		rh.arches = append(rh.arches, a.Arch)
	}
	s.links.openStream(rh, s.now())
	if s.cfg.Images != nil {
		// First on the stream: the images it may be asked to boot.
		s.imgMu.RLock()
		rh.send(s.imagesCommand(rh.arches))
		s.imgMu.RUnlock()
	}
	h := HostRecord(id, hello.AgentVersion, hello.Capacity)
	if err := s.AttachHost(r.Context(), h, rh, hello.Inventory); err != nil {
		s.links.closeStream(rh)
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer s.links.closeStream(rh)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	ping := time.NewTicker(agentapi.PingInterval)
	defer ping.Stop()
	write := func(c agentapi.Command) bool {
		rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if err := enc.Encode(c); err != nil {
			return false
		}
		flusher.Flush()
		return true
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-rh.done:
			return
		case c := <-rh.cmds:
			if !write(c) {
				return
			}
		case <-ping.C:
			if !write(agentapi.Command{Type: agentapi.CmdPing, SentAt: time.Now()}) {
				return
			}
		}
	}
}

func (s *Server) handleReport(w http.ResponseWriter, r *http.Request) {
	id, rep, ok := agentRequest[agentapi.Report](s, w, r, 8<<20)
	if !ok {
		return
	}
	if rep.Heartbeat != nil {
		s.links.heard(id, *rep.Heartbeat, s.now())
	}
	s.HostSamples(id, rep.Samples) // an agent speaks for its own host only
	for i := range rep.Events {
		rep.Events[i].Host = id // an agent speaks for its own host only
	}
	// The answer says the events are applied, not only received: the
	// agent forgets a runner's end once it has it, so a control plane
	// that restarts must have it in its store. Events not applied in
	// time stay queued here, and the agent sends them again (applying an
	// event twice changes nothing).
	t := time.NewTimer(reportApplyWait)
	defer t.Stop()
	select {
	case <-s.HostEvents(rep.Events...):
		w.WriteHeader(http.StatusNoContent)
	case <-t.C:
		httpError(w, http.StatusServiceUnavailable, "the events are not applied yet: send them again")
	case <-r.Context().Done():
	}
}

// reportApplyWait bounds how long a report waits for its events to be
// applied; agents give a report 10 s.
const reportApplyWait = 5 * time.Second

// maxRunnerLog caps one runner's log kept by the control plane.
const maxRunnerLog = 16 << 20

func (s *Server) handleAgentLog(w http.ResponseWriter, r *http.Request) {
	id, ok := s.authAgent(w, r)
	if !ok {
		return
	}
	name := r.URL.Query().Get("runner")
	rec, err := s.runnerRecord(r.Context(), name)
	if err != nil || rec.HostID != id {
		httpError(w, http.StatusNotFound, "no such runner on this host")
		return
	}
	if s.cfg.LogDir == "" {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	p := filepath.Join(s.cfg.LogDir, name+".log")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "log file")
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	left := int64(maxRunnerLog)
	if st != nil {
		left -= st.Size()
	}
	if left > 0 {
		io.Copy(f, io.LimitReader(http.MaxBytesReader(w, r.Body, 4<<20), left))
	}
	w.WriteHeader(http.StatusNoContent)
}

// hostMonitor marks hosts offline whose agent missed its heartbeats: their
// waiting jobs go elsewhere and their running jobs are reported lost.
func (s *Server) hostMonitor(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatTimeout / 5)
	defer t.Stop()
	reason := fmt.Sprintf("no heartbeat for %s", s.cfg.HeartbeatTimeout)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// The streams held here that fell silent: out of the fleet, unless
		// the agent is with another replica now.
		silent := s.links.silent(s.now().Add(-s.cfg.HeartbeatTimeout))
		for _, id := range silent {
			mine := func(h store.Host) bool { return h.Replica == "" || h.Replica == s.cfg.Replica }
			if err := s.hostLeft(ctx, id, failure.HostOffline, reason, mine); err != nil && ctx.Err() == nil {
				s.log.Error("marking host offline", "host", id, "err", err)
			}
		}
		if err := s.touchHosts(ctx, silent); err != nil && ctx.Err() == nil {
			s.log.Warn("recording the hosts this replica holds as seen", "err", err)
		}
		// The leader's: hosts no replica has seen within the timeout.
		leading, _, since := s.lead.get()
		if !leading {
			continue
		}
		ids, err := s.staleHosts(ctx, since)
		if err != nil && ctx.Err() == nil {
			s.log.Error("looking for silent hosts", "err", err)
		}
		for _, id := range ids {
			cutoff := s.now().Add(-s.cfg.HeartbeatTimeout)
			stale := func(h store.Host) bool { return h.State != store.HostOffline && h.LastSeen.Before(cutoff) }
			if err := s.hostLeft(ctx, id, failure.HostOffline, reason, stale); err != nil && ctx.Err() == nil {
				s.log.Error("marking host offline", "host", id, "err", err)
			}
		}
	}
}

// hostGone takes a host out of the fleet: offline in the store, its stream
// closed, its live runners ended with failure (their waiting jobs are placed
// again; running jobs are lost).
func (s *Server) hostGone(ctx context.Context, id string, kind failure.Kind, reason string) error {
	return s.hostLeft(ctx, id, kind, reason, nil)
}

// hostLeft is hostGone if cond (nil: always) holds for the host's record
// in the transaction that marks it offline; otherwise it only closes this
// replica's stream of the host.
func (s *Server) hostLeft(ctx context.Context, id string, kind failure.Kind, reason string, cond func(store.Host) bool) error {
	s.links.forget(id)
	did, err := s.detach(ctx, id, reason, cond)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err == nil && !did {
		return nil
	}
	var live []store.Runner
	if err := s.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		live, err = tx.Runners(store.RunnerFilter{HostID: id, Live: true})
		return err
	}); err != nil {
		return err
	}
	s.log.Warn("host left the fleet", "host", id, "reason", reason, "runners", len(live))
	for _, r := range live {
		s.HostEvent(agentapi.Event{Host: id, Runner: r.Name, Kind: agentapi.EventEnded, Failure: kind,
			Detail: "host " + id + ": " + reason})
	}
	// A runner of the gone host may still be alive out there (a revoked
	// host is not a dead one) and would take whichever job GitHub offers
	// it: its registration goes now, not when the orphan reconciler comes
	// by. GitHub refuses (422) for a runner running a job, which that
	// job's own end settles; the reconciler retries any other failure.
	for _, r := range live {
		if r.GitHubID == 0 {
			continue
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		err := s.gh.DeleteRunner(dctx, r.Installation, runnerScope(r), r.GitHubID)
		cancel()
		if err != nil && !errors.Is(err, github.ErrNotFound) {
			s.log.Warn("deleting a gone host's runner registration (the orphan reconciler will retry)",
				"host", id, "runner", r.Name, "err", err)
		}
	}
	s.kickPlacement()
	return nil
}

// HostRecord is the store's record of a host that offers c (what AttachHost
// takes).
func HostRecord(id, version string, c agentapi.Capacity) store.Host {
	h := store.Host{ID: id, Version: version, VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB, DiskMiB: int(c.DiskMiB)}
	for _, a := range c.Arches {
		h.Arches = append(h.Arches, store.ArchSupport{Arch: a.Arch, Emulated: a.Emulated})
	}
	return h
}
