-- Enrolment tokens (only their hash) and agent credentials (only their hash).
CREATE TABLE enroll_tokens (
    hash       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL DEFAULT 0,
    used_by    TEXT NOT NULL DEFAULT '',
    comment    TEXT NOT NULL DEFAULT ''
);

CREATE TABLE agent_credentials (
    host_id    TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL DEFAULT 0
);
