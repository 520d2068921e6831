-- Stale markers for every series a boot wrote (issue 11, finding 9): the series themselves, kept
-- from the commit that first stored one, and the newest sample time of each boot, so a death, a
-- Will, an offline timeout or a reboot closes them all, also after a restart.
CREATE TABLE boot_series (
    device_id TEXT    NOT NULL,
    boot      INTEGER NOT NULL,
    labels    BLOB    NOT NULL,  -- the series' encoded remote-write labels (sorted, external included)
    PRIMARY KEY (device_id, boot, labels)
) WITHOUT ROWID;

ALTER TABLE ledger ADD COLUMN newest_ms INTEGER;  -- newest sample time stored of the boot (ms)
