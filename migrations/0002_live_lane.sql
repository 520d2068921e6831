-- fleetgate schema v2: the live lane of a forwarder (setting remote_write_live_first).
-- While an endpoint drains a backlog, new frames may be sent ahead of it: frames in
-- (live_from, live_upto] have then been sent although the cursor (frame_id) is still below
-- live_from. Both are NULL when no live lane is open; when the backlog reaches live_from the
-- cursor jumps to live_upto and they are cleared.
ALTER TABLE cursors ADD COLUMN live_from INTEGER;
ALTER TABLE cursors ADD COLUMN live_upto INTEGER;
