-- 0007: where a job comes from and GitHub's own times, as GitHub reports
-- them (ms since the epoch; 0: not known).
ALTER TABLE jobs ADD COLUMN head_branch TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN head_sha TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN html_url TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN sender TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN gh_started_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN gh_completed_at INTEGER NOT NULL DEFAULT 0;
