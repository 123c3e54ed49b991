-- Hushwire server schema on PostgreSQL, version 3: multi-device.
-- device_lists: each account's latest signed device list (opaque to the store; the
-- server verified it), replaced only by a higher version (an upsert whose update is
-- conditional on the version, so two nodes racing keep the higher one).
-- links / link_slots: link sessions (hushwire_store::Links), the write-once slots
-- through which an existing device and a new one exchange the (end-to-end encrypted)
-- link messages; in the database so the two devices may use different nodes.
-- Writing a slot locks its session row, so the slot count is checked exactly.
CREATE TABLE device_lists (
    handle  TEXT PRIMARY KEY REFERENCES accounts (handle),
    version BIGINT NOT NULL,
    data    BYTEA NOT NULL
);

CREATE TABLE links (
    id            BYTEA PRIMARY KEY,
    owner_handle  TEXT NOT NULL,
    owner_device  BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX links_by_expiry ON links (expires_at_ms);

CREATE TABLE link_slots (
    link BYTEA NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    slot TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (link, slot)
);
