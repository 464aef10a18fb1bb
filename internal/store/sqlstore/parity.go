package sqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/archname"
	"github.com/tandem-ci/tandem/internal/store"
)

// Parity records (SQLite's migrations 0016 and 0018): per commit and
// logical job, the latest result on each architecture, kept as jobs end
// (addJobStats); per UTC day and logical job, the sums of the commits
// compared that day (parity_daily: what the matrix reads); and each
// repository's support tier with its moves.

var (
	upsertParityCommitSQL = upsert("parity_commits",
		"org, repo, workflow, logical, sha, amd64, amd64_job, amd64_at, arm64, arm64_job, arm64_at, at",
		"org, repo, workflow, logical, sha")
	upsertTierSQL = upsert("parity_tiers", "repo, org, tier, reason, since, checked_at", "repo")
	// addParityDaySQL adds one compared commit to its day; the day's
	// latest commit is the one that ended last (the one added last, on a
	// tie).
	addParityDaySQL = `INSERT INTO parity_daily (day, org, repo, workflow, logical, compared, arm64_failed, amd64_failed,
		latest_at, latest_sha, latest_amd64, latest_arm64) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (day, org, repo, workflow, logical) DO UPDATE SET
			compared = parity_daily.compared + 1,
			arm64_failed = parity_daily.arm64_failed + excluded.arm64_failed,
			amd64_failed = parity_daily.amd64_failed + excluded.amd64_failed,
			latest_sha = CASE WHEN excluded.latest_at >= parity_daily.latest_at THEN excluded.latest_sha ELSE parity_daily.latest_sha END,
			latest_amd64 = CASE WHEN excluded.latest_at >= parity_daily.latest_at THEN excluded.latest_amd64 ELSE parity_daily.latest_amd64 END,
			latest_arm64 = CASE WHEN excluded.latest_at >= parity_daily.latest_at THEN excluded.latest_arm64 ELSE parity_daily.latest_arm64 END,
			latest_at = CASE WHEN excluded.latest_at >= parity_daily.latest_at THEN excluded.latest_at ELSE parity_daily.latest_at END`
)

// commitResults is a parity_commits row's results: per architecture
// (amd64, arm64) the result, the job it came from and when that ended.
type commitResults [2]struct {
	res      store.Result
	job, end int64
}

// compared reports whether both architectures have a result.
func (c commitResults) compared() bool {
	return c[0].res != store.NoResult && c[1].res != store.NoResult
}

// at is when the later of the two results ended.
func (c commitResults) at() int64 { return max(c[0].end, c[1].end) }

// addParityCommit records a job that ended with a result (n = 1) as its
// commit's latest on its architecture, unless a later run is already
// recorded; or, when it is opened again (n = -1), forgets its result if it
// is the one recorded. The commit's day in parity_daily follows.
func (t *writeTx) addParityCommit(j store.Job, n int) error {
	res := store.ResultOf(j)
	if j.HeadSHA == "" || res == store.NoResult || !j.Arch.IsMachine() || j.CompletedAt.IsZero() {
		return nil
	}
	key := []any{strings.ToLower(j.Org), strings.ToLower(j.Repo), j.Workflow, archname.Logical(j.Name), j.HeadSHA}
	const where = " WHERE org = ? AND repo = ? AND workflow = ? AND logical = ? AND sha = ?"
	var c commitResults
	err := t.queryRow("SELECT amd64, amd64_job, amd64_at, arm64, arm64_job, arm64_at FROM parity_commits"+where, key...).
		Scan(&c[0].res, &c[0].job, &c[0].end, &c[1].res, &c[1].job, &c[1].end)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	old := c
	i := 0
	if j.Arch == arch.ARM64 {
		i = 1
	}
	end := msOf(j.CompletedAt)
	switch {
	case n > 0 && end >= c[i].end:
		c[i].res, c[i].job, c[i].end = res, j.ID, end
	case n < 0 && c[i].job == j.ID:
		c[i].res, c[i].job, c[i].end = store.NoResult, 0, 0
	default:
		return nil
	}
	if c[0].res == store.NoResult && c[1].res == store.NoResult {
		_, err = t.exec("DELETE FROM parity_commits"+where, key...)
	} else {
		_, err = t.exec(upsertParityCommitSQL, append(key, c[0].res, c[0].job, c[0].end, c[1].res, c[1].job, c[1].end, c.at())...)
	}
	if err != nil {
		return err
	}
	if old.compared() {
		if err := t.takeParityDay(key, old); err != nil {
			return err
		}
	}
	if c.compared() {
		_, err = t.exec(addParityDaySQL, dayOfMS(c.at()), key[0], key[1], key[2], key[3], failedOn(c, 1), failedOn(c, 0),
			c.at(), key[4], c[0].res, c[1].res)
	}
	return err
}

// failedOn is 1 when the commit failed on architecture i (0 amd64, 1
// arm64) where it passed on the other, else 0.
func failedOn(c commitResults, i int) int {
	if c[i].res == store.Failed && c[1-i].res == store.Passed {
		return 1
	}
	return 0
}

func dayOfMS(ms int64) int64 { return ms - ms%day.Milliseconds() }

// takeParityDay takes a compared commit (key: org, repo, workflow,
// logical, sha; its results as they were) back out of its day, after
// parity_commits has changed: the day's latest commit, if it was that one,
// is found again among the commits that remain.
func (t *writeTx) takeParityDay(key []any, c commitResults) error {
	d := dayOfMS(c.at())
	dayKey := []any{d, key[0], key[1], key[2], key[3]}
	const where = " WHERE day = ? AND org = ? AND repo = ? AND workflow = ? AND logical = ?"
	var compared, latestAt int64
	var latestSHA string
	err := t.queryRow("SELECT compared, latest_at, latest_sha FROM parity_daily"+where, dayKey...).Scan(&compared, &latestAt, &latestSHA)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // pruned
	}
	if err != nil {
		return err
	}
	if compared <= 1 {
		_, err := t.exec("DELETE FROM parity_daily"+where, dayKey...)
		return err
	}
	if _, err := t.exec(`UPDATE parity_daily SET compared = compared - 1, arm64_failed = arm64_failed - ?,
		amd64_failed = amd64_failed - ?`+where, append([]any{failedOn(c, 1), failedOn(c, 0)}, dayKey...)...); err != nil {
		return err
	}
	if latestSHA != key[4] || latestAt != c.at() {
		return nil
	}
	var at int64
	var sha string
	var amd, arm store.Result
	err = t.queryRow(`SELECT at, sha, amd64, arm64 FROM parity_commits WHERE org = ? AND repo = ? AND workflow = ?
		AND logical = ? AND amd64 <> 0 AND arm64 <> 0 AND at >= ? AND at < ? ORDER BY at DESC LIMIT 1`,
		key[0], key[1], key[2], key[3], d, d+day.Milliseconds()).Scan(&at, &sha, &amd, &arm)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // counted but pruned from parity_commits: keep the day as it is
	}
	if err != nil {
		return err
	}
	_, err = t.exec("UPDATE parity_daily SET latest_at = ?, latest_sha = ?, latest_amd64 = ?, latest_arm64 = ?"+where,
		append([]any{at, sha, amd, arm}, dayKey...)...)
	return err
}

// ParityCommits sums up, per logical job, the days of the period in
// parity_daily: a few rows per logical job and day, whatever the number
// of commits; the latest commit's columns come from the day row of
// MAX(latest_at) (Dialect.latest).
func (t *readTx) ParityCommits(f store.ParityFilter) ([]store.CommitParity, error) {
	w := where{d: t.d}
	w.add("day >= ?", dayOf(f.Since))
	w.add("day <= ?", dayOf(f.Until))
	if err := statsScope(&w, f); err != nil {
		return nil, fmt.Errorf("parity commits: %w", err)
	}
	rows, err := t.query(`SELECT org, repo, workflow, logical, SUM(compared), SUM(arm64_failed), SUM(amd64_failed),
		MAX(latest_at), `+t.d.latest("latest_sha", "latest_at")+`, `+t.d.latest("latest_amd64", "latest_at")+`, `+
		t.d.latest("latest_arm64", "latest_at")+`
		FROM parity_daily`+w.String()+` GROUP BY org, repo, workflow, logical`, w.args...)
	if err != nil {
		return nil, fmt.Errorf("parity commits: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.CommitParity, error) {
		var c store.CommitParity
		var at int64
		err := sc.Scan(&c.Org, &c.Repo, &c.Workflow, &c.Logical, &c.Compared, &c.ARM64Failed, &c.AMD64Failed,
			&at, &c.LatestSHA, &c.LatestAMD64, &c.LatestARM64)
		c.LatestAt = timeOf(at)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("parity commits: %w", err)
	}
	return out, nil
}

// tierScope is the WHERE of a TierFilter.
func tierScope(w *where, f store.TierFilter) error {
	if f.Org != "" {
		w.add("org = ?", strings.ToLower(f.Org))
	}
	if f.Repo != "" {
		w.add("repo = ?", strings.ToLower(f.Repo))
	}
	return w.orgScope("org", f.Orgs)
}

func (t *readTx) RepoTiers(f store.TierFilter) ([]store.RepoTier, error) {
	w := where{d: t.d}
	if err := tierScope(&w, f); err != nil {
		return nil, fmt.Errorf("repo tiers: %w", err)
	}
	rows, err := t.query("SELECT org, repo, tier, reason, since, checked_at FROM parity_tiers"+w.String()+" ORDER BY repo", w.args...)
	if err != nil {
		return nil, fmt.Errorf("repo tiers: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.RepoTier, error) {
		var r store.RepoTier
		var since, checked int64
		err := sc.Scan(&r.Org, &r.Repo, &r.Tier, &r.Reason, &since, &checked)
		r.Since, r.CheckedAt = timeOf(since), timeOf(checked)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("repo tiers: %w", err)
	}
	return out, nil
}

func (t *readTx) TierChanges(f store.TierFilter) ([]store.TierChange, error) {
	w := where{d: t.d}
	if !f.Since.IsZero() {
		w.add("at >= ?", msOf(f.Since))
	}
	if err := tierScope(&w, f); err != nil {
		return nil, fmt.Errorf("tier changes: %w", err)
	}
	rows, err := t.query("SELECT seq, at, org, repo, from_tier, to_tier, reason FROM parity_tier_changes"+
		w.String()+" ORDER BY seq", w.args...)
	if err != nil {
		return nil, fmt.Errorf("tier changes: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.TierChange, error) {
		var c store.TierChange
		var at int64
		err := sc.Scan(&c.Seq, &at, &c.Org, &c.Repo, &c.From, &c.To, &c.Reason)
		c.At = timeOf(at)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("tier changes: %w", err)
	}
	return out, nil
}

func (t *writeTx) SetRepoTier(r store.RepoTier) (bool, error) {
	if r.Repo == "" || r.Tier == "" || r.CheckedAt.IsZero() {
		return false, fmt.Errorf("%w: repo tier needs a repository, a tier and a time", store.ErrInvalid)
	}
	repo, org := strings.ToLower(r.Repo), strings.ToLower(r.Org)
	var from string
	var since int64
	err := t.queryRow("SELECT tier, since FROM parity_tiers WHERE repo = ?", repo).Scan(&from, &since)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("set tier of %s: %w", repo, err)
	}
	changed := from != r.Tier
	if changed {
		since = msOf(r.CheckedAt)
		if _, err := t.exec(`INSERT INTO parity_tier_changes (at, org, repo, from_tier, to_tier, reason)
			VALUES (?, ?, ?, ?, ?, ?)`, since, org, repo, from, r.Tier, r.Reason); err != nil {
			return false, fmt.Errorf("set tier of %s: %w", repo, err)
		}
	}
	if _, err := t.exec(upsertTierSQL, repo, org, r.Tier, r.Reason, since, msOf(r.CheckedAt)); err != nil {
		return false, fmt.Errorf("set tier of %s: %w", repo, err)
	}
	return changed, nil
}
