-- Hushwire server schema on PostgreSQL, version 4: the key directory
-- (hushwire_store::KeyDirectory) and account reset.
--
-- directory_secret: the directory's secret (the server's VRF and signing key seeds),
-- one row, written once (an insert that does nothing when the row exists, so of
-- several nodes storing their candidates the first one stays).
-- directory_epochs: the append-only log of published epochs (opaque records the server
-- replays), numbered from 1 without gaps; an epoch is inserted only as the next number
-- (the primary key settles two nodes publishing the same number).
-- directory_changes: handles whose directory entry must be (re)published, in change
-- order; added in the transaction of the change itself (account creation, a stored
-- device list, an account reset) under a transaction-scoped advisory lock taken just
-- before the insert, so seqs commit in increasing order and a publisher consuming
-- "every seq up to N" never consumes one it did not see. Every existing account is
-- queued once here, so an existing server's accounts get published.
CREATE TABLE directory_secret (
    id     SMALLINT PRIMARY KEY CHECK (id = 1),
    secret BYTEA NOT NULL
);

CREATE TABLE directory_epochs (
    epoch           BIGINT PRIMARY KEY,
    published_at_ms BIGINT NOT NULL,
    record          BYTEA NOT NULL
);

CREATE TABLE directory_changes (
    seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle TEXT NOT NULL
);

INSERT INTO directory_changes (handle) SELECT handle FROM accounts ORDER BY handle;
