-- 0003: SQLite's 0018: the parity matrix reads sums per UTC day and
-- logical job (parity_daily) instead of every commit of its period.
CREATE TABLE parity_daily (
	day          BIGINT NOT NULL,
	org          TEXT   NOT NULL,
	repo         TEXT   NOT NULL,
	workflow     TEXT   NOT NULL,
	logical      TEXT   NOT NULL,
	compared     BIGINT NOT NULL,
	arm64_failed BIGINT NOT NULL,
	amd64_failed BIGINT NOT NULL,
	latest_at    BIGINT NOT NULL,
	latest_sha   TEXT   NOT NULL,
	latest_amd64 BIGINT NOT NULL,
	latest_arm64 BIGINT NOT NULL,
	PRIMARY KEY (day, org, repo, workflow, logical)
);
INSERT INTO parity_daily (day, org, repo, workflow, logical, compared, arm64_failed, amd64_failed,
	latest_at, latest_sha, latest_amd64, latest_arm64)
SELECT at - at % 86400000, org, repo, workflow, logical, COUNT(*),
	SUM(CASE WHEN amd64 = 1 AND arm64 = 2 THEN 1 ELSE 0 END), SUM(CASE WHEN amd64 = 2 AND arm64 = 1 THEN 1 ELSE 0 END),
	MAX(at), (array_agg(sha ORDER BY at DESC))[1], (array_agg(amd64 ORDER BY at DESC))[1], (array_agg(arm64 ORDER BY at DESC))[1]
FROM parity_commits WHERE amd64 <> 0 AND arm64 <> 0
GROUP BY at - at % 86400000, org, repo, workflow, logical;
DROP INDEX parity_commits_compared;
