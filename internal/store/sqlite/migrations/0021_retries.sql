-- 0021: retries of jobs lost to Tandem or its hosts (config
-- retry.infra_losses): one per lost job, and at most one per repository,
-- run, job name and cause, so that a re-run job (same run and name) lost
-- again for the same cause is not re-run again. state: pending (until
-- GitHub has failed the job and its run has ended), requested, moot or
-- refused; next_at is when a pending one is looked at again.
CREATE TABLE job_retries (
	job_id       INTEGER PRIMARY KEY,
	installation INTEGER NOT NULL,
	org          TEXT NOT NULL,
	repo         TEXT NOT NULL,
	run_id       INTEGER NOT NULL,
	name         TEXT NOT NULL,
	cause        TEXT NOT NULL,
	state        TEXT NOT NULL,
	detail       TEXT NOT NULL DEFAULT '',
	tries        INTEGER NOT NULL DEFAULT 0,
	next_at      INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX job_retries_once ON job_retries (repo COLLATE NOCASE, run_id, name, cause);
CREATE INDEX job_retries_due ON job_retries (state, next_at);
