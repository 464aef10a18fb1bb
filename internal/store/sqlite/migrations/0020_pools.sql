-- 0020: warm pools. A pool runner is a VM booted ahead of any job for the
-- label set "pool" names; it is bound to a job (and gets its scope) only
-- when a placement pass claims it. image is the image id its VM booted
-- (a pool VM of a replaced image is recycled); ready_at is when its guest
-- said it was ready, claimed_at when a job took it (0: not yet).
ALTER TABLE runners ADD COLUMN pool TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN image TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN ready_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN claimed_at INTEGER NOT NULL DEFAULT 0;
-- kept_until: a failed job's VM kept for debugging until then (0: not).
ALTER TABLE runners ADD COLUMN kept_until INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runners_pool ON runners (pool, state);
