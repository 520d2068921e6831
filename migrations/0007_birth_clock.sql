-- A boot's clock correction is measured once, at its first birth, and kept (issue 11, found by
-- the model-based test): a redelivered birth re-measured it, and frames stored before were then
-- read back and forwarded with another correction than they were first sent with.
ALTER TABLE births ADD COLUMN clock_ahead_ms INTEGER;  -- NULL: rows from before this migration
