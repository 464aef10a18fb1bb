-- 0006: how often a job Tandem failed was opened again because GitHub
-- still reported it queued (internal/lifecycle's Reopen).
ALTER TABLE jobs ADD COLUMN reopens INTEGER NOT NULL DEFAULT 0;
