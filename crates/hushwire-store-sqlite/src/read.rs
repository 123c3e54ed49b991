//! Reads, on a small pool of read-only connections (WAL lets them run alongside the
//! writer), each on a blocking-pool thread. A read sees every write whose caller has
//! been answered, since replies are sent only after `COMMIT`.

use crate::conv::{DbResult, from_i64, to_i64};
use bytes::Bytes;
use hushwire_store::{
    AccountRecord, DeviceAddr, DeviceId, DeviceRecord, Envelope, EnvelopeKind, GroupInfoRecord,
    GroupRecord, KeyPackageStock, StoreError,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Read-only connections, handed out one per read.
pub(crate) struct ReadPool {
    conns: Arc<Mutex<Vec<Connection>>>,
    /// One permit per connection: holding a permit guarantees a free connection.
    permits: Semaphore,
}

impl ReadPool {
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        let n = conns.len();
        Self {
            conns: Arc::new(Mutex::new(conns)),
            permits: Semaphore::new(n),
        }
    }

    /// Stops handing out connections; reads waiting or started later fail with
    /// [`StoreError::Closed`].
    pub(crate) fn close(&self) {
        self.permits.close();
        if let Ok(mut conns) = self.conns.lock() {
            conns.clear();
        }
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.conns.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .lock()
                .map_err(|_| StoreError::Backend("read pool lock poisoned".into()))?
                .pop()
                .ok_or(StoreError::Closed)?;
            let out = f(&conn);
            if let Ok(mut conns) = pool.lock() {
                conns.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: DeviceId(from_i64(r.get(0)?)),
        addr: DeviceAddr {
            handle: r.get(1)?,
            device_id: r.get(2)?,
        },
        device_key: r.get(3)?,
        cert_created_at_ms: from_i64(r.get(4)?),
        cert_signature: r.get(5)?,
        revoked: r.get(6)?,
    })
}

const DEVICE_COLUMNS: &str =
    "id, handle, device_no, device_key, cert_created_at_ms, cert_signature, revoked";

pub(crate) fn account(
    conn: &Connection,
    handle: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    let head = tx
        .prepare_cached("SELECT account_key, created_at_ms FROM accounts WHERE handle = ?1")
        .db()?
        .query_row([handle], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .db()?;
    let Some((account_key, created_at_ms)) = head else {
        return Ok(None);
    };
    let devices = tx
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE handle = ?1 ORDER BY device_no"
        ))
        .db()?
        .query_map([handle], device_row)
        .db()?
        .collect::<Result<Vec<_>, _>>()
        .db()?;
    let device_list = crate::links::device_list(&tx, handle)?;
    tx.finish().db()?;
    Ok(Some(AccountRecord {
        handle: handle.to_owned(),
        account_key,
        created_at_ms: from_i64(created_at_ms),
        devices,
        device_list,
    }))
}

pub(crate) fn device(
    conn: &Connection,
    addr: &DeviceAddr,
) -> Result<Option<DeviceRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE handle = ?1 AND device_no = ?2"
    ))
    .db()?
    .query_row(params![addr.handle, addr.device_id], device_row)
    .optional()
    .db()
}

pub(crate) fn key_package_stock(
    conn: &Connection,
    device: DeviceId,
    ciphersuite: u16,
) -> Result<KeyPackageStock, StoreError> {
    let (available, last_resort): (i64, i64) = conn
        .prepare_cached(
            "SELECT coalesce(sum(last_resort = 0), 0), coalesce(max(last_resort), 0) \
             FROM key_packages WHERE device = ?1 AND ciphersuite = ?2",
        )
        .db()?
        .query_row(params![to_i64(device.0), ciphersuite], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .db()?;
    Ok(KeyPackageStock {
        available: u32::try_from(available).unwrap_or(u32::MAX),
        has_last_resort: last_resort != 0,
    })
}

pub(crate) fn group(conn: &Connection, group_id: &[u8]) -> Result<Option<GroupRecord>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    let head = tx
        .prepare_cached("SELECT epoch, last_seq FROM groups WHERE group_id = ?1")
        .db()?
        .query_row([group_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .db()?;
    let Some((epoch, last_seq)) = head else {
        return Ok(None);
    };
    let roster = tx
        .prepare_cached(
            "SELECT d.handle, d.device_no FROM group_members m JOIN devices d ON d.id = m.device \
             WHERE m.group_id = ?1 ORDER BY d.handle, d.device_no",
        )
        .db()?
        .query_map([group_id], |r| {
            Ok(DeviceAddr {
                handle: r.get(0)?,
                device_id: r.get(1)?,
            })
        })
        .db()?
        .collect::<Result<Vec<_>, _>>()
        .db()?;
    tx.finish().db()?;
    Ok(Some(GroupRecord {
        epoch: from_i64(epoch),
        roster,
        last_seq: from_i64(last_seq),
    }))
}

pub(crate) fn group_info(
    conn: &Connection,
    group_id: &[u8],
) -> Result<Option<GroupInfoRecord>, StoreError> {
    conn.prepare_cached("SELECT epoch, data FROM group_infos WHERE group_id = ?1")
        .db()?
        .query_row([group_id], |r| {
            Ok(GroupInfoRecord {
                epoch: from_i64(r.get(0)?),
                data: Bytes::from(r.get::<_, Vec<u8>>(1)?),
            })
        })
        .optional()
        .db()
}

pub(crate) fn fetch(
    conn: &Connection,
    device: DeviceId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Envelope>, StoreError> {
    if limit == 0 || after_seq >= i64::MAX as u64 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT mb.seq, m.message_id, m.group_id, m.group_seq, m.kind, d.handle, d.device_no, \
                    m.server_time_ms, m.payload \
             FROM mailbox mb \
             JOIN messages m ON m.id = mb.message \
             JOIN devices d ON d.id = m.sender \
             WHERE mb.device = ?1 AND mb.seq > ?2 \
             ORDER BY mb.seq LIMIT ?3",
        )
        .db()?;
    let mut rows = stmt
        .query(params![to_i64(device.0), to_i64(after_seq), limit])
        .db()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().db()? {
        let message_id: Vec<u8> = r.get(1).db()?;
        let message_id: [u8; 16] = message_id
            .try_into()
            .map_err(|_| StoreError::Backend("stored message id is not 16 bytes".into()))?;
        let code: u8 = r.get(4).db()?;
        let kind = EnvelopeKind::from_code(code)
            .ok_or_else(|| StoreError::Backend(format!("stored message kind {code} is unknown")))?;
        out.push(Envelope {
            seq: from_i64(r.get(0).db()?),
            message_id,
            group_id: Bytes::from(r.get::<_, Vec<u8>>(2).db()?),
            group_seq: from_i64(r.get(3).db()?),
            kind,
            sender: DeviceAddr {
                handle: r.get(5).db()?,
                device_id: r.get(6).db()?,
            },
            server_time_ms: from_i64(r.get(7).db()?),
            payload: Bytes::from(r.get::<_, Vec<u8>>(8).db()?),
        });
    }
    Ok(out)
}

pub(crate) fn pending(conn: &Connection, device: DeviceId) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM mailbox WHERE device = ?1")
        .db()?
        .query_row([to_i64(device.0)], |r| r.get(0))
        .db()?;
    Ok(from_i64(n))
}
