//! The table map: every PostgreSQL table of `hushwire-store-postgres`, with the SQLite
//! query that produces its rows from an embedded server's database.
//!
//! Each [`Table`] lists the PostgreSQL columns in order, their [`Kind`], how many
//! leading columns form the unique key the copy pages by, and a SQLite `SELECT` whose
//! result columns carry the same names in the same order. The same logical row is
//! computed on both sides, so its canonical encoding (see `value.rs`) can be hashed
//! on both sides and compared.
//!
//! SQLite tables and columns without a PostgreSQL counterpart are folded in:
//! - `mailbox_floor` (the highest seq ever removed) and the mailbox's highest seq become
//!   `mailbox_seqs.last_seq` (the last seq handed out): next seq = last + 1 on both.
//! - `timed_entries` (one row per mailbox entry of a disappearing message) becomes
//!   `messages.disappearing` (a body with a live entry recorded as timed).
//! - `mailbox.expires_at_ms` is always the body's `messages.expires_at_ms` (one
//!   submission sets both); PostgreSQL keeps it on the body only.
//! - `sqlite_sequence` (AUTOINCREMENT high-water marks) sets the identity sequences of
//!   `devices`, `reports` and `directory_changes`, so ids and seqs are never reused.

/// How a column is typed in PostgreSQL (and so how it is bound and read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// SMALLINT.
    I16,
    /// INTEGER.
    I32,
    /// BIGINT NOT NULL.
    I64,
    /// BIGINT, nullable.
    OptI64,
    /// BOOLEAN (SQLite: integer 0/1).
    Bool,
    /// TEXT.
    Text,
    /// BYTEA (SQLite: BLOB).
    Bytes,
}

use Kind::*;

/// One target table and its source query.
#[derive(Debug)]
pub(crate) struct Table {
    /// PostgreSQL table name.
    pub name: &'static str,
    /// PostgreSQL columns, in order.
    pub cols: &'static [(&'static str, Kind)],
    /// The first `key` columns are the table's unique key (the copy's page order).
    pub key: usize,
    /// SQLite query yielding `cols` by name, in order (no WHERE/ORDER BY of its own
    /// at the outer level: it is wrapped).
    pub source: &'static str,
    /// Column 0 is `GENERATED ALWAYS AS IDENTITY` in PostgreSQL (BIGINT).
    pub identity: bool,
}

/// Every table, in an order that satisfies the PostgreSQL foreign keys.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        cols: &[
            ("handle", Text),
            ("account_key", Bytes),
            ("created_at_ms", I64),
        ],
        key: 1,
        source: "SELECT handle, account_key, created_at_ms FROM accounts",
        identity: false,
    },
    Table {
        name: "devices",
        cols: &[
            ("id", I64),
            ("handle", Text),
            ("device_no", I64),
            ("device_key", Bytes),
            ("cert_created_at_ms", I64),
            ("cert_signature", Bytes),
            ("revoked", Bool),
        ],
        key: 1,
        source: "SELECT id, handle, device_no, device_key, cert_created_at_ms, \
                 cert_signature, revoked FROM devices",
        identity: true,
    },
    Table {
        name: "mailbox_seqs",
        cols: &[("device", I64), ("last_seq", I64)],
        key: 1,
        source: "SELECT d.id AS device, max( \
                   coalesce((SELECT f.seq_floor FROM mailbox_floor f WHERE f.device = d.id), 0), \
                   coalesce((SELECT max(mb.seq) FROM mailbox mb WHERE mb.device = d.id), 0) \
                 ) AS last_seq FROM devices d",
        identity: false,
    },
    Table {
        name: "invites",
        cols: &[
            ("code", Text),
            ("expires_at_ms", I64),
            ("used_at_ms", OptI64),
        ],
        key: 1,
        source: "SELECT code, expires_at_ms, used_at_ms FROM invites",
        identity: false,
    },
    Table {
        name: "key_packages",
        cols: &[
            ("id", I64),
            ("device", I64),
            ("ciphersuite", I32),
            ("last_resort", Bool),
            ("data", Bytes),
        ],
        key: 1,
        source: "SELECT id, device, ciphersuite, last_resort, data FROM key_packages",
        identity: true,
    },
    Table {
        name: "groups",
        cols: &[
            ("group_id", Bytes),
            ("epoch", I64),
            ("last_seq", I64),
            ("created_at_ms", I64),
        ],
        key: 1,
        source: "SELECT group_id, epoch, last_seq, created_at_ms FROM groups",
        identity: false,
    },
    Table {
        name: "group_members",
        cols: &[("group_id", Bytes), ("device", I64)],
        key: 2,
        source: "SELECT group_id, device FROM group_members",
        identity: false,
    },
    Table {
        name: "group_infos",
        cols: &[("group_id", Bytes), ("epoch", I64), ("data", Bytes)],
        key: 1,
        source: "SELECT group_id, epoch, data FROM group_infos",
        identity: false,
    },
    Table {
        name: "messages",
        cols: &[
            ("id", I64),
            ("group_id", Bytes),
            ("group_seq", I64),
            ("sender", I64),
            ("message_id", Bytes),
            ("kind", I16),
            ("server_time_ms", I64),
            ("expires_at_ms", I64),
            ("disappearing", Bool),
            ("refcount", I32),
            ("payload", Bytes),
        ],
        key: 1,
        // The IN list is computed once (uncorrelated), not per body.
        source: "SELECT m.id AS id, m.group_id AS group_id, m.group_seq AS group_seq, \
                   m.sender AS sender, m.message_id AS message_id, m.kind AS kind, \
                   m.server_time_ms AS server_time_ms, m.expires_at_ms AS expires_at_ms, \
                   m.id IN (SELECT t.message FROM timed_entries t JOIN mailbox mb \
                            ON mb.device = t.device AND mb.seq = t.seq \
                            AND mb.message = t.message) AS disappearing, \
                   m.refcount AS refcount, m.payload AS payload \
                 FROM messages m",
        identity: true,
    },
    Table {
        name: "mailbox",
        cols: &[("device", I64), ("seq", I64), ("message", I64)],
        key: 2,
        source: "SELECT device, seq, message FROM mailbox",
        identity: false,
    },
    Table {
        name: "dedup",
        cols: &[
            ("message_id", Bytes),
            ("sender", I64),
            ("group_seq", I64),
            ("epoch", I64),
            ("expires_at_ms", I64),
        ],
        key: 2,
        source: "SELECT message_id, sender, group_seq, epoch, expires_at_ms FROM dedup",
        identity: false,
    },
    Table {
        name: "blobs",
        cols: &[
            ("blob_id", Bytes),
            ("account", Text),
            ("uploader", I64),
            ("group_id", Bytes),
            ("size", I64),
            ("part_size", I64),
            ("parts_stored", I64),
            ("stored_bytes", I64),
            ("created_at_ms", I64),
            ("expires_at_ms", I64),
            ("completed_at_ms", OptI64),
            ("fetched_at_ms", OptI64),
            ("deleting_at_ms", OptI64),
        ],
        key: 1,
        source: "SELECT blob_id, account, uploader, group_id, size, part_size, parts_stored, \
                 stored_bytes, created_at_ms, expires_at_ms, completed_at_ms, fetched_at_ms, \
                 deleting_at_ms FROM blobs",
        identity: false,
    },
    Table {
        name: "blob_parts",
        cols: &[
            ("blob_id", Bytes),
            ("part", I64),
            ("len", I64),
            ("sha256", Bytes),
        ],
        key: 2,
        source: "SELECT blob_id, part, len, sha256 FROM blob_parts",
        identity: false,
    },
    Table {
        name: "blob_readers",
        cols: &[
            ("blob_id", Bytes),
            ("device", I64),
            ("fetched_at_ms", OptI64),
        ],
        key: 2,
        source: "SELECT blob_id, device, fetched_at_ms FROM blob_readers",
        identity: false,
    },
    Table {
        name: "blocks",
        cols: &[("blocker", Text), ("blocked", Text), ("created_at_ms", I64)],
        key: 2,
        source: "SELECT blocker, blocked, created_at_ms FROM blocks",
        identity: false,
    },
    Table {
        name: "reports",
        cols: &[
            ("id", I64),
            ("reporter", Text),
            ("reported", Text),
            ("reason", Text),
            ("evidence", Bytes),
            ("created_at_ms", I64),
        ],
        key: 1,
        source: "SELECT id, reporter, reported, reason, evidence, created_at_ms FROM reports",
        identity: true,
    },
    Table {
        name: "device_lists",
        cols: &[("handle", Text), ("version", I64), ("data", Bytes)],
        key: 1,
        source: "SELECT handle, version, data FROM device_lists",
        identity: false,
    },
    Table {
        name: "links",
        cols: &[
            ("id", Bytes),
            ("owner_handle", Text),
            ("owner_device", I64),
            ("expires_at_ms", I64),
        ],
        key: 1,
        source: "SELECT id, owner_handle, owner_device, expires_at_ms FROM links",
        identity: false,
    },
    Table {
        name: "link_slots",
        cols: &[("link", Bytes), ("slot", Text), ("data", Bytes)],
        key: 2,
        source: "SELECT link, slot, data FROM link_slots",
        identity: false,
    },
    // The key directory: its secret (VRF and root-signing seeds: the new nodes must sign
    // with the keys clients pinned), its epoch log (replayed to the same roots, so no
    // client sees a rollback) and the changes not yet published.
    Table {
        name: "directory_secret",
        cols: &[("id", I16), ("secret", Bytes)],
        key: 1,
        source: "SELECT id, secret FROM directory_secret",
        identity: false,
    },
    Table {
        name: "directory_epochs",
        cols: &[("epoch", I64), ("published_at_ms", I64), ("record", Bytes)],
        key: 1,
        source: "SELECT epoch, published_at_ms, record FROM directory_epochs",
        identity: false,
    },
    Table {
        name: "directory_changes",
        cols: &[("seq", I64), ("handle", Text)],
        key: 1,
        source: "SELECT seq, handle FROM directory_changes",
        identity: true,
    },
];

/// SQLite tables this map reads (directly or folded in) or leaves out on purpose; any
/// other table in the source is reported as not migrated.
pub(crate) const KNOWN_SOURCE_TABLES: &[&str] = &[
    "accounts",
    "devices",
    "mailbox_floor",
    "invites",
    "key_packages",
    "groups",
    "group_members",
    "group_infos",
    "messages",
    "mailbox",
    "timed_entries",
    "dedup",
    "blobs",
    "blob_parts",
    "blob_readers",
    "blocks",
    "reports",
    "device_lists",
    "links",
    "link_slots",
    "directory_secret",
    "directory_epochs",
    "directory_changes",
    // The publisher lease: it runs out within minutes, and the new nodes take it.
    "directory_publisher",
    "sqlite_sequence",
];

/// Where the identity sequence of a table with [`Table::identity`] must start: the
/// SQLite AUTOINCREMENT high-water mark when the table has one, else its largest
/// identity value (column `column`).
pub(crate) fn high_water_sql(table: &str, column: &str) -> String {
    format!(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0), \
                    coalesce((SELECT max({column}) FROM {table}), 0))"
    )
}

impl Table {
    /// The column list, comma-separated.
    pub fn col_list(&self) -> String {
        self.cols
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key columns, comma-separated.
    pub fn key_list(&self) -> String {
        self.cols[..self.key]
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_leading_columns_and_never_nullable() {
        for t in TABLES {
            assert!(t.key >= 1 && t.key <= t.cols.len(), "{}", t.name);
            for (c, k) in &t.cols[..t.key] {
                assert_ne!(*k, Kind::OptI64, "{}.{c}", t.name);
                assert_ne!(*k, Kind::Bool, "{}.{c}", t.name);
            }
            if t.identity {
                assert_eq!(t.cols[0].1, Kind::I64, "{}", t.name);
            }
        }
    }
}
