package controlplane

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// auditActor is who asked for an operator action: their token's label
// (TokenLabel, never the token), their address and the way they came
// ("api" or "dashboard").
type auditActor struct {
	label, addr, via string
}

// record appends an entry for action on target to the audit log, in tx:
// the action and its record commit together or not at all.
func (by auditActor) record(tx store.Tx, at time.Time, action, target string) error {
	_, err := tx.AppendAudit(by.entry(at, action, target, "ok"))
	return err
}

// entry is by's audit entry for action on target, with its result ("ok",
// or why it failed).
func (by auditActor) entry(at time.Time, action, target, result string) store.AuditEntry {
	label := by.label
	if label == "" {
		label = "unknown"
	}
	return store.AuditEntry{At: at, Actor: label, Action: action, Target: target, Addr: by.addr, Via: by.via, Result: result}
}

// AuditView is an audit entry as the API shows it.
type AuditView struct {
	Seq    int64     `json:"seq"`
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target,omitempty"`
	Addr   string    `json:"addr,omitempty"`
	Via    string    `json:"via,omitempty"`
	Result string    `json:"result,omitempty"`
}

// handleAudit lists the audit log, newest first: ?limit= (default 100, at
// most 1000) and ?before=SEQ to page. Admin tokens only: the log names
// addresses and every operator action.
func (a *api) handleAudit(w http.ResponseWriter, r *http.Request) {
	if !who(r).admin {
		httpError(w, http.StatusForbidden, "the audit log needs an admin token")
		return
	}
	f := store.AuditFilter{Limit: 100}
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			httpError(w, http.StatusBadRequest, "limit: want 1 to 1000")
			return
		}
		f.Limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "before: want a positive integer")
			return
		}
		f.Before = n
	}
	es, err := a.auditLog(r.Context(), f)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]AuditView, 0, len(es))
	for _, e := range es {
		out = append(out, AuditView(e))
	}
	writeJSON(w, http.StatusOK, map[string]any{"audit": out})
}

// auditLog reads the audit log (the API and the dashboard).
func (a *api) auditLog(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	var es []store.AuditEntry
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		es, err = tx.Audit(f)
		return err
	})
	return es, err
}
