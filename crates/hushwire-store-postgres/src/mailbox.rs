//! Per-device mailboxes: fetch, acknowledgement (with body reference counting),
//! pending counts and the retention sweep.

use crate::conv::{TxError, exec, from_i64, row_one, rows, to_i64, to_u32};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{DeviceAddr, DeviceId, Envelope, EnvelopeKind, StoreError};

/// Rows the retention sweep deletes per transaction.
pub(crate) const EXPIRE_STEP: i64 = 2_000;

/// The tail shared by every statement that removes mailbox entries: `d` (a CTE the
/// caller defines, `DELETE FROM mailbox ... RETURNING message`) lowers the reference
/// counts of the bodies it referred to, locking those rows in id order (so concurrent
/// removals never deadlock on them), and yields the number of entries removed and the
/// ids of bodies no entry refers to any more.
pub(crate) const RELEASE_TAIL: &str = "\
    c AS (SELECT message, count(*)::integer AS n FROM d GROUP BY message), \
    l AS (SELECT m.id, c.n FROM messages m JOIN c ON c.message = m.id \
          ORDER BY m.id FOR UPDATE OF m), \
    u AS (UPDATE messages m SET refcount = m.refcount - l.n FROM l WHERE m.id = l.id \
          RETURNING m.id, m.refcount) \
    SELECT (SELECT count(*) FROM d), ARRAY(SELECT id FROM u WHERE refcount <= 0)";

/// Deletes the bodies whose last reference went (returned by a [`RELEASE_TAIL`]
/// statement). Returns how many.
pub(crate) async fn drop_unreferenced(tx: &Transaction<'_>, ids: &[i64]) -> Result<u64, TxError> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(exec(
        tx,
        "DELETE FROM messages WHERE id = ANY($1::bigint[]) AND refcount <= 0",
        &[&ids],
    )
    .await?)
}

/// Removes the device's entries up to `up_to_seq` and the bodies left unreferenced.
/// Returns the entries removed.
pub(crate) async fn ack(tx: &Transaction<'_>, device: i64, up_to_seq: i64) -> Result<u64, TxError> {
    let r = row_one(
        tx,
        &format!(
            "WITH d AS (DELETE FROM mailbox WHERE device = $1 AND seq <= $2 RETURNING message), \
             {RELEASE_TAIL}"
        ),
        &[&device, &up_to_seq],
    )
    .await?;
    let removed: i64 = r.get(0);
    let gone: Vec<i64> = r.get(1);
    drop_unreferenced(tx, &gone).await?;
    Ok(from_i64(removed))
}

pub(crate) async fn fetch<C: GenericClient>(
    c: &C,
    device: DeviceId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Envelope>, TxError> {
    if limit == 0 || after_seq >= i64::MAX as u64 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rs = rows(
        c,
        "SELECT mb.seq, m.message_id, m.group_id, m.group_seq, m.kind, d.handle, d.device_no, \
                m.server_time_ms, m.payload \
         FROM mailbox mb \
         JOIN messages m ON m.id = mb.message \
         JOIN devices d ON d.id = m.sender \
         WHERE mb.device = $1 AND mb.seq > $2 \
         ORDER BY mb.seq LIMIT $3",
        &[&to_i64(device.0), &to_i64(after_seq), &limit],
    )
    .await?;
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        let message_id: Vec<u8> = r.get(1);
        let message_id: [u8; 16] = message_id
            .try_into()
            .map_err(|_| StoreError::Backend("stored message id is not 16 bytes".into()))?;
        let code: i16 = r.get(4);
        let kind = u8::try_from(code)
            .ok()
            .and_then(EnvelopeKind::from_code)
            .ok_or_else(|| StoreError::Backend(format!("stored message kind {code} is unknown")))?;
        out.push(Envelope {
            seq: from_i64(r.get(0)),
            message_id,
            group_id: Bytes::from(r.get::<_, Vec<u8>>(2)),
            group_seq: from_i64(r.get(3)),
            kind,
            sender: DeviceAddr {
                handle: r.get(5),
                device_id: to_u32(r.get(6))?,
            },
            server_time_ms: from_i64(r.get(7)),
            payload: Bytes::from(r.get::<_, Vec<u8>>(8)),
        });
    }
    Ok(out)
}

/// Of `cursors`, the devices with an entry after their seq, in the order given (one
/// statement for the whole batch).
pub(crate) async fn devices_with_mail<C: GenericClient>(
    c: &C,
    cursors: &[(DeviceId, u64)],
) -> Result<Vec<DeviceId>, TxError> {
    if cursors.is_empty() {
        return Ok(Vec::new());
    }
    let devices: Vec<i64> = cursors.iter().map(|(d, _)| to_i64(d.0)).collect();
    let after: Vec<i64> = cursors.iter().map(|(_, s)| to_i64(*s)).collect();
    Ok(rows(
        c,
        "SELECT c.device FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY \
           AS c(device, after_seq, i) \
         WHERE EXISTS (SELECT 1 FROM mailbox mb WHERE mb.device = c.device AND mb.seq > c.after_seq) \
         ORDER BY c.i",
        &[&devices, &after],
    )
    .await?
    .iter()
    .map(|r| DeviceId(from_i64(r.get(0))))
    .collect())
}

pub(crate) async fn pending<C: GenericClient>(c: &C, device: DeviceId) -> Result<u64, TxError> {
    let r = row_one(
        c,
        "SELECT count(*) FROM mailbox WHERE device = $1",
        &[&to_i64(device.0)],
    )
    .await?;
    Ok(from_i64(r.get(0)))
}

/// One step of the retention sweep over bodies: deletes up to [`EXPIRE_STEP`] bodies
/// whose retention ended, with their mailbox entries (every entry shares its body's
/// expiry). Returns the bodies deleted.
pub(crate) async fn expire_bodies_step(tx: &Transaction<'_>, now: i64) -> Result<u64, TxError> {
    let r = row_one(
        tx,
        "WITH m AS (DELETE FROM messages WHERE id IN (\
             SELECT id FROM messages WHERE expires_at_ms < $1 \
             ORDER BY expires_at_ms LIMIT $2 FOR UPDATE) \
           RETURNING id), \
         e AS (DELETE FROM mailbox WHERE message IN (SELECT id FROM m)) \
         SELECT count(*) FROM m",
        &[&now, &EXPIRE_STEP],
    )
    .await?;
    Ok(from_i64(r.get(0)))
}

/// One step of the retention sweep over idempotency records. Returns the records
/// deleted.
pub(crate) async fn expire_dedup_step(tx: &Transaction<'_>, now: i64) -> Result<u64, TxError> {
    Ok(exec(
        tx,
        "DELETE FROM dedup WHERE (message_id, sender) IN (\
           SELECT message_id, sender FROM dedup WHERE expires_at_ms < $1 \
           ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&now, &EXPIRE_STEP],
    )
    .await?)
}
