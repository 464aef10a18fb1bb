package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// readTx implements store.ReadTx on a transaction.
type readTx struct {
	ctx context.Context
	q   Querier
	d   Dialect
}

// writeTx implements store.Tx on a write transaction.
type writeTx struct {
	readTx
}

var (
	_ store.ReadTx = (*readTx)(nil)
	_ store.Tx     = (*writeTx)(nil)
)

// where accumulates the conditions of a filtered query.
type where struct {
	d     Dialect
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

// orgScope keeps the rows whose col is one of orgs, compared without case
// (an API token's scope); nil orgs keeps every row, an empty list none.
func (w *where) orgScope(col string, orgs []string) error {
	if orgs == nil {
		return nil
	}
	if len(orgs) == 0 {
		w.add("1 = 0")
		return nil
	}
	lower := make([]string, len(orgs))
	for i, o := range orgs {
		lower[i] = strings.ToLower(o)
	}
	return in(w, "lower("+col+")", lower)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

func (t *readTx) Job(id int64) (store.Job, error) {
	j, err := scanJob(t.queryRow("SELECT "+jobCols+" FROM jobs WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Job{}, fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("get job %d: %w", id, err)
	}
	return j, nil
}

func (t *readTx) Jobs(f store.JobFilter) ([]store.Job, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("%w: job filter: limit %d", store.ErrInvalid, f.Limit)
	}
	w := where{d: t.d}
	if err := in(&w, "id", f.IDs); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	if err := in(&w, "state", f.States); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	for _, c := range []struct{ col, v string }{
		{"org", f.Org}, {"repo", f.Repo}, {"runner_name", f.RunnerName}, {"label_key", f.LabelKey}, {"head_sha", f.HeadSHA},
	} {
		if c.v == "" {
			continue
		}
		if c.col == "org" || c.col == "repo" {
			w.add(t.d.nocase(c.col), c.v)
		} else {
			w.add(c.col+" = ?", c.v)
		}
	}
	if f.Arch != "" {
		w.add("arch = ?", string(f.Arch))
	}
	if !f.QueuedSince.IsZero() {
		w.add("queued_at >= ?", msOf(f.QueuedSince))
	}
	if f.Offset < 0 {
		return nil, fmt.Errorf("%w: job filter: offset %d", store.ErrInvalid, f.Offset)
	}
	if err := w.orgScope("org", f.Orgs); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	q := "SELECT " + jobCols + " FROM jobs" + w.String()
	if f.Newest {
		q += " ORDER BY queued_at DESC, id DESC"
	} else {
		q += " ORDER BY id"
	}
	if f.Limit > 0 || f.Offset > 0 {
		lim := t.d.noLimit()
		if f.Limit > 0 {
			lim = strconv.Itoa(f.Limit)
		}
		q += " LIMIT " + lim + " OFFSET ?"
		w.args = append(w.args, f.Offset)
	}
	rows, err := t.query(q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	js, err := collect(rows, scanJob)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return js, nil
}

func (t *readTx) CountQueuedSince(since time.Time, orgs []string) (int, error) {
	w := where{d: t.d}
	w.add("queued_at >= ?", msOf(since))
	if err := w.orgScope("org", orgs); err != nil {
		return 0, fmt.Errorf("count jobs: %w", err)
	}
	var n int
	if err := t.queryRow("SELECT count(*) FROM jobs"+w.String(), w.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count jobs: %w", err)
	}
	return n, nil
}

func (t *readTx) CountJobs() (map[store.JobState]int, error) {
	rows, err := t.query("SELECT state, count(*) FROM jobs GROUP BY state")
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	defer rows.Close()
	out := make(map[store.JobState]int)
	for rows.Next() {
		var (
			state string
			n     int
		)
		if err := rows.Scan(&state, &n); err != nil {
			return nil, fmt.Errorf("count jobs: %w", err)
		}
		out[store.JobState(state)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	return out, nil
}

func (t *readTx) JobEvents(jobID int64) ([]store.JobEvent, error) {
	rows, err := t.query("SELECT "+eventCols+" FROM job_events WHERE job_id = ? ORDER BY seq", jobID)
	if err != nil {
		return nil, fmt.Errorf("job %d events: %w", jobID, err)
	}
	evs, err := collect(rows, scanEvent)
	if err != nil {
		return nil, fmt.Errorf("job %d events: %w", jobID, err)
	}
	return evs, nil
}

func (t *readTx) Runner(name string) (store.Runner, error) {
	r, err := scanRunner(t.queryRow("SELECT "+runnerCols+" FROM runners WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Runner{}, fmt.Errorf("runner %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return store.Runner{}, fmt.Errorf("get runner %s: %w", name, err)
	}
	return r, nil
}

func (t *readTx) Runners(f store.RunnerFilter) ([]store.Runner, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("%w: runner filter: limit %d", store.ErrInvalid, f.Limit)
	}
	w := where{d: t.d}
	if err := in(&w, "name", f.Names); err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	if err := in(&w, "state", f.States); err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	if f.HostID != "" {
		w.add("host_id = ?", f.HostID)
	}
	if f.JobID != 0 {
		w.add("job_id = ?", f.JobID)
	}
	if f.LabelKey != "" {
		w.add("label_key = ?", f.LabelKey)
	}
	if f.Pool != "" {
		w.add("pool = ?", f.Pool)
	}
	if f.Live {
		w.add("state <> ?", string(store.RunnerEnded))
	}
	q := "SELECT " + runnerCols + " FROM runners" + w.String() + " ORDER BY name"
	if f.Limit > 0 {
		q += " LIMIT ?"
		w.args = append(w.args, f.Limit)
	}
	rows, err := t.query(q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	rs, err := collect(rows, scanRunner)
	if err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	return rs, nil
}

func (t *readTx) Host(id string) (store.Host, error) {
	h, err := scanHost(t.queryRow("SELECT "+hostCols+" FROM hosts WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Host{}, fmt.Errorf("host %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Host{}, fmt.Errorf("get host %s: %w", id, err)
	}
	return h, nil
}

func (t *readTx) Hosts() ([]store.Host, error) {
	rows, err := t.query("SELECT " + hostCols + " FROM hosts ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	hs, err := collect(rows, scanHost)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return hs, nil
}

func (t *readTx) Repos(since time.Time) ([]store.Repo, error) {
	rows, err := t.query(`SELECT full_name, installation, last_active FROM repos WHERE last_active >= ?
			AND installation NOT IN (SELECT id FROM installations WHERE state != 'active')
			ORDER BY full_name`,
		msOf(since))
	if err != nil {
		return nil, fmt.Errorf("list repos: %w", err)
	}
	rs, err := collect(rows, scanRepo)
	if err != nil {
		return nil, fmt.Errorf("list repos: %w", err)
	}
	return rs, nil
}

func (t *readTx) Counters() (map[string]int64, error) {
	rows, err := t.query("SELECT name, value FROM counters")
	if err != nil {
		return nil, fmt.Errorf("counters: %w", err)
	}
	defer rows.Close()
	out := make(map[string]int64)
	for rows.Next() {
		var (
			name string
			v    int64
		)
		if err := rows.Scan(&name, &v); err != nil {
			return nil, fmt.Errorf("counters: %w", err)
		}
		out[name] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("counters: %w", err)
	}
	return out, nil
}

func (t *readTx) Delivery(guid string) (store.Delivery, error) {
	d, err := scanDelivery(t.queryRow("SELECT "+deliveryCols+" FROM deliveries WHERE guid = ?", guid))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Delivery{}, fmt.Errorf("delivery %s: %w", guid, store.ErrNotFound)
	}
	if err != nil {
		return store.Delivery{}, fmt.Errorf("get delivery %s: %w", guid, err)
	}
	return d, nil
}

// jobState returns the stored state of job id.
func (t *writeTx) jobState(id int64) (store.JobState, error) {
	var s string
	err := t.queryRow("SELECT state FROM jobs WHERE id = ?", id).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("job %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("get job %d: %w", id, err)
	}
	return store.JobState(s), nil
}

func (t *writeTx) addEvent(j store.Job, from store.JobState, ev store.Event) error {
	_, err := t.exec(`INSERT INTO job_events
		(job_id, at, from_state, to_state, source, reason, runner, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, msOf(j.UpdatedAt), string(from), string(j.State), ev.Source, ev.Reason, j.RunnerName, j.HostID)
	if err != nil {
		return fmt.Errorf("job %d: record event: %w", j.ID, err)
	}
	return nil
}

func (t *writeTx) CreateJob(j store.Job, ev store.Event) error {
	if err := j.Validate(); err != nil {
		return err
	}
	args, err := jobArgs(j)
	if err != nil {
		return err
	}
	res, err := t.exec("INSERT INTO jobs ("+jobCols+") VALUES ("+
		placeholders(len(args))+") ON CONFLICT (id) DO NOTHING", args...)
	if err != nil {
		return fmt.Errorf("create job %d: %w", j.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("create job %d: %w", j.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("job %d: %w", j.ID, store.ErrExists)
	}
	if j.State.Terminal() {
		if err := t.addJobStats(j, 1); err != nil {
			return err
		}
	}
	return t.addEvent(j, "", ev)
}

// updateJobSQL sets every column of jobCols but the id.
var updateJobSQL = func() string {
	cols := strings.Split(jobCols, ",")
	set := make([]string, 0, len(cols)-1)
	for _, c := range cols[1:] {
		set = append(set, strings.TrimSpace(c)+" = ?")
	}
	return "UPDATE jobs SET " + strings.Join(set, ", ") + " WHERE id = ?"
}()

func (t *writeTx) UpdateJob(j store.Job, ev store.Event) error {
	if err := j.Validate(); err != nil {
		return err
	}
	from, err := t.jobState(j.ID)
	if err != nil {
		return err
	}
	if !store.CanTransition(from, j.State) {
		return fmt.Errorf("job %d: %s to %s: %w", j.ID, from, j.State, store.ErrBadTransition)
	}
	// Statistics count a job once it has ended, and no more once it is
	// opened again.
	if from.Terminal() && !j.State.Terminal() {
		old, err := t.Job(j.ID)
		if err != nil {
			return err
		}
		if err := t.addJobStats(old, -1); err != nil {
			return err
		}
	}
	args, err := jobArgs(j)
	if err != nil {
		return err
	}
	// args[0] is the id: set the other columns, match on it.
	if _, err := t.exec(updateJobSQL, append(args[1:], j.ID)...); err != nil {
		return fmt.Errorf("update job %d: %w", j.ID, err)
	}
	if !from.Terminal() && j.State.Terminal() {
		if err := t.addJobStats(j, 1); err != nil {
			return err
		}
	}
	return t.addEvent(j, from, ev)
}

var (
	upsertRunnerSQL = upsert("runners", runnerCols, "name")
	upsertHostSQL   = upsert("hosts", hostCols, "id")
)

func (t *writeTx) PutRunner(r store.Runner) error {
	if err := r.Validate(); err != nil {
		return err
	}
	var cur string
	err := t.queryRow("SELECT state FROM runners WHERE name = ?", r.Name).Scan(&cur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("put runner %s: %w", r.Name, err)
	case store.RunnerState(cur) == store.RunnerEnded && r.State != store.RunnerEnded:
		return fmt.Errorf("runner %s: ended, cannot become %s: %w", r.Name, r.State, store.ErrBadTransition)
	}
	args, err := runnerArgs(r)
	if err != nil {
		return err
	}
	if _, err := t.exec(upsertRunnerSQL, args...); err != nil {
		return fmt.Errorf("put runner %s: %w", r.Name, err)
	}
	return nil
}

func (t *writeTx) PutHost(h store.Host) error {
	if err := h.Validate(); err != nil {
		return err
	}
	args, err := hostArgs(h)
	if err != nil {
		return err
	}
	if _, err := t.exec(upsertHostSQL, args...); err != nil {
		return fmt.Errorf("put host %s: %w", h.ID, err)
	}
	return nil
}

// TouchRepo implements store.Tx. The installation recorded is the one given
// with the latest activity.
func (t *writeTx) TouchRepo(fullName string, installation int64, at time.Time) error {
	if !strings.Contains(fullName, "/") || at.IsZero() {
		return fmt.Errorf("%w: touch repository %q at %v", store.ErrInvalid, fullName, at)
	}
	if _, err := t.exec(`INSERT INTO repos (full_name, installation, last_active) VALUES (?, ?, ?)
		ON CONFLICT (full_name) DO UPDATE SET
			installation = excluded.installation,
			last_active  = excluded.last_active
		WHERE excluded.last_active >= repos.last_active`,
		fullName, installation, msOf(at)); err != nil {
		return fmt.Errorf("touch repository %s: %w", fullName, err)
	}
	return nil
}

// RemoveRepo implements store.Tx.
func (t *writeTx) RemoveRepo(fullName string) error {
	if _, err := t.exec("DELETE FROM repos WHERE "+t.d.nocase("full_name"), fullName); err != nil {
		return fmt.Errorf("remove repository %s: %w", fullName, err)
	}
	return nil
}

// PutInstallation implements store.Tx.
func (t *writeTx) PutInstallation(i store.Installation) error {
	if err := i.Validate(); err != nil {
		return err
	}
	if _, err := t.exec(`INSERT INTO installations (id, account, state, reason, updated_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET account = excluded.account,
		state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at`,
		i.ID, i.Account, string(i.State), i.Reason, msOf(i.UpdatedAt)); err != nil {
		return fmt.Errorf("put installation %d: %w", i.ID, err)
	}
	return nil
}

// Installation implements store.ReadTx.
func (t *readTx) Installation(id int64) (store.Installation, error) {
	var (
		i     store.Installation
		state string
		at    int64
	)
	err := t.queryRow("SELECT id, account, state, reason, updated_at FROM installations WHERE id = ?", id).
		Scan(&i.ID, &i.Account, &state, &i.Reason, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Installation{}, fmt.Errorf("installation %d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Installation{}, fmt.Errorf("get installation %d: %w", id, err)
	}
	i.State, i.UpdatedAt = store.InstallationState(state), timeOf(at)
	return i, nil
}

func (t *writeTx) AddCounter(name string, delta int64) error {
	if name == "" {
		return fmt.Errorf("%w: counter without a name", store.ErrInvalid)
	}
	if _, err := t.exec(`INSERT INTO counters (name, value) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value`, name, delta); err != nil {
		return fmt.Errorf("add to counter %s: %w", name, err)
	}
	return nil
}

// MarkDelivery implements store.Tx; t must not be zero (store.ErrInvalid).
func (t *writeTx) MarkDelivery(guid string, at time.Time, errText string) error {
	if at.IsZero() {
		return fmt.Errorf("%w: mark delivery %s: no time", store.ErrInvalid, guid)
	}
	res, err := t.exec("UPDATE deliveries SET processed_at = ?, error = ? WHERE guid = ?",
		msOf(at), errText, guid)
	if err != nil {
		return fmt.Errorf("mark delivery %s: %w", guid, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("mark delivery %s: %w", guid, err)
	}
	if n == 0 {
		return fmt.Errorf("delivery %s: %w", guid, store.ErrNotFound)
	}
	return nil
}

// placeholders returns "?, ?, …" with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}
