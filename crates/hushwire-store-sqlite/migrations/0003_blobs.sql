-- Hushwire server schema, version 3: media blobs (metadata only; the bytes live in the
-- blob store, `hushwire-blobstore`).
--
-- A blob is created for one group by one device. Its readers are the group's roster at
-- creation plus the uploading account's devices (revoked ones left out). Parts are
-- recorded once their bytes are stored, with their SHA-256 so a re-sent part is
-- recognised. Times are Unix milliseconds.
--
-- completed_at_ms: when the last part was recorded (NULL while parts are missing).
-- fetched_at_ms:   when every reader except the uploading device (revoked ones left
--                  out) had fetched it completely; set on completion when there is none.
-- deleting_at_ms:  deletion has begun: the blob is invisible, its quota released, its
--                  bytes are being deleted; the row goes once they are.

CREATE TABLE blobs (
    blob_id         BLOB PRIMARY KEY NOT NULL,
    account         TEXT NOT NULL REFERENCES accounts(handle),
    uploader        INTEGER NOT NULL REFERENCES devices(id),
    group_id        BLOB NOT NULL,
    size            INTEGER NOT NULL,
    part_size       INTEGER NOT NULL,
    parts_stored    INTEGER NOT NULL DEFAULT 0,
    stored_bytes    INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    completed_at_ms INTEGER,
    fetched_at_ms   INTEGER,
    deleting_at_ms  INTEGER
) WITHOUT ROWID;
-- Quota: the sum of an account's live blobs.
CREATE INDEX blobs_by_account ON blobs (account, expires_at_ms);
-- The sweeper's four questions, each answered by an index.
CREATE INDEX blobs_by_expiry ON blobs (expires_at_ms);
CREATE INDEX blobs_incomplete ON blobs (created_at_ms) WHERE completed_at_ms IS NULL;
CREATE INDEX blobs_fetched ON blobs (fetched_at_ms) WHERE fetched_at_ms IS NOT NULL;
CREATE INDEX blobs_deleting ON blobs (deleting_at_ms) WHERE deleting_at_ms IS NOT NULL;

CREATE TABLE blob_parts (
    blob_id BLOB NOT NULL REFERENCES blobs(blob_id),
    part    INTEGER NOT NULL,
    len     INTEGER NOT NULL,
    sha256  BLOB NOT NULL,
    PRIMARY KEY (blob_id, part)
) WITHOUT ROWID;

CREATE TABLE blob_readers (
    blob_id       BLOB NOT NULL REFERENCES blobs(blob_id),
    device        INTEGER NOT NULL REFERENCES devices(id),
    fetched_at_ms INTEGER,
    PRIMARY KEY (blob_id, device)
) WITHOUT ROWID;
