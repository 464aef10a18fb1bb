-- 0012: the audit log of operator actions (drain, cordon, ...), from the
-- API and the dashboard. actor is a token's fingerprint, never a token.
CREATE TABLE audit_log (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	at     INTEGER NOT NULL,
	actor  TEXT    NOT NULL,
	action TEXT    NOT NULL,
	target TEXT    NOT NULL,
	addr   TEXT    NOT NULL,
	via    TEXT    NOT NULL,
	result TEXT    NOT NULL
);
