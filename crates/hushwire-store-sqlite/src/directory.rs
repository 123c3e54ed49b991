//! The key directory's secret, epoch log and change queue
//! ([`hushwire_store::KeyDirectory`]), migration 0007.
//!
//! Writes run on the writer thread (each function is atomic inside its job); reads on
//! the read pool. The one writer makes every rule a plain check: the secret is inserted
//! only when absent, an epoch only when it is the next number, and change seqs
//! (AUTOINCREMENT) increase in commit order and are never reused.

use bytes::Bytes;
use hushwire_store::{DirectoryChange, DirectoryEpoch, StoreError};
use rusqlite::{Connection, params};

use crate::conv::{DbResult, from_i64, to_i64};

/// Queues a directory change for `handle` (in the caller's transaction).
pub(crate) fn record_change(conn: &Connection, handle: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO directory_changes (handle) VALUES (?1)")
        .db()?
        .execute([handle])
        .db()?;
    Ok(())
}

pub(crate) fn directory_secret(conn: &Connection, candidate: &[u8]) -> Result<Bytes, StoreError> {
    conn.prepare_cached(
        "INSERT INTO directory_secret (id, secret) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
    )
    .db()?
    .execute([candidate])
    .db()?;
    let secret: Vec<u8> = conn
        .prepare_cached("SELECT secret FROM directory_secret WHERE id = 1")
        .db()?
        .query_row([], |r| r.get(0))
        .db()?;
    Ok(Bytes::from(secret))
}

pub(crate) fn append_epoch(
    conn: &Connection,
    epoch: &DirectoryEpoch,
    consumed_through: u64,
) -> Result<bool, StoreError> {
    let last: i64 = conn
        .prepare_cached("SELECT coalesce(max(epoch), 0) FROM directory_epochs")
        .db()?
        .query_row([], |r| r.get(0))
        .db()?;
    if Some(epoch.epoch) != from_i64(last).checked_add(1) {
        return Ok(false);
    }
    let number = i64::try_from(epoch.epoch)
        .map_err(|_| StoreError::Invalid("directory epoch number out of range".into()))?;
    conn.prepare_cached(
        "INSERT INTO directory_epochs (epoch, published_at_ms, record) VALUES (?1, ?2, ?3)",
    )
    .db()?
    .execute(params![
        number,
        to_i64(epoch.published_at_ms),
        epoch.record.as_ref()
    ])
    .db()?;
    conn.prepare_cached("DELETE FROM directory_changes WHERE seq <= ?1")
        .db()?
        .execute([to_i64(consumed_through)])
        .db()?;
    Ok(true)
}

pub(crate) fn directory_changes(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<DirectoryChange>, StoreError> {
    conn.prepare_cached("SELECT seq, handle FROM directory_changes ORDER BY seq LIMIT ?1")
        .db()?
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(DirectoryChange {
                seq: from_i64(r.get(0)?),
                handle: r.get(1)?,
            })
        })
        .db()?
        .collect::<Result<_, _>>()
        .db()
}

pub(crate) fn directory_epochs(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<DirectoryEpoch>, StoreError> {
    conn.prepare_cached(
        "SELECT epoch, published_at_ms, record FROM directory_epochs \
         WHERE epoch > ?1 ORDER BY epoch LIMIT ?2",
    )
    .db()?
    .query_map(
        params![to_i64(after), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(DirectoryEpoch {
                epoch: from_i64(r.get(0)?),
                published_at_ms: from_i64(r.get(1)?),
                record: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            })
        },
    )
    .db()?
    .collect::<Result<_, _>>()
    .db()
}
