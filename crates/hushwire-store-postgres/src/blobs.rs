//! Media blob metadata ([`hushwire_store::Blobs`]). Writes lock the blob row (or, for a
//! creation, the owning account row) for their transaction, so several nodes recording
//! parts and fetches of one blob, or creating blobs against one quota, serialize.

use crate::conv::{TxError, exec, from_i64, row_one, row_opt, rows, to_i64, to_u32};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{
    BlobId, BlobPart, BlobReader, BlobRecord, BlobSweep, CreateBlobOutcome, DeviceAddr, DeviceId,
    NewBlob, PartOutcome, StoreError, blob_part_count, blob_part_len,
};
use tokio_postgres::Row;

const BLOB_COLUMNS: &str = "b.blob_id, d.handle, d.device_no, b.group_id, b.size, b.part_size, \
     b.parts_stored, b.stored_bytes, b.completed_at_ms, b.fetched_at_ms, b.created_at_ms, \
     b.expires_at_ms";

fn blob_id(bytes: &[u8]) -> Result<BlobId, StoreError> {
    BlobId::from_slice(bytes)
        .ok_or_else(|| StoreError::Backend("stored blob id is not 32 bytes".into()))
}

fn blob_row(r: &Row) -> Result<BlobRecord, StoreError> {
    Ok(BlobRecord {
        id: blob_id(r.get(0))?,
        uploader: DeviceAddr {
            handle: r.get(1),
            device_id: to_u32(r.get(2))?,
        },
        group_id: Bytes::from(r.get::<_, Vec<u8>>(3)),
        size: from_i64(r.get(4)),
        part_size: to_u32(r.get(5))?,
        parts_stored: to_u32(r.get(6))?,
        stored_bytes: from_i64(r.get(7)),
        completed_at_ms: r.get::<_, Option<i64>>(8).map(from_i64),
        fetched_at_ms: r.get::<_, Option<i64>>(9).map(from_i64),
        created_at_ms: from_i64(r.get(10)),
        expires_at_ms: from_i64(r.get(11)),
    })
}

/// A live (not deleting) blob by id; `lock` takes its row for the transaction.
async fn live_blob<C: GenericClient>(
    c: &C,
    id: &BlobId,
    lock: bool,
) -> Result<Option<BlobRecord>, TxError> {
    let sql = format!(
        "SELECT {BLOB_COLUMNS} FROM blobs b JOIN devices d ON d.id = b.uploader \
         WHERE b.blob_id = $1 AND b.deleting_at_ms IS NULL{}",
        if lock { " FOR UPDATE OF b" } else { "" }
    );
    let row = row_opt(c, &sql, &[&&id.0[..]]).await?;
    Ok(row.as_ref().map(blob_row).transpose()?)
}

async fn usage<C: GenericClient>(c: &C, account: &str, now_ms: u64) -> Result<u64, TxError> {
    let r = row_one(
        c,
        "SELECT coalesce(sum(size), 0)::bigint FROM blobs \
         WHERE account = $1 AND expires_at_ms > $2 AND deleting_at_ms IS NULL",
        &[&account, &to_i64(now_ms)],
    )
    .await?;
    Ok(from_i64(r.get(0)))
}

/// Sets `fetched_at_ms` once every reader but the uploader (revoked ones left out) has
/// fetched the blob.
async fn update_fetched(tx: &Transaction<'_>, id: &BlobId, now_ms: u64) -> Result<(), TxError> {
    exec(
        tx,
        "UPDATE blobs b SET fetched_at_ms = $2 \
         WHERE b.blob_id = $1 AND b.fetched_at_ms IS NULL AND NOT EXISTS (\
           SELECT 1 FROM blob_readers r JOIN devices d ON d.id = r.device \
           WHERE r.blob_id = b.blob_id AND r.device <> b.uploader \
             AND r.fetched_at_ms IS NULL AND NOT d.revoked)",
        &[&&id.0[..], &to_i64(now_ms)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn create_blob(
    tx: &Transaction<'_>,
    new: &NewBlob,
) -> Result<CreateBlobOutcome, TxError> {
    if blob_part_count(new.size, new.part_size).is_none() {
        return Err(StoreError::Invalid(
            "blob part size must be at least 1 and the part count fit in 32 bits".into(),
        )
        .into());
    }
    let uploader = to_i64(new.uploader.0);
    let gid: &[u8] = new.group_id.as_ref();
    // The uploader, its membership, and its account row locked: creations against one
    // quota serialize (NO KEY: foreign key checks on the account go on).
    let Some(head) = row_opt(
        tx,
        "SELECT d.handle, d.revoked, \
                EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = $2 AND m.device = d.id) \
         FROM devices d JOIN accounts a ON a.handle = d.handle \
         WHERE d.id = $1 FOR NO KEY UPDATE OF a",
        &[&uploader, &gid],
    )
    .await?
    else {
        return Ok(CreateBlobOutcome::NotMember);
    };
    let account: String = head.get(0);
    if head.get::<_, bool>(1) || !head.get::<_, bool>(2) {
        return Ok(CreateBlobOutcome::NotMember);
    }
    let used = usage(tx, &account, new.now_ms).await?;
    if used.saturating_add(new.size) > new.quota_bytes {
        return Ok(CreateBlobOutcome::QuotaExceeded {
            used,
            quota: new.quota_bytes,
        });
    }
    let id: &[u8] = &new.id.0;
    let now = to_i64(new.now_ms);
    // A blob of size 0 has no parts: complete at once.
    let completed = (new.size == 0).then_some(now);
    let inserted = exec(
        tx,
        "INSERT INTO blobs (blob_id, account, uploader, group_id, size, part_size, \
         created_at_ms, expires_at_ms, completed_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (blob_id) DO NOTHING",
        &[
            &id,
            &account,
            &uploader,
            &gid,
            &to_i64(new.size),
            &i64::from(new.part_size),
            &now,
            &to_i64(new.expires_at_ms),
            &completed,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::Invalid("blob id in use".into()).into());
    }
    // Readers: the roster now, plus the account's own devices; revoked ones left out.
    exec(
        tx,
        "INSERT INTO blob_readers (blob_id, device) \
         SELECT $1::bytea, m.device FROM group_members m JOIN devices d ON d.id = m.device \
           WHERE m.group_id = $2 AND NOT d.revoked \
         UNION \
         SELECT $1::bytea, id FROM devices WHERE handle = $3 AND NOT revoked",
        &[&id, &gid, &account],
    )
    .await?;
    if completed.is_some() {
        update_fetched(tx, &new.id, new.now_ms).await?;
    }
    let record = live_blob(tx, &new.id, false)
        .await?
        .ok_or_else(|| StoreError::Backend("created blob not found".into()))?;
    Ok(CreateBlobOutcome::Created(record))
}

pub(crate) async fn record_blob_part(
    tx: &Transaction<'_>,
    id: &BlobId,
    part: BlobPart,
    now_ms: u64,
) -> Result<PartOutcome, TxError> {
    let Some(blob) = live_blob(tx, id, true).await? else {
        return Ok(PartOutcome::UnknownBlob);
    };
    match blob_part_len(blob.size, blob.part_size, part.index) {
        None => {
            return Err(StoreError::Invalid(format!(
                "part {} is past the blob's last part",
                part.index
            ))
            .into());
        }
        Some(len) if len != part.len => {
            return Err(StoreError::Invalid(format!(
                "part {} holds {len} bytes, not {}",
                part.index, part.len
            ))
            .into());
        }
        Some(_) => {}
    }
    let bid: &[u8] = &id.0;
    let index = i64::from(part.index);
    if let Some(r) = row_opt(
        tx,
        "SELECT sha256 FROM blob_parts WHERE blob_id = $1 AND part = $2",
        &[&bid, &index],
    )
    .await?
    {
        let hash: Vec<u8> = r.get(0);
        return Ok(if hash == part.sha256 {
            PartOutcome::AlreadyStored(blob)
        } else {
            PartOutcome::Conflict
        });
    }
    exec(
        tx,
        "INSERT INTO blob_parts (blob_id, part, len, sha256) VALUES ($1, $2, $3, $4)",
        &[&bid, &index, &i64::from(part.len), &&part.sha256[..]],
    )
    .await?;
    let parts_stored = blob.parts_stored.saturating_add(1);
    let complete = parts_stored >= blob.part_count();
    exec(
        tx,
        "UPDATE blobs SET parts_stored = $2, stored_bytes = stored_bytes + $3, \
         completed_at_ms = CASE WHEN $4 THEN $5 ELSE completed_at_ms END \
         WHERE blob_id = $1",
        &[
            &bid,
            &i64::from(parts_stored),
            &i64::from(part.len),
            &complete,
            &to_i64(now_ms),
        ],
    )
    .await?;
    if complete {
        update_fetched(tx, id, now_ms).await?;
    }
    let blob = live_blob(tx, id, false)
        .await?
        .ok_or_else(|| StoreError::Backend("blob vanished while recording a part".into()))?;
    Ok(PartOutcome::Stored(blob))
}

pub(crate) async fn record_blob_fetch(
    tx: &Transaction<'_>,
    id: &BlobId,
    device: DeviceId,
    now_ms: u64,
) -> Result<bool, TxError> {
    let Some(blob) = live_blob(tx, id, true).await? else {
        return Ok(false);
    };
    if !blob.complete() {
        return Ok(false);
    }
    let bid: &[u8] = &id.0;
    let dev = to_i64(device.0);
    let Some(reader) = row_opt(
        tx,
        "SELECT fetched_at_ms FROM blob_readers WHERE blob_id = $1 AND device = $2",
        &[&bid, &dev],
    )
    .await?
    else {
        return Ok(false);
    };
    if reader.get::<_, Option<i64>>(0).is_none() {
        exec(
            tx,
            "UPDATE blob_readers SET fetched_at_ms = $3 WHERE blob_id = $1 AND device = $2",
            &[&bid, &dev, &to_i64(now_ms)],
        )
        .await?;
        update_fetched(tx, id, now_ms).await?;
    }
    Ok(true)
}

pub(crate) async fn begin_blob_deletion(
    tx: &Transaction<'_>,
    id: &BlobId,
    now_ms: u64,
) -> Result<bool, TxError> {
    let n = exec(
        tx,
        "UPDATE blobs SET deleting_at_ms = $2 WHERE blob_id = $1 AND deleting_at_ms IS NULL",
        &[&&id.0[..], &to_i64(now_ms)],
    )
    .await?;
    Ok(n == 1)
}

pub(crate) async fn sweep_blobs(
    tx: &Transaction<'_>,
    sweep: BlobSweep,
    limit: usize,
) -> Result<Vec<BlobId>, TxError> {
    let now = to_i64(sweep.now_ms);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let fetched_before = to_i64(sweep.now_ms.saturating_sub(sweep.grace_after_fetch_ms));
    let created_before = to_i64(sweep.now_ms.saturating_sub(sweep.abandoned_after_ms));
    // Each condition is answered by its own partial index; a blob due for several
    // reasons is updated once (the later updates skip it).
    for (sql, since) in [
        (
            "UPDATE blobs SET deleting_at_ms = $1 WHERE deleting_at_ms IS NULL \
               AND expires_at_ms <= $2",
            now,
        ),
        (
            "UPDATE blobs SET deleting_at_ms = $1 WHERE deleting_at_ms IS NULL \
               AND completed_at_ms IS NULL AND created_at_ms <= $2",
            created_before,
        ),
        (
            "UPDATE blobs SET deleting_at_ms = $1 WHERE deleting_at_ms IS NULL \
               AND fetched_at_ms IS NOT NULL AND fetched_at_ms <= $2",
            fetched_before,
        ),
    ] {
        exec(tx, sql, &[&now, &since]).await?;
    }
    let rs = rows(
        tx,
        "SELECT blob_id FROM blobs WHERE deleting_at_ms IS NOT NULL \
         ORDER BY deleting_at_ms, blob_id LIMIT $1",
        &[&limit],
    )
    .await?;
    Ok(rs
        .iter()
        .map(|r| blob_id(r.get(0)))
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn purge_blobs(tx: &Transaction<'_>, ids: &[BlobId]) -> Result<u64, TxError> {
    let ids: Vec<&[u8]> = ids.iter().map(|i| &i.0[..]).collect();
    let doomed: Vec<Vec<u8>> = rows(
        tx,
        "SELECT blob_id FROM blobs \
         WHERE blob_id = ANY($1::bytea[]) AND deleting_at_ms IS NOT NULL \
         ORDER BY blob_id FOR UPDATE",
        &[&ids],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    for sql in [
        "DELETE FROM blob_parts WHERE blob_id = ANY($1::bytea[])",
        "DELETE FROM blob_readers WHERE blob_id = ANY($1::bytea[])",
        "DELETE FROM blobs WHERE blob_id = ANY($1::bytea[])",
    ] {
        exec(tx, sql, &[&doomed]).await?;
    }
    Ok(doomed.len() as u64)
}

// --- reads -----------------------------------------------------------------------------

pub(crate) async fn blob<C: GenericClient>(
    c: &C,
    id: &BlobId,
) -> Result<Option<BlobRecord>, TxError> {
    live_blob(c, id, false).await
}

pub(crate) async fn blob_parts<C: GenericClient>(
    c: &C,
    id: &BlobId,
) -> Result<Vec<BlobPart>, TxError> {
    let rs = rows(
        c,
        "SELECT p.part, p.len, p.sha256 FROM blob_parts p JOIN blobs b ON b.blob_id = p.blob_id \
         WHERE p.blob_id = $1 AND b.deleting_at_ms IS NULL ORDER BY p.part",
        &[&&id.0[..]],
    )
    .await?;
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        let sha256: [u8; 32] = r
            .get::<_, Vec<u8>>(2)
            .try_into()
            .map_err(|_| StoreError::Backend("stored part hash is not 32 bytes".into()))?;
        out.push(BlobPart {
            index: to_u32(r.get(0))?,
            len: to_u32(r.get(1))?,
            sha256,
        });
    }
    Ok(out)
}

pub(crate) async fn readable_blob<C: GenericClient>(
    c: &C,
    id: &BlobId,
    device: DeviceId,
) -> Result<Option<BlobRecord>, TxError> {
    let row = row_opt(
        c,
        &format!(
            "SELECT {BLOB_COLUMNS} FROM blobs b JOIN devices d ON d.id = b.uploader \
             WHERE b.blob_id = $1 AND b.deleting_at_ms IS NULL AND EXISTS (\
               SELECT 1 FROM blob_readers r JOIN devices rd ON rd.id = r.device \
               JOIN devices me ON me.id = $2 \
               WHERE r.blob_id = b.blob_id AND NOT me.revoked \
                 AND (r.device = $2 OR rd.handle = me.handle))"
        ),
        &[&&id.0[..], &to_i64(device.0)],
    )
    .await?;
    Ok(row.as_ref().map(blob_row).transpose()?)
}

pub(crate) async fn blob_readers<C: GenericClient>(
    c: &C,
    id: &BlobId,
) -> Result<Vec<BlobReader>, TxError> {
    let rs = rows(
        c,
        "SELECT d.handle, d.device_no, r.fetched_at_ms FROM blob_readers r \
         JOIN blobs b ON b.blob_id = r.blob_id JOIN devices d ON d.id = r.device \
         WHERE r.blob_id = $1 AND b.deleting_at_ms IS NULL \
         ORDER BY d.handle, d.device_no",
        &[&&id.0[..]],
    )
    .await?;
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        out.push(BlobReader {
            device: DeviceAddr {
                handle: r.get(0),
                device_id: to_u32(r.get(1))?,
            },
            fetched_at_ms: r.get::<_, Option<i64>>(2).map(from_i64),
        });
    }
    Ok(out)
}

pub(crate) async fn blob_usage<C: GenericClient>(
    c: &C,
    account: &str,
    now_ms: u64,
) -> Result<u64, TxError> {
    usage(c, account, now_ms).await
}

pub(crate) async fn known_blobs<C: GenericClient>(
    c: &C,
    ids: &[BlobId],
) -> Result<Vec<BlobId>, TxError> {
    let wanted: Vec<&[u8]> = ids.iter().map(|i| &i.0[..]).collect();
    let found: std::collections::HashSet<Vec<u8>> = rows(
        c,
        "SELECT blob_id FROM blobs WHERE blob_id = ANY($1::bytea[])",
        &[&wanted],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    Ok(ids
        .iter()
        .filter(|i| found.contains(&i.0[..]))
        .copied()
        .collect())
}
