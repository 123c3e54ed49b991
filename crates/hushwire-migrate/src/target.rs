//! The target: a PostgreSQL database with the `hushwire-store-postgres` schema, plus
//! this migration's own bookkeeping tables.

use crate::MigrateError;
use crate::tables::{TABLES, Table};
use crate::value::{Checksum, Value};
use futures_util::{StreamExt, TryFutureExt, future::try_join_all, pin_mut};
use hushwire_store_postgres::{PgOptions, PgStore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

/// Session advisory lock held by a running migration (`"hwmigrat"` in ASCII).
const MIGRATION_LOCK: i64 = 0x6877_6d69_6772_6174;

/// Describes a PostgreSQL error without quoting the connection URL.
pub(crate) fn pg(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Postgres(match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None if e.is_closed() => "connection closed".to_owned(),
        None => e.to_string(),
    })
}

/// What the progress table says about one table.
#[derive(Debug, Default, Clone)]
pub(crate) struct Progress {
    pub last_key: Option<Vec<Value>>,
    pub rows: u64,
    pub failures: u64,
    pub done: bool,
}

pub(crate) struct Target {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Target {
    /// Connects (with the store's session settings) and takes the migration lock.
    pub async fn connect(url: &str) -> Result<Self, MigrateError> {
        let config =
            PgStore::pg_config(url, &PgOptions::default()).map_err(|_| MigrateError::InvalidUrl)?;
        let (client, conn) = config.connect(NoTls).await.map_err(pg)?;
        let connection = tokio::spawn(async move {
            // The error shows on the client's next request.
            let _ = conn.await;
        });
        let target = Self { client, connection };
        // Waits a little: the session of a run that just ended may not be gone yet.
        target
            .client
            .batch_execute("SET lock_timeout = '5s'")
            .await
            .map_err(pg)?;
        match target
            .client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Err(MigrateError::MigrationRunning);
            }
            Err(e) => return Err(pg(e)),
        }
        target
            .client
            .batch_execute("SET lock_timeout = 0")
            .await
            .map_err(pg)?;
        Ok(target)
    }

    async fn exists(&self, table: &str) -> Result<bool, MigrateError> {
        Ok(self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(pg)?
            .get(0))
    }

    /// Checks the target may receive this source, brings its schema up to date and
    /// records the migration. `Ok(true)` when an earlier run of it is resumed.
    pub async fn prepare(
        &self,
        url: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<bool, MigrateError> {
        let resumed = if self.exists("hushwire_migration").await? {
            let row = self
                .client
                .query_opt("SELECT source FROM hushwire_migration", &[])
                .await
                .map_err(pg)?;
            match row.map(|r| r.get::<_, String>(0)) {
                Some(found) if found == fingerprint => true,
                Some(found) => return Err(MigrateError::OtherSource { found }),
                None => false,
            }
        } else {
            false
        };
        if !resumed {
            for t in TABLES {
                if self.exists(t.name).await? {
                    let any: bool = self
                        .client
                        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.name), &[])
                        .await
                        .map_err(pg)?
                        .get(0);
                    if any {
                        return Err(MigrateError::TargetNotEmpty {
                            table: t.name.to_owned(),
                        });
                    }
                }
            }
        }
        // The store's own migrations, exactly as a server node applies them.
        let store = PgStore::connect(
            url,
            PgOptions {
                pool_size: 1,
                ..PgOptions::default()
            },
        )
        .await
        .map_err(MigrateError::Store)?;
        store.close();
        self.client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS hushwire_migration (\
                   only_row       BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row), \
                   source         TEXT NOT NULL, \
                   started_at_ms  BIGINT NOT NULL, \
                   finished_at_ms BIGINT); \
                 CREATE TABLE IF NOT EXISTS hushwire_migration_progress (\
                   tbl         TEXT PRIMARY KEY, \
                   last_key    TEXT, \
                   rows_copied BIGINT NOT NULL, \
                   failures    BIGINT NOT NULL DEFAULT 0, \
                   done        BOOLEAN NOT NULL)",
            )
            .await
            .map_err(pg)?;
        self.client
            .execute(
                "INSERT INTO hushwire_migration (source, started_at_ms) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&fingerprint, &now_ms],
            )
            .await
            .map_err(pg)?;
        Ok(resumed)
    }

    pub async fn progress(&self, name: &str) -> Result<Progress, MigrateError> {
        let row = self
            .client
            .query_opt(
                "SELECT last_key, rows_copied, failures, done FROM hushwire_migration_progress \
                 WHERE tbl = $1",
                &[&name],
            )
            .await
            .map_err(pg)?;
        let Some(row) = row else {
            return Ok(Progress::default());
        };
        let last_key = match row.get::<_, Option<String>>(0) {
            Some(k) => Some(
                serde_json::from_str(&k)
                    .map_err(|e| MigrateError::Postgres(format!("progress of {name}: {e}")))?,
            ),
            None => None,
        };
        Ok(Progress {
            last_key,
            rows: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            failures: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            done: row.get(3),
        })
    }

    /// Inserts `rows` into `table` and records the progress, in one transaction.
    pub async fn copy_batch(
        &mut self,
        table: &Table,
        rows: &[Vec<Value>],
        done: bool,
    ) -> Result<(), MigrateError> {
        let marks = (1..=table.cols.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {} ({}) {} VALUES ({marks}) ON CONFLICT DO NOTHING",
            table.name,
            table.col_list(),
            if table.identity {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
        );
        let params = rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(table.cols)
                    .map(|(v, (_, kind))| v.to_pg(*kind))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = params
            .iter()
            .map(|p| {
                p.iter()
                    .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let tx = self.client.transaction().await.map_err(pg)?;
        let stmt = tx.prepare(&insert).await.map_err(pg)?;
        // Pipelined: the statements go out together, one round trip per batch.
        try_join_all(refs.iter().map(|r| tx.execute(&stmt, r).map_err(pg))).await?;
        let last_key = rows.last().map(|r| &r[..table.key]);
        record_progress(&tx, table.name, last_key, rows.len() as u64, 0, done).await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Records media progress (its own transaction: the bytes are already stored).
    pub async fn media_progress(
        &mut self,
        name: &str,
        last_key: Option<&[Value]>,
        copied: u64,
        failures: u64,
        done: bool,
    ) -> Result<(), MigrateError> {
        let tx = self.client.transaction().await.map_err(pg)?;
        record_progress(&tx, name, last_key, copied, failures, done).await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Sets the identity sequence of `table` (its column 0) past `high_water` (and past
    /// every value it holds), so new ids continue after the source's.
    pub async fn set_identity(&self, table: &Table, high_water: i64) -> Result<(), MigrateError> {
        let (name, column) = (table.name, table.cols[0].0);
        self.client
            .execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{name}', '{column}'), \
                       GREATEST($1::bigint, (SELECT coalesce(max({column}), 0) FROM {name}), 1))"
                ),
                &[&high_water],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// Rows and checksum of the whole table.
    pub async fn checksum(&self, table: &Table) -> Result<Checksum, MigrateError> {
        let sql = format!("SELECT {} FROM {}", table.col_list(), table.name);
        let stream = self
            .client
            .query_raw(&sql, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await
            .map_err(pg)?;
        pin_mut!(stream);
        let mut sum = Checksum::default();
        while let Some(row) = stream.next().await {
            let row = row.map_err(pg)?;
            let values = table
                .cols
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| Value::from_pg(&row, i, *kind))
                .collect::<Result<Vec<_>, _>>()
                .map_err(pg)?;
            sum.add(&values);
        }
        Ok(sum)
    }

    pub async fn finish(&self, now_ms: i64) -> Result<(), MigrateError> {
        self.client
            .execute(
                "UPDATE hushwire_migration SET finished_at_ms = $1",
                &[&now_ms],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

async fn record_progress(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    last_key: Option<&[Value]>,
    copied: u64,
    failures: u64,
    done: bool,
) -> Result<(), MigrateError> {
    let key = match last_key {
        Some(k) => {
            Some(serde_json::to_string(k).map_err(|e| MigrateError::Postgres(e.to_string()))?)
        }
        None => None,
    };
    let copied = i64::try_from(copied).unwrap_or(i64::MAX);
    let failures = i64::try_from(failures).unwrap_or(i64::MAX);
    // A batch without rows keeps the last key.
    tx.execute(
        "INSERT INTO hushwire_migration_progress (tbl, last_key, rows_copied, failures, done) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tbl) DO UPDATE SET \
           last_key = coalesce(EXCLUDED.last_key, hushwire_migration_progress.last_key), \
           rows_copied = hushwire_migration_progress.rows_copied + EXCLUDED.rows_copied, \
           failures = hushwire_migration_progress.failures + EXCLUDED.failures, \
           done = EXCLUDED.done",
        &[&name, &key, &copied, &failures, &done],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
