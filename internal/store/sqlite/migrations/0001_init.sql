-- 0001: initial schema.
--
-- Times are INTEGER unix milliseconds UTC, 0 for the zero time. Slices are
-- JSON arrays in TEXT columns ('[]' when empty).

CREATE TABLE deliveries (
	-- AUTOINCREMENT: a sequence number is never reused, even after the
	-- newest delivery was pruned, so consumers may remember the last one.
	seq          INTEGER PRIMARY KEY AUTOINCREMENT,
	guid         TEXT    NOT NULL UNIQUE,
	event        TEXT    NOT NULL,
	payload      BLOB    NOT NULL,
	received_at  INTEGER NOT NULL,
	processed_at INTEGER NOT NULL DEFAULT 0,
	error        TEXT    NOT NULL DEFAULT ''
);
-- Holds only the pending deliveries: PendingDeliveries walks it in seq order.
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE processed_at = 0;
-- For Prune.
CREATE INDEX deliveries_processed ON deliveries (received_at) WHERE processed_at <> 0;

CREATE TABLE jobs (
	id           INTEGER PRIMARY KEY,
	run_id       INTEGER NOT NULL,
	run_attempt  INTEGER NOT NULL,
	installation INTEGER NOT NULL,
	org          TEXT    NOT NULL,
	repo         TEXT    NOT NULL,
	name         TEXT    NOT NULL,
	workflow     TEXT    NOT NULL,
	labels       TEXT    NOT NULL,
	label_key    TEXT    NOT NULL,
	arch         TEXT    NOT NULL,
	vcpus        REAL    NOT NULL,
	memory_mib   INTEGER NOT NULL,
	state        TEXT    NOT NULL,
	reason       TEXT    NOT NULL,
	runner_name  TEXT    NOT NULL,
	host_id      TEXT    NOT NULL,
	attempts     INTEGER NOT NULL,
	avoid_hosts  TEXT    NOT NULL,
	conclusion   TEXT    NOT NULL,
	created_at   INTEGER NOT NULL,
	queued_at    INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL,
	started_at   INTEGER NOT NULL,
	completed_at INTEGER NOT NULL
);
CREATE INDEX jobs_state     ON jobs (state);
CREATE INDEX jobs_runner    ON jobs (runner_name);
CREATE INDEX jobs_label_key ON jobs (label_key, state);
CREATE INDEX jobs_org       ON jobs (org);
CREATE INDEX jobs_repo      ON jobs (repo);
CREATE INDEX jobs_newest    ON jobs (queued_at DESC, id DESC);

CREATE TABLE job_events (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	job_id     INTEGER NOT NULL REFERENCES jobs (id),
	at         INTEGER NOT NULL,
	from_state TEXT    NOT NULL,
	to_state   TEXT    NOT NULL,
	source     TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	runner     TEXT    NOT NULL,
	host       TEXT    NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
CREATE INDEX job_events_at  ON job_events (at);

CREATE TABLE runners (
	name         TEXT    PRIMARY KEY,
	host_id      TEXT    NOT NULL,
	job_id       INTEGER NOT NULL,
	installation INTEGER NOT NULL,
	org          TEXT    NOT NULL,
	repo         TEXT    NOT NULL,
	labels       TEXT    NOT NULL,
	label_key    TEXT    NOT NULL,
	arch         TEXT    NOT NULL,
	emulated     INTEGER NOT NULL,
	vcpus        REAL    NOT NULL,
	memory_mib   INTEGER NOT NULL,
	state        TEXT    NOT NULL,
	reason       TEXT    NOT NULL,
	github_id    INTEGER NOT NULL,
	vm_id        TEXT    NOT NULL,
	exit_code    INTEGER NOT NULL,
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL,
	started_at   INTEGER NOT NULL,
	busy_at      INTEGER NOT NULL,
	ended_at     INTEGER NOT NULL
);
CREATE INDEX runners_state     ON runners (state);
CREATE INDEX runners_host      ON runners (host_id, state);
CREATE INDEX runners_job       ON runners (job_id);
CREATE INDEX runners_label_key ON runners (label_key, state);
-- For Prune.
CREATE INDEX runners_ended     ON runners (ended_at) WHERE state = 'ended';

CREATE TABLE hosts (
	id         TEXT    PRIMARY KEY,
	arches     TEXT    NOT NULL,
	vcpus      REAL    NOT NULL,
	memory_mib INTEGER NOT NULL,
	state      TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	version    TEXT    NOT NULL,
	last_seen  INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);

CREATE TABLE repos (
	full_name    TEXT    PRIMARY KEY,
	installation INTEGER NOT NULL,
	last_active  INTEGER NOT NULL
);
CREATE INDEX repos_last_active ON repos (last_active);

CREATE TABLE counters (
	name  TEXT    PRIMARY KEY,
	value INTEGER NOT NULL
);
