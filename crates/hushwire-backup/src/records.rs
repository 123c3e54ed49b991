//! The records of a backup's payload (docs/backup-format.md, "Records").
//!
//! Every record but [`Record::MediaData`] has a JSON body (UTF-8, an object); byte
//! strings are lowercase hex; times are milliseconds since the Unix epoch. Readers
//! ignore JSON fields they do not know, and absent optional fields read as `null`/empty,
//! so later versions of a record may add fields.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::BackupError;

/// Record kind bytes (docs/backup-format.md).
pub mod kind {
    /// [`super::AccountRecord`].
    pub const ACCOUNT: u8 = 0x01;
    /// [`super::ContactRecord`].
    pub const CONTACT: u8 = 0x02;
    /// [`super::ConversationRecord`].
    pub const CONVERSATION: u8 = 0x03;
    /// [`super::MessageRecord`].
    pub const MESSAGE: u8 = 0x04;
    /// [`super::BlockedRecord`].
    pub const BLOCKED: u8 = 0x05;
    /// [`super::SettingRecord`].
    pub const SETTING: u8 = 0x06;
    /// [`super::TombstoneRecord`].
    pub const TOMBSTONE: u8 = 0x07;
    /// [`super::MediaStart`].
    pub const MEDIA_START: u8 = 0x10;
    /// Raw bytes of the current media file.
    pub const MEDIA_DATA: u8 = 0x11;
    /// [`super::MediaEnd`].
    pub const MEDIA_END: u8 = 0x12;
}

/// One record of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The account: handle, server, account secret key. Exactly one, the first record.
    Account(AccountRecord),
    /// A contact whose account key is pinned, with its devices.
    Contact(ContactRecord),
    /// A conversation and its settings.
    Conversation(ConversationRecord),
    /// One message of a conversation's history, with what was applied to it.
    Message(Box<MessageRecord>),
    /// A blocked account.
    Blocked(BlockedRecord),
    /// A setting.
    Setting(SettingRecord),
    /// A message deleted for everyone before it arrived.
    Tombstone(TombstoneRecord),
    /// The start of a media file; its bytes follow in [`Record::MediaData`] records.
    MediaStart(MediaStart),
    /// The next bytes of the current media file (at most [`crate::MEDIA_PIECE_BYTES`]).
    MediaData(Vec<u8>),
    /// The end of the current media file.
    MediaEnd(MediaEnd),
    /// A record kind this build does not know (written by a later version); readers skip
    /// it.
    Unknown {
        /// The kind byte.
        kind: u8,
        /// The body, undecoded.
        body: Vec<u8>,
    },
}

impl Record {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Account(_) => kind::ACCOUNT,
            Record::Contact(_) => kind::CONTACT,
            Record::Conversation(_) => kind::CONVERSATION,
            Record::Message(_) => kind::MESSAGE,
            Record::Blocked(_) => kind::BLOCKED,
            Record::Setting(_) => kind::SETTING,
            Record::Tombstone(_) => kind::TOMBSTONE,
            Record::MediaStart(_) => kind::MEDIA_START,
            Record::MediaData(_) => kind::MEDIA_DATA,
            Record::MediaEnd(_) => kind::MEDIA_END,
            Record::Unknown { kind, .. } => *kind,
        }
    }

    /// The encoded body.
    pub(crate) fn encode_body(&self) -> Result<Vec<u8>, BackupError> {
        let json = |r: Result<Vec<u8>, serde_json::Error>| {
            r.map_err(|e| BackupError::Malformed(format!("encoding a record: {e}")))
        };
        match self {
            Record::Account(r) => json(serde_json::to_vec(r)),
            Record::Contact(r) => json(serde_json::to_vec(r)),
            Record::Conversation(r) => json(serde_json::to_vec(r)),
            Record::Message(r) => json(serde_json::to_vec(r)),
            Record::Blocked(r) => json(serde_json::to_vec(r)),
            Record::Setting(r) => json(serde_json::to_vec(r)),
            Record::Tombstone(r) => json(serde_json::to_vec(r)),
            Record::MediaStart(r) => json(serde_json::to_vec(r)),
            Record::MediaEnd(r) => json(serde_json::to_vec(r)),
            Record::MediaData(bytes) | Record::Unknown { body: bytes, .. } => Ok(bytes.clone()),
        }
    }

    /// Decodes a body of kind `kind`.
    pub(crate) fn decode(kind: u8, body: Vec<u8>) -> Result<Record, BackupError> {
        fn json<T: serde::de::DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, BackupError> {
            serde_json::from_slice(body)
                .map_err(|e| BackupError::Malformed(format!("{name} record: {e}")))
        }
        Ok(match kind {
            kind::ACCOUNT => Record::Account(json("account", &body)?),
            kind::CONTACT => Record::Contact(json("contact", &body)?),
            kind::CONVERSATION => Record::Conversation(json("conversation", &body)?),
            kind::MESSAGE => Record::Message(Box::new(json("message", &body)?)),
            kind::BLOCKED => Record::Blocked(json("blocked", &body)?),
            kind::SETTING => Record::Setting(json("setting", &body)?),
            kind::TOMBSTONE => Record::Tombstone(json("tombstone", &body)?),
            kind::MEDIA_START => Record::MediaStart(json("media start", &body)?),
            kind::MEDIA_DATA => Record::MediaData(body),
            kind::MEDIA_END => Record::MediaEnd(json("media end", &body)?),
            kind => Record::Unknown { kind, body },
        })
    }
}

/// Byte strings as lowercase hex in JSON.
mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }

    pub(super) mod opt {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(in super::super) fn serialize<S: Serializer>(
            bytes: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(b) => s.serialize_some(&hex::encode(b)),
                None => s.serialize_none(),
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(hex::decode)
                .transpose()
                .map_err(serde::de::Error::custom)
        }
    }
}

/// The account (record kind 0x01). The device key is never in a backup: a restore
/// becomes a new device of the account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The account's handle.
    pub handle: String,
    /// The account's public key (32 bytes, Ed25519): checks `account_secret`.
    #[serde(with = "hexbytes")]
    pub account_key: Vec<u8>,
    /// The account's secret key (32 bytes, the Ed25519 seed). Zeroized on drop.
    #[serde(with = "hexbytes")]
    pub account_secret: Vec<u8>,
    /// The server the account is registered on.
    #[serde(default)]
    pub server_url: Option<String>,
    /// The server's TLS certificate pin, as the profile stored it.
    #[serde(default)]
    pub tls_pin: Option<String>,
    /// The server's key-directory keys pinned on first use, if any.
    #[serde(default)]
    pub directory_pin: Option<DirectoryPinRecord>,
}

impl Drop for AccountRecord {
    fn drop(&mut self) {
        self.account_secret.zeroize();
    }
}

impl std::fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRecord")
            .field("handle", &self.handle)
            .field("account_key", &hex::encode(&self.account_key))
            .field("account_secret", &"<redacted>")
            .field("server_url", &self.server_url)
            .field("tls_pin", &self.tls_pin)
            .field("directory_pin", &self.directory_pin)
            .finish()
    }
}

/// The key directory's keys and highest signed root seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryPinRecord {
    /// VRF public key.
    #[serde(with = "hexbytes")]
    pub vrf_key: Vec<u8>,
    /// Root-signing public key.
    #[serde(with = "hexbytes")]
    pub signing_key: Vec<u8>,
    /// Highest epoch seen.
    pub epoch: u64,
    /// Its root hash.
    #[serde(with = "hexbytes")]
    pub root: Vec<u8>,
}

/// A contact (record kind 0x02): an account key pinned on first use, with the account's
/// certified devices, signed device list, verification and key-directory check. The
/// account's own handle appears too (its other devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// The handle.
    pub handle: String,
    /// The pinned account key (32 bytes).
    #[serde(with = "hexbytes")]
    pub account_key: Vec<u8>,
    /// Devices certified by that key.
    #[serde(default)]
    pub devices: Vec<ContactDevice>,
    /// The pinned signed device list.
    #[serde(default)]
    pub device_list: Option<DeviceListRecord>,
    /// Set when the user compared safety numbers: the account key they verified.
    #[serde(default)]
    pub verified: Option<VerifiedRecord>,
    /// The account key the key directory confirmed.
    #[serde(default)]
    pub directory_check: Option<DirectoryCheckRecord>,
}

/// A certified device of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDevice {
    /// Device id on the server.
    pub device_id: u32,
    /// Its Ed25519 public key (32 bytes).
    #[serde(with = "hexbytes")]
    pub device_key: Vec<u8>,
    /// Its certificate's time.
    pub created_at_ms: u64,
    /// Whether it is in the account's current signed device list.
    pub listed: bool,
}

/// A pinned signed device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListRecord {
    /// Its version.
    pub version: u64,
    /// The encoded `hushwire.v1.SignedDeviceList` (protobuf).
    #[serde(with = "hexbytes")]
    pub list: Vec<u8>,
    /// The own list last shown to the user (encoded the same way), if any.
    #[serde(default, with = "hexbytes::opt")]
    pub announced: Option<Vec<u8>>,
}

/// A contact the user verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedRecord {
    /// The account key compared.
    #[serde(with = "hexbytes")]
    pub account_key: Vec<u8>,
    /// When.
    pub at_ms: u64,
}

/// A key-directory check of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryCheckRecord {
    /// The account key checked.
    #[serde(with = "hexbytes")]
    pub account_key: Vec<u8>,
    /// The directory epoch it was found in; `null` while not published yet.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// When.
    pub at_ms: u64,
}

/// A conversation (record kind 0x03). Messages refer to it by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// A peer's handle (1:1) or a group chat's local name (`#TITLE`, `#TITLE~2`).
    pub name: String,
    /// MLS ciphersuite code point (0x004F X-Wing, 0x0001 classic).
    pub suite: u16,
    /// When it was created.
    pub created_at_ms: u64,
    /// Disappearing-messages timer, 0 off.
    #[serde(default)]
    pub expire_timer_ms: u64,
    /// An unanswered message request.
    #[serde(default)]
    pub request: bool,
    /// Group chats: the group's identity and recovery key.
    #[serde(default)]
    pub group_chat: Option<GroupChatRecord>,
    /// The MLS groups the conversation had (ids only: MLS state is never in a backup).
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
}

/// A group chat's identity.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChatRecord {
    /// The MLS group id.
    #[serde(with = "hexbytes")]
    pub group_id: Vec<u8>,
    /// The key sealing the group's published GroupInfo (32 bytes): what a rejoin by
    /// External Commit needs.
    #[serde(default, with = "hexbytes::opt")]
    pub recovery_key: Option<Vec<u8>>,
    /// We asked to leave and wait for a member to commit it.
    #[serde(default)]
    pub leaving: bool,
    /// The member whose commit this device refused (the group needs a reset).
    #[serde(default)]
    pub diverged_by: Option<String>,
}

impl std::fmt::Debug for GroupChatRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupChatRecord")
            .field("group_id", &hex::encode(&self.group_id))
            .field(
                "recovery_key",
                &self.recovery_key.as_ref().map(|_| "<redacted>"),
            )
            .field("leaving", &self.leaving)
            .field("diverged_by", &self.diverged_by)
            .finish()
    }
}

/// One MLS group a conversation had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The MLS group id.
    #[serde(with = "hexbytes")]
    pub group_id: Vec<u8>,
    /// Ciphersuite code point.
    pub suite: u16,
    /// `pending`, `active`, `inactive` or `failed` when the backup was made.
    pub state: String,
    /// When it was created.
    pub created_at_ms: u64,
}

/// One message (record kind 0x04).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The conversation's `name` (a [`ConversationRecord`] before it).
    pub conversation: String,
    /// The 16-byte message id (unique per sender).
    #[serde(with = "hexbytes")]
    pub id: Vec<u8>,
    /// The sender's handle.
    pub sender: String,
    /// The sender's device id.
    pub sender_device: u32,
    /// The MLS group it was sent in.
    #[serde(default, with = "hexbytes::opt")]
    pub group_id: Option<Vec<u8>>,
    /// Send time (sender's clock).
    pub sent_at_ms: u64,
    /// Receive time (received messages).
    #[serde(default)]
    pub received_at_ms: Option<u64>,
    /// The text (a caption for an attachment, JSON for a group event).
    pub body: String,
    /// Sent by this account.
    pub outgoing: bool,
    /// 0 queued, 1 sent, 2 received, 3 failed.
    pub state: u8,
    /// 0 text, 1 group event, 2 relay link, 3 attachment.
    pub kind: u32,
    /// The id of the message it replies to.
    #[serde(default, with = "hexbytes::opt")]
    pub reply_to: Option<Vec<u8>>,
    /// Last edit.
    #[serde(default)]
    pub edited_at_ms: Option<u64>,
    /// When the disappearing message is deleted.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// 0 not view-once, 2 view-once and already viewed (body erased).
    #[serde(default)]
    pub view_once: u8,
    /// When the user read it (received messages).
    #[serde(default)]
    pub read_at_ms: Option<u64>,
    /// Reactions, one per member.
    #[serde(default)]
    pub reactions: Vec<ReactionRecord>,
    /// Receipts of an own message, the best status per member.
    #[serde(default)]
    pub receipts: Vec<ReceiptRecord>,
    /// The attachment (kind 3).
    #[serde(default)]
    pub attachment: Option<AttachmentRecord>,
}

impl std::fmt::Debug for MessageRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageRecord")
            .field("conversation", &self.conversation)
            .field("id", &hex::encode(&self.id))
            .field("sender", &self.sender)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionRecord {
    /// Who reacted.
    pub reactor: String,
    /// The emoji.
    pub emoji: String,
    /// When.
    pub at_ms: u64,
}

/// A receipt of an own message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    /// The member.
    pub member: String,
    /// 1 delivered, 2 read, 3 viewed.
    pub status: u8,
    /// When.
    pub at_ms: u64,
}

/// A message's attachment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The encoded `hushwire.v1.Attachment` (protobuf): blob id, file key, nonce prefix,
    /// hashes, sizes, name, MIME type, thumbnail.
    #[serde(with = "hexbytes")]
    pub wire: Vec<u8>,
    /// Where the plaintext file was on the backed-up device.
    #[serde(default)]
    pub path: Option<String>,
    /// Why its download failed for good.
    #[serde(default)]
    pub error: Option<String>,
}

impl std::fmt::Debug for AttachmentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRecord")
            .field("path", &self.path)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A blocked account (record kind 0x05).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedRecord {
    /// The handle.
    pub handle: String,
    /// When.
    pub at_ms: u64,
}

/// A setting (record kind 0x06): `default_suite`, `read_receipts`, `presence_share`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// Its name.
    pub key: String,
    /// Its value.
    pub value: i64,
}

/// A message deleted for everyone before it arrived (record kind 0x07).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneRecord {
    /// Its sender.
    pub sender: String,
    /// Its id.
    #[serde(with = "hexbytes")]
    pub id: Vec<u8>,
    /// When.
    pub at_ms: u64,
}

/// The start of a media file (record kind 0x10): the plaintext of a message's
/// attachment. Its bytes follow in `MediaData` records, then a `MediaEnd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaStart {
    /// The message's sender.
    pub sender: String,
    /// The message's id.
    #[serde(with = "hexbytes")]
    pub message_id: Vec<u8>,
    /// The file's name (its last path component on the backed-up device).
    pub file_name: String,
    /// Its size in bytes: the `MediaData` bytes add up to it.
    pub size: u64,
}

/// The end of a media file (record kind 0x12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaEnd {
    /// SHA-256 of the file's bytes.
    #[serde(with = "hexbytes")]
    pub sha256: Vec<u8>,
}
