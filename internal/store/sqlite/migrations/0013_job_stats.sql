-- 0013: insights read jobs by when they ended (job statistics per period).
CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at <> 0;
