-- 0018: the parity matrix reads sums per UTC day and logical job instead
-- of every commit of its period (parity_commits holds a row per commit and
-- logical job: a few hundred thousand in a fortnight of a large fleet).
-- A day's row counts the commits whose later result ended that day and
-- that have a result on both architectures, those that failed on one
-- where they passed on the other, and the one that ended last. Kept as
-- parity_commits changes (store/sqlstore), pruned with it by whole days.
CREATE TABLE parity_daily (
	day          INTEGER NOT NULL,
	org          TEXT    NOT NULL,
	repo         TEXT    NOT NULL,
	workflow     TEXT    NOT NULL,
	logical      TEXT    NOT NULL,
	compared     INTEGER NOT NULL,
	arm64_failed INTEGER NOT NULL,
	amd64_failed INTEGER NOT NULL,
	latest_at    INTEGER NOT NULL,
	latest_sha   TEXT    NOT NULL,
	latest_amd64 INTEGER NOT NULL,
	latest_arm64 INTEGER NOT NULL,
	PRIMARY KEY (day, org, repo, workflow, logical)
) WITHOUT ROWID;
-- From the commits recorded so far (1: passed, 2: failed; the latest from
-- the row of MAX(at), SQLite's bare columns).
INSERT INTO parity_daily (day, org, repo, workflow, logical, compared, arm64_failed, amd64_failed,
	latest_at, latest_sha, latest_amd64, latest_arm64)
SELECT at - at % 86400000, org, repo, workflow, logical, COUNT(*),
	SUM(CASE WHEN amd64 = 1 AND arm64 = 2 THEN 1 ELSE 0 END), SUM(CASE WHEN amd64 = 2 AND arm64 = 1 THEN 1 ELSE 0 END),
	MAX(at), sha, amd64, arm64
FROM parity_commits WHERE amd64 <> 0 AND arm64 <> 0
GROUP BY at - at % 86400000, org, repo, workflow, logical;
-- The matrix no longer reads compared commits by time.
DROP INDEX parity_commits_compared;
