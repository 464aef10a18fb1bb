-- 0006: SQLite's 0021: retries of jobs lost to Tandem or its hosts (config
-- retry.infra_losses): one per lost job, and at most one per repository,
-- run, job name and cause. state: pending, requested, moot or refused;
-- next_at is when a pending one is looked at again.
CREATE TABLE job_retries (
	job_id       BIGINT PRIMARY KEY,
	installation BIGINT NOT NULL,
	org          TEXT NOT NULL,
	repo         TEXT NOT NULL,
	run_id       BIGINT NOT NULL,
	name         TEXT NOT NULL,
	cause        TEXT NOT NULL,
	state        TEXT NOT NULL,
	detail       TEXT NOT NULL DEFAULT '',
	tries        INTEGER NOT NULL DEFAULT 0,
	next_at      BIGINT NOT NULL DEFAULT 0,
	created_at   BIGINT NOT NULL,
	updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX job_retries_once ON job_retries (lower(repo), run_id, name, cause);
CREATE INDEX job_retries_due ON job_retries (state, next_at);
