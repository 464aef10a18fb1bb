package sqlite

import (
	"fmt"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// Job statistics (insights), computed by SQLite over the jobs that ended
// in a period (the jobs_completed index, migration 0013). A job's run time
// is GitHub's started → completed when GitHub said both, else Tandem's;
// its queue time runs from GitHub's created_at (else when Tandem learnt of
// it) to its start. Percentiles are nearest-rank, taken with a window
// function: rank ceil(q·n) of the group's n times in order.

// statsKeyCols are the grouping columns of each level.
var statsKeyCols = map[store.StatsLevel][]string{
	store.ByOrg:      {"org"},
	store.ByRepo:     {"org", "repo"},
	store.ByWorkflow: {"org", "repo", "workflow"},
	store.ByJob:      {"org", "repo", "workflow", "name"},
}

// statsBase is the period's jobs with their times, as the CTE "j".
func statsBase(f store.StatsFilter) (string, []any, error) {
	var w where
	w.add("completed_at <> 0")
	w.add("completed_at >= ?", msOf(f.Since))
	w.add("completed_at < ?", msOf(f.Until))
	if f.Org != "" {
		w.add("org = ? COLLATE NOCASE", f.Org)
	}
	if f.Repo != "" {
		w.add("repo = ? COLLATE NOCASE", f.Repo)
	}
	if f.Orgs != nil {
		lower := make([]string, len(f.Orgs))
		for i, o := range f.Orgs {
			lower[i] = strings.ToLower(o)
		}
		if len(lower) == 0 {
			w.add("0")
		} else if err := in(&w, "lower(org)", lower); err != nil {
			return "", nil, err
		}
	}
	q := `WITH t AS (
		SELECT id, lower(org) AS org, lower(repo) AS repo, workflow, name, arch, vcpus, conclusion, html_url,
			CASE WHEN gh_started_at > 0 THEN gh_started_at ELSE started_at END AS st,
			CASE WHEN gh_completed_at > 0 THEN gh_completed_at ELSE completed_at END AS en,
			CASE WHEN created_at > 0 THEN created_at ELSE queued_at END AS cr
		FROM jobs INDEXED BY jobs_completed` + w.String() + `),
	j AS (
		SELECT id, org, repo, workflow, name, arch, vcpus, conclusion, html_url,
			CASE WHEN st > 0 AND en >= st THEN (en - st) / 1000.0 END AS run_s,
			CASE WHEN st > 0 AND cr > 0 AND st >= cr THEN (st - cr) / 1000.0 END AS queue_s
		FROM t)
	`
	return q, w.args, nil
}

func (t *readTx) JobStats(f store.StatsFilter) ([]store.JobStats, error) {
	keys, ok := statsKeyCols[f.Level]
	if !ok {
		return nil, fmt.Errorf("%w: job stats: level %q", store.ErrInvalid, f.Level)
	}
	base, args, err := statsBase(f)
	if err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	group := strings.Join(keys, ", ") + ", arch"
	out := map[store.StatsKey]*store.JobStats{}
	var order []store.StatsKey
	scanKey := func(vals []any) store.StatsKey {
		var k store.StatsKey
		for i, col := range keys {
			s := *(vals[i].(*string))
			switch col {
			case "org":
				k.Org = s
			case "repo":
				k.Repo = s
			case "workflow":
				k.Workflow = s
			case "name":
				k.Name = s
			}
		}
		k.Arch = arch.Arch(*(vals[len(keys)].(*string)))
		return k
	}
	keyDest := func() []any {
		d := make([]any, len(keys)+1)
		for i := range d {
			d[i] = new(string)
		}
		return d
	}
	// Counts and sums.
	rows, err := t.q.QueryContext(t.ctx, base+`SELECT `+group+`, COUNT(*), COUNT(run_s),
		SUM(CASE WHEN run_s IS NOT NULL AND conclusion = 'success' THEN 1 ELSE 0 END),
		COALESCE(SUM(vcpus * run_s), 0) / 60.0
		FROM j GROUP BY `+group, args...)
	if err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	for rows.Next() {
		d := keyDest()
		s := &store.JobStats{}
		if err := rows.Scan(append(d, &s.Jobs, &s.Ran, &s.Succeeded, &s.VCPUMinutes)...); err != nil {
			rows.Close()
			return nil, fmt.Errorf("job stats: %w", err)
		}
		s.StatsKey = scanKey(d)
		out[s.StatsKey] = s
		order = append(order, s.StatsKey)
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	// Percentiles: the values at ranks ceil(n/2) and ceil(95n/100).
	for _, col := range []string{"run_s", "queue_s"} {
		rows, err := t.q.QueryContext(t.ctx, base+`SELECT `+group+`, v, rn, n FROM (
			SELECT `+group+`, `+col+` AS v,
				ROW_NUMBER() OVER (PARTITION BY `+group+` ORDER BY `+col+`) AS rn,
				COUNT(*) OVER (PARTITION BY `+group+`) AS n
			FROM j WHERE `+col+` IS NOT NULL)
		WHERE rn = (n + 1) / 2 OR rn = (n * 95 + 99) / 100`, args...)
		if err != nil {
			return nil, fmt.Errorf("job stats: %w", err)
		}
		for rows.Next() {
			d := keyDest()
			var v float64
			var rn, n int
			if err := rows.Scan(append(d, &v, &rn, &n)...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("job stats: %w", err)
			}
			s := out[scanKey(d)]
			if s == nil {
				continue
			}
			p50, p95 := &s.RunP50, &s.RunP95
			if col == "queue_s" {
				p50, p95 = &s.QueueP50, &s.QueueP95
			}
			if rn == (n+1)/2 {
				*p50 = v
			}
			if rn == (n*95+99)/100 {
				*p95 = v
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("job stats: %w", err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("job stats: %w", err)
		}
	}
	res := make([]store.JobStats, 0, len(order))
	for _, k := range order {
		res = append(res, *out[k])
	}
	return res, nil
}

func (t *readTx) SlowestRuns(f store.StatsFilter, n int) ([]store.SlowRun, error) {
	if n <= 0 || n > 1000 {
		return nil, fmt.Errorf("%w: slowest runs: n %d (1 to 1000)", store.ErrInvalid, n)
	}
	base, args, err := statsBase(f)
	if err != nil {
		return nil, fmt.Errorf("slowest runs: %w", err)
	}
	rows, err := t.q.QueryContext(t.ctx, base+`SELECT j.id, jobs.repo, j.workflow, j.name, j.arch, j.run_s, j.html_url
		FROM j JOIN jobs ON jobs.id = j.id WHERE j.run_s IS NOT NULL ORDER BY j.run_s DESC, j.id LIMIT ?`, append(args, n)...)
	if err != nil {
		return nil, fmt.Errorf("slowest runs: %w", err)
	}
	defer rows.Close()
	var out []store.SlowRun
	for rows.Next() {
		var r store.SlowRun
		var a string
		if err := rows.Scan(&r.JobID, &r.Repo, &r.Workflow, &r.Name, &a, &r.RunS, &r.HTMLURL); err != nil {
			return nil, fmt.Errorf("slowest runs: %w", err)
		}
		r.Arch = arch.Arch(a)
		out = append(out, r)
	}
	return out, rows.Err()
}
