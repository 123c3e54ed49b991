//! The key directory's secret, epoch log, change queue (migration 0004) and publisher
//! lease (migration 0005) ([`hushwire_store::KeyDirectory`]).
//!
//! - The secret is an insert that does nothing when the row exists, followed by a read
//!   (a new statement: at READ COMMITTED it sees the row a concurrent node committed),
//!   so every node gets the first stored value.
//! - An epoch is inserted by one statement only when it is the next number; two nodes
//!   appending the same number meet at the primary key (`ON CONFLICT DO NOTHING`: the
//!   second waits for the first and inserts nothing). The consumed changes are deleted
//!   only by the append that inserted.
//! - Changes are queued under a transaction-scoped advisory lock taken right before the
//!   insert (the last statement of the transaction, so no other lock is waited for while
//!   holding it): seqs are allocated and committed in the same order, so a change that
//!   commits after a publisher read the queue has a higher seq than all it saw.
//! - The lease is one upsert whose update applies only when the stored lease ran out or
//!   names the claimant; claimants meeting at the primary key wait for each other, and
//!   the read after it (a new statement at READ COMMITTED) sees the winner's row.

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{
    DirectoryAccount, DirectoryChange, DirectoryEpoch, DirectoryLease, MAX_DIRECTORY_ACCOUNTS,
    StoreError, StoredDeviceList,
};

use crate::conv::{TxError, exec, from_i64, row_one, rows, to_i64};

/// Advisory lock key serializing the queueing of directory changes (`"hwdirchg"` in
/// ASCII, as an i64).
const CHANGE_LOCK: i64 = 0x6877_6469_7263_6867;

/// Queues a directory change for `handle`. Must be the transaction's last statement
/// (see the module docs).
pub(crate) async fn record_change(tx: &Transaction<'_>, handle: &str) -> Result<(), TxError> {
    exec(tx, "SELECT pg_advisory_xact_lock($1)", &[&CHANGE_LOCK]).await?;
    exec(
        tx,
        "INSERT INTO directory_changes (handle) VALUES ($1)",
        &[&handle],
    )
    .await?;
    Ok(())
}

pub(crate) async fn directory_secret(
    tx: &Transaction<'_>,
    candidate: &[u8],
) -> Result<Bytes, TxError> {
    exec(
        tx,
        "INSERT INTO directory_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        &[&candidate],
    )
    .await?;
    let r = row_one(tx, "SELECT secret FROM directory_secret WHERE id = 1", &[]).await?;
    Ok(Bytes::from(r.get::<_, Vec<u8>>(0)))
}

pub(crate) async fn append_epoch(
    tx: &Transaction<'_>,
    epoch: &DirectoryEpoch,
    consumed_through: u64,
) -> Result<bool, TxError> {
    // Beyond BIGINT it cannot be the next number.
    let Ok(number) = i64::try_from(epoch.epoch) else {
        return Ok(false);
    };
    let inserted = exec(
        tx,
        "INSERT INTO directory_epochs (epoch, published_at_ms, record) \
         SELECT $1::bigint, $2::bigint, $3::bytea \
         WHERE $1::bigint = (SELECT coalesce(max(epoch), 0) + 1 FROM directory_epochs) \
         ON CONFLICT (epoch) DO NOTHING",
        &[
            &number,
            &to_i64(epoch.published_at_ms),
            &epoch.record.as_ref(),
        ],
    )
    .await?;
    if inserted == 0 {
        return Ok(false);
    }
    exec(
        tx,
        "DELETE FROM directory_changes WHERE seq <= $1",
        &[&to_i64(consumed_through)],
    )
    .await?;
    Ok(true)
}

pub(crate) async fn directory_changes<C: GenericClient>(
    c: &C,
    limit: usize,
) -> Result<Vec<DirectoryChange>, TxError> {
    Ok(rows(
        c,
        "SELECT seq, handle FROM directory_changes ORDER BY seq LIMIT $1",
        &[&i64::try_from(limit).unwrap_or(i64::MAX)],
    )
    .await?
    .iter()
    .map(|r| DirectoryChange {
        seq: from_i64(r.get(0)),
        handle: r.get(1),
    })
    .collect())
}

pub(crate) async fn directory_epochs<C: GenericClient>(
    c: &C,
    after: u64,
    limit: usize,
) -> Result<Vec<DirectoryEpoch>, TxError> {
    Ok(rows(
        c,
        "SELECT epoch, published_at_ms, record FROM directory_epochs \
         WHERE epoch > $1 ORDER BY epoch LIMIT $2",
        &[&to_i64(after), &i64::try_from(limit).unwrap_or(i64::MAX)],
    )
    .await?
    .iter()
    .map(|r| DirectoryEpoch {
        epoch: from_i64(r.get(0)),
        published_at_ms: from_i64(r.get(1)),
        record: Bytes::from(r.get::<_, Vec<u8>>(2)),
    })
    .collect())
}

pub(crate) async fn claim_publisher(
    tx: &Transaction<'_>,
    holder: &str,
    now_ms: u64,
    until_ms: u64,
) -> Result<DirectoryLease, TxError> {
    exec(
        tx,
        "INSERT INTO directory_publisher (id, holder, until_ms) VALUES (1, $1, $3) \
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
         WHERE directory_publisher.holder = excluded.holder \
            OR directory_publisher.until_ms <= $2",
        &[&holder, &to_i64(now_ms), &to_i64(until_ms)],
    )
    .await?;
    let r = row_one(
        tx,
        "SELECT holder, until_ms FROM directory_publisher WHERE id = 1",
        &[],
    )
    .await?;
    Ok(DirectoryLease {
        holder: r.get(0),
        until_ms: from_i64(r.get(1)),
    })
}

pub(crate) async fn directory_accounts<C: GenericClient>(
    c: &C,
    handles: &[String],
) -> Result<Vec<DirectoryAccount>, TxError> {
    if handles.len() > MAX_DIRECTORY_ACCOUNTS {
        return Err(TxError::Store(StoreError::Invalid(format!(
            "at most {MAX_DIRECTORY_ACCOUNTS} handles per directory_accounts call"
        ))));
    }
    // One statement: one snapshot.
    Ok(rows(
        c,
        "SELECT a.handle, a.account_key, l.version, l.data FROM accounts a \
         LEFT JOIN device_lists l ON l.handle = a.handle WHERE a.handle = ANY($1)",
        &[&handles],
    )
    .await?
    .iter()
    .map(|r| DirectoryAccount {
        handle: r.get(0),
        account_key: r.get(1),
        device_list: match (r.get::<_, Option<i64>>(2), r.get::<_, Option<Vec<u8>>>(3)) {
            (Some(version), Some(data)) => Some(StoredDeviceList {
                version: from_i64(version),
                data: Bytes::from(data),
            }),
            _ => None,
        },
    })
    .collect())
}
