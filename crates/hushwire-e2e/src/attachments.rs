//! Attachments: uploads in progress and the attachments of messages.
//!
//! The file itself never passes through this crate: the client library encrypts it
//! (`hushwire_media`) and moves the ciphertext. What lives here is the state that must
//! survive a crash, in the profile database:
//!
//! - `media_uploads`: an upload in progress — the source file, its key and nonce prefix,
//!   the blob it goes to and how many leading parts the server confirmed (with the
//!   SHA-256 of their ciphertext, so a resume can tell the file did not change).
//!   [`Profile::finish_upload`] turns it into a message in ONE transaction: the history
//!   entry (kind [`KIND_ATTACHMENT`], body = caption), its `attachments` row and the
//!   outbox item. A crash before that leaves the upload to resume; after it, the message
//!   goes out like a text.
//! - `attachments`: the [`wire::Attachment`] of every message that has one (sent or
//!   received, key included), where its plaintext is (`path`) and why a download failed
//!   for good (`error`). A received attachment with neither is a pending download.

use std::path::{Path, PathBuf};

use hushwire_proto::limits::{BLOB_ID_BYTES, MAX_ATTACHMENT_BYTES};
use hushwire_proto::wire;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::features::{MESSAGE_COLUMNS, message_from_row};
use crate::outbox::MAX_TEXT_BYTES;
use crate::profile::{new_message_id, uuid_text};
use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, Profile, StoredMessage};

/// `messages.kind` of a message carrying an attachment (its body is the caption).
pub(crate) const KIND_ATTACHMENT: i64 = 3;

/// Longest file name a sender may give, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 1024;
/// Largest thumbnail accepted in a message, in bytes.
pub const MAX_THUMBNAIL_BYTES: usize = 32 * 1024;
/// Longest MIME type accepted, in bytes.
pub const MAX_MIME_BYTES: usize = 255;

/// An attachment as the user sees it: no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The file name as the sender gave it (sanitize before using it as a path).
    pub file_name: String,
    /// The MIME type the sender declared.
    pub mime: String,
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub plaintext_sha256: [u8; 32],
    /// The blob id on the server.
    pub blob_id: Vec<u8>,
    /// Images: the original's pixel dimensions (0 if unknown).
    pub width: u32,
    /// Images: the original's pixel dimensions (0 if unknown).
    pub height: u32,
    /// Images: a small JPEG preview (empty if none).
    pub thumbnail: Vec<u8>,
    /// A voice note.
    pub voice: bool,
    /// Where the plaintext is on this device: the source file of a sent attachment, the
    /// saved file of a downloaded one; `None` while not downloaded.
    pub path: Option<PathBuf>,
    /// Why the download failed for good (tampered, hash mismatch, gone from the server).
    pub error: Option<String>,
}

impl AttachmentInfo {
    fn from_wire(a: &wire::Attachment, path: Option<String>, error: Option<String>) -> Self {
        Self {
            file_name: a.file_name.clone(),
            mime: a.mime.clone(),
            size: a.size,
            plaintext_sha256: a.plaintext_sha256.as_ref().try_into().unwrap_or([0; 32]),
            blob_id: a.blob_id.to_vec(),
            width: a.width,
            height: a.height,
            thumbnail: a.thumbnail.to_vec(),
            voice: a.voice,
            path: path.map(PathBuf::from),
            error,
        }
    }
}

/// A stored attachment with what it takes to fetch and open it.
#[derive(Clone)]
pub struct AttachmentRecord {
    /// The message it belongs to.
    pub message: StoredMessage,
    /// What the user sees.
    pub info: AttachmentInfo,
    /// The message's attachment as received: blob id, KEY, hashes, sizes. Never log it.
    pub wire: wire::Attachment,
}

impl std::fmt::Debug for AttachmentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRecord")
            .field("message", &self.message.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A file about to be uploaded ([`Profile::create_upload`]).
#[derive(Clone)]
pub struct NewUpload {
    /// The conversation: a peer's handle or a group chat `#TITLE`.
    pub conversation: String,
    /// The file.
    pub source_path: PathBuf,
    /// Its size now; it must not change until the upload is done.
    pub source_len: u64,
    /// The ciphertext size (`hushwire_media::ciphertext_len` of `source_len`).
    pub ciphertext_len: u64,
    /// Fresh random file key (zeroized when this is dropped).
    pub key: [u8; 32],
    /// Fresh random STREAM nonce prefix.
    pub nonce_prefix: Vec<u8>,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The name receivers see.
    pub file_name: String,
    /// MIME type.
    pub mime: String,
    /// Images: JPEG preview.
    pub thumbnail: Vec<u8>,
    /// Images: dimensions.
    pub width: u32,
    /// Images: dimensions.
    pub height: u32,
    /// A voice note.
    pub voice: bool,
    /// Text shown with it.
    pub caption: String,
    /// View once: the recipient opens it once (`Profile::view_once`), then it is gone.
    pub view_once: bool,
}

impl Drop for NewUpload {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for NewUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUpload")
            .field("conversation", &self.conversation)
            .field("source_path", &self.source_path)
            .field("source_len", &self.source_len)
            .field("mime", &self.mime)
            .finish_non_exhaustive()
    }
}

/// An upload in progress, as stored.
#[derive(Clone)]
pub struct PendingUpload {
    /// Its id, which becomes the message id.
    pub id: String,
    /// The conversation it is for.
    pub conversation: String,
    /// The file.
    pub source_path: PathBuf,
    /// The file's size when the upload started.
    pub source_len: u64,
    /// The attachment so far: key, nonce prefix, chunk size, name, MIME type, preview,
    /// caption and the ciphertext size; the blob id and hashes are filled in at the end.
    /// Holds the KEY: never log it.
    pub attachment: wire::Attachment,
    /// The group the blob is bound to, once created.
    pub group_id: Option<Vec<u8>>,
    /// The blob, once created.
    pub blob_id: Option<Vec<u8>>,
    /// The blob's part size, once created.
    pub part_size: Option<u32>,
    /// Leading parts the server confirmed.
    pub parts_done: u32,
    /// SHA-256 of those parts' ciphertext.
    pub prefix_sha256: Option<[u8; 32]>,
    /// It becomes a view-once message.
    pub view_once: bool,
}

impl std::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpload")
            .field("id", &self.id)
            .field("conversation", &self.conversation)
            .field("source_path", &self.source_path)
            .field("source_len", &self.source_len)
            .field("parts_done", &self.parts_done)
            .finish_non_exhaustive()
    }
}

/// Checks an attachment received in a message: everything a download relies on must be
/// well-formed. Consistency of the sizes with the chunk format is the client's check
/// (`hushwire_media`), made before downloading.
pub(crate) fn check_incoming(a: &wire::Attachment) -> Result<(), String> {
    if a.blob_id.len() != BLOB_ID_BYTES {
        return Err("attachment: blob id is not 32 bytes".into());
    }
    if a.key.len() != 32 {
        return Err("attachment: key is not 32 bytes".into());
    }
    if a.ciphertext_sha256.len() != 32 || a.plaintext_sha256.len() != 32 {
        return Err("attachment: a hash is not 32 bytes".into());
    }
    if a.nonce_prefix.len() != 19 {
        return Err("attachment: nonce prefix is not 19 bytes".into());
    }
    if a.size > MAX_ATTACHMENT_BYTES {
        return Err(format!(
            "attachment: {} bytes exceeds the {MAX_ATTACHMENT_BYTES}-byte limit",
            a.size
        ));
    }
    if a.file_name.len() > MAX_FILE_NAME_BYTES {
        return Err("attachment: file name too long".into());
    }
    if a.mime.len() > MAX_MIME_BYTES {
        return Err("attachment: MIME type too long".into());
    }
    if a.thumbnail.len() > MAX_THUMBNAIL_BYTES {
        return Err("attachment: thumbnail too large".into());
    }
    if a.caption.len() > MAX_TEXT_BYTES {
        return Err("attachment: caption too long".into());
    }
    Ok(())
}

/// Stores the attachment of a message just inserted into `messages`.
pub(crate) fn store_incoming(
    conn: &Connection,
    sender: &str,
    id: &[u8],
    a: &wire::Attachment,
) -> Result<AttachmentInfo, E2eError> {
    conn.execute(
        "INSERT OR IGNORE INTO attachments (sender, id, attachment, path, error)
         VALUES (?1, ?2, ?3, NULL, NULL)",
        params![sender, id, a.encode_to_vec()],
    )?;
    Ok(AttachmentInfo::from_wire(a, None, None))
}

/// The message (`sender`, `id`) as stored.
pub(crate) fn stored_message(
    conn: &Connection,
    sender: &str,
    id: &[u8],
) -> Result<StoredMessage, E2eError> {
    Ok(conn.query_row(
        &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND id = ?2"),
        params![sender, id],
        message_from_row,
    )?)
}

/// The `Content` body of an own attachment message (its outbox item is built).
pub(crate) fn content_body(
    conn: &Connection,
    sender: &str,
    id: &[u8],
    caption: String,
) -> Result<wire::content::Body, E2eError> {
    let bytes: Vec<u8> = conn.query_row(
        "SELECT attachment FROM attachments WHERE sender = ?1 AND id = ?2",
        params![sender, id],
        |r| r.get(0),
    )?;
    let mut a = wire::Attachment::decode(bytes.as_slice())?;
    a.caption = caption;
    Ok(wire::content::Body::Attachment(a))
}

/// The attachment of message (`sender`, `id`), if it has one.
pub(crate) fn info_of(
    conn: &Connection,
    sender: &str,
    id: &[u8],
) -> Result<Option<AttachmentInfo>, E2eError> {
    let row: Option<(Vec<u8>, Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT attachment, path, error FROM attachments WHERE sender = ?1 AND id = ?2",
            params![sender, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        Some((bytes, path, error)) => {
            let a = wire::Attachment::decode(bytes.as_slice())?;
            Ok(Some(AttachmentInfo::from_wire(&a, path, error)))
        }
        None => Ok(None),
    }
}

fn parse_id(id: &str) -> Result<[u8; 16], E2eError> {
    uuid::Uuid::parse_str(id)
        .map(|u| *u.as_bytes())
        .map_err(|_| E2eError::Protocol(format!("not a message id: {id:?}")))
}

fn path_text(path: &Path) -> Result<String, E2eError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| E2eError::Protocol(format!("path is not UTF-8: {}", path.display())))
}

const UPLOAD_COLUMNS: &str = "id, conversation, source_path, source_len, attachment, group_id,
     blob_id, part_size, parts_done, prefix_sha256, view_once";

fn upload_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(PendingUploadRow, Vec<u8>)> {
    Ok((
        PendingUploadRow {
            id: r.get(0)?,
            conversation: r.get(1)?,
            source_path: r.get(2)?,
            source_len: r.get(3)?,
            group_id: r.get(5)?,
            blob_id: r.get(6)?,
            part_size: r.get(7)?,
            parts_done: r.get(8)?,
            prefix_sha256: r.get(9)?,
            view_once: r.get(10)?,
        },
        r.get(4)?,
    ))
}

struct PendingUploadRow {
    id: Vec<u8>,
    conversation: String,
    source_path: String,
    source_len: i64,
    group_id: Option<Vec<u8>>,
    blob_id: Option<Vec<u8>>,
    part_size: Option<i64>,
    parts_done: i64,
    prefix_sha256: Option<Vec<u8>>,
    view_once: bool,
}

impl PendingUploadRow {
    fn into_upload(self, attachment: &[u8]) -> Result<PendingUpload, E2eError> {
        Ok(PendingUpload {
            id: uuid_text(&self.id),
            conversation: self.conversation,
            source_path: PathBuf::from(self.source_path),
            source_len: from_sql_u64(self.source_len),
            attachment: wire::Attachment::decode(attachment)?,
            group_id: self.group_id,
            blob_id: self.blob_id,
            part_size: self.part_size.and_then(|p| u32::try_from(p).ok()),
            parts_done: u32::try_from(self.parts_done).unwrap_or(0),
            prefix_sha256: self.prefix_sha256.and_then(|h| h.try_into().ok()),
            view_once: self.view_once,
        })
    }
}

impl Profile {
    /// Whether `peer` (a handle or a group chat) can be sent to now, as `queue_text`
    /// checks it.
    fn check_sendable(&self, peer: &str) -> Result<(), E2eError> {
        let (me, _) = self.me()?;
        if crate::group::is_group_name(peer) {
            let group_id = crate::group_ops::chat_group(&self.conn, peer)?;
            let row: Option<(String, i64)> = self
                .conn
                .query_row(
                    "SELECT COALESCE((SELECT state FROM groups WHERE group_id = ?1), 'pending'),
                            leaving FROM group_chats WHERE group_id = ?1",
                    params![group_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                Some((state, _)) if state == "inactive" || state == "failed" => Err(
                    E2eError::Protocol(format!("you are no longer a member of {peer}")),
                ),
                Some((_, leaving)) if leaving != 0 => {
                    Err(E2eError::Protocol(format!("you are leaving {peer}")))
                }
                _ => Ok(()),
            }
        } else {
            hushwire_proto::identity::validate_handle(peer)
                .map_err(|e| E2eError::Protocol(format!("peer handle: {e}")))?;
            if peer == me.handle {
                return Err(E2eError::Protocol(
                    "a conversation with oneself is not supported".into(),
                ));
            }
            Ok(())
        }
    }

    /// Records an upload about to start (no network): checks the conversation can be
    /// sent to and the metadata's bounds, and stores the file key with it. Returns its
    /// id, which becomes the message id.
    pub fn create_upload(&mut self, upload: &NewUpload, now_ms: u64) -> Result<String, E2eError> {
        self.check_sendable(&upload.conversation)?;
        if upload.source_len > MAX_ATTACHMENT_BYTES {
            return Err(E2eError::Protocol(format!(
                "the file has {} bytes; attachments are limited to {MAX_ATTACHMENT_BYTES}",
                upload.source_len
            )));
        }
        if upload.caption.len() > MAX_TEXT_BYTES {
            return Err(E2eError::Protocol(format!(
                "caption of {} bytes exceeds {MAX_TEXT_BYTES}",
                upload.caption.len()
            )));
        }
        let attachment = wire::Attachment {
            blob_id: Default::default(),
            key: upload.key.to_vec().into(),
            ciphertext_sha256: Default::default(),
            plaintext_sha256: Default::default(),
            size: upload.source_len,
            ciphertext_size: upload.ciphertext_len,
            mime: upload.mime.clone(),
            file_name: upload.file_name.clone(),
            thumbnail: upload.thumbnail.clone().into(),
            width: upload.width,
            height: upload.height,
            voice: upload.voice,
            caption: upload.caption.clone(),
            chunk_size: upload.chunk_size,
            nonce_prefix: upload.nonce_prefix.clone().into(),
        };
        let mut check = attachment.clone();
        check.blob_id = vec![0u8; BLOB_ID_BYTES].into();
        check.ciphertext_sha256 = vec![0u8; 32].into();
        check.plaintext_sha256 = vec![0u8; 32].into();
        check_incoming(&check).map_err(E2eError::Protocol)?;
        let id = new_message_id(now_ms);
        self.conn.execute(
            "INSERT INTO media_uploads (id, conversation, source_path, source_len, attachment,
                 created_at_ms, view_once)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &id[..],
                upload.conversation,
                path_text(&upload.source_path)?,
                to_sql_u64(upload.source_len)?,
                attachment.encode_to_vec(),
                to_sql_u64(now_ms)?,
                upload.view_once
            ],
        )?;
        Ok(uuid_text(&id))
    }

    /// Every upload in progress, oldest first.
    pub fn pending_uploads(&self) -> Result<Vec<PendingUpload>, E2eError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM media_uploads ORDER BY created_at_ms, id"
        ))?;
        let rows = stmt.query_map([], upload_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (row, attachment) = row?;
            out.push(row.into_upload(&attachment)?);
        }
        Ok(out)
    }

    /// One upload in progress.
    pub fn pending_upload(&self, id: &str) -> Result<Option<PendingUpload>, E2eError> {
        let id = parse_id(id)?;
        let row = self
            .conn
            .query_row(
                &format!("SELECT {UPLOAD_COLUMNS} FROM media_uploads WHERE id = ?1"),
                params![&id[..]],
                upload_from_row,
            )
            .optional()?;
        row.map(|(row, a)| row.into_upload(&a)).transpose()
    }

    /// The blob of an upload was created (or re-created after the old one expired):
    /// no part is confirmed yet.
    pub fn upload_blob_created(
        &mut self,
        id: &str,
        group_id: &[u8],
        blob_id: &[u8],
        part_size: u32,
    ) -> Result<(), E2eError> {
        let id = parse_id(id)?;
        self.conn.execute(
            "UPDATE media_uploads SET group_id = ?2, blob_id = ?3, part_size = ?4,
                 parts_done = 0, prefix_sha256 = NULL WHERE id = ?1",
            params![&id[..], group_id, blob_id, part_size],
        )?;
        Ok(())
    }

    /// The server confirmed the first `parts_done` parts, whose ciphertext hashes to
    /// `prefix_sha256`.
    pub fn upload_progress(
        &mut self,
        id: &str,
        parts_done: u32,
        prefix_sha256: &[u8; 32],
    ) -> Result<(), E2eError> {
        let id = parse_id(id)?;
        self.conn.execute(
            "UPDATE media_uploads SET parts_done = ?2, prefix_sha256 = ?3 WHERE id = ?1",
            params![&id[..], parts_done, &prefix_sha256[..]],
        )?;
        Ok(())
    }

    /// Drops an upload (given up, or its file changed). Nothing was sent.
    pub fn cancel_upload(&mut self, id: &str) -> Result<(), E2eError> {
        let id = parse_id(id)?;
        self.conn
            .execute("DELETE FROM media_uploads WHERE id = ?1", params![&id[..]])?;
        Ok(())
    }

    /// The blob of upload `id` is complete on the server: in one transaction the upload
    /// becomes a queued message — history (kind attachment, body = caption), its
    /// attachment (blob id, hashes) and an outbox item. Returns the message id.
    pub fn finish_upload(
        &mut self,
        id: &str,
        ciphertext_sha256: &[u8; 32],
        plaintext_sha256: &[u8; 32],
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let (me, _) = self.me()?;
        let me = me.clone();
        let Some(upload) = self.pending_upload(id)? else {
            return Err(E2eError::Protocol(format!("no upload {id} in progress")));
        };
        let (Some(group_id), Some(blob_id)) = (&upload.group_id, &upload.blob_id) else {
            return Err(E2eError::Protocol(format!("upload {id} has no blob yet")));
        };
        // A group chat renamed meanwhile is found by its group.
        let conversation: String = self
            .conn
            .query_row(
                "SELECT conversation FROM group_chats WHERE group_id = ?1",
                params![group_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_else(|| upload.conversation.clone());
        self.check_sendable(&conversation)?;
        let mut a = upload.attachment.clone();
        a.blob_id = blob_id.clone().into();
        a.ciphertext_sha256 = ciphertext_sha256.to_vec().into();
        a.plaintext_sha256 = plaintext_sha256.to_vec().into();
        check_incoming(&a).map_err(E2eError::Protocol)?;
        let caption = std::mem::take(&mut a.caption);
        let msg_id = parse_id(&upload.id)?;
        let suite = self.default_suite()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        crate::outbox::OwnMessage {
            conversation: &conversation,
            id: &msg_id,
            body: &caption,
            kind: KIND_ATTACHMENT,
            view_once: upload.view_once,
        }
        .queue(&tx, &me, suite, now_ms)?;
        tx.execute(
            "INSERT INTO attachments (sender, id, attachment, path, error)
             VALUES (?1, ?2, ?3, ?4, NULL)",
            params![
                me.handle,
                &msg_id[..],
                a.encode_to_vec(),
                path_text(&upload.source_path)?
            ],
        )?;
        tx.execute(
            "DELETE FROM media_uploads WHERE id = ?1",
            params![&msg_id[..]],
        )?;
        tx.commit()?;
        Ok(upload.id)
    }

    /// The attachment of message `id` from `sender`, with its key (for downloading).
    pub fn attachment(&self, sender: &str, id: &str) -> Result<Option<AttachmentRecord>, E2eError> {
        let id = parse_id(id)?;
        let row: Option<(Vec<u8>, Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT attachment, path, error FROM attachments WHERE sender = ?1 AND id = ?2",
                params![sender, &id[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((bytes, path, error)) = row else {
            return Ok(None);
        };
        let Some(message) = self.message(sender, &id)? else {
            return Ok(None);
        };
        let wire = wire::Attachment::decode(bytes.as_slice())?;
        Ok(Some(AttachmentRecord {
            info: AttachmentInfo::from_wire(&wire, path, error),
            message,
            wire,
        }))
    }

    fn message(&self, sender: &str, id: &[u8]) -> Result<Option<StoredMessage>, E2eError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND id = ?2"),
                params![sender, id],
                message_from_row,
            )
            .optional()?)
    }

    /// Attachments not downloaded yet (no path, no final error), oldest first.
    pub fn pending_downloads(&self) -> Result<Vec<AttachmentRecord>, E2eError> {
        let keys: Vec<(String, Vec<u8>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT a.sender, a.id FROM attachments a
                 JOIN messages m ON m.sender = a.sender AND m.id = a.id
                 WHERE a.path IS NULL AND a.error IS NULL AND m.view_once = 0 ORDER BY m.n",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(keys.len());
        for (sender, id) in keys {
            if let Some(r) = self.attachment(&sender, &uuid_text(&id))? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Records where the attachment of message `id` from `sender` was saved.
    pub fn set_attachment_path(
        &mut self,
        sender: &str,
        id: &str,
        path: &Path,
    ) -> Result<(), E2eError> {
        let id = parse_id(id)?;
        self.conn.execute(
            "UPDATE attachments SET path = ?3, error = NULL WHERE sender = ?1 AND id = ?2",
            params![sender, &id[..], path_text(path)?],
        )?;
        Ok(())
    }

    /// Records that the attachment of message `id` from `sender` cannot be downloaded
    /// (verification failed, gone from the server): it is no longer pending.
    pub fn set_attachment_error(
        &mut self,
        sender: &str,
        id: &str,
        error: &str,
    ) -> Result<(), E2eError> {
        let id = parse_id(id)?;
        self.conn.execute(
            "UPDATE attachments SET error = ?3 WHERE sender = ?1 AND id = ?2",
            params![sender, &id[..], error],
        )?;
        Ok(())
    }

    /// The MLS group a conversation sends on (a blob is bound to it), if it has one yet.
    pub fn send_group_id(&self, conversation: &str) -> Result<Option<Vec<u8>>, E2eError> {
        crate::outbox::send_group(&self.conn, conversation)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::TimelineItem;

    fn registered(dir: &Path) -> Profile {
        let mut p = Profile::open(dir, &crate::StoreKey::from_bytes([7; 32])).unwrap();
        p.create_identity("alice", 1_000).unwrap();
        p.complete_registration("https://127.0.0.1:1", None, 1)
            .unwrap();
        p
    }

    fn upload(conversation: &str, path: &Path) -> NewUpload {
        NewUpload {
            conversation: conversation.into(),
            source_path: path.to_path_buf(),
            source_len: 5,
            ciphertext_len: 21,
            key: [0xAB; 32],
            nonce_prefix: vec![7; 19],
            chunk_size: 65_536,
            file_name: "notes.txt".into(),
            mime: "text/plain".into(),
            thumbnail: vec![],
            width: 0,
            height: 0,
            voice: false,
            caption: "read this".into(),
            view_once: false,
        }
    }

    #[test]
    fn an_upload_survives_reopening_and_becomes_one_queued_message() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        let id = {
            let mut p = registered(dir.path());
            let id = p.create_upload(&upload("bob", &file), 2_000).unwrap();
            p.upload_blob_created(&id, &[1; 32], &[2; 32], 4096)
                .unwrap();
            p.upload_progress(&id, 1, &[3; 32]).unwrap();
            id
        };
        // A new process finds everything needed to resume.
        let mut p = Profile::open(dir.path(), &crate::StoreKey::from_bytes([7; 32])).unwrap();
        let pending = p.pending_uploads().unwrap();
        assert_eq!(pending.len(), 1);
        let u = &pending[0];
        assert_eq!(u.id, id);
        assert_eq!(u.conversation, "bob");
        assert_eq!(u.source_path, file);
        assert_eq!(u.attachment.key.as_ref(), &[0xAB; 32]);
        assert_eq!(u.blob_id.as_deref(), Some(&[2u8; 32][..]));
        assert_eq!((u.part_size, u.parts_done), (Some(4096), 1));
        assert_eq!(u.prefix_sha256, Some([3; 32]));
        // Its Debug never shows the key.
        let shown = format!("{u:?}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, ab"),
            "{shown}"
        );

        let message_id = p.finish_upload(&id, &[4; 32], &[5; 32], 3_000).unwrap();
        assert_eq!(message_id, id);
        assert!(p.pending_uploads().unwrap().is_empty());
        assert_eq!(p.outbox_len().unwrap(), 1);
        assert!(p.is_outbox_item_pending(&id).unwrap());
        let timeline = p.timeline("bob").unwrap();
        let [TimelineItem::Attachment(m, info)] = timeline.as_slice() else {
            panic!("{timeline:?}");
        };
        assert_eq!(m.text, "read this");
        assert_eq!(info.file_name, "notes.txt");
        assert_eq!(info.plaintext_sha256, [5; 32]);
        assert_eq!(info.path.as_deref(), Some(file.as_path()));
        assert!(
            p.pending_downloads().unwrap().is_empty(),
            "own files are not downloaded"
        );
        // Finishing twice is an error, not a second message.
        assert!(p.finish_upload(&id, &[4; 32], &[5; 32], 3_000).is_err());
        assert_eq!(p.outbox_len().unwrap(), 1);
    }

    #[test]
    fn uploads_are_checked_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = registered(dir.path());
        let file = dir.path().join("f");
        assert!(
            p.create_upload(&upload("alice", &file), 1).is_err(),
            "oneself"
        );
        assert!(p.create_upload(&upload("Bad Handle", &file), 1).is_err());
        let mut big = upload("bob", &file);
        big.source_len = MAX_ATTACHMENT_BYTES + 1;
        assert!(p.create_upload(&big, 1).is_err());
        let mut long = upload("bob", &file);
        long.file_name = "x".repeat(MAX_FILE_NAME_BYTES + 1);
        assert!(p.create_upload(&long, 1).is_err());
        let mut bad_nonce = upload("bob", &file);
        bad_nonce.nonce_prefix = vec![1; 24];
        assert!(p.create_upload(&bad_nonce, 1).is_err());
        assert!(p.pending_uploads().unwrap().is_empty());
        // A blob-less upload cannot become a message.
        let id = p.create_upload(&upload("bob", &file), 1).unwrap();
        assert!(p.finish_upload(&id, &[0; 32], &[0; 32], 2).is_err());
        p.cancel_upload(&id).unwrap();
        assert!(p.pending_uploads().unwrap().is_empty());
        assert_eq!(p.outbox_len().unwrap(), 0);
    }
}
