-- The size of a quarantined frame (issue 11, finding 7): only its first 8 KiB are kept in
-- payload, so LENGTH(payload) understates a "frame too large". NULL in rows written before
-- this migration; they report LENGTH(payload), the most that is known of them.
ALTER TABLE quarantine ADD COLUMN size INTEGER;
