package sqlstore

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// Job resource profiles (migration 0011). Times inside the JSON are kept
// as every time in the store is: UTC, to the millisecond.

func storedTime(t time.Time) time.Time { return timeOf(msOf(t)) }

func (t *readTx) ProfileSamples(runner string) ([]profile.Sample, error) {
	rows, err := t.query("SELECT samples FROM profile_samples WHERE runner = ? ORDER BY seq", runner)
	if err != nil {
		return nil, fmt.Errorf("profile samples of %s: %w", runner, err)
	}
	defer rows.Close()
	var out []profile.Sample
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("profile samples of %s: %w", runner, err)
		}
		var batch []profile.Sample
		if err := json.Unmarshal([]byte(raw), &batch); err != nil {
			return nil, fmt.Errorf("profile samples of %s: %w", runner, err)
		}
		out = append(out, batch...)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("profile samples of %s: %w", runner, err)
	}
	return out, nil
}

func (t *readTx) Profile(runner string) (store.Profile, error) {
	p := store.Profile{Runner: runner}
	var ended int64
	var summary, points string
	err := t.queryRow("SELECT job_id, ended_at, summary, points FROM profiles WHERE runner = ?", runner).
		Scan(&p.JobID, &ended, &summary, &points)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Profile{}, fmt.Errorf("profile of %s: %w", runner, store.ErrNotFound)
	}
	if err != nil {
		return store.Profile{}, fmt.Errorf("profile of %s: %w", runner, err)
	}
	p.EndedAt = timeOf(ended)
	if err := json.Unmarshal([]byte(summary), &p.Summary); err != nil {
		return store.Profile{}, fmt.Errorf("profile of %s: summary: %w", runner, err)
	}
	if err := json.Unmarshal([]byte(points), &p.Points); err != nil {
		return store.Profile{}, fmt.Errorf("profile of %s: points: %w", runner, err)
	}
	return p, nil
}

func (t *writeTx) AddProfileSamples(runner string, at time.Time, samples []profile.Sample) error {
	if runner == "" {
		return fmt.Errorf("%w: profile samples without a runner", store.ErrInvalid)
	}
	if len(samples) == 0 {
		return nil
	}
	ss := slices.Clone(samples)
	for i := range ss {
		ss[i].At = storedTime(ss[i].At)
	}
	b, err := json.Marshal(ss)
	if err != nil {
		return fmt.Errorf("profile samples of %s: %w", runner, err)
	}
	if _, err := t.exec("INSERT INTO profile_samples (runner, received_at, samples) VALUES (?, ?, ?)",
		runner, msOf(at), string(b)); err != nil {
		return fmt.Errorf("profile samples of %s: %w", runner, err)
	}
	return nil
}

func (t *writeTx) PutProfile(p store.Profile) error {
	if p.Runner == "" {
		return fmt.Errorf("%w: a profile without a runner", store.ErrInvalid)
	}
	summary, err := json.Marshal(p.Summary)
	if err != nil {
		return fmt.Errorf("profile of %s: %w", p.Runner, err)
	}
	pts := append([]profile.Point{}, p.Points...)
	for i := range pts {
		pts[i].At = storedTime(pts[i].At)
	}
	points, err := json.Marshal(pts)
	if err != nil {
		return fmt.Errorf("profile of %s: %w", p.Runner, err)
	}
	if _, err := t.exec(upsertProfileSQL,
		p.Runner, p.JobID, msOf(p.EndedAt), string(summary), string(points)); err != nil {
		return fmt.Errorf("profile of %s: %w", p.Runner, err)
	}
	if _, err := t.exec("DELETE FROM profile_samples WHERE runner = ?", p.Runner); err != nil {
		return fmt.Errorf("profile samples of %s: %w", p.Runner, err)
	}
	return nil
}

// extraScanner scans a row of the columns a scan function knows, followed
// by extra ones.
type extraScanner struct {
	sc    scanner
	extra []any
}

func (e extraScanner) Scan(dest ...any) error { return e.sc.Scan(append(dest, e.extra...)...) }

func (t *readTx) ProfiledRuns(f store.ProfiledRunFilter) ([]store.ProfiledRun, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("%w: profiled runs: limit %d", store.ErrInvalid, f.Limit)
	}
	w := where{d: t.d}
	w.add("profiles.ended_at >= ?", msOf(f.Since))
	if f.Org != "" {
		w.add(t.d.nocase("jobs.org"), f.Org)
	}
	if f.Repo != "" {
		w.add(t.d.nocase("jobs.repo"), f.Repo)
	}
	if err := w.orgScope("jobs.org", f.Orgs); err != nil {
		return nil, fmt.Errorf("profiled runs: %w", err)
	}
	q := "SELECT " + jobCols + ", profiles.ended_at, profiles.summary FROM profiles JOIN jobs ON jobs.id = profiles.job_id" +
		w.String() + " ORDER BY profiles.ended_at DESC, jobs.id DESC"
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	rows, err := t.query(q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("profiled runs: %w", err)
	}
	defer rows.Close()
	var out []store.ProfiledRun
	for rows.Next() {
		var ended int64
		var summary string
		j, err := scanJob(extraScanner{rows, []any{&ended, &summary}})
		if err != nil {
			return nil, fmt.Errorf("profiled runs: %w", err)
		}
		r := store.ProfiledRun{Job: j, EndedAt: timeOf(ended)}
		if err := json.Unmarshal([]byte(summary), &r.Summary); err != nil {
			return nil, fmt.Errorf("profiled runs: job %d: summary: %w", j.ID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("profiled runs: %w", err)
	}
	return out, nil
}

var upsertProfileSQL = upsert("profiles", "runner, job_id, ended_at, summary, points", "runner")
