-- fleetgate schema v5: a forwarder's position can point inside a frame (issue 11, finding 11).
-- A frame with more samples than remote_write_max_samples is split across requests; after each
-- accepted part the cursor records how many entries of the next frame (frame_id + 1) were sent,
-- so a restart resumes after the last accepted part and the at-least-once window stays one
-- request. live_offset is the same for the live lane's live_upto. Frames are deleted only once
-- every cursor is past the whole frame (frame_id), as before.
ALTER TABLE cursors ADD COLUMN entry_offset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cursors ADD COLUMN live_offset INTEGER NOT NULL DEFAULT 0;
