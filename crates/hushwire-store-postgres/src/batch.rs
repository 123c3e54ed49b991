//! The batching submitter: application messages, proposals and acknowledgement hints
//! from every connection of a node gathered into shared transactions (group commit).
//!
//! Callers send [`Op`]s over a bounded channel. One task takes the first op, drains up to
//! [`Batching::max`] more that are already waiting (under load it may hold the batch
//! open for [`Batching::window`]), and applies them all in ONE READ COMMITTED
//! transaction on one pooled connection; at most [`Batching::concurrency`] batches run
//! at once. Every caller is answered after the `COMMIT` (with `synchronous_commit=on`):
//! an `Ok` is durable, exactly as before batching.
//!
//! One batch is five statements whatever its size (`BEGIN`; the acknowledgement
//! hints, the senders with their idempotency records and the groups locked, sent
//! together as one pipeline; the fan-out; `COMMIT`):
//! 1. [`ACK_HINTS`]: the latest hint per device deletes its entries and releases their
//!    bodies (body rows locked in id order).
//! 2. [`HEADS`]: every sender and whether its message id was accepted before.
//! 3. [`LOCK_GROUPS`]: every group of the batch locked (`FOR UPDATE`, in `group_id`
//!    order) with its counters and roster. The epoch fence and the roster check are then
//!    decided in memory under those locks, in arrival order; a group's messages get
//!    consecutive `group_seq`s.
//! 4. [`FAN_OUT_BATCH`]: every body stored once with its reference count, the
//!    recipients' seq counters locked in device order and advanced by their number of
//!    new entries (gap-free per device), the mailbox rows, the groups' counters and the
//!    idempotency records. A record that meets a concurrent node's copy (`ON CONFLICT DO
//!    NOTHING` inserting less than expected) rolls the whole batch back and runs it
//!    again; the copy is then found by step 2 and answered as a duplicate.
//!
//! Lock order (bodies, then groups, then seq counters, each sorted) is the same in every
//! batch and in the single-operation transactions, so batches on several nodes do not
//! deadlock; a deadlock or serialization failure anyway reruns the batch (bounded).
//! Commits stay single transactions (`delivery::submit`): they are rare, change rosters
//! and carry Welcomes; they lock the same group rows, so the fence covers both paths.
//! A submission refused in memory (unknown sender, not a member, stale epoch, unknown
//! group) changes nothing, so it never disturbs the others of its batch.

use crate::conv::{self, TxError, from_i64, rows, to_i64, to_u32};
use bytes::Bytes;
use deadpool_postgres::{Pool, Transaction};
use hushwire_store::{
    Accepted, Delivered, DeviceAddr, DeviceId, Envelope, EnvelopeKind, StoreError, Submission,
    SubmitKind, SubmitOutcome,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// What the batcher receives.
pub(crate) enum Op {
    /// An application message or proposal, answered after the commit.
    Submit(
        Box<Submission>,
        oneshot::Sender<Result<SubmitOutcome, StoreError>>,
    ),
    /// [`hushwire_store::Mailboxes::ack_hint`]: coalesced per device, answered to nobody.
    AckHint { device: i64, up_to_seq: i64 },
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most ops per batch.
    pub(crate) max: usize,
    /// How long a batch stays open for more ops when the previous one had company.
    pub(crate) window: Duration,
    /// Batches in flight at once.
    pub(crate) concurrency: usize,
}

/// A batch this large is not held open.
const WINDOW_TARGET: usize = 32;

/// Process-wide batch counters (see [`crate::PgStats`]).
pub(crate) static BATCHES: AtomicU64 = AtomicU64::new(0);
pub(crate) static BATCHED_SUBMITS: AtomicU64 = AtomicU64::new(0);
pub(crate) static BATCHED_HINTS: AtomicU64 = AtomicU64::new(0);

/// Acknowledgement hints of a batch, one per device (the highest), in one statement;
/// bodies whose last reference goes are deleted by the same statement (the two
/// data-modifying CTEs touch disjoint, locked rows). Yields the entries removed.
pub(crate) const ACK_HINTS: &str = "\
    WITH a AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS a(device, up_to)), \
    d AS (DELETE FROM mailbox mb USING a WHERE mb.device = a.device AND mb.seq <= a.up_to \
          RETURNING mb.message), \
    c AS (SELECT message, count(*)::integer AS n FROM d GROUP BY message), \
    l AS (SELECT m.id, m.refcount, c.n FROM messages m JOIN c ON c.message = m.id \
          ORDER BY m.id FOR UPDATE OF m), \
    u AS (UPDATE messages m SET refcount = m.refcount - l.n FROM l \
          WHERE m.id = l.id AND l.refcount > l.n RETURNING 1), \
    x AS (DELETE FROM messages m USING l WHERE m.id = l.id AND l.refcount <= l.n RETURNING 1) \
    SELECT (SELECT count(*) FROM d)";

/// Every sender of the batch (in order) and its idempotency record, if any.
const HEADS: &str = "\
    SELECT s.i, d.handle, d.device_no, x.group_seq, x.epoch \
    FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS s(sender, message_id, i) \
    LEFT JOIN devices d ON d.id = s.sender \
    LEFT JOIN dedup x ON x.message_id = s.message_id AND x.sender = s.sender \
    ORDER BY s.i";

/// Every group of the batch, locked in `group_id` order, with its counters and roster.
const LOCK_GROUPS: &str = "\
    SELECT g.group_id, g.epoch, g.last_seq, \
           ARRAY(SELECT m.device FROM group_members m WHERE m.group_id = g.group_id \
                 ORDER BY m.device) \
    FROM groups g WHERE g.group_id = ANY($1::bytea[]) ORDER BY g.group_id FOR UPDATE OF g";

/// Every accepted body of the batch with its mailbox entries, the groups' counters and
/// the idempotency records, in one statement. Bodies `$1..$12` (index `i`, ...),
/// recipients `$13/$14` (body index, device), group counters `$15/$16`, idempotency
/// records `$17..$21`. Recipients are filtered as in `delivery::FAN_OUT` (live devices,
/// blocks for application messages), their counters locked in device order and
/// advanced by their count; each device's new entries get consecutive seqs in body
/// order. Rows: `(i, device, seq)` per entry, then `(-1, records inserted, 0)`.
const FAN_OUT_BATCH: &str = "\
    WITH b AS (\
      SELECT * FROM unnest($1::integer[], $2::bytea[], $3::bigint[], $4::bigint[], \
                           $5::bytea[], $6::smallint[], $7::bigint[], $8::bigint[], \
                           $9::boolean[], $10::bytea[], $11::boolean[], $12::text[]) \
        AS b(i, group_id, group_seq, sender, message_id, kind, server_time_ms, \
             expires_at_ms, disappearing, payload, filter_blocks, sender_handle)), \
    rq AS (SELECT * FROM unnest($13::integer[], $14::bigint[]) AS rq(i, device)), \
    r AS (\
      SELECT rq.i, rq.device FROM rq JOIN b ON b.i = rq.i JOIN devices d ON d.id = rq.device \
      WHERE NOT d.revoked AND NOT (b.filter_blocks AND EXISTS (\
        SELECT 1 FROM blocks k WHERE k.blocker = d.handle AND k.blocked = b.sender_handle))), \
    lk AS (\
      SELECT s.device FROM mailbox_seqs s WHERE s.device IN (SELECT device FROM r) \
      ORDER BY s.device FOR UPDATE), \
    rl AS (SELECT r.i, r.device FROM r JOIN lk ON lk.device = r.device), \
    n AS (SELECT device, count(*) AS n FROM rl GROUP BY device), \
    s AS (\
      UPDATE mailbox_seqs ms SET last_seq = ms.last_seq + n.n FROM n \
      WHERE ms.device = n.device RETURNING ms.device, ms.last_seq), \
    ids AS (\
      SELECT b.*, c.c, nextval(pg_get_serial_sequence('messages', 'id')) AS id \
      FROM b JOIN (SELECT i, count(*)::integer AS c FROM rl GROUP BY i) c ON c.i = b.i), \
    m AS (\
      INSERT INTO messages (id, group_id, group_seq, sender, message_id, kind, \
                            server_time_ms, expires_at_ms, disappearing, refcount, payload) \
      OVERRIDING SYSTEM VALUE \
      SELECT id, group_id, group_seq, sender, message_id, kind, server_time_ms, \
             expires_at_ms, disappearing, c, payload FROM ids), \
    e AS (\
      SELECT rl.i, rl.device, \
             s.last_seq - n.n + row_number() OVER (PARTITION BY rl.device ORDER BY rl.i) AS seq \
      FROM rl JOIN n ON n.device = rl.device JOIN s ON s.device = rl.device), \
    mb AS (\
      INSERT INTO mailbox (device, seq, message) \
      SELECT e.device, e.seq, ids.id FROM e JOIN ids ON ids.i = e.i), \
    g AS (\
      UPDATE groups gg SET last_seq = u.last_seq \
      FROM unnest($15::bytea[], $16::bigint[]) AS u(group_id, last_seq) \
      WHERE gg.group_id = u.group_id), \
    x AS (\
      INSERT INTO dedup (message_id, sender, group_seq, epoch, expires_at_ms) \
      SELECT * FROM unnest($17::bytea[], $18::bigint[], $19::bigint[], $20::bigint[], \
                           $21::bigint[]) \
      ON CONFLICT DO NOTHING RETURNING 1) \
    SELECT e.i, e.device, e.seq::bigint FROM e \
    UNION ALL SELECT -1, count(*)::bigint, 0::bigint FROM x";

/// The batcher's main loop; returns when every sender is gone (the store was dropped).
pub(crate) async fn run(pool: Pool, mut rx: mpsc::Receiver<Op>, batching: Batching) {
    let slots = batching.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(slots));
    let max = batching.max.max(1);
    let mut last_batch = 0usize;
    let mut logged = Instant::now();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut ops = Vec::with_capacity(max.min(1024));
        ops.push(first);
        drain(&mut rx, &mut ops, max);
        let small = ops.len() < WINDOW_TARGET.min(max);
        if last_batch > 1 && small && !batching.window.is_zero() {
            tokio::time::sleep(batching.window).await;
            drain(&mut rx, &mut ops, max);
        }
        last_batch = ops.len();
        let pool = pool.clone();
        tokio::spawn(async move {
            execute(&pool, ops).await;
            drop(permit);
        });
        if logged.elapsed() >= Duration::from_secs(1) {
            logged = Instant::now();
            let s = crate::PgStats::now();
            tracing::debug!(
                target: "hushwire_store_postgres::stats",
                statements = s.statements,
                commits = s.commits,
                batches = s.batches,
                batched_submits = s.batched_submits,
                batched_ack_hints = s.batched_ack_hints,
                "store counters"
            );
        }
    }
    // Let the batches in flight finish (their callers are waiting).
    let _ = permits
        .acquire_many(u32::try_from(slots).unwrap_or(u32::MAX))
        .await;
}

/// Takes what is already queued, up to `max` ops in all.
fn drain(rx: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>, max: usize) {
    while ops.len() < max {
        match rx.try_recv() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
}

type Reply = oneshot::Sender<Result<SubmitOutcome, StoreError>>;

/// Runs one batch (retrying conflicts, bounded) and answers every submitter.
async fn execute(pool: &Pool, ops: Vec<Op>) {
    let mut subs: Vec<Box<Submission>> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    let mut hints: HashMap<i64, i64> = HashMap::new();
    for op in ops {
        match op {
            Op::Submit(sub, reply) => {
                subs.push(sub);
                replies.push(reply);
            }
            Op::AckHint { device, up_to_seq } => {
                let e = hints.entry(device).or_insert(up_to_seq);
                *e = (*e).max(up_to_seq);
            }
        }
    }
    let mut hints: Vec<(i64, i64)> = hints.into_iter().collect();
    hints.sort_unstable();
    BATCHES.fetch_add(1, Ordering::Relaxed);
    BATCHED_SUBMITS.fetch_add(subs.len() as u64, Ordering::Relaxed);
    BATCHED_HINTS.fetch_add(hints.len() as u64, Ordering::Relaxed);

    let mut attempt: u32 = 0;
    let outcome = loop {
        attempt += 1;
        let failure = match once(pool, &subs, &hints).await {
            Ok(results) => break Ok(results),
            Err(e) => e,
        };
        match failure {
            TxError::Db(e) if conv::retryable(&e) && attempt < conv::MAX_TX_ATTEMPTS => {
                tracing::debug!(attempt, error = %conv::describe(&e), "batch conflict; retrying");
                tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
            }
            TxError::Retry if attempt < conv::MAX_TX_ATTEMPTS => {}
            TxError::Retry => {
                break Err(StoreError::Backend(
                    "batch kept losing a race; gave up".into(),
                ));
            }
            TxError::Db(e) => break Err(conv::backend(e)),
            TxError::Store(e) => break Err(e),
        }
    };
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            if !hints.is_empty() {
                tracing::warn!(error = %e, hints = hints.len(), "acknowledgement hints not applied");
            }
            for reply in replies {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// The same error for each caller of a failed batch.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Closed => StoreError::Closed,
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::UnknownDevice(a) => StoreError::UnknownDevice(a.clone()),
        StoreError::Unsupported(m) => StoreError::Unsupported(m),
        StoreError::StorageFull(m) => StoreError::StorageFull(m.clone()),
        other => StoreError::Backend(match other {
            StoreError::Backend(m) => m.clone(),
            _ => other.to_string(),
        }),
    }
}

/// One attempt: one transaction.
async fn once(
    pool: &Pool,
    subs: &[Box<Submission>],
    hints: &[(i64, i64)],
) -> Result<Vec<Result<SubmitOutcome, StoreError>>, TxError> {
    let mut client = crate::pooled(pool).await?;
    conv::count_statements(2);
    let tx = client.transaction().await?;
    match apply(&tx, subs, hints).await {
        Ok(results) => {
            tx.commit().await?;
            conv::COMMITS.fetch_add(1, Ordering::Relaxed);
            Ok(results)
        }
        Err(e) => {
            // Best effort: a broken connection is dropped by the pool anyway.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// A group of the batch as locked, with the seqs handed out so far.
struct GroupState {
    epoch: i64,
    last_seq: i64,
    /// Sorted.
    members: Vec<i64>,
    touched: bool,
}

/// An accepted submission's body.
struct Body {
    /// Index of the submission in the batch.
    at: usize,
    group_seq: i64,
    sender: DeviceAddr,
}

async fn apply(
    tx: &Transaction<'_>,
    subs: &[Box<Submission>],
    hints: &[(i64, i64)],
) -> Result<Vec<Result<SubmitOutcome, StoreError>>, TxError> {
    let acks = async {
        if hints.is_empty() {
            return Ok(());
        }
        let devices: Vec<i64> = hints.iter().map(|h| h.0).collect();
        let up_to: Vec<i64> = hints.iter().map(|h| h.1).collect();
        rows(tx, ACK_HINTS, &[&devices, &up_to]).await.map(|_| ())
    };
    if subs.is_empty() {
        acks.await?;
        return Ok(Vec::new());
    }
    let senders: Vec<i64> = subs.iter().map(|s| to_i64(s.sender.0)).collect();
    let ids: Vec<&[u8]> = subs.iter().map(|s| &s.message_id[..]).collect();
    let mut gids: Vec<&[u8]> = subs.iter().map(|s| s.group_id.as_ref()).collect();
    gids.sort_unstable();
    gids.dedup();
    // One pipeline: the three statements go out together, in this order (acks lock
    // bodies, then the groups are locked).
    let head_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&senders, &ids];
    let group_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&gids];
    let (_, heads, locked) = tokio::try_join!(
        acks,
        rows(tx, HEADS, &head_params),
        rows(tx, LOCK_GROUPS, &group_params),
    )?;
    if heads.len() != subs.len() {
        return Err(StoreError::Backend("batch: sender rows do not match".into()).into());
    }
    let mut groups: HashMap<Vec<u8>, GroupState> = locked
        .iter()
        .map(|r| {
            (
                r.get::<_, Vec<u8>>(0),
                GroupState {
                    epoch: r.get(1),
                    last_seq: r.get(2),
                    members: r.get(3),
                    touched: false,
                },
            )
        })
        .collect();

    let mut results: Vec<Result<SubmitOutcome, StoreError>> = Vec::with_capacity(subs.len());
    let mut bodies: Vec<Body> = Vec::new();
    // Accepted in this batch: (sender, id) -> (group_seq, epoch).
    let mut accepted_here: HashMap<(i64, [u8; 16]), (i64, i64)> = HashMap::new();
    for (at, (sub, head)) in subs.iter().zip(&heads).enumerate() {
        let sender = to_i64(sub.sender.0);
        let Some(handle) = head.get::<_, Option<String>>(1) else {
            results.push(Err(StoreError::Invalid(format!(
                "unknown sender device id {}",
                sub.sender.0
            ))));
            continue;
        };
        if let (Some(gseq), Some(epoch)) =
            (head.get::<_, Option<i64>>(3), head.get::<_, Option<i64>>(4))
        {
            results.push(Ok(duplicate(gseq, epoch)));
            continue;
        }
        if let Some(&(gseq, epoch)) = accepted_here.get(&(sender, sub.message_id)) {
            results.push(Ok(duplicate(gseq, epoch)));
            continue;
        }
        let device_no = match head.get::<_, Option<i64>>(2).map(to_u32) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                results.push(Err(e));
                continue;
            }
            None => {
                results.push(Err(StoreError::Backend("device without a number".into())));
                continue;
            }
        };
        let Some(group) = groups.get_mut(sub.group_id.as_ref()) else {
            results.push(Ok(SubmitOutcome::UnknownGroup));
            continue;
        };
        if group.members.binary_search(&sender).is_err() {
            results.push(Ok(SubmitOutcome::NotMember));
            continue;
        }
        let fenced = match &sub.kind {
            SubmitKind::Application => !sub.past_epoch_ok,
            SubmitKind::Proposal => false,
            SubmitKind::Commit { .. } => true,
        };
        if fenced && from_i64(group.epoch) != sub.epoch {
            results.push(Ok(SubmitOutcome::StaleEpoch {
                current_epoch: from_i64(group.epoch),
            }));
            continue;
        }
        group.last_seq = group.last_seq.saturating_add(1);
        group.touched = true;
        accepted_here.insert((sender, sub.message_id), (group.last_seq, group.epoch));
        bodies.push(Body {
            at,
            group_seq: group.last_seq,
            sender: DeviceAddr {
                handle,
                device_id: device_no,
            },
        });
        results.push(Ok(SubmitOutcome::Accepted(Accepted {
            group_seq: from_i64(group.last_seq),
            epoch: from_i64(group.epoch),
            duplicate: false,
            deliveries: Vec::new(),
        })));
    }
    if bodies.is_empty() {
        return Ok(results);
    }

    // Columns of the fan-out statement.
    let n = bodies.len();
    let mut b_i: Vec<i32> = Vec::with_capacity(n);
    let mut b_gid: Vec<&[u8]> = Vec::with_capacity(n);
    let mut b_gseq: Vec<i64> = Vec::with_capacity(n);
    let mut b_sender: Vec<i64> = Vec::with_capacity(n);
    let mut b_mid: Vec<&[u8]> = Vec::with_capacity(n);
    let mut b_kind: Vec<i16> = Vec::with_capacity(n);
    let mut b_time: Vec<i64> = Vec::with_capacity(n);
    let mut b_exp: Vec<i64> = Vec::with_capacity(n);
    let mut b_dis: Vec<bool> = Vec::with_capacity(n);
    let mut b_payload: Vec<&[u8]> = Vec::with_capacity(n);
    let mut b_filter: Vec<bool> = Vec::with_capacity(n);
    let mut b_handle: Vec<&str> = Vec::with_capacity(n);
    let mut r_i: Vec<i32> = Vec::new();
    let mut r_dev: Vec<i64> = Vec::new();
    for (k, body) in bodies.iter().enumerate() {
        let sub = &subs[body.at];
        let sender = to_i64(sub.sender.0);
        let k = i32::try_from(k)
            .map_err(|_| StoreError::Invalid("batch larger than 2^31 bodies".into()))?;
        b_i.push(k);
        b_gid.push(sub.group_id.as_ref());
        b_gseq.push(body.group_seq);
        b_sender.push(sender);
        b_mid.push(&sub.message_id[..]);
        b_kind.push(i16::from(kind_of(sub).code()));
        b_time.push(to_i64(sub.now_ms));
        b_exp.push(to_i64(sub.expires_at_ms));
        b_dis.push(sub.disappearing);
        b_payload.push(sub.payload.as_ref());
        b_filter.push(matches!(kind_of(sub), EnvelopeKind::Application));
        b_handle.push(body.sender.handle.as_str());
        if let Some(group) = groups.get(sub.group_id.as_ref()) {
            for &m in &group.members {
                if m != sender {
                    r_i.push(k);
                    r_dev.push(m);
                }
            }
        }
    }
    let mut g_id: Vec<&[u8]> = Vec::new();
    let mut g_last: Vec<i64> = Vec::new();
    for gid in &gids {
        if let Some(g) = groups.get(*gid).filter(|g| g.touched) {
            g_id.push(gid);
            g_last.push(g.last_seq);
        }
    }
    let mut d_epoch: Vec<i64> = Vec::with_capacity(n);
    let mut d_exp: Vec<i64> = Vec::with_capacity(n);
    for body in &bodies {
        let sub = &subs[body.at];
        d_epoch.push(groups.get(sub.group_id.as_ref()).map_or(0, |g| g.epoch));
        d_exp.push(to_i64(sub.expires_at_ms));
    }
    let out = rows(
        tx,
        FAN_OUT_BATCH,
        &[
            &b_i, &b_gid, &b_gseq, &b_sender, &b_mid, &b_kind, &b_time, &b_exp, &b_dis, &b_payload,
            &b_filter, &b_handle, &r_i, &r_dev, &g_id, &g_last, &b_mid, &b_sender, &b_gseq,
            &d_epoch, &d_exp,
        ],
    )
    .await?;
    let mut entries: Vec<(i32, i64, i64)> = Vec::with_capacity(out.len());
    let mut recorded: Option<i64> = None;
    for r in &out {
        let i: i32 = r.get(0);
        if i < 0 {
            recorded = Some(r.get(1));
        } else {
            entries.push((i, r.get(1), r.get(2)));
        }
    }
    if recorded != Some(i64::try_from(n).unwrap_or(i64::MAX)) {
        // A concurrent copy of one of these messages (another node) was recorded
        // first: run the batch again, which answers it as a duplicate.
        return Err(TxError::Retry);
    }
    entries.sort_unstable();
    for (i, device, seq) in entries {
        let Some(body) = usize::try_from(i).ok().and_then(|i| bodies.get(i)) else {
            return Err(StoreError::Backend("batch: entry for an unknown body".into()).into());
        };
        let sub = &subs[body.at];
        if let Some(Ok(SubmitOutcome::Accepted(acc))) = results.get_mut(body.at) {
            acc.deliveries.push(Delivered {
                device: DeviceId(from_i64(device)),
                envelope: Envelope {
                    seq: from_i64(seq),
                    message_id: sub.message_id,
                    group_id: sub.group_id.clone(),
                    group_seq: from_i64(body.group_seq),
                    kind: kind_of(sub),
                    sender: body.sender.clone(),
                    server_time_ms: sub.now_ms,
                    payload: Bytes::clone(&sub.payload),
                },
            });
        }
    }
    Ok(results)
}

fn kind_of(sub: &Submission) -> EnvelopeKind {
    match sub.kind {
        SubmitKind::Proposal => EnvelopeKind::Proposal,
        SubmitKind::Commit { .. } => EnvelopeKind::Commit,
        SubmitKind::Application => EnvelopeKind::Application,
    }
}

fn duplicate(group_seq: i64, epoch: i64) -> SubmitOutcome {
    SubmitOutcome::Accepted(Accepted {
        group_seq: from_i64(group_seq),
        epoch: from_i64(epoch),
        duplicate: true,
        deliveries: Vec::new(),
    })
}
