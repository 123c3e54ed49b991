//! Device lists and link sessions ([`hushwire_store::Links`]), migration 0003.
//!
//! - A device list is an upsert whose update only happens for a higher version, so of
//!   two nodes storing lists concurrently the higher version stays. A stored list
//!   queues a key directory change in the same transaction.
//! - Writing a slot locks its session row first (`FOR UPDATE`): writes to one session
//!   are serialized, so the slot count is exact, and the slot's primary key makes it
//!   write-once.

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{DeviceAddr, DeviceId, LinkId, LinkSlot, MAX_LINK_SLOTS, PutSlot, StoreError};

use crate::conv::{TxError, exec, row_opt, rows, to_i64, to_u32};

// --- device lists ----------------------------------------------------------------------

pub(crate) async fn set_device_list(
    tx: &Transaction<'_>,
    handle: &str,
    version: u64,
    data: &[u8],
) -> Result<bool, TxError> {
    // KEY SHARE: a reset of the account (FOR UPDATE) waits for this, or this for it.
    if row_opt(
        tx,
        "SELECT 1 FROM accounts WHERE handle = $1 FOR KEY SHARE",
        &[&handle],
    )
    .await?
    .is_none()
    {
        return Err(StoreError::Invalid("unknown account".into()).into());
    }
    let n = exec(
        tx,
        "INSERT INTO device_lists (handle, version, data) VALUES ($1, $2, $3) \
         ON CONFLICT (handle) DO UPDATE SET version = excluded.version, data = excluded.data \
         WHERE excluded.version > device_lists.version",
        &[&handle, &to_i64(version), &data],
    )
    .await?;
    if n > 0 {
        crate::directory::record_change(tx, handle).await?;
    }
    Ok(n > 0)
}

pub(crate) async fn revoked_devices<C: GenericClient>(
    c: &C,
    ids: &[DeviceId],
) -> Result<Vec<DeviceId>, TxError> {
    let wanted: Vec<i64> = ids.iter().map(|d| to_i64(d.0)).collect();
    let rs = rows(
        c,
        "SELECT id FROM devices WHERE id = ANY($1::bigint[]) AND revoked",
        &[&wanted],
    )
    .await?;
    let revoked: std::collections::HashSet<i64> = rs.iter().map(|r| r.get(0)).collect();
    Ok(ids
        .iter()
        .copied()
        .filter(|d| revoked.contains(&to_i64(d.0)))
        .collect())
}

// --- link sessions ---------------------------------------------------------------------

pub(crate) async fn create_link(
    tx: &Transaction<'_>,
    id: &LinkId,
    owner: &DeviceAddr,
    expires_at_ms: u64,
) -> Result<(), TxError> {
    let n = exec(
        tx,
        "INSERT INTO links (id, owner_handle, owner_device, expires_at_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        &[
            &&id[..],
            &owner.handle,
            &i64::from(owner.device_id),
            &to_i64(expires_at_ms),
        ],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::Invalid("link id in use".into()).into());
    }
    Ok(())
}

pub(crate) async fn put_link_slot(
    tx: &Transaction<'_>,
    id: &LinkId,
    slot: &str,
    data: &[u8],
    now_ms: u64,
) -> Result<PutSlot, TxError> {
    let id = &id[..];
    if row_opt(
        tx,
        "SELECT 1 FROM links WHERE id = $1 AND expires_at_ms > $2 FOR UPDATE",
        &[&id, &to_i64(now_ms)],
    )
    .await?
    .is_none()
    {
        return Ok(PutSlot::UnknownOrExpired);
    }
    let r = crate::conv::row_one(
        tx,
        "SELECT count(*), coalesce(bool_or(slot = $2), false) FROM link_slots WHERE link = $1",
        &[&id, &slot],
    )
    .await?;
    let (count, written): (i64, bool) = (r.get(0), r.get(1));
    if written {
        return Ok(PutSlot::AlreadyWritten);
    }
    if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_LINK_SLOTS {
        return Ok(PutSlot::TooManySlots);
    }
    exec(
        tx,
        "INSERT INTO link_slots (link, slot, data) VALUES ($1, $2, $3)",
        &[&id, &slot, &data],
    )
    .await?;
    Ok(PutSlot::Stored)
}

pub(crate) async fn link_slot<C: GenericClient>(
    c: &C,
    id: &LinkId,
    slot: &str,
    now_ms: u64,
) -> Result<LinkSlot, TxError> {
    // One statement: one snapshot of the session and its slot.
    let row = row_opt(
        c,
        "SELECT s.data FROM links l \
         LEFT JOIN link_slots s ON s.link = l.id AND s.slot = $2 \
         WHERE l.id = $1 AND l.expires_at_ms > $3",
        &[&&id[..], &slot, &to_i64(now_ms)],
    )
    .await?;
    Ok(match row {
        None => LinkSlot::UnknownOrExpired,
        Some(r) => match r.get::<_, Option<Vec<u8>>>(0) {
            Some(d) => LinkSlot::Bytes(Bytes::from(d)),
            None => LinkSlot::NotYet,
        },
    })
}

pub(crate) async fn link_owner<C: GenericClient>(
    c: &C,
    id: &LinkId,
    now_ms: u64,
) -> Result<Option<DeviceAddr>, TxError> {
    let row = row_opt(
        c,
        "SELECT owner_handle, owner_device FROM links WHERE id = $1 AND expires_at_ms > $2",
        &[&&id[..], &to_i64(now_ms)],
    )
    .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(DeviceAddr {
            handle: r.get(0),
            device_id: to_u32(r.get(1))?,
        })),
    }
}

pub(crate) async fn delete_link(tx: &Transaction<'_>, id: &LinkId) -> Result<bool, TxError> {
    let n = exec(tx, "DELETE FROM links WHERE id = $1", &[&&id[..]]).await?;
    Ok(n > 0)
}

pub(crate) async fn purge_expired_links(tx: &Transaction<'_>, now_ms: u64) -> Result<u64, TxError> {
    Ok(exec(
        tx,
        "DELETE FROM links WHERE expires_at_ms <= $1",
        &[&to_i64(now_ms)],
    )
    .await?)
}
