-- 0004: an enrolment token may be bound to one host id ('' for a new
-- host), and may re-admit that host after a revocation.
ALTER TABLE enroll_tokens ADD COLUMN host_id TEXT    NOT NULL DEFAULT '';
ALTER TABLE enroll_tokens ADD COLUMN readmit INTEGER NOT NULL DEFAULT 0;
