package sqlstore

import (
	"fmt"

	"github.com/tandem-ci/tandem/internal/store"
)

// The audit log (migration 0012).

func (t *readTx) Audit(f store.AuditFilter) ([]store.AuditEntry, error) {
	if f.Limit < 0 || f.Before < 0 {
		return nil, fmt.Errorf("%w: audit filter: limit %d, before %d", store.ErrInvalid, f.Limit, f.Before)
	}
	w := where{d: t.d}
	if f.Before > 0 {
		w.add("seq < ?", f.Before)
	}
	q := "SELECT seq, at, actor, action, target, addr, via, result FROM audit_log" + w.String() + " ORDER BY seq DESC"
	if f.Limit > 0 {
		q += " LIMIT ?"
		w.args = append(w.args, f.Limit)
	}
	rows, err := t.query(q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	es, err := collect(rows, func(sc scanner) (store.AuditEntry, error) {
		var e store.AuditEntry
		var at int64
		err := sc.Scan(&e.Seq, &at, &e.Actor, &e.Action, &e.Target, &e.Addr, &e.Via, &e.Result)
		e.At = timeOf(at)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return es, nil
}

func (t *writeTx) AppendAudit(e store.AuditEntry) (int64, error) {
	if e.At.IsZero() || e.Actor == "" || e.Action == "" {
		return 0, fmt.Errorf("%w: audit entry needs a time, an actor and an action", store.ErrInvalid)
	}
	var seq int64
	err := t.queryRow(
		"INSERT INTO audit_log (at, actor, action, target, addr, via, result) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
		msOf(e.At), e.Actor, e.Action, e.Target, e.Addr, e.Via, e.Result).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append audit entry: %w", err)
	}
	return seq, nil
}
