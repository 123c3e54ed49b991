-- Hushwire server schema on PostgreSQL, version 5: the key directory's publisher lease
-- (hushwire_store::KeyDirectory::claim_directory_publisher).
--
-- directory_publisher: at most one row, the node that publishes the key directory's
-- epochs and until when (Unix ms, the nodes' clocks). Claimed by an upsert that
-- replaces the row only when it ran out or names the same node: nodes claiming together
-- meet at the primary key, and each sees the row the winner committed. Only spares the
-- others a publication they would lose; the epoch log's append still decides.
CREATE TABLE directory_publisher (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
