-- Hushwire server schema, version 2: less write work per message and per ack.
--
-- * The mailbox seq floor moves out of the wide `devices` table (keys, certificates)
--   into a narrow table, so recording it dirties one small page instead of a random
--   page of `devices`. Semantics are unchanged: seq_floor is the highest mailbox seq
--   ever removed (ack, expiry, revocation), and
--   next seq = max(seq_floor, max(mailbox.seq)) + 1.
-- * The expiry indexes of `messages` and `mailbox` go: each cost two B-tree writes per
--   message (insert, then delete on ack) for a sweep that runs once an hour. Both
--   tables hold only what is not yet acknowledged, and the sweep scans them in bounded
--   steps instead. `dedup_by_expiry` stays: `dedup` holds every id for the whole
--   retention period, far too much to scan.

CREATE TABLE mailbox_floor (
    device    INTEGER PRIMARY KEY NOT NULL,
    seq_floor INTEGER NOT NULL
);
INSERT INTO mailbox_floor (device, seq_floor)
    SELECT id, seq_floor FROM devices WHERE seq_floor > 0;
ALTER TABLE devices DROP COLUMN seq_floor;

DROP INDEX messages_by_expiry;
DROP INDEX mailbox_by_expiry;
