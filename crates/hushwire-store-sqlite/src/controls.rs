//! Conversation controls ([`hushwire_store::Controls`]): block lists, retraction of
//! still-queued messages, the purge of disappearing messages and the audience of
//! ephemeral signals.
//!
//! **Blocks** are cached in the writer (blocked handle → its blockers), filled lazily,
//! so a submission costs one hash lookup for them.
//!
//! **Wiping.** The writer connection runs with `secure_delete` on, so a deleted row's
//! bytes are zeroed in the page that held it. The write-ahead log still holds older
//! copies of those pages until it is checkpointed and overwritten: after a purge or a
//! retraction removed something, the writer checkpoints with `TRUNCATE` (at most once per
//! [`crate::SqliteOptions::wipe_interval`], retried while readers hold it up), which
//! empties the log. Then the ciphertext of a disappearing or retracted message is in no
//! file of the database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hushwire_store::{DeviceId, NewReport, RelayAudience, ReportRecord, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::conv::{DbResult, from_i64, to_i64};
use crate::ops::WriterState;

/// Timed entries the purge handles per step.
const PURGE_STEP: usize = 1024;

/// How long the WAL checkpoint of a wipe waits for readers before it gives up (it is
/// retried after the next write batch).
const WIPE_BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// The writer's state for the controls.
#[derive(Debug)]
pub(crate) struct ControlsState {
    /// Blocked handle → the handles that block it (filled lazily).
    blockers: HashMap<String, Vec<String>>,
    /// Deleted content waits for a WAL wipe.
    wipe_pending: bool,
    last_wipe: Option<Instant>,
    /// See [`crate::SqliteOptions::wipe_interval`].
    pub(crate) wipe_interval: Duration,
    /// The connection's normal busy timeout, restored after a wipe.
    pub(crate) busy_timeout: Duration,
}

impl Default for ControlsState {
    fn default() -> Self {
        Self {
            blockers: HashMap::new(),
            wipe_pending: false,
            last_wipe: None,
            wipe_interval: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl ControlsState {
    pub(crate) fn clear_caches(&mut self) {
        self.blockers.clear();
    }

    pub(crate) fn cache_len(&self) -> usize {
        self.blockers.len()
    }
}

impl WriterState {
    /// `devices` without those whose account blocks `sender_handle`.
    pub(crate) fn without_blockers(
        &mut self,
        sender_handle: &str,
        devices: Vec<DeviceId>,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let blockers = match self.controls.blockers.get(sender_handle) {
            Some(b) => b.clone(),
            None => {
                let b: Vec<String> = self
                    .conn
                    .prepare_cached("SELECT blocker FROM blocks WHERE blocked = ?1")
                    .db()?
                    .query_map([sender_handle], |r| r.get(0))
                    .db()?
                    .collect::<Result<_, _>>()
                    .db()?;
                self.controls
                    .blockers
                    .insert(sender_handle.to_owned(), b.clone());
                b
            }
        };
        if blockers.is_empty() {
            return Ok(devices);
        }
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            let blocked = match self.device_info(d)? {
                Some(info) => blockers.contains(&info.addr.handle),
                None => false,
            };
            if !blocked {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(crate) fn set_block(
        &mut self,
        blocker: &str,
        handle: &str,
        blocked: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if blocker == handle {
            return Err(StoreError::Invalid("an account cannot block itself".into()));
        }
        let changed = if blocked {
            self.conn
                .prepare_cached(
                    "INSERT INTO blocks (blocker, blocked, created_at_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (blocker, blocked) DO NOTHING",
                )
                .db()?
                .execute(params![blocker, handle, to_i64(now_ms)])
                .db()?
        } else {
            self.conn
                .prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")
                .db()?
                .execute(params![blocker, handle])
                .db()?
        };
        self.controls.blockers.remove(handle);
        Ok(changed > 0)
    }

    /// Records a mailbox entry of a disappearing message for the purge.
    pub(crate) fn record_timed(
        &mut self,
        expires_at_ms: u64,
        device: DeviceId,
        seq: u64,
        message: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO timed_entries (expires_at_ms, device, seq, message) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .db()?
            .execute(params![
                to_i64(expires_at_ms),
                to_i64(device.0),
                to_i64(seq),
                message
            ])
            .db()?;
        Ok(())
    }

    /// Removes the mailbox entries `(device, seq, message)` that still exist and drops
    /// the bodies no entry refers to any more. Returns the entries removed.
    fn remove_entries(&mut self, entries: &[(i64, i64, i64)]) -> Result<u64, StoreError> {
        let mut refs: HashMap<i64, i64> = HashMap::new();
        let mut removed = 0u64;
        for &(dev, seq, message) in entries {
            let n = self
                .conn
                .prepare_cached(
                    "DELETE FROM mailbox WHERE device = ?1 AND seq = ?2 AND message = ?3",
                )
                .db()?
                .execute(params![dev, seq, message])
                .db()?;
            if n > 0 {
                removed += 1;
                *refs.entry(message).or_default() += 1;
                // The seq must never be handed out again, even if this was the
                // mailbox's last entry.
                self.raise_floor(dev, seq)?;
            }
        }
        for (message, n) in refs {
            let deleted = self
                .conn
                .prepare_cached("DELETE FROM messages WHERE id = ?1 AND refcount <= ?2")
                .db()?
                .execute(params![message, n])
                .db()?;
            if deleted == 0 {
                self.conn
                    .prepare_cached("UPDATE messages SET refcount = refcount - ?2 WHERE id = ?1")
                    .db()?
                    .execute(params![message, n])
                    .db()?;
            }
        }
        Ok(removed)
    }

    pub(crate) fn retract(
        &mut self,
        sender: DeviceId,
        group_id: &[u8],
        message_id: [u8; 16],
    ) -> Result<u64, StoreError> {
        let Some(info) = self.device_info(sender)? else {
            return Ok(0);
        };
        // The account's devices that ever sent this id (the idempotency records are
        // keyed by message id first: a cheap check before looking at mailboxes).
        let senders: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT x.sender FROM dedup x JOIN devices d ON d.id = x.sender \
                 WHERE x.message_id = ?1 AND d.handle = ?2",
            )
            .db()?
            .query_map(params![&message_id[..], info.addr.handle], |r| r.get(0))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        if senders.is_empty() {
            return Ok(0);
        }
        let gid = Bytes::copy_from_slice(group_id);
        let Some(group) = self.group_state(&gid)? else {
            return Ok(0);
        };
        let mut entries = Vec::new();
        for device in &group.members {
            // Scans this device's queue (primary-key prefix), which holds only what it
            // has not acknowledged.
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT mb.seq, mb.message, b.sender FROM mailbox mb \
                     JOIN messages b ON b.id = mb.message \
                     WHERE mb.device = ?1 AND b.message_id = ?2 AND b.group_id = ?3 \
                     AND b.kind = 1",
                )
                .db()?;
            let rows: Vec<(i64, i64, i64)> = stmt
                .query_map(params![to_i64(device.0), &message_id[..], group_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .db()?
                .collect::<Result<_, _>>()
                .db()?;
            for (seq, message, body_sender) in rows {
                if senders.contains(&body_sender) {
                    entries.push((to_i64(device.0), seq, message));
                }
            }
        }
        let removed = self.remove_entries(&entries)?;
        if removed > 0 {
            self.controls.wipe_pending = true;
        }
        Ok(removed)
    }

    /// One step of the purge: up to [`PURGE_STEP`] timed entries due before `now_ms`.
    /// Returns (entries removed, whether more may be due).
    pub(crate) fn purge_step(&mut self, now_ms: u64) -> Result<(u64, bool), StoreError> {
        let due: Vec<(i64, i64, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT expires_at_ms, device, seq, message FROM timed_entries \
                 WHERE expires_at_ms < ?1 ORDER BY expires_at_ms LIMIT ?2",
            )
            .db()?
            .query_map(
                params![to_i64(now_ms), i64::try_from(PURGE_STEP).unwrap_or(1024)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        if due.is_empty() {
            return Ok((0, false));
        }
        for &(expires, dev, seq, _) in &due {
            self.conn
                .prepare_cached(
                    "DELETE FROM timed_entries WHERE expires_at_ms = ?1 AND device = ?2 \
                     AND seq = ?3",
                )
                .db()?
                .execute(params![expires, dev, seq])
                .db()?;
        }
        let entries: Vec<(i64, i64, i64)> = due.iter().map(|&(_, d, s, m)| (d, s, m)).collect();
        let removed = self.remove_entries(&entries)?;
        // Even entries acknowledged earlier left old page images in the WAL.
        self.controls.wipe_pending = true;
        Ok((removed, due.len() >= PURGE_STEP))
    }

    /// After a committed batch: if deleted content waits for a wipe and the last wipe is
    /// long enough ago, checkpoints the WAL and truncates it (see the module docs).
    pub(crate) fn maybe_wipe(&mut self) {
        if !self.controls.wipe_pending || !self.conn.is_autocommit() {
            return;
        }
        if self
            .controls
            .last_wipe
            .is_some_and(|t| t.elapsed() < self.controls.wipe_interval)
        {
            return;
        }
        self.controls.last_wipe = Some(Instant::now());
        let _ = self.conn.busy_timeout(WIPE_BUSY_TIMEOUT);
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|busy| busy == 0);
        let _ = self.conn.busy_timeout(self.controls.busy_timeout);
        match done {
            Ok(true) => self.controls.wipe_pending = false,
            Ok(false) => tracing::debug!("WAL wipe held up by readers; retried later"),
            Err(e) => tracing::warn!(error = %e, "WAL wipe failed; retried later"),
        }
    }
}

/// The audience of an ephemeral signal (a read).
pub(crate) fn relay_audience(
    conn: &Connection,
    sender: DeviceId,
    group_id: &[u8],
) -> Result<RelayAudience, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM groups WHERE group_id = ?1")
        .db()?
        .exists([group_id])
        .db()?;
    if !exists {
        return Ok(RelayAudience::UnknownGroup);
    }
    let handle: Option<String> = conn
        .prepare_cached(
            "SELECT d.handle FROM group_members gm JOIN devices d ON d.id = gm.device \
             WHERE gm.group_id = ?1 AND gm.device = ?2",
        )
        .db()?
        .query_row(params![group_id, to_i64(sender.0)], |r| r.get(0))
        .optional()
        .db()?;
    let Some(handle) = handle else {
        return Ok(RelayAudience::NotMember);
    };
    let devices = conn
        .prepare_cached(
            "SELECT gm.device FROM group_members gm JOIN devices d ON d.id = gm.device \
             WHERE gm.group_id = ?1 AND gm.device != ?2 AND d.revoked = 0 \
             AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.blocker = d.handle AND b.blocked = ?3) \
             ORDER BY gm.device",
        )
        .db()?
        .query_map(params![group_id, to_i64(sender.0), handle], |r| {
            r.get::<_, i64>(0).map(|id| DeviceId(from_i64(id)))
        })
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    Ok(RelayAudience::Devices(devices))
}

/// The handles `blocker` blocks (a read).
pub(crate) fn blocked_by(conn: &Connection, blocker: &str) -> Result<Vec<String>, StoreError> {
    conn.prepare_cached("SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY blocked")
        .db()?
        .query_map([blocker], |r| r.get(0))
        .db()?
        .collect::<Result<_, _>>()
        .db()
}

/// Reports with an id above `after_id`, oldest first.
pub(crate) fn reports(
    conn: &Connection,
    after_id: u64,
    limit: usize,
) -> Result<Vec<ReportRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT id, reporter, reported, reason, evidence, created_at_ms FROM reports
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )
    .db()?
    .query_map(
        params![to_i64(after_id), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(ReportRecord {
                id: from_i64(r.get(0)?),
                report: NewReport {
                    reporter: r.get(1)?,
                    reported: r.get(2)?,
                    reason: r.get(3)?,
                    evidence: r.get(4)?,
                    at_ms: from_i64(r.get(5)?),
                },
            })
        },
    )
    .db()?
    .collect::<Result<_, _>>()
    .db()
}

impl WriterState {
    pub(crate) fn file_report(&mut self, report: &NewReport) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO reports (reporter, reported, reason, evidence, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![
                report.reporter,
                report.reported,
                report.reason,
                report.evidence,
                to_i64(report.at_ms)
            ])
            .db()?;
        Ok(from_i64(self.conn.last_insert_rowid()))
    }

    pub(crate) fn close_report(&mut self, id: u64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM reports WHERE id = ?1")
            .db()?
            .execute(params![to_i64(id)])
            .db()?;
        // The disclosed messages are wiped from the files with the next WAL wipe.
        self.controls.wipe_pending |= n > 0;
        Ok(n > 0)
    }
}
