-- fleetgate schema v3: device lifecycle states and their events, per-device stats.
-- devices.latest changes format with it: a JSON list of [name, [[label, value], ...], value,
-- timestamp_ms] (a histogram's value is [count, sum]); v1-v2 objects are still read.
ALTER TABLE devices ADD COLUMN state TEXT;             -- online | late | offline
ALTER TABLE devices ADD COLUMN state_since_ms INTEGER;
ALTER TABLE devices ADD COLUMN stats TEXT;             -- JSON: frames, duplicates per boot, boots

-- State changes and reboots, kept for device_event_retention_days. Advisory like the devices
-- table: written within a second of the change, not in the frames' transaction.
CREATE TABLE device_events (
    id            INTEGER PRIMARY KEY,
    device_id     TEXT    NOT NULL,
    ts_ms         INTEGER NOT NULL,
    kind          TEXT    NOT NULL,      -- state | reboot
    state         TEXT,
    previous      TEXT,
    boot          INTEGER,
    previous_boot INTEGER,
    reason        TEXT                   -- birth | telemetry | death | timeout
);
CREATE INDEX device_events_by_device ON device_events (device_id, id);
CREATE INDEX device_events_by_time ON device_events (ts_ms);
