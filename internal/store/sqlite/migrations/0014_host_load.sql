-- 0014: each host's load, once a minute, for a day and a little more.
CREATE TABLE host_load (
	host TEXT    NOT NULL,
	at   INTEGER NOT NULL,
	load TEXT    NOT NULL,
	PRIMARY KEY (host, at)
);
CREATE INDEX host_load_at ON host_load (at);
