//! The source: an embedded server's SQLite database, locked and read in one snapshot.

use crate::MigrateError;
use crate::tables::{KNOWN_SOURCE_TABLES, Table, high_water_sql};
use crate::value::{Checksum, Value};
use rusqlite::{Connection, OpenFlags, ffi::ErrorCode};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file of an embedded server under its data directory.
pub const DATABASE_FILE: &str = "hushwire.db";

/// An open source database. It holds SQLite's exclusive lock for its whole life (a
/// server cannot start on it meanwhile) and reads inside one transaction (one
/// snapshot); `query_only` forbids any change.
pub(crate) struct Source {
    conn: Connection,
    pub path: PathBuf,
}

fn sqlite(e: rusqlite::Error) -> MigrateError {
    MigrateError::Sqlite(e.to_string())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl Source {
    /// Opens `{data_dir}/hushwire.db` and takes its exclusive lock; refuses a database a
    /// running server has open ([`MigrateError::SourceInUse`]) and one of another
    /// schema version.
    pub fn open(data_dir: &Path) -> Result<Self, MigrateError> {
        let path = data_dir.join(DATABASE_FILE);
        if !path.is_file() {
            return Err(MigrateError::SourceMissing(path));
        }
        // Read-write only to be able to take the exclusive lock (no CREATE: a missing
        // file is never made); `query_only` below forbids every write.
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(Duration::ZERO).map_err(sqlite)?;
        // EXCLUSIVE locking mode with WAL: the first access takes an exclusive lock on
        // the database file (the WAL index lives in this process's memory), which fails
        // while any other connection, such as a running server's, has it open.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(sqlite)?;
        match conn.execute_batch("BEGIN EXCLUSIVE") {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return Err(MigrateError::SourceInUse(path)),
            Err(e) => return Err(sqlite(e)),
        }
        conn.pragma_update(None, "query_only", true)
            .map_err(sqlite)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite)?;
        if version != hushwire_store_sqlite::SCHEMA_VERSION {
            return Err(MigrateError::SourceSchema {
                found: version,
                supported: hushwire_store_sqlite::SCHEMA_VERSION,
            });
        }
        Ok(Self { conn, path })
    }

    /// Up to `max_rows` rows of `table` after key `after`, in key order, stopping early
    /// once about `max_bytes` are read (at least one row).
    pub fn batch(
        &self,
        table: &Table,
        after: Option<&[Value]>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<Value>>, MigrateError> {
        let keys = table.key_list();
        let filter = match after {
            Some(k) => {
                let marks = (1..=k.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("WHERE ({keys}) > ({marks})")
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT * FROM ({}) {filter} ORDER BY {keys} LIMIT {max_rows}",
            table.source
        );
        let params: Vec<rusqlite::types::Value> = after
            .unwrap_or_default()
            .iter()
            .map(|v| match v {
                Value::Int(i) => rusqlite::types::Value::Integer(*i),
                Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
                Value::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
                Value::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
                Value::Null => rusqlite::types::Value::Null,
            })
            .collect();
        let mut stmt = self.conn.prepare_cached(&sql).map_err(sqlite)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(sqlite)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(sqlite)? {
            let values = read_row(row, table)?;
            bytes += values.iter().map(Value::weight).sum::<usize>();
            out.push(values);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Rows and checksum of the whole table, as mapped.
    pub fn checksum(&self, table: &Table) -> Result<Checksum, MigrateError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT * FROM ({})", table.source))
            .map_err(sqlite)?;
        let mut rows = stmt.query([]).map_err(sqlite)?;
        let mut sum = Checksum::default();
        while let Some(row) = rows.next().map_err(sqlite)? {
            sum.add(&read_row(row, table)?);
        }
        Ok(sum)
    }

    /// Rows of the table's query (no checksum).
    pub fn count(&self, table: &Table) -> Result<u64, MigrateError> {
        self.scalar(&format!("SELECT count(*) FROM ({})", table.source))
    }

    /// Where the identity sequence of `table` must continue from.
    pub fn high_water(&self, table: &Table) -> Result<i64, MigrateError> {
        let v = self.scalar(&high_water_sql(table.name, table.cols[0].0))?;
        Ok(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn scalar(&self, sql: &str) -> Result<u64, MigrateError> {
        let v: i64 = self.conn.query_row(sql, [], |r| r.get(0)).map_err(sqlite)?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Findings about the source that the map relies on or leaves out.
    pub fn notes(&self) -> Result<Vec<String>, MigrateError> {
        let mut notes = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(sqlite)?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sqlite)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite)?;
        for name in names {
            if !KNOWN_SOURCE_TABLES.contains(&name.as_str()) {
                notes.push(format!(
                    "source table {name} has no counterpart in PostgreSQL: not migrated"
                ));
            }
        }
        let differing = self.scalar(
            "SELECT count(*) FROM mailbox mb JOIN messages m ON m.id = mb.message \
             WHERE mb.expires_at_ms != m.expires_at_ms",
        )?;
        if differing > 0 {
            notes.push(format!(
                "{differing} mailbox entries expire at another time than their body; \
                 PostgreSQL keeps the body's expiry"
            ));
        }
        let orphans = self.scalar(
            "SELECT count(*) FROM mailbox mb \
             WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = mb.message)",
        )?;
        if orphans > 0 {
            notes.push(format!(
                "{orphans} mailbox entries refer to no message body (copied as they are)"
            ));
        }
        let refs: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT coalesce(sum(refcount), 0) FROM messages) \
                      - (SELECT count(*) FROM mailbox)",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite)?;
        if refs != 0 {
            notes.push(format!(
                "message reference counts and mailbox entries differ by {refs} \
                 (copied as they are)"
            ));
        }
        notes.push(
            "folded in: mailbox_floor -> mailbox_seqs.last_seq, timed_entries -> \
             messages.disappearing, mailbox.expires_at_ms -> messages.expires_at_ms, \
             sqlite_sequence -> identity sequences"
                .to_owned(),
        );
        Ok(notes)
    }
}

fn read_row(row: &rusqlite::Row<'_>, table: &Table) -> Result<Vec<Value>, MigrateError> {
    table
        .cols
        .iter()
        .enumerate()
        .map(|(i, (col, kind))| {
            let v = row.get_ref(i).map_err(sqlite)?;
            Value::from_sqlite(v, *kind, table.name, col)
        })
        .collect()
}

impl Drop for Source {
    fn drop(&mut self) {
        // Nothing was written: end the read transaction (releases the lock on close).
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}
