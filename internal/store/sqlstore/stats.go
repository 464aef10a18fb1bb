package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// Job statistics (insights). When a job reaches an end state, its numbers
// are added to its day's row of job_stats_daily (migration 0015): one per
// UTC day, organisation, repository, workflow, job name and architecture,
// with its run and queue times in bucketed histograms (store.TimeBucket);
// when a job is opened again they are taken away. JobStats reads the rows
// of a period's days and adds them up at the level asked for, so its cost
// is the number of days and logical jobs, not of jobs.

const day = 24 * time.Hour

// dayOf is the UTC day t falls on, as the store keeps it.
func dayOf(t time.Time) int64 { return msOf(t.UTC().Truncate(day)) }

// statsKey is a row's key in job_stats_daily.
type statsKey struct {
	day                           int64
	org, repo, workflow, name, ar string
}

// statsRow is one row of job_stats_daily.
type statsRow struct {
	statsKey
	jobs, ran, succeeded, failed, emulated int
	vcpuSeconds                            float64
	run, queue                             store.Histogram
	labels                                 string // label key of the latest job added
}

// add counts a job (n = 1) or takes it away (n = -1); emulated says
// whether its runner's VM was emulated.
func (r *statsRow) add(j store.Job, n int, emulated bool) {
	run, queue, ran, queued := j.RunTimes()
	r.jobs += n
	if n > 0 {
		r.labels = j.LabelKey
	}
	if ran {
		r.ran += n
		switch store.ResultOf(j) {
		case store.Passed:
			r.succeeded += n
		case store.Failed:
			r.failed += n
		}
		if emulated {
			r.emulated += n
		}
		r.vcpuSeconds += float64(n) * j.VCPUs * run
		r.run.Add(run, n)
	}
	if queued {
		r.queue.Add(queue, n)
	}
}

func statsKeyOf(j store.Job) statsRow {
	return statsRow{statsKey: statsKey{day: dayOf(j.CompletedAt), org: strings.ToLower(j.Org), repo: strings.ToLower(j.Repo),
		workflow: j.Workflow, name: j.Name, ar: string(j.Arch)}, run: store.Histogram{}, queue: store.Histogram{}}
}

// addJobStats adds a job that ended to its day's statistics (n = 1), or
// takes it away (n = -1), and records its run time for SlowestRuns.
func (t *writeTx) addJobStats(j store.Job, n int) error {
	if j.CompletedAt.IsZero() {
		return nil
	}
	k := statsKeyOf(j)
	var runHist, queueHist string
	err := t.queryRow(`SELECT jobs, ran, succeeded, failed, emulated, vcpu_seconds, run_hist, queue_hist, labels
		FROM job_stats_daily WHERE day = ? AND org = ? AND repo = ? AND workflow = ? AND name = ? AND arch = ?`,
		k.day, k.org, k.repo, k.workflow, k.name, k.ar).Scan(&k.jobs, &k.ran, &k.succeeded, &k.failed, &k.emulated,
		&k.vcpuSeconds, &runHist, &queueHist, &k.labels)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("job %d: statistics: %w", j.ID, err)
	default:
		if err := errors.Join(json.Unmarshal([]byte(runHist), &k.run), json.Unmarshal([]byte(queueHist), &k.queue)); err != nil {
			return fmt.Errorf("job %d: statistics: %w", j.ID, err)
		}
	}
	emulated, err := t.ranEmulated(j)
	if err != nil {
		return fmt.Errorf("job %d: statistics: %w", j.ID, err)
	}
	k.add(j, n, emulated)
	if err := t.putStatsRow(k); err != nil {
		return fmt.Errorf("job %d: statistics: %w", j.ID, err)
	}
	if err := t.addParityCommit(j, n); err != nil {
		return fmt.Errorf("job %d: parity: %w", j.ID, err)
	}
	runMS := int64(0)
	if run, _, ran, _ := j.RunTimes(); ran && n > 0 {
		runMS = max(int64(run*1000), 1)
	}
	if _, err := t.exec("UPDATE jobs SET run_ms = ? WHERE id = ?", runMS, j.ID); err != nil {
		return fmt.Errorf("job %d: run time: %w", j.ID, err)
	}
	return nil
}

func (t *writeTx) putStatsRow(k statsRow) error {
	if k.jobs <= 0 {
		_, err := t.exec(`DELETE FROM job_stats_daily
			WHERE day = ? AND org = ? AND repo = ? AND workflow = ? AND name = ? AND arch = ?`,
			k.day, k.org, k.repo, k.workflow, k.name, k.ar)
		return err
	}
	run, err := json.Marshal(k.run)
	if err != nil {
		return err
	}
	queue, err := json.Marshal(k.queue)
	if err != nil {
		return err
	}
	_, err = t.exec(upsertStatsSQL,
		k.day, k.org, k.repo, k.workflow, k.name, k.ar, k.jobs, k.ran, k.succeeded, k.failed, k.emulated, k.vcpuSeconds,
		string(run), string(queue), k.labels)
	return err
}

var upsertStatsSQL = upsert("job_stats_daily",
	"day, org, repo, workflow, name, arch, jobs, ran, succeeded, failed, emulated, vcpu_seconds, run_hist, queue_hist, labels",
	"day, org, repo, workflow, name, arch")

// ranEmulated reports whether the job ran on one of Tandem's runners whose
// VM was emulated (false for a runner not Tandem's, or one pruned).
func (t *readTx) ranEmulated(j store.Job) (bool, error) {
	if j.RunnerName == "" {
		return false, nil
	}
	var emulated bool
	err := t.queryRow("SELECT emulated FROM runners WHERE name = ?", j.RunnerName).Scan(&emulated)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return emulated, err
}

// BackfillJobStats adds the jobs that ended before the statistics and the
// parity records existed (SQLite's migrations 0015 and 0016 start them
// afresh) to both, once: it runs in tx, which the caller commits, and does
// nothing once the task is recorded done.
func BackfillJobStats(ctx context.Context, tx Querier, d Dialect) error {
	const task = "job-stats-backfill"
	w := &writeTx{readTx{ctx: ctx, q: tx, d: d}}
	var done int64
	switch err := w.queryRow("SELECT done_at FROM store_tasks WHERE name = ?", task).Scan(&done); {
	case err == nil:
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	var terminal []store.JobState
	for _, s := range store.JobStates {
		if s.Terminal() {
			terminal = append(terminal, s)
		}
	}
	jobs, err := w.Jobs(store.JobFilter{States: terminal})
	if err != nil {
		return err
	}
	rows := map[statsKey]*statsRow{}
	for _, j := range jobs {
		if j.CompletedAt.IsZero() {
			continue
		}
		k := statsKeyOf(j)
		r := rows[k.statsKey]
		if r == nil {
			r = &k
			rows[k.statsKey] = r
		}
		emulated, err := w.ranEmulated(j)
		if err != nil {
			return err
		}
		r.add(j, 1, emulated)
		if err := w.addParityCommit(j, 1); err != nil {
			return err
		}
		if run, _, ran, _ := j.RunTimes(); ran {
			if _, err := w.exec("UPDATE jobs SET run_ms = ? WHERE id = ?", max(int64(run*1000), 1), j.ID); err != nil {
				return err
			}
		}
	}
	for _, r := range rows {
		if err := w.putStatsRow(*r); err != nil {
			return err
		}
	}
	_, err = w.exec("INSERT INTO store_tasks (name, done_at) VALUES (?, ?)", task, msOf(time.Now()))
	return err
}

// statsScope is the WHERE of a filter on job_stats_daily or jobs.
func statsScope(w *where, f store.StatsFilter) error {
	if f.Org != "" {
		w.add(w.d.nocase("org"), f.Org)
	}
	if f.Repo != "" {
		w.add(w.d.nocase("repo"), f.Repo)
	}
	return w.orgScope("org", f.Orgs)
}

func (t *readTx) JobStats(f store.StatsFilter) ([]store.JobStats, error) {
	if !validLevel(f.Level) {
		return nil, fmt.Errorf("%w: job stats: level %q", store.ErrInvalid, f.Level)
	}
	w := where{d: t.d}
	w.add("day >= ?", dayOf(f.Since))
	w.add("day <= ?", dayOf(f.Until))
	if err := statsScope(&w, f); err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	rows, err := t.query(`SELECT org, repo, workflow, name, arch, jobs, ran, succeeded, failed, emulated,
		vcpu_seconds, run_hist, queue_hist, labels FROM job_stats_daily`+w.String()+" ORDER BY day", w.args...)
	if err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	defer rows.Close()
	type acc struct {
		s          store.JobStats
		vcpuS      float64
		run, queue store.Histogram
	}
	groups := map[store.StatsKey]*acc{}
	var order []store.StatsKey
	var runHist, queueHist sql.RawBytes // valid until the next row
	for rows.Next() {
		var k store.StatsKey
		var a, labels string
		var jobs, ran, succeeded, failed, emulated int
		var vcpuS float64
		if err := rows.Scan(&k.Org, &k.Repo, &k.Workflow, &k.Name, &a, &jobs, &ran, &succeeded, &failed, &emulated,
			&vcpuS, &runHist, &queueHist, &labels); err != nil {
			return nil, fmt.Errorf("job stats: %w", err)
		}
		k.Arch = arch.Arch(a)
		switch f.Level {
		case store.ByOrg:
			k.Repo, k.Workflow, k.Name = "", "", ""
		case store.ByRepo:
			k.Workflow, k.Name = "", ""
		case store.ByWorkflow:
			k.Name = ""
		}
		g := groups[k]
		if g == nil {
			g = &acc{s: store.JobStats{StatsKey: k}, run: store.Histogram{}, queue: store.Histogram{}}
			groups[k] = g
			order = append(order, k)
		}
		g.s.Jobs += jobs
		g.s.Ran += ran
		g.s.Succeeded += succeeded
		g.s.Failed += failed
		g.s.Emulated += emulated
		if labels != "" {
			g.s.Labels = labels // rows come oldest day first: the latest wins
		}
		g.vcpuS += vcpuS
		if err := errors.Join(g.run.MergeJSON(runHist), g.queue.MergeJSON(queueHist)); err != nil {
			return nil, fmt.Errorf("job stats: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("job stats: %w", err)
	}
	out := make([]store.JobStats, 0, len(order))
	for _, k := range order {
		g := groups[k]
		g.s.VCPUMinutes = g.vcpuS / 60
		g.s.RunP50, g.s.RunP95 = g.run.Quantile(0.5), g.run.Quantile(0.95)
		g.s.QueueP50, g.s.QueueP95 = g.queue.Quantile(0.5), g.queue.Quantile(0.95)
		out = append(out, g.s)
	}
	return out, nil
}

func validLevel(l store.StatsLevel) bool {
	for _, x := range store.StatsLevels {
		if x == l {
			return true
		}
	}
	return false
}

// SlowestRuns walks the index of run times from the longest down, keeping
// the jobs that ended on the period's days.
func (t *readTx) SlowestRuns(f store.StatsFilter, n int) ([]store.SlowRun, error) {
	if n <= 0 || n > 1000 {
		return nil, fmt.Errorf("%w: slowest runs: n %d (1 to 1000)", store.ErrInvalid, n)
	}
	w := where{d: t.d}
	w.add("run_ms > 0")
	w.add("completed_at >= ?", dayOf(f.Since))
	w.add("completed_at < ?", dayOf(f.Until)+day.Milliseconds())
	if err := statsScope(&w, f); err != nil {
		return nil, fmt.Errorf("slowest runs: %w", err)
	}
	rows, err := t.query(`SELECT id, repo, workflow, name, arch, run_ms, html_url FROM jobs`+t.d.indexedBy("jobs_run_ms")+
		w.String()+` ORDER BY run_ms DESC, id LIMIT `+strconv.Itoa(n), w.args...)
	if err != nil {
		return nil, fmt.Errorf("slowest runs: %w", err)
	}
	defer rows.Close()
	var out []store.SlowRun
	for rows.Next() {
		var r store.SlowRun
		var a string
		var ms int64
		if err := rows.Scan(&r.JobID, &r.Repo, &r.Workflow, &r.Name, &a, &ms, &r.HTMLURL); err != nil {
			return nil, fmt.Errorf("slowest runs: %w", err)
		}
		r.Arch, r.RunS = arch.Arch(a), float64(ms)/1000
		out = append(out, r)
	}
	return out, rows.Err()
}
