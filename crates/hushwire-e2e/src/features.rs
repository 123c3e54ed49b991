//! Conversation features: receipts, reactions, replies, edits, deletes, disappearing and
//! view-once messages, typing and presence, message requests, blocking and settings.
//!
//! # Model
//! - Every feature is a [`Content`] body inside an MLS application message, padded like a
//!   text, so the server cannot tell a reaction from a text. Receipts, reactions, edits,
//!   deletes and timer changes go through the outbox (kind `content`, the encoded
//!   `Content` in `outbox.content`) and are stored and ordered by the server like texts.
//!   Typing and presence are *ephemeral*: built here ([`Profile::ephemeral_typing`],
//!   [`Profile::ephemeral_presence`]), relayed by the server to connected devices only
//!   and processed by [`Profile::receive_ephemeral`]; anything else arriving that way is
//!   refused.
//! - References (receipts, reactions, edits, deletes, replies) name the target's 16-byte
//!   content id; the receiver looks it up in the conversation the reference came in.
//! - **Authorization**: an edit or delete must come from the target's author (the MLS
//!   sender's handle equals the stored sender); a forged one is recorded as a failure
//!   (no plaintext) and changes nothing. A delete for a message not (yet) here leaves a
//!   tombstone for that sender and id, so a late copy is dropped. Timer changes: any
//!   member of a 1:1 chat; only (effective) admins of a group chat, like WhatsApp's
//!   default "only admins can edit group settings".
//! - **Receipts**: a *delivered* receipt is queued when a message from someone else is
//!   stored (batched: one per conversation until the outbox sends it; none in group chats
//!   of more than [`MAX_DELIVERED_RECEIPT_DEVICES`] devices), a *read* receipt only by
//!   [`Profile::mark_read`] and never when read receipts are off (then read receipts of
//!   others are not recorded either, like WhatsApp), *viewed* when a view-once message is
//!   opened (if read receipts are on). Only the author records them, per member.
//! - **Disappearing messages**: the conversation's timer rides in every message
//!   (`Content.expire_timer_ms`); each device deletes the row at `server time + timer`
//!   (the sender: its send time + timer) by [`Profile::sweep_expired`], which really
//!   deletes (`secure_delete` zeroes the pages, then the WAL is truncated). The server
//!   drops queued copies at the same time (`Submit.expire_after_ms`).
//! - **View once**: the body is hidden everywhere (history, events) and shown once by
//!   [`Profile::view_once`], which erases it (an attachment's key and downloaded file
//!   too). The sender's copy is erased once the server accepted it.
//! - **Message requests**: a 1:1 conversation someone else started is a request until
//!   the user accepts it ([`Profile::accept`]) or replies. Until then no receipt,
//!   typing or presence goes to them. Sharing a group chat does not make a contact.
//! - **Blocking**: messages and signals from a blocked account are dropped on arrival,
//!   and the server is told (it then queues none of them for this account).
//! - **Presence**: shared with everyone (1:1 contacts and group chats), contacts (1:1
//!   conversations that are not requests) or nobody. A device that hides its presence
//!   from someone cannot ask for theirs.
//! - **Ephemeral budget**: each ephemeral message advances the sender's MLS ratchet, and
//!   a receiver that never sees it must skip over it later (OpenMLS allows 1000). A
//!   device sends at most [`EPHEMERAL_BUDGET`] ephemeral messages per group epoch since
//!   its last stored message; then it queues a self-update (a new epoch) instead.

use std::collections::HashMap;

use hushwire_proto::limits::{
    MAX_EPHEMERAL_BYTES, MAX_EXPIRE_TIMER_MS, MAX_REACTION_BYTES, MAX_RECEIPT_IDS,
    MESSAGE_ID_BYTES, MIN_EXPIRE_TIMER_MS,
};
use hushwire_proto::mls::{ContentType, MlsHeader, parse_header};
use hushwire_proto::wire::{self, Content, content::Body};
use openmls::prelude::{
    MlsGroup, MlsMessageIn, ProcessedMessageContent, tls_codec::Deserialize as _,
};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::outbox::{KIND_TEXT, MAX_TEXT_BYTES, load_group, send_group};
use crate::profile::{DeviceAddr, new_message_id, parse_credential, uuid_text};
use crate::store::{Provider, from_sql_u64, kv_get, kv_set, to_sql_u64};
use crate::{E2eError, Event, Identity, MessageState, Profile, StoredMessage};

/// Ephemeral messages a device sends in one group epoch after its last stored message,
/// at most (see the module docs).
pub const EPHEMERAL_BUDGET: i64 = 256;

/// Group chats with more member devices than this get no delivered receipts (each one
/// fans out to every member); read receipts still go.
pub const MAX_DELIVERED_RECEIPT_DEVICES: usize = 256;

/// Tombstones of deletes that arrived before their message are kept this long.
const TOMBSTONE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

const KV_READ_RECEIPTS: &str = "read_receipts";
const KV_PRESENCE: &str = "presence_share";

/// The kinds a reaction, delete or reply may target.
const TARGET_KINDS: &str = "(0, 2, 3)";

/// A receipt's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReceiptStatus {
    /// Stored on one of the member's devices.
    Delivered,
    /// The member read it.
    Read,
    /// The member opened a view-once message.
    Viewed,
}

impl ReceiptStatus {
    /// `delivered`, `read`, `viewed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Viewed => "viewed",
        }
    }
    fn code(self) -> i64 {
        match self {
            Self::Delivered => 1,
            Self::Read => 2,
            Self::Viewed => 3,
        }
    }
    fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(Self::Delivered),
            2 => Some(Self::Read),
            3 => Some(Self::Viewed),
            _ => None,
        }
    }
    fn from_wire(s: i32) -> Option<Self> {
        match wire::ReceiptStatus::try_from(s).ok()? {
            wire::ReceiptStatus::Delivered => Some(Self::Delivered),
            wire::ReceiptStatus::Read => Some(Self::Read),
            wire::ReceiptStatus::Viewed => Some(Self::Viewed),
            wire::ReceiptStatus::Unspecified => None,
        }
    }
    fn to_wire(self) -> wire::ReceiptStatus {
        match self {
            Self::Delivered => wire::ReceiptStatus::Delivered,
            Self::Read => wire::ReceiptStatus::Read,
            Self::Viewed => wire::ReceiptStatus::Viewed,
        }
    }
}

/// Who sees this device's online status and last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresenceShare {
    /// 1:1 contacts and the members of this account's group chats.
    Everyone,
    /// 1:1 conversations that are not message requests (the default).
    #[default]
    Contacts,
    /// Nobody (and then nobody's is asked for).
    Nobody,
}

impl PresenceShare {
    /// `everyone`, `contacts`, `nobody`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Contacts => "contacts",
            Self::Nobody => "nobody",
        }
    }
    fn code(self) -> i64 {
        match self {
            Self::Everyone => 0,
            Self::Contacts => 1,
            Self::Nobody => 2,
        }
    }
    fn from_code(c: i64) -> Self {
        match c {
            0 => Self::Everyone,
            2 => Self::Nobody,
            _ => Self::Contacts,
        }
    }
}

/// One member's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The member's handle.
    pub from: String,
    /// The emoji.
    pub emoji: String,
    /// When this device learned of it.
    pub at_ms: u64,
}

/// A member's receipt for one of this account's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The member's handle.
    pub member: String,
    /// The best status seen.
    pub status: ReceiptStatus,
    /// When this device learned of it.
    pub at_ms: u64,
}

/// What a contact last shared of their presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceInfo {
    /// The contact's handle.
    pub handle: String,
    /// Online when last heard of.
    pub online: bool,
    /// Their last time online, when they said they went offline.
    pub last_seen_ms: Option<u64>,
    /// When this device heard it.
    pub updated_at_ms: u64,
}

/// An unanswered message request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    /// The requester (also the conversation's name).
    pub from: String,
    /// Messages received from them.
    pub messages: u64,
    /// The first one's arrival.
    pub first_at_ms: u64,
    /// The latest one's text (empty for a view-once message).
    pub last_text: String,
}

/// What [`Profile::delete_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteScope {
    /// An own message: deleted for everyone (a delete is queued, the server's queued
    /// copies are retracted).
    Everyone,
    /// An own message that had not left this device: it is simply gone.
    Unsent,
    /// Someone else's message: deleted on this device only.
    ForMe,
}

/// An ephemeral signal to send: `ClientFrame.ephemeral`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralOut {
    /// The group it goes to.
    pub group_id: Vec<u8>,
    /// The MLS application message.
    pub mls_message: Vec<u8>,
}

/// What [`Profile::receive_ephemeral`] found.
#[derive(Debug, Default)]
pub struct EphemeralReceived {
    /// Typing or presence events.
    pub events: Vec<Event>,
    /// The sender asked for our presence and may see it: answer in this conversation
    /// ([`Profile::ephemeral_presence`]).
    pub reply_presence_in: Option<String>,
}

/// A request to the server that is not a message (`ClientFrame.block`, `.retract`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRequest {
    /// Block (or unblock) an account.
    Block {
        /// The account.
        handle: String,
        /// Block (true) or unblock.
        blocked: bool,
    },
    /// Retract an own message's queued copies.
    Retract {
        /// Its group.
        group_id: Vec<u8>,
        /// Its message id.
        message_id: Vec<u8>,
    },
    /// Delete an own attachment's blob (`DELETE /v1/blobs/{id}`).
    DeleteBlob {
        /// The blob id.
        blob_id: Vec<u8>,
    },
}

/// Parses a printed message id (the hyphenated UUID).
pub fn parse_message_id(id: &str) -> Result<[u8; 16], E2eError> {
    uuid::Uuid::parse_str(id)
        .map(|u| *u.as_bytes())
        .map_err(|_| E2eError::Protocol(format!("not a message id: {id:?}")))
}

/// Checks a disappearing-messages timer: 0 (off) or 5 s ..= 90 days.
pub fn validate_timer(timer_ms: u64) -> Result<(), E2eError> {
    if timer_ms == 0 || (MIN_EXPIRE_TIMER_MS..=MAX_EXPIRE_TIMER_MS).contains(&timer_ms) {
        Ok(())
    } else {
        Err(E2eError::Protocol(format!(
            "a timer is off or between {} s and {} days",
            MIN_EXPIRE_TIMER_MS / 1000,
            MAX_EXPIRE_TIMER_MS / 86_400_000
        )))
    }
}

/// Checks a reaction: one emoji (or a short sequence), no control characters. Empty
/// removes a reaction.
pub fn validate_reaction(emoji: &str) -> Result<(), String> {
    if emoji.len() > MAX_REACTION_BYTES {
        return Err(format!("a reaction is at most {MAX_REACTION_BYTES} bytes"));
    }
    if emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a reaction has no spaces or control characters".into());
    }
    Ok(())
}

// ------------------------------------------------------------------ stored messages

/// Columns [`message_from_row`] reads, in order.
pub(crate) const MESSAGE_COLUMNS: &str = "id, conversation, sender, sent_at_ms, received_at_ms, \
     body, outgoing, state, reply_to, view_once, expires_at_ms, edited_at_ms";

/// A `messages` row selected with [`MESSAGE_COLUMNS`]. A view-once message's body is
/// never shown here.
pub(crate) fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let id: Vec<u8> = r.get(0)?;
    let received: Option<i64> = r.get(4)?;
    let reply_to: Option<Vec<u8>> = r.get(8)?;
    let view_once: i64 = r.get(9)?;
    let expires: Option<i64> = r.get(10)?;
    let edited: Option<i64> = r.get(11)?;
    Ok(StoredMessage {
        id: uuid_text(&id),
        conversation: r.get(1)?,
        from: r.get(2)?,
        sent_at_ms: from_sql_u64(r.get(3)?),
        received_at_ms: received.map(from_sql_u64),
        text: if view_once != 0 {
            String::new()
        } else {
            r.get(5)?
        },
        outgoing: r.get(6)?,
        state: MessageState::from_i64(r.get(7)?),
        reply_to: reply_to.as_deref().map(uuid_text),
        view_once: view_once != 0,
        viewed: view_once == 2,
        expires_at_ms: expires.map(from_sql_u64),
        edited_at_ms: edited.map(from_sql_u64),
    })
}

/// A message found by id.
struct Target {
    conversation: String,
    sender: String,
    kind: i64,
    group_id: Option<Vec<u8>>,
    view_once: i64,
    outgoing: bool,
}

fn targets(
    conn: &Connection,
    id: &[u8],
    conversation: Option<&str>,
) -> Result<Vec<Target>, E2eError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT conversation, sender, kind, group_id, view_once, outgoing FROM messages
         WHERE id = ?1 AND kind IN {TARGET_KINDS} AND (?2 IS NULL OR conversation = ?2)
         ORDER BY n"
    ))?;
    let rows = stmt.query_map(params![id, conversation], |r| {
        Ok(Target {
            conversation: r.get(0)?,
            sender: r.get(1)?,
            kind: r.get(2)?,
            group_id: r.get(3)?,
            view_once: r.get(4)?,
            outgoing: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The one message with printed id `id` on this device.
fn unique_target(conn: &Connection, id: &str) -> Result<([u8; 16], Target), E2eError> {
    let raw = parse_message_id(id)?;
    let mut found = targets(conn, &raw, None)?;
    match found.len() {
        0 => Err(E2eError::Protocol(format!("no message {id} here"))),
        1 => Ok((raw, found.remove(0))),
        n => Err(E2eError::Protocol(format!(
            "{n} messages have the id {id} (different senders)"
        ))),
    }
}

/// Deletes a message row and what hangs off it (reactions, receipts, attachment: the
/// downloaded file of a received one). Returns the blob id of an own attachment.
fn delete_row(
    conn: &Connection,
    sender: &str,
    id: &[u8],
    own: bool,
) -> Result<Option<Vec<u8>>, E2eError> {
    conn.execute(
        "DELETE FROM reactions WHERE message_sender = ?1 AND message_id = ?2",
        params![sender, id],
    )?;
    if own {
        conn.execute("DELETE FROM receipts WHERE message_id = ?1", params![id])?;
    }
    let blob = erase_attachment(conn, sender, id, own)?;
    conn.execute(
        "DELETE FROM messages WHERE sender = ?1 AND id = ?2",
        params![sender, id],
    )?;
    Ok(blob)
}

/// Drops the attachment row of a message (key included) and deletes the downloaded file
/// of a received one (never the source file of a sent one). Returns the blob id of an
/// own attachment, which the client deletes from the server.
fn erase_attachment(
    conn: &Connection,
    sender: &str,
    id: &[u8],
    own: bool,
) -> Result<Option<Vec<u8>>, E2eError> {
    let row: Option<(Vec<u8>, Option<String>)> = conn
        .query_row(
            "SELECT attachment, path FROM attachments WHERE sender = ?1 AND id = ?2",
            params![sender, id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((bytes, path)) = row else {
        return Ok(None);
    };
    if !own
        && let Some(path) = path
        && let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "could not delete a downloaded attachment");
    }
    conn.execute(
        "DELETE FROM attachments WHERE sender = ?1 AND id = ?2",
        params![sender, id],
    )?;
    if !own {
        return Ok(None);
    }
    Ok(wire::Attachment::decode(bytes.as_slice())
        .ok()
        .map(|a| a.blob_id.to_vec())
        .filter(|b| !b.is_empty()))
}

fn queue_server_request(conn: &Connection, req: &ServerRequest) -> Result<(), E2eError> {
    match req {
        ServerRequest::Block { handle, blocked } => conn.execute(
            "INSERT INTO server_requests (kind, handle, blocked) VALUES ('block', ?1, ?2)",
            params![handle, blocked],
        )?,
        ServerRequest::Retract {
            group_id,
            message_id,
        } => conn.execute(
            "INSERT INTO server_requests (kind, group_id, message_id) VALUES ('retract', ?1, ?2)",
            params![group_id, message_id],
        )?,
        ServerRequest::DeleteBlob { blob_id } => conn.execute(
            "INSERT INTO server_requests (kind, message_id) VALUES ('blob', ?1)",
            params![blob_id],
        )?,
    };
    Ok(())
}

/// Truncates the WAL so deleted pages leave no old copy on disk (best effort: it fails
/// harmlessly while another connection reads).
fn wipe_wal(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "WAL truncation after a deletion failed");
    }
}

// ------------------------------------------------------------------ conversations

pub(crate) fn conversation_timer(conn: &Connection, conversation: &str) -> Result<u64, E2eError> {
    let t: Option<i64> = conn
        .query_row(
            "SELECT expire_timer_ms FROM conversations WHERE peer = ?1",
            params![conversation],
            |r| r.get(0),
        )
        .optional()?;
    Ok(t.map(from_sql_u64).unwrap_or(0))
}

fn is_request(conn: &Connection, conversation: &str) -> Result<bool, E2eError> {
    let r: Option<i64> = conn
        .query_row(
            "SELECT request FROM conversations WHERE peer = ?1",
            params![conversation],
            |r| r.get(0),
        )
        .optional()?;
    Ok(r == Some(1))
}

fn is_blocked(conn: &Connection, handle: &str) -> Result<bool, E2eError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM blocked WHERE handle = ?1",
        params![handle],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn read_receipts_on(conn: &Connection) -> Result<bool, E2eError> {
    Ok(kv_get(conn, KV_READ_RECEIPTS)?.unwrap_or(1) != 0)
}

fn presence_share(conn: &Connection) -> Result<PresenceShare, E2eError> {
    Ok(PresenceShare::from_code(
        kv_get(conn, KV_PRESENCE)?.unwrap_or(1),
    ))
}

/// Whether this device shares its presence with `handle`, asked in `conversation`.
fn shares_presence_with(
    conn: &Connection,
    conversation: &str,
    handle: &str,
) -> Result<bool, E2eError> {
    if is_blocked(conn, handle)? {
        return Ok(false);
    }
    let share = presence_share(conn)?;
    if crate::group::is_group_name(conversation) {
        return Ok(share == PresenceShare::Everyone);
    }
    Ok(share != PresenceShare::Nobody && conversation == handle && !is_request(conn, handle)?)
}

/// A 1:1 conversation just created by someone else's Welcome becomes a request.
pub(crate) fn mark_request(conn: &Connection, peer: &str) -> Result<(), E2eError> {
    conn.execute(
        "UPDATE conversations SET request = 1 WHERE peer = ?1",
        params![peer],
    )?;
    Ok(())
}

/// The user answers a conversation (sends in it): a request becomes a contact, and the
/// messages it held get their delivered receipts.
pub(crate) fn engage(conn: &Connection, conversation: &str, now_ms: u64) -> Result<(), E2eError> {
    if !is_request(conn, conversation)? {
        return Ok(());
    }
    conn.execute(
        "UPDATE conversations SET request = 0 WHERE peer = ?1",
        params![conversation],
    )?;
    let ids: Vec<Vec<u8>> = {
        let mut stmt = conn.prepare(&format!(
            "SELECT id FROM messages WHERE conversation = ?1 AND outgoing = 0
             AND kind IN {TARGET_KINDS} ORDER BY n"
        ))?;
        let rows = stmt.query_map(params![conversation], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for chunk in ids.chunks(MAX_RECEIPT_IDS) {
        queue_receipt(conn, conversation, ReceiptStatus::Delivered, chunk, now_ms)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ outbox

/// Queues a `content` outbox item carrying `body` for `conversation`. A conversation
/// with a timer sends it as a disappearing message too.
fn queue_control(
    conn: &Connection,
    conversation: &str,
    body: Body,
    params_tag: Option<&str>,
    now_ms: u64,
) -> Result<[u8; 16], E2eError> {
    let id = new_message_id(now_ms);
    let content = Content {
        id: id.to_vec().into(),
        sent_at_ms: now_ms,
        body: Some(body),
        padding: Default::default(),
        expire_timer_ms: conversation_timer(conn, conversation)?,
        view_once: false,
    };
    conn.execute(
        "INSERT INTO outbox (ord, kind, conversation, item_id, message_id, params, content)
         VALUES ((SELECT COALESCE(MAX(ord), 0) + 1 FROM outbox), 'content', ?1, ?2, ?2, ?3, ?4)",
        params![conversation, &id[..], params_tag, content.encode_to_vec()],
    )?;
    Ok(id)
}

/// Adds `ids` to the conversation's receipt of `status` still waiting in the outbox, or
/// queues a new one (at most [`MAX_RECEIPT_IDS`] ids each).
fn queue_receipt(
    conn: &Connection,
    conversation: &str,
    status: ReceiptStatus,
    ids: &[Vec<u8>],
    now_ms: u64,
) -> Result<(), E2eError> {
    if ids.is_empty() {
        return Ok(());
    }
    let tag = format!("receipt:{}", status.as_str());
    let open: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT ord, content FROM outbox WHERE kind = 'content' AND conversation = ?1
             AND params = ?2 AND submit IS NULL ORDER BY ord DESC LIMIT 1",
            params![conversation, tag],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let mut rest = ids;
    if let Some((ord, bytes)) = open {
        let mut content = Content::decode(bytes.as_slice())?;
        if let Some(Body::Receipt(r)) = &mut content.body {
            let room = MAX_RECEIPT_IDS.saturating_sub(r.message_ids.len());
            let take = room.min(rest.len());
            r.message_ids
                .extend(rest[..take].iter().map(|i| i.clone().into()));
            rest = &rest[take..];
            conn.execute(
                "UPDATE outbox SET content = ?1 WHERE ord = ?2",
                params![content.encode_to_vec(), ord],
            )?;
        }
    }
    for chunk in rest.chunks(MAX_RECEIPT_IDS) {
        let body = Body::Receipt(wire::Receipt {
            status: status.to_wire() as i32,
            message_ids: chunk.iter().map(|i| i.clone().into()).collect(),
        });
        queue_control(conn, conversation, body, Some(&tag), now_ms)?;
    }
    Ok(())
}

/// The plaintext of a `content` outbox item and its disappearing timer.
pub(crate) fn control_plaintext(conn: &Connection, ord: i64) -> Result<(Vec<u8>, u64), E2eError> {
    let bytes: Option<Vec<u8>> = conn.query_row(
        "SELECT content FROM outbox WHERE ord = ?1",
        params![ord],
        |r| r.get(0),
    )?;
    let content = Content::decode(bytes.unwrap_or_default().as_slice())?;
    let timer = content.expire_timer_ms;
    Ok((crate::outbox::pad_and_encode(content), timer))
}

/// The plaintext of an own message (text or relay link) with its reply, view-once flag
/// and timer, and the timer.
pub(crate) fn message_plaintext(
    conn: &Connection,
    my_handle: &str,
    id: &[u8],
    body: Body,
) -> Result<(Vec<u8>, u64), E2eError> {
    let (sent_at, reply_to, view_once, expires): (i64, Option<Vec<u8>>, i64, Option<i64>) = conn
        .query_row(
            "SELECT sent_at_ms, reply_to, view_once, expires_at_ms FROM messages
             WHERE sender = ?1 AND id = ?2",
            params![my_handle, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let sent_at = from_sql_u64(sent_at);
    let timer = expires
        .map(|e| from_sql_u64(e).saturating_sub(sent_at))
        .unwrap_or(0);
    let body = match body {
        Body::Text(mut t) => {
            t.reply_to = reply_to.unwrap_or_default().into();
            Body::Text(t)
        }
        other => other,
    };
    let content = Content {
        id: id.to_vec().into(),
        sent_at_ms: sent_at,
        body: Some(body),
        padding: Default::default(),
        expire_timer_ms: timer,
        view_once: view_once != 0,
    };
    Ok((crate::outbox::pad_and_encode(content), timer))
}

/// After the server accepted an own message: a view-once body is erased.
pub(crate) fn after_sent(conn: &Connection, my_handle: &str, id: &[u8]) -> Result<(), E2eError> {
    conn.execute(
        "UPDATE messages SET body = '' WHERE sender = ?1 AND id = ?2 AND view_once != 0",
        params![my_handle, id],
    )?;
    Ok(())
}

/// A stored message was just encrypted for `group_id`: the ephemeral budget starts over.
pub(crate) fn reset_ephemeral_budget(conn: &Connection, group_id: &[u8]) -> Result<(), E2eError> {
    conn.execute(
        "UPDATE groups SET ephemeral_sent = 0 WHERE group_id = ?1",
        params![group_id],
    )?;
    Ok(())
}

/// Sets the columns of an own message just queued (reply, view once, expiry).
pub(crate) fn set_own_message_meta(
    conn: &Connection,
    my_handle: &str,
    id: &[u8],
    conversation: &str,
    reply_to: Option<&[u8]>,
    view_once: bool,
    now_ms: u64,
) -> Result<(), E2eError> {
    let timer = conversation_timer(conn, conversation)?;
    let expires = (timer > 0).then(|| now_ms.saturating_add(timer));
    conn.execute(
        "UPDATE messages SET reply_to = ?3, view_once = ?4, expires_at_ms = ?5
         WHERE sender = ?1 AND id = ?2",
        params![
            my_handle,
            id,
            reply_to,
            i64::from(view_once),
            expires.map(to_sql_u64).transpose()?
        ],
    )?;
    Ok(())
}

// ------------------------------------------------------------------ receiving

/// What [`receive_content`] decided.
pub(crate) enum Handled {
    /// A feature body, applied (or ignored): these events.
    Done(Vec<Event>),
    /// Refused: record this failure (no plaintext in it).
    Invalid(String),
    /// A message to store (text, relay link, attachment): go on with it.
    Store(Box<Content>),
}

/// The parts of a message to store that this module handles after the insert.
pub(crate) struct StoreMeta {
    reply_to: Option<Vec<u8>>,
    view_once: bool,
    timer: u64,
}

impl StoreMeta {
    pub(crate) fn of(content: &Content) -> Result<Self, String> {
        let reply_to = match &content.body {
            Some(Body::Text(t)) if !t.reply_to.is_empty() => {
                if t.reply_to.len() != MESSAGE_ID_BYTES {
                    return Err("reply_to is not a message id".into());
                }
                Some(t.reply_to.to_vec())
            }
            _ => None,
        };
        if content.expire_timer_ms != 0 {
            validate_timer(content.expire_timer_ms).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            reply_to,
            view_once: content.view_once,
            timer: content.expire_timer_ms,
        })
    }
}

/// Handles the feature bodies of an application message from `sender` (decrypted, in
/// `group` of `conversation`), and drops everything from a blocked account. Messages to
/// store come back as [`Handled::Store`].
#[allow(clippy::too_many_arguments)] // the context of one decrypted message
pub(crate) fn receive_content(
    conn: &Connection,
    me: &Identity,
    conversation: &str,
    group: &MlsGroup,
    sender: &DeviceAddr,
    content: Content,
    now_ms: u64,
) -> Result<Handled, E2eError> {
    if sender.handle != me.handle && is_blocked(conn, &sender.handle)? {
        tracing::debug!("dropped a message from a blocked account");
        return Ok(Handled::Done(vec![]));
    }
    let from = sender.handle.clone();
    let conv = conversation.to_string();
    let body = match content.body {
        Some(Body::Receipt(r)) => r,
        Some(Body::Reaction(r)) => {
            return react_in(conn, conversation, &from, &r, now_ms);
        }
        Some(Body::Edit(e)) => return edit_in(conn, conversation, &from, &e, now_ms),
        Some(Body::Delete(d)) => return delete_in(conn, me, conversation, &from, &d, now_ms),
        Some(Body::Timer(t)) => return timer_in(conn, conversation, group, &from, &t, now_ms),
        Some(Body::Typing(_)) | Some(Body::Presence(_)) => {
            return Ok(Handled::Invalid(
                "typing and presence are only accepted as ephemeral signals".into(),
            ));
        }
        _ => {
            // A message to store: check its extra fields first.
            if let Err(r) = StoreMeta::of(&content) {
                return Ok(Handled::Invalid(r));
            }
            let tomb: i64 = conn.query_row(
                "SELECT COUNT(*) FROM tombstones WHERE sender = ?1 AND id = ?2",
                params![from, content.id.as_ref()],
                |r| r.get(0),
            )?;
            if tomb > 0 {
                // Deleted for everyone before it arrived.
                return Ok(Handled::Done(vec![]));
            }
            return Ok(Handled::Store(Box::new(content)));
        }
    };
    receipts_in(conn, me, &conv, &from, &body, now_ms)
}

/// After a message from `sender` was inserted: its extra columns, a delivered receipt,
/// and the request event of a stranger's first message (returned to go before the
/// message's own event).
#[allow(clippy::too_many_arguments)] // the context of one stored message
pub(crate) fn after_store(
    conn: &Connection,
    me: &Identity,
    conversation: &str,
    group: &MlsGroup,
    sender: &str,
    id: &[u8],
    meta: &StoreMeta,
    server_time_ms: u64,
    now_ms: u64,
) -> Result<Vec<Event>, E2eError> {
    let base = if server_time_ms == 0 {
        now_ms
    } else {
        server_time_ms
    };
    let outgoing = sender == me.handle;
    let expires = (meta.timer > 0).then(|| base.saturating_add(meta.timer));
    conn.execute(
        "UPDATE messages SET reply_to = ?3, view_once = ?4, expires_at_ms = ?5
         WHERE sender = ?1 AND id = ?2",
        params![
            sender,
            id,
            meta.reply_to,
            i64::from(meta.view_once),
            expires.map(to_sql_u64).transpose()?
        ],
    )?;
    if outgoing {
        if meta.view_once {
            after_sent(conn, sender, id)?;
        }
        return Ok(vec![]);
    }
    if is_request(conn, conversation)? {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE conversation = ?1 AND outgoing = 0 AND kind != 1",
            params![conversation],
            |r| r.get(0),
        )?;
        return Ok(if n == 1 {
            vec![Event::Request {
                conversation: conversation.to_string(),
                from: sender.to_string(),
            }]
        } else {
            vec![]
        });
    }
    if group.members().count() <= MAX_DELIVERED_RECEIPT_DEVICES {
        queue_receipt(
            conn,
            conversation,
            ReceiptStatus::Delivered,
            &[id.to_vec()],
            now_ms,
        )?;
    }
    Ok(vec![])
}

fn check_ids(ids: &[prost::bytes::Bytes]) -> Result<(), String> {
    if ids.is_empty() || ids.len() > MAX_RECEIPT_IDS {
        return Err(format!("a receipt names 1 to {MAX_RECEIPT_IDS} messages"));
    }
    if ids.iter().any(|i| i.len() != MESSAGE_ID_BYTES) {
        return Err("a receipt names a malformed message id".into());
    }
    Ok(())
}

fn receipts_in(
    conn: &Connection,
    me: &Identity,
    conversation: &str,
    from: &str,
    r: &wire::Receipt,
    now_ms: u64,
) -> Result<Handled, E2eError> {
    if let Err(e) = check_ids(&r.message_ids) {
        return Ok(Handled::Invalid(e));
    }
    let Some(status) = ReceiptStatus::from_wire(r.status) else {
        return Ok(Handled::Invalid("receipt without a status".into()));
    };
    let mut events = Vec::new();
    if from == me.handle {
        // Another of our devices read or opened these.
        for id in &r.message_ids {
            match status {
                ReceiptStatus::Read => {
                    conn.execute(
                        "UPDATE messages SET read_at_ms = ?3 WHERE conversation = ?1 AND id = ?2
                         AND outgoing = 0 AND read_at_ms IS NULL",
                        params![conversation, id.as_ref(), to_sql_u64(now_ms)?],
                    )?;
                }
                ReceiptStatus::Viewed => {
                    let senders: Vec<String> = {
                        let mut stmt = conn.prepare(
                            "SELECT sender FROM messages WHERE conversation = ?1 AND id = ?2
                             AND outgoing = 0 AND view_once = 1",
                        )?;
                        let rows =
                            stmt.query_map(params![conversation, id.as_ref()], |r| r.get(0))?;
                        rows.collect::<Result<_, _>>()?
                    };
                    for s in senders {
                        erase_view_once(conn, &s, id, now_ms)?;
                    }
                }
                ReceiptStatus::Delivered => {}
            }
        }
        return Ok(Handled::Done(events));
    }
    if status == ReceiptStatus::Read && !read_receipts_on(conn)? {
        // Reciprocal, like WhatsApp: who sends no read receipts sees none.
        return Ok(Handled::Done(events));
    }
    for id in &r.message_ids {
        let own: i64 = conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE conversation = ?1 AND sender = ?2 AND id = ?3",
            params![conversation, me.handle, id.as_ref()],
            |r| r.get(0),
        )?;
        if own == 0 {
            continue; // not ours, deleted or expired
        }
        let changed = conn.execute(
            "INSERT INTO receipts (message_id, member, status, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (message_id, member) DO UPDATE
             SET status = excluded.status, at_ms = excluded.at_ms
             WHERE excluded.status > receipts.status",
            params![id.as_ref(), from, status.code(), to_sql_u64(now_ms)?],
        )?;
        if changed > 0 {
            events.push(Event::Receipt {
                conversation: conversation.to_string(),
                message_id: uuid_text(id),
                from: from.to_string(),
                status,
            });
        }
    }
    Ok(Handled::Done(events))
}

fn react_in(
    conn: &Connection,
    conversation: &str,
    from: &str,
    r: &wire::Reaction,
    now_ms: u64,
) -> Result<Handled, E2eError> {
    if r.message_id.len() != MESSAGE_ID_BYTES {
        return Ok(Handled::Invalid(
            "reaction to a malformed message id".into(),
        ));
    }
    if let Err(e) = validate_reaction(&r.emoji) {
        return Ok(Handled::Invalid(e));
    }
    let found = targets(conn, &r.message_id, Some(conversation))?;
    let Some(target) = found.first() else {
        tracing::debug!("reaction to a message not here (deleted or expired)");
        return Ok(Handled::Done(vec![]));
    };
    set_reaction(conn, &target.sender, &r.message_id, from, &r.emoji, now_ms)?;
    Ok(Handled::Done(vec![Event::Reaction {
        conversation: conversation.to_string(),
        message_id: uuid_text(&r.message_id),
        from: from.to_string(),
        emoji: r.emoji.clone(),
    }]))
}

fn set_reaction(
    conn: &Connection,
    message_sender: &str,
    id: &[u8],
    reactor: &str,
    emoji: &str,
    now_ms: u64,
) -> Result<(), E2eError> {
    if emoji.is_empty() {
        conn.execute(
            "DELETE FROM reactions WHERE message_sender = ?1 AND message_id = ?2 AND reactor = ?3",
            params![message_sender, id, reactor],
        )?;
    } else {
        conn.execute(
            "INSERT INTO reactions (message_sender, message_id, reactor, emoji, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (message_sender, message_id, reactor) DO UPDATE
             SET emoji = excluded.emoji, at_ms = excluded.at_ms",
            params![message_sender, id, reactor, emoji, to_sql_u64(now_ms)?],
        )?;
    }
    Ok(())
}

fn edit_in(
    conn: &Connection,
    conversation: &str,
    from: &str,
    e: &wire::Edit,
    now_ms: u64,
) -> Result<Handled, E2eError> {
    if e.message_id.len() != MESSAGE_ID_BYTES {
        return Ok(Handled::Invalid("edit of a malformed message id".into()));
    }
    if e.text.is_empty() || e.text.len() > MAX_TEXT_BYTES {
        return Ok(Handled::Invalid(format!(
            "an edit's text is 1 to {MAX_TEXT_BYTES} bytes"
        )));
    }
    let found = targets(conn, &e.message_id, Some(conversation))?;
    let id = uuid_text(&e.message_id);
    let Some(target) = found.iter().find(|t| t.sender == from) else {
        if found.is_empty() {
            tracing::debug!("edit of a message not here (deleted or expired)");
            return Ok(Handled::Done(vec![]));
        }
        return Ok(Handled::Invalid(format!(
            "edit rejected: {from} is not the author of message {id}"
        )));
    };
    if target.kind != KIND_TEXT || target.view_once != 0 {
        return Ok(Handled::Invalid(format!(
            "edit rejected: message {id} is not an editable text"
        )));
    }
    conn.execute(
        "UPDATE messages SET body = ?3, edited_at_ms = ?4 WHERE sender = ?1 AND id = ?2",
        params![from, e.message_id.as_ref(), e.text, to_sql_u64(now_ms)?],
    )?;
    Ok(Handled::Done(vec![Event::Edited {
        conversation: conversation.to_string(),
        message_id: id,
        from: from.to_string(),
        text: e.text.clone(),
    }]))
}

fn delete_in(
    conn: &Connection,
    me: &Identity,
    conversation: &str,
    from: &str,
    d: &wire::Delete,
    now_ms: u64,
) -> Result<Handled, E2eError> {
    if d.message_id.len() != MESSAGE_ID_BYTES {
        return Ok(Handled::Invalid("delete of a malformed message id".into()));
    }
    let found = targets(conn, &d.message_id, Some(conversation))?;
    let id = uuid_text(&d.message_id);
    if found.iter().all(|t| t.sender != from) {
        if !found.is_empty() {
            return Ok(Handled::Invalid(format!(
                "delete rejected: {from} is not the author of message {id}"
            )));
        }
        // Not here (yet): drop it if it comes.
        conn.execute(
            "INSERT OR IGNORE INTO tombstones (sender, id, at_ms) VALUES (?1, ?2, ?3)",
            params![from, d.message_id.as_ref(), to_sql_u64(now_ms)?],
        )?;
        return Ok(Handled::Done(vec![]));
    }
    delete_row(conn, from, &d.message_id, from == me.handle)?;
    Ok(Handled::Done(vec![Event::Deleted {
        conversation: conversation.to_string(),
        message_id: id,
        from: from.to_string(),
    }]))
}

/// Whether `handle` may change a conversation's settings: anyone in a 1:1 chat, the
/// effective admins of a group chat.
fn may_change_settings(group: &MlsGroup, handle: &str) -> bool {
    match crate::group::metadata_of(group.extensions()) {
        None => true,
        Some(Ok(meta)) => {
            crate::group::effective_admins(&meta, &crate::group::member_map(group)).contains(handle)
        }
        Some(Err(_)) => false,
    }
}

fn timer_in(
    conn: &Connection,
    conversation: &str,
    group: &MlsGroup,
    from: &str,
    t: &wire::TimerChange,
    _now_ms: u64,
) -> Result<Handled, E2eError> {
    if let Err(e) = validate_timer(t.timer_ms) {
        return Ok(Handled::Invalid(format!("timer change: {e}")));
    }
    if !may_change_settings(group, from) {
        return Ok(Handled::Invalid(format!(
            "timer change rejected: {from} is not an admin of {conversation}"
        )));
    }
    conn.execute(
        "UPDATE conversations SET expire_timer_ms = ?2 WHERE peer = ?1",
        params![conversation, to_sql_u64(t.timer_ms)?],
    )?;
    Ok(Handled::Done(vec![Event::TimerChanged {
        conversation: conversation.to_string(),
        by: from.to_string(),
        timer_ms: t.timer_ms,
    }]))
}

fn erase_view_once(
    conn: &Connection,
    sender: &str,
    id: &[u8],
    now_ms: u64,
) -> Result<(), E2eError> {
    erase_attachment(conn, sender, id, false)?;
    conn.execute(
        "UPDATE messages SET body = '', view_once = 2, read_at_ms = COALESCE(read_at_ms, ?3)
         WHERE sender = ?1 AND id = ?2",
        params![sender, id, to_sql_u64(now_ms)?],
    )?;
    Ok(())
}

/// Deletes every message whose time is up, with its reactions, receipts and attachment
/// (see the module docs); old tombstones go too. Returns how many messages went.
pub(crate) fn sweep(conn: &Connection, now_ms: u64) -> Result<usize, E2eError> {
    let now = to_sql_u64(now_ms)?;
    let due: Vec<(String, Vec<u8>, bool)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT sender, id, outgoing FROM messages
             WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
        )?;
        let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    conn.execute(
        "DELETE FROM tombstones WHERE at_ms < ?1",
        params![to_sql_u64(now_ms.saturating_sub(TOMBSTONE_TTL_MS))?],
    )?;
    if due.is_empty() {
        return Ok(0);
    }
    for (sender, id, own) in &due {
        if let Some(blob) = delete_row(conn, sender, id, *own)? {
            queue_server_request(conn, &ServerRequest::DeleteBlob { blob_id: blob })?;
        }
        // Not sent yet: it never will be.
        conn.execute(
            "DELETE FROM outbox WHERE item_id = ?1 AND kind != 'content' AND submit IS NULL",
            params![id],
        )?;
    }
    Ok(due.len())
}

// ------------------------------------------------------------------ the Profile API

impl Profile {
    fn tx(&mut self) -> Result<rusqlite::Transaction<'_>, E2eError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Deletes every disappearing message whose time is up, really (the rows, then the
    /// WAL is truncated). Run on every operation; [`Profile::receive`] runs it too.
    /// Returns how many messages went.
    pub fn sweep_expired(&mut self, now_ms: u64) -> Result<usize, E2eError> {
        let tx = self.tx()?;
        let n = sweep(&tx, now_ms)?;
        tx.commit()?;
        if n > 0 {
            wipe_wal(&self.conn);
        }
        Ok(n)
    }

    /// Queues a text that replies to message `reply_to` (in that message's conversation).
    /// Returns the new message id.
    pub fn queue_reply(
        &mut self,
        reply_to: &str,
        text: &str,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let (raw, target) = unique_target(&self.conn, reply_to)?;
        self.queue_text_with(&target.conversation, text, Some(raw), false, now_ms)
    }

    /// Queues a text with the options of this module: a reply (`reply_to`, a message of
    /// the same conversation) and/or view once. Returns the message id.
    pub fn queue_text_with(
        &mut self,
        peer: &str,
        text: &str,
        reply_to: Option<[u8; 16]>,
        view_once: bool,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        if let Some(r) = &reply_to
            && targets(&self.conn, r, Some(peer))?.is_empty()
        {
            return Err(E2eError::Protocol(format!(
                "no message {} in {peer} to reply to",
                uuid_text(r)
            )));
        }
        let id = self.queue_text(peer, text, now_ms)?;
        let raw = parse_message_id(&id)?;
        let me = self.me()?.0.handle.clone();
        set_own_message_meta(
            &self.conn,
            &me,
            &raw,
            peer,
            reply_to.as_ref().map(|r| &r[..]),
            view_once,
            now_ms,
        )?;
        Ok(id)
    }

    /// Reacts to message `id` with `emoji` (empty: removes this account's reaction).
    pub fn react(&mut self, id: &str, emoji: &str, now_ms: u64) -> Result<(), E2eError> {
        validate_reaction(emoji).map_err(E2eError::Protocol)?;
        let me = self.me()?.0.handle.clone();
        let (raw, target) = unique_target(&self.conn, id)?;
        let tx = self.tx()?;
        set_reaction(&tx, &target.sender, &raw, &me, emoji, now_ms)?;
        engage(&tx, &target.conversation, now_ms)?;
        let body = Body::Reaction(wire::Reaction {
            message_id: raw.to_vec().into(),
            emoji: emoji.to_string(),
        });
        queue_control(&tx, &target.conversation, body, None, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the text of an own message `id`, on every device of the conversation.
    pub fn edit(&mut self, id: &str, text: &str, now_ms: u64) -> Result<(), E2eError> {
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(E2eError::Protocol(format!(
                "a text is 1 to {MAX_TEXT_BYTES} bytes"
            )));
        }
        let me = self.me()?.0.handle.clone();
        let (raw, target) = unique_target(&self.conn, id)?;
        if target.sender != me {
            return Err(E2eError::NotAuthorized(
                "only the author of a message may edit it".into(),
            ));
        }
        if target.kind != KIND_TEXT || target.view_once != 0 {
            return Err(E2eError::Protocol(format!(
                "message {id} is not an editable text"
            )));
        }
        let tx = self.tx()?;
        let unsent: i64 = tx.query_row(
            "SELECT COUNT(*) FROM outbox WHERE item_id = ?1 AND submit IS NULL",
            params![&raw[..]],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE messages SET body = ?3, edited_at_ms = ?4 WHERE sender = ?1 AND id = ?2",
            params![me, &raw[..], text, to_sql_u64(now_ms)?],
        )?;
        if unsent == 0 {
            // Sent (or being sent) already: everyone else gets the edit.
            let body = Body::Edit(wire::Edit {
                message_id: raw.to_vec().into(),
                text: text.to_string(),
            });
            queue_control(&tx, &target.conversation, body, None, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes message `id`: an own message for everyone (the delete goes to every
    /// device, and the server drops the copies it still holds), someone else's on this
    /// device only.
    pub fn delete_message(&mut self, id: &str, now_ms: u64) -> Result<DeleteScope, E2eError> {
        let me = self.me()?.0.handle.clone();
        let (raw, target) = unique_target(&self.conn, id)?;
        let own = target.sender == me;
        let tx = self.tx()?;
        let unsent = tx.execute(
            "DELETE FROM outbox WHERE item_id = ?1 AND kind != 'content' AND submit IS NULL",
            params![&raw[..]],
        )?;
        let blob = delete_row(&tx, &target.sender, &raw, own)?;
        let scope = if !own {
            DeleteScope::ForMe
        } else if unsent > 0 {
            DeleteScope::Unsent
        } else {
            if let Some(group_id) = &target.group_id {
                queue_server_request(
                    &tx,
                    &ServerRequest::Retract {
                        group_id: group_id.clone(),
                        message_id: raw.to_vec(),
                    },
                )?;
            }
            let body = Body::Delete(wire::Delete {
                message_id: raw.to_vec().into(),
            });
            queue_control(&tx, &target.conversation, body, None, now_ms)?;
            if let Some(blob_id) = blob {
                queue_server_request(&tx, &ServerRequest::DeleteBlob { blob_id })?;
            }
            DeleteScope::Everyone
        };
        tx.commit()?;
        wipe_wal(&self.conn);
        Ok(scope)
    }

    /// Sets the conversation's disappearing-messages timer (0: off) and tells its
    /// members. In a group chat only an admin may.
    pub fn set_timer(
        &mut self,
        conversation: &str,
        timer_ms: u64,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        validate_timer(timer_ms)?;
        let me = self.me()?.0.handle.clone();
        let Some(group_id) = send_group(&self.conn, conversation)? else {
            return Err(E2eError::UnknownConversation(conversation.to_string()));
        };
        let group = load_group(&self.conn, &group_id)?;
        if !may_change_settings(&group, &me) {
            return Err(E2eError::NotAuthorized(format!(
                "only admins change the timer of {conversation}"
            )));
        }
        let tx = self.tx()?;
        tx.execute(
            "UPDATE conversations SET expire_timer_ms = ?2 WHERE peer = ?1",
            params![conversation, to_sql_u64(timer_ms)?],
        )?;
        engage(&tx, conversation, now_ms)?;
        queue_control(
            &tx,
            conversation,
            Body::Timer(wire::TimerChange { timer_ms }),
            None,
            now_ms,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The conversation's disappearing-messages timer (0: off).
    pub fn timer(&self, conversation: &str) -> Result<u64, E2eError> {
        conversation_timer(&self.conn, conversation)
    }

    /// Marks every message of `conversation` read; sends read receipts unless they are
    /// off or the conversation is a request. View-once messages are read only by
    /// [`Profile::view_once`]. Returns how many were newly read.
    pub fn mark_read(&mut self, conversation: &str, now_ms: u64) -> Result<usize, E2eError> {
        let tx = self.tx()?;
        let ids: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare(&format!(
                "UPDATE messages SET read_at_ms = ?2 WHERE conversation = ?1 AND outgoing = 0
                 AND read_at_ms IS NULL AND view_once = 0 AND kind IN {TARGET_KINDS}
                 RETURNING id"
            ))?;
            let rows = stmt.query_map(params![conversation, to_sql_u64(now_ms)?], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if read_receipts_on(&tx)? && !is_request(&tx, conversation)? {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                queue_receipt(&tx, conversation, ReceiptStatus::Read, chunk, now_ms)?;
            }
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// Unread incoming messages per conversation (those [`Profile::mark_read`] has not
    /// marked yet), for conversation lists; conversations with none are left out.
    pub fn unread_counts(&self) -> Result<Vec<(String, u64)>, E2eError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT conversation, COUNT(*) FROM messages WHERE outgoing = 0
             AND read_at_ms IS NULL AND view_once = 0 AND kind IN {TARGET_KINDS}
             GROUP BY conversation"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (conversation, n) = row?;
            out.push((conversation, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    /// The attachment (with its key) of received view-once message `id` while it is not
    /// opened yet, to fetch the file just before [`Profile::view_once`]; `None` for a
    /// text, an own or an opened message.
    pub fn view_once_attachment(
        &self,
        id: &str,
    ) -> Result<Option<crate::AttachmentRecord>, E2eError> {
        let (raw, target) = unique_target(&self.conn, id)?;
        if target.outgoing || target.view_once != 1 {
            return Ok(None);
        }
        self.attachment(&target.sender, &uuid_text(&raw))
    }

    /// Opens a received view-once message: returns it with its body (for an attachment:
    /// its caption; fetch the file before calling this, see
    /// [`Profile::view_once_attachment`]), then erases the body (and the attachment) on
    /// this device and tells the sender (a viewed receipt, if read receipts are on),
    /// which also erases it on this account's other devices.
    pub fn view_once(&mut self, id: &str, now_ms: u64) -> Result<StoredMessage, E2eError> {
        let me = self.me()?.0.handle.clone();
        let (raw, target) = unique_target(&self.conn, id)?;
        if target.outgoing || target.sender == me {
            return Err(E2eError::Protocol(
                "your own view-once messages cannot be opened".into(),
            ));
        }
        match target.view_once {
            1 => {}
            2 => {
                return Err(E2eError::Protocol(format!(
                    "message {id} was viewed already"
                )));
            }
            _ => return Err(E2eError::Protocol(format!("message {id} is not view-once"))),
        }
        let tx = self.tx()?;
        let mut message: StoredMessage = tx.query_row(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND id = ?2"),
            params![target.sender, &raw[..]],
            message_from_row,
        )?;
        message.text = tx.query_row(
            "SELECT body FROM messages WHERE sender = ?1 AND id = ?2",
            params![target.sender, &raw[..]],
            |r| r.get(0),
        )?;
        erase_view_once(&tx, &target.sender, &raw, now_ms)?;
        if read_receipts_on(&tx)? && !is_request(&tx, &target.conversation)? {
            queue_receipt(
                &tx,
                &target.conversation,
                ReceiptStatus::Viewed,
                &[raw.to_vec()],
                now_ms,
            )?;
        }
        tx.commit()?;
        wipe_wal(&self.conn);
        Ok(message)
    }

    /// Unanswered message requests, oldest first (blocked accounts left out).
    pub fn requests(&self) -> Result<Vec<RequestSummary>, E2eError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.peer, COUNT(m.n), MIN(COALESCE(m.received_at_ms, m.sent_at_ms)),
                    (SELECT CASE WHEN l.view_once != 0 THEN '' ELSE l.body END FROM messages l
                     WHERE l.conversation = c.peer AND l.outgoing = 0 AND l.kind != 1
                     ORDER BY l.n DESC LIMIT 1)
             FROM conversations c JOIN messages m ON m.conversation = c.peer
             WHERE c.request = 1 AND m.outgoing = 0 AND m.kind != 1
               AND c.peer NOT IN (SELECT handle FROM blocked)
             GROUP BY c.peer ORDER BY 3",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RequestSummary {
                from: r.get(0)?,
                messages: from_sql_u64(r.get(1)?),
                first_at_ms: from_sql_u64(r.get(2)?),
                last_text: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether `conversation` is an unanswered message request.
    pub fn is_request(&self, conversation: &str) -> Result<bool, E2eError> {
        is_request(&self.conn, conversation)
    }

    /// Accepts the message request of `handle`: they become a contact, and the messages
    /// they sent get their delivered receipts.
    pub fn accept(&mut self, handle: &str, now_ms: u64) -> Result<(), E2eError> {
        if !is_request(&self.conn, handle)? {
            return Err(E2eError::Protocol(format!(
                "no message request from {handle}"
            )));
        }
        let tx = self.tx()?;
        engage(&tx, handle, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes the message request of `handle` (its messages, on this device); a new
    /// message from them is a request again.
    pub fn decline(&mut self, handle: &str) -> Result<(), E2eError> {
        if !is_request(&self.conn, handle)? {
            return Err(E2eError::Protocol(format!(
                "no message request from {handle}"
            )));
        }
        let tx = self.tx()?;
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT sender, id FROM messages WHERE conversation = ?1 AND kind != 1")?;
            let rows = stmt.query_map(params![handle], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (sender, id) in rows {
            delete_row(&tx, &sender, &id, false)?;
        }
        tx.commit()?;
        wipe_wal(&self.conn);
        Ok(())
    }

    /// Blocks `handle`: their messages and signals are dropped from now on, and the
    /// server is told to queue nothing of theirs for this account.
    pub fn block(&mut self, handle: &str, now_ms: u64) -> Result<(), E2eError> {
        hushwire_proto::identity::validate_handle(handle)
            .map_err(|e| E2eError::Protocol(format!("handle: {e}")))?;
        if self.me()?.0.handle == handle {
            return Err(E2eError::Protocol("you cannot block yourself".into()));
        }
        let tx = self.tx()?;
        tx.execute(
            "INSERT OR IGNORE INTO blocked (handle, at_ms) VALUES (?1, ?2)",
            params![handle, to_sql_u64(now_ms)?],
        )?;
        queue_server_request(
            &tx,
            &ServerRequest::Block {
                handle: handle.to_string(),
                blocked: true,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Unblocks `handle` (here and on the server).
    pub fn unblock(&mut self, handle: &str) -> Result<(), E2eError> {
        hushwire_proto::identity::validate_handle(handle)
            .map_err(|e| E2eError::Protocol(format!("handle: {e}")))?;
        let tx = self.tx()?;
        let n = tx.execute("DELETE FROM blocked WHERE handle = ?1", params![handle])?;
        if n == 0 {
            return Err(E2eError::Protocol(format!("{handle} is not blocked")));
        }
        queue_server_request(
            &tx,
            &ServerRequest::Block {
                handle: handle.to_string(),
                blocked: false,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The accounts this user blocked, sorted.
    pub fn blocked(&self) -> Result<Vec<String>, E2eError> {
        let mut stmt = self
            .conn
            .prepare("SELECT handle FROM blocked ORDER BY handle")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Turns read receipts on or off (default on).
    pub fn set_read_receipts(&mut self, on: bool) -> Result<(), E2eError> {
        kv_set(&self.conn, KV_READ_RECEIPTS, i64::from(on))
    }

    /// Whether read receipts are sent.
    pub fn read_receipts(&self) -> Result<bool, E2eError> {
        read_receipts_on(&self.conn)
    }

    /// Sets who sees this device's presence.
    pub fn set_presence_share(&mut self, share: PresenceShare) -> Result<(), E2eError> {
        kv_set(&self.conn, KV_PRESENCE, share.code())
    }

    /// Who sees this device's presence (default: contacts).
    pub fn presence_share(&self) -> Result<PresenceShare, E2eError> {
        presence_share(&self.conn)
    }

    /// What `handle` last shared of their presence.
    pub fn presence_of(&self, handle: &str) -> Result<Option<PresenceInfo>, E2eError> {
        Ok(self
            .conn
            .query_row(
                "SELECT online, last_seen_ms, updated_at_ms FROM presence WHERE handle = ?1",
                params![handle],
                |r| {
                    let last: Option<i64> = r.get(1)?;
                    Ok(PresenceInfo {
                        handle: handle.to_string(),
                        online: r.get(0)?,
                        last_seen_ms: last.map(from_sql_u64),
                        updated_at_ms: from_sql_u64(r.get(2)?),
                    })
                },
            )
            .optional()?)
    }

    /// Whether this device shares its presence with the 1:1 contact `handle` (and so
    /// may ask for theirs).
    pub fn shares_presence_with(&self, handle: &str) -> Result<bool, E2eError> {
        shares_presence_with(&self.conn, handle, handle)
    }

    /// The conversations this device announces its presence to: its settings decide.
    pub fn presence_targets(&self) -> Result<Vec<String>, E2eError> {
        let share = presence_share(&self.conn)?;
        if share == PresenceShare::Nobody {
            return Ok(vec![]);
        }
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT c.peer FROM conversations c
             JOIN groups g ON g.conversation = c.peer AND g.state = 'active'
             WHERE c.request = 0 AND c.peer NOT IN (SELECT handle FROM blocked)
             ORDER BY c.peer",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let all: Vec<String> = rows.collect::<Result<_, _>>()?;
        Ok(all
            .into_iter()
            .filter(|c| share == PresenceShare::Everyone || !crate::group::is_group_name(c))
            .collect())
    }

    /// Reactions to the messages of `conversation`, by message id.
    pub fn reactions(
        &self,
        conversation: &str,
    ) -> Result<HashMap<String, Vec<Reaction>>, E2eError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.message_id, r.reactor, r.emoji, r.at_ms FROM reactions r
             JOIN messages m ON m.sender = r.message_sender AND m.id = r.message_id
             WHERE m.conversation = ?1 ORDER BY r.at_ms, r.reactor",
        )?;
        let rows = stmt.query_map(params![conversation], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok((
                uuid_text(&id),
                Reaction {
                    from: r.get(1)?,
                    emoji: r.get(2)?,
                    at_ms: from_sql_u64(r.get(3)?),
                },
            ))
        })?;
        let mut out: HashMap<String, Vec<Reaction>> = HashMap::new();
        for row in rows {
            let (id, reaction) = row?;
            out.entry(id).or_default().push(reaction);
        }
        Ok(out)
    }

    /// Receipts for this account's messages in `conversation`, by message id.
    pub fn receipts(&self, conversation: &str) -> Result<HashMap<String, Vec<Receipt>>, E2eError> {
        let me = self.me()?.0.handle.clone();
        let mut stmt = self.conn.prepare(
            "SELECT r.message_id, r.member, r.status, r.at_ms FROM receipts r
             JOIN messages m ON m.sender = ?2 AND m.id = r.message_id
             WHERE m.conversation = ?1 ORDER BY r.member",
        )?;
        let rows = stmt.query_map(params![conversation, me], |r| {
            let id: Vec<u8> = r.get(0)?;
            let status: i64 = r.get(2)?;
            Ok((id, r.get::<_, String>(1)?, status, r.get::<_, i64>(3)?))
        })?;
        let mut out: HashMap<String, Vec<Receipt>> = HashMap::new();
        for row in rows {
            let (id, member, status, at) = row?;
            if let Some(status) = ReceiptStatus::from_code(status) {
                out.entry(uuid_text(&id)).or_default().push(Receipt {
                    member,
                    status,
                    at_ms: from_sql_u64(at),
                });
            }
        }
        Ok(out)
    }

    /// The message with printed id `id` on this device (its body hidden if view-once).
    pub fn find_message(&self, id: &str) -> Result<StoredMessage, E2eError> {
        let (raw, target) = unique_target(&self.conn, id)?;
        Ok(self.conn.query_row(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND id = ?2"),
            params![target.sender, &raw[..]],
            message_from_row,
        )?)
    }

    // ------------------------------------------------------------ ephemeral

    /// Builds a typing signal for `conversation` (`None` when nothing should be sent: no
    /// group yet, a request, or the group's ephemeral budget is spent).
    pub fn ephemeral_typing(
        &mut self,
        conversation: &str,
        typing: bool,
        now_ms: u64,
    ) -> Result<Option<EphemeralOut>, E2eError> {
        if is_request(&self.conn, conversation)? {
            return Ok(None);
        }
        self.ephemeral(conversation, Body::Typing(wire::Typing { typing }), now_ms)
    }

    /// Builds a presence signal for `conversation` if this device shares its presence
    /// there (`reply_wanted`: ask the others for theirs).
    pub fn ephemeral_presence(
        &mut self,
        conversation: &str,
        online: bool,
        reply_wanted: bool,
        now_ms: u64,
    ) -> Result<Option<EphemeralOut>, E2eError> {
        let share = presence_share(&self.conn)?;
        let allowed = match share {
            PresenceShare::Nobody => false,
            PresenceShare::Contacts => {
                !crate::group::is_group_name(conversation) && !is_request(&self.conn, conversation)?
            }
            PresenceShare::Everyone => !is_request(&self.conn, conversation)?,
        };
        if !allowed || is_blocked(&self.conn, conversation)? {
            return Ok(None);
        }
        let body = Body::Presence(wire::Presence {
            online,
            last_seen_ms: if online { 0 } else { now_ms },
            reply_wanted,
        });
        self.ephemeral(conversation, body, now_ms)
    }

    fn ephemeral(
        &mut self,
        conversation: &str,
        body: Body,
        now_ms: u64,
    ) -> Result<Option<EphemeralOut>, E2eError> {
        let signer = self.me()?.1.device.mls_signer();
        let Some(group_id) = send_group(&self.conn, conversation)? else {
            return Ok(None);
        };
        let tx = self.tx()?;
        let mut group = load_group(&tx, &group_id)?;
        if group.pending_commit().is_some() || group.pending_proposals().next().is_some() {
            return Ok(None);
        }
        let epoch = to_sql_u64(group.epoch().as_u64())?;
        let (budget_epoch, sent): (i64, i64) = tx.query_row(
            "SELECT ephemeral_epoch, ephemeral_sent FROM groups WHERE group_id = ?1",
            params![group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let sent = if budget_epoch == epoch { sent } else { 0 };
        if sent >= EPHEMERAL_BUDGET {
            // A new epoch resets every ratchet: rotate this device's keys instead.
            let queued: i64 = tx.query_row(
                "SELECT COUNT(*) FROM outbox WHERE conversation = ?1 AND kind = 'update'",
                params![conversation],
                |r| r.get(0),
            )?;
            if queued == 0 {
                let id = new_message_id(now_ms);
                tx.execute(
                    "INSERT INTO outbox (ord, kind, conversation, item_id, message_id, group_id)
                     VALUES ((SELECT COALESCE(MAX(ord), 0) + 1 FROM outbox), 'update', ?1, ?2, ?2, ?3)",
                    params![conversation, &id[..], group_id],
                )?;
            }
            tx.commit()?;
            return Ok(None);
        }
        let content = Content {
            id: new_message_id(now_ms).to_vec().into(),
            sent_at_ms: now_ms,
            body: Some(body),
            padding: Default::default(),
            expire_timer_ms: 0,
            view_once: false,
        };
        let plaintext = crate::outbox::pad_and_encode(content);
        let mls_message = {
            let provider = Provider::new(&tx);
            group
                .create_message(&provider, &signer, &plaintext)?
                .to_bytes()?
        };
        if mls_message.len() > MAX_EPHEMERAL_BYTES {
            return Err(E2eError::Protocol("ephemeral message too large".into()));
        }
        tx.execute(
            "UPDATE groups SET ephemeral_epoch = ?2, ephemeral_sent = ?3 WHERE group_id = ?1",
            params![group_id, epoch, sent + 1],
        )?;
        tx.commit()?;
        Ok(Some(EphemeralOut {
            group_id,
            mls_message,
        }))
    }

    /// Processes an ephemeral signal the server relayed (typing, presence). Never
    /// fails on bad input: what cannot be used is dropped (and logged without content).
    /// Call it only once the mailbox is drained, so a signal never overtakes the stored
    /// messages before it (the MLS ratchet tolerates little reordering).
    pub fn receive_ephemeral(
        &mut self,
        delivery: &wire::EphemeralDelivery,
        now_ms: u64,
    ) -> Result<EphemeralReceived, E2eError> {
        let me = self.me()?.0.clone();
        if let Some(s) = &delivery.sender
            && s.handle == me.handle
            && s.device_id == me.device_id
        {
            return Ok(EphemeralReceived::default());
        }
        let header = match parse_header(&delivery.mls_message) {
            Ok(MlsHeader::Framed(h)) if h.content_type == ContentType::Application => h,
            _ => {
                tracing::debug!("dropped a malformed ephemeral signal");
                return Ok(EphemeralReceived::default());
            }
        };
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT conversation, state FROM groups WHERE group_id = ?1",
                params![header.group_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((conversation, state)) = row else {
            return Ok(EphemeralReceived::default());
        };
        if state != "active" {
            return Ok(EphemeralReceived::default());
        }
        let tx = self.tx()?;
        let mut group = load_group(&tx, &header.group_id)?;
        if header.epoch > group.epoch().as_u64() {
            return Ok(EphemeralReceived::default()); // its commit is not here yet
        }
        let message = match MlsMessageIn::tls_deserialize_exact(delivery.mls_message.as_ref())
            .ok()
            .and_then(|m| m.try_into_protocol_message().ok())
        {
            Some(m) => m,
            None => return Ok(EphemeralReceived::default()),
        };
        let processed = {
            let provider = Provider::new(&tx);
            match group.process_message(&provider, message) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "ephemeral signal not decryptable");
                    return Ok(EphemeralReceived::default());
                }
            }
        };
        let Ok(sender) = parse_credential(processed.credential()) else {
            return Ok(EphemeralReceived::default());
        };
        let plaintext = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => app.into_bytes(),
            _ => return Ok(EphemeralReceived::default()),
        };
        // The ratchet moved on: keep that, whatever the content turns out to be.
        let mut out = EphemeralReceived::default();
        let content = Content::decode(plaintext.as_slice()).ok();
        let ignore = sender.handle == me.handle
            || is_blocked(&tx, &sender.handle)?
            || is_request(&tx, &conversation)?;
        match content.and_then(|c| c.body) {
            _ if ignore => {}
            Some(Body::Typing(t)) => out.events.push(Event::Typing {
                conversation: conversation.clone(),
                from: sender.handle.clone(),
                typing: t.typing,
            }),
            Some(Body::Presence(p)) => {
                let last = (!p.online && p.last_seen_ms > 0)
                    .then(|| to_sql_u64(p.last_seen_ms))
                    .transpose()?;
                tx.execute(
                    "INSERT INTO presence (handle, online, last_seen_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (handle) DO UPDATE SET online = excluded.online,
                         last_seen_ms = COALESCE(excluded.last_seen_ms, presence.last_seen_ms),
                         updated_at_ms = excluded.updated_at_ms",
                    params![sender.handle, p.online, last, to_sql_u64(now_ms)?],
                )?;
                out.events.push(Event::Presence {
                    from: sender.handle.clone(),
                    online: p.online,
                    last_seen_ms: (!p.online && p.last_seen_ms > 0).then_some(p.last_seen_ms),
                });
                if p.reply_wanted && shares_presence_with(&tx, &conversation, &sender.handle)? {
                    out.reply_presence_in = Some(conversation.clone());
                }
            }
            _ => tracing::debug!("dropped an ephemeral signal of a stored type"),
        }
        tx.commit()?;
        Ok(out)
    }

    // ------------------------------------------------------------ server requests

    /// The oldest request for the server (block, retract, blob deletion) not confirmed
    /// yet, with its number for [`Profile::server_request_done`].
    pub fn next_server_request(&self) -> Result<Option<(i64, ServerRequest)>, E2eError> {
        type Row = (
            i64,
            String,
            Option<String>,
            Option<bool>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT n, kind, handle, blocked, group_id, message_id FROM server_requests
                 ORDER BY n LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((n, kind, handle, blocked, group_id, message_id)) = row else {
            return Ok(None);
        };
        let req = match kind.as_str() {
            "block" => ServerRequest::Block {
                handle: handle.unwrap_or_default(),
                blocked: blocked.unwrap_or(true),
            },
            "retract" => ServerRequest::Retract {
                group_id: group_id.unwrap_or_default(),
                message_id: message_id.unwrap_or_default(),
            },
            _ => ServerRequest::DeleteBlob {
                blob_id: message_id.unwrap_or_default(),
            },
        };
        Ok(Some((n, req)))
    }

    /// Queues any content body for `conversation`, without the checks of this module:
    /// what a modified client could send (tests of the receivers' checks). Not a stable
    /// API.
    #[doc(hidden)]
    pub fn queue_raw_content(
        &mut self,
        conversation: &str,
        body: Body,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let tx = self.tx()?;
        let id = queue_control(&tx, conversation, body, None, now_ms)?;
        tx.commit()?;
        Ok(uuid_text(&id))
    }

    /// The server confirmed (or refused for good) request `n`: it is forgotten.
    pub fn server_request_done(&mut self, n: i64) -> Result<(), E2eError> {
        self.conn
            .execute("DELETE FROM server_requests WHERE n = ?1", params![n])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_and_reactions_are_checked() {
        assert!(validate_timer(0).is_ok());
        assert!(validate_timer(5_000).is_ok());
        assert!(validate_timer(MAX_EXPIRE_TIMER_MS).is_ok());
        assert!(validate_timer(4_999).is_err());
        assert!(validate_timer(MAX_EXPIRE_TIMER_MS + 1).is_err());
        assert!(validate_reaction("👍").is_ok());
        assert!(validate_reaction("👩‍👩‍👧").is_ok());
        assert!(validate_reaction("").is_ok());
        assert!(validate_reaction("a b").is_err());
        assert!(validate_reaction("\u{7}").is_err());
        assert!(validate_reaction(&"x".repeat(65)).is_err());
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [
            ReceiptStatus::Delivered,
            ReceiptStatus::Read,
            ReceiptStatus::Viewed,
        ] {
            assert_eq!(ReceiptStatus::from_code(s.code()), Some(s));
            assert_eq!(ReceiptStatus::from_wire(s.to_wire() as i32), Some(s));
        }
        assert!(ReceiptStatus::Read > ReceiptStatus::Delivered);
        for p in [
            PresenceShare::Everyone,
            PresenceShare::Contacts,
            PresenceShare::Nobody,
        ] {
            assert_eq!(PresenceShare::from_code(p.code()), p);
        }
        assert!(parse_message_id("not-an-id").is_err());
    }
}
