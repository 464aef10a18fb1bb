-- 0010: the runner group (by name) an organisation runner joins; "" for
-- the configured group id (GitHub's Default group unless set) and for
-- repository runners, which are in no group.
ALTER TABLE runners ADD COLUMN runner_group TEXT NOT NULL DEFAULT '';
