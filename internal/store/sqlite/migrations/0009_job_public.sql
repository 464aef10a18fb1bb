-- 0009: whether a job's repository is public (its runner then gets the
-- org's egress policy, and Tandem runs it only where the config allows).
ALTER TABLE jobs ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
