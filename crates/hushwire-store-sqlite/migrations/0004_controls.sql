-- Hushwire server schema, version 4: conversation controls (hushwire_store::Controls).
--
-- blocks: account `blocker` blocks account `blocked`. The server learns only that pair;
-- submissions skip the blocker's devices for the blocked account's application
-- messages and Welcomes (see ops.rs, `submit`).
CREATE TABLE blocks (
    blocker       TEXT NOT NULL,
    blocked       TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks (blocked);

-- One row per mailbox entry of a disappearing message (Submission::disappearing), in
-- expiry order: the purge (every second) reads only these, never the mailboxes. A row
-- whose entry was acknowledged meanwhile is dropped when its time comes; `message` is
-- checked against the entry, so a reused body id is never touched.
CREATE TABLE timed_entries (
    expires_at_ms INTEGER NOT NULL,
    device        INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    message       INTEGER NOT NULL,
    PRIMARY KEY (expires_at_ms, device, seq)
) WITHOUT ROWID;
