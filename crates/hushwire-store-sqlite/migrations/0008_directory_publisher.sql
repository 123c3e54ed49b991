-- Hushwire server schema, version 8: the key directory's publisher lease
-- (hushwire_store::KeyDirectory::claim_directory_publisher).
--
-- directory_publisher: at most one row, the node that publishes the key directory's
-- epochs and until when (Unix ms). Claimed by an upsert that replaces the row only when
-- it ran out or names the same node. Transient: a migration does not copy it.
CREATE TABLE directory_publisher (
    id       INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
