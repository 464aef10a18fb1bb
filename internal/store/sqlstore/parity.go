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

// Parity records (migration 0016): per commit and logical job, the latest
// result on each architecture, kept as jobs end (addJobStats); and each
// repository's support tier with its moves.

// addParityCommit records a job that ended with a result (n = 1) as its
// commit's latest on its architecture, unless a later run is already
// recorded; or, when it is opened again (n = -1), forgets its result if it
// is the one recorded.
var (
	upsertParityCommitSQL = upsert("parity_commits",
		"org, repo, workflow, logical, sha, amd64, amd64_job, amd64_at, arm64, arm64_job, arm64_at, at",
		"org, repo, workflow, logical, sha")
	upsertTierSQL = upsert("parity_tiers", "repo, org, tier, reason, since, checked_at", "repo")
)

func (t *writeTx) addParityCommit(j store.Job, n int) error {
	res := store.ResultOf(j)
	if j.HeadSHA == "" || res == store.NoResult || !j.Arch.IsMachine() || j.CompletedAt.IsZero() {
		return nil
	}
	key := []any{strings.ToLower(j.Org), strings.ToLower(j.Repo), j.Workflow, archname.Logical(j.Name), j.HeadSHA}
	const where = " WHERE org = ? AND repo = ? AND workflow = ? AND logical = ? AND sha = ?"
	var c [2]struct {
		res      store.Result
		job, end int64
	}
	err := t.queryRow("SELECT amd64, amd64_job, amd64_at, arm64, arm64_job, arm64_at FROM parity_commits"+where, key...).
		Scan(&c[0].res, &c[0].job, &c[0].end, &c[1].res, &c[1].job, &c[1].end)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
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
		_, err := t.exec("DELETE FROM parity_commits"+where, key...)
		return err
	}
	_, err = t.exec(upsertParityCommitSQL,
		append(key, c[0].res, c[0].job, c[0].end, c[1].res, c[1].job, c[1].end, max(c[0].end, c[1].end))...)
	return err
}

// ParityCommits sums up, per logical job, the commits whose later result
// ended on the period's days and that have a result on both
// architectures, in one pass over the period's index range; the latest
// commit's columns come from the row of MAX(at) (Dialect.latest).
func (t *readTx) ParityCommits(f store.ParityFilter) ([]store.CommitParity, error) {
	w := where{d: t.d}
	w.add("amd64 <> 0 AND arm64 <> 0")
	w.add("at >= ?", dayOf(f.Since))
	w.add("at < ?", dayOf(f.Until)+day.Milliseconds())
	if err := statsScope(&w, f); err != nil {
		return nil, fmt.Errorf("parity commits: %w", err)
	}
	rows, err := t.query(`SELECT org, repo, workflow, logical, COUNT(*),
		SUM(CASE WHEN amd64 = 1 AND arm64 = 2 THEN 1 ELSE 0 END), SUM(CASE WHEN amd64 = 2 AND arm64 = 1 THEN 1 ELSE 0 END),
		MAX(at), `+t.d.latest("sha")+`, `+t.d.latest("amd64")+`, `+t.d.latest("arm64")+`
		FROM parity_commits`+t.d.indexedBy("parity_commits_compared")+w.String()+` GROUP BY org, repo, workflow, logical`, w.args...)
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
