-- Hushwire server schema, version 6: multi-device.
-- device_lists: each account's latest signed device list (opaque to the store; the
-- server verified it), replaced only by a higher version.
-- links / link_slots: link sessions (hushwire_store::Links), the write-once slots
-- through which an existing device and a new one exchange the (end-to-end encrypted)
-- link messages. Short-lived: purged once expired.
CREATE TABLE device_lists (
    handle  TEXT PRIMARY KEY NOT NULL REFERENCES accounts (handle),
    version INTEGER NOT NULL,
    data    BLOB NOT NULL
);

CREATE TABLE links (
    id            BLOB PRIMARY KEY NOT NULL,
    owner_handle  TEXT NOT NULL,
    owner_device  INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX links_by_expiry ON links (expires_at_ms);

-- A rowid table (slots may be megabytes); the unique key also serves the cascade.
CREATE TABLE link_slots (
    link BLOB NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    slot TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (link, slot)
);
