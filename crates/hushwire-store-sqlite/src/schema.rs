//! Versioned migrations, embedded at build time and applied in order at open.
//!
//! The schema version is SQLite's `PRAGMA user_version`. Migration `N` lives in
//! `migrations/NNNN_name.sql`; each runs in its own transaction together with the
//! version bump, so a crash leaves the database at a whole version.

use crate::SqliteStoreError;
use rusqlite::Connection;

/// `(version, sql)`, in order, starting at 1 with no gaps.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_lean_delivery.sql")),
    (3, include_str!("../migrations/0003_blobs.sql")),
    (4, include_str!("../migrations/0004_controls.sql")),
    (5, include_str!("../migrations/0005_reports.sql")),
    (6, include_str!("../migrations/0006_devices_and_links.sql")),
    (7, include_str!("../migrations/0007_key_directory.sql")),
    (
        8,
        include_str!("../migrations/0008_directory_publisher.sql"),
    ),
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 8;

/// The database's schema version (0 for a new database).
pub(crate) fn current_version(conn: &Connection) -> Result<i64, SqliteStoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(SqliteStoreError::Sqlite)
}

/// Brings the database to [`SCHEMA_VERSION`]; refuses a newer one.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), SqliteStoreError> {
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(SqliteStoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(SqliteStoreError::SchemaCorrupt { found });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let migration = |source| SqliteStoreError::Migration {
            version: *version,
            source,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(migration)?;
        // Re-check under the write lock: another process may have migrated meanwhile.
        let now = current_version(&tx)?;
        if now >= *version {
            continue;
        }
        tx.execute_batch(sql).map_err(migration)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migration)?;
        tx.commit().map_err(migration)?;
        tracing::info!(version, "applied storage migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_contiguous_and_end_at_schema_version() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
