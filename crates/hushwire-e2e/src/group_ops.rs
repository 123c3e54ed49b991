//! Group chat operations on a [`Profile`]: queueing them (with the local policy check),
//! turning the outbox head into a commit or proposal, and the read-only queries.
//!
//! Every operation is an outbox item (`gcreate`, `gadd`, `gremove`, `gleave`, `gmeta`,
//! `gcommit`, `grejoin`) whose parameters are JSON in `outbox.params`. Its `Submit` is
//! built when it reaches the head of the outbox, from the group's state at that moment;
//! after a lost commit race it is rebuilt at the new epoch (members already added or
//! removed are skipped; an operation with nothing left to do is dropped).

use std::collections::BTreeSet;

use hushwire_proto::wire::{
    self, AccountInfo, ClaimedKeyPackage, GroupMetadata, MembershipPolicy, Submit, WelcomeOut,
};
use openmls::prelude::{
    GroupId, KeyPackage, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    OpenMlsProvider as _, tls_codec::Deserialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use prost::Message as _;
use rand::RngCore as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::group::{
    self, GroupDetails, GroupMember, XWING_AUTO_MAX_DEVICES, XWING_MAX_DEVICES, effective_admins,
    may_change_membership, member_map, meta_extensions, metadata_of,
};
use crate::outbox::{check_key_package_pub, group_config_with, load_group, roster};
use crate::profile::{DeviceAddr, learn_account_in, new_message_id};
use crate::store::{Provider, from_sql_u64, to_sql_u64};
use crate::{Action, E2eError, Event, Profile, Suite};

/// Parameters of a group outbox item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OpParams {
    /// Handles to add or remove, or the handle to promote/demote.
    #[serde(default)]
    pub handles: Vec<String>,
    /// `gcreate`: the title. `gmeta`: the new title for a rename.
    #[serde(default)]
    pub title: Option<String>,
    /// `gmeta`: "rename", "promote", "demote".
    #[serde(default)]
    pub op: Option<String>,
    /// `gcreate`: the suite code.
    #[serde(default)]
    pub suite: Option<u16>,
    /// Key packages for `handles` were claimed and stored.
    #[serde(default)]
    pub provided: bool,
    /// Built without the policy check (tests of what a modified client can do).
    #[serde(default)]
    pub unchecked: bool,
    /// `greset`: the replaced group's id (hex) and the metadata carried over.
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub admins: Option<Vec<String>>,
    #[serde(default)]
    pub membership: Option<i32>,
    /// `dadd` / `dremove`: this account's devices to add or remove.
    #[serde(default)]
    pub device_ids: Vec<u32>,
}

/// Queues `dadd` (with `key_packages`, one per suite) or `dremove` of this account's
/// device `device_id` in every active group of every conversation.
pub(crate) fn queue_own_device_op(
    profile: &mut Profile,
    kind: &str,
    device_id: u32,
    key_packages: &[(Suite, Vec<u8>)],
    now_ms: u64,
) -> Result<usize, E2eError> {
    let me = profile.me()?.0.clone();
    if device_id == me.device_id {
        return Err(E2eError::Protocol(
            "this device cannot add or remove itself".into(),
        ));
    }
    let tx = profile
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let groups: Vec<(Vec<u8>, String, u16)> = {
        let mut stmt = tx.prepare(
            "SELECT group_id, conversation, suite FROM groups WHERE state = 'active'
             ORDER BY created_at_ms, group_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let p = OpParams {
        device_ids: vec![device_id],
        provided: true,
        ..OpParams::default()
    };
    let mut queued = 0;
    for (group_id, conversation, suite) in groups {
        if kind == "dadd" {
            let Some((_, kp)) = key_packages.iter().find(|(s, _)| s.code() == suite) else {
                tracing::warn!(suite, "no key package of the new device for this suite");
                continue;
            };
            insert_item(&tx, kind, &conversation, &group_id, &p, false, now_ms)?;
            let item_id: Vec<u8> = tx.query_row(
                "SELECT item_id FROM outbox ORDER BY ord DESC LIMIT 1",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO outbox_key_packages (item_id, handle, device_id, key_package)
                 VALUES (?1, ?2, ?3, ?4)",
                params![item_id, me.handle, device_id, kp],
            )?;
        } else {
            insert_item(&tx, kind, &conversation, &group_id, &p, false, now_ms)?;
        }
        queued += 1;
    }
    tx.commit()?;
    Ok(queued)
}

/// One active group that lacks listed devices of this account (see
/// [`Profile::own_devices_missing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingOwnDevices {
    /// The MLS group.
    pub group_id: Vec<u8>,
    /// Its conversation.
    pub conversation: String,
    /// The group's suite (claim the devices' key packages for it).
    pub suite: Suite,
    /// This account's listed devices that are not members, ascending.
    pub device_ids: Vec<u32>,
}

impl Profile {
    /// The active groups that lack one of this account's listed devices (a device
    /// restored from a backup registers itself and publishes the list, but nobody added
    /// it to the conversations), leaving out devices an outbox item already adds.
    pub fn own_devices_missing(&self) -> Result<Vec<MissingOwnDevices>, E2eError> {
        let me = self.me()?.0.clone();
        let listed: BTreeSet<u32> = {
            let mut stmt = self.conn.prepare(
                "SELECT device_id FROM devices WHERE handle = ?1 AND listed = 1 AND device_id != ?2",
            )?;
            let rows = stmt.query_map(params![me.handle, me.device_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let mut queued: BTreeSet<(Vec<u8>, u32)> = BTreeSet::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT group_id, params FROM outbox WHERE kind = 'dadd'")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Option<Vec<u8>>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                ))
            })?;
            for row in rows {
                let (group_id, raw) = row?;
                for d in parse_params(raw.as_deref()).device_ids {
                    queued.insert((group_id.clone().unwrap_or_default(), d));
                }
            }
        }
        let groups: Vec<(Vec<u8>, String, u16)> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id, conversation, suite FROM groups WHERE state = 'active'
                 ORDER BY created_at_ms, group_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (group_id, conversation, suite) in groups {
            let Some(suite) = Suite::from_code(suite) else {
                continue;
            };
            let Ok(group) = load_group(&self.conn, &group_id) else {
                continue;
            };
            if !group.is_active() {
                continue;
            }
            let present: BTreeSet<u32> = member_map(&group)
                .get(&me.handle)
                .map(|l| l.iter().map(|(_, d)| *d).collect())
                .unwrap_or_default();
            let device_ids: Vec<u32> = listed
                .iter()
                .copied()
                .filter(|d| !present.contains(d) && !queued.contains(&(group_id.clone(), *d)))
                .collect();
            if !device_ids.is_empty() {
                out.push(MissingOwnDevices {
                    group_id,
                    conversation,
                    suite,
                    device_ids,
                });
            }
        }
        Ok(out)
    }

    /// Queues adding this account's devices to one group, each with a key package
    /// claimed for this group alone (`(device_id, MLSMessage(KeyPackage))`): a one-time
    /// package serves one Welcome only.
    pub fn queue_add_own_devices_to(
        &mut self,
        group_id: &[u8],
        key_packages: &[(u32, Vec<u8>)],
        now_ms: u64,
    ) -> Result<bool, E2eError> {
        let me = self.me()?.0.clone();
        let key_packages: Vec<&(u32, Vec<u8>)> = key_packages
            .iter()
            .filter(|(d, _)| *d != me.device_id)
            .collect();
        if key_packages.is_empty() {
            return Ok(false);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let conversation: Option<String> = tx
            .query_row(
                "SELECT conversation FROM groups WHERE group_id = ?1 AND state = 'active'",
                params![group_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(conversation) = conversation else {
            return Ok(false);
        };
        let p = OpParams {
            device_ids: key_packages.iter().map(|(d, _)| *d).collect(),
            provided: true,
            ..OpParams::default()
        };
        insert_item(&tx, "dadd", &conversation, group_id, &p, false, now_ms)?;
        let item_id: Vec<u8> = tx.query_row(
            "SELECT item_id FROM outbox ORDER BY ord DESC LIMIT 1",
            [],
            |r| r.get(0),
        )?;
        for (device_id, kp) in key_packages {
            tx.execute(
                "INSERT OR REPLACE INTO outbox_key_packages (item_id, handle, device_id, key_package)
                 VALUES (?1, ?2, ?3, ?4)",
                params![item_id, me.handle, device_id, kp],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }
}

/// A conversation this device has history of but no group in (restored from a
/// backup): see [`Profile::unjoined_conversations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unjoined {
    /// The conversation (a peer's handle, or `#title` for a group chat).
    pub conversation: String,
    /// A group chat (rejoined by External Commit), else a 1:1 conversation (started
    /// again with the peer's and this account's devices).
    pub group_chat: bool,
}

impl Profile {
    /// The conversations with no active or pending group on this device: after a
    /// restore from a backup, those the account's other devices did not add it to.
    /// Leaves out 1:1 conversations with blocked accounts and group chats being left or
    /// without a recovery key (nothing to rejoin from).
    pub fn unjoined_conversations(&self) -> Result<Vec<Unjoined>, E2eError> {
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT c.peer FROM conversations c
             WHERE NOT EXISTS (SELECT 1 FROM groups g WHERE g.conversation = c.peer
                               AND g.state IN ('active', 'pending'))
               AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.handle = c.peer)
             ORDER BY c.peer",
        )?;
        let peers = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for peer in peers {
            let peer = peer?;
            if !crate::group::is_group_name(&peer) {
                out.push(Unjoined {
                    conversation: peer,
                    group_chat: false,
                });
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT gc.conversation FROM group_chats gc
             WHERE gc.leaving = 0 AND gc.recovery_key IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.group_id = gc.group_id
                               AND g.state IN ('active', 'pending'))
             ORDER BY gc.conversation",
        )?;
        let chats = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for chat in chats {
            out.push(Unjoined {
                conversation: chat?,
                group_chat: true,
            });
        }
        Ok(out)
    }
}

pub(crate) fn parse_params(raw: Option<&str>) -> OpParams {
    raw.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// The group id of a group chat conversation.
pub(crate) fn chat_group(conn: &Connection, conversation: &str) -> Result<Vec<u8>, E2eError> {
    conn.query_row(
        "SELECT group_id FROM group_chats WHERE conversation = ?1",
        params![conversation],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| E2eError::UnknownConversation(conversation.to_string()))
}

fn validate_handles(me: &str, handles: &[String]) -> Result<Vec<String>, E2eError> {
    let mut out = BTreeSet::new();
    for h in handles {
        hushwire_proto::identity::validate_handle(h)
            .map_err(|e| E2eError::Protocol(format!("handle {h:?}: {e}")))?;
        if h != me {
            out.insert(h.clone());
        }
    }
    Ok(out.into_iter().collect())
}

fn insert_item(
    conn: &Connection,
    kind: &str,
    conversation: &str,
    group_id: &[u8],
    p: &OpParams,
    front: bool,
    now_ms: u64,
) -> Result<(), E2eError> {
    let id = new_message_id(now_ms);
    let ord = if front {
        "(SELECT COALESCE(MIN(ord), 1) - 1 FROM outbox)"
    } else {
        "(SELECT COALESCE(MAX(ord), 0) + 1 FROM outbox)"
    };
    let params_json =
        serde_json::to_string(p).map_err(|e| E2eError::Storage(format!("params: {e}")))?;
    conn.execute(
        &format!(
            "INSERT INTO outbox (ord, kind, conversation, item_id, message_id, group_id, params)
             VALUES ({ord}, ?1, ?2, ?3, ?3, ?4, ?5)"
        ),
        params![kind, conversation, &id[..], group_id, params_json],
    )?;
    Ok(())
}

/// The GroupInfo to publish with a commit, sealed under the group's recovery key: a
/// GroupInfo carries the group context, hence the metadata (title, admins) the server must
/// never see. Nothing is published for a group without a recovery key.
fn group_info_bytes(
    gi: Option<openmls::messages::group_info::GroupInfo>,
    meta: Option<&GroupMetadata>,
    group_id: &[u8],
) -> Result<Vec<u8>, E2eError> {
    match (gi, meta) {
        (Some(gi), Some(meta)) if meta.recovery_key.len() == group::RECOVERY_KEY_BYTES => {
            let bytes = MlsMessageOut::from(gi).to_bytes()?;
            group::seal_group_info(&meta.recovery_key, group_id, &bytes)
        }
        _ => Ok(Vec::new()),
    }
}

/// Remembers a group chat's recovery key outside its MLS state.
pub(crate) fn store_recovery_key(
    conn: &Connection,
    group_id: &[u8],
    meta: &GroupMetadata,
) -> Result<(), E2eError> {
    if meta.recovery_key.len() == group::RECOVERY_KEY_BYTES {
        conn.execute(
            "UPDATE group_chats SET recovery_key = ?1 WHERE group_id = ?2",
            params![meta.recovery_key.as_ref(), group_id],
        )?;
    }
    Ok(())
}

impl Profile {
    /// Creates a group chat titled `title` with `members` (handles; this account is the
    /// creator and first admin). Nothing goes to the network here: the creation is queued
    /// and [`Profile::next_action`] asks for the members' key packages
    /// ([`Action::NeedMembers`]). `suite` `None` picks X-Wing for up to
    /// [`XWING_AUTO_MAX_DEVICES`] members, classic above. Returns the conversation name
    /// (`#TITLE`, or `#TITLE~2` if that name is taken locally).
    pub fn create_group(
        &mut self,
        title: &str,
        members: &[String],
        suite: Option<Suite>,
        now_ms: u64,
    ) -> Result<String, E2eError> {
        let me = self.me()?.0.handle.clone();
        group::validate_title(title)?;
        let handles = validate_handles(&me, members)?;
        if handles.is_empty() {
            return Err(E2eError::Protocol(
                "a group needs at least one other member".into(),
            ));
        }
        let suite = suite.unwrap_or(if handles.len() < XWING_AUTO_MAX_DEVICES {
            Suite::XWing
        } else {
            Suite::Classic
        });
        if suite == Suite::XWing && handles.len() >= XWING_MAX_DEVICES {
            return Err(E2eError::Protocol(format!(
                "post-quantum groups are limited to {XWING_MAX_DEVICES} devices; use the classic suite"
            )));
        }
        let mut group_id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut group_id);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let name = group::unique_name(&tx, title, None)?;
        tx.execute(
            "INSERT INTO conversations (peer, suite, created_at_ms) VALUES (?1, ?2, ?3)",
            params![name, suite.code(), to_sql_u64(now_ms)?],
        )?;
        tx.execute(
            "INSERT INTO group_chats (group_id, conversation) VALUES (?1, ?2)",
            params![&group_id[..], name],
        )?;
        let p = OpParams {
            handles,
            title: Some(title.to_string()),
            suite: Some(suite.code()),
            ..OpParams::default()
        };
        insert_item(&tx, "gcreate", &name, &group_id, &p, false, now_ms)?;
        tx.commit()?;
        Ok(name)
    }

    fn active_chat(&self, conversation: &str) -> Result<(Vec<u8>, MlsGroup), E2eError> {
        let group_id = chat_group(&self.conn, conversation)?;
        let state: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM groups WHERE group_id = ?1",
                params![group_id],
                |r| r.get(0),
            )
            .optional()?;
        match state.as_deref() {
            Some("active") => {}
            Some("inactive") => {
                return Err(E2eError::Protocol(format!(
                    "you are no longer a member of {conversation}"
                )));
            }
            Some(_) | None => {
                return Err(E2eError::Protocol(format!(
                    "{conversation} is not set up yet; sync first"
                )));
            }
        }
        let leaving: i64 = self.conn.query_row(
            "SELECT leaving FROM group_chats WHERE group_id = ?1",
            params![group_id],
            |r| r.get(0),
        )?;
        if leaving != 0 {
            return Err(E2eError::Protocol(format!(
                "you are leaving {conversation}"
            )));
        }
        let group = load_group(&self.conn, &group_id)?;
        Ok((group_id, group))
    }

    fn require_admin(&self, group: &MlsGroup, membership: bool) -> Result<(), E2eError> {
        let me = &self.me()?.0.handle;
        let meta = match metadata_of(group.extensions()) {
            Some(Ok(m)) => m,
            _ => return Err(E2eError::Protocol("not a group chat".into())),
        };
        let members = member_map(group);
        let ok = if membership {
            may_change_membership(&meta, &members, me)
        } else {
            effective_admins(&meta, &members).contains(me)
        };
        if ok {
            Ok(())
        } else {
            Err(E2eError::NotAuthorized(
                "only group admins may do this".into(),
            ))
        }
    }

    /// Queues adding `handles` to a group chat (admins only, unless the group lets
    /// anyone add).
    pub fn group_add(
        &mut self,
        conversation: &str,
        handles: &[String],
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let (group_id, group) = self.active_chat(conversation)?;
        self.require_admin(&group, true)?;
        self.queue_group_op(
            conversation,
            &group_id,
            "gadd",
            handles,
            None,
            false,
            now_ms,
        )
    }

    /// Queues removing `handles` (all their devices) from a group chat (admins only).
    pub fn group_remove(
        &mut self,
        conversation: &str,
        handles: &[String],
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let (group_id, group) = self.active_chat(conversation)?;
        self.require_admin(&group, true)?;
        let present = member_map(&group);
        for h in handles {
            if !present.contains_key(h) {
                return Err(E2eError::Protocol(format!("{h} is not a member")));
            }
        }
        self.queue_group_op(
            conversation,
            &group_id,
            "gremove",
            handles,
            None,
            false,
            now_ms,
        )
    }

    /// Queues renaming a group chat (admins only).
    pub fn group_rename(
        &mut self,
        conversation: &str,
        title: &str,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        group::validate_title(title)?;
        let (group_id, group) = self.active_chat(conversation)?;
        self.require_admin(&group, false)?;
        self.queue_group_op(
            conversation,
            &group_id,
            "gmeta",
            &[],
            Some(("rename", title)),
            false,
            now_ms,
        )
    }

    /// Queues making `handle` an admin (`promote = true`) or not (admins only).
    pub fn group_set_admin(
        &mut self,
        conversation: &str,
        handle: &str,
        promote: bool,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let (group_id, group) = self.active_chat(conversation)?;
        self.require_admin(&group, false)?;
        if !member_map(&group).contains_key(handle) {
            return Err(E2eError::Protocol(format!("{handle} is not a member")));
        }
        let op = if promote { "promote" } else { "demote" };
        self.queue_group_op(
            conversation,
            &group_id,
            "gmeta",
            &[handle.to_string()],
            Some((op, "")),
            false,
            now_ms,
        )
    }

    /// Queues leaving a group chat: a self-remove proposal that another member's client
    /// commits. Until then the chat is read-only for us.
    pub fn group_leave(&mut self, conversation: &str, now_ms: u64) -> Result<(), E2eError> {
        let (group_id, _) = self.active_chat(conversation)?;
        self.queue_group_op(conversation, &group_id, "gleave", &[], None, false, now_ms)
    }

    /// Queues a rejoin by External Commit from the GroupInfo the server keeps, for a group
    /// whose local state fell behind or broke. The chat's history is kept.
    pub fn group_rejoin(&mut self, conversation: &str, now_ms: u64) -> Result<(), E2eError> {
        let group_id = chat_group(&self.conn, conversation)?;
        let queued: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE group_id = ?1 AND kind = 'grejoin'",
            params![group_id],
            |r| r.get(0),
        )?;
        if queued > 0 {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_item(
            &tx,
            "grejoin",
            conversation,
            &group_id,
            &OpParams::default(),
            true,
            now_ms,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Resets a group chat (admins only): queues a new MLS group with the same title,
    /// description, admins and membership policy, and every current member except the
    /// one whose refused commit made the group diverge. Members' clients accept it only
    /// from an admin of the replaced group (in their own state of it) and carry the
    /// conversation, with its history, over to it; the old group ends. This is the way
    /// out of a diverged group (see [`Event::Group`] `diverged`), and a last resort for
    /// any group that no longer works. Returns the handles left out.
    pub fn group_reset(
        &mut self,
        conversation: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, E2eError> {
        let (old_id, group) = self.active_chat(conversation)?;
        self.require_admin(&group, true)?;
        let me = self.me()?.0.handle.clone();
        let meta = match metadata_of(group.extensions()) {
            Some(Ok(m)) => m,
            _ => return Err(E2eError::Protocol("not a group chat".into())),
        };
        let diverged_by: Option<String> = self.conn.query_row(
            "SELECT diverged_by FROM group_chats WHERE group_id = ?1",
            params![old_id],
            |r| r.get(0),
        )?;
        let left_out: Vec<String> = diverged_by.into_iter().filter(|h| *h != me).collect();
        let handles: Vec<String> = member_map(&group)
            .into_keys()
            .filter(|h| *h != me && !left_out.contains(h))
            .collect();
        if handles.is_empty() {
            return Err(E2eError::Protocol(format!(
                "{conversation} has nobody left to reset it with"
            )));
        }
        let queued: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE conversation = ?1 AND kind = 'greset'",
            params![conversation],
            |r| r.get(0),
        )?;
        if queued > 0 {
            return Ok(left_out);
        }
        let suite = Suite::from_ciphersuite(group.ciphersuite())
            .ok_or_else(|| E2eError::Storage("group has an unsupported suite".into()))?;
        let mut admins: Vec<String> = meta
            .admins
            .iter()
            .filter(|a| !left_out.contains(a))
            .cloned()
            .collect();
        if admins.is_empty() {
            admins.push(me.clone());
        }
        let mut new_id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut new_id);
        let p = OpParams {
            handles,
            title: Some(meta.title.clone()),
            suite: Some(suite.code()),
            replaces: Some(hex::encode(&old_id)),
            description: Some(meta.description.clone()),
            admins: Some(admins),
            membership: Some(meta.membership),
            ..OpParams::default()
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_item(&tx, "greset", conversation, &new_id, &p, false, now_ms)?;
        tx.commit()?;
        Ok(left_out)
    }

    /// Gives up a queued rejoin of `conversation` (the server keeps no GroupInfo for it,
    /// or it does not open): the item leaves the outbox so it blocks nothing behind it.
    /// Returns the event to report.
    pub fn cancel_rejoin(&mut self, conversation: &str, reason: &str) -> Result<Event, E2eError> {
        self.conn.execute(
            "DELETE FROM outbox WHERE kind = 'grejoin' AND conversation = ?1",
            params![conversation],
        )?;
        tracing::warn!(%conversation, %reason, "rejoin given up");
        Ok(Event::GroupOperationFailed {
            conversation: conversation.to_string(),
            reason: format!("cannot rejoin: {reason}"),
        })
    }

    /// Queues a group operation WITHOUT the local policy check. Honest clients never do
    /// this; it exists so tests can show that every other client rejects what a modified
    /// client commits. `kind` is `gadd`, `gremove` or `gmeta`.
    #[doc(hidden)]
    pub fn queue_group_op_unchecked(
        &mut self,
        conversation: &str,
        group_id: &[u8],
        kind: &str,
        handles: &[String],
        meta_op: Option<(&str, &str)>,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        self.queue_group_op(conversation, group_id, kind, handles, meta_op, true, now_ms)
    }

    /// Queues a group operation whose policy check the caller did (`unchecked`: and
    /// skips the check when the commit is built).
    #[allow(clippy::too_many_arguments)] // one outbox item's fields
    fn queue_group_op(
        &mut self,
        conversation: &str,
        group_id: &[u8],
        kind: &str,
        handles: &[String],
        meta_op: Option<(&str, &str)>,
        unchecked: bool,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let me = self.me()?.0.handle.clone();
        if !unchecked && crate::inbox::is_diverged(&self.conn, group_id)? {
            return Err(E2eError::Protocol(format!(
                "{conversation} diverged (this device refused a change the group's rules do \
                 not allow); an admin must reset it first: hushwire group reset '{conversation}'"
            )));
        }
        let handles = if kind == "gmeta" {
            handles.to_vec()
        } else {
            validate_handles(&me, handles)?
        };
        if matches!(kind, "gadd" | "gremove") && handles.is_empty() {
            return Err(E2eError::Protocol("no handles given".into()));
        }
        let p = OpParams {
            handles,
            op: meta_op.map(|(op, _)| op.to_string()),
            title: meta_op
                .filter(|(op, _)| *op == "rename")
                .map(|(_, t)| t.to_string()),
            unchecked,
            ..OpParams::default()
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_item(&tx, kind, conversation, group_id, &p, false, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Answers [`Action::NeedMembers`]: the accounts and claimed key packages of the
    /// handles it named (a handle without an account or without valid key packages is
    /// left out and returned with the reason). The operation at the outbox head then
    /// becomes a commit.
    pub fn provide_members(
        &mut self,
        accounts: &[AccountInfo],
        key_packages: &[(String, Vec<ClaimedKeyPackage>)],
        _now_ms: u64,
    ) -> Result<Vec<(String, String)>, E2eError> {
        let (me, keys) = self.me()?;
        let me = me.clone();
        let keys = keys.clone();
        let head: Option<(Vec<u8>, Option<String>, String)> = self
            .conn
            .query_row(
                "SELECT item_id, params, kind FROM outbox ORDER BY ord LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((item_id, raw, kind)) = head else {
            return Ok(vec![]);
        };
        if kind != "gcreate" && kind != "greset" && kind != "gadd" {
            return Ok(vec![]);
        }
        let mut p = parse_params(raw.as_deref());
        let suite = self.item_suite(&item_id, &p)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut skipped = Vec::new();
        for account in accounts {
            learn_account_in(&tx, Some(&keys), Some(&me.handle), account)?;
            self.fresh_accounts.insert(account.handle.clone());
        }
        {
            let provider = Provider::new(&tx);
            for (handle, claimed) in key_packages {
                let mut any = false;
                let mut reasons = Vec::new();
                for kp in claimed {
                    if *handle == me.handle && kp.device_id == me.device_id {
                        continue;
                    }
                    match check_key_package_pub(
                        &provider,
                        &tx,
                        &mut self.fresh_accounts,
                        suite,
                        handle,
                        kp,
                    ) {
                        Ok(_) => {
                            tx.execute(
                                "INSERT OR REPLACE INTO outbox_key_packages
                                     (item_id, handle, device_id, key_package)
                                 VALUES (?1, ?2, ?3, ?4)",
                                params![item_id, handle, kp.device_id, kp.key_package.as_ref()],
                            )?;
                            any = true;
                        }
                        Err(r) => reasons.push(r),
                    }
                }
                if !any && *handle != me.handle {
                    skipped.push((
                        handle.clone(),
                        if reasons.is_empty() {
                            "no key packages".to_string()
                        } else {
                            reasons.join("; ")
                        },
                    ));
                }
            }
        }
        for h in &p.handles {
            if !accounts.iter().any(|a| a.handle == *h) && !skipped.iter().any(|(s, _)| s == h) {
                skipped.push((h.clone(), "no such account".to_string()));
            }
        }
        p.provided = true;
        tx.execute(
            "UPDATE outbox SET params = ?1 WHERE item_id = ?2",
            params![
                serde_json::to_string(&p).map_err(|e| E2eError::Storage(e.to_string()))?,
                item_id
            ],
        )?;
        tx.commit()?;
        Ok(skipped)
    }

    fn item_suite(&self, item_id: &[u8], p: &OpParams) -> Result<Suite, E2eError> {
        if let Some(code) = p.suite {
            return Suite::from_code(code)
                .ok_or_else(|| E2eError::Storage(format!("unknown suite {code}")));
        }
        let group_id: Vec<u8> = self.conn.query_row(
            "SELECT group_id FROM outbox WHERE item_id = ?1",
            params![item_id],
            |r| r.get(0),
        )?;
        let group = load_group(&self.conn, &group_id)?;
        Suite::from_ciphersuite(group.ciphersuite())
            .ok_or_else(|| E2eError::Storage("group has an unsupported suite".into()))
    }

    /// The outbox head is a group operation without a Submit: what to do.
    #[allow(clippy::too_many_arguments)] // the outbox head's columns
    pub(crate) fn group_next_action(
        &mut self,
        ord: i64,
        kind: &str,
        conversation: &str,
        item_id: &[u8],
        group_id: &[u8],
        raw_params: Option<&str>,
        await_epoch: Option<i64>,
        signer: &SignatureKeyPair,
    ) -> Result<Option<Action>, E2eError> {
        let p = parse_params(raw_params);
        let me = self.me()?.0.clone();
        if kind == "gcreate" || kind == "greset" {
            if !p.provided {
                return Ok(Some(Action::NeedMembers {
                    conversation: conversation.to_string(),
                    handles: std::iter::once(me.handle.clone())
                        .chain(p.handles.iter().cloned())
                        .collect(),
                    suite: self.item_suite(item_id, &p)?,
                }));
            }
            return self
                .build_create(ord, conversation, item_id, group_id, &p, signer)
                .map(Some);
        }
        if kind == "grejoin" {
            return Ok(Some(Action::NeedGroupInfo {
                conversation: conversation.to_string(),
                group_id: group_id.to_vec(),
            }));
        }
        let group = match load_group(&self.conn, group_id) {
            Ok(g) if g.is_active() => g,
            _ => {
                self.conn
                    .execute("DELETE FROM outbox WHERE ord = ?1", params![ord])?;
                return Ok(None);
            }
        };
        if await_epoch.is_some_and(|e| group.epoch().as_u64() < from_sql_u64(e)) {
            return Ok(Some(Action::AwaitIncoming));
        }
        if kind == "gadd" && !p.provided {
            let members = member_map(&group);
            let handles: Vec<String> = p
                .handles
                .iter()
                .filter(|h| !members.contains_key(*h))
                .cloned()
                .collect();
            if handles.is_empty() {
                self.conn
                    .execute("DELETE FROM outbox WHERE ord = ?1", params![ord])?;
                return Ok(None);
            }
            let suite = Suite::from_ciphersuite(group.ciphersuite()).unwrap_or_default();
            return Ok(Some(Action::NeedMembers {
                conversation: conversation.to_string(),
                handles,
                suite,
            }));
        }
        self.build_group_commit(ord, kind, item_id, group_id, &p, signer)
    }

    fn build_create(
        &mut self,
        ord: i64,
        conversation: &str,
        item_id: &[u8],
        group_id: &[u8],
        p: &OpParams,
        signer: &SignatureKeyPair,
    ) -> Result<Action, E2eError> {
        let me = self.me()?.0.clone();
        let credential = self.own_credential()?;
        let suite = self.item_suite(item_id, p)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (kps, addrs) = stored_key_packages(&tx, item_id, suite)?;
        if !addrs.iter().any(|a| a.handle != me.handle) {
            // Nobody to add: the creation fails.
            tx.execute("DELETE FROM outbox WHERE ord = ?1", params![ord])?;
            tx.execute(
                "DELETE FROM outbox_key_packages WHERE item_id = ?1",
                params![item_id],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO groups (group_id, conversation, suite, state, created_at_ms)
                 VALUES (?1, ?2, ?3, 'failed', 0)",
                params![group_id, conversation, suite.code()],
            )?;
            tx.commit()?;
            return Err(E2eError::NoKeyPackages(p.handles.join(",")));
        }
        if suite == Suite::XWing && addrs.len() + 1 > XWING_MAX_DEVICES {
            tx.commit()?;
            return Err(E2eError::Protocol(format!(
                "post-quantum groups are limited to {XWING_MAX_DEVICES} devices"
            )));
        }
        let mut recovery_key = vec![0u8; group::RECOVERY_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut recovery_key);
        let replaces = match p.replaces.as_deref().map(hex::decode) {
            Some(Ok(id)) => id,
            Some(Err(_)) => return Err(E2eError::Storage("bad reset parameters".into())),
            None => Vec::new(),
        };
        let meta = GroupMetadata {
            title: p.title.clone().unwrap_or_default(),
            description: p.description.clone().unwrap_or_default(),
            admins: p.admins.clone().unwrap_or_else(|| vec![me.handle.clone()]),
            membership: p.membership.unwrap_or(MembershipPolicy::Admins as i32),
            recovery_key: recovery_key.into(),
            replaces: replaces.into(),
        };
        store_recovery_key(&tx, group_id, &meta)?;
        let provider = Provider::new(&tx);
        // A half-built group from an earlier attempt (crash) is replaced.
        if let Ok(mut old) = load_group(&tx, group_id) {
            old.delete(provider.storage())?;
        }
        let mut group = MlsGroup::new_with_group_id(
            &provider,
            signer,
            &group_config_with(suite, Some(meta_extensions(&meta)?)),
            GroupId::from_slice(group_id),
            credential,
        )?;
        let (commit, welcome, gi) = group.add_members_without_update(&provider, signer, &kps)?;
        let mut roster_addrs = vec![DeviceAddr {
            handle: me.handle.clone(),
            device_id: me.device_id,
        }];
        roster_addrs.extend(addrs.iter().cloned());
        let submit = Submit {
            message_id: fresh_id().to_vec().into(),
            group_id: group_id.to_vec().into(),
            mls_message: commit.to_bytes()?.into(),
            roster: roster_addrs.iter().map(DeviceAddr::to_wire).collect(),
            welcomes: vec![WelcomeOut {
                welcome: welcome.to_bytes()?.into(),
                recipients: addrs.iter().map(DeviceAddr::to_wire).collect(),
            }],
            group_info: group_info_bytes(gi, Some(&meta), group_id)?.into(),
            ..Submit::default()
        };
        tx.execute(
            "INSERT OR REPLACE INTO groups (group_id, conversation, suite, state, created_at_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4)",
            params![group_id, conversation, suite.code(), 0],
        )?;
        let submit = store_submit(&tx, ord, submit)?;
        tx.commit()?;
        Ok(Action::Submit(submit))
    }

    fn build_group_commit(
        &mut self,
        ord: i64,
        kind: &str,
        item_id: &[u8],
        group_id: &[u8],
        p: &OpParams,
        signer: &SignatureKeyPair,
    ) -> Result<Option<Action>, E2eError> {
        let me = self.me()?.0.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut group = load_group(&tx, group_id)?;
        if group.pending_commit().is_some() {
            tx.commit()?;
            return Ok(Some(Action::AwaitIncoming));
        }
        let provider = Provider::new(&tx);
        let drop_item = |tx: &Connection| -> Result<Option<Action>, E2eError> {
            tx.execute("DELETE FROM outbox WHERE ord = ?1", params![ord])?;
            tx.execute(
                "DELETE FROM outbox_key_packages WHERE item_id = ?1",
                params![item_id],
            )?;
            Ok(None)
        };
        let members = member_map(&group);
        // The group may have changed since the operation was queued (a lost commit race,
        // a demotion): check again, so this client never sends what others reject.
        if matches!(kind, "gadd" | "gremove" | "gmeta") && !p.unchecked {
            let meta = match metadata_of(group.extensions()) {
                Some(Ok(m)) => m,
                _ => return Err(E2eError::Protocol("not a group chat".into())),
            };
            let allowed = if kind == "gmeta" {
                effective_admins(&meta, &members).contains(&me.handle)
            } else {
                may_change_membership(&meta, &members, &me.handle)
            };
            if !allowed {
                drop_item(&tx)?;
                tx.commit()?;
                let conversation: String = self.conn.query_row(
                    "SELECT conversation FROM group_chats WHERE group_id = ?1",
                    params![group_id],
                    |r| r.get(0),
                )?;
                return Err(E2eError::NotAuthorized(format!(
                    "you are no longer an admin of {conversation}; the change was dropped"
                )));
            }
        }
        let suite = Suite::from_ciphersuite(group.ciphersuite()).unwrap_or_default();
        let (commit, welcome, gi, welcome_to): (
            MlsMessageOut,
            Option<MlsMessageOut>,
            Option<openmls::messages::group_info::GroupInfo>,
            Vec<DeviceAddr>,
        ) = match kind {
            "gadd" => {
                let (kps, addrs) = stored_key_packages(&tx, item_id, suite)?;
                let present: BTreeSet<(String, u32)> = members
                    .iter()
                    .flat_map(|(h, l)| l.iter().map(move |(_, d)| (h.clone(), *d)))
                    .collect();
                let mut keep_kps = Vec::new();
                let mut keep_addrs = Vec::new();
                for (kp, a) in kps.into_iter().zip(addrs) {
                    if !present.contains(&(a.handle.clone(), a.device_id)) {
                        keep_kps.push(kp);
                        keep_addrs.push(a);
                    }
                }
                if keep_kps.is_empty() {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                if suite == Suite::XWing
                    && group.members().count() + keep_kps.len() > XWING_MAX_DEVICES
                {
                    drop_item(&tx)?;
                    tx.commit()?;
                    return Err(E2eError::Protocol(format!(
                        "post-quantum groups are limited to {XWING_MAX_DEVICES} devices"
                    )));
                }
                let (c, w, gi) = group.add_members_without_update(&provider, signer, &keep_kps)?;
                (c, Some(w), gi, keep_addrs)
            }
            "dadd" => {
                let (kps, addrs) = stored_key_packages(&tx, item_id, suite)?;
                let present: BTreeSet<u32> = members
                    .get(&me.handle)
                    .map(|l| l.iter().map(|(_, d)| *d).collect())
                    .unwrap_or_default();
                let mut keep_kps = Vec::new();
                let mut keep_addrs = Vec::new();
                for (kp, a) in kps.into_iter().zip(addrs) {
                    if a.handle == me.handle && !present.contains(&a.device_id) {
                        keep_kps.push(kp);
                        keep_addrs.push(a);
                    }
                }
                if keep_kps.is_empty() {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                let (c, w, gi) = group.add_members_without_update(&provider, signer, &keep_kps)?;
                (c, Some(w), gi, keep_addrs)
            }
            "dremove" => {
                let leaves: Vec<LeafNodeIndex> = members
                    .get(&me.handle)
                    .map(|l| {
                        l.iter()
                            .filter(|(_, d)| p.device_ids.contains(d) && *d != me.device_id)
                            .map(|(i, _)| *i)
                            .collect()
                    })
                    .unwrap_or_default();
                if leaves.is_empty() {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                let (c, w, gi) = group.remove_members(&provider, signer, &leaves)?;
                (c, w, gi, vec![])
            }
            "gremove" => {
                let leaves: Vec<LeafNodeIndex> = p
                    .handles
                    .iter()
                    .filter_map(|h| members.get(h))
                    .flat_map(|l| l.iter().map(|(i, _)| *i))
                    .collect();
                if leaves.is_empty() {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                let (c, w, gi) = group.remove_members(&provider, signer, &leaves)?;
                (c, w, gi, vec![])
            }
            "gmeta" => {
                let mut meta = match metadata_of(group.extensions()) {
                    Some(Ok(m)) => m,
                    _ => return Err(E2eError::Protocol("not a group chat".into())),
                };
                match p.op.as_deref() {
                    Some("rename") => meta.title = p.title.clone().unwrap_or_default(),
                    Some("promote") => {
                        for h in &p.handles {
                            if !meta.admins.contains(h) {
                                meta.admins.push(h.clone());
                            }
                        }
                    }
                    Some("demote") => meta.admins.retain(|a| !p.handles.contains(a)),
                    _ => {}
                }
                if metadata_of(group.extensions()).and_then(Result::ok) == Some(meta.clone()) {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                let (c, w, gi) = group.update_group_context_extensions(
                    &provider,
                    meta_extensions(&meta)?,
                    signer,
                )?;
                (c, w, gi, vec![])
            }
            "gcommit" => {
                if group.pending_proposals().next().is_none() {
                    let r = drop_item(&tx)?;
                    tx.commit()?;
                    return Ok(r);
                }
                let (c, w, gi) = group.commit_to_pending_proposals(&provider, signer)?;
                (c, w, gi, vec![])
            }
            "gleave" => {
                let proposal = group.leave_group(&provider, signer)?;
                let submit = Submit {
                    message_id: fresh_id().to_vec().into(),
                    group_id: group_id.to_vec().into(),
                    mls_message: proposal.to_bytes()?.into(),
                    roster: vec![],
                    welcomes: vec![],
                    group_info: Default::default(),
                    ..Submit::default()
                };
                let submit = store_submit(&tx, ord, submit)?;
                tx.commit()?;
                return Ok(Some(Action::Submit(submit)));
            }
            other => {
                tracing::warn!(kind = other, "dropping an unknown group operation");
                let r = drop_item(&tx)?;
                tx.commit()?;
                return Ok(r);
            }
        };
        let welcomes = match welcome {
            Some(w) if !welcome_to.is_empty() => vec![WelcomeOut {
                welcome: w.to_bytes()?.into(),
                recipients: welcome_to.iter().map(DeviceAddr::to_wire).collect(),
            }],
            _ => vec![],
        };
        let post_roster = match group.pending_commit() {
            Some(staged) => staged_roster(&group, staged, None),
            None => roster(&group),
        };
        let submit = Submit {
            message_id: fresh_id().to_vec().into(),
            group_id: group_id.to_vec().into(),
            mls_message: commit.to_bytes()?.into(),
            roster: post_roster,
            welcomes,
            group_info: group_info_bytes(
                gi,
                metadata_of(group.extensions())
                    .and_then(Result::ok)
                    .as_ref(),
                group_id,
            )?
            .into(),
            ..Submit::default()
        };
        let submit = store_submit(&tx, ord, submit)?;
        tx.commit()?;
        Ok(Some(Action::Submit(submit)))
    }

    /// Answers [`Action::NeedGroupInfo`] with the server's GroupInfo (`MLSMessage` bytes):
    /// replaces the broken local group state by an External Commit that rejoins with a
    /// fresh leaf (removing the old one). The chat's history is kept.
    pub fn provide_group_info(
        &mut self,
        conversation: &str,
        group_info: &[u8],
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let me = self.me()?.0.clone();
        let credential = self.own_credential()?;
        let signer = self.me()?.1.device.mls_signer();
        let group_id = chat_group(&self.conn, conversation)?;
        let head: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT ord, kind FROM outbox ORDER BY ord LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((ord, "grejoin")) = head.as_ref().map(|(o, k)| (*o, k.as_str())) else {
            return Ok(());
        };
        let stored_key: Option<Vec<u8>> = self.conn.query_row(
            "SELECT recovery_key FROM group_chats WHERE group_id = ?1",
            params![group_id],
            |r| r.get(0),
        )?;
        let key = match stored_key {
            Some(k) => k,
            None => load_group(&self.conn, &group_id)
                .ok()
                .and_then(|g| metadata_of(g.extensions()).and_then(Result::ok))
                .map(|m| m.recovery_key.to_vec())
                .filter(|k| k.len() == group::RECOVERY_KEY_BYTES)
                .ok_or_else(|| {
                    E2eError::Protocol(format!(
                        "{conversation} has no recovery key; it cannot be rejoined"
                    ))
                })?,
        };
        let group_info = group::open_group_info(&key, &group_id, group_info)?;
        let verifiable = match MlsMessageIn::tls_deserialize_exact(&group_info)?.extract() {
            MlsMessageBodyIn::GroupInfo(gi) => gi,
            _ => return Err(E2eError::Protocol("not a GroupInfo".into())),
        };
        if verifiable.group_id().as_slice() != group_id.as_slice() {
            return Err(E2eError::Protocol("GroupInfo is for another group".into()));
        }
        let suite = Suite::from_ciphersuite(verifiable.ciphersuite())
            .ok_or_else(|| E2eError::Protocol("GroupInfo has an unsupported suite".into()))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&tx);
        if let Ok(mut old) = load_group(&tx, &group_id) {
            old.delete(provider.storage())?;
        }
        #[allow(deprecated)] // the builder it wraps needs four calls for the same thing
        let (group, commit, gi) = MlsGroup::join_by_external_commit(
            &provider,
            &signer,
            None,
            verifiable,
            group_config_with(suite, None).join_config(),
            Some(crate::outbox::leaf_capabilities()),
            None,
            &[],
            credential,
        )?;
        // The metadata must be there, with the key we opened it with.
        let meta = match metadata_of(group.extensions()) {
            Some(Ok(m)) if m.recovery_key.as_ref() == key.as_slice() => m,
            _ => {
                return Err(E2eError::Protocol(
                    "GroupInfo is not this group chat".into(),
                ));
            }
        };
        let me_addr = DeviceAddr {
            handle: me.handle.clone(),
            device_id: me.device_id,
        };
        let post_roster = match group.pending_commit() {
            Some(staged) => staged_roster(&group, staged, Some(&me_addr)),
            None => roster(&group),
        };
        if !post_roster
            .iter()
            .any(|a| a.handle == me.handle && a.device_id == me.device_id)
        {
            return Err(E2eError::Protocol("rejoin does not include us".into()));
        }
        let submit = Submit {
            message_id: fresh_id().to_vec().into(),
            group_id: group_id.clone().into(),
            mls_message: commit.to_bytes()?.into(),
            roster: post_roster,
            welcomes: vec![],
            group_info: group_info_bytes(gi, Some(&meta), &group_id)?.into(),
            ..Submit::default()
        };
        // A device restored from a backup has the chat but never had the group.
        tx.execute(
            "INSERT INTO groups (group_id, conversation, suite, state, created_at_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4)
             ON CONFLICT (group_id) DO UPDATE SET state = 'pending'",
            params![group_id, conversation, suite.code(), to_sql_u64(now_ms)?],
        )?;
        // Buffered envelopes of the lost state can never be processed now.
        tx.execute(
            "DELETE FROM inbox_buffer WHERE group_id = ?1",
            params![group_id],
        )?;
        store_submit(&tx, ord, submit)?;
        tx.commit()?;
        Ok(())
    }

    /// A group chat's title, members, admins and state.
    pub fn group_details(&self, conversation: &str) -> Result<GroupDetails, E2eError> {
        let group_id = chat_group(&self.conn, conversation)?;
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT g.state, c.leaving FROM groups g JOIN group_chats c
                 ON c.group_id = g.group_id WHERE g.group_id = ?1",
                params![group_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, leaving)) = row else {
            return Err(E2eError::Protocol(format!(
                "{conversation} is not set up yet; sync first"
            )));
        };
        let group = load_group(&self.conn, &group_id)?;
        let meta = match metadata_of(group.extensions()) {
            Some(Ok(m)) => m,
            _ => return Err(E2eError::Protocol("not a group chat".into())),
        };
        let members = member_map(&group);
        let admins = effective_admins(&meta, &members);
        Ok(GroupDetails {
            conversation: conversation.to_string(),
            title: meta.title.clone(),
            description: meta.description.clone(),
            members: members
                .iter()
                .map(|(h, leaves)| GroupMember {
                    handle: h.clone(),
                    devices: leaves.iter().map(|(_, d)| *d).collect(),
                    admin: admins.contains(h),
                })
                .collect(),
            admins_only: meta.membership != MembershipPolicy::Anyone as i32,
            suite: Suite::from_ciphersuite(group.ciphersuite()).unwrap_or_default(),
            epoch: group.epoch().as_u64(),
            state,
            leaving: leaving != 0,
        })
    }

    /// The group chats whose buffered messages wait for an epoch no commit will bring:
    /// after the mailbox is drained, these are stuck and need a rejoin.
    pub fn stuck_groups(&self) -> Result<Vec<String>, E2eError> {
        let rows: Vec<(Vec<u8>, String, i64)> = {
            let mut stmt = self.conn.prepare(
                "SELECT c.group_id, c.conversation, MIN(b.epoch) FROM group_chats c
                 JOIN inbox_buffer b ON b.group_id = c.group_id
                 JOIN groups g ON g.group_id = c.group_id AND g.state = 'active'
                 WHERE c.diverged_by IS NULL
                 GROUP BY c.group_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (group_id, conversation, min_epoch) in rows {
            let group = load_group(&self.conn, &group_id)?;
            if from_sql_u64(min_epoch) > group.epoch().as_u64() {
                out.push(conversation);
            }
        }
        Ok(out)
    }
}

/// Moves the conversation of `parent` (the group a reset replaces) over to `new_id`,
/// keeping its history; the group it used ends (`inactive`). When two admins reset the
/// same group at once, every member ends in the reset with the lower group id, whatever
/// order they learn of them in. Returns the conversation, or `None` when `parent` is not
/// a group chat of ours or `new_id` lost to another reset of it.
pub(crate) fn adopt_reset(
    conn: &Connection,
    parent: &[u8],
    new_id: &[u8],
    suite: Suite,
    now_ms: u64,
) -> Result<Option<String>, E2eError> {
    let conversation: Option<String> = conn
        .query_row(
            "SELECT conversation FROM groups WHERE group_id = ?1",
            params![parent],
            |r| r.get(0),
        )
        .optional()?;
    let Some(conversation) = conversation else {
        return Ok(None);
    };
    let current: Option<Vec<u8>> = conn
        .query_row(
            "SELECT group_id FROM group_chats WHERE conversation = ?1",
            params![conversation],
            |r| r.get(0),
        )
        .optional()?;
    let Some(current) = current else {
        return Ok(None);
    };
    if current.as_slice() == new_id {
        return Ok(Some(conversation));
    }
    if current.as_slice() != parent {
        let sibling = load_group(conn, &current)
            .ok()
            .and_then(|g| metadata_of(g.extensions()))
            .and_then(Result::ok)
            .is_some_and(|m| m.replaces.as_ref() == parent);
        if !sibling || new_id >= current.as_slice() {
            return Ok(None);
        }
    }
    conn.execute(
        "UPDATE groups SET state = 'inactive' WHERE group_id = ?1",
        params![current],
    )?;
    conn.execute(
        "DELETE FROM inbox_buffer WHERE group_id = ?1",
        params![current],
    )?;
    conn.execute(
        "UPDATE group_chats SET group_id = ?2, leaving = 0, diverged_by = NULL
         WHERE conversation = ?1",
        params![conversation, new_id],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO groups (group_id, conversation, suite, state, created_at_ms)
         VALUES (?1, ?2, ?3, 'active', ?4)",
        params![new_id, conversation, suite.code(), to_sql_u64(now_ms)?],
    )?;
    Ok(Some(conversation))
}

fn fresh_id() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

/// Drops the published GroupInfo when it would push the commit's frame over the
/// protocol's limit (large post-quantum groups: the Welcome and the GroupInfo both carry
/// the ratchet tree). The server then keeps the previous one.
fn fit_frame(mut submit: Submit) -> Submit {
    let budget = hushwire_proto::limits::MAX_FRAME_BYTES * 7 / 8;
    if submit.encoded_len() > budget && !submit.group_info.is_empty() {
        tracing::info!(
            bytes = submit.group_info.len(),
            "GroupInfo not published: the commit's frame would be too large"
        );
        submit.group_info = Default::default();
    }
    submit
}

fn store_submit(conn: &Connection, ord: i64, submit: Submit) -> Result<Submit, E2eError> {
    let submit = fit_frame(submit);
    conn.execute(
        "UPDATE outbox SET submit = ?1, message_id = ?2, await_epoch = NULL WHERE ord = ?3",
        params![submit.encode_to_vec(), submit.message_id.as_ref(), ord],
    )?;
    Ok(submit)
}

/// The device roster after `staged` is merged into `group`: members minus removed
/// leaves plus added ones (plus `me`, for an external commit's new leaf).
fn staged_roster(
    group: &MlsGroup,
    staged: &openmls::prelude::StagedCommit,
    me: Option<&DeviceAddr>,
) -> Vec<wire::DeviceAddress> {
    let removed: BTreeSet<u32> = staged
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    let mut out: BTreeSet<DeviceAddr> = group
        .members()
        .filter(|m| !removed.contains(&m.index.u32()))
        .filter_map(|m| crate::profile::parse_credential(&m.credential).ok())
        .collect();
    for add in staged.add_proposals() {
        if let Ok(a) = crate::profile::parse_credential(
            add.add_proposal().key_package().leaf_node().credential(),
        ) {
            out.insert(a);
        }
    }
    if let Some(me) = me {
        out.insert(me.clone());
    }
    out.iter().map(DeviceAddr::to_wire).collect()
}

fn stored_key_packages(
    conn: &Connection,
    item_id: &[u8],
    suite: Suite,
) -> Result<(Vec<KeyPackage>, Vec<DeviceAddr>), E2eError> {
    let rows: Vec<(String, u32, Vec<u8>)> = {
        let mut stmt = conn.prepare(
            "SELECT handle, device_id, key_package FROM outbox_key_packages
             WHERE item_id = ?1 ORDER BY handle, device_id",
        )?;
        let rows = stmt.query_map(params![item_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let provider = Provider::new(conn);
    let mut kps = Vec::new();
    let mut addrs = Vec::new();
    for (handle, device_id, bytes) in rows {
        let claimed = ClaimedKeyPackage {
            device_id,
            key_package: bytes.into(),
        };
        let mut fresh = std::collections::HashSet::new();
        match check_key_package_pub(&provider, conn, &mut fresh, suite, &handle, &claimed) {
            Ok((kp, addr)) => {
                kps.push(kp);
                addrs.push(addr);
            }
            Err(reason) => {
                tracing::warn!(%handle, device_id, %reason, "dropping a stored key package")
            }
        }
    }
    Ok((kps, addrs))
}
