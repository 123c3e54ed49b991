//! The outbox: queueing, group creation, commits, and the `Submit`s the client sends.
//!
//! Items are processed strictly in `ord` order; only the head is ever turned into a
//! `Submit`. A group-creating commit is inserted in front of the item that needed it.
//! An item's `Submit` is built once (encryption / commit creation happens then) and
//! stored with it, so every retry resends identical bytes under the same message id.

use std::collections::HashSet;

use hushwire_proto::wire::{
    self, AccountInfo, ClaimedKeyPackage, Content, Submit, SubmitResult, WelcomeOut,
    submit_result::Outcome,
};
use openmls::prelude::{
    Capabilities, ExtensionType, GroupId, KeyPackage, KeyPackageIn, LeafNodeParameters, MlsGroup,
    MlsGroupCreateConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProtocolVersion, SenderRatchetConfiguration,
    tls_codec::Deserialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use prost::Message as _;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::inbox;
use crate::profile::{
    DeviceAddr, LeafCheck, check_leaf, learn_account_in, new_message_id, parse_credential,
    uuid_text,
};
use crate::store::{Provider, to_sql_u64};
use crate::{Action, E2eError, Event, MessageState, MlsError, Profile, Suite};

/// Largest text accepted by `queue_text` (well below the MLS message limit).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Content plaintext is padded to a multiple of this many bytes.
const PAD_TO: usize = 64;

/// The group configuration of every Hushwire group.
///
/// - `max_past_epochs(3)`: late application messages from up to 3 epochs back decrypt.
/// - sender ratchet: 50 out-of-order generations, 1000 forward.
/// - ratchet tree inside the Welcome (no separate tree distribution).
/// - Everything, commits included, is a PrivateMessage: the server learns only the
///   header (group, epoch, content type) and gets the roster from the `Submit`.
pub(crate) fn group_config(suite: Suite) -> MlsGroupCreateConfig {
    group_config_with(suite, None)
}

/// `group_config` with group-context extensions (a group chat's metadata).
pub fn group_config_with(
    suite: Suite,
    extensions: Option<openmls::prelude::Extensions<openmls::prelude::GroupContext>>,
) -> MlsGroupCreateConfig {
    let builder = MlsGroupCreateConfig::builder();
    let builder = match extensions {
        Some(e) => builder.with_group_context_extensions(e),
        None => builder,
    };
    builder
        .ciphersuite(suite.ciphersuite())
        .capabilities(leaf_capabilities())
        .use_ratchet_tree_extension(true)
        .max_past_epochs(3)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(50, 1000))
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build()
}

/// Capabilities of all our leaves. Declaring `last_resort` lets a key package carry the
/// LastResort extension (RFC 9420 requires extensions to be listed in capabilities); the
/// group metadata extension lets the leaf join group chats, which require it.
pub fn leaf_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(crate::group::GROUP_METADATA_EXTENSION),
        ])
        .build()
}

pub(crate) fn load_group(conn: &Connection, group_id: &[u8]) -> Result<MlsGroup, E2eError> {
    let provider = Provider::new(conn);
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))?
        .ok_or(E2eError::Mls(MlsError::GroupMissing))
}

/// The group a conversation sends on: among its active groups, the one with the most
/// listed devices as members, and of those the smallest group id.
///
/// Two groups normally exist only after both sides started the conversation at once;
/// they then have the same members and both sides pick the same (smallest) one. After a
/// restore from a backup, the restored device starts a new group with the peer and all
/// listed devices, while the peer's old group still holds only the lost devices: the
/// peer must send on the new one, which has more listed members.
pub(crate) fn send_group(
    conn: &Connection,
    conversation: &str,
) -> Result<Option<Vec<u8>>, E2eError> {
    let ids: Vec<Vec<u8>> = {
        let mut stmt = conn.prepare_cached(
            "SELECT group_id FROM groups WHERE conversation = ?1 AND state = 'active'
             ORDER BY group_id",
        )?;
        let rows = stmt.query_map(params![conversation], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    if ids.len() < 2 {
        return Ok(ids.into_iter().next());
    }
    let first = ids.first().cloned();
    let mut best: Option<(usize, Vec<u8>)> = None;
    for id in ids {
        let Ok(group) = load_group(conn, &id) else {
            continue;
        };
        let mut listed = 0usize;
        for m in group.members() {
            if let Ok(a) = parse_credential(&m.credential)
                && crate::devices::is_listed(conn, &a.handle, a.device_id)? == Some(true)
            {
                listed += 1;
            }
        }
        if best.as_ref().is_none_or(|(n, _)| listed > *n) {
            best = Some((listed, id));
        }
    }
    Ok(best.map(|(_, id)| id).or(first))
}

/// Every member device of `group`.
pub(crate) fn roster(group: &MlsGroup) -> Vec<wire::DeviceAddress> {
    group
        .members()
        .filter_map(|m| parse_credential(&m.credential).ok())
        .map(|a| a.to_wire())
        .collect()
}

/// The `Content` body a stored message is sent as: `kind` is the `messages.kind` column
/// ([`KIND_TEXT`] or [`KIND_RELAY_LINK`]) and `body` its text.
pub(crate) fn content_body(kind: i64, body: String) -> wire::content::Body {
    if kind == KIND_RELAY_LINK {
        wire::content::Body::RelayLink(wire::RelayLinkShare { link: body })
    } else {
        wire::content::Body::Text(wire::Text {
            text: body,
            reply_to: Default::default(),
        })
    }
}

/// `messages.kind` of a text.
pub(crate) const KIND_TEXT: i64 = 0;
/// `messages.kind` of a shared relay link (its body is the link).
pub(crate) const KIND_RELAY_LINK: i64 = 2;

/// `content` encoded, padded to a multiple of [`PAD_TO`] (every body type alike, so the
/// server cannot tell a reaction from a text by size).
pub(crate) fn pad_and_encode(mut content: Content) -> Vec<u8> {
    content.padding = Default::default();
    let base = content.encoded_len();
    if !base.is_multiple_of(PAD_TO) {
        // Field 15 costs 1 tag byte + a length varint + the padding itself.
        let pad = (0..3 * PAD_TO).find(|&n| {
            let varint = prost::encoding::encoded_len_varint(n as u64);
            (base + 1 + varint + n).is_multiple_of(PAD_TO)
        });
        if let Some(n) = pad {
            content.padding = vec![0u8; n].into();
        }
    }
    content.encode_to_vec()
}

struct Head {
    params: Option<String>,
    ord: i64,
    kind: String,
    conversation: String,
    item_id: Vec<u8>,
    message_id: Vec<u8>,
    group_id: Option<Vec<u8>>,
    submit: Option<Vec<u8>>,
    await_epoch: Option<i64>,
}

const HEAD_COLUMNS: &str =
    "ord, kind, conversation, item_id, message_id, group_id, submit, await_epoch, params";

fn head_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Head> {
    Ok(Head {
        ord: r.get(0)?,
        kind: r.get(1)?,
        conversation: r.get(2)?,
        item_id: r.get(3)?,
        message_id: r.get(4)?,
        group_id: r.get(5)?,
        submit: r.get(6)?,
        await_epoch: r.get(7)?,
        params: r.get(8)?,
    })
}

fn conversation_suite(conn: &Connection, conversation: &str) -> Result<Option<Suite>, E2eError> {
    let code: Option<i64> = conn
        .query_row(
            "SELECT suite FROM conversations WHERE peer = ?1",
            params![conversation],
            |r| r.get(0),
        )
        .optional()?;
    Ok(code.map(|c| {
        u16::try_from(c)
            .ok()
            .and_then(Suite::from_code)
            .unwrap_or_default()
    }))
}

/// After losing a commit race (an incoming commit took the epoch our pending commit was
/// built for): forget our Submit so the change is redone at the new epoch.
pub(crate) fn reset_lost_commit(
    conn: &Connection,
    group_id: &[u8],
    await_epoch: u64,
    now_ms: u64,
) -> Result<(), E2eError> {
    conn.execute(
        "UPDATE outbox SET submit = NULL, message_id = ?1, await_epoch = ?2
         WHERE group_id = ?3
           AND kind IN ('update', 'gadd', 'gremove', 'gmeta', 'gcommit', 'dadd', 'dremove')
         AND submit IS NOT NULL",
        params![
            &new_message_id(now_ms)[..],
            to_sql_u64(await_epoch)?,
            group_id
        ],
    )?;
    Ok(())
}

impl Profile {
    /// Queues a text for `peer`: stores it in the history (state Queued) and appends an
    /// outbox item, in one transaction. Returns the message id (UUIDv7).
    pub fn queue_text(&mut self, peer: &str, text: &str, now_ms: u64) -> Result<String, E2eError> {
        self.queue_content(peer, text, KIND_TEXT, now_ms)
    }

    /// Queues a volunteer relay's link for `peer` (a contact or a group chat), sent
    /// end-to-end encrypted like a text, through the same outbox, and kept in the history
    /// (a [`crate::TimelineItem::RelayLink`]). The link must parse. Returns the message id.
    pub fn queue_relay_link(
        &mut self,
        peer: &str,
        link: &str,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let link = hushwire_proto::relay_link::RelayLink::parse(link)
            .map_err(|e| E2eError::Protocol(e.to_string()))?;
        self.queue_content(peer, &link.to_string(), KIND_RELAY_LINK, now_ms)
    }

    fn queue_content(
        &mut self,
        peer: &str,
        text: &str,
        kind: i64,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let (me, _) = self.me()?;
        let me = me.clone();
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
                Some((state, _)) if state == "inactive" || state == "failed" => {
                    return Err(E2eError::Protocol(format!(
                        "you are no longer a member of {peer}"
                    )));
                }
                Some((_, leaving)) if leaving != 0 => {
                    return Err(E2eError::Protocol(format!("you are leaving {peer}")));
                }
                _ => {}
            }
        } else {
            check_peer(&me.handle, peer)?;
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(E2eError::Protocol(format!(
                "text of {} bytes exceeds {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let suite = self.default_suite()?;
        let id = new_message_id(now_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        OwnMessage {
            conversation: peer,
            id: &id,
            body: text,
            kind,
            view_once: false,
        }
        .queue(&tx, &me, suite, now_ms)?;
        tx.commit()?;
        Ok(uuid_text(&id))
    }

    /// Gives up starting a conversation with `peer` (say, the server says no such account
    /// exists): every queued text to `peer` that was never encrypted is marked Failed and
    /// leaves the outbox, in one transaction, so the items behind it can go out. Returns
    /// a [`Event::SendFailed`] for each.
    pub fn fail_conversation_start(
        &mut self,
        peer: &str,
        reason: &str,
    ) -> Result<Vec<Event>, E2eError> {
        let (me, _) = self.me()?;
        let me = me.handle.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let events = fail_queued_texts(&tx, &me, peer, reason)?;
        tx.commit()?;
        Ok(events)
    }

    /// Queues a key-rotation commit (self-update) in the conversation's send group.
    pub fn queue_self_update(&mut self, peer: &str) -> Result<(), E2eError> {
        let _ = self.me()?;
        if send_group(&self.conn, peer)?.is_none() {
            return Err(E2eError::UnknownConversation(peer.to_string()));
        }
        let id = *uuid::Uuid::now_v7().as_bytes();
        self.conn.execute(
            "INSERT INTO outbox (ord, kind, conversation, item_id, message_id)
             VALUES ((SELECT COALESCE(MAX(ord), 0) + 1 FROM outbox), 'update', ?1, ?2, ?2)",
            params![peer, &id[..]],
        )?;
        Ok(())
    }

    /// What to do for the head of the outbox. Returns the same `Submit` until
    /// [`Profile::submit_result`] resolves it.
    pub fn next_action(&mut self, _now_ms: u64) -> Result<Action, E2eError> {
        let (me, keys) = self.me()?;
        let me = me.clone();
        let signer = keys.device.mls_signer();
        loop {
            let head = self
                .conn
                .query_row(
                    &format!("SELECT {HEAD_COLUMNS} FROM outbox ORDER BY ord LIMIT 1"),
                    [],
                    head_from_row,
                )
                .optional()?;
            let Some(head) = head else {
                return Ok(Action::Idle);
            };
            if let Some(bytes) = &head.submit {
                return Ok(Action::Submit(Submit::decode(bytes.as_slice())?));
            }
            match head.kind.as_str() {
                "text" | "content" => {
                    let Some(group_id) = send_group(&self.conn, &head.conversation)? else {
                        if crate::group::is_group_name(&head.conversation) {
                            // The group is gone (we were removed or left) or failed.
                            let tx = self
                                .conn
                                .transaction_with_behavior(TransactionBehavior::Immediate)?;
                            tx.execute(
                                "UPDATE messages SET state = ?1 WHERE sender = ?2 AND id = ?3",
                                params![MessageState::Failed.to_i64(), me.handle, head.item_id],
                            )?;
                            tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                            tx.commit()?;
                            continue;
                        }
                        let suite =
                            conversation_suite(&self.conn, &head.conversation)?.unwrap_or_default();
                        return Ok(Action::NeedPeer {
                            handle: head.conversation,
                            suite,
                        });
                    };
                    if let Some(e) = head.await_epoch {
                        let local = load_group(&self.conn, &group_id)?.epoch().as_u64();
                        if local < crate::store::from_sql_u64(e) {
                            return Ok(Action::AwaitIncoming);
                        }
                    }
                    return self.build_text_submit(&head, &group_id, &signer, &me.handle);
                }
                "update" => {
                    let group_id = match &head.group_id {
                        Some(g) => Some(g.clone()),
                        None => send_group(&self.conn, &head.conversation)?,
                    };
                    let Some(group_id) = group_id else {
                        // The conversation has no usable group any more: nothing to rotate.
                        self.conn
                            .execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                        continue;
                    };
                    let group = load_group(&self.conn, &group_id)?;
                    if !group.is_active() {
                        self.conn
                            .execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                        continue;
                    }
                    let local = group.epoch().as_u64();
                    if head
                        .await_epoch
                        .is_some_and(|e| local < crate::store::from_sql_u64(e))
                    {
                        return Ok(Action::AwaitIncoming);
                    }
                    return self.build_update_submit(&head, &group_id, &signer);
                }
                "gcreate" | "greset" | "gadd" | "gremove" | "gmeta" | "gcommit" | "gleave"
                | "grejoin" | "dadd" | "dremove" => {
                    let group_id = head.group_id.clone().unwrap_or_default();
                    match self.group_next_action(
                        head.ord,
                        &head.kind,
                        &head.conversation,
                        &head.item_id,
                        &group_id,
                        head.params.as_deref(),
                        head.await_epoch,
                        &signer,
                    )? {
                        Some(action) => return Ok(action),
                        None => continue,
                    }
                }
                _ => {
                    // A 'create' item always carries its Submit; anything else is corrupt.
                    tracing::warn!(kind = %head.kind, "dropping an outbox item without a Submit");
                    self.conn
                        .execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                }
            }
        }
    }

    fn build_text_submit(
        &mut self,
        head: &Head,
        group_id: &[u8],
        signer: &SignatureKeyPair,
        my_handle: &str,
    ) -> Result<Action, E2eError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut group = load_group(&tx, group_id)?;
        if group.pending_commit().is_some() {
            // Only the outbox head ever holds a pending commit, so this cannot happen
            // unless the store was tampered with. Never encrypt over it.
            return Ok(Action::AwaitIncoming);
        }
        if group.pending_proposals().next().is_some() {
            // A member's leave proposal waits for its commit (queued in front of us).
            tx.commit()?;
            return Ok(Action::AwaitIncoming);
        }
        let (plaintext, expire_after_ms) = if head.kind == "content" {
            // A receipt, reaction, edit, delete or timer change (features.rs).
            crate::features::control_plaintext(&tx, head.ord)?
        } else {
            let (text, kind): (String, i64) = tx.query_row(
                "SELECT body, kind FROM messages WHERE sender = ?1 AND id = ?2",
                params![my_handle, head.item_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let body = if kind == crate::attachments::KIND_ATTACHMENT {
                crate::attachments::content_body(&tx, my_handle, &head.item_id, text)?
            } else {
                content_body(kind, text)
            };
            // With its reply, view-once flag and disappearing timer (features.rs).
            crate::features::message_plaintext(&tx, my_handle, &head.item_id, body)?
        };
        crate::features::reset_ephemeral_budget(&tx, group_id)?;
        let mls_message = {
            let provider = Provider::new(&tx);
            group
                .create_message(&provider, signer, &plaintext)?
                .to_bytes()?
        };
        let submit = Submit {
            message_id: head.message_id.clone().into(),
            group_id: group_id.to_vec().into(),
            mls_message: mls_message.into(),
            roster: vec![],
            welcomes: vec![],
            group_info: Default::default(),
            expire_after_ms,
            // A diverged group keeps talking at its own epoch until an admin resets it.
            past_epoch: crate::inbox::is_diverged(&tx, group_id)?,
        };
        tx.execute(
            "UPDATE outbox SET submit = ?1, group_id = ?2 WHERE ord = ?3",
            params![submit.encode_to_vec(), group_id, head.ord],
        )?;
        tx.execute(
            "UPDATE messages SET group_id = ?1 WHERE sender = ?2 AND id = ?3",
            params![group_id, my_handle, head.item_id],
        )?;
        tx.commit()?;
        Ok(Action::Submit(submit))
    }

    fn build_update_submit(
        &mut self,
        head: &Head,
        group_id: &[u8],
        signer: &SignatureKeyPair,
    ) -> Result<Action, E2eError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut group = load_group(&tx, group_id)?;
        let commit = {
            let provider = Provider::new(&tx);
            group
                .self_update(&provider, signer, LeafNodeParameters::default())?
                .into_commit()
                .to_bytes()?
        };
        // A self-update changes no membership: the roster is the current one.
        let submit = Submit {
            message_id: head.message_id.clone().into(),
            group_id: group_id.to_vec().into(),
            mls_message: commit.into(),
            roster: roster(&group),
            welcomes: vec![],
            group_info: Default::default(),
            expire_after_ms: 0,
            past_epoch: false,
        };
        tx.execute(
            "UPDATE outbox SET submit = ?1, group_id = ?2, await_epoch = NULL WHERE ord = ?3",
            params![submit.encode_to_vec(), group_id, head.ord],
        )?;
        tx.commit()?;
        Ok(Action::Submit(submit))
    }

    /// Answers [`Action::NeedPeer`]: pins/updates the peer's account, checks the claimed
    /// key packages (suite, `handle/device_id` credential, certified device key) and
    /// creates the group: its creating commit (adding every valid device) becomes the
    /// head of the outbox. Invalid packages are skipped; none valid is
    /// [`E2eError::InvalidKeyPackage`].
    pub fn provide_peer(
        &mut self,
        account: &AccountInfo,
        key_packages: &[ClaimedKeyPackage],
        now_ms: u64,
    ) -> Result<(), E2eError> {
        self.provide_peer_with_own_devices(account, key_packages, &[], now_ms)
    }

    /// Like [`Profile::provide_peer`], also adding this account's other devices from
    /// `own_key_packages` (claimed for our own handle; our own `AccountInfo` must have been
    /// fed to [`Profile::learn_account`]).
    pub fn provide_peer_with_own_devices(
        &mut self,
        account: &AccountInfo,
        key_packages: &[ClaimedKeyPackage],
        own_key_packages: &[ClaimedKeyPackage],
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let (me, keys) = self.me()?;
        let me = me.clone();
        let keys = keys.clone();
        let peer = account.handle.clone();
        check_peer(&me.handle, &peer)?;
        let credential = self.own_credential()?;
        let signer = keys.device.mls_signer();
        let default_suite = self.default_suite()?;

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        learn_account_in(&tx, Some(&keys), Some(&me.handle), account)?;
        self.fresh_accounts.insert(peer.clone());
        tx.execute(
            "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
            params![peer, default_suite.code(), to_sql_u64(now_ms)?],
        )?;
        let suite = conversation_suite(&tx, &peer)?.unwrap_or(default_suite);
        let existing: i64 = tx.query_row(
            "SELECT COUNT(*) FROM groups WHERE conversation = ?1 AND state IN ('active', 'pending')",
            params![peer],
            |r| r.get(0),
        )?;
        if existing > 0 {
            // A group appeared meanwhile (e.g. the peer's Welcome): nothing to create.
            tx.commit()?;
            return Ok(());
        }
        if key_packages.is_empty() {
            tx.commit()?;
            return Err(E2eError::NoKeyPackages(peer));
        }

        let provider = Provider::new(&tx);
        let mut valid: Vec<KeyPackage> = Vec::new();
        let mut added: Vec<DeviceAddr> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let mut seen: HashSet<DeviceAddr> = HashSet::new();
        let candidates = key_packages
            .iter()
            .map(|k| (peer.as_str(), k))
            .chain(own_key_packages.iter().map(|k| (me.handle.as_str(), k)));
        for (handle, claimed) in candidates {
            if handle == me.handle && claimed.device_id == me.device_id {
                continue; // never add ourselves
            }
            match check_key_package(
                &provider,
                &tx,
                &mut self.fresh_accounts,
                suite,
                handle,
                claimed,
            ) {
                Ok((kp, addr)) => {
                    if seen.insert(addr.clone()) {
                        valid.push(kp);
                        added.push(addr);
                    }
                }
                Err(reason) => {
                    tracing::warn!(%handle, device_id = claimed.device_id, %reason, "rejecting a key package");
                    reasons.push(reason);
                }
            }
        }
        if !added.iter().any(|a| a.handle == peer) {
            tx.commit()?;
            return Err(E2eError::InvalidKeyPackage(if reasons.is_empty() {
                format!("no key package for {peer}")
            } else {
                reasons.join("; ")
            }));
        }

        let mut group_id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut group_id);
        let mut group = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &group_config(suite),
            GroupId::from_slice(&group_id),
            credential,
        )?;
        let (commit, welcome, _group_info) = group.add_members(&provider, &signer, &valid)?;

        let mut roster_addrs = vec![DeviceAddr {
            handle: me.handle.clone(),
            device_id: me.device_id,
        }];
        roster_addrs.extend(added.iter().cloned());
        let message_id = new_message_id(now_ms);
        let submit = Submit {
            message_id: message_id.to_vec().into(),
            group_id: group_id.to_vec().into(),
            mls_message: commit.to_bytes()?.into(),
            roster: roster_addrs.iter().map(DeviceAddr::to_wire).collect(),
            welcomes: vec![WelcomeOut {
                welcome: welcome.to_bytes()?.into(),
                recipients: added.iter().map(DeviceAddr::to_wire).collect(),
            }],
            group_info: Default::default(),
            expire_after_ms: 0,
            past_epoch: false,
        };
        tx.execute(
            "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4)",
            params![&group_id[..], peer, suite.code(), to_sql_u64(now_ms)?],
        )?;
        tx.execute(
            "INSERT INTO outbox (ord, kind, conversation, item_id, message_id, group_id, submit)
             VALUES ((SELECT COALESCE(MIN(ord), 1) - 1 FROM outbox), 'create', ?1, ?2, ?2, ?3, ?4)",
            params![peer, &message_id[..], &group_id[..], submit.encode_to_vec()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records the server's answer to the `Submit` with `message_id`. Answers for
    /// unknown or superseded ids are ignored.
    pub fn submit_result(
        &mut self,
        message_id: &[u8],
        result: &SubmitResult,
        now_ms: u64,
    ) -> Result<Vec<Event>, E2eError> {
        let me = self.me()?.0.clone();
        let head = self
            .conn
            .query_row(
                &format!("SELECT {HEAD_COLUMNS} FROM outbox WHERE message_id = ?1"),
                params![message_id],
                head_from_row,
            )
            .optional()?;
        let Some(head) = head else {
            return Ok(vec![]);
        };
        if head.submit.is_none() {
            // Superseded (e.g. reset after a lost commit race).
            return Ok(vec![]);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut events = Vec::new();
        match (&result.outcome, head.kind.as_str()) {
            (Some(Outcome::Accepted(_)), "text") => {
                tx.execute(
                    "UPDATE messages SET state = ?1 WHERE sender = ?2 AND id = ?3",
                    params![MessageState::Sent.to_i64(), me.handle, head.item_id],
                )?;
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                crate::features::after_sent(&tx, &me.handle, &head.item_id)?;
                events.push(Event::Sent {
                    id: uuid_text(&head.item_id),
                });
            }
            (Some(Outcome::Accepted(_)), "content") => {
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
            }
            (Some(Outcome::Accepted(_)), "greset") => {
                let new_id = head.group_id.clone().unwrap_or_default();
                let mut group = load_group(&tx, &new_id)?;
                if group.pending_commit().is_some() {
                    let provider = Provider::new(&tx);
                    group.merge_pending_commit(&provider)?;
                }
                let meta = match crate::group::metadata_of(group.extensions()) {
                    Some(Ok(m)) => m,
                    _ => return Err(E2eError::Storage("reset group without metadata".into())),
                };
                let suite = Suite::from_ciphersuite(group.ciphersuite()).unwrap_or_default();
                let parent = meta.replaces.to_vec();
                // Who the old group had that the new one does not (the member whose
                // refused commit made it diverge).
                let left_out: Vec<String> = match load_group(&tx, &parent) {
                    Ok(old) => {
                        let now = crate::group::member_map(&group);
                        crate::group::member_map(&old)
                            .into_keys()
                            .filter(|h| !now.contains_key(h))
                            .collect()
                    }
                    Err(_) => vec![],
                };
                match crate::group_ops::adopt_reset(&tx, &parent, &new_id, suite, now_ms)? {
                    Some(conversation) => {
                        crate::group_ops::store_recovery_key(&tx, &new_id, &meta)?;
                        events.push(Event::Group(crate::group::record_event(
                            &tx,
                            &conversation,
                            &new_id,
                            crate::group::GroupEventKind::Reset,
                            &me.handle,
                            left_out,
                            None,
                            true,
                            now_ms,
                        )?));
                    }
                    None => {
                        // Another admin's reset of the same group won (lower group id).
                        tx.execute(
                            "UPDATE groups SET state = 'inactive' WHERE group_id = ?1",
                            params![new_id],
                        )?;
                    }
                }
                tx.execute(
                    "DELETE FROM outbox_key_packages WHERE item_id = ?1",
                    params![head.item_id],
                )?;
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
            }
            (Some(Outcome::Accepted(_)), "gleave") => {
                let group_id = head.group_id.clone().unwrap_or_default();
                tx.execute(
                    "UPDATE group_chats SET leaving = 1 WHERE group_id = ?1",
                    params![group_id],
                )?;
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
            }
            (Some(Outcome::Accepted(_)), _) => {
                let group_id = head.group_id.clone().unwrap_or_default();
                let mut group = load_group(&tx, &group_id)?;
                if let Some(staged) = group.pending_commit()
                    && head.kind.starts_with('g')
                {
                    let me_addr = DeviceAddr {
                        handle: me.handle.clone(),
                        device_id: me.device_id,
                    };
                    let changes = if head.kind == "gcreate" {
                        let added: std::collections::BTreeSet<String> = staged
                            .add_proposals()
                            .filter_map(|a| {
                                parse_credential(
                                    a.add_proposal().key_package().leaf_node().credential(),
                                )
                                .ok()
                            })
                            .map(|a| a.handle)
                            .filter(|h| *h != me.handle)
                            .collect();
                        vec![(
                            crate::group::GroupEventKind::Added,
                            me.handle.clone(),
                            added.into_iter().collect(),
                            None,
                        )]
                    } else {
                        crate::group::authorize_commit(
                            &group,
                            staged,
                            &me_addr,
                            head.kind == "grejoin",
                        )
                        .unwrap_or_default()
                    };
                    let provider = Provider::new(&tx);
                    group.merge_pending_commit(&provider)?;
                    let mut conversation: String = tx.query_row(
                        "SELECT conversation FROM group_chats WHERE group_id = ?1",
                        params![group_id],
                        |r| r.get(0),
                    )?;
                    if head.kind == "grejoin"
                        && let Some(Ok(meta)) = crate::group::metadata_of(group.extensions())
                    {
                        // Renames we missed while our state was broken.
                        conversation =
                            crate::group::rename_conversation(&tx, &group_id, &meta.title)?;
                    }
                    events.extend(crate::inbox::apply_group_changes(
                        &tx,
                        &group,
                        &group_id,
                        conversation,
                        changes,
                        &me.handle,
                        now_ms,
                    )?);
                    tx.execute(
                        "UPDATE groups SET state = 'active' WHERE group_id = ?1 AND state = 'pending'",
                        params![group_id],
                    )?;
                    tx.execute(
                        "DELETE FROM outbox_key_packages WHERE item_id = ?1",
                        params![head.item_id],
                    )?;
                } else if group.pending_commit().is_some() {
                    let provider = Provider::new(&tx);
                    group.merge_pending_commit(&provider)?;
                } else if head.kind == "grejoin" {
                    // OpenMLS builds the joiner's group at the new epoch already: the
                    // server's acceptance makes it ours.
                    tx.execute(
                        "UPDATE groups SET state = 'active' WHERE group_id = ?1 AND state = 'pending'",
                        params![group_id],
                    )?;
                    if let Some(Ok(meta)) = crate::group::metadata_of(group.extensions()) {
                        crate::group::rename_conversation(&tx, &group_id, &meta.title)?;
                    }
                } else {
                    tracing::error!("server accepted a commit we no longer hold as pending");
                }
                if head.kind == "create" {
                    tx.execute(
                        "UPDATE groups SET state = 'active' WHERE group_id = ?1 AND state = 'pending'",
                        params![group_id],
                    )?;
                }
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                let mut ctx = inbox::Ctx {
                    conn: &tx,
                    me: &me,
                    fresh: &mut self.fresh_accounts,
                    now_ms,
                };
                events.extend(inbox::drain_buffer_or_postpone(&mut ctx, &group_id)?);
            }
            (Some(Outcome::StaleEpoch(_)), "grejoin") => {
                // The GroupInfo we rejoined from is outdated (a commit came first, or its
                // committer could not publish one). Give up for now: the next sync finds
                // the group stuck again and retries with what the server then has.
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
                events.push(Event::GroupOperationFailed {
                    conversation: head.conversation.clone(),
                    reason: "rejoin raced another commit; retried on the next sync".into(),
                });
            }
            (Some(Outcome::StaleEpoch(stale)), "text" | "content") => {
                // The group moved on (a commit we have not processed yet, e.g. one adding
                // a device): encrypt again at the server's epoch once we are there, so
                // every current member can read it. Same message id: never a duplicate.
                tx.execute(
                    "UPDATE outbox SET submit = NULL, await_epoch = ?1 WHERE ord = ?2",
                    params![to_sql_u64(stale.current_epoch)?, head.ord],
                )?;
            }
            (
                Some(Outcome::StaleEpoch(stale)),
                "update" | "gadd" | "gremove" | "gmeta" | "gcommit" | "dadd" | "dremove",
            ) => {
                let group_id = head.group_id.clone().unwrap_or_default();
                let mut group = load_group(&tx, &group_id)?;
                {
                    let provider = Provider::new(&tx);
                    group.clear_pending_commit(provider.storage())?;
                }
                tx.execute(
                    "UPDATE outbox SET submit = NULL, message_id = ?1, await_epoch = ?2 WHERE ord = ?3",
                    params![
                        &new_message_id(now_ms)[..],
                        to_sql_u64(stale.current_epoch)?,
                        head.ord
                    ],
                )?;
            }
            (outcome, kind) => {
                let reason = match outcome {
                    Some(Outcome::Rejected(e)) => {
                        format!("rejected ({:?}): {}", e.code(), e.message)
                    }
                    Some(Outcome::StaleEpoch(s)) => {
                        format!("stale epoch (server at {})", s.current_epoch)
                    }
                    Some(Outcome::Accepted(_)) | None => "empty result".to_string(),
                };
                match kind {
                    "content" => {
                        // A receipt, reaction, edit, delete or timer change: nothing to
                        // mark failed; it is dropped.
                        tracing::warn!(%reason, "a conversation update was not accepted");
                    }
                    "text" => {
                        tx.execute(
                            "UPDATE messages SET state = ?1 WHERE sender = ?2 AND id = ?3",
                            params![MessageState::Failed.to_i64(), me.handle, head.item_id],
                        )?;
                        events.push(Event::SendFailed {
                            id: uuid_text(&head.item_id),
                            reason,
                        });
                    }
                    _ => {
                        let group_id = head.group_id.clone().unwrap_or_default();
                        if let Ok(mut group) = load_group(&tx, &group_id) {
                            let provider = Provider::new(&tx);
                            group.clear_pending_commit(provider.storage())?;
                        }
                        if kind == "greset" {
                            tx.execute(
                                "UPDATE groups SET state = 'failed' WHERE group_id = ?1",
                                params![group_id],
                            )?;
                        }
                        if kind == "create" || kind == "gcreate" {
                            tx.execute(
                                "UPDATE groups SET state = 'failed' WHERE group_id = ?1",
                                params![group_id],
                            )?;
                            // The texts waiting for this group would only ask for the peer
                            // again and again: fail them.
                            events.extend(fail_queued_texts(
                                &tx,
                                &me.handle,
                                &head.conversation,
                                &reason,
                            )?);
                        }
                        tx.execute(
                            "DELETE FROM outbox_key_packages WHERE item_id = ?1",
                            params![head.item_id],
                        )?;
                        events.push(Event::GroupOperationFailed {
                            conversation: head.conversation.clone(),
                            reason: reason.clone(),
                        });
                        tracing::warn!(kind, %reason, "commit not accepted");
                    }
                }
                tx.execute("DELETE FROM outbox WHERE ord = ?1", params![head.ord])?;
            }
        }
        tx.commit()?;
        Ok(events)
    }
}

fn fail_queued_texts(
    conn: &Connection,
    my_handle: &str,
    conversation: &str,
    reason: &str,
) -> Result<Vec<Event>, E2eError> {
    let ids: Vec<Vec<u8>> = {
        let mut stmt = conn.prepare(
            "SELECT item_id FROM outbox WHERE conversation = ?1 AND kind IN ('text', 'content')
             AND submit IS NULL",
        )?;
        let rows = stmt.query_map(params![conversation], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut events = Vec::with_capacity(ids.len());
    for id in ids {
        conn.execute(
            "UPDATE messages SET state = ?1 WHERE sender = ?2 AND id = ?3",
            params![MessageState::Failed.to_i64(), my_handle, id],
        )?;
        conn.execute("DELETE FROM outbox WHERE item_id = ?1", params![id])?;
        events.push(Event::SendFailed {
            id: uuid_text(&id),
            reason: format!("could not start the conversation: {reason}"),
        });
    }
    Ok(events)
}

fn check_peer(me: &str, peer: &str) -> Result<(), E2eError> {
    hushwire_proto::identity::validate_handle(peer)
        .map_err(|e| E2eError::Protocol(format!("peer handle: {e}")))?;
    if peer == me {
        return Err(E2eError::Protocol(
            "a conversation with oneself is not supported".into(),
        ));
    }
    Ok(())
}

/// [`check_key_package`] for the group operations.
pub(crate) fn check_key_package_pub(
    provider: &Provider<'_>,
    conn: &Connection,
    fresh: &mut HashSet<String>,
    suite: Suite,
    handle: &str,
    claimed: &ClaimedKeyPackage,
) -> Result<(KeyPackage, DeviceAddr), String> {
    check_key_package(provider, conn, fresh, suite, handle, claimed)
}

/// Validates one claimed key package: parses and verifies it, checks the suite and that
/// its leaf is `handle/device_id` with that device's certified key.
fn check_key_package(
    provider: &Provider<'_>,
    conn: &Connection,
    fresh: &mut HashSet<String>,
    suite: Suite,
    handle: &str,
    claimed: &ClaimedKeyPackage,
) -> Result<(KeyPackage, DeviceAddr), String> {
    let msg = MlsMessageIn::tls_deserialize_exact(claimed.key_package.as_ref())
        .map_err(|e| format!("{handle}/{}: malformed: {e}", claimed.device_id))?;
    let kp_in: KeyPackageIn = match msg.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(format!("{handle}/{}: not a key package", claimed.device_id)),
    };
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| format!("{handle}/{}: {e}", claimed.device_id))?;
    if kp.ciphersuite() != suite.ciphersuite() {
        return Err(format!(
            "{handle}/{}: suite {:?}, expected {:?}",
            claimed.device_id,
            kp.ciphersuite(),
            suite
        ));
    }
    let leaf = kp.leaf_node();
    let addr = match check_leaf(
        conn,
        fresh,
        leaf.credential(),
        leaf.signature_key().as_slice(),
    ) {
        Ok(addr) => addr,
        Err(LeafCheck::Invalid(r)) => return Err(r),
        Err(LeafCheck::NeedAccount(h)) => {
            return Err(format!("{h}: account not known or device not certified"));
        }
        Err(LeafCheck::Fatal(e)) => return Err(e.to_string()),
    };
    if addr.handle != handle || addr.device_id != claimed.device_id {
        return Err(format!(
            "{handle}/{}: key package is for {}",
            claimed.device_id,
            addr.credential_string()
        ));
    }
    match crate::devices::is_listed(conn, handle, claimed.device_id) {
        Ok(Some(true)) => {}
        Ok(_) => {
            return Err(format!(
                "{handle}/{}: not in the account's signed device list",
                claimed.device_id
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    Ok((kp, addr))
}

/// A new message of this device, queued for sending ([`OwnMessage::queue`]).
pub(crate) struct OwnMessage<'a> {
    /// A peer's handle or a group chat `#TITLE`.
    pub(crate) conversation: &'a str,
    pub(crate) id: &'a [u8; 16],
    /// The text (an attachment's caption).
    pub(crate) body: &'a str,
    /// `messages.kind`.
    pub(crate) kind: i64,
    pub(crate) view_once: bool,
}

impl OwnMessage<'_> {
    /// In `tx`: the conversation (if new, with `suite`), the history entry (Queued), its
    /// outbox item, the disappearing timer and view-once flag, and the end of a message
    /// request (writing answers it; features.rs).
    pub(crate) fn queue(
        &self,
        tx: &Connection,
        me: &crate::Identity,
        suite: Suite,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        tx.execute(
            "INSERT OR IGNORE INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
            params![self.conversation, suite.code(), to_sql_u64(now_ms)?],
        )?;
        tx.execute(
            "INSERT INTO messages (id, conversation, sender, sender_device, group_id, sent_at_ms,
                 received_at_ms, body, outgoing, state, kind)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, NULL, ?6, 1, ?7, ?8)",
            params![
                &self.id[..],
                self.conversation,
                me.handle,
                me.device_id,
                to_sql_u64(now_ms)?,
                self.body,
                MessageState::Queued.to_i64(),
                self.kind
            ],
        )?;
        tx.execute(
            "INSERT INTO outbox (ord, kind, conversation, item_id, message_id)
             VALUES ((SELECT COALESCE(MAX(ord), 0) + 1 FROM outbox), 'text', ?1, ?2, ?2)",
            params![self.conversation, &self.id[..]],
        )?;
        crate::features::set_own_message_meta(
            tx,
            &me.handle,
            self.id,
            self.conversation,
            None,
            self.view_once,
            now_ms,
        )?;
        crate::features::engage(tx, self.conversation, now_ms)?;
        Ok(())
    }
}
