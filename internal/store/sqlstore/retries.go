package sqlstore

import (
	"fmt"
	"strconv"

	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/store"
)

// Retries of lost jobs (migration SQLite 0021, PostgreSQL 0006).

const retryCols = "job_id, installation, org, repo, run_id, name, cause, state, detail, tries, next_at, created_at, updated_at"

func (t *readTx) Retries(f store.RetryFilter) ([]store.Retry, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("%w: retry filter: limit %d", store.ErrInvalid, f.Limit)
	}
	w := where{d: t.d}
	if err := in(&w, "job_id", f.JobIDs); err != nil {
		return nil, fmt.Errorf("list retries: %w", err)
	}
	if err := in(&w, "state", f.States); err != nil {
		return nil, fmt.Errorf("list retries: %w", err)
	}
	if !f.DueBy.IsZero() {
		w.add("next_at <= ?", msOf(f.DueBy))
	}
	if f.Repo != "" {
		w.add(t.d.nocase("repo"), f.Repo)
	}
	if f.RunID != 0 {
		w.add("run_id = ?", f.RunID)
	}
	if f.Name != "" {
		w.add("name = ?", f.Name)
	}
	q := "SELECT " + retryCols + " FROM job_retries" + w.String() + " ORDER BY created_at, job_id"
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	rows, err := t.query(q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("list retries: %w", err)
	}
	rs, err := collect(rows, func(sc scanner) (store.Retry, error) {
		var r store.Retry
		var cause, state string
		var next, created, updated int64
		err := sc.Scan(&r.JobID, &r.Installation, &r.Org, &r.Repo, &r.RunID, &r.Name, &cause, &state,
			&r.Detail, &r.Tries, &next, &created, &updated)
		r.Cause, r.State = failure.Kind(cause), store.RetryState(state)
		r.NextAt, r.CreatedAt, r.UpdatedAt = timeOf(next), timeOf(created), timeOf(updated)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list retries: %w", err)
	}
	return rs, nil
}

func checkRetry(r store.Retry) error {
	if r.JobID <= 0 || r.Repo == "" || r.RunID <= 0 || r.Cause == failure.None || !r.State.Valid() {
		return fmt.Errorf("%w: retry of job %d (%s, run %d, cause %q, state %q): needs a job, a repository, a run, a cause and a state",
			store.ErrInvalid, r.JobID, r.Repo, r.RunID, r.Cause, r.State)
	}
	return nil
}

func (t *writeTx) AddRetry(r store.Retry) (bool, error) {
	if err := checkRetry(r); err != nil {
		return false, err
	}
	res, err := t.exec("INSERT INTO job_retries ("+retryCols+") VALUES ("+placeholders(13)+") ON CONFLICT DO NOTHING",
		r.JobID, r.Installation, r.Org, r.Repo, r.RunID, r.Name, string(r.Cause), string(r.State),
		r.Detail, r.Tries, msOf(r.NextAt), msOf(r.CreatedAt), msOf(r.UpdatedAt))
	if err != nil {
		return false, fmt.Errorf("add retry of job %d: %w", r.JobID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("add retry of job %d: %w", r.JobID, err)
	}
	return n == 1, nil
}

func (t *writeTx) PutRetry(r store.Retry) error {
	if err := checkRetry(r); err != nil {
		return err
	}
	res, err := t.exec(`UPDATE job_retries SET installation = ?, org = ?, repo = ?, run_id = ?, name = ?, cause = ?,
		state = ?, detail = ?, tries = ?, next_at = ?, created_at = ?, updated_at = ? WHERE job_id = ?`,
		r.Installation, r.Org, r.Repo, r.RunID, r.Name, string(r.Cause), string(r.State),
		r.Detail, r.Tries, msOf(r.NextAt), msOf(r.CreatedAt), msOf(r.UpdatedAt), r.JobID)
	if err != nil {
		return fmt.Errorf("put retry of job %d: %w", r.JobID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("put retry of job %d: %w", r.JobID, err)
	} else if n == 0 {
		return fmt.Errorf("retry of job %d: %w", r.JobID, store.ErrNotFound)
	}
	return nil
}
