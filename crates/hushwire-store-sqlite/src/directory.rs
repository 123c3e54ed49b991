//! The key directory's secret, epoch log, change queue (migration 0007) and publisher
//! lease (migration 0008) ([`hushwire_store::KeyDirectory`]).
//!
//! Writes run on the writer thread (each function is atomic inside its job); reads on
//! the read pool. The one writer makes every rule a plain check: the secret is inserted
//! only when absent, an epoch only when it is the next number, change seqs
//! (AUTOINCREMENT) increase in commit order and are never reused, and the lease row is
//! replaced only when it ran out or names the claimant.

use bytes::Bytes;
use hushwire_store::{
    DirectoryAccount, DirectoryChange, DirectoryEpoch, DirectoryLease, MAX_DIRECTORY_ACCOUNTS,
    StoreError, StoredDeviceList,
};
use rusqlite::{Connection, OptionalExtension, params};

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

pub(crate) fn claim_publisher(
    conn: &Connection,
    holder: &str,
    now_ms: u64,
    until_ms: u64,
) -> Result<DirectoryLease, StoreError> {
    conn.prepare_cached(
        "INSERT INTO directory_publisher (id, holder, until_ms) VALUES (1, ?1, ?3) \
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
         WHERE directory_publisher.holder = excluded.holder \
            OR directory_publisher.until_ms <= ?2",
    )
    .db()?
    .execute(params![holder, to_i64(now_ms), to_i64(until_ms)])
    .db()?;
    conn.prepare_cached("SELECT holder, until_ms FROM directory_publisher WHERE id = 1")
        .db()?
        .query_row([], |r| {
            Ok(DirectoryLease {
                holder: r.get(0)?,
                until_ms: from_i64(r.get(1)?),
            })
        })
        .db()
}

pub(crate) fn directory_accounts(
    conn: &Connection,
    handles: &[String],
) -> Result<Vec<DirectoryAccount>, StoreError> {
    if handles.len() > MAX_DIRECTORY_ACCOUNTS {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_DIRECTORY_ACCOUNTS} handles per directory_accounts call"
        )));
    }
    // One read transaction: one snapshot for the whole batch.
    let tx = conn.unchecked_transaction().db()?;
    let mut out = Vec::with_capacity(handles.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT a.account_key, l.version, l.data FROM accounts a \
                 LEFT JOIN device_lists l ON l.handle = a.handle WHERE a.handle = ?1",
            )
            .db()?;
        for handle in handles {
            let row = stmt
                .query_row([handle], |r| {
                    let list = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?)
                    {
                        (Some(version), Some(data)) => Some(StoredDeviceList {
                            version: from_i64(version),
                            data: Bytes::from(data),
                        }),
                        _ => None,
                    };
                    Ok((r.get::<_, Vec<u8>>(0)?, list))
                })
                .optional()
                .db()?;
            if let Some((account_key, device_list)) = row {
                out.push(DirectoryAccount {
                    handle: handle.clone(),
                    account_key,
                    device_list,
                });
            }
        }
    }
    tx.finish().db()?;
    Ok(out)
}
