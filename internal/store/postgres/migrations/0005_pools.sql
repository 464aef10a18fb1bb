-- 0005: SQLite's 0020: warm pools. A pool runner is a VM booted ahead of
-- any job for the label set "pool" names; it is bound to a job only when a
-- placement pass claims it. image is the image id its VM booted; ready_at
-- is when its guest said it was ready, claimed_at when a job took it.
ALTER TABLE runners ADD COLUMN pool TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN image TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN ready_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN claimed_at BIGINT NOT NULL DEFAULT 0;
-- kept_until: a failed job's VM kept for debugging until then (0: not).
ALTER TABLE runners ADD COLUMN kept_until BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runners_pool ON runners (pool, state);
