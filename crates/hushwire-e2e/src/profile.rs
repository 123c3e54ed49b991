//! The profile: opening, identity, accounts (TOFU pinning), member authentication and the
//! read-only queries.

use std::collections::HashSet;
use std::path::Path;

use hushwire_proto::identity::{device_cert_payload, validate_handle, verify};
use hushwire_proto::wire::{AccountInfo, DeviceCertificate};
use openmls::prelude::{BasicCredential, Credential, CredentialWithKey, KeyPackage, MlsMessageOut};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::features::{MESSAGE_COLUMNS, message_from_row};
use crate::keys::{IdentityKeys, SecretKey, StoreKey};
use crate::store::{self, Provider, from_sql_u64, kv_get, kv_set, to_sql_u64};
use crate::{ConversationSummary, E2eError, Identity, Registration, StoredMessage, Suite};

/// The profile database's file name in the profile directory.
pub const PROFILE_DB: &str = "profile.sqlite";

pub(crate) const KV_LAST_SEQ: &str = "last_received_seq";
pub(crate) const KV_DEFAULT_SUITE: &str = "default_suite";

/// One local profile: an identity, its conversations and its outbox, in one SQLite
/// database (`profile.sqlite` in the profile directory).
///
/// `Profile` is `Send` (it owns its `rusqlite::Connection`); it is not meant to be
/// shared between threads without a lock.
pub struct Profile {
    pub(crate) conn: Connection,
    pub(crate) identity: Option<Identity>,
    /// Keys exist from `create_identity` on, `identity` only after registration.
    pub(crate) keys: Option<IdentityKeys>,
    pub(crate) pending_handle: Option<String>,
    /// Handles whose `AccountInfo` was fed in during this session. A leaf naming an
    /// unknown device of such a handle is rejected instead of asking for the account
    /// again (which would loop). An entry is dropped when it causes a rejection, so a
    /// device added later leads to one more `NeedAccount`.
    pub(crate) fresh_accounts: HashSet<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("identity", &self.identity)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// One MLS group of a conversation, for diagnostics and safety-number style checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// The local epoch.
    pub epoch: u64,
    /// `pending`, `active`, `inactive` or `failed`.
    pub state: String,
    /// The current epoch authenticator (equal on all members in the same epoch).
    pub epoch_authenticator: Vec<u8>,
    /// Member devices as `handle/device_id`, sorted.
    pub members: Vec<String>,
    /// Whether this is the group the conversation sends on.
    pub sending: bool,
}

/// A leaf's credential, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DeviceAddr {
    pub handle: String,
    pub device_id: u32,
}

impl DeviceAddr {
    pub(crate) fn credential_string(&self) -> String {
        format!("{}/{}", self.handle, self.device_id)
    }
    pub(crate) fn to_wire(&self) -> hushwire_proto::wire::DeviceAddress {
        hushwire_proto::wire::DeviceAddress {
            handle: self.handle.clone(),
            device_id: self.device_id,
        }
    }
}

/// Why a leaf is not acceptable.
#[derive(Debug)]
pub(crate) enum LeafCheck {
    /// The handle's account is unknown (or may have a new device): fetch it.
    NeedAccount(String),
    /// The leaf is not bound to a certified device.
    Invalid(String),
    /// The database failed.
    Fatal(E2eError),
}

impl From<E2eError> for LeafCheck {
    fn from(e: E2eError) -> Self {
        LeafCheck::Fatal(e)
    }
}

impl From<rusqlite::Error> for LeafCheck {
    fn from(e: rusqlite::Error) -> Self {
        LeafCheck::Fatal(e.into())
    }
}

pub(crate) fn parse_credential(credential: &Credential) -> Result<DeviceAddr, String> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| "credential is not a basic credential".to_string())?;
    let text =
        std::str::from_utf8(basic.identity()).map_err(|_| "credential is not UTF-8".to_string())?;
    let (handle, device) = text
        .split_once('/')
        .ok_or_else(|| "credential is not handle/device_id".to_string())?;
    validate_handle(handle).map_err(|e| format!("credential handle: {e}"))?;
    let device_id: u32 = device
        .parse()
        .map_err(|_| "credential device id is not a number".to_string())?;
    Ok(DeviceAddr {
        handle: handle.to_string(),
        device_id,
    })
}

pub(crate) fn uuid_text(id: &[u8]) -> String {
    match uuid::Uuid::from_slice(id) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

pub(crate) fn new_message_id(now_ms: u64) -> [u8; 16] {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        now_ms / 1000,
        u32::try_from((now_ms % 1000) * 1_000_000).unwrap_or(0),
    );
    *uuid::Uuid::new_v7(ts).as_bytes()
}

impl Profile {
    /// Opens the profile in `dir` (created if missing): `dir/profile.sqlite`, encrypted
    /// with `key` (SQLCipher), WAL mode, versioned migrations for our tables and
    /// OpenMLS's. A plaintext database from an older release is encrypted first. A key
    /// that does not open the database is [`E2eError::WrongKey`], with nothing changed.
    pub fn open(dir: &Path, key: &StoreKey) -> Result<Self, E2eError> {
        std::fs::create_dir_all(dir)?;
        let conn = store::open_db(&dir.join(PROFILE_DB), key)?;
        let mut profile = Profile {
            conn,
            identity: None,
            keys: None,
            pending_handle: None,
            fresh_accounts: HashSet::new(),
        };
        profile.load_identity()?;
        Ok(profile)
    }

    fn load_identity(&mut self) -> Result<(), E2eError> {
        type Row = (
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Vec<u8>,
            Vec<u8>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT handle, device_id, server_url, pin, account_secret, device_secret
                 FROM identity WHERE id = 1",
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
        let Some((handle, device_id, server_url, pin, account_secret, device_secret)) = row else {
            return Ok(());
        };
        let account = SecretKey::from_slice(&account_secret)
            .ok_or_else(|| E2eError::Storage("stored account key is malformed".into()))?;
        let device = SecretKey::from_slice(&device_secret)
            .ok_or_else(|| E2eError::Storage("stored device key is malformed".into()))?;
        if let (Some(device_id), Some(server_url)) = (device_id, server_url) {
            let device_id = u32::try_from(device_id)
                .map_err(|_| E2eError::Storage("stored device id out of range".into()))?;
            self.identity = Some(Identity {
                handle: handle.clone(),
                device_id,
                server_url,
                pin,
                account_key: account.public(),
                device_key: device.public(),
            });
        }
        self.pending_handle = Some(handle);
        self.keys = Some(IdentityKeys { account, device });
        Ok(())
    }

    /// The SQLCipher version the database is encrypted with (`PRAGMA cipher_version`).
    pub fn cipher_version(&self) -> Result<String, E2eError> {
        store::cipher_version(&self.conn)
    }

    /// The identity, once registration completed.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub(crate) fn me(&self) -> Result<(&Identity, &IdentityKeys), E2eError> {
        match (&self.identity, &self.keys) {
            (Some(i), Some(k)) => Ok((i, k)),
            _ => Err(E2eError::NotRegistered),
        }
    }

    /// Creates the account and device keys and the device certificate for `handle`.
    /// Calling it again before registration completed replaces the keys (e.g. after the
    /// server refused the handle).
    pub fn create_identity(&mut self, handle: &str, now_ms: u64) -> Result<Registration, E2eError> {
        if self.identity.is_some() {
            return Err(E2eError::AlreadyRegistered);
        }
        validate_handle(handle).map_err(|e| E2eError::Protocol(format!("handle: {e}")))?;
        let account = SecretKey::generate();
        let device = SecretKey::generate();
        let device_key = device.public();
        let signature = account.sign(&device_cert_payload(handle, &device_key, now_ms));
        self.conn.execute(
            "INSERT OR REPLACE INTO identity (id, handle, device_id, server_url, pin,
                 account_secret, device_secret, device_cert_created_at_ms, device_cert_signature)
             VALUES (1, ?1, NULL, NULL, NULL, ?2, ?3, ?4, ?5)",
            params![
                handle,
                &account.expose()[..],
                &device.expose()[..],
                to_sql_u64(now_ms)?,
                &signature[..]
            ],
        )?;
        let registration = Registration {
            account_key: account.public(),
            device: DeviceCertificate {
                device_key: device_key.to_vec().into(),
                created_at_ms: now_ms,
                signature: signature.to_vec().into(),
            },
        };
        self.pending_handle = Some(handle.to_string());
        self.keys = Some(IdentityKeys { account, device });
        Ok(registration)
    }

    /// Records the server's answer to registration.
    pub fn complete_registration(
        &mut self,
        server_url: &str,
        pin: Option<&str>,
        device_id: u32,
    ) -> Result<(), E2eError> {
        if self.identity.is_some() {
            return Err(E2eError::AlreadyRegistered);
        }
        let (Some(keys), Some(handle)) = (&self.keys, &self.pending_handle) else {
            return Err(E2eError::NotRegistered);
        };
        let created_at: i64 = self.conn.query_row(
            "SELECT device_cert_created_at_ms FROM identity WHERE id = 1",
            [],
            |r| r.get(0),
        )?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE identity SET device_id = ?1, server_url = ?2, pin = ?3 WHERE id = 1",
            params![device_id, server_url, pin],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO accounts (handle, account_key) VALUES (?1, ?2)",
            params![handle, &keys.account.public()[..]],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO devices (handle, device_id, device_key, created_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![handle, device_id, &keys.device.public()[..], created_at],
        )?;
        tx.commit()?;
        self.identity = Some(Identity {
            handle: handle.clone(),
            device_id,
            server_url: server_url.to_string(),
            pin: pin.map(str::to_string),
            account_key: keys.account.public(),
            device_key: keys.device.public(),
        });
        Ok(())
    }

    /// Signs `payload` with the device key (WebSocket login, API requests).
    pub fn sign(&self, payload: &[u8]) -> Result<[u8; 64], E2eError> {
        let keys = self.keys.as_ref().ok_or(E2eError::NotRegistered)?;
        Ok(keys.device.sign(payload))
    }

    pub(crate) fn own_credential(&self) -> Result<CredentialWithKey, E2eError> {
        let (me, keys) = self.me()?;
        let addr = DeviceAddr {
            handle: me.handle.clone(),
            device_id: me.device_id,
        };
        Ok(CredentialWithKey {
            credential: BasicCredential::new(addr.credential_string().into_bytes()).into(),
            signature_key: keys.device.public().to_vec().into(),
        })
    }

    /// Makes `count` key packages for `suite` (all marked last-resort if `last_resort`),
    /// stores their private parts and returns them as TLS-serialized
    /// `MLSMessage(KeyPackage)`s for upload.
    pub fn key_packages(
        &mut self,
        suite: Suite,
        count: usize,
        last_resort: bool,
    ) -> Result<Vec<Vec<u8>>, E2eError> {
        let credential = self.own_credential()?;
        let signer = self.me()?.1.device.mls_signer();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(count);
        {
            let provider = Provider::new(&tx);
            for _ in 0..count {
                let mut builder = KeyPackage::builder()
                    .leaf_node_capabilities(crate::outbox::leaf_capabilities());
                if last_resort {
                    builder = builder.mark_as_last_resort();
                }
                let bundle =
                    builder.build(suite.ciphersuite(), &provider, &signer, credential.clone())?;
                out.push(MlsMessageOut::from(bundle.key_package().clone()).to_bytes()?);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Sets the suite new conversations use.
    pub fn set_default_suite(&mut self, suite: Suite) -> Result<(), E2eError> {
        kv_set(&self.conn, KV_DEFAULT_SUITE, i64::from(suite.code()))
    }

    /// The suite new conversations use (X-Wing, 0x004F, unless set otherwise).
    pub fn default_suite(&self) -> Result<Suite, E2eError> {
        Ok(kv_get(&self.conn, KV_DEFAULT_SUITE)?
            .and_then(|c| u16::try_from(c).ok())
            .and_then(Suite::from_code)
            .unwrap_or_default())
    }

    /// Feeds an account as fetched from the server: checks every device certificate,
    /// pins the account key on first use and records the devices. A different account
    /// key than the pinned one is [`E2eError::IdentityChanged`]; nothing is stored then.
    pub fn learn_account(&mut self, account: &AccountInfo) -> Result<(), E2eError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        learn_account_in(
            &tx,
            self.keys.as_ref(),
            self.pending_handle.as_deref(),
            account,
        )?;
        tx.commit()?;
        self.fresh_accounts.insert(account.handle.clone());
        Ok(())
    }

    /// The highest envelope seq processed (0 before any).
    pub fn last_received_seq(&self) -> Result<u64, E2eError> {
        Ok(kv_get(&self.conn, KV_LAST_SEQ)?
            .map(from_sql_u64)
            .unwrap_or(0))
    }

    /// A conversation's messages in local order.
    pub fn history(&self, conversation: &str) -> Result<Vec<StoredMessage>, E2eError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ?1 AND kind = 0 ORDER BY n"
        ))?;
        let rows = stmt.query_map(params![conversation], message_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A conversation's timeline: its messages and (for a group chat) its membership and
    /// metadata changes, in local order.
    pub fn timeline(&self, conversation: &str) -> Result<Vec<crate::TimelineItem>, E2eError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS}, kind FROM messages WHERE conversation = ?1 ORDER BY n"
        ))?;
        let rows = stmt.query_map(params![conversation], |r| {
            let kind: i64 = r.get(12)?;
            let mut m = message_from_row(r)?;
            if kind == 1 {
                // A group event's body is its JSON (never view-once).
                m.text = r.get(5)?;
            }
            Ok((kind, m))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, m) = row?;
            if kind == crate::outbox::KIND_TEXT {
                out.push(crate::TimelineItem::Message(m));
            } else if kind == crate::outbox::KIND_RELAY_LINK {
                out.push(crate::TimelineItem::RelayLink(m));
            } else if kind == crate::attachments::KIND_ATTACHMENT {
                let id = uuid::Uuid::parse_str(&m.id)
                    .map(|u| u.as_bytes().to_vec())
                    .unwrap_or_default();
                if let Some(info) = crate::attachments::info_of(&self.conn, &m.from, &id)? {
                    out.push(crate::TimelineItem::Attachment(m, info));
                } else if m.viewed {
                    // An opened view-once file: its record is erased, the entry stays.
                    out.push(crate::TimelineItem::Message(m));
                }
            } else if let Some(ev) =
                crate::group::parse_event(m.conversation, m.from, &m.text, m.sent_at_ms)
            {
                out.push(crate::TimelineItem::Group(ev));
            }
        }
        Ok(out)
    }

    /// The relay link shared in message `id` (as `receive` reported it), sent or
    /// received: what a user accepts into their ways in. `None` if there is no such
    /// shared link; an error if two senders used the same id.
    pub fn shared_relay_link(&self, id: &str) -> Result<Option<StoredMessage>, E2eError> {
        let Ok(uuid) = uuid::Uuid::parse_str(id) else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND kind = ?2 ORDER BY n"
        ))?;
        let rows = stmt.query_map(
            params![&uuid.as_bytes()[..], crate::outbox::KIND_RELAY_LINK],
            message_from_row,
        )?;
        let mut found: Vec<StoredMessage> = rows.collect::<Result<_, _>>()?;
        if found.len() > 1 {
            return Err(E2eError::Protocol(format!(
                "{} shared links have the id {id}",
                found.len()
            )));
        }
        Ok(found.pop())
    }

    /// All conversations, most recent first.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, E2eError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.peer, c.suite,
                    (SELECT MAX(COALESCE(m.received_at_ms, m.sent_at_ms)) FROM messages m
                     WHERE m.conversation = c.peer),
                    (SELECT COUNT(*) FROM messages m WHERE m.conversation = c.peer
                     AND m.kind IN (0, 3)),
                    c.expire_timer_ms, c.request
             FROM conversations c",
        )?;
        let rows = stmt.query_map([], |r| {
            let suite: i64 = r.get(1)?;
            let last: Option<i64> = r.get(2)?;
            let count: i64 = r.get(3)?;
            Ok(ConversationSummary {
                name: r.get(0)?,
                last_message_at_ms: last.map(from_sql_u64),
                message_count: from_sql_u64(count),
                suite: u16::try_from(suite)
                    .ok()
                    .and_then(Suite::from_code)
                    .unwrap_or_default(),
                expire_timer_ms: from_sql_u64(r.get(4)?),
                request: r.get::<_, i64>(5)? != 0,
            })
        })?;
        let mut out: Vec<ConversationSummary> = rows.collect::<Result<_, _>>()?;
        out.sort_by(|a, b| {
            b.last_message_at_ms
                .cmp(&a.last_message_at_ms)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// The MLS groups of a conversation, smallest group id first.
    pub fn groups(&self, conversation: &str) -> Result<Vec<GroupStatus>, E2eError> {
        let rows: Vec<(Vec<u8>, String)> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id, state FROM groups WHERE conversation = ?1 ORDER BY group_id",
            )?;
            let rows = stmt.query_map(params![conversation], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let sending = crate::outbox::send_group(&self.conn, conversation)?;
        let mut out = Vec::with_capacity(rows.len());
        for (group_id, state) in rows {
            let group = crate::outbox::load_group(&self.conn, &group_id)?;
            let mut members: Vec<String> = group
                .members()
                .map(|m| match parse_credential(&m.credential) {
                    Ok(a) => a.credential_string(),
                    Err(_) => "<invalid>".to_string(),
                })
                .collect();
            members.sort();
            out.push(GroupStatus {
                sending: sending.as_deref() == Some(group_id.as_slice()),
                epoch: group.epoch().as_u64(),
                epoch_authenticator: group.epoch_authenticator().as_slice().to_vec(),
                group_id,
                state,
                members,
            });
        }
        Ok(out)
    }

    /// Number of outbox items not yet resolved.
    pub fn outbox_len(&self) -> Result<usize, E2eError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The 1:1 contacts that queued texts and attachments wait for (groups left out).
    pub fn outbox_peers(&self) -> Result<Vec<String>, E2eError> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT conversation FROM outbox WHERE kind IN ('text', 'content') \
             ORDER BY conversation",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let c = row?;
            if !crate::group::is_group_name(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Whether the outbox still holds the item `message_id` (as returned by
    /// [`Profile::queue_text`]).
    pub fn is_outbox_item_pending(&self, message_id: &str) -> Result<bool, E2eError> {
        let id = uuid::Uuid::parse_str(message_id)
            .map_err(|_| E2eError::Protocol(format!("not a message id: {message_id:?}")))?;
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE item_id = ?1",
            params![&id.as_bytes()[..]],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }
}

/// `learn_account` inside a caller's transaction.
pub(crate) fn learn_account_in(
    conn: &Connection,
    keys: Option<&IdentityKeys>,
    own_handle: Option<&str>,
    account: &AccountInfo,
) -> Result<(), E2eError> {
    let handle = account.handle.as_str();
    validate_handle(handle).map_err(|e| E2eError::Protocol(format!("account handle: {e}")))?;
    let account_key: [u8; 32] = account.account_key.as_ref().try_into().map_err(|_| {
        E2eError::InvalidCertificate(format!("{handle}: account key is not 32 bytes"))
    })?;
    if own_handle == Some(handle)
        && let Some(keys) = keys
        && keys.account.public() != account_key
    {
        return Err(E2eError::IdentityChanged {
            handle: handle.to_string(),
        });
    }
    let pinned: Option<Vec<u8>> = conn
        .query_row(
            "SELECT account_key FROM accounts WHERE handle = ?1",
            params![handle],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(pinned) = &pinned
        && pinned.as_slice() != account_key.as_slice()
    {
        return Err(E2eError::IdentityChanged {
            handle: handle.to_string(),
        });
    }
    // A device without a valid certificate is one the account never made (a server
    // inserting a device of its own): it is left out, so it is never trusted or added;
    // the account's real devices stay usable.
    let certified: Vec<&hushwire_proto::wire::DeviceInfo> = account
        .devices
        .iter()
        .filter(|device| {
            let Some(cert) = device.certificate.as_ref() else {
                tracing::warn!(%handle, device = device.device_id, "device without a certificate ignored");
                return false;
            };
            let payload = device_cert_payload(handle, &cert.device_key, cert.created_at_ms);
            let ok = verify(&account_key, &payload, &cert.signature).is_ok();
            if !ok {
                tracing::warn!(%handle, device = device.device_id, "device with an invalid certificate ignored");
            }
            ok
        })
        .collect();
    if pinned.is_none() {
        conn.execute(
            "INSERT INTO accounts (handle, account_key) VALUES (?1, ?2)",
            params![handle, &account_key[..]],
        )?;
    }
    // Devices are added or updated, never deleted (a removed device may still have a
    // leaf in an old group until a commit removes it); the signed list decides which
    // ones may be added to conversations (devices.rs).
    for device in certified {
        if let Some(cert) = &device.certificate {
            conn.execute(
                "INSERT INTO devices (handle, device_id, device_key, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (handle, device_id) DO UPDATE
                 SET device_key = excluded.device_key, created_at_ms = excluded.created_at_ms",
                params![
                    handle,
                    device.device_id,
                    cert.device_key.as_ref(),
                    to_sql_u64(cert.created_at_ms)?
                ],
            )?;
        }
    }
    crate::devices::apply_device_list(conn, &account_key, account)?;
    Ok(())
}

/// Checks one leaf: `handle/device_id` whose signature key is that device's key,
/// certified by the handle's pinned account key.
pub(crate) fn check_leaf(
    conn: &Connection,
    fresh: &mut HashSet<String>,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<DeviceAddr, LeafCheck> {
    let addr = parse_credential(credential).map_err(LeafCheck::Invalid)?;
    let pinned: Option<Vec<u8>> = conn
        .query_row(
            "SELECT account_key FROM accounts WHERE handle = ?1",
            params![addr.handle],
            |r| r.get(0),
        )
        .optional()?;
    if pinned.is_none() {
        return Err(LeafCheck::NeedAccount(addr.handle));
    }
    let key: Option<Vec<u8>> = conn
        .query_row(
            "SELECT device_key FROM devices WHERE handle = ?1 AND device_id = ?2",
            params![addr.handle, addr.device_id],
            |r| r.get(0),
        )
        .optional()?;
    match key {
        Some(k) if k == signature_key => Ok(addr),
        Some(_) => Err(LeafCheck::Invalid(format!(
            "{}: signature key is not the certified device key",
            addr.credential_string()
        ))),
        None => {
            if fresh.remove(&addr.handle) {
                Err(LeafCheck::Invalid(format!(
                    "{}: device is not certified by the account",
                    addr.credential_string()
                )))
            } else {
                Err(LeafCheck::NeedAccount(addr.handle))
            }
        }
    }
}
