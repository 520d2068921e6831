-- fleetgate schema v1: the durable buffer, dedup ledger, births, fleet rows, quarantine,
-- dead letters. Applied once by gateway/db.py inside one transaction.

-- Every accepted frame, in commit order. A frame is deleted once every endpoint's cursor has
-- passed it. AUTOINCREMENT so ids are never reused after the table empties: cursors compare ids.
CREATE TABLE frames (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        INTEGER NOT NULL,          -- 0 telemetry, 1 birth (yields fleet_device_info)
    device_id   TEXT    NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER,                   -- NULL for births
    received_ms INTEGER NOT NULL,
    payload     BLOB    NOT NULL           -- the raw msgpack frame as the device sent it
);

-- Births by boot: aliases and labels needed to decode that boot's frames, across restarts.
CREATE TABLE births (
    device_id   TEXT    NOT NULL,
    boot        INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    payload     BLOB    NOT NULL,
    PRIMARY KEY (device_id, boot)
) WITHOUT ROWID;

-- Telemetry that arrived before its boot's birth: kept (and acked) until the birth comes.
CREATE TABLE held (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT    NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE INDEX held_by_boot ON held (device_id, boot);

-- Dedup ledger: seq ranges received per (device, boot), written with the frames they cover.
CREATE TABLE ledger (
    device_id  TEXT    NOT NULL,
    boot       INTEGER NOT NULL,
    ranges     TEXT    NOT NULL,           -- "start-end,..." half-open
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, boot)
) WITHOUT ROWID;

-- One cursor per remote-write endpoint: the last frame id it has taken.
CREATE TABLE cursors (
    endpoint   TEXT    PRIMARY KEY,
    frame_id   INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

-- Fleet state checkpoint (the live copy is in memory).
CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    platform      TEXT,
    firmware      TEXT,
    boot          INTEGER,
    interval_ms   INTEGER,
    labels        TEXT,                    -- JSON object
    first_seen_ms INTEGER,
    last_seen_ms  INTEGER,
    last_seq      INTEGER,
    online        INTEGER NOT NULL DEFAULT 0,
    latest        TEXT                     -- JSON: {series: [value, timestamp_ms]}
);

-- Frames that failed validation, kept for inspection (bounded by the gateway).
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    device_id   TEXT,
    reason      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    payload     BLOB    NOT NULL
);

-- Samples an endpoint refused (4xx), with its reason; never retried automatically.
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY,
    endpoint   TEXT    NOT NULL,
    frame_id   INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    status     INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    series     TEXT    NOT NULL,           -- labels and sample, human-readable
    entry      BLOB    NOT NULL            -- the encoded TimeSeries entry, for a later replay
);

-- Durable counters (drops by reason) so totals survive restarts.
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
