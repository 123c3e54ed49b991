//! Hushwire's end-to-end encryption: identities, devices and 1:1 conversations over
//! MLS (RFC 9420, via OpenMLS 0.9), plus the client's local store.
//!
//! This crate does **no network I/O**. A [`Profile`] is a deterministic state machine
//! over one SQLite database; the client library drives it:
//!
//! - registration: [`Profile::create_identity`] → server → [`Profile::complete_registration`],
//!   then [`Profile::key_packages`] to upload;
//! - sending: [`Profile::queue_text`] / [`Profile::queue_relay_link`] /
//!   [`Profile::queue_self_update`] fill the outbox;
//!   the client loops on [`Profile::next_action`] (`Submit` it, `NeedPeer` → claim key
//!   packages and call [`Profile::provide_peer`], `AwaitIncoming` → keep receiving,
//!   `Idle`) and reports each server answer with [`Profile::submit_result`];
//! - receiving: every mailbox [`Envelope`](hushwire_proto::wire::Envelope) goes through
//!   [`Profile::receive`] (idempotent by `seq`); on [`E2eError::NeedAccount`] fetch the
//!   account, call [`Profile::learn_account`] and retry.
//!
//! # Where things live
//! - [`keys`]: secret key types (zeroized, redacted `Debug`).
//! - `store`: the database: schema migrations (`PRAGMA user_version`), the OpenMLS
//!   provider built per operation over the profile's single connection.
//! - `profile`: opening, identity, accounts (TOFU pinning) and member authentication.
//! - `outbox`: queueing, group creation, commits and the `Submit`s.
//! - `inbox`: processing envelopes (Welcome, commits, application messages, buffering).
//! - `attachments`: uploads in progress ([`Profile::create_upload`] …
//!   [`Profile::finish_upload`]) and the attachments of messages (pending downloads,
//!   saved paths, final errors); the files themselves are the client's business.
//! - `devices`: several devices per account: the signed device list (pinned per
//!   account, only listed devices are ever added), device names, linking and removal.
//! - `features`: receipts, reactions, replies, edits, deletes, disappearing and view-once
//!   messages, typing and presence (ephemeral signals), message requests, blocking and
//!   settings.
//!
//! # Invariants
//! - Every OpenMLS operation runs inside one `BEGIN IMMEDIATE` transaction together with
//!   the app rows it implies (history, outbox, `last_received_seq`). `MlsGroup`s are
//!   never cached across operations: each operation loads the group from storage, so a
//!   rollback can never leave a stale in-memory group behind.
//! - A pending commit is merged only after the server accepted it.
//! - Every leaf of every group is `BasicCredential("{handle}/{device_id}")` whose
//!   signature key is a device key certified by that handle's pinned account key.
//!
//! The store is encrypted at rest with SQLCipher (database, WAL and journals; temporary
//! tables stay in memory) under a [`StoreKey`] the caller supplies; the `hushwire-vault`
//! crate keeps that key wrapped under the OS keyring or an Argon2id passphrase.

mod attachments;
mod backup;
mod backup_schedule;
mod devices;
mod directory;
mod error;
mod features;
pub mod group;
mod group_ops;
mod history;
mod inbox;
pub mod keys;
mod outbox;
mod profile;
mod safety;
mod store;

/// The exact MLS configuration the profiles use, for benchmarks that measure it on bare
/// OpenMLS groups (`examples/group_costs.rs`). Not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::group::meta_extensions;
    pub use crate::outbox::{group_config_with, leaf_capabilities};
}

pub use attachments::{
    AttachmentInfo, AttachmentRecord, MAX_FILE_NAME_BYTES, MAX_MIME_BYTES, MAX_THUMBNAIL_BYTES,
    NewUpload, PendingUpload,
};
pub use backup::{BackupOptions, RestoreSummary, RestoredAccount, RestoredConversation};
pub use backup_schedule::{BACKUP_KEY_BYTES, BackupScheduleRow};
pub use devices::{
    DeviceListEdit, DeviceListNews, LinkChannel, LinkSecrets, MAX_DEVICE_NAME_BYTES, OwnDevice,
    validate_device_name, verify_device_list,
};
pub use directory::DirectoryCheck;
pub use error::{E2eError, MlsError};
pub use features::{
    DeleteScope, EPHEMERAL_BUDGET, EphemeralOut, EphemeralReceived, MAX_DELIVERED_RECEIPT_DEVICES,
    PresenceInfo, PresenceShare, Reaction, Receipt, ReceiptStatus, RequestSummary, ServerRequest,
    parse_message_id, validate_reaction, validate_timer,
};
pub use group::{GroupDetails, GroupEvent, GroupEventKind, GroupMember};
pub use group_ops::{MissingOwnDevices, Unjoined};
pub use history::{
    HISTORY_FORMAT, HISTORY_VERSION, HistoryOptions, HistoryStats, IMPORT_BATCH_RECORDS,
    MAX_HISTORY_RECORD_BYTES,
};
pub use keys::StoreKey;
pub use profile::{GroupStatus, PROFILE_DB, Profile};
pub use safety::{SafetyNumber, safety_number};
pub use store::open_encrypted;

use openmls::prelude::Ciphersuite;

/// The MLS ciphersuites a conversation can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// 0x004F `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519`: X-Wing-style hybrid
    /// (ML-KEM-768 + X25519) post-quantum KEM. The default for new conversations.
    #[default]
    XWing,
    /// 0x0001 `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`.
    Classic,
}

impl Suite {
    /// The MLS code point.
    pub fn code(self) -> u16 {
        match self {
            Suite::XWing => 0x004F,
            Suite::Classic => 0x0001,
        }
    }

    /// The suite for a code point, if supported.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0x004F => Some(Suite::XWing),
            0x0001 => Some(Suite::Classic),
            _ => None,
        }
    }

    /// The OpenMLS ciphersuite.
    #[doc(hidden)]
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Suite::XWing => Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
            Suite::Classic => Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        }
    }

    pub(crate) fn from_ciphersuite(cs: Ciphersuite) -> Option<Self> {
        Self::from_code(u16::from(cs))
    }
}

/// The profile's identity once registration completed. Keys here are PUBLIC keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account's handle.
    pub handle: String,
    /// Server-assigned device id.
    pub device_id: u32,
    /// The server's base URL.
    pub server_url: String,
    /// The server's certificate pin (`sha256:<hex>`), if any.
    pub pin: Option<String>,
    /// The account's Ed25519 public key.
    pub account_key: [u8; 32],
    /// This device's Ed25519 public key (also its MLS signature key).
    pub device_key: [u8; 32],
}

/// What to send to `POST /v1/register`.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The account's Ed25519 public key.
    pub account_key: [u8; 32],
    /// This device's certificate.
    pub device: hushwire_proto::wire::DeviceCertificate,
}

/// What the client should do next for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to send.
    Idle,
    /// The head of the outbox waits for an incoming commit (after `StaleEpoch`): keep
    /// receiving.
    AwaitIncoming,
    /// Claim key packages of `handle` for `suite` (and fetch its `AccountInfo`), then call
    /// [`Profile::provide_peer`].
    NeedPeer {
        /// The peer's handle.
        handle: String,
        /// The ciphersuite to claim key packages for.
        suite: Suite,
    },
    /// Send this, then report the server's answer with [`Profile::submit_result`]. The same
    /// bytes are returned until it is resolved.
    Submit(hushwire_proto::wire::Submit),
    /// A group operation needs members' devices: fetch each handle's `AccountInfo` and
    /// claim its key packages for `suite`, then call [`Profile::provide_members`].
    NeedMembers {
        /// The group chat.
        conversation: String,
        /// The handles (this account's own handle too, for its other devices).
        handles: Vec<String>,
        /// The group's suite.
        suite: Suite,
    },
    /// A rejoin needs the group's GroupInfo from the server
    /// (`GET /v1/groups/{hex}/info`): call [`Profile::provide_group_info`].
    NeedGroupInfo {
        /// The group chat.
        conversation: String,
        /// The MLS group id.
        group_id: Vec<u8>,
    },
}

/// Delivery state of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Own message not yet accepted by the server.
    Queued,
    /// Own message accepted by the server.
    Sent,
    /// A message from someone else.
    Received,
    /// Own message the server rejected.
    Failed,
}

impl MessageState {
    pub(crate) fn to_i64(self) -> i64 {
        match self {
            MessageState::Queued => 0,
            MessageState::Sent => 1,
            MessageState::Received => 2,
            MessageState::Failed => 3,
        }
    }
    pub(crate) fn from_i64(v: i64) -> Self {
        match v {
            0 => MessageState::Queued,
            1 => MessageState::Sent,
            2 => MessageState::Received,
            _ => MessageState::Failed,
        }
    }
}

/// A message in a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message id (UUID, hyphenated).
    pub id: String,
    /// The conversation: the peer's handle.
    pub conversation: String,
    /// The sender's handle.
    pub from: String,
    /// The sender's clock.
    pub sent_at_ms: u64,
    /// When this device stored it (received messages only).
    pub received_at_ms: Option<u64>,
    /// The text.
    pub text: String,
    /// Sent by this account (this or another of its devices).
    pub outgoing: bool,
    /// Delivery state.
    pub state: MessageState,
    /// A reply: the id of the message it quotes.
    pub reply_to: Option<String>,
    /// A view-once message (its `text` is always empty here: see
    /// [`Profile::view_once`]).
    pub view_once: bool,
    /// A received view-once message that was opened (its content is erased).
    pub viewed: bool,
    /// A disappearing message: when it is deleted.
    pub expires_at_ms: Option<u64>,
    /// When it was last edited.
    pub edited_at_ms: Option<u64>,
}

/// One entry of a conversation's timeline ([`Profile::timeline`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineItem {
    /// A text.
    Message(StoredMessage),
    /// A group chat's membership or metadata change.
    Group(GroupEvent),
    /// A volunteer relay's link someone shared (`text` is the link, secret included:
    /// show it to the user, never log it).
    RelayLink(StoredMessage),
    /// A message carrying a file (`text` is its caption).
    Attachment(StoredMessage, AttachmentInfo),
}

/// One line of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The peer's handle.
    pub name: String,
    /// The latest message's time, if any.
    pub last_message_at_ms: Option<u64>,
    /// Number of messages in the history (there is no read marker yet).
    pub message_count: u64,
    /// The suite new groups of this conversation use.
    pub suite: Suite,
    /// The disappearing-messages timer (0: off).
    pub expire_timer_ms: u64,
    /// An unanswered message request.
    pub request: bool,
}

/// Something that happened while processing input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new message was stored.
    Message(StoredMessage),
    /// A relay link shared by a contact was stored (`text` is the link, its secret
    /// included: show it, never log it). It is not added to any route until the user
    /// accepts it ([`Profile::shared_relay_link`]).
    RelayLink(StoredMessage),
    /// A new conversation (or a new group of it) appeared from a Welcome.
    ConversationStarted {
        /// The peer's handle.
        conversation: String,
    },
    /// An envelope could not be processed; it was recorded and skipped.
    Undecryptable {
        /// The conversation, when known.
        conversation: Option<String>,
        /// Why (no plaintext, no key material).
        reason: String,
    },
    /// The server accepted an own message.
    Sent {
        /// The message id.
        id: String,
    },
    /// A group chat's membership or metadata changed (also stored in its timeline).
    Group(GroupEvent),
    /// The server rejected one of our group operations (it was dropped).
    GroupOperationFailed {
        /// The group chat.
        conversation: String,
        /// The server's reason.
        reason: String,
    },
    /// The server rejected an own message; it is marked failed.
    SendFailed {
        /// The message id.
        id: String,
        /// The server's reason.
        reason: String,
    },
    /// A message carrying a file was stored (`text` is its caption). The file is not
    /// downloaded yet: it is pending ([`Profile::pending_downloads`]).
    Attachment(StoredMessage, AttachmentInfo),
    /// Someone who is not a contact wrote for the first time: the conversation is a
    /// message request (the message itself follows as its own event).
    Request {
        /// The conversation (the requester's handle).
        conversation: String,
        /// The requester.
        from: String,
    },
    /// A member's receipt for one of this account's messages.
    Receipt {
        /// The conversation.
        conversation: String,
        /// The message it is for.
        message_id: String,
        /// The member.
        from: String,
        /// Delivered, read or viewed.
        status: ReceiptStatus,
    },
    /// A reaction was set (`emoji` empty: removed).
    Reaction {
        /// The conversation.
        conversation: String,
        /// The message reacted to.
        message_id: String,
        /// Who reacted.
        from: String,
        /// The emoji.
        emoji: String,
    },
    /// A message's text was edited by its author.
    Edited {
        /// The conversation.
        conversation: String,
        /// The message.
        message_id: String,
        /// Its author.
        from: String,
        /// The new text.
        text: String,
    },
    /// A message was deleted for everyone by its author.
    Deleted {
        /// The conversation.
        conversation: String,
        /// The message.
        message_id: String,
        /// Its author.
        from: String,
    },
    /// A member started or stopped typing (ephemeral, never stored).
    Typing {
        /// The conversation.
        conversation: String,
        /// Who.
        from: String,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A contact shared their presence.
    Presence {
        /// Who.
        from: String,
        /// Online now.
        online: bool,
        /// Their last time online, when they went offline.
        last_seen_ms: Option<u64>,
    },
    /// A contact's account key is not the one pinned for it: nothing of the new key is
    /// accepted, and sending to it is refused, until the user accepts it
    /// ([`Profile::trust`]) — ideally after comparing safety numbers.
    IdentityChanged {
        /// The contact.
        handle: String,
    },
    /// This account's device list changed: a device was linked, removed or renamed
    /// (by this device or another of the account).
    DevicesChanged(DeviceListNews),
    /// The conversation's disappearing-messages timer changed.
    TimerChanged {
        /// The conversation.
        conversation: String,
        /// Who changed it.
        by: String,
        /// The new timer (0: off).
        timer_ms: u64,
    },
}
