-- Hushwire server schema on PostgreSQL, version 1.
--
-- Conventions: times are Unix milliseconds; u64 values are stored as BIGINT (saturated
-- at 2^63-1); u16/u32 values as INTEGER/BIGINT. Devices are never deleted, only flagged
-- revoked. Rows that change on every message (group counters, mailbox seq counters)
-- live in narrow tables with free space per page, so their updates stay HOT (no index
-- write).

CREATE TABLE accounts (
    handle        TEXT PRIMARY KEY,
    account_key   BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- id: the storage-wide DeviceId (an identity: never reused).
CREATE TABLE devices (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle             TEXT NOT NULL REFERENCES accounts (handle),
    device_no          BIGINT NOT NULL,
    device_key         BYTEA NOT NULL,
    cert_created_at_ms BIGINT NOT NULL,
    cert_signature     BYTEA NOT NULL,
    revoked            BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (handle, device_no)
);

-- The last mailbox seq handed out to each device (one row per device, created with it).
-- Seqs are allocated by incrementing this row inside the submitting transaction, so
-- they are gap-free per device, never reused (acks and expiry never lower it), and
-- several nodes allocating for the same device serialize on the row lock.
CREATE TABLE mailbox_seqs (
    device   BIGINT PRIMARY KEY REFERENCES devices (id),
    last_seq BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 70);

CREATE TABLE invites (
    code          TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT
);

CREATE TABLE key_packages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device      BIGINT NOT NULL REFERENCES devices (id),
    ciphersuite INTEGER NOT NULL,
    last_resort BOOLEAN NOT NULL,
    data        BYTEA NOT NULL
);
-- Claim order: oldest one-time package first.
CREATE INDEX key_packages_by_device ON key_packages (device, ciphersuite, last_resort, id);

-- One ordered log per group: its counters (bodies are in messages). The row is the
-- group's fence: every submission locks it (SELECT ... FOR UPDATE) for its transaction.
CREATE TABLE groups (
    group_id      BYTEA PRIMARY KEY,
    epoch         BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE group_members (
    group_id BYTEA NOT NULL REFERENCES groups (group_id),
    device   BIGINT NOT NULL REFERENCES devices (id),
    PRIMARY KEY (group_id, device)
);

CREATE TABLE group_infos (
    group_id BYTEA PRIMARY KEY REFERENCES groups (group_id),
    epoch    BIGINT NOT NULL,
    data     BYTEA NOT NULL
);

-- Bodies, stored once per submission (plus once per Welcome); refcount = mailbox
-- entries still referring to the row. A body is deleted when its refcount reaches 0
-- (the last reference acknowledged, revoked, retracted or purged) or its retention
-- ends. Every mailbox entry of a body shares its expiry.
CREATE TABLE messages (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id       BYTEA NOT NULL,
    group_seq      BIGINT NOT NULL,
    sender         BIGINT NOT NULL REFERENCES devices (id),
    message_id     BYTEA NOT NULL,
    kind           SMALLINT NOT NULL,
    server_time_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    disappearing   BOOLEAN NOT NULL,
    refcount       INTEGER NOT NULL,
    payload        BYTEA NOT NULL
);
-- Retention sweep, oldest first.
CREATE INDEX messages_by_expiry ON messages (expires_at_ms);
-- The prompt purge reads only disappearing bodies.
CREATE INDEX messages_disappearing ON messages (expires_at_ms) WHERE disappearing;
-- Retraction finds a message by its client id.
CREATE INDEX messages_by_message_id ON messages (message_id);

-- Per-device store-and-forward queue: references to bodies.
-- (No foreign key to messages: refcount keeps the two consistent, and a key check per
-- entry would lock the body row against concurrent acks.)
CREATE TABLE mailbox (
    device  BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    message BIGINT NOT NULL,
    PRIMARY KEY (device, seq)
);
-- A body's entries (expiry, purge, retraction).
CREATE INDEX mailbox_by_message ON mailbox (message);

-- Idempotency records: the original result of an accepted (sender, message_id).
CREATE TABLE dedup (
    message_id    BYTEA NOT NULL,
    sender        BIGINT NOT NULL,
    group_seq     BIGINT NOT NULL,
    epoch         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (message_id, sender)
);
CREATE INDEX dedup_by_expiry ON dedup (expires_at_ms);

-- Media blobs (metadata only; the bytes live in the blob store). See
-- hushwire_store::Blobs for the lifecycle. deleting_at_ms set: invisible, quota
-- released, bytes being deleted; the row goes once they are.
CREATE TABLE blobs (
    blob_id         BYTEA PRIMARY KEY,
    account         TEXT NOT NULL REFERENCES accounts (handle),
    uploader        BIGINT NOT NULL REFERENCES devices (id),
    group_id        BYTEA NOT NULL,
    size            BIGINT NOT NULL,
    part_size       BIGINT NOT NULL,
    parts_stored    BIGINT NOT NULL DEFAULT 0,
    stored_bytes    BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    completed_at_ms BIGINT,
    fetched_at_ms   BIGINT,
    deleting_at_ms  BIGINT
);
CREATE INDEX blobs_by_account ON blobs (account, expires_at_ms);
CREATE INDEX blobs_by_expiry ON blobs (expires_at_ms) WHERE deleting_at_ms IS NULL;
CREATE INDEX blobs_incomplete ON blobs (created_at_ms)
    WHERE completed_at_ms IS NULL AND deleting_at_ms IS NULL;
CREATE INDEX blobs_fetched ON blobs (fetched_at_ms)
    WHERE fetched_at_ms IS NOT NULL AND deleting_at_ms IS NULL;
CREATE INDEX blobs_deleting ON blobs (deleting_at_ms, blob_id) WHERE deleting_at_ms IS NOT NULL;

CREATE TABLE blob_parts (
    blob_id BYTEA NOT NULL REFERENCES blobs (blob_id),
    part    BIGINT NOT NULL,
    len     BIGINT NOT NULL,
    sha256  BYTEA NOT NULL,
    PRIMARY KEY (blob_id, part)
);

CREATE TABLE blob_readers (
    blob_id       BYTEA NOT NULL REFERENCES blobs (blob_id),
    device        BIGINT NOT NULL REFERENCES devices (id),
    fetched_at_ms BIGINT,
    PRIMARY KEY (blob_id, device)
);

-- Conversation controls: account `blocker` blocks account `blocked`.
CREATE TABLE blocks (
    blocker       TEXT NOT NULL,
    blocked       TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked);
