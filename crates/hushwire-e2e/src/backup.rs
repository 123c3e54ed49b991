//! The end-to-end encrypted backup of a profile ([`Profile::export_backup`],
//! [`Profile::import_backup`]); the file format is `hushwire-backup`'s
//! (docs/backup-format.md).
//!
//! # What a backup holds
//! The account (handle, server URL, TLS pin, account SECRET key, the key directory's
//! pinned keys), every pinned contact (account key, certified devices, signed device
//! list, verification, directory check), every conversation with its settings (suite,
//! disappearing timer, message request; group chats with their MLS group id and
//! recovery key), the message history (texts, group events, relay links, attachments'
//! records with their keys, reactions, receipts, edits, read marks, expiry), blocked
//! accounts, tombstones of messages deleted before they arrived, and the settings
//! `default_suite`, `read_receipts` and `presence_share`. With
//! [`BackupOptions::include_media`], the files attachments point to (`attachments.path`)
//! as media records.
//!
//! Never in a backup: the device key and certificate, MLS group state (a restore is a
//! new device that rejoins every conversation), the outbox and pending uploads, key
//! packages, buffered envelopes, presence, server-request queues. Left out on purpose:
//! view-once messages not opened yet and messages whose disappearing timer ran out.
//!
//! # Restore
//! [`Profile::import_backup`] only runs on a profile without an identity, a restore
//! or any conversation. Everything is written in ONE transaction: a wrong key (refused
//! when the [`BackupReader`] is built), a tampered or truncated file, or a malformed
//! record rolls it back and leaves the profile as it was. Media files are written to
//! temporary files in the profile directory and renamed into place only after the
//! commit (deleted on failure).
//!
//! Afterwards the profile has NO identity: the account secret, handle, server URL and
//! pin wait in the `backup_restore` table ([`Profile::restored_account`]). The device is
//! re-registered like a linked device: [`Profile::begin_link`] makes the new device key,
//! the restoring client certifies it with the restored account secret
//! (`hushwire_proto::identity::device_cert_payload` signed by
//! [`RestoredAccount::secrets`]`.account_secret`) and has the server add the device, then
//! [`Profile::complete_link`] with [`RestoredAccount::secrets`], and
//! [`Profile::finish_restore`] drops the stored secret. Every restored conversation is
//! listed by [`Profile::restored_rejoins`] (with its group id and, for group chats, the
//! recovery key) until [`Profile::mark_rejoined`]: there is no MLS group state for it
//! locally (no `groups` rows). Queued own messages (state 0) are restored as failed (3):
//! the outbox is not in a backup.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hushwire_backup::{
    AccountRecord, AttachmentRecord, BackupInfo, BackupReader, BackupWriter, BlockedRecord,
    ContactDevice, ContactRecord, ConversationRecord, DeviceListRecord, DirectoryCheckRecord,
    DirectoryPinRecord, GroupChatRecord, GroupRecord, MediaStart, MessageRecord, ReactionRecord,
    ReceiptRecord, Record, RecoveryKey, SettingRecord, TombstoneRecord, VerifiedRecord,
};
use hushwire_proto::identity::validate_handle;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use crate::keys::SecretKey;
use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, LinkSecrets, Profile};

/// Settings (`kv` keys) a backup carries.
const BACKED_UP_SETTINGS: &[&str] = &["default_suite", "read_receipts", "presence_share"];

/// Tables of a restore in progress (created on first use; not a schema migration so
/// that profiles that never restore do not change).
const RESTORE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS backup_restore (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        handle TEXT NOT NULL,
        account_secret BLOB NOT NULL,
        server_url TEXT,
        pin TEXT,
        backup_created_at_ms INTEGER NOT NULL,
        restored_at_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS backup_rejoin (
        conversation TEXT PRIMARY KEY,
        group_id BLOB,
        recovery_key BLOB
    );";

/// What to put in a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupOptions {
    /// Include the files attachments point to.
    pub include_media: bool,
    /// Now: disappearing messages that expired by then are left out.
    pub now_ms: u64,
}

/// What an export wrote or an import restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Conversations.
    pub conversations: u64,
    /// Messages (all kinds).
    pub messages: u64,
    /// Pinned contacts (the account's own entry included).
    pub contacts: u64,
    /// Media files.
    pub media_files: u64,
}

/// The account a restore brought back, waiting for the device re-registration.
#[derive(Debug)]
pub struct RestoredAccount {
    /// Handle and account secret, as [`Profile::complete_link`] takes them.
    pub secrets: LinkSecrets,
    /// The server the account is on.
    pub server_url: Option<String>,
    /// Its TLS pin.
    pub pin: Option<String>,
    /// When the backup was made.
    pub backup_created_at_ms: u64,
}

/// A restored conversation that has no MLS group on this device yet.
#[derive(Clone, PartialEq, Eq)]
pub struct RestoredConversation {
    /// The conversation (a handle, or a group chat's `#TITLE`).
    pub conversation: String,
    /// Group chats: the MLS group to rejoin (External Commit) or be re-added to. 1:1
    /// chats: the group last used, if any (a new one may be started instead).
    pub group_id: Option<Vec<u8>>,
    /// Group chats: the key sealing the group's published GroupInfo (kept in
    /// `group_chats.recovery_key` too, where `Profile::group_rejoin` reads it).
    pub recovery_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for RestoredConversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredConversation")
            .field("conversation", &self.conversation)
            .field("group_id", &self.group_id.as_ref().map(hex::encode))
            .field(
                "recovery_key",
                &self.recovery_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn bad(reason: impl std::fmt::Display) -> E2eError {
    E2eError::InvalidArchive(format!("backup: {reason}"))
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(from_sql_u64)
}

fn opt_sql(v: Option<u64>) -> Result<Option<i64>, E2eError> {
    v.map(to_sql_u64).transpose()
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, E2eError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// The profile directory (where the database file is).
fn profile_dir(conn: &Connection) -> Result<PathBuf, E2eError> {
    conn.path()
        .filter(|p| !p.is_empty())
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .ok_or_else(|| E2eError::Storage("the profile database has no directory".into()))
}

/// A file name safe to use as a path component.
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    if out.is_empty() {
        out.push_str("file");
    }
    out
}

// ------------------------------------------------------------------ export

impl Profile {
    /// Writes a complete backup of this profile to `out` under `key` and finishes the
    /// file. Returns the output and what was written.
    pub fn write_backup<W: Write>(
        &self,
        out: W,
        key: &RecoveryKey,
        options: &BackupOptions,
    ) -> Result<(W, RestoreSummary), E2eError> {
        let mut writer = BackupWriter::new(
            out,
            key,
            BackupInfo {
                created_at_ms: options.now_ms,
                media: options.include_media,
            },
        )?;
        let summary = self.export_backup(&mut writer, options)?;
        Ok((writer.finish()?, summary))
    }

    /// Writes this profile's records into `writer` from one consistent snapshot, row by
    /// row (the caller calls `finish`). The profile needs an account (a registered
    /// identity, or a restore not re-registered yet).
    pub fn export_backup<W: Write>(
        &self,
        writer: &mut BackupWriter<W>,
        options: &BackupOptions,
    ) -> Result<RestoreSummary, E2eError> {
        // A read transaction: one snapshot of every table.
        let tx = self.conn.unchecked_transaction()?;
        let mut summary = RestoreSummary::default();
        let account = export_account(&tx)?;
        let me = account.handle.clone();
        writer.write_record(&Record::Account(account))?;

        for key in BACKED_UP_SETTINGS {
            if let Some(value) = crate::store::kv_get(&tx, key)? {
                writer.write_record(&Record::Setting(SettingRecord {
                    key: (*key).to_string(),
                    value,
                }))?;
            }
        }
        summary.contacts = export_contacts(&tx, writer)?;
        {
            let mut stmt = tx.prepare("SELECT handle, at_ms FROM blocked ORDER BY handle")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                writer.write_record(&Record::Blocked(BlockedRecord {
                    handle: r.get(0)?,
                    at_ms: from_sql_u64(r.get(1)?),
                }))?;
            }
            let mut stmt =
                tx.prepare("SELECT sender, id, at_ms FROM tombstones ORDER BY sender, id")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                writer.write_record(&Record::Tombstone(TombstoneRecord {
                    sender: r.get(0)?,
                    id: r.get(1)?,
                    at_ms: from_sql_u64(r.get(2)?),
                }))?;
            }
        }
        let conversations: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT peer FROM conversations ORDER BY created_at_ms, peer")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for name in conversations {
            writer.write_record(&Record::Conversation(export_conversation(&tx, &name)?))?;
            summary.conversations += 1;
            export_messages(&tx, writer, &name, &me, options, &mut summary)?;
        }
        drop(tx);
        Ok(summary)
    }
}

fn export_account(tx: &Connection) -> Result<AccountRecord, E2eError> {
    type Row = (String, Option<String>, Option<String>, Vec<u8>);
    let row: Option<Row> = tx
        .query_row(
            "SELECT handle, server_url, pin, account_secret FROM identity WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let row = match row {
        Some(row) => row,
        None if table_exists(tx, "backup_restore")? => tx
            .query_row(
                "SELECT handle, server_url, pin, account_secret FROM backup_restore WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .ok_or(E2eError::NotRegistered)?,
        None => return Err(E2eError::NotRegistered),
    };
    let (handle, server_url, pin, secret) = row;
    let secret = zeroize::Zeroizing::new(secret);
    let key = SecretKey::from_slice(&secret)
        .ok_or_else(|| E2eError::Storage("stored account key is malformed".into()))?;
    let directory_pin = tx
        .query_row(
            "SELECT vrf_key, signing_key, epoch, root FROM directory_pin WHERE id = 1",
            [],
            |r| {
                Ok(DirectoryPinRecord {
                    vrf_key: r.get(0)?,
                    signing_key: r.get(1)?,
                    epoch: from_sql_u64(r.get(2)?),
                    root: r.get(3)?,
                })
            },
        )
        .optional()?;
    Ok(AccountRecord {
        handle,
        account_key: key.public().to_vec(),
        account_secret: key.expose().to_vec(),
        server_url,
        tls_pin: pin,
        directory_pin,
    })
}

fn export_contacts<W: Write>(
    tx: &Connection,
    writer: &mut BackupWriter<W>,
) -> Result<u64, E2eError> {
    let mut accounts = tx.prepare("SELECT handle, account_key FROM accounts ORDER BY handle")?;
    let mut devices = tx.prepare(
        "SELECT device_id, device_key, created_at_ms, listed FROM devices
         WHERE handle = ?1 ORDER BY device_id",
    )?;
    let mut lists =
        tx.prepare("SELECT version, list, announced FROM device_lists WHERE handle = ?1")?;
    let mut verified = tx.prepare("SELECT account_key, at_ms FROM verified WHERE handle = ?1")?;
    let mut checks =
        tx.prepare("SELECT account_key, epoch, at_ms FROM directory_checks WHERE handle = ?1")?;
    let mut rows = accounts.query([])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let handle: String = r.get(0)?;
        let record = ContactRecord {
            account_key: r.get(1)?,
            devices: devices
                .query_map(params![handle], |d| {
                    let id: i64 = d.get(0)?;
                    Ok(ContactDevice {
                        device_id: u32::try_from(id).unwrap_or(0),
                        device_key: d.get(1)?,
                        created_at_ms: from_sql_u64(d.get(2)?),
                        listed: d.get::<_, i64>(3)? != 0,
                    })
                })?
                .collect::<Result<_, _>>()?,
            device_list: lists
                .query_row(params![handle], |l| {
                    Ok(DeviceListRecord {
                        version: from_sql_u64(l.get(0)?),
                        list: l.get(1)?,
                        announced: l.get(2)?,
                    })
                })
                .optional()?,
            verified: verified
                .query_row(params![handle], |v| {
                    Ok(VerifiedRecord {
                        account_key: v.get(0)?,
                        at_ms: from_sql_u64(v.get(1)?),
                    })
                })
                .optional()?,
            directory_check: checks
                .query_row(params![handle], |c| {
                    Ok(DirectoryCheckRecord {
                        account_key: c.get(0)?,
                        epoch: opt_u64(c.get(1)?),
                        at_ms: from_sql_u64(c.get(2)?),
                    })
                })
                .optional()?,
            handle,
        };
        writer.write_record(&Record::Contact(record))?;
        n += 1;
    }
    Ok(n)
}

fn export_conversation(tx: &Connection, name: &str) -> Result<ConversationRecord, E2eError> {
    let (suite, created, timer, request): (i64, i64, i64, i64) = tx.query_row(
        "SELECT suite, created_at_ms, expire_timer_ms, request FROM conversations WHERE peer = ?1",
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let group_chat = tx
        .query_row(
            "SELECT group_id, recovery_key, leaving, diverged_by FROM group_chats
             WHERE conversation = ?1",
            params![name],
            |r| {
                Ok(GroupChatRecord {
                    group_id: r.get(0)?,
                    recovery_key: r.get(1)?,
                    leaving: r.get::<_, i64>(2)? != 0,
                    diverged_by: r.get(3)?,
                })
            },
        )
        .optional()?;
    let mut stmt = tx.prepare(
        "SELECT group_id, suite, state, created_at_ms FROM groups
         WHERE conversation = ?1 ORDER BY created_at_ms, group_id",
    )?;
    let groups = stmt
        .query_map(params![name], |r| {
            let suite: i64 = r.get(1)?;
            Ok(GroupRecord {
                group_id: r.get(0)?,
                suite: u16::try_from(suite).unwrap_or(0),
                state: r.get(2)?,
                created_at_ms: from_sql_u64(r.get(3)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(ConversationRecord {
        name: name.to_string(),
        suite: u16::try_from(suite).unwrap_or(0),
        created_at_ms: from_sql_u64(created),
        expire_timer_ms: from_sql_u64(timer),
        request: request != 0,
        group_chat,
        groups,
    })
}

fn export_messages<W: Write>(
    tx: &Connection,
    writer: &mut BackupWriter<W>,
    conversation: &str,
    me: &str,
    options: &BackupOptions,
    summary: &mut RestoreSummary,
) -> Result<(), E2eError> {
    let mut stmt = tx.prepare(
        "SELECT id, sender, sender_device, group_id, sent_at_ms, received_at_ms, body,
                outgoing, state, kind, reply_to, edited_at_ms, expires_at_ms, view_once,
                read_at_ms
         FROM messages
         WHERE conversation = ?1 AND view_once != 1
           AND (expires_at_ms IS NULL OR expires_at_ms > ?2)
         ORDER BY n",
    )?;
    let mut reactions = tx.prepare(
        "SELECT reactor, emoji, at_ms FROM reactions
         WHERE message_sender = ?1 AND message_id = ?2 ORDER BY reactor",
    )?;
    let mut receipts = tx.prepare(
        "SELECT member, status, at_ms FROM receipts WHERE message_id = ?1 ORDER BY member",
    )?;
    let mut attachment = tx
        .prepare("SELECT attachment, path, error FROM attachments WHERE sender = ?1 AND id = ?2")?;
    let mut rows = stmt.query(params![conversation, to_sql_u64(options.now_ms)?])?;
    while let Some(r) = rows.next()? {
        let device: i64 = r.get(2)?;
        let state: i64 = r.get(8)?;
        let kind: i64 = r.get(9)?;
        let view_once: i64 = r.get(13)?;
        let mut m = MessageRecord {
            conversation: conversation.to_string(),
            id: r.get(0)?,
            sender: r.get(1)?,
            sender_device: u32::try_from(device).unwrap_or(0),
            group_id: r.get(3)?,
            sent_at_ms: from_sql_u64(r.get(4)?),
            received_at_ms: opt_u64(r.get(5)?),
            body: r.get(6)?,
            outgoing: r.get::<_, i64>(7)? != 0,
            state: u8::try_from(state).unwrap_or(3),
            kind: u32::try_from(kind).unwrap_or(u32::MAX),
            reply_to: r.get(10)?,
            edited_at_ms: opt_u64(r.get(11)?),
            expires_at_ms: opt_u64(r.get(12)?),
            view_once: u8::try_from(view_once).unwrap_or(2),
            read_at_ms: opt_u64(r.get(14)?),
            reactions: vec![],
            receipts: vec![],
            attachment: None,
        };
        m.reactions = reactions
            .query_map(params![m.sender, m.id], |x| {
                Ok(ReactionRecord {
                    reactor: x.get(0)?,
                    emoji: x.get(1)?,
                    at_ms: from_sql_u64(x.get(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        if m.outgoing && m.sender == me {
            m.receipts = receipts
                .query_map(params![m.id], |x| {
                    let status: i64 = x.get(1)?;
                    Ok(ReceiptRecord {
                        member: x.get(0)?,
                        status: u8::try_from(status).unwrap_or(0),
                        at_ms: from_sql_u64(x.get(2)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        m.attachment = attachment
            .query_row(params![m.sender, m.id], |x| {
                Ok(AttachmentRecord {
                    wire: x.get(0)?,
                    path: x.get(1)?,
                    error: x.get(2)?,
                })
            })
            .optional()?;
        let media = match (&m.attachment, options.include_media) {
            (Some(AttachmentRecord { path: Some(p), .. }), true) => Some(PathBuf::from(p)),
            _ => None,
        };
        let (sender, id) = (m.sender.clone(), m.id.clone());
        writer.write_record(&Record::Message(Box::new(m)))?;
        summary.messages += 1;
        if let Some(path) = media {
            // A file that is gone is left out (the attachment stays a download).
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "an attachment file is missing; not backed up");
                    continue;
                }
            };
            let size = file.metadata()?.len();
            let start = MediaStart {
                sender,
                message_id: id,
                file_name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size,
            };
            writer.write_media(start, &mut std::io::BufReader::new(file))?;
            summary.media_files += 1;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ import

/// A media file being restored.
struct MediaInProgress {
    temp: PathBuf,
    target: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    written: u64,
    size: u64,
}

/// Temporary media files of an import: deleted unless the import committed.
#[derive(Default)]
struct MediaFiles {
    /// (temporary, final) paths of complete files.
    done: Vec<(PathBuf, PathBuf)>,
    current: Option<MediaInProgress>,
}

impl MediaFiles {
    fn discard(&mut self) {
        if let Some(m) = self.current.take() {
            drop(m.file);
            let _ = std::fs::remove_file(&m.temp);
        }
        for (temp, _) in self.done.drain(..) {
            let _ = std::fs::remove_file(temp);
        }
    }
}

struct Importer {
    dir: PathBuf,
    now_ms: u64,
    backup_created_at_ms: u64,
    account: Option<AccountRecord>,
    conversations: std::collections::HashSet<String>,
    summary: RestoreSummary,
    media: MediaFiles,
}

impl Profile {
    /// Restores a backup into this profile, which must be fresh (no identity, no
    /// restore, no conversation). All or nothing: any error (tampered or truncated file,
    /// malformed record) leaves the profile as it was. See the module documentation for
    /// the state it leaves and the re-registration that follows.
    pub fn import_backup<R: Read>(
        &mut self,
        mut reader: BackupReader<R>,
        now_ms: u64,
    ) -> Result<RestoreSummary, E2eError> {
        if self.identity.is_some() || self.keys.is_some() {
            return Err(E2eError::RestoreRefused(
                "this profile already has an account; restore into a new profile".into(),
            ));
        }
        let dir = profile_dir(&self.conn)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(RESTORE_SCHEMA)?;
        let used: i64 = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM conversations) + (SELECT COUNT(*) FROM messages)
                  + (SELECT COUNT(*) FROM backup_restore) + (SELECT COUNT(*) FROM identity)",
            [],
            |r| r.get(0),
        )?;
        if used > 0 {
            return Err(E2eError::RestoreRefused(
                "this profile is not empty; restore into a new profile".into(),
            ));
        }
        let mut imp = Importer {
            dir,
            now_ms,
            backup_created_at_ms: reader.info().created_at_ms,
            account: None,
            conversations: Default::default(),
            summary: RestoreSummary::default(),
            media: MediaFiles::default(),
        };
        let result = (|| -> Result<(), E2eError> {
            while let Some(record) = reader.next_record()? {
                imp.apply(&tx, record)?;
            }
            imp.finish(&tx)
        })();
        if let Err(e) = result {
            drop(tx);
            imp.media.discard();
            return Err(e);
        }
        if let Err(e) = tx.commit() {
            imp.media.discard();
            return Err(e.into());
        }
        // Committed: the files go into place. One that cannot becomes a download again.
        for (temp, target) in std::mem::take(&mut imp.media.done) {
            if let Err(e) = std::fs::rename(&temp, &target) {
                tracing::warn!(error = %e, "a restored media file could not be moved into place");
                let _ = std::fs::remove_file(&temp);
                self.conn.execute(
                    "UPDATE attachments SET path = NULL WHERE path = ?1",
                    params![target.to_string_lossy()],
                )?;
                imp.summary.media_files = imp.summary.media_files.saturating_sub(1);
            }
        }
        Ok(imp.summary)
    }

    /// The account a restore brought back, until [`Profile::finish_restore`].
    pub fn restored_account(&self) -> Result<Option<RestoredAccount>, E2eError> {
        if !table_exists(&self.conn, "backup_restore")? {
            return Ok(None);
        }
        type Row = (String, Vec<u8>, Option<String>, Option<String>, i64);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT handle, account_secret, server_url, pin, backup_created_at_ms
                 FROM backup_restore WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((handle, secret, server_url, pin, created)) = row else {
            return Ok(None);
        };
        let secret = zeroize::Zeroizing::new(secret);
        let account_secret = SecretKey::from_slice(&secret)
            .ok_or_else(|| E2eError::Storage("restored account key is malformed".into()))?;
        Ok(Some(RestoredAccount {
            secrets: LinkSecrets {
                handle,
                account_secret,
            },
            server_url,
            pin,
            backup_created_at_ms: from_sql_u64(created),
        }))
    }

    /// Forgets the restored account secret (call after [`Profile::complete_link`]
    /// succeeded: the identity holds it from then on).
    pub fn finish_restore(&mut self) -> Result<(), E2eError> {
        if table_exists(&self.conn, "backup_restore")? {
            self.conn.execute("DELETE FROM backup_restore", [])?;
        }
        Ok(())
    }

    /// Restored conversations without MLS group state on this device, by name.
    pub fn restored_rejoins(&self) -> Result<Vec<RestoredConversation>, E2eError> {
        if !table_exists(&self.conn, "backup_rejoin")? {
            return Ok(vec![]);
        }
        let mut stmt = self.conn.prepare(
            "SELECT conversation, group_id, recovery_key FROM backup_rejoin ORDER BY conversation",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RestoredConversation {
                conversation: r.get(0)?,
                group_id: r.get(1)?,
                recovery_key: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that a restored conversation has an MLS group again (rejoined, or
    /// re-added by a member's Welcome).
    pub fn mark_rejoined(&mut self, conversation: &str) -> Result<(), E2eError> {
        if table_exists(&self.conn, "backup_rejoin")? {
            self.conn.execute(
                "DELETE FROM backup_rejoin WHERE conversation = ?1",
                params![conversation],
            )?;
        }
        Ok(())
    }
}

impl Importer {
    fn apply(&mut self, tx: &Connection, record: Record) -> Result<(), E2eError> {
        if self.media.current.is_some()
            && !matches!(record, Record::MediaData(_) | Record::MediaEnd(_))
        {
            return Err(bad("a media file without its end"));
        }
        if self.account.is_none() && !matches!(record, Record::Account(_)) {
            return Err(bad("the first record is not the account"));
        }
        match record {
            Record::Account(a) => self.account(tx, a),
            Record::Contact(c) => self.contact(tx, &c),
            Record::Conversation(c) => self.conversation(tx, &c),
            Record::Message(m) => self.message(tx, &m),
            Record::Blocked(b) => {
                validate_handle(&b.handle).map_err(|e| bad(format_args!("blocked: {e}")))?;
                tx.execute(
                    "INSERT OR REPLACE INTO blocked (handle, at_ms) VALUES (?1, ?2)",
                    params![b.handle, to_sql_u64(b.at_ms)?],
                )?;
                Ok(())
            }
            Record::Setting(s) => {
                if BACKED_UP_SETTINGS.contains(&s.key.as_str()) {
                    crate::store::kv_set(tx, &s.key, s.value)?;
                } else {
                    tracing::debug!(key = %s.key, "unknown setting in a backup skipped");
                }
                Ok(())
            }
            Record::Tombstone(t) => {
                tx.execute(
                    "INSERT OR REPLACE INTO tombstones (sender, id, at_ms) VALUES (?1, ?2, ?3)",
                    params![t.sender, t.id, to_sql_u64(t.at_ms)?],
                )?;
                Ok(())
            }
            Record::MediaStart(s) => self.media_start(tx, &s),
            Record::MediaData(d) => {
                let m = self
                    .media
                    .current
                    .as_mut()
                    .ok_or_else(|| bad("media data outside a media file"))?;
                m.written += d.len() as u64;
                if m.written > m.size {
                    return Err(bad("a media file is longer than announced"));
                }
                m.hash.update(&d);
                m.file.write_all(&d)?;
                Ok(())
            }
            Record::MediaEnd(e) => {
                let m = self
                    .media
                    .current
                    .take()
                    .ok_or_else(|| bad("a media end outside a media file"))?;
                let MediaInProgress {
                    temp,
                    target,
                    file,
                    hash,
                    written,
                    size,
                } = m;
                // Registered first so that a failure below still deletes it.
                self.media.done.push((temp, target));
                let file = file
                    .into_inner()
                    .map_err(|e| E2eError::from(e.into_error()))?;
                file.sync_all()?;
                if written != size || hash.finalize().as_slice() != e.sha256.as_slice() {
                    return Err(bad("a media file does not match its size or hash"));
                }
                self.summary.media_files += 1;
                Ok(())
            }
            Record::Unknown { kind, .. } => {
                tracing::debug!(kind, "unknown record kind in a backup skipped");
                Ok(())
            }
        }
    }

    fn account(&mut self, tx: &Connection, a: AccountRecord) -> Result<(), E2eError> {
        if self.account.is_some() {
            return Err(bad("a second account record"));
        }
        validate_handle(&a.handle).map_err(|e| bad(format_args!("account handle: {e}")))?;
        let key = SecretKey::from_slice(&a.account_secret)
            .ok_or_else(|| bad("the account secret is not 32 bytes"))?;
        if key.public().as_slice() != a.account_key.as_slice() {
            return Err(bad("the account secret does not match the account key"));
        }
        if let Some(d) = &a.directory_pin {
            tx.execute(
                "INSERT OR REPLACE INTO directory_pin (id, vrf_key, signing_key, epoch, root)
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![d.vrf_key, d.signing_key, to_sql_u64(d.epoch)?, d.root],
            )?;
        }
        self.account = Some(a);
        Ok(())
    }

    fn contact(&mut self, tx: &Connection, c: &ContactRecord) -> Result<(), E2eError> {
        validate_handle(&c.handle).map_err(|e| bad(format_args!("contact handle: {e}")))?;
        if c.account_key.len() != 32 {
            return Err(bad(format_args!(
                "{}: account key is not 32 bytes",
                c.handle
            )));
        }
        if let Some(a) = &self.account
            && a.handle == c.handle
            && a.account_key != c.account_key
        {
            return Err(bad("the account's own pinned key differs from its key"));
        }
        tx.execute(
            "INSERT INTO accounts (handle, account_key) VALUES (?1, ?2)",
            params![c.handle, c.account_key],
        )?;
        for d in &c.devices {
            tx.execute(
                "INSERT INTO devices (handle, device_id, device_key, created_at_ms, listed)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    c.handle,
                    d.device_id,
                    d.device_key,
                    to_sql_u64(d.created_at_ms)?,
                    d.listed
                ],
            )?;
        }
        if let Some(l) = &c.device_list {
            tx.execute(
                "INSERT INTO device_lists (handle, version, list, announced) VALUES (?1, ?2, ?3, ?4)",
                params![c.handle, to_sql_u64(l.version)?, l.list, l.announced],
            )?;
        }
        if let Some(v) = &c.verified {
            tx.execute(
                "INSERT INTO verified (handle, account_key, at_ms) VALUES (?1, ?2, ?3)",
                params![c.handle, v.account_key, to_sql_u64(v.at_ms)?],
            )?;
        }
        if let Some(d) = &c.directory_check {
            tx.execute(
                "INSERT INTO directory_checks (handle, account_key, epoch, at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    c.handle,
                    d.account_key,
                    opt_sql(d.epoch)?,
                    to_sql_u64(d.at_ms)?
                ],
            )?;
        }
        self.summary.contacts += 1;
        Ok(())
    }

    fn conversation(&mut self, tx: &Connection, c: &ConversationRecord) -> Result<(), E2eError> {
        if c.name.is_empty() || !self.conversations.insert(c.name.clone()) {
            return Err(bad("an empty or repeated conversation name"));
        }
        if crate::Suite::from_code(c.suite).is_none() {
            return Err(bad(format_args!("unknown suite {:#06x}", c.suite)));
        }
        tx.execute(
            "INSERT INTO conversations (peer, suite, created_at_ms, expire_timer_ms, request)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                c.name,
                c.suite,
                to_sql_u64(c.created_at_ms)?,
                to_sql_u64(c.expire_timer_ms)?,
                c.request
            ],
        )?;
        let (group_id, recovery_key) = match &c.group_chat {
            Some(g) => {
                tx.execute(
                    "INSERT INTO group_chats (group_id, conversation, leaving, recovery_key,
                         diverged_by)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![g.group_id, c.name, g.leaving, g.recovery_key, g.diverged_by],
                )?;
                (Some(g.group_id.clone()), g.recovery_key.clone())
            }
            None => (
                c.groups
                    .iter()
                    .rev()
                    .find(|g| g.state == "active")
                    .or(c.groups.last())
                    .map(|g| g.group_id.clone()),
                None,
            ),
        };
        tx.execute(
            "INSERT INTO backup_rejoin (conversation, group_id, recovery_key) VALUES (?1, ?2, ?3)",
            params![c.name, group_id, recovery_key],
        )?;
        self.summary.conversations += 1;
        Ok(())
    }

    fn message(&mut self, tx: &Connection, m: &MessageRecord) -> Result<(), E2eError> {
        if !self.conversations.contains(&m.conversation) {
            return Err(bad("a message of a conversation not restored before it"));
        }
        if m.state > 3 {
            return Err(bad(format_args!("message state {}", m.state)));
        }
        // The outbox is not restored: a queued message never goes out.
        let state = if m.state == 0 { 3 } else { m.state };
        tx.execute(
            "INSERT INTO messages (id, conversation, sender, sender_device, group_id, sent_at_ms,
                 received_at_ms, body, outgoing, state, kind, reply_to, edited_at_ms,
                 expires_at_ms, view_once, read_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                m.id,
                m.conversation,
                m.sender,
                m.sender_device,
                m.group_id,
                to_sql_u64(m.sent_at_ms)?,
                opt_sql(m.received_at_ms)?,
                m.body,
                m.outgoing,
                state,
                m.kind,
                m.reply_to,
                opt_sql(m.edited_at_ms)?,
                opt_sql(m.expires_at_ms)?,
                m.view_once,
                opt_sql(m.read_at_ms)?
            ],
        )?;
        for r in &m.reactions {
            tx.execute(
                "INSERT INTO reactions (message_sender, message_id, reactor, emoji, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![m.sender, m.id, r.reactor, r.emoji, to_sql_u64(r.at_ms)?],
            )?;
        }
        for r in &m.receipts {
            tx.execute(
                "INSERT OR REPLACE INTO receipts (message_id, member, status, at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![m.id, r.member, r.status, to_sql_u64(r.at_ms)?],
            )?;
        }
        if let Some(a) = &m.attachment {
            // The backed-up device's path means nothing here: a download again, unless
            // the media records that follow bring the file.
            tx.execute(
                "INSERT INTO attachments (sender, id, attachment, path, error)
                 VALUES (?1, ?2, ?3, NULL, ?4)",
                params![m.sender, m.id, a.wire, a.error],
            )?;
        }
        self.summary.messages += 1;
        Ok(())
    }

    fn media_start(&mut self, tx: &Connection, s: &MediaStart) -> Result<(), E2eError> {
        let known: i64 = tx.query_row(
            "SELECT COUNT(*) FROM attachments WHERE sender = ?1 AND id = ?2",
            params![s.sender, s.message_id],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Err(bad("a media file of no restored attachment"));
        }
        let media_dir = self.dir.join("media").join("restored");
        std::fs::create_dir_all(&media_dir)?;
        let stem = format!(
            "{}-{}-{}",
            safe_name(&s.sender),
            hex::encode(&s.message_id),
            safe_name(&s.file_name)
        );
        let target = media_dir.join(&stem);
        let temp = media_dir.join(format!(".{stem}.restore-{}", self.now_ms));
        let file = std::fs::File::create(&temp)?;
        tx.execute(
            "UPDATE attachments SET path = ?1 WHERE sender = ?2 AND id = ?3",
            params![target.to_string_lossy(), s.sender, s.message_id],
        )?;
        self.media.current = Some(MediaInProgress {
            temp,
            target,
            file: std::io::BufWriter::new(file),
            hash: Sha256::new(),
            written: 0,
            size: s.size,
        });
        Ok(())
    }

    fn finish(&mut self, tx: &Connection) -> Result<(), E2eError> {
        if self.media.current.is_some() {
            return Err(bad("the backup ends inside a media file"));
        }
        let a = self
            .account
            .as_ref()
            .ok_or_else(|| bad("no account record"))?;
        tx.execute(
            "INSERT INTO backup_restore (id, handle, account_secret, server_url, pin,
                 backup_created_at_ms, restored_at_ms)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                a.handle,
                a.account_secret,
                a.server_url,
                a.tls_pin,
                to_sql_u64(self.backup_created_at_ms)?,
                to_sql_u64(self.now_ms)?
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::Cursor;

    use hushwire_backup::{BackupError, CHUNK_BYTES, HEADER_BYTES, TAG_BYTES};
    use hushwire_proto::identity::device_cert_payload;
    use hushwire_proto::wire::{self, DeviceCertificate};
    use prost::Message as _;
    use rusqlite::types::Value;

    use super::*;
    use crate::StoreKey;

    const URL: &str = "https://127.0.0.1:1";
    const NOW: u64 = 1_800_000_000_000;

    fn open(dir: &Path) -> Profile {
        Profile::open(dir, &StoreKey::from_bytes([7; 32])).unwrap()
    }

    fn id_of(seq: u32) -> Vec<u8> {
        let mut id = vec![0x01; 16];
        id[12..].copy_from_slice(&seq.to_be_bytes());
        id
    }

    /// Alice with contacts, a 1:1 chat with bob (texts, reactions, receipts, an
    /// attachment whose file exists, an expired and an unopened view-once message), a
    /// group chat with its recovery key, blocks, settings and `extra` more messages.
    fn alice(root: &Path, extra: u32) -> Profile {
        let mut p = open(&root.join("alice"));
        p.create_identity("alice", 1_000).unwrap();
        p.complete_registration(URL, Some("sha256/pin"), 1).unwrap();
        let c = &p.conn;
        c.execute(
            "INSERT INTO accounts (handle, account_key) VALUES ('bob', ?1)",
            params![vec![3u8; 32]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO devices (handle, device_id, device_key, created_at_ms, listed)
             VALUES ('bob', 1, ?1, 5, 1), ('bob', 2, ?2, 6, 0)",
            params![vec![4u8; 32], vec![5u8; 32]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO verified (handle, account_key, at_ms) VALUES ('bob', ?1, 7)",
            params![vec![3u8; 32]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO conversations (peer, suite, created_at_ms, expire_timer_ms, request)
             VALUES ('bob', 79, 10, 3600000, 0), ('#friends', 1, 20, 0, 0),
                    ('carol', 79, 30, 0, 1)",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
             VALUES (?1, 'bob', 79, 'active', 10), (?2, '#friends', 1, 'active', 20)",
            params![vec![0xaau8; 32], vec![0xbbu8; 32]],
        )
        .unwrap();
        c.execute(
            "INSERT INTO group_chats (group_id, conversation, leaving, recovery_key)
             VALUES (?1, '#friends', 0, ?2)",
            params![vec![0xbbu8; 32], vec![0xccu8; 32]],
        )
        .unwrap();
        let insert =
            |seq: u32, conv: &str, sender: &str, body: &str, extra: (i64, i64, Option<i64>)| {
                let own = sender == "alice";
                let (kind, view_once, expires) = extra;
                c.execute(
                    "INSERT INTO messages (id, conversation, sender, sender_device, group_id,
                     sent_at_ms, received_at_ms, body, outgoing, state, kind, view_once,
                     expires_at_ms, reply_to, edited_at_ms, read_at_ms)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                    params![
                        id_of(seq),
                        conv,
                        sender,
                        vec![0xaau8; 32],
                        10_000 + i64::from(seq),
                        (!own).then_some(20_000 + i64::from(seq)),
                        body,
                        own,
                        if own { if seq == 3 { 0 } else { 1 } } else { 2 },
                        kind,
                        view_once,
                        expires,
                        (seq == 2).then(|| id_of(1)),
                        (seq == 2).then_some(30_000),
                        (!own && seq.is_multiple_of(3)).then_some(40_000)
                    ],
                )
                .unwrap();
            };
        insert(1, "bob", "bob", "hello alice", (0, 0, None));
        insert(
            2,
            "bob",
            "alice",
            "hi bob (edited)",
            (0, 0, Some(9_000_000_000_000)),
        );
        insert(3, "bob", "alice", "queued one", (0, 0, None));
        insert(4, "bob", "bob", "a photo", (3, 0, None));
        insert(5, "bob", "bob", "gone", (0, 0, Some(1)));
        insert(6, "bob", "bob", "secret", (0, 1, None));
        insert(
            7,
            "#friends",
            "carol",
            "{\"event\":\"joined\"}",
            (1, 0, None),
        );
        insert(8, "#friends", "alice", "hello friends", (0, 0, None));
        for i in 0..extra {
            let sender = if i.is_multiple_of(2) {
                "alice"
            } else {
                "carol"
            };
            insert(
                100 + i,
                "#friends",
                sender,
                &format!("bulk message {i} {}", "z".repeat(60)),
                (0, 0, None),
            );
        }
        c.execute(
            "INSERT INTO reactions (message_sender, message_id, reactor, emoji, at_ms)
             VALUES ('bob', ?1, 'alice', '❤️', 11), ('bob', ?1, 'bob', '👍', 12)",
            params![id_of(1)],
        )
        .unwrap();
        c.execute(
            "INSERT INTO receipts (message_id, member, status, at_ms) VALUES (?1, 'bob', 2, 13)",
            params![id_of(2)],
        )
        .unwrap();
        let file = root.join("photo.jpg");
        std::fs::write(&file, vec![0x42u8; 150_000]).unwrap();
        let a = wire::Attachment {
            blob_id: vec![9; 32].into(),
            key: vec![8; 32].into(),
            file_name: "photo.jpg".into(),
            size: 150_000,
            ..Default::default()
        };
        c.execute(
            "INSERT INTO attachments (sender, id, attachment, path) VALUES ('bob', ?1, ?2, ?3)",
            params![id_of(4), a.encode_to_vec(), file.to_string_lossy()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO blocked (handle, at_ms) VALUES ('mallory', 14)",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO tombstones (sender, id, at_ms) VALUES ('bob', ?1, 15)",
            params![id_of(99)],
        )
        .unwrap();
        crate::store::kv_set(c, "read_receipts", 0).unwrap();
        crate::store::kv_set(c, "last_received_seq", 777).unwrap();
        p
    }

    fn dump(conn: &Connection, sql: &str) -> Vec<Vec<Value>> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    const MESSAGES: &str = "SELECT id, conversation, sender, sender_device, group_id, sent_at_ms,
        received_at_ms, body, outgoing, CASE state WHEN 0 THEN 3 ELSE state END, kind,
        reply_to, edited_at_ms, expires_at_ms, view_once, read_at_ms FROM messages
        WHERE view_once != 1 AND (expires_at_ms IS NULL OR expires_at_ms > 1800000000000)
        ORDER BY n";
    const SAME: &[&str] = &[
        "SELECT * FROM conversations ORDER BY peer",
        "SELECT * FROM group_chats ORDER BY group_id",
        "SELECT * FROM accounts ORDER BY handle",
        "SELECT * FROM reactions ORDER BY message_sender, message_id, reactor",
        "SELECT * FROM receipts ORDER BY message_id, member",
        "SELECT * FROM blocked ORDER BY handle",
        "SELECT * FROM tombstones ORDER BY sender, id",
        "SELECT * FROM verified ORDER BY handle",
        "SELECT sender, id, attachment, error FROM attachments ORDER BY sender, id",
        "SELECT * FROM kv WHERE key IN ('read_receipts', 'default_suite', 'presence_share')",
    ];

    fn backup(p: &Profile, key: &RecoveryKey, media: bool) -> (Vec<u8>, RestoreSummary) {
        p.write_backup(
            Vec::new(),
            key,
            &BackupOptions {
                include_media: media,
                now_ms: NOW,
            },
        )
        .unwrap()
    }

    fn restore(
        p: &mut Profile,
        bytes: &[u8],
        key: &RecoveryKey,
    ) -> Result<RestoreSummary, E2eError> {
        let reader = BackupReader::new(Cursor::new(bytes), key)?;
        p.import_backup(reader, NOW)
    }

    /// The fresh profile is still empty and has no restore files.
    fn assert_untouched(p: &Profile, dir: &Path) {
        assert!(p.conversations().unwrap().is_empty());
        assert!(p.restored_account().unwrap().is_none());
        assert!(p.restored_rejoins().unwrap().is_empty());
        assert!(p.identity().is_none());
        let n: i64 = p
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM accounts)
                      + (SELECT COUNT(*) FROM attachments) + (SELECT COUNT(*) FROM blocked)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        let restored = dir.join("media/restored");
        if restored.exists() {
            assert_eq!(std::fs::read_dir(&restored).unwrap().count(), 0);
        }
    }

    #[test]
    fn round_trip_keeps_history_settings_and_media() {
        let root = tempfile::tempdir().unwrap();
        let old = alice(root.path(), 20);
        let key = RecoveryKey::generate();
        let (bytes, written) = backup(&old, &key, true);
        assert_eq!(written.conversations, 3);
        assert_eq!(written.messages, 6 + 20);
        assert_eq!(written.contacts, 2);
        assert_eq!(written.media_files, 1);

        let dir = root.path().join("new");
        let mut new = open(&dir);
        let summary = restore(&mut new, &bytes, &key).unwrap();
        assert_eq!(summary, written);

        assert_eq!(
            dump(&old.conn, MESSAGES),
            dump(
                &new.conn,
                "SELECT id, conversation,
            sender, sender_device, group_id, sent_at_ms, received_at_ms, body, outgoing, state,
            kind, reply_to, edited_at_ms, expires_at_ms, view_once, read_at_ms FROM messages
            ORDER BY n"
            )
        );
        for sql in SAME {
            assert_eq!(dump(&old.conn, sql), dump(&new.conn, sql), "{sql}");
        }
        for conv in ["bob", "#friends", "carol"] {
            let old_h = old.history(conv).unwrap();
            let new_h = new.history(conv).unwrap();
            let keep: Vec<_> = old_h
                .into_iter()
                .filter(|m| m.text != "gone" && m.text != "secret" && !m.text.is_empty())
                .map(|m| (m.id, m.from, m.text, m.sent_at_ms, m.conversation))
                .collect();
            let got: Vec<_> = new_h
                .into_iter()
                .filter(|m| !m.text.is_empty())
                .map(|m| (m.id, m.from, m.text, m.sent_at_ms, m.conversation))
                .collect();
            assert_eq!(keep, got, "{conv}");
        }
        // Devices, but only the contacts' (the device key of alice/1 is NOT restored as
        // this device's).
        assert_eq!(
            dump(
                &old.conn,
                "SELECT * FROM devices ORDER BY handle, device_id"
            ),
            dump(
                &new.conn,
                "SELECT * FROM devices ORDER BY handle, device_id"
            )
        );
        let secret: Vec<u8> = new
            .conn
            .query_row("SELECT COUNT(*) FROM identity", [], |r| r.get::<_, i64>(0))
            .map(|n| vec![u8::try_from(n).unwrap()])
            .unwrap();
        assert_eq!(secret, vec![0]);
        // The device-local counter did not travel.
        assert_eq!(new.last_received_seq().unwrap(), 0);

        // The media file is in place, the attachment points to it.
        let path: String = new
            .conn
            .query_row("SELECT path FROM attachments", [], |r| r.get(0))
            .unwrap();
        assert!(path.starts_with(dir.to_str().unwrap()), "{path}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 150_000]);

        // Rejoin list: every conversation, with the group chat's recovery key.
        let rejoins = new.restored_rejoins().unwrap();
        assert_eq!(rejoins.len(), 3);
        let friends = rejoins
            .iter()
            .find(|r| r.conversation == "#friends")
            .unwrap();
        assert_eq!(friends.group_id, Some(vec![0xbbu8; 32]));
        assert_eq!(friends.recovery_key, Some(vec![0xccu8; 32]));
        let bob = rejoins.iter().find(|r| r.conversation == "bob").unwrap();
        assert_eq!(bob.group_id, Some(vec![0xaau8; 32]));
        assert!(new.groups("bob").unwrap().is_empty());

        // The restored account becomes a new device of the same account via linking.
        let restored = new.restored_account().unwrap().unwrap();
        assert_eq!(restored.secrets.handle, "alice");
        assert_eq!(restored.server_url.as_deref(), Some(URL));
        assert_eq!(restored.pin.as_deref(), Some("sha256/pin"));
        assert_eq!(restored.backup_created_at_ms, NOW);
        let old_id = old.identity().unwrap().clone();
        assert_eq!(restored.secrets.account_secret.public(), old_id.account_key);
        let device_key = new.begin_link(NOW).unwrap();
        let cert = DeviceCertificate {
            device_key: device_key.to_vec().into(),
            created_at_ms: NOW,
            signature: restored
                .secrets
                .account_secret
                .sign(&device_cert_payload("alice", &device_key, NOW))
                .to_vec()
                .into(),
        };
        new.complete_link(
            &restored.secrets,
            3,
            &cert,
            restored.server_url.as_deref().unwrap(),
            restored.pin.as_deref(),
        )
        .unwrap();
        new.finish_restore().unwrap();
        assert!(new.restored_account().unwrap().is_none());
        let id = new.identity().unwrap();
        assert_eq!((id.handle.as_str(), id.device_id), ("alice", 3));
        assert_eq!(id.account_key, old_id.account_key);
        assert_ne!(id.device_key, old_id.device_key);
        new.mark_rejoined("bob").unwrap();
        assert_eq!(new.restored_rejoins().unwrap().len(), 2);

        // A restored profile backs up again.
        let (again, _) = backup(&new, &key, false);
        let mut third = open(&root.path().join("third"));
        let s = restore(&mut third, &again, &key).unwrap();
        assert_eq!((s.conversations, s.messages, s.media_files), (3, 26, 0));
    }

    /// Peak resident memory of this process (`VmHWM`), in KiB.
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// A 100,000-message history goes to a backup file and back record by record, and
    /// arrives whole. Prints the time, the file size and the process's peak memory
    /// (`cargo test --release -p hushwire-e2e --lib -- --nocapture large_history`; the
    /// peak is this test's only when it runs alone).
    #[test]
    fn a_large_history_streams_through_a_file() {
        const N: u32 = 100_000;
        let root = tempfile::tempdir().unwrap();
        let old = alice(root.path(), 0);
        {
            let tx = old.conn.unchecked_transaction().unwrap();
            let mut stmt = tx
                .prepare(
                    "INSERT INTO messages (id, conversation, sender, sender_device, group_id,
                     sent_at_ms, received_at_ms, body, outgoing, state, kind, view_once)
                     VALUES (?1, '#friends', 'carol', 1, ?2, ?3, ?4, ?5, 0, 2, 0, 0)",
                )
                .unwrap();
            for i in 0..N {
                let at = 50_000 + i64::from(i);
                let body = format!("bulk message {i} {}", "z".repeat(100));
                stmt.execute(params![id_of(1_000 + i), vec![0xbbu8; 32], at, at, body])
                    .unwrap();
            }
            drop(stmt);
            tx.commit().unwrap();
        }
        let before = peak_rss_kib();
        let key = RecoveryKey::generate();
        let path = root.path().join("large.hwbackup");
        let options = BackupOptions {
            include_media: false,
            now_ms: NOW,
        };
        let started = std::time::Instant::now();
        let out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let (out, written) = old.write_backup(out, &key, &options).unwrap();
        out.into_inner().unwrap().sync_all().unwrap();
        let wrote = started.elapsed();
        let after_create = peak_rss_kib();
        assert_eq!(written.messages, 6 + u64::from(N));

        let started = std::time::Instant::now();
        let dir = root.path().join("new");
        let mut new = open(&dir);
        let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let reader = BackupReader::new(file, &key).unwrap();
        let summary = new.import_backup(reader, NOW).unwrap();
        let read = started.elapsed();
        assert_eq!(summary, written);
        let count = |p: &Profile| -> i64 {
            p.conn
                .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&new), 6 + i64::from(N));
        let last = new.history("#friends").unwrap().pop().unwrap();
        assert!(last.text.starts_with(&format!("bulk message {}", N - 1)));
        let size = std::fs::metadata(&path).unwrap().len();
        println!(
            "large_history: {} messages, backup {:.1} MB, create {:.2} s, restore {:.2} s, \
             peak RSS {} KiB before, {} KiB after creating, {} KiB after restoring",
            6 + N,
            size as f64 / 1e6,
            wrote.as_secs_f64(),
            read.as_secs_f64(),
            before,
            after_create,
            peak_rss_kib()
        );
    }

    #[test]
    fn wrong_key_tampered_and_truncated_write_nothing() {
        let root = tempfile::tempdir().unwrap();
        let old = alice(root.path(), 1_500);
        let key = RecoveryKey::generate();
        let (bytes, _) = backup(&old, &key, true);
        let chunk = CHUNK_BYTES + TAG_BYTES;
        let chunks = (bytes.len() - HEADER_BYTES).div_ceil(chunk);
        assert!(chunks >= 3, "{chunks} chunks");
        let dir = root.path().join("new");
        let mut new = open(&dir);

        let wrong = restore(&mut new, &bytes, &RecoveryKey::generate()).unwrap_err();
        assert!(
            matches!(wrong, E2eError::Backup(BackupError::WrongKey)),
            "{wrong:?}"
        );
        assert_untouched(&new, &dir);

        // A byte changed in the last chunk: records of earlier chunks were applied in
        // the transaction, then rolled back; the media file written is deleted.
        for pos in [
            HEADER_BYTES + 5,
            HEADER_BYTES + chunk + 100,
            bytes.len() - 3,
        ] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x10;
            let err = restore(&mut new, &bad, &key).unwrap_err();
            assert!(
                matches!(err, E2eError::Backup(BackupError::Tampered { .. })),
                "{err:?}"
            );
            assert_untouched(&new, &dir);
        }
        let cut = &bytes[..HEADER_BYTES + (chunks - 1) * chunk];
        let err = restore(&mut new, cut, &key).unwrap_err();
        assert!(
            matches!(err, E2eError::Backup(BackupError::Truncated)),
            "{err:?}"
        );
        assert_untouched(&new, &dir);

        // Still usable: the good backup restores.
        let s = restore(&mut new, &bytes, &key).unwrap();
        assert_eq!(s.messages, 1_506);
        assert_eq!(s.media_files, 1);
        // And a second restore into it is refused.
        let again = restore(&mut new, &bytes, &key).unwrap_err();
        assert!(matches!(again, E2eError::RestoreRefused(_)), "{again:?}");
    }

    #[test]
    fn restore_refused_into_a_profile_with_an_account() {
        let root = tempfile::tempdir().unwrap();
        let mut old = alice(root.path(), 0);
        let key = RecoveryKey::generate();
        let (bytes, _) = backup(&old, &key, false);
        let err = restore(&mut old, &bytes, &key).unwrap_err();
        assert!(matches!(err, E2eError::RestoreRefused(_)), "{err:?}");
        // A profile without an account cannot be backed up.
        let empty = open(&root.path().join("empty"));
        let err = empty
            .write_backup(
                Vec::new(),
                &key,
                &BackupOptions {
                    include_media: false,
                    now_ms: NOW,
                },
            )
            .unwrap_err();
        assert!(matches!(err, E2eError::NotRegistered), "{err:?}");
    }
}
