-- 0019: several control-plane replicas on one database (PostgreSQL's
-- 0004; SQLite has one replica, but the schema and the code are shared).
-- A host records the replica that holds its agent's stream: that replica
-- keeps last_seen fresh and carries out the runner commands the leader
-- queues for the host (launch or stop a VM) when it does not hold the
-- agent itself.
ALTER TABLE hosts ADD COLUMN replica TEXT NOT NULL DEFAULT '';
CREATE TABLE runner_commands (
	seq     INTEGER PRIMARY KEY AUTOINCREMENT,
	host_id TEXT    NOT NULL,
	runner  TEXT    NOT NULL,
	kind    TEXT    NOT NULL,
	reason  TEXT    NOT NULL,
	at      INTEGER NOT NULL
);
CREATE INDEX runner_commands_host ON runner_commands (host_id, seq);
