-- Boots whose stale markers are queued and that stored no frame since (issue 11, found by the
-- model-based test): remembered across restarts, so a Will redelivered after a restart does not
-- close a boot again and send its markers a second time (once refused with a 400, never again).
CREATE TABLE closed_boots (
    device_id TEXT    NOT NULL,
    boot      INTEGER NOT NULL,
    PRIMARY KEY (device_id, boot)
) WITHOUT ROWID;
