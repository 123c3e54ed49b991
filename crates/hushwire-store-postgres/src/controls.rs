//! Conversation controls ([`hushwire_store::Controls`]): block lists, retraction of
//! still-queued messages, the purge of disappearing messages and the audience of
//! ephemeral signals.
//!
//! **Wiping.** PostgreSQL keeps a deleted row's bytes in its page until VACUUM reuses
//! the space, and in the write-ahead log until the segment is recycled. This backend
//! deletes promptly; wiping the files is the operator's part (autovacuum, WAL
//! retention, encrypted storage), see the crate docs.

use crate::conv::{TxError, exec, from_i64, row_one, rows, to_i64};
use crate::mailbox::{RELEASE_TAIL, drop_unreferenced};
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{DeviceId, NewReport, RelayAudience, ReportRecord, StoreError};

/// Disappearing bodies the purge handles per transaction.
pub(crate) const PURGE_STEP: i64 = 1_024;

pub(crate) async fn set_block(
    tx: &Transaction<'_>,
    blocker: &str,
    handle: &str,
    blocked: bool,
    now_ms: u64,
) -> Result<bool, TxError> {
    if blocker == handle {
        return Err(StoreError::Invalid("an account cannot block itself".into()).into());
    }
    let changed = if blocked {
        exec(
            tx,
            "INSERT INTO blocks (blocker, blocked, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (blocker, blocked) DO NOTHING",
            &[&blocker, &handle, &to_i64(now_ms)],
        )
        .await?
    } else {
        exec(
            tx,
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&blocker, &handle],
        )
        .await?
    };
    Ok(changed > 0)
}

pub(crate) async fn blocked_by<C: GenericClient>(
    c: &C,
    blocker: &str,
) -> Result<Vec<String>, TxError> {
    Ok(rows(
        c,
        "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked",
        &[&blocker],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Removes every queued entry of the application message `message_id` that a device
/// of `sender`'s account submitted to `group_id`, and the body with its last reference.
pub(crate) async fn retract(
    tx: &Transaction<'_>,
    sender: DeviceId,
    group_id: &[u8],
    message_id: [u8; 16],
) -> Result<u64, TxError> {
    let r = row_one(
        tx,
        &format!(
            "WITH d AS (DELETE FROM mailbox mb USING messages b, devices s \
               WHERE mb.message = b.id AND s.id = b.sender \
                 AND s.handle = (SELECT handle FROM devices WHERE id = $3) \
                 AND b.message_id = $1 AND b.group_id = $2 AND b.kind = 1 \
               RETURNING mb.message), \
             {RELEASE_TAIL}"
        ),
        &[&&message_id[..], &group_id, &to_i64(sender.0)],
    )
    .await?;
    let removed: i64 = r.get(0);
    let gone: Vec<i64> = r.get(1);
    drop_unreferenced(tx, &gone).await?;
    Ok(from_i64(removed))
}

/// One step of the purge: up to [`PURGE_STEP`] disappearing bodies due before `now`,
/// with their queued entries. Returns (entries removed, whether more may be due).
pub(crate) async fn purge_step(tx: &Transaction<'_>, now: i64) -> Result<(u64, bool), TxError> {
    let r = row_one(
        tx,
        "WITH b AS (SELECT id FROM messages WHERE disappearing AND expires_at_ms < $1 \
                    ORDER BY expires_at_ms LIMIT $2 FOR UPDATE), \
         e AS (DELETE FROM mailbox WHERE message IN (SELECT id FROM b) RETURNING 1), \
         m AS (DELETE FROM messages WHERE id IN (SELECT id FROM b) RETURNING 1) \
         SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM m)",
        &[&now, &PURGE_STEP],
    )
    .await?;
    let entries: i64 = r.get(0);
    let bodies: i64 = r.get(1);
    Ok((from_i64(entries), bodies >= PURGE_STEP))
}

pub(crate) async fn relay_audience<C: GenericClient>(
    c: &C,
    sender: DeviceId,
    group_id: &[u8],
) -> Result<RelayAudience, TxError> {
    // One statement: one snapshot.
    let r = row_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM groups WHERE group_id = $1), \
                EXISTS (SELECT 1 FROM group_members WHERE group_id = $1 AND device = $2), \
                ARRAY(SELECT gm.device FROM group_members gm JOIN devices d ON d.id = gm.device \
                      WHERE gm.group_id = $1 AND gm.device <> $2 AND NOT d.revoked \
                        AND NOT EXISTS (SELECT 1 FROM blocks b JOIN devices s ON s.id = $2 \
                                        WHERE b.blocker = d.handle AND b.blocked = s.handle) \
                      ORDER BY gm.device)",
        &[&group_id, &to_i64(sender.0)],
    )
    .await?;
    if !r.get::<_, bool>(0) {
        return Ok(RelayAudience::UnknownGroup);
    }
    if !r.get::<_, bool>(1) {
        return Ok(RelayAudience::NotMember);
    }
    let devices: Vec<i64> = r.get(2);
    Ok(RelayAudience::Devices(
        devices.into_iter().map(|d| DeviceId(from_i64(d))).collect(),
    ))
}

/// Advisory lock key serializing report filing (`"hwreport"` in ASCII, as an i64).
const REPORT_LOCK: i64 = 0x6877_7265_706f_7274;

pub(crate) async fn file_report(tx: &Transaction<'_>, report: &NewReport) -> Result<u64, TxError> {
    // Filings serialize, so ids commit in increasing order (see migration 0002).
    exec(tx, "SELECT pg_advisory_xact_lock($1)", &[&REPORT_LOCK]).await?;
    let r = row_one(
        tx,
        "INSERT INTO reports (reporter, reported, reason, evidence, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
        &[
            &report.reporter,
            &report.reported,
            &report.reason,
            &report.evidence,
            &to_i64(report.at_ms),
        ],
    )
    .await?;
    Ok(from_i64(r.get(0)))
}

pub(crate) async fn reports<C: GenericClient>(
    c: &C,
    after_id: u64,
    limit: usize,
) -> Result<Vec<ReportRecord>, TxError> {
    Ok(rows(
        c,
        "SELECT id, reporter, reported, reason, evidence, created_at_ms FROM reports \
         WHERE id > $1 ORDER BY id LIMIT $2",
        &[&to_i64(after_id), &i64::try_from(limit).unwrap_or(i64::MAX)],
    )
    .await?
    .iter()
    .map(|r| ReportRecord {
        id: from_i64(r.get(0)),
        report: NewReport {
            reporter: r.get(1),
            reported: r.get(2),
            reason: r.get(3),
            evidence: r.get(4),
            at_ms: from_i64(r.get(5)),
        },
    })
    .collect())
}

pub(crate) async fn close_report(tx: &Transaction<'_>, id: u64) -> Result<bool, TxError> {
    Ok(exec(tx, "DELETE FROM reports WHERE id = $1", &[&to_i64(id)]).await? > 0)
}
