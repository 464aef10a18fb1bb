-- 0016: Arm64/x86 parity.
-- job_stats_daily also counts the runs that failed (GitHub's failure or
-- timed_out, beside succeeded: a cancelled run is neither) and those that
-- ran emulated, and keeps the runs-on labels of the latest job it counted
-- (for the nudge that adds the other architecture).
ALTER TABLE job_stats_daily ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_stats_daily ADD COLUMN emulated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_stats_daily ADD COLUMN labels TEXT NOT NULL DEFAULT '';
-- The statistics are computed again, with the new columns, by the store's
-- backfill task (which also fills parity_commits).
DELETE FROM job_stats_daily;
UPDATE jobs SET run_ms = 0;
DELETE FROM store_tasks WHERE name = 'job-stats-backfill';
-- The latest result of each logical job (its name without architecture
-- words, archname.Logical) on each architecture, per commit: 0 none, 1
-- passed, 2 failed; the job it came from and when it ended. at is the
-- later end of the two.
CREATE TABLE parity_commits (
	org       TEXT    NOT NULL,
	repo      TEXT    NOT NULL,
	workflow  TEXT    NOT NULL,
	logical   TEXT    NOT NULL,
	sha       TEXT    NOT NULL,
	amd64     INTEGER NOT NULL DEFAULT 0,
	amd64_job INTEGER NOT NULL DEFAULT 0,
	amd64_at  INTEGER NOT NULL DEFAULT 0,
	arm64     INTEGER NOT NULL DEFAULT 0,
	arm64_job INTEGER NOT NULL DEFAULT 0,
	arm64_at  INTEGER NOT NULL DEFAULT 0,
	at        INTEGER NOT NULL,
	PRIMARY KEY (org, repo, workflow, logical, sha)
) WITHOUT ROWID;
-- Compared commits (a result on both) by when, for the matrix's period;
-- every commit by when, for Prune.
CREATE INDEX parity_commits_compared ON parity_commits (at) WHERE amd64 <> 0 AND arm64 <> 0;
CREATE INDEX parity_commits_at ON parity_commits (at);
-- A commit's jobs, for the release gate.
CREATE INDEX jobs_head_sha ON jobs (head_sha);
-- Each repository's support tier as last evaluated, and its moves.
CREATE TABLE parity_tiers (
	repo       TEXT    PRIMARY KEY,
	org        TEXT    NOT NULL,
	tier       TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	since      INTEGER NOT NULL,
	checked_at INTEGER NOT NULL
);
CREATE TABLE parity_tier_changes (
	seq       INTEGER PRIMARY KEY AUTOINCREMENT,
	at        INTEGER NOT NULL,
	org       TEXT    NOT NULL,
	repo      TEXT    NOT NULL,
	from_tier TEXT    NOT NULL,
	to_tier   TEXT    NOT NULL,
	reason    TEXT    NOT NULL
);
CREATE INDEX parity_tier_changes_at ON parity_tier_changes (at);
