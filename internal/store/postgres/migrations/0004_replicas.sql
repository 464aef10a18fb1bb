-- 0004: SQLite's 0019: a host records the replica that holds its agent's
-- stream, which keeps last_seen fresh and carries out the runner commands
-- the leader queues for the host when it does not hold the agent itself.
ALTER TABLE hosts ADD COLUMN replica TEXT NOT NULL DEFAULT '';
CREATE TABLE runner_commands (
	seq     BIGSERIAL PRIMARY KEY,
	host_id TEXT   NOT NULL,
	runner  TEXT   NOT NULL,
	kind    TEXT   NOT NULL,
	reason  TEXT   NOT NULL,
	at      BIGINT NOT NULL
);
CREATE INDEX runner_commands_host ON runner_commands (host_id, seq);
