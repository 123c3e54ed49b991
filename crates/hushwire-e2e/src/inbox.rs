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
    MlsGroup, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider, ProcessedMessageContent,
    StagedWelcome, tls_codec::Deserialize as _,
};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::outbox::{group_config, load_group, reset_lost_commit};
use crate::profile::{DeviceAddr, KV_LAST_SEQ, LeafCheck, check_leaf, parse_credential, uuid_text};
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
        Err(Fail::Fatal(e)) => Err(e),
        Err(Fail::Skip | Fail::Invalid { .. }) => Ok(vec![]),
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
                ContentType::Proposal => {
                    // Hushwire clients never send standalone proposals; storing one would
                    // let anyone steer our next commit.
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
    let message = protocol_message(envelope, conversation)?;
    let provider = Provider::new(ctx.conn);
    let processed = group
        .process_message(&provider, message)
        .map_err(|e| invalid(conv, format!("commit rejected by MLS: {e}")))?;
    let staged = match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => staged,
        ProcessedMessageContent::OwnPrivateMessage => return Ok(done(vec![])),
        _ => return Err(invalid(conv, "a commit header with other content")),
    };
    let removed = staged.self_removed();
    group
        .merge_staged_commit(&provider, *staged)
        .map_err(|e| invalid(conv, format!("merging commit: {e}")))?;
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
    validate_members(ctx, group, conversation)?;
    Ok(Outcome::Done {
        events: vec![],
        touched: Some(group_id),
    })
}

/// Every leaf is a certified device of us or of the conversation's peer, and our own
/// leaf is this device.
fn validate_members(ctx: &mut Ctx<'_>, group: &MlsGroup, conversation: &str) -> Result<(), Fail> {
    let conv = Some(conversation);
    for member in group.members() {
        let addr = check_leaf(
            ctx.conn,
            ctx.fresh,
            &member.credential,
            &member.signature_key,
        )
        .map_err(|e| leaf_fail(conv, e))?;
        if addr.handle != ctx.me.handle && addr.handle != conversation {
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
    let text = match content.body {
        Some(Body::Text(t)) => t.text,
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
             sent_at_ms, received_at_ms, body, outgoing, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
            state.to_i64()
        ],
    )?;
    if inserted == 0 {
        return Ok(done(vec![])); // duplicate content id from this sender
    }
    Ok(done(vec![Event::Message(StoredMessage {
        id: uuid_text(&content.id),
        conversation: conversation.to_string(),
        from: sender.handle,
        sent_at_ms: content.sent_at_ms,
        received_at_ms: Some(ctx.now_ms),
        text,
        outgoing,
        state,
    })]))
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
    ctx.conn.execute(
        "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
        params![peer, suite.code(), to_sql_u64(ctx.now_ms)?],
    )?;
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
