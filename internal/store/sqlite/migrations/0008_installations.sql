-- 0008: installations of the App that are not simply active, as their
-- webhooks told (installation deleted, suspend, unsuspend).
CREATE TABLE installations (
	id         INTEGER PRIMARY KEY,
	account    TEXT    NOT NULL,
	state      TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	updated_at INTEGER NOT NULL
);
