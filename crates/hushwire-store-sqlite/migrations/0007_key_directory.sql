-- Hushwire server schema, version 7: the key directory (hushwire_store::KeyDirectory)
-- and account reset.
--
-- directory_secret: the directory's secret (the server's VRF and signing key seeds),
-- one row, written once.
-- directory_epochs: the append-only log of published epochs (opaque records the server
-- replays), numbered from 1 without gaps.
-- directory_changes: handles whose directory entry must be (re)published, in change
-- order (AUTOINCREMENT: a seq is never reused); added in the transaction of the change
-- itself (account creation, a stored device list, an account reset) and consumed by
-- the append of the epoch that published them. Every existing account is queued once
-- here, so an existing server's accounts get published.
CREATE TABLE directory_secret (
    id     INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    secret BLOB NOT NULL
);

CREATE TABLE directory_epochs (
    epoch           INTEGER PRIMARY KEY NOT NULL,
    published_at_ms INTEGER NOT NULL,
    record          BLOB NOT NULL
);

CREATE TABLE directory_changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    handle TEXT NOT NULL
);

INSERT INTO directory_changes (handle) SELECT handle FROM accounts ORDER BY handle;
