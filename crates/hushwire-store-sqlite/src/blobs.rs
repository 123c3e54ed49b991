//! Media blob metadata ([`hushwire_store::Blobs`]): write operations on the writer
//! thread ([`WriterState`] methods) and reads on the read pool. Tables: migration 0003.

use crate::conv::{DbResult, from_i64, to_i64};
use crate::ops::WriterState;
use bytes::Bytes;
use hushwire_store::{
    BlobId, BlobPart, BlobReader, BlobRecord, BlobSweep, CreateBlobOutcome, DeviceAddr, DeviceId,
    NewBlob, PartOutcome, StoreError, blob_part_count, blob_part_len,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

const BLOB_COLUMNS: &str = "b.blob_id, d.handle, d.device_no, b.group_id, b.size, b.part_size, \
     b.parts_stored, b.stored_bytes, b.completed_at_ms, b.fetched_at_ms, b.created_at_ms, \
     b.expires_at_ms";

fn blob_row(r: &Row<'_>) -> rusqlite::Result<BlobRecord> {
    let id: Vec<u8> = r.get(0)?;
    let id = BlobId::from_slice(&id).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "stored blob id is not 32 bytes".into(),
        )
    })?;
    Ok(BlobRecord {
        id,
        uploader: DeviceAddr {
            handle: r.get(1)?,
            device_id: r.get(2)?,
        },
        group_id: Bytes::from(r.get::<_, Vec<u8>>(3)?),
        size: from_i64(r.get(4)?),
        part_size: r.get(5)?,
        parts_stored: r.get(6)?,
        stored_bytes: from_i64(r.get(7)?),
        completed_at_ms: r.get::<_, Option<i64>>(8)?.map(from_i64),
        fetched_at_ms: r.get::<_, Option<i64>>(9)?.map(from_i64),
        created_at_ms: from_i64(r.get(10)?),
        expires_at_ms: from_i64(r.get(11)?),
    })
}

/// A live (not deleting) blob by id.
fn live_blob(conn: &Connection, id: &BlobId) -> Result<Option<BlobRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {BLOB_COLUMNS} FROM blobs b JOIN devices d ON d.id = b.uploader \
         WHERE b.blob_id = ?1 AND b.deleting_at_ms IS NULL"
    ))
    .db()?
    .query_row([&id.0[..]], blob_row)
    .optional()
    .db()
}

fn usage(conn: &Connection, account: &str, now_ms: u64) -> Result<u64, StoreError> {
    let used: i64 = conn
        .prepare_cached(
            "SELECT coalesce(sum(size), 0) FROM blobs \
             WHERE account = ?1 AND expires_at_ms > ?2 AND deleting_at_ms IS NULL",
        )
        .db()?
        .query_row(params![account, to_i64(now_ms)], |r| r.get(0))
        .db()?;
    Ok(from_i64(used))
}

impl WriterState {
    pub(crate) fn create_blob(&mut self, new: &NewBlob) -> Result<CreateBlobOutcome, StoreError> {
        if blob_part_count(new.size, new.part_size).is_none() {
            return Err(StoreError::Invalid(
                "blob part size must be at least 1 and the part count fit in 32 bits".into(),
            ));
        }
        let uploader: Option<(String, bool)> = self
            .conn
            .prepare_cached("SELECT handle, revoked FROM devices WHERE id = ?1")
            .db()?
            .query_row([to_i64(new.uploader.0)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?;
        let Some((account, false)) = uploader else {
            return Ok(CreateBlobOutcome::NotMember);
        };
        let member = self
            .conn
            .prepare_cached("SELECT 1 FROM group_members WHERE group_id = ?1 AND device = ?2")
            .db()?
            .exists(params![new.group_id.as_ref(), to_i64(new.uploader.0)])
            .db()?;
        if !member {
            return Ok(CreateBlobOutcome::NotMember);
        }
        let used = usage(&self.conn, &account, new.now_ms)?;
        if used.saturating_add(new.size) > new.quota_bytes {
            return Ok(CreateBlobOutcome::QuotaExceeded {
                used,
                quota: new.quota_bytes,
            });
        }
        let id = &new.id.0[..];
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM blobs WHERE blob_id = ?1")
            .db()?
            .exists([id])
            .db()?;
        if exists {
            return Err(StoreError::Invalid("blob id in use".into()));
        }
        let now = to_i64(new.now_ms);
        // A blob of size 0 has no parts: complete at once.
        let completed = (new.size == 0).then_some(now);
        self.conn
            .prepare_cached(
                "INSERT INTO blobs (blob_id, account, uploader, group_id, size, part_size, \
                 created_at_ms, expires_at_ms, completed_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .db()?
            .execute(params![
                id,
                account,
                to_i64(new.uploader.0),
                new.group_id.as_ref(),
                to_i64(new.size),
                new.part_size,
                now,
                to_i64(new.expires_at_ms),
                completed
            ])
            .db()?;
        // Readers: the roster now, plus the account's own devices; revoked ones left out.
        self.conn
            .prepare_cached(
                "INSERT INTO blob_readers (blob_id, device) \
                 SELECT ?1, m.device FROM group_members m JOIN devices d ON d.id = m.device \
                   WHERE m.group_id = ?2 AND d.revoked = 0 \
                 UNION \
                 SELECT ?1, id FROM devices WHERE handle = ?3 AND revoked = 0",
            )
            .db()?
            .execute(params![id, new.group_id.as_ref(), account])
            .db()?;
        if completed.is_some() {
            self.update_fetched(&new.id, new.uploader, new.now_ms)?;
        }
        let record = live_blob(&self.conn, &new.id)?
            .ok_or_else(|| StoreError::Backend("created blob not found".into()))?;
        Ok(CreateBlobOutcome::Created(record))
    }

    /// Sets `fetched_at_ms` if every reader but the uploader (revoked ones left out) has
    /// fetched the blob.
    fn update_fetched(
        &mut self,
        id: &BlobId,
        uploader: DeviceId,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let waiting = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM blob_readers r JOIN devices d ON d.id = r.device \
                 WHERE r.blob_id = ?1 AND r.device <> ?2 AND r.fetched_at_ms IS NULL \
                   AND d.revoked = 0 LIMIT 1",
            )
            .db()?
            .exists(params![&id.0[..], to_i64(uploader.0)])
            .db()?;
        if !waiting {
            self.conn
                .prepare_cached(
                    "UPDATE blobs SET fetched_at_ms = ?2 \
                     WHERE blob_id = ?1 AND fetched_at_ms IS NULL",
                )
                .db()?
                .execute(params![&id.0[..], to_i64(now_ms)])
                .db()?;
        }
        Ok(())
    }

    fn uploader_of(&self, id: &BlobId) -> Result<Option<DeviceId>, StoreError> {
        let row: Option<i64> = self
            .conn
            .prepare_cached("SELECT uploader FROM blobs WHERE blob_id = ?1")
            .db()?
            .query_row([&id.0[..]], |r| r.get(0))
            .optional()
            .db()?;
        Ok(row.map(|d| DeviceId(from_i64(d))))
    }

    pub(crate) fn record_blob_part(
        &mut self,
        id: &BlobId,
        part: BlobPart,
        now_ms: u64,
    ) -> Result<PartOutcome, StoreError> {
        let Some(blob) = live_blob(&self.conn, id)? else {
            return Ok(PartOutcome::UnknownBlob);
        };
        match blob_part_len(blob.size, blob.part_size, part.index) {
            None => {
                return Err(StoreError::Invalid(format!(
                    "part {} is past the blob's last part",
                    part.index
                )));
            }
            Some(len) if len != part.len => {
                return Err(StoreError::Invalid(format!(
                    "part {} holds {len} bytes, not {}",
                    part.index, part.len
                )));
            }
            Some(_) => {}
        }
        let stored: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT sha256 FROM blob_parts WHERE blob_id = ?1 AND part = ?2")
            .db()?
            .query_row(params![&id.0[..], part.index], |r| r.get(0))
            .optional()
            .db()?;
        if let Some(hash) = stored {
            return Ok(if hash == part.sha256 {
                PartOutcome::AlreadyStored(blob)
            } else {
                PartOutcome::Conflict
            });
        }
        self.conn
            .prepare_cached(
                "INSERT INTO blob_parts (blob_id, part, len, sha256) VALUES (?1, ?2, ?3, ?4)",
            )
            .db()?
            .execute(params![&id.0[..], part.index, part.len, &part.sha256[..]])
            .db()?;
        let parts_stored = blob.parts_stored.saturating_add(1);
        let complete = parts_stored >= blob.part_count();
        self.conn
            .prepare_cached(
                "UPDATE blobs SET parts_stored = ?2, stored_bytes = stored_bytes + ?3, \
                 completed_at_ms = CASE WHEN ?4 THEN ?5 ELSE completed_at_ms END \
                 WHERE blob_id = ?1",
            )
            .db()?
            .execute(params![
                &id.0[..],
                parts_stored,
                part.len,
                complete,
                to_i64(now_ms)
            ])
            .db()?;
        if complete && let Some(uploader) = self.uploader_of(id)? {
            self.update_fetched(id, uploader, now_ms)?;
        }
        let blob = live_blob(&self.conn, id)?
            .ok_or_else(|| StoreError::Backend("blob vanished while recording a part".into()))?;
        Ok(PartOutcome::Stored(blob))
    }

    pub(crate) fn record_blob_fetch(
        &mut self,
        id: &BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(blob) = live_blob(&self.conn, id)? else {
            return Ok(false);
        };
        if !blob.complete() {
            return Ok(false);
        }
        let reader: Option<Option<i64>> = self
            .conn
            .prepare_cached(
                "SELECT fetched_at_ms FROM blob_readers WHERE blob_id = ?1 AND device = ?2",
            )
            .db()?
            .query_row(params![&id.0[..], to_i64(device.0)], |r| r.get(0))
            .optional()
            .db()?;
        match reader {
            None => Ok(false),
            Some(Some(_)) => Ok(true),
            Some(None) => {
                self.conn
                    .prepare_cached(
                        "UPDATE blob_readers SET fetched_at_ms = ?3 \
                         WHERE blob_id = ?1 AND device = ?2",
                    )
                    .db()?
                    .execute(params![&id.0[..], to_i64(device.0), to_i64(now_ms)])
                    .db()?;
                if let Some(uploader) = self.uploader_of(id)? {
                    self.update_fetched(id, uploader, now_ms)?;
                }
                Ok(true)
            }
        }
    }

    pub(crate) fn begin_blob_deletion(
        &mut self,
        id: &BlobId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE blobs SET deleting_at_ms = ?2 \
                 WHERE blob_id = ?1 AND deleting_at_ms IS NULL",
            )
            .db()?
            .execute(params![&id.0[..], to_i64(now_ms)])
            .db()?;
        Ok(n == 1)
    }

    pub(crate) fn sweep_blobs(
        &mut self,
        sweep: BlobSweep,
        limit: usize,
    ) -> Result<Vec<BlobId>, StoreError> {
        let now = to_i64(sweep.now_ms);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let fetched_before = to_i64(sweep.now_ms.saturating_sub(sweep.grace_after_fetch_ms));
        let created_before = to_i64(sweep.now_ms.saturating_sub(sweep.abandoned_after_ms));
        // Each condition is answered by its own index; a blob due for several reasons
        // is updated once (the later updates skip it).
        for (sql, since) in [
            (
                "UPDATE blobs SET deleting_at_ms = ?1 WHERE deleting_at_ms IS NULL \
                   AND expires_at_ms <= ?2",
                now,
            ),
            (
                "UPDATE blobs SET deleting_at_ms = ?1 WHERE deleting_at_ms IS NULL \
                   AND completed_at_ms IS NULL AND created_at_ms <= ?2",
                created_before,
            ),
            (
                "UPDATE blobs SET deleting_at_ms = ?1 WHERE deleting_at_ms IS NULL \
                   AND fetched_at_ms IS NOT NULL AND fetched_at_ms <= ?2",
                fetched_before,
            ),
        ] {
            self.conn
                .prepare_cached(sql)
                .db()?
                .execute(params![now, since])
                .db()?;
        }
        let ids: Vec<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT blob_id FROM blobs WHERE deleting_at_ms IS NOT NULL \
                 ORDER BY deleting_at_ms, blob_id LIMIT ?1",
            )
            .db()?
            .query_map([limit], |r| r.get(0))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        ids.iter()
            .map(|b| {
                BlobId::from_slice(b)
                    .ok_or_else(|| StoreError::Backend("stored blob id is not 32 bytes".into()))
            })
            .collect()
    }

    pub(crate) fn purge_blobs(&mut self, ids: &[BlobId]) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        for id in ids {
            let deleting = self
                .conn
                .prepare_cached(
                    "SELECT 1 FROM blobs WHERE blob_id = ?1 AND deleting_at_ms IS NOT NULL",
                )
                .db()?
                .exists([&id.0[..]])
                .db()?;
            if !deleting {
                continue;
            }
            for sql in [
                "DELETE FROM blob_parts WHERE blob_id = ?1",
                "DELETE FROM blob_readers WHERE blob_id = ?1",
                "DELETE FROM blobs WHERE blob_id = ?1",
            ] {
                self.conn
                    .prepare_cached(sql)
                    .db()?
                    .execute([&id.0[..]])
                    .db()?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

// --- reads -----------------------------------------------------------------------------

pub(crate) fn blob(conn: &Connection, id: &BlobId) -> Result<Option<BlobRecord>, StoreError> {
    live_blob(conn, id)
}

pub(crate) fn blob_parts(conn: &Connection, id: &BlobId) -> Result<Vec<BlobPart>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    if live_blob(&tx, id)?.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(u32, u32, Vec<u8>)> = tx
        .prepare_cached("SELECT part, len, sha256 FROM blob_parts WHERE blob_id = ?1 ORDER BY part")
        .db()?
        .query_map([&id.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    tx.finish().db()?;
    rows.into_iter()
        .map(|(index, len, hash)| {
            let sha256 = hash
                .try_into()
                .map_err(|_| StoreError::Backend("stored part hash is not 32 bytes".into()))?;
            Ok(BlobPart { index, len, sha256 })
        })
        .collect()
}

pub(crate) fn readable_blob(
    conn: &Connection,
    id: &BlobId,
    device: DeviceId,
) -> Result<Option<BlobRecord>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    let reader = tx
        .prepare_cached(
            "SELECT 1 FROM blob_readers r JOIN devices rd ON rd.id = r.device \
             JOIN devices me ON me.id = ?2 \
             WHERE r.blob_id = ?1 AND me.revoked = 0 \
               AND (r.device = ?2 OR rd.handle = me.handle)",
        )
        .db()?
        .exists(params![&id.0[..], to_i64(device.0)])
        .db()?;
    let out = if reader { live_blob(&tx, id)? } else { None };
    tx.finish().db()?;
    Ok(out)
}

pub(crate) fn blob_readers(conn: &Connection, id: &BlobId) -> Result<Vec<BlobReader>, StoreError> {
    let tx = conn.unchecked_transaction().db()?;
    if live_blob(&tx, id)?.is_none() {
        return Ok(Vec::new());
    }
    let readers = tx
        .prepare_cached(
            "SELECT d.handle, d.device_no, r.fetched_at_ms FROM blob_readers r \
             JOIN devices d ON d.id = r.device WHERE r.blob_id = ?1 \
             ORDER BY d.handle, d.device_no",
        )
        .db()?
        .query_map([&id.0[..]], |r| {
            Ok(BlobReader {
                device: DeviceAddr {
                    handle: r.get(0)?,
                    device_id: r.get(1)?,
                },
                fetched_at_ms: r.get::<_, Option<i64>>(2)?.map(from_i64),
            })
        })
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    tx.finish().db()?;
    Ok(readers)
}

pub(crate) fn blob_usage(conn: &Connection, account: &str, now_ms: u64) -> Result<u64, StoreError> {
    usage(conn, account, now_ms)
}

pub(crate) fn known_blobs(conn: &Connection, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM blobs WHERE blob_id = ?1")
        .db()?;
    let mut out = Vec::new();
    for id in ids {
        if stmt.exists([&id.0[..]]).db()? {
            out.push(*id);
        }
    }
    Ok(out)
}
