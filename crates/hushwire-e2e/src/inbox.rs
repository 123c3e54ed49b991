//! Processing mailbox envelopes: Welcomes, commits, application messages, buffering.
//!
//! `receive` runs one `BEGIN IMMEDIATE` transaction per envelope. Each MLS message is
//! processed inside a SAVEPOINT: an invalid or undecryptable one is rolled back to the
//! savepoint and recorded as a failure, so it never aborts the sync. A missing account
//! (`NeedAccount`) or a storage failure rolls back the whole transaction: nothing changes,
//! `last_received_seq` included.

use std::collections::{BTreeSet, HashSet};

use hushwire_proto::mls::{ContentType, MlsHeader, parse_header};
use hushwire_proto::wire::{Content, Envelope, content::Body};
use openmls::prelude::{
    MlsGroup, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider, ProcessedMessageContent, Proposal,
    Sender, StagedWelcome, tls_codec::Deserialize as _,
};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::group::GroupEventKind;
use crate::outbox::{group_config, load_group, reset_lost_commit};
use crate::profile::{DeviceAddr, KV_LAST_SEQ, LeafCheck, check_leaf, parse_credential};
use crate::store::{Provider, kv_set, to_sql_u64};
use crate::{E2eError, Event, Identity, MessageState, Profile, StoredMessage, Suite};

/// What processing one envelope needs.
pub(crate) struct Ctx<'a> {
    pub conn: &'a Connection,
    pub me: &'a Identity,
    pub fresh: &'a mut HashSet<String>,
    pub now_ms: u64,
}

/// Why an envelope was not applied.
#[derive(Debug)]
enum Fail {
    /// Abort the whole `receive` (rolled back): missing account, storage failure.
    Fatal(E2eError),
    /// Record as a failure and move on.
    Invalid {
        conversation: Option<String>,
        reason: String,
    },
    /// Roll back and move on silently (a duplicate).
    Skip,
    /// A group chat's commit at our epoch was refused (not authorized, or not valid
    /// MLS): recorded as a failure, and the group marked diverged (see
    /// [`record_divergence`]).
    Diverged {
        conversation: String,
        group_id: Vec<u8>,
        by: String,
        reason: String,
    },
}

impl From<E2eError> for Fail {
    fn from(e: E2eError) -> Self {
        Fail::Fatal(e)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Fatal(e.into())
    }
}

fn invalid(conversation: Option<&str>, reason: impl Into<String>) -> Fail {
    Fail::Invalid {
        conversation: conversation.map(str::to_string),
        reason: reason.into(),
    }
}

fn leaf_fail(conversation: Option<&str>, e: LeafCheck) -> Fail {
    match e {
        LeafCheck::NeedAccount(h) => Fail::Fatal(E2eError::NeedAccount(h)),
        LeafCheck::Invalid(r) => invalid(conversation, format!("member not authenticated: {r}")),
        LeafCheck::Fatal(e) => Fail::Fatal(e),
    }
}

enum Outcome {
    /// Applied; `touched` names the group whose buffered messages may now be processable.
    Done {
        events: Vec<Event>,
        touched: Option<Vec<u8>>,
    },
    /// Not processable yet (future epoch or unknown group): keep it.
    Buffer { group_id: Vec<u8>, epoch: u64 },
}

fn done(events: Vec<Event>) -> Outcome {
    Outcome::Done {
        events,
        touched: None,
    }
}

/// Runs `f` inside a SAVEPOINT, rolled back if it fails.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce() -> Result<T, Fail>) -> Result<T, Fail> {
    conn.execute_batch("SAVEPOINT envelope")?;
    match f() {
        Ok(v) => {
            conn.execute_batch("RELEASE envelope")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO envelope; RELEASE envelope")?;
            Err(e)
        }
    }
}

impl Profile {
    /// Processes one mailbox envelope in one transaction (see the module docs). Envelopes
    /// with `seq <= last_received_seq` are skipped, so redelivery after a crash between
    /// storing and acknowledging is harmless.
    pub fn receive(&mut self, envelope: &Envelope, now_ms: u64) -> Result<Vec<Event>, E2eError> {
        let me = self.me()?.0.clone();
        if envelope.seq <= self.last_received_seq()? {
            return Ok(vec![]);
        }
        // Disappearing messages whose time is up go first (features.rs).
        self.sweep_expired(now_ms)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ctx = Ctx {
            conn: &tx,
            me: &me,
            fresh: &mut self.fresh_accounts,
            now_ms,
        };
        let mut events = Vec::new();
        match handle_one(&mut ctx, envelope) {
            Ok(Outcome::Done { events: e, touched }) => {
                events.extend(e);
                if let Some(group_id) = touched {
                    events.extend(drain_buffer(&mut ctx, &group_id)?);
                }
            }
            Ok(Outcome::Buffer { group_id, epoch }) => {
                tx.execute(
                    "INSERT OR REPLACE INTO inbox_buffer (seq, group_id, epoch, envelope)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        to_sql_u64(envelope.seq)?,
                        group_id,
                        to_sql_u64(epoch)?,
                        envelope.encode_to_vec()
                    ],
                )?;
            }
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Skip) => {}
            Err(Fail::Invalid {
                conversation,
                reason,
            }) => {
                events.push(record_failure(
                    &tx,
                    envelope.seq,
                    conversation,
                    reason,
                    now_ms,
                )?);
            }
            Err(Fail::Diverged {
                conversation,
                group_id,
                by,
                reason,
            }) => {
                events.extend(record_divergence(
                    &tx,
                    envelope.seq,
                    &conversation,
                    &group_id,
                    &by,
                    reason,
                    now_ms,
                )?);
            }
        }
        // Buffered envelopes left over from an earlier drain that could not finish
        // (e.g. `submit_result` met a member whose account is unknown) are retried here,
        // where `NeedAccount` reaches the client.
        let buffered_groups: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT b.group_id FROM inbox_buffer b
                 JOIN groups g ON g.group_id = b.group_id",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for group_id in buffered_groups {
            events.extend(drain_buffer(&mut ctx, &group_id)?);
        }
        kv_set(&tx, KV_LAST_SEQ, to_sql_u64(envelope.seq)?)?;
        tx.commit()?;
        Ok(events)
    }
}

impl Profile {
    /// Gives up on an envelope that cannot be authenticated (e.g. from a contact whose
    /// account key changed and is not trusted yet): records it as a failure (reported as
    /// [`Event::Undecryptable`]) and moves past it, so the mailbox is not stuck on it.
    pub fn skip_envelope(
        &mut self,
        envelope: &Envelope,
        conversation: Option<String>,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<Event>, E2eError> {
        if envelope.seq <= self.last_received_seq()? {
            return Ok(vec![]);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let event = record_failure(&tx, envelope.seq, conversation, reason.to_string(), now_ms)?;
        kv_set(&tx, KV_LAST_SEQ, to_sql_u64(envelope.seq)?)?;
        tx.commit()?;
        Ok(vec![event])
    }
}

fn record_failure(
    conn: &Connection,
    seq: u64,
    conversation: Option<String>,
    reason: String,
    now_ms: u64,
) -> Result<Event, E2eError> {
    tracing::info!(seq, conversation = ?conversation, %reason, "envelope not processed");
    conn.execute(
        "INSERT INTO failures (seq, conversation, reason, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![to_sql_u64(seq)?, conversation, reason, to_sql_u64(now_ms)?],
    )?;
    Ok(Event::Undecryptable {
        conversation,
        reason,
    })
}

/// Records a refused commit of a group chat and marks the group diverged: the server's
/// log went on past our epoch with a commit every honest member refuses, so
/// - the group is never rejoined automatically (the GroupInfo the server keeps came
///   from that commit: rejoining would accept the change we refused);
/// - our queued membership changes are dropped (their commits can only be stale) and new
///   ones are refused until an admin resets the group ([`Profile::group_reset`]);
/// - texts still flow at our epoch between the members who refused it.
///
/// Only the first refusal marks the group; later ones are recorded as failures.
fn record_divergence(
    conn: &Connection,
    seq: u64,
    conversation: &str,
    group_id: &[u8],
    by: &str,
    reason: String,
    now_ms: u64,
) -> Result<Vec<Event>, E2eError> {
    let mut events = vec![record_failure(
        conn,
        seq,
        Some(conversation.to_string()),
        reason,
        now_ms,
    )?];
    let marked = conn.execute(
        "UPDATE group_chats SET diverged_by = ?2 WHERE group_id = ?1 AND diverged_by IS NULL",
        params![group_id, by],
    )?;
    if marked == 0 {
        return Ok(events);
    }
    if let Ok(mut group) = load_group(conn, group_id)
        && group.pending_commit().is_some()
    {
        let provider = Provider::new(conn);
        group
            .clear_pending_commit(provider.storage())
            .map_err(E2eError::from)?;
    }
    let dropped: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT kind FROM outbox WHERE group_id = ?1 AND kind LIKE 'g%' AND kind != 'greset'",
        )?;
        let rows = stmt.query_map(params![group_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    conn.execute(
        "DELETE FROM outbox WHERE group_id = ?1 AND kind LIKE 'g%' AND kind != 'greset'",
        params![group_id],
    )?;
    for kind in dropped {
        events.push(Event::GroupOperationFailed {
            conversation: conversation.to_string(),
            reason: format!("{kind}: the group diverged; an admin must reset it"),
        });
    }
    events.push(Event::Group(crate::group::record_event(
        conn,
        conversation,
        group_id,
        GroupEventKind::Diverged,
        by,
        vec![],
        None,
        false,
        now_ms,
    )?));
    Ok(events)
}

/// Like [`drain_buffer`], but a missing account only postpones the drain (rolled back to
/// a savepoint; the next `receive` retries and reports `NeedAccount` to the client).
pub(crate) fn drain_buffer_or_postpone(
    ctx: &mut Ctx<'_>,
    group_id: &[u8],
) -> Result<Vec<Event>, E2eError> {
    let conn = ctx.conn;
    match in_savepoint(conn, || drain_buffer(ctx, group_id).map_err(Fail::Fatal)) {
        Ok(events) => Ok(events),
        Err(Fail::Fatal(E2eError::NeedAccount(handle))) => {
            tracing::debug!(%handle, "buffered messages wait for an account");
            Ok(vec![])
        }
        Err(Fail::Fatal(E2eError::NeedAccounts(handles))) => {
            tracing::debug!(?handles, "buffered messages wait for accounts");
            Ok(vec![])
        }
        Err(Fail::Fatal(e)) => Err(e),
        Err(Fail::Skip | Fail::Invalid { .. } | Fail::Diverged { .. }) => Ok(vec![]),
    }
}

/// Processes buffered envelopes of `group_id` that have become processable, in seq order,
/// until none is left.
pub(crate) fn drain_buffer(ctx: &mut Ctx<'_>, group_id: &[u8]) -> Result<Vec<Event>, E2eError> {
    let mut events = Vec::new();
    loop {
        let state: Option<String> = ctx
            .conn
            .query_row(
                "SELECT state FROM groups WHERE group_id = ?1",
                params![group_id],
                |r| r.get(0),
            )
            .optional()?;
        if state.is_none() {
            return Ok(events);
        }
        let local = match load_group(ctx.conn, group_id) {
            Ok(g) => g.epoch().as_u64(),
            Err(_) => return Ok(events),
        };
        let next: Option<(i64, Vec<u8>)> = ctx
            .conn
            .query_row(
                "SELECT seq, envelope FROM inbox_buffer WHERE group_id = ?1 AND epoch <= ?2
                 ORDER BY seq LIMIT 1",
                params![group_id, to_sql_u64(local)?],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seq, bytes)) = next else {
            return Ok(events);
        };
        ctx.conn
            .execute("DELETE FROM inbox_buffer WHERE seq = ?1", params![seq])?;
        let envelope = Envelope::decode(bytes.as_slice())?;
        match handle_one(ctx, &envelope) {
            Ok(Outcome::Done { events: e, .. }) => events.extend(e),
            Ok(Outcome::Buffer { group_id: g, epoch }) => {
                // Cannot happen for epoch <= local, but keep it rather than lose it.
                ctx.conn.execute(
                    "INSERT OR REPLACE INTO inbox_buffer (seq, group_id, epoch, envelope)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![seq, g, to_sql_u64(epoch)?, bytes],
                )?;
                return Ok(events);
            }
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Skip) => {}
            Err(Fail::Invalid {
                conversation,
                reason,
            }) => events.push(record_failure(
                ctx.conn,
                envelope.seq,
                conversation,
                reason,
                ctx.now_ms,
            )?),
            Err(Fail::Diverged {
                conversation,
                group_id,
                by,
                reason,
            }) => events.extend(record_divergence(
                ctx.conn,
                envelope.seq,
                &conversation,
                &group_id,
                &by,
                reason,
                ctx.now_ms,
            )?),
        }
    }
}

/// One envelope, inside its own savepoint.
fn handle_one(ctx: &mut Ctx<'_>, envelope: &Envelope) -> Result<Outcome, Fail> {
    let conn = ctx.conn;
    in_savepoint(conn, || process(ctx, envelope))
}

fn process(ctx: &mut Ctx<'_>, envelope: &Envelope) -> Result<Outcome, Fail> {
    let header = parse_header(&envelope.payload)
        .map_err(|e| invalid(None, format!("malformed MLS message: {e}")))?;
    match header {
        MlsHeader::Welcome { .. } => join_welcome(ctx, envelope),
        MlsHeader::Framed(h) => {
            let row: Option<(String, String)> = ctx
                .conn
                .query_row(
                    "SELECT conversation, state FROM groups WHERE group_id = ?1",
                    params![h.group_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((conversation, state)) = row else {
                // Unknown group: its Welcome may still be on the way.
                return Ok(Outcome::Buffer {
                    group_id: h.group_id,
                    epoch: h.epoch,
                });
            };
            let conv = Some(conversation.as_str());
            if state == "inactive" || state == "failed" {
                return Err(invalid(conv, "message for a group we are no longer in"));
            }
            if let Some(sender) = &envelope.sender
                && sender.handle == ctx.me.handle
                && sender.device_id == ctx.me.device_id
            {
                return Ok(done(vec![])); // our own message echoed back
            }
            let mut group = load_group(ctx.conn, &h.group_id)?;
            let local = group.epoch().as_u64();
            if h.epoch > local && is_diverged(ctx.conn, &h.group_id)? {
                // The epochs after the commit we refused belong to a state of the group
                // we will never be in: nothing from them can be read, so nothing waits.
                return Err(invalid(
                    conv,
                    "from a state of the group this device refused (an admin must reset it)",
                ));
            }
            match h.content_type {
                ContentType::Commit => {
                    if h.epoch < local {
                        // Already part of our state (e.g. the commit that added us).
                        return Ok(done(vec![]));
                    }
                    if h.epoch > local {
                        return Ok(Outcome::Buffer {
                            group_id: h.group_id,
                            epoch: h.epoch,
                        });
                    }
                    process_commit(ctx, &mut group, &conversation, envelope, local)
                }
                ContentType::Application => {
                    if h.epoch > local {
                        return Ok(Outcome::Buffer {
                            group_id: h.group_id,
                            epoch: h.epoch,
                        });
                    }
                    process_application(ctx, &mut group, &conversation, envelope)
                }
                ContentType::Proposal if is_group_chat(ctx.conn, &h.group_id)? => {
                    if h.epoch > local {
                        return Ok(Outcome::Buffer {
                            group_id: h.group_id,
                            epoch: h.epoch,
                        });
                    }
                    if h.epoch < local {
                        // For an epoch that is over: its commit did not include it. The
                        // leaver proposes again.
                        return Ok(done(vec![]));
                    }
                    process_proposal(ctx, &mut group, &conversation, envelope)
                }
                ContentType::Proposal => {
                    // 1:1 clients never send standalone proposals; storing one would let
                    // anyone steer our next commit.
                    Err(invalid(conv, "standalone proposals are not accepted"))
                }
            }
        }
        MlsHeader::GroupInfo { .. } | MlsHeader::KeyPackage { .. } => {
            Err(invalid(None, "unexpected MLS message type in a mailbox"))
        }
    }
}

fn protocol_message(
    envelope: &Envelope,
    conversation: &str,
) -> Result<openmls::prelude::ProtocolMessage, Fail> {
    MlsMessageIn::tls_deserialize_exact(envelope.payload.as_ref())
        .map_err(|e| invalid(Some(conversation), format!("malformed MLS message: {e}")))?
        .try_into_protocol_message()
        .map_err(|e| invalid(Some(conversation), format!("not a protocol message: {e}")))
}

fn process_commit(
    ctx: &mut Ctx<'_>,
    group: &mut MlsGroup,
    conversation: &str,
    envelope: &Envelope,
    local: u64,
) -> Result<Outcome, Fail> {
    let conv = Some(conversation);
    let group_id = group.group_id().as_slice().to_vec();
    if group.pending_commit().is_some() {
        // Someone else's commit took this epoch: ours lost the race. Drop it and redo
        // the change once this commit is merged.
        let provider = Provider::new(ctx.conn);
        group
            .clear_pending_commit(provider.storage())
            .map_err(E2eError::from)?;
        reset_lost_commit(ctx.conn, &group_id, local + 1, ctx.now_ms)?;
    }
    let chat = is_group_chat(ctx.conn, &group_id)?;
    // A group chat's commit at our epoch that we refuse leaves us behind the server's
    // log for good: the group diverged (see `record_divergence`).
    let refuse = |by: &str, reason: String| {
        if chat {
            Fail::Diverged {
                conversation: conversation.to_string(),
                group_id: group_id.clone(),
                by: by.to_string(),
                reason,
            }
        } else {
            invalid(conv, reason)
        }
    };
    let posted_by = envelope
        .sender
        .as_ref()
        .map(|s| s.handle.clone())
        .unwrap_or_default();
    let message = protocol_message(envelope, conversation)?;
    let provider = Provider::new(ctx.conn);
    let processed = group
        .process_message(&provider, message)
        .map_err(|e| refuse(&posted_by, format!("commit rejected by MLS: {e}")))?;
    let external = matches!(processed.sender(), Sender::NewMemberCommit);
    let committer = parse_credential(processed.credential()).map_err(|r| refuse(&posted_by, r))?;
    let staged = match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => staged,
        ProcessedMessageContent::OwnPrivateMessage => return Ok(done(vec![])),
        _ => return Err(invalid(conv, "a commit header with other content")),
    };
    // Devices added must be in their account's signed device list (devices.rs); a device
    // of ours added or removed elsewhere makes the client re-read our list.
    for add in staged.add_proposals() {
        let addr = parse_credential(add.add_proposal().key_package().leaf_node().credential())
            .map_err(|r| refuse(&committer.handle, r))?;
        // A device its own account adds is authenticated by the committer's signature (and
        // its certificate, checked below); one added by someone else must be in the
        // account's current signed list, so a server cannot get a device of its own in.
        if addr.handle != committer.handle
            && crate::devices::is_listed(ctx.conn, &addr.handle, addr.device_id)? == Some(false)
        {
            return Err(refuse(
                &committer.handle,
                format!(
                    "{} is not in the account's signed device list",
                    addr.credential_string()
                ),
            ));
        }
        if addr.handle == ctx.me.handle && addr.device_id != ctx.me.device_id {
            crate::devices::mark_own_devices_changed(ctx.conn)?;
        }
    }
    for rem in staged.remove_proposals() {
        if let Some(m) = group.member_at(rem.remove_proposal().removed())
            && parse_credential(&m.credential).is_ok_and(|a| a.handle == ctx.me.handle)
        {
            crate::devices::mark_own_devices_changed(ctx.conn)?;
        }
    }
    // Group policy, checked before anything is merged.
    let changes = if chat {
        crate::group::authorize_commit(group, &staged, &committer, external)
            .map_err(|r| refuse(&committer.handle, format!("commit not authorized: {r}")))?
    } else {
        vec![]
    };
    let removed = staged.self_removed();
    group
        .merge_staged_commit(&provider, *staged)
        .map_err(|e| invalid(conv, format!("merging commit: {e}")))?;
    if chat {
        let mut events = apply_group_changes(
            ctx.conn,
            group,
            &group_id,
            conversation.to_string(),
            changes,
            &ctx.me.handle,
            ctx.now_ms,
        )?;
        if removed || !group.is_active() {
            ctx.conn.execute(
                "UPDATE groups SET state = 'inactive' WHERE group_id = ?1",
                params![group_id],
            )?;
            ctx.conn.execute(
                "UPDATE group_chats SET leaving = 0 WHERE group_id = ?1",
                params![group_id],
            )?;
            ctx.conn.execute(
                "DELETE FROM outbox WHERE group_id = ?1 AND kind != 'text'",
                params![group_id],
            )?;
            return Ok(done(events));
        }
        validate_members(ctx, group, conversation, true).map_err(|f| match f {
            Fail::Invalid { reason, .. } => refuse(&committer.handle, reason),
            other => other,
        })?;
        let leaving: i64 = ctx.conn.query_row(
            "SELECT leaving FROM group_chats WHERE group_id = ?1",
            params![group_id],
            |r| r.get(0),
        )?;
        if leaving != 0 {
            // Our leave proposal was not part of this commit: propose again.
            queue_front_once(ctx.conn, &group_id, "gleave", ctx.now_ms)?;
        }
        events.retain(|_| true);
        return Ok(Outcome::Done {
            events,
            touched: Some(group_id),
        });
    }
    if removed || !group.is_active() {
        ctx.conn.execute(
            "UPDATE groups SET state = 'inactive' WHERE group_id = ?1",
            params![group_id],
        )?;
        ctx.conn.execute(
            "DELETE FROM outbox WHERE group_id = ?1 AND kind = 'update'",
            params![group_id],
        )?;
        return Ok(done(vec![]));
    }
    // Authenticate the new membership; on failure the savepoint undoes the merge.
    validate_members(ctx, group, conversation, false)?;
    Ok(Outcome::Done {
        events: vec![],
        touched: Some(group_id),
    })
}

/// Every leaf is a certified device (in a 1:1 chat: of us or of the peer), and our own
/// leaf is this device.
/// Asks for every unknown account among `members` at once (a large group's Welcome or
/// commit names many): with more than one missing, fails with
/// [`E2eError::NeedAccounts`]; a single missing one is reported by the per-leaf check.
fn ask_missing_accounts(
    ctx: &mut Ctx<'_>,
    members: impl Iterator<Item = openmls::group::Member>,
) -> Result<(), Fail> {
    let missing: BTreeSet<String> = members
        .filter_map(
            |m| match check_leaf(ctx.conn, ctx.fresh, &m.credential, &m.signature_key) {
                Err(LeafCheck::NeedAccount(h)) => Some(h),
                _ => None,
            },
        )
        .collect();
    if missing.len() > 1 {
        return Err(Fail::Fatal(E2eError::NeedAccounts(
            missing.into_iter().collect(),
        )));
    }
    Ok(())
}

fn validate_members(
    ctx: &mut Ctx<'_>,
    group: &MlsGroup,
    conversation: &str,
    group_chat: bool,
) -> Result<(), Fail> {
    let conv = Some(conversation);
    ask_missing_accounts(ctx, group.members())?;
    for member in group.members() {
        let addr = check_leaf(
            ctx.conn,
            ctx.fresh,
            &member.credential,
            &member.signature_key,
        )
        .map_err(|e| leaf_fail(conv, e))?;
        if !group_chat && addr.handle != ctx.me.handle && addr.handle != conversation {
            return Err(invalid(
                conv,
                format!("{} is not part of this conversation", addr.handle),
            ));
        }
    }
    let own = group
        .own_leaf_node()
        .ok_or_else(|| invalid(conv, "our own leaf is missing"))?;
    let own_addr = parse_credential(own.credential()).map_err(|r| invalid(conv, r))?;
    if own_addr.handle != ctx.me.handle || own_addr.device_id != ctx.me.device_id {
        return Err(invalid(conv, "our own leaf is not this device"));
    }
    Ok(())
}

fn process_application(
    ctx: &mut Ctx<'_>,
    group: &mut MlsGroup,
    conversation: &str,
    envelope: &Envelope,
) -> Result<Outcome, Fail> {
    let conv = Some(conversation);
    let message = protocol_message(envelope, conversation)?;
    let provider = Provider::new(ctx.conn);
    let processed = group
        .process_message(&provider, message)
        .map_err(|e| invalid(conv, format!("cannot decrypt: {e}")))?;
    let sender = parse_credential(processed.credential()).map_err(|r| invalid(conv, r))?;
    let plaintext = match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => app.into_bytes(),
        ProcessedMessageContent::OwnPrivateMessage => return Ok(done(vec![])),
        _ => return Err(invalid(conv, "an application header with other content")),
    };
    let content = Content::decode(plaintext.as_slice())
        .map_err(|e| invalid(conv, format!("content does not decode: {e}")))?;
    if content.id.len() != hushwire_proto::limits::MESSAGE_ID_BYTES {
        return Err(invalid(conv, "content id is not 16 bytes"));
    }
    // Receipts, reactions, edits, deletes, timer changes; blocked senders (features.rs).
    let content = match crate::features::receive_content(
        ctx.conn,
        ctx.me,
        conversation,
        group,
        &sender,
        content,
        ctx.now_ms,
    )? {
        crate::features::Handled::Done(events) => return Ok(done(events)),
        crate::features::Handled::Invalid(reason) => return Err(invalid(conv, reason)),
        crate::features::Handled::Store(content) => *content,
    };
    let meta = crate::features::StoreMeta::of(&content).map_err(|r| invalid(conv, r))?;
    let mut attachment = None;
    let (text, kind) = match content.body {
        Some(Body::Text(t)) => (t.text, crate::outbox::KIND_TEXT),
        Some(Body::Attachment(a)) => {
            crate::attachments::check_incoming(&a).map_err(|r| invalid(conv, r))?;
            let caption = a.caption.clone();
            attachment = Some(a);
            (caption, crate::attachments::KIND_ATTACHMENT)
        }
        Some(Body::RelayLink(r)) => {
            // Stored only if it is a well-formed link; never logged (it holds the
            // relay's secret). Nothing is added to the routes without the user.
            let link = hushwire_proto::relay_link::RelayLink::parse(&r.link)
                .map_err(|e| invalid(conv, e.to_string()))?;
            (link.to_string(), crate::outbox::KIND_RELAY_LINK)
        }
        // Feature bodies were handled above (features::receive_content).
        Some(_) => return Err(invalid(conv, "unexpected content type")),
        None => return Err(invalid(conv, "content without a body")),
    };
    let outgoing = sender.handle == ctx.me.handle;
    let state = if outgoing {
        MessageState::Sent
    } else {
        MessageState::Received
    };
    let inserted = ctx.conn.execute(
        "INSERT OR IGNORE INTO messages (id, conversation, sender, sender_device, group_id,
             sent_at_ms, received_at_ms, body, outgoing, state, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            content.id.as_ref(),
            conversation,
            sender.handle,
            sender.device_id,
            group.group_id().as_slice(),
            to_sql_u64(content.sent_at_ms)?,
            to_sql_u64(ctx.now_ms)?,
            text,
            outgoing,
            state.to_i64(),
            kind
        ],
    )?;
    if inserted == 0 {
        return Ok(done(vec![])); // duplicate content id from this sender
    }
    // Reply, view once, expiry, delivered receipt, message request (features.rs).
    let mut events = crate::features::after_store(
        ctx.conn,
        ctx.me,
        conversation,
        group,
        &sender.handle,
        &content.id,
        &meta,
        envelope.server_time_ms,
        ctx.now_ms,
    )?;
    if let Some(a) = &attachment {
        let info = crate::attachments::store_incoming(ctx.conn, &sender.handle, &content.id, a)?;
        let stored = crate::attachments::stored_message(ctx.conn, &sender.handle, &content.id)?;
        events.push(Event::Attachment(stored, info));
        return Ok(done(events));
    }
    let event = if kind == crate::outbox::KIND_RELAY_LINK {
        Event::RelayLink
    } else {
        Event::Message
    };
    let _ = (text, outgoing, state);
    let stored: StoredMessage = ctx.conn.query_row(
        &format!(
            "SELECT {} FROM messages WHERE sender = ?1 AND id = ?2",
            crate::features::MESSAGE_COLUMNS
        ),
        params![sender.handle, content.id.as_ref()],
        crate::features::message_from_row,
    )?;
    events.push(event(stored));
    Ok(done(events))
}

fn join_welcome(ctx: &mut Ctx<'_>, envelope: &Envelope) -> Result<Outcome, Fail> {
    let welcome = match MlsMessageIn::tls_deserialize_exact(envelope.payload.as_ref())
        .map_err(|e| invalid(None, format!("malformed Welcome: {e}")))?
        .extract()
    {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => return Err(invalid(None, "not a Welcome")),
    };
    let suite = Suite::from_ciphersuite(welcome.ciphersuite()).ok_or_else(|| {
        invalid(
            None,
            format!("unsupported suite {:?}", welcome.ciphersuite()),
        )
    })?;
    let provider = Provider::new(ctx.conn);
    let staged = StagedWelcome::new_from_welcome(
        &provider,
        group_config(suite).join_config(),
        welcome,
        None,
    )
    .map_err(|e| invalid(None, format!("cannot join: {e}")))?;
    let group_id = staged.group_context().group_id().as_slice().to_vec();
    if let Some(meta) = crate::group::metadata_of(staged.group_context().extensions()) {
        let meta = meta.map_err(|r| invalid(None, r))?;
        return join_group_chat(ctx, staged, group_id, meta, suite);
    }
    let known: i64 = ctx.conn.query_row(
        "SELECT COUNT(*) FROM groups WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    if known > 0 {
        return Err(Fail::Skip);
    }

    // Authenticate every member before accepting; exactly one other account.
    let mut others: BTreeSet<String> = BTreeSet::new();
    for member in staged.members() {
        let addr: DeviceAddr = check_leaf(
            ctx.conn,
            ctx.fresh,
            &member.credential,
            &member.signature_key,
        )
        .map_err(|e| leaf_fail(None, e))?;
        if addr.handle != ctx.me.handle {
            others.insert(addr.handle);
        }
    }
    let peer = match (others.len(), others.into_iter().next()) {
        (1, Some(peer)) => peer,
        (n, _) => {
            return Err(invalid(
                None,
                format!("a 1:1 group must have exactly one other account, found {n}"),
            ));
        }
    };
    let conv = Some(peer.as_str());
    let from_own_device = staged
        .welcome_sender()
        .ok()
        .and_then(|l| parse_credential(l.credential()).ok())
        .is_some_and(|a| a.handle == ctx.me.handle);
    let own = staged
        .own_leaf_node()
        .ok_or_else(|| invalid(conv, "our own leaf is missing"))?;
    let own_addr = parse_credential(own.credential()).map_err(|r| invalid(conv, r))?;
    if own_addr.handle != ctx.me.handle
        || own_addr.device_id != ctx.me.device_id
        || own.signature_key().as_slice() != ctx.me.device_key.as_slice()
    {
        return Err(invalid(
            conv,
            "the Welcome's leaf for us is not this device",
        ));
    }
    let group = staged
        .into_group(&provider)
        .map_err(|e| invalid(conv, format!("cannot join: {e}")))?;

    let had_group: i64 = ctx.conn.query_row(
        "SELECT COUNT(*) FROM groups WHERE conversation = ?1 AND state = 'active'",
        params![peer],
        |r| r.get(0),
    )?;
    let new_conversation = ctx.conn.execute(
        "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
        params![peer, suite.code(), to_sql_u64(ctx.now_ms)?],
    )?;
    if new_conversation > 0 && !from_own_device {
        // Someone we never wrote to started it: a message request (features.rs). A
        // Welcome from another device of ours (linking) is no request.
        crate::features::mark_request(ctx.conn, &peer)?;
    }
    ctx.conn.execute(
        "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
         VALUES (?1, ?2, ?3, 'active', ?4)",
        params![group_id, peer, suite.code(), to_sql_u64(ctx.now_ms)?],
    )?;
    tracing::debug!(
        epoch = group.epoch().as_u64(),
        "joined a group from a Welcome"
    );
    let events = if had_group == 0 {
        vec![Event::ConversationStarted {
            conversation: peer.clone(),
        }]
    } else {
        vec![]
    };
    Ok(Outcome::Done {
        events,
        touched: Some(group_id),
    })
}

/// Whether `group_id` is a group chat this device refused a commit of (see
/// [`record_divergence`]).
pub(crate) fn is_diverged(conn: &Connection, group_id: &[u8]) -> Result<bool, E2eError> {
    let by: Option<Option<String>> = conn
        .query_row(
            "SELECT diverged_by FROM group_chats WHERE group_id = ?1",
            params![group_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(by.flatten().is_some())
}

/// Whether `group_id` is a group chat (not a 1:1 conversation's group).
pub(crate) fn is_group_chat(conn: &Connection, group_id: &[u8]) -> Result<bool, E2eError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM group_chats WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Queues a group item in front of the outbox unless one of that kind is queued.
fn queue_front_once(
    conn: &Connection,
    group_id: &[u8],
    kind: &str,
    now_ms: u64,
) -> Result<(), E2eError> {
    let queued: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE group_id = ?1 AND kind = ?2",
        params![group_id, kind],
        |r| r.get(0),
    )?;
    if queued > 0 {
        return Ok(());
    }
    let conversation: String = conn.query_row(
        "SELECT conversation FROM group_chats WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    let id = crate::profile::new_message_id(now_ms);
    conn.execute(
        "INSERT INTO outbox (ord, kind, conversation, item_id, message_id, group_id, params)
         VALUES ((SELECT COALESCE(MIN(ord), 1) - 1 FROM outbox), ?1, ?2, ?3, ?3, ?4, '{}')",
        params![kind, conversation, &id[..], group_id],
    )?;
    Ok(())
}

/// Records a commit's membership/metadata changes in the timeline (renaming the
/// conversation first if the title changed) and returns them as events.
pub(crate) fn apply_group_changes(
    conn: &Connection,
    _group: &MlsGroup,
    group_id: &[u8],
    mut conversation: String,
    changes: Vec<crate::group::Change>,
    my_handle: &str,
    now_ms: u64,
) -> Result<Vec<Event>, E2eError> {
    if let Some(title) = changes.iter().find_map(|(k, _, _, t)| {
        (*k == GroupEventKind::Renamed)
            .then_some(t.clone())
            .flatten()
    }) {
        conversation = crate::group::rename_conversation(conn, group_id, &title)?;
    }
    let mut events = Vec::with_capacity(changes.len());
    for (kind, by, handles, title) in changes {
        let outgoing = by == my_handle;
        let ev = crate::group::record_event(
            conn,
            &conversation,
            group_id,
            kind,
            &by,
            handles,
            title,
            outgoing,
            now_ms,
        )?;
        events.push(Event::Group(ev));
    }
    Ok(events)
}

/// A proposal in a group chat: only a member's own removal (leaving) is accepted. It is
/// stored for the next commit, and a commit of it is queued in front of the outbox.
fn process_proposal(
    ctx: &mut Ctx<'_>,
    group: &mut MlsGroup,
    conversation: &str,
    envelope: &Envelope,
) -> Result<Outcome, Fail> {
    let conv = Some(conversation);
    let message = protocol_message(envelope, conversation)?;
    let provider = Provider::new(ctx.conn);
    let processed = group
        .process_message(&provider, message)
        .map_err(|e| invalid(conv, format!("proposal rejected by MLS: {e}")))?;
    let sender_leaf = match processed.sender() {
        Sender::Member(i) => *i,
        _ => return Err(invalid(conv, "a proposal from outside the group")),
    };
    let queued = match processed.into_content() {
        ProcessedMessageContent::ProposalMessage(q) => q,
        _ => return Err(invalid(conv, "a proposal header with other content")),
    };
    match queued.proposal() {
        Proposal::Remove(r) if r.removed() == sender_leaf => {}
        _ => {
            return Err(invalid(conv, "only a member's own removal may be proposed"));
        }
    }
    group
        .store_pending_proposal(provider.storage(), *queued)
        .map_err(E2eError::from)?;
    let group_id = group.group_id().as_slice().to_vec();
    let leaving: i64 = ctx.conn.query_row(
        "SELECT leaving FROM group_chats WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    if leaving == 0 {
        queue_front_once(ctx.conn, &group_id, "gcommit", ctx.now_ms)?;
    }
    Ok(done(vec![]))
}

/// Joins a group chat from a Welcome: the sender must be allowed to add members, every
/// member must be a certified device, and our leaf must be this device.
fn join_group_chat(
    ctx: &mut Ctx<'_>,
    staged: StagedWelcome,
    group_id: Vec<u8>,
    meta: hushwire_proto::wire::GroupMetadata,
    suite: Suite,
) -> Result<Outcome, Fail> {
    let provider = Provider::new(ctx.conn);
    // A chat restored from a backup has its row but no group yet (state NULL).
    let existing: Option<(String, Option<String>)> = ctx
        .conn
        .query_row(
            "SELECT c.conversation, g.state FROM group_chats c
             LEFT JOIN groups g ON g.group_id = c.group_id WHERE c.group_id = ?1",
            params![group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((_, Some(state))) = &existing
        && state != "inactive"
    {
        return Err(Fail::Skip);
    }
    ask_missing_accounts(ctx, staged.members())?;
    let mut members = std::collections::BTreeMap::new();
    for member in staged.members() {
        let addr: DeviceAddr = check_leaf(
            ctx.conn,
            ctx.fresh,
            &member.credential,
            &member.signature_key,
        )
        .map_err(|e| leaf_fail(None, e))?;
        members
            .entry(addr.handle)
            .or_insert_with(Vec::new)
            .push((member.index, addr.device_id));
    }
    let sender_leaf = staged
        .welcome_sender()
        .map_err(|e| invalid(None, format!("Welcome sender: {e}")))?;
    let sender = parse_credential(sender_leaf.credential()).map_err(|r| invalid(None, r))?;
    if sender.handle != ctx.me.handle
        && !crate::group::may_change_membership(&meta, &members, &sender.handle)
    {
        return Err(invalid(
            None,
            format!(
                "Welcome not authorized: {} may not add members (not an admin)",
                sender.handle
            ),
        ));
    }
    let own = staged
        .own_leaf_node()
        .ok_or_else(|| invalid(None, "our own leaf is missing"))?;
    let own_addr = parse_credential(own.credential()).map_err(|r| invalid(None, r))?;
    if own_addr.handle != ctx.me.handle
        || own_addr.device_id != ctx.me.device_id
        || own.signature_key().as_slice() != ctx.me.device_key.as_slice()
    {
        return Err(invalid(
            None,
            "the Welcome's leaf for us is not this device",
        ));
    }
    // A reset (GroupMetadata.replaces) of a group chat of ours is accepted only from
    // someone who may change that group's membership in our own state of it.
    let parent = meta.replaces.to_vec();
    let reset_of = if parent.is_empty() {
        None
    } else {
        let known: Option<String> = ctx
            .conn
            .query_row(
                "SELECT conversation FROM groups WHERE group_id = ?1",
                params![parent],
                |r| r.get(0),
            )
            .optional()?;
        match (known, load_group(ctx.conn, &parent)) {
            (Some(_), Ok(old)) => {
                let allowed = match crate::group::metadata_of(old.extensions()) {
                    Some(Ok(old_meta)) => crate::group::may_change_membership(
                        &old_meta,
                        &crate::group::member_map(&old),
                        &sender.handle,
                    ),
                    _ => false,
                };
                if !allowed {
                    return Err(invalid(
                        None,
                        format!(
                            "reset not authorized: {} may not change the group's membership \
                             (not an admin)",
                            sender.handle
                        ),
                    ));
                }
                Some((parent, crate::group::member_map(&old)))
            }
            // Not a group of ours: an ordinary new group chat.
            _ => None,
        }
    };
    if existing.is_some()
        && let Ok(mut old) = load_group(ctx.conn, &group_id)
    {
        old.delete(provider.storage()).map_err(E2eError::from)?;
    }
    let group = staged
        .into_group(&provider)
        .map_err(|e| invalid(None, format!("cannot join: {e}")))?;
    if let Some((parent, old_members)) = reset_of {
        let Some(conversation) =
            crate::group_ops::adopt_reset(ctx.conn, &parent, &group_id, suite, ctx.now_ms)?
        else {
            return Err(invalid(
                None,
                "a reset superseded by another reset of the same group",
            ));
        };
        crate::group_ops::store_recovery_key(ctx.conn, &group_id, &meta)?;
        let now_members = crate::group::member_map(&group);
        let left_out = old_members
            .into_keys()
            .filter(|h| !now_members.contains_key(h))
            .collect();
        let ev = crate::group::record_event(
            ctx.conn,
            &conversation,
            &group_id,
            GroupEventKind::Reset,
            &sender.handle,
            left_out,
            None,
            false,
            ctx.now_ms,
        )?;
        tracing::debug!(
            epoch = group.epoch().as_u64(),
            "moved a group chat to its reset"
        );
        return Ok(Outcome::Done {
            events: vec![Event::Group(ev)],
            touched: Some(group_id),
        });
    }
    let conversation = match existing {
        Some((name, _)) => {
            ctx.conn.execute(
                "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
                 VALUES (?1, ?2, ?3, 'active', ?4)
                 ON CONFLICT (group_id) DO UPDATE SET state = 'active'",
                params![group_id, name, suite.code(), to_sql_u64(ctx.now_ms)?],
            )?;
            ctx.conn.execute(
                "UPDATE group_chats SET leaving = 0 WHERE group_id = ?1",
                params![group_id],
            )?;
            crate::group::rename_conversation(ctx.conn, &group_id, &meta.title)
                .map_err(Fail::Fatal)
                .unwrap_or(name)
        }
        None => {
            let name = crate::group::unique_name(ctx.conn, &meta.title, None)?;
            ctx.conn.execute(
                "INSERT INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
                params![name, suite.code(), to_sql_u64(ctx.now_ms)?],
            )?;
            ctx.conn.execute(
                "INSERT INTO group_chats (group_id, conversation) VALUES (?1, ?2)",
                params![group_id, name],
            )?;
            ctx.conn.execute(
                "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
                 VALUES (?1, ?2, ?3, 'active', ?4)",
                params![group_id, name, suite.code(), to_sql_u64(ctx.now_ms)?],
            )?;
            name
        }
    };
    crate::group_ops::store_recovery_key(ctx.conn, &group_id, &meta)?;
    tracing::debug!(epoch = group.epoch().as_u64(), "joined a group chat");
    let ev = crate::group::record_event(
        ctx.conn,
        &conversation,
        &group_id,
        GroupEventKind::Added,
        &sender.handle,
        vec![ctx.me.handle.clone()],
        None,
        false,
        ctx.now_ms,
    )?;
    Ok(Outcome::Done {
        events: vec![
            Event::ConversationStarted {
                conversation: conversation.clone(),
            },
            Event::Group(ev),
        ],
        touched: Some(group_id),
    })
}
