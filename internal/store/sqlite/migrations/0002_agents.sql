-- 0002: enrolment tokens and agent credentials. Only hashes of the secrets
-- are kept. Times as in 0001: INTEGER unix milliseconds UTC, 0 for none.

CREATE TABLE enroll_tokens (
	hash       TEXT    PRIMARY KEY,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER NOT NULL DEFAULT 0,
	used_by    TEXT    NOT NULL DEFAULT '',
	comment    TEXT    NOT NULL DEFAULT ''
);
-- EnrollTokens lists newest first.
CREATE INDEX enroll_tokens_created ON enroll_tokens (created_at DESC, hash);

-- One credential per host: enrolling again replaces it.
CREATE TABLE agent_credentials (
	host_id    TEXT    PRIMARY KEY,
	hash       TEXT    NOT NULL,
	created_at INTEGER NOT NULL,
	revoked_at INTEGER NOT NULL DEFAULT 0
);
