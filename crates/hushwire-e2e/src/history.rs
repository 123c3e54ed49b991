//! The history archive a device sends to a newly linked device of the same account
//! ([`Profile::export_history`], [`Profile::import_history`]).
//!
//! The archive carries what the user sees, never MLS state: every conversation (1:1
//! chats by the peer's handle, group chats by name and MLS group id) with its settings,
//! every stored message with what was applied to it (edits, deletes, reactions, receipts
//! of own messages, read marks, disappearing-timer expiry), the attachments' records
//! (blob id, key, hashes, sizes, name, type, thumbnail: what a later download needs; never
//! a local file path), the blocked accounts and the read-receipt and presence settings.
//! Its transport and encryption are the caller's business: the archive is plaintext
//! holding keys, so it only ever travels inside the end-to-end encrypted link channel.
//!
//! # Format (version 1)
//! A sequence of protobuf messages, each preceded by its length as a protobuf varint
//! (`prost`'s length-delimited encoding), each at most [`MAX_HISTORY_RECORD_BYTES`]:
//!
//! 1. one `Header` (format name `hushwire-history`, version [`HISTORY_VERSION`], the
//!    account's handle and public account key, the exporting device, the time, how many
//!    conversations and messages follow, whether attachments are included, and a random
//!    archive id);
//! 2. `Record`s, each one of:
//!    - `Conversation`: name, MLS group id (group chats only), suite, creation time,
//!      disappearing timer, whether it is an unanswered message request. The messages
//!      that follow, up to the next `Conversation`, belong to it;
//!    - `Message`: one `messages` row (id, sender, sender device, group id, times, text,
//!      kind, reply, edit and expiry times, read mark) with its reactions, its receipts
//!      (own messages) and its attachment record (attachments);
//!    - `Blocked`: a blocked account;
//!    - `Setting`: a transferable setting (`read_receipts`, `presence_share`);
//!    - `End`: the counts of the records before it. It is the last record: an archive
//!      without it is truncated, and nothing may follow it.
//!
//! Export reads one consistent snapshot (a read transaction) and writes record by
//! record, import reads record by record: a history of any size is never held in memory.
//!
//! # What is left out
//! View-once messages (opened or not), own messages not accepted by the server (queued,
//! failed, or still in the outbox), messages whose disappearing timer already ran out,
//! and, without [`HistoryOptions::include_media_refs`], messages carrying attachments.
//! Outbox items, pending uploads, MLS groups and keys, pinned contact keys and delivery
//! bookkeeping stay on the exporting device.
//!
//! # Import
//! An archive is accepted only from the same account (handle and account key). Records
//! are applied in transactions of [`IMPORT_BATCH_RECORDS`]; a malformed or truncated
//! archive stops the import with an error and keeps the batches applied before it (each
//! message lands whole, with its reactions, receipts and attachment, or not at all).
//! Import is idempotent: a message already here (same sender and id, e.g. received live
//! after linking, or imported before) is skipped with everything attached to it, and so
//! is a message deleted for everyone here before the archive arrived. Imported messages
//! are ordered before every message already stored (the archive is the past), in archive
//! order; the place is kept per archive (its random id, in `kv`), so importing it again
//! after an error fills the gaps in place. A group chat maps to the local conversation of
//! the same MLS group when this device has joined it; otherwise it keeps its name
//! (suffixed `~N` if a different group chat has that name here). An existing
//! conversation takes the archive's timer when it has none, and stops being a message
//! request when the archive says it was accepted. Blocks and settings are added where
//! this device has none (the server already knows the account's blocks). Imported
//! attachments are pending downloads on this device. Messages whose timer ran out while
//! the archive travelled go at the next expiry sweep.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

use hushwire_proto::identity::validate_handle;
use hushwire_proto::limits::{MAX_GROUP_ID_BYTES, MESSAGE_ID_BYTES};
use hushwire_proto::wire;
use prost::Message as _;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::attachments::KIND_ATTACHMENT;
use crate::outbox::{KIND_RELAY_LINK, KIND_TEXT, MAX_TEXT_BYTES};
use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, MessageState, Profile, Suite};

/// The archive format's name, in its header.
pub const HISTORY_FORMAT: &str = "hushwire-history";
/// The archive format version this build writes and reads.
pub const HISTORY_VERSION: u32 = 1;
/// Largest record (header included) an archive may hold, in bytes.
pub const MAX_HISTORY_RECORD_BYTES: usize = 1 << 20;
/// Records applied per import transaction.
pub const IMPORT_BATCH_RECORDS: usize = 1_000;

/// Length of an archive's random id.
const ARCHIVE_ID_BYTES: usize = 16;

/// `kv` key prefix recording where an archive's messages go (`messages.n` of its first
/// message), by archive id.
const KV_IMPORT_BASE: &str = "history_import:";

/// `messages.kind` of a group event (membership or metadata change).
const KIND_GROUP_EVENT: i64 = 1;

/// Settings (`kv` keys, see features.rs) that travel with the history. An importing
/// device keeps its own value when it has one.
const TRANSFERRED_SETTINGS: &[&str] = &["read_receipts", "presence_share"];

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Include messages carrying attachments, with their records (blob id and key), so
    /// the new device can download them later. Default true.
    pub include_media_refs: bool,
    /// Only messages stored at or after this time (received time, or send time of own
    /// messages). Default: all.
    pub since_ms: Option<u64>,
    /// The time deciding which disappearing messages expired already (they are left
    /// out). Default `None`: the system clock.
    pub now_ms: Option<u64>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            include_media_refs: true,
            since_ms: None,
            now_ms: None,
        }
    }
}

/// What an export wrote, or what an import added (records already present are not
/// counted; `bytes` is the archive's size as read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Conversations written, or created by the import.
    pub conversations: u64,
    /// Messages written, or inserted by the import.
    pub messages: u64,
    /// Attachment records written, or inserted.
    pub attachments: u64,
    /// Reactions written, or inserted.
    pub reactions: u64,
    /// Archive bytes written or read.
    pub bytes: u64,
}

// ------------------------------------------------------------------ the records

#[derive(Clone, PartialEq, prost::Message)]
struct Header {
    #[prost(string, tag = "1")]
    format: String,
    #[prost(uint32, tag = "2")]
    version: u32,
    #[prost(string, tag = "3")]
    handle: String,
    #[prost(bytes = "vec", tag = "4")]
    account_key: Vec<u8>,
    #[prost(uint32, tag = "5")]
    device_id: u32,
    #[prost(uint64, tag = "6")]
    created_at_ms: u64,
    #[prost(uint64, tag = "7")]
    conversations: u64,
    #[prost(uint64, tag = "8")]
    messages: u64,
    #[prost(bool, tag = "9")]
    media_refs: bool,
    #[prost(uint64, optional, tag = "10")]
    since_ms: Option<u64>,
    /// Random, one per export: an import of the same archive again (resumed after an
    /// error, or repeated) puts its messages at the same places.
    #[prost(bytes = "vec", tag = "11")]
    archive_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(oneof = "record::Item", tags = "1, 2, 3, 4, 5")]
    item: Option<record::Item>,
}

mod record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Item {
        #[prost(message, tag = "1")]
        Conversation(super::ArchivedConversation),
        #[prost(message, tag = "2")]
        Message(Box<super::ArchivedMessage>),
        #[prost(message, tag = "3")]
        Blocked(super::ArchivedBlocked),
        #[prost(message, tag = "4")]
        Setting(super::ArchivedSetting),
        #[prost(message, tag = "5")]
        End(super::End),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedConversation {
    #[prost(string, tag = "1")]
    name: String,
    /// The group chat's MLS group; empty for a 1:1 conversation.
    #[prost(bytes = "vec", tag = "2")]
    group_id: Vec<u8>,
    #[prost(uint32, tag = "3")]
    suite: u32,
    #[prost(uint64, tag = "4")]
    created_at_ms: u64,
    #[prost(uint64, tag = "5")]
    expire_timer_ms: u64,
    #[prost(bool, tag = "6")]
    request: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedMessage {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, tag = "2")]
    sender: String,
    #[prost(uint32, tag = "3")]
    sender_device: u32,
    /// The MLS group it came in: absent when it is the previous message's (of this
    /// conversation), empty when there is none.
    #[prost(bytes = "vec", optional, tag = "4")]
    group_id: Option<Vec<u8>>,
    #[prost(uint64, tag = "5")]
    sent_at_ms: u64,
    #[prost(uint64, optional, tag = "6")]
    received_at_ms: Option<u64>,
    #[prost(string, tag = "7")]
    body: String,
    /// `messages.kind`: 0 text, 1 group event, 2 relay link, 3 attachment.
    #[prost(uint32, tag = "8")]
    kind: u32,
    #[prost(bool, tag = "9")]
    outgoing: bool,
    #[prost(bytes = "vec", tag = "10")]
    reply_to: Vec<u8>,
    #[prost(uint64, optional, tag = "11")]
    edited_at_ms: Option<u64>,
    #[prost(uint64, optional, tag = "12")]
    expires_at_ms: Option<u64>,
    #[prost(uint64, optional, tag = "13")]
    read_at_ms: Option<u64>,
    #[prost(message, optional, tag = "14")]
    attachment: Option<wire::Attachment>,
    #[prost(message, repeated, tag = "15")]
    reactions: Vec<ArchivedReaction>,
    #[prost(message, repeated, tag = "16")]
    receipts: Vec<ArchivedReceipt>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedReaction {
    #[prost(string, tag = "1")]
    reactor: String,
    #[prost(string, tag = "2")]
    emoji: String,
    #[prost(uint64, tag = "3")]
    at_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedReceipt {
    #[prost(string, tag = "1")]
    member: String,
    /// 1 delivered, 2 read, 3 viewed.
    #[prost(uint32, tag = "2")]
    status: u32,
    #[prost(uint64, tag = "3")]
    at_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedBlocked {
    #[prost(string, tag = "1")]
    handle: String,
    #[prost(uint64, tag = "2")]
    at_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ArchivedSetting {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(int64, tag = "2")]
    value: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct End {
    #[prost(uint64, tag = "1")]
    conversations: u64,
    #[prost(uint64, tag = "2")]
    messages: u64,
    /// Every record before this one (the header not included).
    #[prost(uint64, tag = "3")]
    records: u64,
}

/// A malformed archive.
// TODO(lead): E2eError::InvalidArchive(String) once error.rs has it.
fn bad(reason: impl std::fmt::Display) -> E2eError {
    E2eError::InvalidArchive(reason.to_string())
}

/// An archive that ends too early.
fn truncated(what: &str) -> E2eError {
    bad(format_args!("truncated ({what})"))
}

// ------------------------------------------------------------------ framing

struct Writer<'a> {
    out: BufWriter<&'a mut dyn Write>,
    buf: Vec<u8>,
    bytes: u64,
    records: u64,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, out),
            buf: Vec::with_capacity(4096),
            bytes: 0,
            records: 0,
        }
    }

    fn write(&mut self, message: &impl prost::Message) -> Result<(), E2eError> {
        let len = message.encoded_len();
        if len > MAX_HISTORY_RECORD_BYTES {
            return Err(E2eError::Protocol(format!(
                "a history record of {len} bytes exceeds {MAX_HISTORY_RECORD_BYTES}"
            )));
        }
        self.buf.clear();
        message
            .encode_length_delimited(&mut self.buf)
            .map_err(|e| E2eError::Protocol(format!("encoding a history record: {e}")))?;
        self.out.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    fn record(&mut self, item: record::Item) -> Result<(), E2eError> {
        self.write(&Record { item: Some(item) })?;
        self.records += 1;
        Ok(())
    }
}

struct Reader<'a> {
    input: BufReader<&'a mut dyn Read>,
    buf: Vec<u8>,
    bytes: u64,
}

impl<'a> Reader<'a> {
    fn new(input: &'a mut dyn Read) -> Self {
        Self {
            input: BufReader::with_capacity(64 * 1024, input),
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// The next record's bytes; `None` at a clean end of input (between records).
    fn next_frame(&mut self) -> Result<Option<&[u8]>, E2eError> {
        let mut len: u64 = 0;
        let mut shift = 0u32;
        let mut first = true;
        loop {
            let byte = {
                let available = match self.input.fill_buf() {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                match available.first() {
                    Some(b) => *b,
                    None if first => return Ok(None),
                    None => return Err(truncated("inside a record length")),
                }
            };
            self.input.consume(1);
            self.bytes += 1;
            first = false;
            len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(bad("a record length is not a valid varint"));
            }
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_HISTORY_RECORD_BYTES)
            .ok_or_else(|| {
                bad(format_args!(
                    "a record of {len} bytes exceeds {MAX_HISTORY_RECORD_BYTES}"
                ))
            })?;
        self.buf.resize(len, 0);
        match self.input.read_exact(&mut self.buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(truncated("inside a record"));
            }
            Err(e) => return Err(e.into()),
        }
        self.bytes += len as u64;
        Ok(Some(&self.buf))
    }

    fn header(&mut self) -> Result<Header, E2eError> {
        let frame = self.next_frame()?.ok_or_else(|| truncated("empty"))?;
        let header = Header::decode(frame).map_err(|e| bad(format_args!("header: {e}")))?;
        if header.format != HISTORY_FORMAT {
            return Err(bad("not a history archive"));
        }
        if header.version != HISTORY_VERSION {
            return Err(bad(format_args!(
                "version {} (this build reads version {HISTORY_VERSION})",
                header.version
            )));
        }
        Ok(header)
    }

    fn record(&mut self) -> Result<Option<record::Item>, E2eError> {
        let Some(frame) = self.next_frame()? else {
            return Ok(None);
        };
        let record = Record::decode(frame).map_err(|e| bad(format_args!("a record: {e}")))?;
        record
            .item
            .map(Some)
            .ok_or_else(|| bad("a record of an unknown kind"))
    }
}

// ------------------------------------------------------------------ export

/// The messages an export includes (parameters: `?1` conversation, `?2` now, `?3` since
/// or NULL, `?4` media refs included).
const EXPORTED: &str = "m.conversation = ?1
     AND m.state IN (1, 2) AND m.view_once = 0 AND m.kind IN (0, 1, 2, 3)
     AND (m.expires_at_ms IS NULL OR m.expires_at_ms > ?2)
     AND (?3 IS NULL OR COALESCE(m.received_at_ms, m.sent_at_ms) >= ?3)
     AND (m.kind != 3 OR (?4 AND EXISTS
          (SELECT 1 FROM attachments a WHERE a.sender = m.sender AND a.id = m.id)))
     AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.item_id = m.id)";

fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct ExportRow {
    n: i64,
    message: ArchivedMessage,
}

fn export_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRow> {
    let opt = |v: Option<i64>| v.map(from_sql_u64);
    let kind: i64 = r.get(10)?;
    let device: i64 = r.get(3)?;
    Ok(ExportRow {
        n: r.get(0)?,
        message: ArchivedMessage {
            id: r.get(1)?,
            sender: r.get(2)?,
            sender_device: u32::try_from(device).unwrap_or(0),
            group_id: r.get(4)?,
            sent_at_ms: from_sql_u64(r.get(5)?),
            received_at_ms: opt(r.get(6)?),
            body: r.get(7)?,
            outgoing: r.get(8)?,
            reply_to: r.get::<_, Option<Vec<u8>>>(9)?.unwrap_or_default(),
            kind: u32::try_from(kind).unwrap_or(u32::MAX),
            edited_at_ms: opt(r.get(11)?),
            expires_at_ms: opt(r.get(12)?),
            read_at_ms: opt(r.get(13)?),
            attachment: None,
            reactions: vec![],
            receipts: vec![],
        },
    })
}

fn export_conversation(
    conn: &Connection,
    w: &mut Writer<'_>,
    stats: &mut HistoryStats,
    me: &str,
    conversation: &str,
    filter: &(i64, Option<i64>, bool),
) -> Result<(), E2eError> {
    let (now, since, media) = *filter;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT m.n, m.id, m.sender, m.sender_device, m.group_id, m.sent_at_ms,
                m.received_at_ms, m.body, m.outgoing, m.reply_to, m.kind, m.edited_at_ms,
                m.expires_at_ms, m.read_at_ms
         FROM messages m WHERE {EXPORTED} ORDER BY m.n"
    ))?;
    let mut reactions = conn.prepare_cached(
        "SELECT reactor, emoji, at_ms FROM reactions
         WHERE message_sender = ?1 AND message_id = ?2 ORDER BY reactor",
    )?;
    let mut receipts = conn.prepare_cached(
        "SELECT member, status, at_ms FROM receipts WHERE message_id = ?1 ORDER BY member",
    )?;
    let mut attachment =
        conn.prepare_cached("SELECT attachment FROM attachments WHERE sender = ?1 AND id = ?2")?;
    let mut rows = stmt.query(params![conversation, now, since, media])?;
    let mut last_group: Option<Option<Vec<u8>>> = None;
    while let Some(row) = rows.next()? {
        let ExportRow { n, mut message } = export_row(row)?;
        // Most messages of a conversation share its group: its id is written once.
        let group = message.group_id.take();
        if last_group.as_ref() != Some(&group) {
            message.group_id = Some(group.clone().unwrap_or_default());
            last_group = Some(group);
        }
        let key = params![message.sender, message.id];
        message.reactions = reactions
            .query_map(key, |r| {
                Ok(ArchivedReaction {
                    reactor: r.get(0)?,
                    emoji: r.get(1)?,
                    at_ms: from_sql_u64(r.get(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        if message.outgoing && message.sender == me {
            message.receipts = receipts
                .query_map(params![message.id], |r| {
                    let status: i64 = r.get(1)?;
                    Ok(ArchivedReceipt {
                        member: r.get(0)?,
                        status: u32::try_from(status).unwrap_or(0),
                        at_ms: from_sql_u64(r.get(2)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        if i64::from(message.kind) == KIND_ATTACHMENT {
            let bytes: Option<Vec<u8>> = attachment
                .query_row(params![message.sender, message.id], |r| r.get(0))
                .optional()?;
            let Some(bytes) = bytes else {
                // Selected only with its attachment, in the same snapshot.
                return Err(E2eError::Storage(format!(
                    "message row {n}: attachment vanished during the export"
                )));
            };
            message.attachment = Some(wire::Attachment::decode(bytes.as_slice())?);
            stats.attachments += 1;
        }
        stats.reactions += message.reactions.len() as u64;
        stats.messages += 1;
        w.record(record::Item::Message(Box::new(message)))?;
    }
    Ok(())
}

// ------------------------------------------------------------------ import

struct Importer {
    me: String,
    media_refs: bool,
    /// `messages.n` of the next imported message.
    next_n: i64,
    /// Message records announced by the header.
    announced: u64,
    /// The local name of the conversation message records belong to.
    current: Option<String>,
    /// The group id of the previous message of the current conversation.
    last_group: Option<Vec<u8>>,
    /// Records read so far, by kind (for the `End` check).
    conversations_read: u64,
    messages_read: u64,
    records_read: u64,
    stats: HistoryStats,
}

impl Importer {
    fn apply(&mut self, tx: &Connection, item: record::Item) -> Result<(), E2eError> {
        self.records_read += 1;
        match item {
            record::Item::Conversation(c) => {
                self.conversations_read += 1;
                let (name, created) = import_conversation(tx, &self.me, &c)?;
                if created {
                    self.stats.conversations += 1;
                }
                self.current = Some(name);
                self.last_group = None;
            }
            record::Item::Message(m) => {
                self.messages_read += 1;
                if self.messages_read > self.announced {
                    return Err(bad(format_args!(
                        "more messages than the {} its header announced",
                        self.announced
                    )));
                }
                let Some(current) = &self.current else {
                    return Err(bad("a message before any conversation"));
                };
                let n = self.next_n;
                self.next_n += 1;
                check_message(&self.me, self.media_refs, &m)?;
                if let Some(g) = &m.group_id {
                    self.last_group = (!g.is_empty()).then(|| g.clone());
                }
                let group = self.last_group.as_deref();
                import_message(tx, current, n, group, &m, &mut self.stats)?;
            }
            record::Item::Blocked(b) => {
                validate_handle(&b.handle).map_err(|e| bad(format_args!("blocked handle: {e}")))?;
                if b.handle == self.me {
                    return Err(bad("the account blocks itself"));
                }
                tx.execute(
                    "INSERT OR IGNORE INTO blocked (handle, at_ms) VALUES (?1, ?2)",
                    params![b.handle, to_sql_u64(b.at_ms)?],
                )?;
            }
            record::Item::Setting(s) => {
                if TRANSFERRED_SETTINGS.contains(&s.key.as_str()) {
                    tx.execute(
                        "INSERT OR IGNORE INTO kv (key, value) VALUES (?1, ?2)",
                        params![s.key, s.value],
                    )?;
                } else {
                    tracing::debug!("skipped an unknown setting in a history archive");
                }
            }
            record::Item::End(_) => return Err(bad("a second end record")),
        }
        Ok(())
    }

    fn check_end(&self, end: &End) -> Result<(), E2eError> {
        if end.conversations != self.conversations_read
            || end.messages != self.messages_read
            || end.records != self.records_read
        {
            return Err(bad(format_args!(
                "its end record counts {}/{}/{} conversations/messages/records, read {}/{}/{}",
                end.conversations,
                end.messages,
                end.records,
                self.conversations_read,
                self.messages_read,
                self.records_read
            )));
        }
        Ok(())
    }
}

/// A group chat's title without the `#` and a local `~N` suffix.
fn group_title(name: &str) -> &str {
    let name = name.strip_prefix('#').unwrap_or(name);
    match name.rsplit_once('~') {
        Some((title, n)) if !title.is_empty() && n.parse::<u32>().is_ok() => title,
        _ => name,
    }
}

/// The local conversation for an archived one (created if missing) and whether it was
/// created.
fn import_conversation(
    tx: &Connection,
    me: &str,
    c: &ArchivedConversation,
) -> Result<(String, bool), E2eError> {
    let suite = u16::try_from(c.suite)
        .ok()
        .and_then(Suite::from_code)
        .ok_or_else(|| bad(format_args!("unknown suite {:#06x}", c.suite)))?;
    if c.expire_timer_ms != 0 {
        crate::features::validate_timer(c.expire_timer_ms)
            .map_err(|e| bad(format_args!("conversation timer: {e}")))?;
    }
    let name = if crate::group::is_group_name(&c.name) {
        if c.group_id.is_empty() || c.group_id.len() > MAX_GROUP_ID_BYTES {
            return Err(bad("a group chat without a valid group id"));
        }
        crate::group::validate_title(group_title(&c.name))
            .map_err(|e| bad(format_args!("group chat name: {e}")))?;
        group_chat_name(tx, c)?
    } else {
        validate_handle(&c.name).map_err(|e| bad(format_args!("conversation name: {e}")))?;
        if c.name == me {
            return Err(bad("a conversation with the account itself"));
        }
        if !c.group_id.is_empty() {
            return Err(bad("a 1:1 conversation with a group id"));
        }
        c.name.clone()
    };
    let created = tx.execute(
        "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms, expire_timer_ms, request)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            suite.code(),
            to_sql_u64(c.created_at_ms)?,
            to_sql_u64(c.expire_timer_ms)?,
            c.request
        ],
    )? > 0;
    if !created {
        tx.execute(
            "UPDATE conversations SET expire_timer_ms = ?2 WHERE peer = ?1 AND expire_timer_ms = 0",
            params![name, to_sql_u64(c.expire_timer_ms)?],
        )?;
        if !c.request {
            // Accepted on the other device (a Welcome made it a request here).
            tx.execute(
                "UPDATE conversations SET request = 0 WHERE peer = ?1",
                params![name],
            )?;
        }
    }
    Ok((name, created))
}

/// The local name of an archived group chat: the conversation of its MLS group if this
/// device joined it; else its name, or `#TITLE~N`, whichever is first free or already
/// holds history of no joined group (an earlier import).
fn group_chat_name(tx: &Connection, c: &ArchivedConversation) -> Result<String, E2eError> {
    let joined: Option<String> = tx
        .query_row(
            "SELECT conversation FROM group_chats WHERE group_id = ?1",
            params![c.group_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(name) = joined {
        return Ok(name);
    }
    let title = group_title(&c.name);
    for n in 1u32..=1_000 {
        let candidate = if n == 1 {
            c.name.clone()
        } else {
            format!("#{title}~{n}")
        };
        let owner: Option<Option<Vec<u8>>> = tx
            .query_row(
                "SELECT (SELECT group_id FROM group_chats WHERE conversation = c.peer)
                 FROM conversations c WHERE c.peer = ?1",
                params![candidate],
                |r| r.get(0),
            )
            .optional()?;
        match owner {
            None | Some(None) => return Ok(candidate),
            Some(Some(_)) => {}
        }
    }
    Err(E2eError::Protocol(format!(
        "no free local name for group chat {}",
        c.name
    )))
}

fn check_message(me: &str, media_refs: bool, m: &ArchivedMessage) -> Result<(), E2eError> {
    if m.id.len() != MESSAGE_ID_BYTES {
        return Err(bad("a message id is not 16 bytes"));
    }
    validate_handle(&m.sender).map_err(|e| bad(format_args!("message sender: {e}")))?;
    let kind = i64::from(m.kind);
    if ![
        KIND_TEXT,
        KIND_GROUP_EVENT,
        KIND_RELAY_LINK,
        KIND_ATTACHMENT,
    ]
    .contains(&kind)
    {
        return Err(bad(format_args!("unknown message kind {}", m.kind)));
    }
    if m.outgoing != (m.sender == me) && kind != KIND_GROUP_EVENT {
        return Err(bad("a message whose direction does not match its sender"));
    }
    if m.body.len() > MAX_TEXT_BYTES {
        return Err(bad("a message text is too long"));
    }
    if !m.reply_to.is_empty() && m.reply_to.len() != MESSAGE_ID_BYTES {
        return Err(bad("a reply to a malformed message id"));
    }
    if m.group_id
        .as_ref()
        .is_some_and(|g| g.len() > MAX_GROUP_ID_BYTES)
    {
        return Err(bad("a message's group id is too long"));
    }
    match (&m.attachment, kind == KIND_ATTACHMENT) {
        (Some(a), true) => {
            if !media_refs {
                return Err(bad("an attachment in an archive without media"));
            }
            crate::attachments::check_incoming(a).map_err(bad)?;
        }
        (None, false) => {}
        (None, true) => return Err(bad("an attachment message without its attachment")),
        (Some(_), false) => return Err(bad("an attachment on a message of another kind")),
    }
    for r in &m.reactions {
        validate_handle(&r.reactor).map_err(|e| bad(format_args!("reactor: {e}")))?;
        if r.emoji.is_empty() {
            return Err(bad("an empty reaction"));
        }
        crate::features::validate_reaction(&r.emoji).map_err(bad)?;
    }
    if !m.receipts.is_empty() && !m.outgoing {
        return Err(bad("receipts for someone else's message"));
    }
    for r in &m.receipts {
        validate_handle(&r.member).map_err(|e| bad(format_args!("receipt member: {e}")))?;
        if !(1..=3).contains(&r.status) {
            return Err(bad(format_args!("receipt status {}", r.status)));
        }
    }
    Ok(())
}

fn import_message(
    tx: &Connection,
    conversation: &str,
    n: i64,
    group_id: Option<&[u8]>,
    m: &ArchivedMessage,
    stats: &mut HistoryStats,
) -> Result<(), E2eError> {
    let opt = |v: Option<u64>| v.map(to_sql_u64).transpose();
    let tombstoned: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM tombstones WHERE sender = ?1 AND id = ?2")?
        .query_row(params![m.sender, m.id], |r| r.get(0))?;
    if tombstoned > 0 {
        return Ok(()); // deleted for everyone before the archive came
    }
    let state = if m.outgoing {
        MessageState::Sent
    } else {
        MessageState::Received
    };
    let present: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM messages WHERE sender = ?1 AND id = ?2")?
        .query_row(params![m.sender, m.id], |r| r.get(0))?;
    if present > 0 {
        return Ok(()); // already here: live, or imported before
    }
    tx.prepare_cached(
        "INSERT INTO messages (n, id, conversation, sender, sender_device, group_id,
             sent_at_ms, received_at_ms, body, outgoing, state, kind, reply_to,
             edited_at_ms, expires_at_ms, view_once, read_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 0, ?16)",
    )?
    .execute(params![
        n,
        m.id,
        conversation,
        m.sender,
        m.sender_device,
        group_id,
        to_sql_u64(m.sent_at_ms)?,
        opt(m.received_at_ms)?,
        m.body,
        m.outgoing,
        state.to_i64(),
        i64::from(m.kind),
        (!m.reply_to.is_empty()).then_some(&m.reply_to),
        opt(m.edited_at_ms)?,
        opt(m.expires_at_ms)?,
        opt(m.read_at_ms)?,
    ])?;
    stats.messages += 1;
    let mut reaction = tx.prepare_cached(
        "INSERT OR IGNORE INTO reactions (message_sender, message_id, reactor, emoji, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &m.reactions {
        stats.reactions += reaction.execute(params![
            m.sender,
            m.id,
            r.reactor,
            r.emoji,
            to_sql_u64(r.at_ms)?
        ])? as u64;
    }
    let mut receipt = tx.prepare_cached(
        "INSERT INTO receipts (message_id, member, status, at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (message_id, member) DO UPDATE
         SET status = excluded.status, at_ms = excluded.at_ms
         WHERE excluded.status > receipts.status",
    )?;
    for r in &m.receipts {
        receipt.execute(params![m.id, r.member, r.status, to_sql_u64(r.at_ms)?])?;
    }
    if let Some(a) = &m.attachment {
        stats.attachments +=
            tx.prepare_cached(
                "INSERT OR IGNORE INTO attachments (sender, id, attachment, path, error)
                 VALUES (?1, ?2, ?3, NULL, NULL)",
            )?
            .execute(params![m.sender, m.id, a.encode_to_vec()])? as u64;
    }
    Ok(())
}

// ------------------------------------------------------------------ the Profile API

impl Profile {
    /// Writes every conversation's history as an archive (streamed record by record; see
    /// the `history` module docs for the format and what is left out). For another
    /// device of this account only: it holds attachment keys; encrypt it in transit.
    pub fn export_history(
        &self,
        out: &mut dyn Write,
        opts: &HistoryOptions,
    ) -> Result<HistoryStats, E2eError> {
        let (me, _) = self.me()?;
        let now = opts.now_ms.unwrap_or_else(system_now_ms);
        let filter = (
            to_sql_u64(now)?,
            opts.since_ms.map(to_sql_u64).transpose()?,
            opts.include_media_refs,
        );
        // One snapshot for the whole export (a read transaction; nothing is written).
        let tx = self.conn.unchecked_transaction()?;
        let conversations: Vec<ArchivedConversation> = {
            let mut stmt = tx.prepare(
                "SELECT c.peer, (SELECT g.group_id FROM group_chats g WHERE g.conversation = c.peer),
                        c.suite, c.created_at_ms, c.expire_timer_ms, c.request
                 FROM conversations c ORDER BY c.created_at_ms, c.peer",
            )?;
            let rows = stmt.query_map([], |r| {
                let suite: i64 = r.get(2)?;
                Ok(ArchivedConversation {
                    name: r.get(0)?,
                    group_id: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    suite: u32::try_from(suite).unwrap_or(0),
                    created_at_ms: from_sql_u64(r.get(3)?),
                    expire_timer_ms: from_sql_u64(r.get(4)?),
                    request: r.get::<_, i64>(5)? != 0,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let messages: i64 = {
            let mut stmt =
                tx.prepare(&format!("SELECT COUNT(*) FROM messages m WHERE {EXPORTED}"))?;
            let mut total = 0;
            for c in &conversations {
                let (now, since, media) = filter;
                total +=
                    stmt.query_row(params![c.name, now, since, media], |r| r.get::<_, i64>(0))?;
            }
            total
        };
        let mut w = Writer::new(out);
        w.write(&Header {
            format: HISTORY_FORMAT.into(),
            version: HISTORY_VERSION,
            handle: me.handle.clone(),
            account_key: me.account_key.to_vec(),
            device_id: me.device_id,
            created_at_ms: now,
            conversations: conversations.len() as u64,
            messages: from_sql_u64(messages),
            media_refs: opts.include_media_refs,
            since_ms: opts.since_ms,
            archive_id: {
                let mut id = vec![0u8; ARCHIVE_ID_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut id);
                id
            },
        })?;
        let mut stats = HistoryStats::default();
        for c in conversations {
            let name = c.name.clone();
            w.record(record::Item::Conversation(c))?;
            stats.conversations += 1;
            export_conversation(&tx, &mut w, &mut stats, &me.handle, &name, &filter)?;
        }
        if stats.messages != from_sql_u64(messages) {
            return Err(E2eError::Storage(
                "the history changed during its export".into(),
            ));
        }
        let blocked: Vec<(String, i64)> = {
            let mut stmt = tx.prepare("SELECT handle, at_ms FROM blocked ORDER BY handle")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (handle, at) in blocked {
            w.record(record::Item::Blocked(ArchivedBlocked {
                handle,
                at_ms: from_sql_u64(at),
            }))?;
        }
        for key in TRANSFERRED_SETTINGS {
            if let Some(value) = crate::store::kv_get(&tx, key)? {
                w.record(record::Item::Setting(ArchivedSetting {
                    key: (*key).to_string(),
                    value,
                }))?;
            }
        }
        let end = End {
            conversations: stats.conversations,
            messages: stats.messages,
            records: w.records,
        };
        w.record(record::Item::End(end))?;
        w.out.flush()?;
        stats.bytes = w.bytes;
        drop(tx); // read-only: rolled back
        Ok(stats)
    }

    /// Imports an archive written by [`Profile::export_history`] on another device of
    /// THE SAME account (same handle and account key), in transactions of
    /// [`IMPORT_BATCH_RECORDS`] records. Idempotent: a message already present (same
    /// sender + id) is skipped, so importing twice or importing messages this device also
    /// received live changes nothing. A malformed or truncated archive is an error; the
    /// batches before the bad record stay imported, each consistent, and importing the
    /// whole archive again completes them. `input` must end where the archive ends (it
    /// is read ahead, and bytes after the end record are an error).
    pub fn import_history(&mut self, input: &mut dyn Read) -> Result<HistoryStats, E2eError> {
        let (me, _) = self.me()?;
        let (handle, account_key) = (me.handle.clone(), me.account_key);
        let mut reader = Reader::new(input);
        let header = reader.header()?;
        if header.handle != handle || header.account_key.as_slice() != account_key.as_slice() {
            return Err(bad("it is another account's history"));
        }
        let announced = i64::try_from(header.messages)
            .ok()
            .filter(|n| *n <= i64::MAX / 4)
            .ok_or_else(|| bad("an impossible message count"))?;
        if header.archive_id.len() != ARCHIVE_ID_BYTES {
            return Err(bad("its id is not 16 bytes"));
        }
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Imported messages go before everything stored here, in archive order; an
        // archive imported again (after an error) keeps its place.
        let base_key = format!("{KV_IMPORT_BASE}{}", hex::encode(&header.archive_id));
        let next_n = match crate::store::kv_get(&tx, &base_key)? {
            Some(base) => base,
            None => {
                let lowest: i64 =
                    tx.query_row("SELECT COALESCE(MIN(n), 1) FROM messages", [], |r| r.get(0))?;
                let base = lowest
                    .min(1)
                    .checked_sub(announced + 1)
                    .ok_or_else(|| E2eError::Storage("message numbering exhausted".into()))?;
                crate::store::kv_set(&tx, &base_key, base)?;
                base
            }
        };
        let mut imp = Importer {
            me: handle,
            media_refs: header.media_refs,
            next_n,
            announced: header.messages,
            current: None,
            last_group: None,
            conversations_read: 0,
            messages_read: 0,
            records_read: 0,
            stats: HistoryStats::default(),
        };
        let mut in_batch = 0usize;
        loop {
            let Some(item) = reader.record()? else {
                return Err(truncated("no end record"));
            };
            if let record::Item::End(end) = item {
                imp.check_end(&end)?;
                break;
            }
            imp.apply(&tx, item)?;
            in_batch += 1;
            if in_batch >= IMPORT_BATCH_RECORDS {
                tx.commit()?;
                tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                in_batch = 0;
            }
        }
        if reader.next_frame()?.is_some() {
            return Err(bad("data after its end record"));
        }
        tx.commit()?;
        imp.stats.bytes = reader.bytes;
        Ok(imp.stats)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::path::Path;
    use std::time::Instant;

    use super::*;

    const URL: &str = "https://127.0.0.1:1";

    /// Two devices of one account, `alice/1` and `alice/2`, linked with the profile's
    /// linking API (no server: the ids are given).
    fn devices(root: &Path) -> (Profile, Profile) {
        let mut one =
            Profile::open(&root.join("one"), &crate::StoreKey::from_bytes([7; 32])).unwrap();
        one.create_identity("alice", 1_000).unwrap();
        one.complete_registration(URL, None, 1).unwrap();
        let two = linked(root, &one, "two", 2);
        (one, two)
    }

    fn linked(root: &Path, one: &Profile, dir: &str, device_id: u32) -> Profile {
        let mut two =
            Profile::open(&root.join(dir), &crate::StoreKey::from_bytes([7; 32])).unwrap();
        let key = two.begin_link(2_000).unwrap();
        let cert = one.certify_device(&key, 2_000).unwrap();
        two.complete_link(&one.link_secrets().unwrap(), device_id, &cert, URL, None)
            .unwrap();
        two
    }

    /// A history row as the inbox or outbox leaves it.
    struct Row<'a> {
        conversation: &'a str,
        sender: &'a str,
        seq: u32,
        body: String,
        state: MessageState,
        kind: i64,
        view_once: i64,
        expires_at_ms: Option<i64>,
    }

    fn row<'a>(conversation: &'a str, sender: &'a str, seq: u32) -> Row<'a> {
        Row {
            conversation,
            sender,
            seq,
            body: format!("message {seq} from {sender}"),
            state: if sender == "alice" {
                MessageState::Sent
            } else {
                MessageState::Received
            },
            kind: KIND_TEXT,
            view_once: 0,
            expires_at_ms: None,
        }
    }

    fn id_of(seq: u32) -> [u8; 16] {
        let mut id = [0x01; 16];
        id[12..].copy_from_slice(&seq.to_be_bytes());
        id
    }

    fn insert(conn: &Connection, r: &Row<'_>) -> String {
        conn.execute(
            "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, 1)",
            params![r.conversation, Suite::XWing.code()],
        )
        .unwrap();
        let own = r.sender == "alice";
        let id = id_of(r.seq);
        conn.execute(
            "INSERT INTO messages (id, conversation, sender, sender_device, group_id,
                 sent_at_ms, received_at_ms, body, outgoing, state, kind, view_once,
                 expires_at_ms)
             VALUES (?1, ?2, ?3, 1, ?12, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                &id[..],
                r.conversation,
                r.sender,
                10_000 + i64::from(r.seq),
                (!own).then_some(20_000 + i64::from(r.seq)),
                r.body,
                own,
                r.state.to_i64(),
                r.kind,
                r.view_once,
                r.expires_at_ms,
                // A 32-byte MLS group id per conversation, like real ones.
                format!("{:<32}", r.conversation).as_bytes()
            ],
        )
        .unwrap();
        crate::profile::uuid_text(&id)
    }

    fn attach(conn: &Connection, sender: &str, seq: u32) {
        let a = wire::Attachment {
            blob_id: vec![9; 32].into(),
            key: vec![8; 32].into(),
            ciphertext_sha256: vec![7; 32].into(),
            plaintext_sha256: vec![6; 32].into(),
            size: 5,
            ciphertext_size: 21,
            nonce_prefix: vec![5; 19].into(),
            chunk_size: 65_536,
            file_name: "f.txt".into(),
            ..Default::default()
        };
        conn.execute(
            "INSERT INTO attachments (sender, id, attachment, path) VALUES (?1, ?2, ?3, '/x')",
            params![sender, &id_of(seq)[..], a.encode_to_vec()],
        )
        .unwrap();
    }

    fn export(p: &Profile, opts: &HistoryOptions) -> (Vec<u8>, HistoryStats) {
        let mut out = Vec::new();
        let stats = p.export_history(&mut out, opts).unwrap();
        (out, stats)
    }

    fn at(now_ms: u64) -> HistoryOptions {
        HistoryOptions {
            now_ms: Some(now_ms),
            ..HistoryOptions::default()
        }
    }

    fn texts(p: &Profile, conversation: &str) -> Vec<String> {
        p.history(conversation)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    fn archive_error(e: &E2eError) -> &str {
        match e {
            E2eError::InvalidArchive(m) => m,
            other => panic!("not an archive error: {other}"),
        }
    }

    #[test]
    fn only_what_the_user_keeps_is_exported() {
        let root = tempfile::tempdir().unwrap();
        let (one, mut two) = devices(root.path());
        let kept = [
            insert(&one.conn, &row("bob", "alice", 1)),
            insert(&one.conn, &row("bob", "bob", 2)),
            insert(
                &one.conn,
                &Row {
                    expires_at_ms: Some(50_001),
                    ..row("bob", "bob", 3)
                },
            ),
        ];
        let left_out = [
            insert(
                &one.conn,
                &Row {
                    state: MessageState::Queued,
                    ..row("bob", "alice", 10)
                },
            ),
            insert(
                &one.conn,
                &Row {
                    state: MessageState::Failed,
                    ..row("bob", "alice", 11)
                },
            ),
            insert(
                &one.conn,
                &Row {
                    view_once: 1,
                    ..row("bob", "bob", 12)
                },
            ),
            insert(
                &one.conn,
                &Row {
                    view_once: 2,
                    body: String::new(),
                    ..row("bob", "bob", 13)
                },
            ),
            insert(
                &one.conn,
                &Row {
                    expires_at_ms: Some(50_000),
                    ..row("bob", "bob", 14)
                },
            ),
            // Sent, but its item is still in the outbox (resolved later).
            insert(&one.conn, &row("bob", "alice", 15)),
            // An attachment message whose attachment was erased.
            insert(
                &one.conn,
                &Row {
                    kind: KIND_ATTACHMENT,
                    ..row("bob", "bob", 16)
                },
            ),
        ];
        one.conn
            .execute(
                "INSERT INTO outbox (ord, kind, conversation, item_id, message_id)
                 VALUES (1, 'text', 'bob', ?1, ?1)",
                params![&id_of(15)[..]],
            )
            .unwrap();
        let file = insert(
            &one.conn,
            &Row {
                kind: KIND_ATTACHMENT,
                body: "caption".into(),
                ..row("bob", "bob", 20)
            },
        );
        attach(&one.conn, "bob", 20);

        // Without media: the file's message stays behind too.
        let (bytes, stats) = export(
            &one,
            &HistoryOptions {
                include_media_refs: false,
                ..at(50_000)
            },
        );
        assert_eq!((stats.messages, stats.attachments), (3, 0));
        two.import_history(&mut bytes.as_slice()).unwrap();
        let got: Vec<String> = two
            .history("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(got, kept);
        for id in &left_out {
            assert!(two.find_message(id).is_err(), "{id} was exported");
        }
        assert!(two.find_message(&file).is_err());

        // With media (the default), and later: message 3 expired meanwhile.
        let (bytes, stats) = export(&one, &at(50_001));
        assert_eq!((stats.messages, stats.attachments), (3, 1));
        let mut three = linked(root.path(), &one, "three", 3);
        three.import_history(&mut bytes.as_slice()).unwrap();
        assert!(three.find_message(&kept[2]).is_err());
        let record = three.attachment("bob", &file).unwrap().unwrap();
        assert_eq!(record.wire.key.as_ref(), &[8; 32]);
        assert_eq!(record.info.path, None, "local paths stay on their device");
        assert_eq!(three.pending_downloads().unwrap().len(), 1);

        // since_ms: only what was stored from then on (received time, own: send time).
        let (bytes, stats) = export(
            &one,
            &HistoryOptions {
                since_ms: Some(20_002),
                ..at(50_000)
            },
        );
        assert_eq!(stats.messages, 3, "bob 2, bob 3 and the file");
        let mut four = linked(root.path(), &one, "four", 4);
        four.import_history(&mut bytes.as_slice()).unwrap();
        assert!(four.find_message(&kept[0]).is_err());
    }

    #[test]
    fn imports_go_before_live_messages_and_skip_what_is_here() {
        let root = tempfile::tempdir().unwrap();
        let (one, mut two) = devices(root.path());
        for seq in 1..=4 {
            insert(
                &one.conn,
                &row("bob", if seq % 2 == 0 { "bob" } else { "alice" }, seq),
            );
        }
        // alice/2 already has message 4 (received live after linking) and a newer one.
        insert(&two.conn, &row("bob", "bob", 4));
        insert(&two.conn, &row("bob", "bob", 5));
        // Group ids change within a conversation (message 2: none, 3: another group).
        one.conn
            .execute(
                "UPDATE messages SET group_id = NULL WHERE id = ?1",
                params![&id_of(2)[..]],
            )
            .unwrap();
        one.conn
            .execute(
                "UPDATE messages SET group_id = X'0102' WHERE id = ?1",
                params![&id_of(3)[..]],
            )
            .unwrap();
        let (bytes, _) = export(&one, &at(0));
        let stats = two.import_history(&mut bytes.as_slice()).unwrap();
        assert_eq!((stats.conversations, stats.messages), (0, 3));
        let groups = |p: &Profile| -> Vec<Option<Vec<u8>>> {
            let mut stmt = p
                .conn
                .prepare("SELECT group_id FROM messages WHERE id != ?1 ORDER BY n")
                .unwrap();
            stmt.query_map(params![&id_of(5)[..]], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(groups(&two), groups(&one));
        assert_eq!(groups(&two)[1], None);
        assert_eq!(groups(&two)[2].as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(
            texts(&two, "bob"),
            [
                "message 1 from alice",
                "message 2 from bob",
                "message 3 from alice",
                "message 4 from bob",
                "message 5 from bob"
            ]
        );
        let own = &two.history("bob").unwrap()[0];
        assert!(own.outgoing && own.state == MessageState::Sent && own.from == "alice");
        // Again: nothing changes.
        let stats = two.import_history(&mut bytes.as_slice()).unwrap();
        assert_eq!(stats.messages + stats.conversations + stats.reactions, 0);
        assert_eq!(texts(&two, "bob").len(), 5);
    }

    #[test]
    fn a_cut_archive_keeps_whole_batches_and_resumes_in_place() {
        let root = tempfile::tempdir().unwrap();
        let (one, mut two) = devices(root.path());
        let total = 2_500u32;
        for seq in 1..=total {
            insert(&one.conn, &row("bob", "bob", seq));
            one.conn
                .execute(
                    "INSERT INTO reactions (message_sender, message_id, reactor, emoji, at_ms)
                     VALUES ('bob', ?1, 'alice', 'x', 1)",
                    params![&id_of(seq)[..]],
                )
                .unwrap();
        }
        let (bytes, stats) = export(&one, &at(0));
        assert_eq!((stats.messages, stats.reactions), (2_500, 2_500));
        let e = two
            .import_history(&mut &bytes[..bytes.len() - 40])
            .unwrap_err();
        assert!(archive_error(&e).contains("truncated"), "{e}");
        // Two whole batches stayed: the conversation and 1,999 messages, each with its
        // reaction.
        let kept = two.history("bob").unwrap();
        assert_eq!(kept.len(), 2 * IMPORT_BATCH_RECORDS - 1);
        assert_eq!(
            two.reactions("bob").unwrap().len(),
            2 * IMPORT_BATCH_RECORDS - 1
        );
        // The whole archive completes it, in order.
        let stats = two.import_history(&mut bytes.as_slice()).unwrap();
        assert_eq!(stats.messages, 501);
        let all: Vec<String> = two
            .history("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        let expected: Vec<String> = one
            .history("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn malformed_archives_are_precise_errors() {
        let root = tempfile::tempdir().unwrap();
        let (one, mut two) = devices(root.path());
        insert(&one.conn, &row("bob", "bob", 1));
        let (bytes, _) = export(&one, &at(0));

        let e = two.import_history(&mut &b""[..]).unwrap_err();
        assert!(archive_error(&e).contains("truncated"), "{e}");
        let e = two.import_history(&mut &b"hello world"[..]).unwrap_err();
        archive_error(&e);
        // A length beyond the record limit is refused before anything is read.
        let e = two
            .import_history(&mut &[0xff, 0xff, 0xff, 0x7f][..])
            .unwrap_err();
        assert!(archive_error(&e).contains("exceeds"), "{e}");
        // No record over the limit is ever written.
        let mut sink = Vec::new();
        let huge = ArchivedSetting {
            key: "k".repeat(MAX_HISTORY_RECORD_BYTES),
            value: 1,
        };
        assert!(Writer::new(&mut sink).write(&huge).is_err());
        // Without its end record.
        let mut w = Vec::new();
        let mut writer = Writer::new(&mut w);
        let mut input = bytes.as_slice();
        let mut r = Reader::new(&mut input);
        writer.write(&r.header().unwrap()).unwrap();
        while let Some(item) = r.record().unwrap() {
            if !matches!(item, record::Item::End(_)) {
                writer.record(item).unwrap();
            }
        }
        writer.out.flush().unwrap();
        drop(writer);
        let e = two.import_history(&mut w.as_slice()).unwrap_err();
        assert!(archive_error(&e).contains("no end record"), "{e}");
        // Another version.
        let mut input = bytes.as_slice();
        let mut header = Reader::new(&mut input).header().unwrap();
        header.version = 2;
        let e = two
            .import_history(&mut header.encode_length_delimited_to_vec().as_slice())
            .unwrap_err();
        assert!(archive_error(&e).contains("version 2"), "{e}");
        // Someone else's: the same handle with another account key.
        let stranger_root = tempfile::tempdir().unwrap();
        let (other, _) = devices(stranger_root.path());
        insert(&other.conn, &row("mallory", "mallory", 9));
        let (foreign, _) = export(&other, &at(0));
        let e = two.import_history(&mut foreign.as_slice()).unwrap_err();
        assert!(archive_error(&e).contains("another account"), "{e}");
        assert!(two.conversations().unwrap().is_empty());
    }

    fn group_chat(conn: &Connection, name: &str, group_id: &[u8]) {
        conn.execute(
            "INSERT INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, 1)",
            params![name, Suite::Classic.code()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO group_chats (group_id, conversation) VALUES (?1, ?2)",
            params![group_id, name],
        )
        .unwrap();
    }

    #[test]
    fn conversations_map_to_local_ones_and_settings_come_along() {
        let root = tempfile::tempdir().unwrap();
        let (mut one, mut two) = devices(root.path());
        group_chat(&one.conn, "#team", b"G1");
        group_chat(&one.conn, "#club", b"G2");
        insert(&one.conn, &row("#team", "bob", 1));
        insert(&one.conn, &row("#club", "carol", 2));
        insert(&one.conn, &row("bob", "bob", 3));
        one.conn
            .execute(
                "UPDATE conversations SET expire_timer_ms = 3600000 WHERE peer = 'bob'",
                [],
            )
            .unwrap();
        one.block("mallory", 5).unwrap();
        one.set_read_receipts(false).unwrap();
        one.set_presence_share(crate::PresenceShare::Nobody)
            .unwrap();
        // alice/2 joined G1 (named '#team~2' here), has another '#club', and a Welcome
        // made bob's conversation a request.
        group_chat(&two.conn, "#team~2", b"G1");
        group_chat(&two.conn, "#club", b"G3");
        two.conn
            .execute(
                "INSERT INTO conversations (peer, suite, created_at_ms, request)
                 VALUES ('bob', ?1, 7, 1)",
                params![Suite::XWing.code()],
            )
            .unwrap();

        let (bytes, _) = export(&one, &at(0));
        let stats = two.import_history(&mut bytes.as_slice()).unwrap();
        assert_eq!(stats.conversations, 1, "only '#club~2' is new");
        assert_eq!(texts(&two, "#team~2"), ["message 1 from bob"]);
        assert!(texts(&two, "#club").is_empty());
        assert_eq!(texts(&two, "#club~2"), ["message 2 from carol"]);
        assert!(!two.is_request("bob").unwrap());
        assert_eq!(two.timer("bob").unwrap(), 3_600_000);
        assert_eq!(two.blocked().unwrap(), ["mallory"]);
        assert!(!two.read_receipts().unwrap());
        assert_eq!(two.presence_share().unwrap(), crate::PresenceShare::Nobody);
        // The block is the account's: it is not sent to the server again.
        assert_eq!(two.next_server_request().unwrap(), None);

        // Again: same places, nothing new.
        let stats = two.import_history(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            stats,
            HistoryStats {
                bytes: stats.bytes,
                ..HistoryStats::default()
            }
        );
        let mut names: Vec<String> = two
            .conversations()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        assert_eq!(names, ["#club", "#club~2", "#team~2", "bob"]);
    }

    /// 100 conversations x 100 messages: archive size and export/import times (printed;
    /// run with `--nocapture`).
    #[test]
    fn ten_thousand_messages_stream_through() {
        let root = tempfile::tempdir().unwrap();
        let (mut one, mut two) = devices(root.path());
        let peers: Vec<String> = (0..100).map(|i| format!("friend{i:03}")).collect();
        {
            let tx = one.conn.transaction().unwrap();
            let mut seq = 0;
            for peer in &peers {
                for k in 0..100u32 {
                    seq += 1;
                    let sender = if k % 2 == 0 { "alice" } else { peer.as_str() };
                    // Typical chat texts: 20 to 120 bytes.
                    let body = "lorem ipsum dolor sit amet ".repeat(1 + (seq as usize % 4));
                    insert(
                        &tx,
                        &Row {
                            body,
                            ..row(peer, sender, seq)
                        },
                    );
                    if k % 10 == 0 {
                        tx.execute(
                            "INSERT INTO reactions (message_sender, message_id, reactor, emoji,
                                 at_ms) VALUES (?1, ?2, ?3, '👍', 1)",
                            params![sender, &id_of(seq)[..], peer],
                        )
                        .unwrap();
                    }
                }
            }
            tx.commit().unwrap();
        }
        let started = Instant::now();
        let mut archive = Vec::new();
        let out = one.export_history(&mut archive, &at(0)).unwrap();
        let exported = started.elapsed();
        let started = Instant::now();
        let stats = two.import_history(&mut archive.as_slice()).unwrap();
        let imported = started.elapsed();
        assert_eq!((out.conversations, out.messages), (100, 10_000));
        assert_eq!((stats.conversations, stats.messages), (100, 10_000));
        assert_eq!(stats.reactions, 1_000);
        assert_eq!(stats.bytes, archive.len() as u64);
        println!(
            "history 100 x 100: {} bytes ({:.1} per message), export {:?}, import {:?}",
            archive.len(),
            archive.len() as f64 / 10_000.0,
            exported,
            imported
        );
    }
}
