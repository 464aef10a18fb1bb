-- 0003: each runner's egress policy (JSON of egress.Policy) and, once its
-- VM has ended, what the VM did under it (JSON of egress.Record; '' for
-- none).
ALTER TABLE runners ADD COLUMN egress        TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN egress_record TEXT NOT NULL DEFAULT '';
