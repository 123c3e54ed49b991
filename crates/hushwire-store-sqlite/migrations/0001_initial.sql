-- Hushwire server schema, version 1.
--
-- Conventions: times are Unix milliseconds; u64 values are stored as INTEGER
-- (saturated at 2^63-1). Devices are never deleted, only flagged revoked.

CREATE TABLE accounts (
    handle        TEXT PRIMARY KEY NOT NULL,
    account_key   BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- id: the storage-wide DeviceId (AUTOINCREMENT: never reused).
-- seq_floor: the highest mailbox seq ever removed (ack, expiry, revocation), so the
-- next seq survives a restart even when the mailbox is empty:
-- next seq = max(seq_floor, max(mailbox.seq)) + 1.
CREATE TABLE devices (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    handle             TEXT NOT NULL REFERENCES accounts(handle),
    device_no          INTEGER NOT NULL,
    device_key         BLOB NOT NULL,
    cert_created_at_ms INTEGER NOT NULL,
    cert_signature     BLOB NOT NULL,
    revoked            INTEGER NOT NULL DEFAULT 0,
    seq_floor          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (handle, device_no)
);

CREATE TABLE invites (
    code          TEXT PRIMARY KEY NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms    INTEGER
);

CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY,
    device      INTEGER NOT NULL REFERENCES devices(id),
    ciphersuite INTEGER NOT NULL,
    last_resort INTEGER NOT NULL,
    data        BLOB NOT NULL
);
-- Claim order: oldest one-time package first.
CREATE INDEX key_packages_by_device ON key_packages (device, ciphersuite, last_resort, id);

-- One ordered log per group: only its counters live here (bodies are in messages).
CREATE TABLE groups (
    group_id      BLOB PRIMARY KEY NOT NULL,
    epoch         INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE group_members (
    group_id BLOB NOT NULL REFERENCES groups(group_id),
    device   INTEGER NOT NULL REFERENCES devices(id),
    PRIMARY KEY (group_id, device)
) WITHOUT ROWID;

CREATE TABLE group_infos (
    group_id BLOB PRIMARY KEY NOT NULL REFERENCES groups(group_id),
    epoch    INTEGER NOT NULL,
    data     BLOB NOT NULL
);

-- Bodies, stored once; refcount = mailbox entries still referring to the row. A row
-- is deleted when its refcount reaches 0 or its retention ends.
-- (No foreign key from mailbox.message: it would need an index on mailbox(message)
-- for every body deletion; refcount keeps the two consistent.)
CREATE TABLE messages (
    id             INTEGER PRIMARY KEY,
    group_id       BLOB NOT NULL,
    group_seq      INTEGER NOT NULL,
    sender         INTEGER NOT NULL REFERENCES devices(id),
    message_id     BLOB NOT NULL,
    kind           INTEGER NOT NULL,
    server_time_ms INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    refcount       INTEGER NOT NULL,
    payload        BLOB NOT NULL
);
CREATE INDEX messages_by_expiry ON messages (expires_at_ms);

CREATE TABLE mailbox (
    device        INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    message       INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX mailbox_by_expiry ON mailbox (expires_at_ms);

-- Idempotency records: the original result of an accepted (sender, message_id).
-- Keyed by message_id first: clients use UUIDv7, so new records append to the tree
-- instead of touching one page per sender in every commit.
CREATE TABLE dedup (
    message_id    BLOB NOT NULL,
    sender        INTEGER NOT NULL,
    group_seq     INTEGER NOT NULL,
    epoch         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (message_id, sender)
) WITHOUT ROWID;
CREATE INDEX dedup_by_expiry ON dedup (expires_at_ms);
