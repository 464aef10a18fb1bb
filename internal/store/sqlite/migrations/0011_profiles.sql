-- 0011: job resource profiles. A live runner's samples arrive in batches
-- (profile_samples, JSON arrays of profile.Sample); when its VM ends they
-- become one profile (summary and chart points, internal/profile), kept
-- for store.ProfileRetention.
CREATE TABLE profile_samples (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	runner      TEXT    NOT NULL,
	received_at INTEGER NOT NULL,
	samples     TEXT    NOT NULL
);
CREATE INDEX profile_samples_runner ON profile_samples (runner, seq);
CREATE INDEX profile_samples_received ON profile_samples (received_at);

CREATE TABLE profiles (
	runner   TEXT    PRIMARY KEY,
	job_id   INTEGER NOT NULL,
	ended_at INTEGER NOT NULL,
	summary  TEXT    NOT NULL,
	points   TEXT    NOT NULL
);
CREATE INDEX profiles_job ON profiles (job_id);
CREATE INDEX profiles_ended ON profiles (ended_at);
