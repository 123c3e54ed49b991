//! The Delivery Service: group logs, commit fencing, idempotent sends and fan-out by
//! reference, each submission in one READ COMMITTED transaction.
//!
//! Round trips of an application message: the sender and its idempotency record (one
//! statement), the group row locked with its roster (one), the body with its mailbox
//! entries (one), the group counters with the idempotency record (one), plus BEGIN and
//! COMMIT.

use crate::conv::{TxError, exec, from_i64, row_opt, rows, to_i64, to_u32};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{
    Accepted, Delivered, DeviceAddr, DeviceId, Envelope, EnvelopeKind, GroupInfoRecord,
    GroupRecord, StoreError, Submission, SubmitKind, SubmitOutcome,
};
use std::collections::HashMap;

/// Stores one body and fans it out by reference to the live devices among `to` (those
/// whose account blocks `$3` left out when `$2`), in one statement: the recipients'
/// seq counters are locked in device order (so concurrent fan-outs to overlapping
/// audiences queue instead of deadlocking) and incremented, the body is stored with
/// its reference count (not at all without recipients), and one mailbox row per
/// recipient points at it. Returns `(device, seq)` per entry.
const FAN_OUT: &str = "\
    WITH r AS (\
      SELECT d.id FROM devices d \
      WHERE d.id = ANY($1::bigint[]) AND NOT d.revoked \
        AND NOT ($2::boolean AND EXISTS (\
          SELECT 1 FROM blocks b WHERE b.blocker = d.handle AND b.blocked = $3))), \
    lk AS (\
      SELECT s.device FROM mailbox_seqs s WHERE s.device IN (SELECT id FROM r) \
      ORDER BY s.device FOR UPDATE), \
    m AS (\
      INSERT INTO messages (group_id, group_seq, sender, message_id, kind, server_time_ms, \
                            expires_at_ms, disappearing, refcount, payload) \
      SELECT $4::bytea, $5::bigint, $6::bigint, $7::bytea, $8::smallint, $9::bigint, \
             $10::bigint, $11::boolean, count(*)::integer, $12::bytea FROM lk \
      HAVING count(*) > 0 \
      RETURNING id), \
    s AS (\
      UPDATE mailbox_seqs ms SET last_seq = ms.last_seq + 1 FROM lk \
      WHERE ms.device = lk.device RETURNING ms.device, ms.last_seq) \
    INSERT INTO mailbox (device, seq, message) \
    SELECT s.device, s.last_seq, m.id FROM s CROSS JOIN m \
    RETURNING device, seq";

pub(crate) async fn submit(
    tx: &Transaction<'_>,
    sub: &Submission,
) -> Result<SubmitOutcome, TxError> {
    let sender = to_i64(sub.sender.0);
    let message_id: &[u8] = &sub.message_id;
    // 1. The sender, and whether this id was accepted from it before.
    let Some(head) = row_opt(
        tx,
        "SELECT d.handle, d.device_no, x.group_seq, x.epoch FROM devices d \
         LEFT JOIN dedup x ON x.message_id = $2 AND x.sender = d.id \
         WHERE d.id = $1",
        &[&sender, &message_id],
    )
    .await?
    else {
        return Err(
            StoreError::Invalid(format!("unknown sender device id {}", sub.sender.0)).into(),
        );
    };
    if let Some(group_seq) = head.get::<_, Option<i64>>(2) {
        return Ok(duplicate(group_seq, head.get(3)));
    }
    let sender_addr = DeviceAddr {
        handle: head.get(0),
        device_id: to_u32(head.get(1))?,
    };

    // 2. The group, locked for this transaction: submissions to one group serialize
    // here, whichever node runs them, so the epoch check below is a fence.
    let gid: &[u8] = sub.group_id.as_ref();
    let is_commit = matches!(sub.kind, SubmitKind::Commit { .. });
    let (epoch, last_seq, members) = match row_opt(
        tx,
        "SELECT g.epoch, g.last_seq, \
                ARRAY(SELECT m.device FROM group_members m WHERE m.group_id = g.group_id \
                      ORDER BY m.device) \
         FROM groups g WHERE g.group_id = $1 FOR UPDATE OF g",
        &[&gid],
    )
    .await?
    {
        Some(g) => (
            g.get::<_, i64>(0),
            g.get::<_, i64>(1),
            g.get::<_, Vec<i64>>(2),
        ),
        None if is_commit && sub.epoch == 0 => {
            // A concurrent creation makes this wait, then insert nothing: run again and
            // meet the group it created.
            let created = exec(
                tx,
                "INSERT INTO groups (group_id, epoch, last_seq, created_at_ms) \
                 VALUES ($1, 0, 0, $2) ON CONFLICT (group_id) DO NOTHING",
                &[&gid, &to_i64(sub.now_ms)],
            )
            .await?;
            if created == 0 {
                return Err(TxError::Retry);
            }
            (0, 0, vec![sender])
        }
        None => return Ok(SubmitOutcome::UnknownGroup),
    };
    // 3. Membership (for a commit, of the sender's account).
    let member = members.contains(&sender)
        || (is_commit && account_is_member(tx, &sender_addr.handle, &members).await?);
    if !member {
        return Ok(SubmitOutcome::NotMember);
    }
    // Duplicates that raced this one are settled now that the group is locked (for
    // the same group) or by the idempotency insert below (any group).
    let group_seq = last_seq.saturating_add(1);
    let mut new_epoch = epoch;
    let audience: Vec<i64> = members.iter().copied().filter(|d| *d != sender).collect();
    let mut welcomes: Vec<(&Bytes, Vec<i64>)> = Vec::new();
    // 4. Epoch fencing: commits, and application messages (so every device in the
    // roster, one added by the last commit too, can read them) unless the sender's group
    // diverged (`past_epoch_ok`).
    let fenced = match &sub.kind {
        SubmitKind::Application => !sub.past_epoch_ok,
        SubmitKind::Proposal => false,
        SubmitKind::Commit { .. } => true,
    };
    if fenced && from_i64(epoch) != sub.epoch {
        return Ok(SubmitOutcome::StaleEpoch {
            current_epoch: from_i64(epoch),
        });
    }
    let kind = match &sub.kind {
        SubmitKind::Application => EnvelopeKind::Application,
        SubmitKind::Proposal => EnvelopeKind::Proposal,
        SubmitKind::Commit {
            roster,
            welcomes: w,
            group_info,
        } => {
            let mut addrs: Vec<&DeviceAddr> = roster.iter().collect();
            for out in w {
                addrs.extend(out.recipients.iter());
            }
            let ids = resolve(tx, &addrs).await?;
            let mut roster_ids: Vec<i64> = ids[..roster.len()].to_vec();
            roster_ids.sort_unstable();
            roster_ids.dedup();
            let mut at = roster.len();
            for out in w {
                let mut to = ids[at..at + out.recipients.len()].to_vec();
                at += out.recipients.len();
                to.sort_unstable();
                to.dedup();
                welcomes.push((&out.payload, to));
            }
            new_epoch = epoch.saturating_add(1);
            // The roster is replaced; the audience stays the old roster (added
            // devices get their Welcome instead).
            exec(
                tx,
                "DELETE FROM group_members \
                 WHERE group_id = $1 AND device <> ALL($2::bigint[])",
                &[&gid, &roster_ids],
            )
            .await?;
            exec(
                tx,
                "INSERT INTO group_members (group_id, device) \
                 SELECT $1::bytea, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
                &[&gid, &roster_ids],
            )
            .await?;
            if let Some(gi) = group_info {
                exec(
                    tx,
                    "INSERT INTO group_infos (group_id, epoch, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data",
                    &[&gid, &new_epoch, &gi.as_ref()],
                )
                .await?;
            }
            EnvelopeKind::Commit
        }
    };

    // 5-6. Bodies and mailbox entries.
    let mut deliveries = Vec::new();
    let mut bodies: Vec<(EnvelopeKind, i64, &Bytes, Vec<i64>)> =
        vec![(kind, group_seq, &sub.payload, audience)];
    for (payload, to) in welcomes {
        bodies.push((EnvelopeKind::Welcome, 0, payload, to));
    }
    for (kind, gseq, payload, to) in bodies {
        if to.is_empty() {
            continue;
        }
        // Accounts that blocked the sender get none of its messages or Welcomes.
        let filter_blocks = matches!(kind, EnvelopeKind::Application | EnvelopeKind::Welcome);
        let code = i16::from(kind.code());
        let mut entries: Vec<(i64, i64)> = rows(
            tx,
            FAN_OUT,
            &[
                &to,
                &filter_blocks,
                &sender_addr.handle,
                &gid,
                &gseq,
                &sender,
                &message_id,
                &code,
                &to_i64(sub.now_ms),
                &to_i64(sub.expires_at_ms),
                &sub.disappearing,
                &payload.as_ref(),
            ],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        entries.sort_unstable();
        for (device, seq) in entries {
            deliveries.push(Delivered {
                device: DeviceId(from_i64(device)),
                envelope: Envelope {
                    seq: from_i64(seq),
                    message_id: sub.message_id,
                    group_id: sub.group_id.clone(),
                    group_seq: from_i64(gseq),
                    kind,
                    sender: sender_addr.clone(),
                    server_time_ms: sub.now_ms,
                    payload: payload.clone(),
                },
            });
        }
    }

    // The group's counters and the idempotency record. The record's insert waits for a
    // concurrent transaction inserting the same (sender, id), then inserts nothing:
    // run again and answer as a duplicate.
    let recorded = rows(
        tx,
        "WITH g AS (UPDATE groups SET epoch = $2, last_seq = $3 WHERE group_id = $1) \
         INSERT INTO dedup (message_id, sender, group_seq, epoch, expires_at_ms) \
         VALUES ($4, $5, $3, $2, $6) ON CONFLICT DO NOTHING RETURNING 1",
        &[
            &gid,
            &new_epoch,
            &group_seq,
            &message_id,
            &sender,
            &to_i64(sub.expires_at_ms),
        ],
    )
    .await?;
    if recorded.is_empty() {
        return Err(TxError::Retry);
    }
    Ok(SubmitOutcome::Accepted(Accepted {
        group_seq: from_i64(group_seq),
        epoch: from_i64(new_epoch),
        duplicate: false,
        deliveries,
    }))
}

fn duplicate(group_seq: i64, epoch: i64) -> SubmitOutcome {
    SubmitOutcome::Accepted(Accepted {
        group_seq: from_i64(group_seq),
        epoch: from_i64(epoch),
        duplicate: true,
        deliveries: Vec::new(),
    })
}

/// Device ids of `addrs`, in order, in one statement; the first unknown address is
/// [`StoreError::UnknownDevice`].
/// Whether a device of `handle` is among `members` (an External Commit by another
/// device of a member account).
async fn account_is_member(
    tx: &Transaction<'_>,
    handle: &str,
    members: &[i64],
) -> Result<bool, TxError> {
    Ok(row_opt(
        tx,
        "SELECT 1 FROM devices WHERE handle = $1 AND id = ANY($2) LIMIT 1",
        &[&handle, &members],
    )
    .await?
    .is_some())
}

async fn resolve(tx: &Transaction<'_>, addrs: &[&DeviceAddr]) -> Result<Vec<i64>, TxError> {
    let handles: Vec<&str> = addrs.iter().map(|a| a.handle.as_str()).collect();
    let numbers: Vec<i64> = addrs.iter().map(|a| i64::from(a.device_id)).collect();
    let found: HashMap<(String, i64), i64> = rows(
        tx,
        "SELECT d.handle, d.device_no, d.id FROM devices d \
         JOIN unnest($1::text[], $2::bigint[]) AS a(handle, device_no) \
           ON d.handle = a.handle AND d.device_no = a.device_no",
        &[&handles, &numbers],
    )
    .await?
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect();
    addrs
        .iter()
        .map(|a| {
            found
                .get(&(a.handle.clone(), i64::from(a.device_id)))
                .copied()
                .ok_or_else(|| StoreError::UnknownDevice((*a).clone()).into())
        })
        .collect()
}

pub(crate) async fn group<C: GenericClient>(
    c: &C,
    group_id: &[u8],
) -> Result<Option<GroupRecord>, TxError> {
    // One statement: one snapshot of the counters and the roster.
    let rs = rows(
        c,
        "SELECT g.epoch, g.last_seq, d.handle, d.device_no FROM groups g \
         LEFT JOIN group_members m ON m.group_id = g.group_id \
         LEFT JOIN devices d ON d.id = m.device \
         WHERE g.group_id = $1 ORDER BY d.handle, d.device_no",
        &[&group_id],
    )
    .await?;
    let Some(first) = rs.first() else {
        return Ok(None);
    };
    let mut roster = Vec::with_capacity(rs.len());
    for r in &rs {
        if let Some(handle) = r.get::<_, Option<String>>(2) {
            roster.push(DeviceAddr {
                handle,
                device_id: to_u32(r.get(3))?,
            });
        }
    }
    Ok(Some(GroupRecord {
        epoch: from_i64(first.get(0)),
        roster,
        last_seq: from_i64(first.get(1)),
    }))
}

pub(crate) async fn group_info<C: GenericClient>(
    c: &C,
    group_id: &[u8],
) -> Result<Option<GroupInfoRecord>, TxError> {
    Ok(row_opt(
        c,
        "SELECT epoch, data FROM group_infos WHERE group_id = $1",
        &[&group_id],
    )
    .await?
    .map(|r| GroupInfoRecord {
        epoch: from_i64(r.get(0)),
        data: Bytes::from(r.get::<_, Vec<u8>>(1)),
    }))
}
