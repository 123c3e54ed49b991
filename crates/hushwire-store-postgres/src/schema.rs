//! Versioned migrations, embedded at build time.
//!
//! Applied versions are rows of `schema_migrations`. Migration `N` lives in
//! `migrations/NNNN_name.sql`. All pending migrations run in one transaction that first
//! takes a transaction-scoped advisory lock, so nodes starting together apply each
//! migration exactly once: the others wait on the lock, then find nothing to do. DDL is
//! transactional in PostgreSQL, so a failure leaves the database at a whole version.

use crate::conv::{backend, row_one};
use deadpool_postgres::Client;
use hushwire_store::StoreError;

/// `(version, sql)`, in order, starting at 1 with no gaps.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_reports.sql")),
    (3, include_str!("../migrations/0003_devices_and_links.sql")),
    (4, include_str!("../migrations/0004_key_directory.sql")),
    (
        5,
        include_str!("../migrations/0005_directory_publisher.sql"),
    ),
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 5;

/// Advisory lock key of the migration (`"hushwire"` in ASCII, as an i64).
const MIGRATION_LOCK: i64 = 0x6875_7368_7769_7265;

/// Brings the database to [`SCHEMA_VERSION`]; refuses a newer one. Returns the
/// versions applied now.
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i64>, StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
           version BIGINT PRIMARY KEY, \
           applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(backend)?;
    let found: i64 = row_one(
        &tx,
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        &[],
    )
    .await
    .map_err(backend)?
    .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "database schema version {found} is newer than this build supports \
             ({SCHEMA_VERSION})"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "migration {version} failed: {}",
                crate::conv::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(backend)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(backend)?;
    for version in &applied {
        tracing::info!(version, "applied storage migration");
    }
    Ok(applied)
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
