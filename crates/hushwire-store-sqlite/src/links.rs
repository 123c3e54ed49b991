//! Device lists and link sessions ([`hushwire_store::Links`]), migration 0006.
//!
//! Writes run on the writer thread (inside the batch's savepoint, so each function is
//! atomic); reads on the read pool. Slot bytes are stored as given; a slot is write-once
//! through the table's unique key.

use bytes::Bytes;
use hushwire_store::{
    DeviceAddr, DeviceId, LinkId, LinkSlot, MAX_LINK_SLOTS, PutSlot, StoreError, StoredDeviceList,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::conv::{DbResult, from_i64, to_i64};

// --- device lists ----------------------------------------------------------------------

pub(crate) fn set_device_list(
    conn: &Connection,
    handle: &str,
    version: u64,
    data: &[u8],
) -> Result<bool, StoreError> {
    let known = conn
        .prepare_cached("SELECT 1 FROM accounts WHERE handle = ?1")
        .db()?
        .query_row([handle], |_| Ok(()))
        .optional()
        .db()?;
    if known.is_none() {
        return Err(StoreError::Invalid("unknown account".into()));
    }
    let n = conn
        .prepare_cached(
            "INSERT INTO device_lists (handle, version, data) VALUES (?1, ?2, ?3) \
             ON CONFLICT (handle) DO UPDATE SET version = excluded.version, data = excluded.data \
             WHERE excluded.version > device_lists.version",
        )
        .db()?
        .execute(params![handle, to_i64(version), data])
        .db()?;
    if n > 0 {
        crate::directory::record_change(conn, handle)?;
    }
    Ok(n > 0)
}

pub(crate) fn device_list(
    conn: &Connection,
    handle: &str,
) -> Result<Option<StoredDeviceList>, StoreError> {
    conn.prepare_cached("SELECT version, data FROM device_lists WHERE handle = ?1")
        .db()?
        .query_row([handle], |r| {
            Ok(StoredDeviceList {
                version: from_i64(r.get(0)?),
                data: Bytes::from(r.get::<_, Vec<u8>>(1)?),
            })
        })
        .optional()
        .db()
}

pub(crate) fn revoked_devices(
    conn: &Connection,
    ids: &[DeviceId],
) -> Result<Vec<DeviceId>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    let mut out = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached("SELECT revoked FROM devices WHERE id = ?1")
            .db()?;
        for id in ids {
            let revoked: Option<bool> = stmt
                .query_row([to_i64(id.0)], |r| r.get(0))
                .optional()
                .db()?;
            if revoked == Some(true) {
                out.push(*id);
            }
        }
    }
    tx.finish().db()?;
    Ok(out)
}

// --- link sessions ---------------------------------------------------------------------

pub(crate) fn create_link(
    conn: &Connection,
    id: &LinkId,
    owner: &DeviceAddr,
    expires_at_ms: u64,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO links (id, owner_handle, owner_device, expires_at_ms) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
        )
        .db()?
        .execute(params![
            &id[..],
            owner.handle,
            owner.device_id,
            to_i64(expires_at_ms)
        ])
        .db()?;
    if n == 0 {
        return Err(StoreError::Invalid("link id in use".into()));
    }
    Ok(())
}

/// Whether session `id` is live at `now_ms`.
fn live(conn: &Connection, id: &LinkId, now_ms: u64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM links WHERE id = ?1 AND expires_at_ms > ?2")
        .db()?
        .query_row(params![&id[..], to_i64(now_ms)], |_| Ok(()))
        .optional()
        .db()?
        .is_some())
}

pub(crate) fn put_link_slot(
    conn: &Connection,
    id: &LinkId,
    slot: &str,
    data: &[u8],
    now_ms: u64,
) -> Result<PutSlot, StoreError> {
    if !live(conn, id, now_ms)? {
        return Ok(PutSlot::UnknownOrExpired);
    }
    let written = conn
        .prepare_cached("SELECT 1 FROM link_slots WHERE link = ?1 AND slot = ?2")
        .db()?
        .query_row(params![&id[..], slot], |_| Ok(()))
        .optional()
        .db()?;
    if written.is_some() {
        return Ok(PutSlot::AlreadyWritten);
    }
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM link_slots WHERE link = ?1")
        .db()?
        .query_row([&id[..]], |r| r.get(0))
        .db()?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_LINK_SLOTS {
        return Ok(PutSlot::TooManySlots);
    }
    conn.prepare_cached("INSERT INTO link_slots (link, slot, data) VALUES (?1, ?2, ?3)")
        .db()?
        .execute(params![&id[..], slot, data])
        .db()?;
    Ok(PutSlot::Stored)
}

pub(crate) fn link_slot(
    conn: &Connection,
    id: &LinkId,
    slot: &str,
    now_ms: u64,
) -> Result<LinkSlot, StoreError> {
    // One read transaction: the session and its slot from one snapshot.
    let tx = conn.unchecked_transaction().db()?;
    let out = if !live(&tx, id, now_ms)? {
        LinkSlot::UnknownOrExpired
    } else {
        let data: Option<Vec<u8>> = tx
            .prepare_cached("SELECT data FROM link_slots WHERE link = ?1 AND slot = ?2")
            .db()?
            .query_row(params![&id[..], slot], |r| r.get(0))
            .optional()
            .db()?;
        match data {
            Some(d) => LinkSlot::Bytes(Bytes::from(d)),
            None => LinkSlot::NotYet,
        }
    };
    tx.finish().db()?;
    Ok(out)
}

pub(crate) fn link_owner(
    conn: &Connection,
    id: &LinkId,
    now_ms: u64,
) -> Result<Option<DeviceAddr>, StoreError> {
    conn.prepare_cached(
        "SELECT owner_handle, owner_device FROM links WHERE id = ?1 AND expires_at_ms > ?2",
    )
    .db()?
    .query_row(params![&id[..], to_i64(now_ms)], |r| {
        Ok(DeviceAddr {
            handle: r.get(0)?,
            device_id: r.get(1)?,
        })
    })
    .optional()
    .db()
}

pub(crate) fn delete_link(conn: &Connection, id: &LinkId) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM links WHERE id = ?1")
        .db()?
        .execute([&id[..]])
        .db()?;
    Ok(n > 0)
}

pub(crate) fn purge_expired_links(conn: &Connection, now_ms: u64) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM links WHERE expires_at_ms <= ?1")
        .db()?
        .execute([to_i64(now_ms)])
        .db()?;
    Ok(n as u64)
}
