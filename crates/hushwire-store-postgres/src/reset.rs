//! Account reset ([`hushwire_store::Accounts::reset_account`]) in one transaction.
//!
//! The account row is locked `FOR UPDATE` first: that waits for a device addition in
//! progress (which holds it `FOR NO KEY UPDATE`) and for a device list being stored
//! (`FOR KEY SHARE`), and makes later ones wait for the reset and then find no account.
//! Everything about the account's devices is read by later statements, so a device
//! added just before is reset too. The devices are revoked as by `revoke_device`, then
//! the account's rows move to a tombstone account
//! ([`hushwire_store::reset_tombstone_handle`]) so that every foreign key (devices,
//! device list, blobs) and every group roster (device ids) stays intact, and the
//! original row is deleted: a registration of the handle racing the reset waits on the
//! primary key and succeeds once the reset commits.

use deadpool_postgres::Transaction;
use hushwire_store::{StoreError, reset_tombstone_handle};

use crate::conv::{TxError, exec, row_one, row_opt, rows};
use crate::mailbox::{RELEASE_TAIL, drop_unreferenced};

pub(crate) async fn reset_account(
    tx: &Transaction<'_>,
    handle: &str,
    now_ms: u64,
) -> Result<bool, TxError> {
    let Some(head) = row_opt(
        tx,
        "SELECT account_key, created_at_ms FROM accounts WHERE handle = $1 FOR UPDATE",
        &[&handle],
    )
    .await?
    else {
        return Ok(false);
    };
    let account_key: Vec<u8> = head.get(0);
    let created_at_ms: i64 = head.get(1);

    // Revoked as by revoke_device: key packages and waiting entries go.
    let revoked: Vec<i64> = rows(
        tx,
        "UPDATE devices SET revoked = true WHERE handle = $1 AND NOT revoked RETURNING id",
        &[&handle],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    if !revoked.is_empty() {
        exec(
            tx,
            "DELETE FROM key_packages WHERE device = ANY($1::bigint[])",
            &[&revoked],
        )
        .await?;
        let r = row_one(
            tx,
            &format!(
                "WITH d AS (DELETE FROM mailbox WHERE device = ANY($1::bigint[]) \
                 RETURNING message), {RELEASE_TAIL}"
            ),
            &[&revoked],
        )
        .await?;
        drop_unreferenced(tx, &r.get::<_, Vec<i64>>(1)).await?;
    }

    let mut attempt = 0u32;
    let tombstone = loop {
        let candidate = reset_tombstone_handle(handle, now_ms, attempt);
        let inserted = exec(
            tx,
            "INSERT INTO accounts (handle, account_key, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (handle) DO NOTHING",
            &[&candidate, &account_key, &created_at_ms],
        )
        .await?;
        if inserted == 1 {
            break candidate;
        }
        attempt = attempt
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("no free tombstone handle".into()))?;
    };
    // The rows that refer to the account move to the tombstone.
    for sql in [
        "UPDATE devices SET handle = $2 WHERE handle = $1",
        "UPDATE device_lists SET handle = $2 WHERE handle = $1",
        "UPDATE blobs SET account = $2 WHERE account = $1",
        "UPDATE reports SET reporter = $2 WHERE reporter = $1",
        "UPDATE reports SET reported = $2 WHERE reported = $1",
    ] {
        exec(tx, sql, &[&handle, &tombstone]).await?;
    }
    // Blocks by the account and of the handle go (a new person may take it); so do the
    // link sessions its devices opened (addressed by handle and number).
    for sql in [
        "DELETE FROM blocks WHERE blocker = $1 OR blocked = $1",
        "DELETE FROM links WHERE owner_handle = $1",
        "DELETE FROM accounts WHERE handle = $1",
    ] {
        exec(tx, sql, &[&handle]).await?;
    }
    crate::directory::record_change(tx, handle).await?;
    Ok(true)
}
