-- 0015: job statistics kept per UTC day as jobs end, so that insights read
-- a few rows a day and logical job instead of every job of a period: the
-- counts, the vCPU-seconds, and the run and queue times as histograms
-- (JSON objects, bucket → count; store.TimeBucket). Rows are added to when
-- a job reaches an end state and taken from when it is opened again.
-- jobs.run_ms is a finished job's run time, for the longest runs.
CREATE TABLE job_stats_daily (
	day          INTEGER NOT NULL,
	org          TEXT    NOT NULL,
	repo         TEXT    NOT NULL,
	workflow     TEXT    NOT NULL,
	name         TEXT    NOT NULL,
	arch         TEXT    NOT NULL,
	jobs         INTEGER NOT NULL,
	ran          INTEGER NOT NULL,
	succeeded    INTEGER NOT NULL,
	vcpu_seconds REAL    NOT NULL,
	run_hist     TEXT    NOT NULL,
	queue_hist   TEXT    NOT NULL,
	PRIMARY KEY (day, org, repo, workflow, name, arch)
);
ALTER TABLE jobs ADD COLUMN run_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_run_ms ON jobs (run_ms) WHERE run_ms > 0;
-- Work the store does once in Go after a migration (the statistics of the
-- jobs that had ended before 0015).
CREATE TABLE store_tasks (
	name    TEXT    PRIMARY KEY,
	done_at INTEGER NOT NULL
);
