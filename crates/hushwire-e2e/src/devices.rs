//! Several devices per account: the signed device list, device names, and the local half
//! of linking and removing a device.
//!
//! # The signed device list
//! Every account publishes a [`DeviceList`] signed by its account key (which every device
//! of the account holds). Each version names the account's current devices (id, key,
//! time linked, name sealed for the account's own devices). Clients pin the highest
//! version they have seen per account (`device_lists`) and:
//! - refuse a list whose signature does not verify, that names another handle, or that
//!   is older than the pinned one, and an `AccountInfo` without a list once one was seen
//!   ([`E2eError::DeviceList`]);
//! - mark a device `listed` only when it is both certified and in the list with the same
//!   key. Only listed devices are ever added to a conversation (key packages we use, and
//!   devices others add in a commit), so a server that serves an extra device — even a
//!   revoked one whose certificate is still valid — gets it into no conversation.
//!   Devices of an account that never published a list (created before lists existed)
//!   are listed when certified.
//!
//! # Linking (this crate's half)
//! The new device makes its key with [`Profile::begin_link`]; the existing device
//! certifies it ([`Profile::certify_device`]), registers it with the server, signs the
//! next list ([`Profile::next_device_list`]) and hands over the account secret
//! ([`Profile::link_secrets`]) inside the encrypted link channel; the new device finishes
//! with [`Profile::complete_link`]. The existing device then adds the new device's leaf
//! to every conversation ([`Profile::queue_add_own_device`]); removal is
//! [`Profile::queue_remove_own_device`]. Both are outbox items (`dadd`, `dremove`) turned
//! into commits at the outbox head, like group operations.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hushwire_proto::identity::{device_cert_payload, device_list_payload, verify};
use hushwire_proto::limits::MAX_LISTED_DEVICES;
use hushwire_proto::wire::{
    AccountInfo, DeviceCertificate, DeviceList, ListedDevice, SignedDeviceList,
};
use prost::Message as _;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::keys::{IdentityKeys, SecretKey};
use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, Profile};

/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_BYTES: usize = 64;

/// One device of this account, as the pinned signed list names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnDevice {
    /// The device id within the account.
    pub device_id: u32,
    /// Its name (empty if it has none or it cannot be read).
    pub name: String,
    /// Whether it is this device.
    pub current: bool,
    /// When it was linked (milliseconds since the Unix epoch).
    pub linked_at_ms: u64,
}

/// A change of this account's device list not yet shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListNews {
    /// The list's new version.
    pub version: u64,
    /// Devices that joined (id, name).
    pub added: Vec<(u32, String)>,
    /// Devices that left (id, name).
    pub removed: Vec<(u32, String)>,
    /// Devices renamed (id, new name).
    pub renamed: Vec<(u32, String)>,
}

/// A change to make to this account's device list.
#[derive(Debug, Clone)]
pub enum DeviceListEdit {
    /// Adds a device (just registered with the server).
    Add {
        /// Its id.
        device_id: u32,
        /// Its Ed25519 key.
        device_key: [u8; 32],
        /// Its name.
        name: String,
        /// When it was linked.
        linked_at_ms: u64,
    },
    /// Leaves a device out.
    Remove(u32),
    /// Renames a device.
    Rename(u32, String),
    /// No change: the first list of an account (all its certified devices).
    Initial,
}

/// What the existing device hands a new one inside the link channel.
pub struct LinkSecrets {
    /// The account's handle.
    pub handle: String,
    /// The account secret key.
    pub account_secret: SecretKey,
}

impl std::fmt::Debug for LinkSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSecrets")
            .field("handle", &self.handle)
            .field("account_secret", &self.account_secret)
            .finish()
    }
}

fn list_error(handle: &str, reason: impl Into<String>) -> E2eError {
    E2eError::DeviceList {
        handle: handle.to_string(),
        reason: reason.into(),
    }
}

/// Checks a signed list of `handle` under `account_key`: signature, handle, ordering and
/// size. Returns the decoded list.
pub fn verify_device_list(
    handle: &str,
    account_key: &[u8],
    signed: &SignedDeviceList,
) -> Result<DeviceList, E2eError> {
    verify(
        account_key,
        &device_list_payload(&signed.list),
        &signed.signature,
    )
    .map_err(|e| list_error(handle, format!("signature: {e}")))?;
    let list = DeviceList::decode(signed.list.as_ref())
        .map_err(|e| list_error(handle, format!("does not decode: {e}")))?;
    if list.handle != handle {
        return Err(list_error(
            handle,
            format!("it names another account ({:?})", list.handle),
        ));
    }
    if list.version == 0 {
        return Err(list_error(handle, "version 0"));
    }
    if list.devices.len() > MAX_LISTED_DEVICES {
        return Err(list_error(handle, "too many devices"));
    }
    if list
        .devices
        .windows(2)
        .any(|w| w[0].device_id >= w[1].device_id)
    {
        return Err(list_error(handle, "devices not in ascending order"));
    }
    Ok(list)
}

/// Applies `account`'s signed device list (if any) while learning the account, inside
/// the caller's transaction; certificates were checked already and the `devices` rows
/// written. Sets `devices.listed`.
pub(crate) fn apply_device_list(
    conn: &Connection,
    account_key: &[u8; 32],
    account: &AccountInfo,
) -> Result<(), E2eError> {
    let handle = account.handle.as_str();
    let pinned: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT version, list FROM device_lists WHERE handle = ?1",
            params![handle],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some(signed) = &account.device_list else {
        if pinned.is_some() {
            return Err(list_error(
                handle,
                "the server withheld the device list this client saw before",
            ));
        }
        // An account that never published a list: every certified device that is not
        // revoked counts.
        for d in &account.devices {
            conn.execute(
                "UPDATE devices SET listed = ?3 WHERE handle = ?1 AND device_id = ?2",
                params![handle, d.device_id, !d.revoked],
            )?;
        }
        return Ok(());
    };
    let list = verify_device_list(handle, account_key, signed)?;
    let use_list = match &pinned {
        Some((version, _)) if list.version < from_sql_u64(*version) => {
            return Err(list_error(
                handle,
                format!(
                    "version {} is older than version {version} seen before",
                    list.version
                ),
            ));
        }
        Some((version, _)) if list.version == from_sql_u64(*version) => {
            // The same version: keep the pinned list (two devices of the account signing
            // the same version at once is resolved by the next version).
            pinned_list(conn, handle)?.unwrap_or(list)
        }
        _ => {
            conn.execute(
                "INSERT INTO device_lists (handle, version, list) VALUES (?1, ?2, ?3)
                 ON CONFLICT (handle) DO UPDATE SET version = excluded.version,
                     list = excluded.list",
                params![handle, to_sql_u64(list.version)?, signed.encode_to_vec()],
            )?;
            list
        }
    };
    conn.execute(
        "UPDATE devices SET listed = 0 WHERE handle = ?1",
        params![handle],
    )?;
    for d in &use_list.devices {
        if account
            .devices
            .iter()
            .any(|a| a.device_id == d.device_id && a.revoked)
        {
            continue;
        }
        conn.execute(
            "UPDATE devices SET listed = 1
             WHERE handle = ?1 AND device_id = ?2 AND device_key = ?3",
            params![handle, d.device_id, d.device_key.as_ref()],
        )?;
    }
    Ok(())
}

/// The decoded pinned list of `handle`, if any.
fn pinned_list(conn: &Connection, handle: &str) -> Result<Option<DeviceList>, E2eError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT list FROM device_lists WHERE handle = ?1",
            params![handle],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| {
            let signed = SignedDeviceList::decode(b.as_slice())
                .map_err(|e| E2eError::Storage(format!("pinned device list: {e}")))?;
            DeviceList::decode(signed.list.as_ref())
                .map_err(|e| E2eError::Storage(format!("pinned device list: {e}")))
        })
        .transpose()
}

/// Whether a device may be added to a conversation: certified, and in its account's
/// signed list. `None` when the device is unknown (fetch the account).
pub(crate) fn is_listed(
    conn: &Connection,
    handle: &str,
    device_id: u32,
) -> Result<Option<bool>, E2eError> {
    let listed: Option<i64> = conn
        .query_row(
            "SELECT listed FROM devices WHERE handle = ?1 AND device_id = ?2",
            params![handle, device_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(listed.map(|l| l != 0))
}

/// Key sealing device names: HKDF-SHA256 of the account secret.
fn names_key(keys: &IdentityKeys) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, keys.account.expose());
    let mut out = Zeroizing::new([0u8; 32]);
    // Invariant: 32 bytes is far below HKDF-SHA256's 255 × 32 output limit.
    #[allow(clippy::expect_used)]
    hk.expand(b"hushwire-device-names-v1", out.as_mut())
        .expect("HKDF output length is valid");
    out
}

fn seal_name(keys: &IdentityKeys, device_id: u32, name: &str) -> Result<Vec<u8>, E2eError> {
    if name.is_empty() {
        return Ok(Vec::new());
    }
    let cipher = XChaCha20Poly1305::new(names_key(keys).as_ref().into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = device_id.to_be_bytes();
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: name.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Storage("sealing a device name failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_name(keys: &IdentityKeys, device_id: u32, sealed: &[u8]) -> String {
    if sealed.len() < 24 {
        return String::new();
    }
    let cipher = XChaCha20Poly1305::new(names_key(keys).as_ref().into());
    let aad = device_id.to_be_bytes();
    cipher
        .decrypt(
            XNonce::from_slice(&sealed[..24]),
            Payload {
                msg: &sealed[24..],
                aad: &aad,
            },
        )
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .unwrap_or_default()
}

/// Checks a device name: 1..=64 bytes, no control characters.
pub fn validate_device_name(name: &str) -> Result<(), E2eError> {
    if name.is_empty() || name.len() > MAX_DEVICE_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(E2eError::Protocol(format!(
            "a device name has 1 to {MAX_DEVICE_NAME_BYTES} bytes and no control characters"
        )));
    }
    Ok(())
}

impl Profile {
    /// This account's devices, as its pinned signed list names them (ascending id). Before
    /// the account published a list: the certified devices known locally.
    pub fn own_devices(&self) -> Result<Vec<OwnDevice>, E2eError> {
        let (me, keys) = self.me()?;
        if let Some(list) = pinned_list(&self.conn, &me.handle)? {
            return Ok(list
                .devices
                .iter()
                .map(|d| OwnDevice {
                    device_id: d.device_id,
                    name: open_name(keys, d.device_id, &d.sealed_name),
                    current: d.device_id == me.device_id,
                    linked_at_ms: d.linked_at_ms,
                })
                .collect());
        }
        let mut stmt = self.conn.prepare(
            "SELECT device_id, created_at_ms FROM devices WHERE handle = ?1 ORDER BY device_id",
        )?;
        let rows = stmt.query_map(params![me.handle], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device_id, at) = row?;
            out.push(OwnDevice {
                device_id,
                name: String::new(),
                current: device_id == me.device_id,
                linked_at_ms: from_sql_u64(at),
            });
        }
        Ok(out)
    }

    /// The version of this account's pinned device list (0: none yet).
    pub fn own_device_list_version(&self) -> Result<u64, E2eError> {
        let (me, _) = self.me()?;
        Ok(pinned_list(&self.conn, &me.handle)?.map_or(0, |l| l.version))
    }

    /// Signs the next version of this account's device list with `edit` applied to the
    /// pinned one (or, with none pinned, to the account's certified devices known
    /// locally). Publish it with `PUT /v1/devices/list`, then learn the own account again
    /// (which pins it).
    pub fn next_device_list(
        &self,
        edit: DeviceListEdit,
        now_ms: u64,
    ) -> Result<SignedDeviceList, E2eError> {
        let (me, keys) = self.me()?;
        let (version, mut devices) = match pinned_list(&self.conn, &me.handle)? {
            Some(list) => (list.version + 1, list.devices),
            None => {
                let mut stmt = self.conn.prepare(
                    "SELECT device_id, device_key, created_at_ms FROM devices
                     WHERE handle = ?1 AND listed = 1 ORDER BY device_id",
                )?;
                let rows = stmt.query_map(params![me.handle], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                let mut devices = Vec::new();
                for row in rows {
                    let (device_id, key, at) = row?;
                    devices.push(ListedDevice {
                        device_id,
                        device_key: key.into(),
                        linked_at_ms: from_sql_u64(at),
                        sealed_name: Vec::new().into(),
                    });
                }
                (1, devices)
            }
        };
        match edit {
            DeviceListEdit::Initial => {}
            DeviceListEdit::Add {
                device_id,
                device_key,
                name,
                linked_at_ms,
            } => {
                devices.retain(|d| d.device_id != device_id);
                devices.push(ListedDevice {
                    device_id,
                    device_key: device_key.to_vec().into(),
                    linked_at_ms,
                    sealed_name: seal_name(keys, device_id, &name)?.into(),
                });
            }
            DeviceListEdit::Remove(id) => {
                if !devices.iter().any(|d| d.device_id == id) {
                    return Err(E2eError::Protocol(format!(
                        "no device {id} in this account"
                    )));
                }
                devices.retain(|d| d.device_id != id);
            }
            DeviceListEdit::Rename(id, name) => {
                validate_device_name(&name)?;
                let d = devices
                    .iter_mut()
                    .find(|d| d.device_id == id)
                    .ok_or_else(|| E2eError::Protocol(format!("no device {id} in this account")))?;
                d.sealed_name = seal_name(keys, id, &name)?.into();
            }
        }
        devices.sort_by_key(|d| d.device_id);
        let list = DeviceList {
            handle: me.handle.clone(),
            version,
            issued_at_ms: now_ms,
            devices,
        }
        .encode_to_vec();
        let signature = keys.account.sign(&device_list_payload(&list));
        Ok(SignedDeviceList {
            list: list.into(),
            signature: signature.to_vec().into(),
        })
    }

    /// The change of this account's device list since it was last shown (`None`: no
    /// change). Marks it shown.
    pub fn take_device_list_news(&mut self) -> Result<Option<DeviceListNews>, E2eError> {
        let (me, keys) = self.me()?;
        let handle = me.handle.clone();
        let keys = keys.clone();
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT list, announced FROM device_lists WHERE handle = ?1",
                params![handle],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((current, announced)) = row else {
            return Ok(None);
        };
        if announced.as_deref() == Some(current.as_slice()) {
            return Ok(None);
        }
        let decode = |b: &[u8]| -> Result<DeviceList, E2eError> {
            let signed = SignedDeviceList::decode(b)
                .map_err(|e| E2eError::Storage(format!("device list: {e}")))?;
            DeviceList::decode(signed.list.as_ref())
                .map_err(|e| E2eError::Storage(format!("device list: {e}")))
        };
        let now = decode(&current)?;
        let before = match &announced {
            Some(b) => Some(decode(b)?),
            None => None,
        };
        self.conn.execute(
            "UPDATE device_lists SET announced = list WHERE handle = ?1",
            params![handle],
        )?;
        let Some(before) = before else {
            // The first list this device saw is no news.
            return Ok(None);
        };
        let name = |d: &ListedDevice| open_name(&keys, d.device_id, &d.sealed_name);
        let mut news = DeviceListNews {
            version: now.version,
            added: vec![],
            removed: vec![],
            renamed: vec![],
        };
        for d in &now.devices {
            match before.devices.iter().find(|b| b.device_id == d.device_id) {
                None => news.added.push((d.device_id, name(d))),
                Some(b) if name(b) != name(d) => news.renamed.push((d.device_id, name(d))),
                Some(_) => {}
            }
        }
        for b in &before.devices {
            if !now.devices.iter().any(|d| d.device_id == b.device_id) {
                news.removed.push((b.device_id, name(b)));
            }
        }
        if news.added.is_empty() && news.removed.is_empty() && news.renamed.is_empty() {
            return Ok(None);
        }
        Ok(Some(news))
    }

    /// Certifies a new device's key with the account key (the existing device's side of
    /// linking).
    pub fn certify_device(
        &self,
        device_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<DeviceCertificate, E2eError> {
        let (me, keys) = self.me()?;
        let signature = keys
            .account
            .sign(&device_cert_payload(&me.handle, device_key, now_ms));
        Ok(DeviceCertificate {
            device_key: device_key.to_vec().into(),
            created_at_ms: now_ms,
            signature: signature.to_vec().into(),
        })
    }

    /// What a new device of this account needs to act as the account: handle and account
    /// secret. Only ever sent inside the end-to-end encrypted link channel.
    pub fn link_secrets(&self) -> Result<LinkSecrets, E2eError> {
        let (me, keys) = self.me()?;
        Ok(LinkSecrets {
            handle: me.handle.clone(),
            account_secret: keys.account.clone(),
        })
    }

    /// The new device's side, first step: makes this device's key (kept until
    /// [`Profile::complete_link`]) and returns its public half. Calling it again makes a
    /// new key.
    pub fn begin_link(&mut self, now_ms: u64) -> Result<[u8; 32], E2eError> {
        if self.identity.is_some() || self.keys.is_some() {
            return Err(E2eError::AlreadyRegistered);
        }
        let device = SecretKey::generate();
        self.conn.execute(
            "INSERT OR REPLACE INTO link_pending (id, device_secret, created_at_ms)
             VALUES (1, ?1, ?2)",
            params![&device.expose()[..], to_sql_u64(now_ms)?],
        )?;
        Ok(device.public())
    }

    /// The new device's side, last step: becomes device `device_id` of the account whose
    /// secret the existing device sent, with the certificate it made for this device's
    /// key. Checks that the certificate verifies under that account key.
    pub fn complete_link(
        &mut self,
        secrets: &LinkSecrets,
        device_id: u32,
        certificate: &DeviceCertificate,
        server_url: &str,
        pin: Option<&str>,
    ) -> Result<(), E2eError> {
        if self.identity.is_some() || self.keys.is_some() {
            return Err(E2eError::AlreadyRegistered);
        }
        let device_secret: Vec<u8> = self
            .conn
            .query_row(
                "SELECT device_secret FROM link_pending WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| E2eError::Protocol("no link in progress on this profile".into()))?;
        let device = SecretKey::from_slice(&device_secret)
            .ok_or_else(|| E2eError::Storage("stored link key is malformed".into()))?;
        if certificate.device_key.as_ref() != device.public().as_slice() {
            return Err(E2eError::InvalidCertificate(
                "the link certificate is for another device key".into(),
            ));
        }
        verify(
            &secrets.account_secret.public(),
            &device_cert_payload(
                &secrets.handle,
                &certificate.device_key,
                certificate.created_at_ms,
            ),
            &certificate.signature,
        )
        .map_err(|e| E2eError::InvalidCertificate(format!("link certificate: {e}")))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO identity (id, handle, device_id, server_url, pin,
                 account_secret, device_secret, device_cert_created_at_ms, device_cert_signature)
             VALUES (1, ?1, NULL, NULL, NULL, ?2, ?3, ?4, ?5)",
            params![
                secrets.handle,
                &secrets.account_secret.expose()[..],
                &device.expose()[..],
                to_sql_u64(certificate.created_at_ms)?,
                certificate.signature.as_ref()
            ],
        )?;
        tx.execute("DELETE FROM link_pending", [])?;
        tx.commit()?;
        self.pending_handle = Some(secrets.handle.clone());
        self.keys = Some(IdentityKeys {
            account: secrets.account_secret.clone(),
            device,
        });
        self.complete_registration(server_url, pin, device_id)
    }

    /// Queues adding this account's device `device_id` to every active conversation (1:1
    /// and group chats) with its key packages (`(suite, MLSMessage(KeyPackage))`, one per
    /// suite, last-resort so one package serves every group). Returns the number of
    /// conversations queued.
    pub fn queue_add_own_device(
        &mut self,
        device_id: u32,
        key_packages: &[(crate::Suite, Vec<u8>)],
        now_ms: u64,
    ) -> Result<usize, E2eError> {
        crate::group_ops::queue_own_device_op(self, "dadd", device_id, key_packages, now_ms)
    }

    /// Queues removing this account's device `device_id` from every conversation.
    /// Returns the number of conversations queued.
    pub fn queue_remove_own_device(
        &mut self,
        device_id: u32,
        now_ms: u64,
    ) -> Result<usize, E2eError> {
        crate::group_ops::queue_own_device_op(self, "dremove", device_id, &[], now_ms)
    }
}

/// Flags that the own account's devices changed (see [`Profile::own_devices_changed`]).
pub(crate) fn mark_own_devices_changed(conn: &Connection) -> Result<(), E2eError> {
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value) VALUES ('own_devices_changed', 1)",
        [],
    )?;
    Ok(())
}

impl Profile {
    /// Whether a commit added or removed one of this account's other devices since the
    /// last call (then the client fetches the own account again and shows
    /// [`Profile::take_device_list_news`]). Clears the flag.
    pub fn own_devices_changed(&mut self) -> Result<bool, E2eError> {
        let n = self
            .conn
            .execute("DELETE FROM kv WHERE key = 'own_devices_changed'", [])?;
        Ok(n > 0)
    }
}

/// The link channel: every slot's bytes are `nonce (24) || XChaCha20-Poly1305(key,
/// message, aad = slot name)` with `key = HKDF-SHA256(ikm = secret, salt = link id,
/// info = "hushwire-link-v1")`. Only holders of the link code (the two devices) can
/// read or forge a slot; the slot name in the AAD stops the server from moving a
/// message to another slot.
pub struct LinkChannel {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for LinkChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkChannel(<redacted>)")
    }
}

impl LinkChannel {
    /// The channel of a link code's session id and secret.
    pub fn new(link_id: &[u8], secret: &[u8; 32]) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(link_id), secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // Invariant: 32 bytes is far below HKDF-SHA256's 255 × 32 output limit.
        #[allow(clippy::expect_used)]
        hk.expand(b"hushwire-link-v1", key.as_mut())
            .expect("HKDF output length is valid");
        Self { key }
    }

    /// Encrypts `message` for `slot`.
    pub fn seal(&self, slot: &str, message: &[u8]) -> Result<Vec<u8>, E2eError> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: message,
                    aad: slot.as_bytes(),
                },
            )
            .map_err(|_| E2eError::Protocol("sealing a link message failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what was read from `slot`; a wrong code or altered bytes fail.
    pub fn open(&self, slot: &str, sealed: &[u8]) -> Result<Vec<u8>, E2eError> {
        if sealed.len() < 24 + 16 {
            return Err(E2eError::Protocol(format!(
                "link message {slot} is truncated"
            )));
        }
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[..24]),
                Payload {
                    msg: &sealed[24..],
                    aad: slot.as_bytes(),
                },
            )
            .map_err(|_| {
                E2eError::Protocol(format!(
                    "link message {slot} does not decrypt: a wrong link code, or altered on the way"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_channel_round_trips_and_binds_the_slot() {
        let a = LinkChannel::new(&[1; 16], &[2; 32]);
        let b = LinkChannel::new(&[1; 16], &[2; 32]);
        let sealed = a.seal("hello", b"hi").unwrap();
        assert_eq!(b.open("hello", &sealed).unwrap(), b"hi");
        assert!(b.open("welcome", &sealed).is_err(), "moved to another slot");
        let wrong = LinkChannel::new(&[1; 16], &[3; 32]);
        assert!(wrong.open("hello", &sealed).is_err(), "wrong secret");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(b.open("hello", &altered).is_err());
        assert!(b.open("hello", &sealed[..10]).is_err());
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn device_lists_verify_and_refuse_forgeries() {
        let account = SecretKey::generate();
        let list = DeviceList {
            handle: "alice".into(),
            version: 2,
            issued_at_ms: 1,
            devices: vec![
                ListedDevice {
                    device_id: 1,
                    device_key: vec![1; 32].into(),
                    linked_at_ms: 1,
                    sealed_name: Vec::new().into(),
                },
                ListedDevice {
                    device_id: 2,
                    device_key: vec![2; 32].into(),
                    linked_at_ms: 2,
                    sealed_name: Vec::new().into(),
                },
            ],
        }
        .encode_to_vec();
        let signed = SignedDeviceList {
            signature: account.sign(&device_list_payload(&list)).to_vec().into(),
            list: list.clone().into(),
        };
        let ok = verify_device_list("alice", &account.public(), &signed).unwrap();
        assert_eq!(ok.version, 2);
        assert!(verify_device_list("bob", &account.public(), &signed).is_err());
        let other = SecretKey::generate();
        assert!(verify_device_list("alice", &other.public(), &signed).is_err());
        let mut tampered = list.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let forged = SignedDeviceList {
            list: tampered.into(),
            signature: signed.signature.clone(),
        };
        assert!(verify_device_list("alice", &account.public(), &forged).is_err());
    }

    #[test]
    fn device_names_are_sealed_for_the_account() {
        let keys = IdentityKeys {
            account: SecretKey::generate(),
            device: SecretKey::generate(),
        };
        let sealed = seal_name(&keys, 3, "laptop").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"laptop"));
        assert_eq!(open_name(&keys, 3, &sealed), "laptop");
        assert_eq!(open_name(&keys, 4, &sealed), "", "bound to the device id");
        let stranger = IdentityKeys {
            account: SecretKey::generate(),
            device: SecretKey::generate(),
        };
        assert_eq!(open_name(&stranger, 3, &sealed), "");
        assert!(validate_device_name("").is_err());
        assert!(validate_device_name(&"x".repeat(65)).is_err());
        assert!(validate_device_name("phone\n").is_err());
        assert!(validate_device_name("Ana's phone").is_ok());
    }
}
