package controlplane

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/store"
)

// opsRoutes adds the operator endpoints to mux:
//
//	POST /api/v1/hosts/{id}/drain     no new VMs; running ones finish
//	POST /api/v1/hosts/{id}/cordon    no new VMs, until uncordoned
//	POST /api/v1/hosts/{id}/uncordon  back to online
//	POST /api/v1/hosts/{id}/revoke    refuse its agent from now on; its VMs' jobs are re-placed or lost
//	POST /api/v1/enroll-tokens        {"ttl":"1h","comment":"..."} → {"token","expires_at"}
//	GET  /api/v1/jobs/{id}/log        the job's runner output
//	POST /api/v1/jobs/{id}/retry      queue an unmatched job again (its runner group was fixed)
func (a *api) opsRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/hosts/{id}/{action}", a.guard(true, a.handleHostAction))
	mux.HandleFunc("POST /api/v1/enroll-tokens", a.guard(true, a.handleEnrollToken))
	mux.HandleFunc("GET /api/v1/jobs/{id}/log", a.guard(false, a.handleJobLog))
	mux.HandleFunc("POST /api/v1/jobs/{id}/retry", a.guard(true, a.handleJobRetry))
}

func (a *api) handleHostAction(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	now := a.now().UTC()
	by := auditActor{label: who(r).label, addr: r.RemoteAddr, via: "api"}
	if action == "revoke" {
		err := a.st.Update(r.Context(), func(tx store.Tx) error {
			if err := tx.RevokeAgent(id, now); err != nil {
				return err
			}
			return by.record(tx, now, "host.revoke", id)
		})
		if storeFailed(w, err, "no enrolled host "+strconv.Quote(id)) {
			return
		}
		if err := a.cp.hostGone(r.Context(), id, failure.HostRevoked, "revoked by an operator"); err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		a.log.Warn("host revoked", "host", id, "by", r.RemoteAddr)
		writeJSON(w, http.StatusOK, map[string]string{"host": id, "state": string(store.HostOffline)})
		return
	}
	to, err := a.setHostState(r.Context(), id, action, by)
	switch {
	case errors.Is(err, errUnknownAction):
		httpError(w, http.StatusNotFound, "unknown action "+strconv.Quote(action)+" (drain, cordon, uncordon, revoke)")
		return
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusNotFound, "no host "+strconv.Quote(id))
		return
	case errors.Is(err, errOffline):
		httpError(w, http.StatusConflict, "host "+id+" is offline")
		return
	case err != nil:
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"host": id, "state": string(to)})
}

var (
	errOffline       = errors.New("host offline")
	errUnknownAction = errors.New("unknown host action")
)

// setHostState drains, cordons or uncordons host id (action) for by: the
// change and its audit entry commit together, then placement runs again.
func (a *api) setHostState(ctx context.Context, id, action string, by auditActor) (store.HostState, error) {
	to := map[string]store.HostState{"drain": store.HostDraining, "cordon": store.HostCordoned, "uncordon": store.HostOnline}[action]
	if to == "" {
		return "", errUnknownAction
	}
	now := a.now().UTC()
	err := a.st.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Host(id)
		if err != nil {
			return err
		}
		if h.State == store.HostOffline {
			return errOffline
		}
		h.State, h.Reason = to, action+" by an operator at "+now.Format(time.RFC3339)
		if to == store.HostOnline {
			h.Reason = ""
		}
		if err := tx.PutHost(h); err != nil {
			return err
		}
		return by.record(tx, now, "host."+action, id)
	})
	if err != nil {
		return "", err
	}
	a.log.Info("host state changed by an operator", "host", id, "state", to, "by", by.label, "via", by.via)
	a.cp.kickPlacement()
	return to, nil
}

func (a *api) handleEnrollToken(w http.ResponseWriter, r *http.Request) {
	if a.agentPin == "" {
		httpError(w, http.StatusConflict, "this control plane has no agent listener (agents.listen)")
		return
	}
	var req struct {
		TTL     string `json:"ttl"`
		Comment string `json:"comment"`
		Host    string `json:"host"`    // enrol only this host id (again)
		Readmit bool   `json:"readmit"` // and though it was revoked
	}
	if r.ContentLength != 0 && !decodeBody(w, r, 64<<10, &req) {
		return
	}
	ttl := time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > 7*24*time.Hour {
			httpError(w, http.StatusBadRequest, "ttl: want a duration up to 168h")
			return
		}
		ttl = d
	}
	if req.Host != "" && !hostIDPattern.MatchString(req.Host) {
		httpError(w, http.StatusBadRequest, "host: want 1-63 of [a-z0-9.-], starting with a letter or digit")
		return
	}
	if req.Readmit && req.Host == "" {
		httpError(w, http.StatusBadRequest, "readmit: name the host to re-admit (host)")
		return
	}
	token, hash, err := agentapi.NewEnrollToken(a.agentPin)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "no randomness")
		return
	}
	now := a.now().UTC()
	t := store.EnrollToken{Hash: hash, CreatedAt: now, ExpiresAt: now.Add(ttl), Comment: req.Comment,
		HostID: req.Host, Readmit: req.Readmit}
	if err := a.st.Update(r.Context(), func(tx store.Tx) error { return tx.CreateEnrollToken(t) }); err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	a.log.Info("enrolment token issued", "expires", t.ExpiresAt, "comment", req.Comment, "host", req.Host, "readmit", req.Readmit)
	writeJSON(w, http.StatusCreated, map[string]any{"token": token, "expires_at": t.ExpiresAt})
}

func (a *api) handleJobLog(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		httpError(w, http.StatusBadRequest, "job id: want an integer")
		return
	}
	f, err := a.openJobLog(r.Context(), who(r), id)
	if err != nil {
		httpError(w, http.StatusNotFound, err.Error())
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.Copy(w, f)
}

// openJobLog opens the runner log of job id, if p may see the job; its
// errors are fit to show.
func (a *api) openJobLog(ctx context.Context, p principal, id int64) (*os.File, error) {
	var j store.Job
	if err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		j, err = tx.Job(id)
		return err
	}); err != nil || !p.sees(j.Org) {
		return nil, errors.New("no such job")
	}
	if j.RunnerName == "" || a.logDir == "" {
		return nil, errors.New("no runner log for this job")
	}
	f, err := os.Open(filepath.Join(a.logDir, filepath.Base(j.RunnerName)+".log"))
	if err != nil {
		return nil, errors.New("no runner log for this job (runner " + j.RunnerName + ")")
	}
	return f, nil
}

func (a *api) handleJobRetry(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		httpError(w, http.StatusBadRequest, "job id: want a positive integer")
		return
	}
	j, err := a.cp.retryJob(r.Context(), id, r.RemoteAddr)
	var notUnmatched *errNotUnmatched
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpError(w, http.StatusNotFound, "no job "+strconv.FormatInt(id, 10))
		return
	case errors.As(err, &notUnmatched):
		httpError(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": j.ID, "state": j.State, "reason": j.Reason})
}
