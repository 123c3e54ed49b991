//! Group chats: metadata in an MLS group-context extension, the authorization policy every
//! client enforces, and the group operations (create, add, remove, leave, rename,
//! promote/demote, rejoin).
//!
//! # Model
//! - A group chat is one MLS group whose leaves are the members' devices. Locally it is
//!   the conversation `#TITLE` (a duplicate title becomes `#TITLE~2`, `#TITLE~3`...).
//! - Its metadata ([`GroupMetadata`]: title, description, admins, membership policy) is
//!   the value of the group-context extension [`GROUP_METADATA_EXTENSION`], listed in the
//!   group's required capabilities. The server never sees it.
//! - Policy, checked by every client on every incoming commit (before merging it) and
//!   Welcome (before joining): adding members, removing someone else and changing the
//!   metadata need an *effective admin* (an admin who is still a member; a group left
//!   without one treats its member with the lowest leaf index as admin). Anyone may
//!   remove their own devices (leave) and update their own leaf. An external commit is
//!   accepted only as a resync: the joiner replaces its own old leaf.
//! - Leaving is a self-Remove proposal; every remaining member's client auto-commits
//!   pending proposals (the server's epoch fencing picks one winner, the others drop
//!   theirs once the proposal is gone).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use hushwire_proto::wire::{GroupMetadata, MembershipPolicy};
use openmls::prelude::{
    Extension, ExtensionType, Extensions, GroupContext, LeafNodeIndex, MlsGroup, Proposal,
    RequiredCapabilitiesExtension, Sender, StagedCommit, UnknownExtension,
};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};

use crate::E2eError;
use crate::profile::{DeviceAddr, parse_credential};
use crate::store::to_sql_u64;

/// The MLS extension type holding a group chat's [`GroupMetadata`] (private-use range).
pub const GROUP_METADATA_EXTENSION: u16 = 0xF0A1;

/// Largest number of member devices of a post-quantum (X-Wing) group. Two bounds, both
/// measured in BENCHMARKS.md ("Groups"): one removal costs the server about
/// 1.2 KB × n² of egress (84 MB at 256 devices, over 100 MB soon after); and an add's
/// frame carries the Welcome and the sealed GroupInfo, about 2.6 KB per device each,
/// which must stay within the frame budget (7/8 of `MAX_FRAME_BYTES`) so that every
/// commit publishes the GroupInfo a member with lost state rejoins from: 160 × 5.2 KB ≈
/// 830 KB fits, 180 devices would not.
pub const XWING_MAX_DEVICES: usize = 160;

/// `Suite` auto-selection at creation: X-Wing when the new group has at most this many
/// devices (leaving room to grow up to [`XWING_MAX_DEVICES`]), classic above.
pub const XWING_AUTO_MAX_DEVICES: usize = 128;

/// Length of [`GroupMetadata::recovery_key`].
pub const RECOVERY_KEY_BYTES: usize = 32;

/// Seals an `MLSMessage(GroupInfo)` for the server to keep (see
/// [`hushwire_proto::mls::SEALED_GROUP_INFO_MAGIC`]): XChaCha20-Poly1305 under the
/// group's recovery key, the group id as associated data.
pub(crate) fn seal_group_info(
    key: &[u8],
    group_id: &[u8],
    group_info: &[u8],
) -> Result<Vec<u8>, E2eError> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use hushwire_proto::mls::SEALED_GROUP_INFO_MAGIC;
    let cipher = XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| E2eError::Protocol("group recovery key is not 32 bytes".into()))?;
    let mut nonce = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut aad = SEALED_GROUP_INFO_MAGIC.to_vec();
    aad.extend_from_slice(group_id);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: group_info,
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Protocol("sealing the GroupInfo failed".into()))?;
    let mut out = Vec::with_capacity(SEALED_GROUP_INFO_MAGIC.len() + nonce.len() + ct.len());
    out.extend_from_slice(SEALED_GROUP_INFO_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal_group_info`] sealed; fails unless it was sealed for `group_id`
/// under `key`.
pub(crate) fn open_group_info(
    key: &[u8],
    group_id: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, E2eError> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use hushwire_proto::mls::{SEALED_GROUP_INFO_MAGIC, SEALED_GROUP_INFO_MIN_BYTES};
    if sealed.len() < SEALED_GROUP_INFO_MIN_BYTES || !sealed.starts_with(SEALED_GROUP_INFO_MAGIC) {
        return Err(E2eError::Protocol("not a sealed GroupInfo".into()));
    }
    let cipher = XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| E2eError::Protocol("group recovery key is not 32 bytes".into()))?;
    let (nonce, ct) = sealed[SEALED_GROUP_INFO_MAGIC.len()..].split_at(24);
    let mut aad = SEALED_GROUP_INFO_MAGIC.to_vec();
    aad.extend_from_slice(group_id);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| {
            E2eError::Protocol("the sealed GroupInfo does not open with the group's key".into())
        })
}

/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;

/// Longest group description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 512;

/// What happened to a group's membership or metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupEventKind {
    /// Members were added (at creation too).
    Added,
    /// Members were removed by someone else.
    Removed,
    /// A member left.
    Left,
    /// The title changed.
    Renamed,
    /// Members became admins.
    Promoted,
    /// Members stopped being admins.
    Demoted,
    /// This device refused a commit of the group (`by`: the member who sent it): the
    /// server's log went on without us. An admin resets the group.
    Diverged,
    /// An admin rebuilt the group as a new MLS group (history kept, `handles`: who was
    /// left out).
    Reset,
}

impl GroupEventKind {
    /// The name used in JSON output: `added`, `removed`, `left`, `renamed`, `promoted`,
    /// `demoted`, `diverged`, `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Left => "left",
            Self::Renamed => "renamed",
            Self::Promoted => "promoted",
            Self::Demoted => "demoted",
            Self::Diverged => "diverged",
            Self::Reset => "reset",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "added" => Self::Added,
            "removed" => Self::Removed,
            "left" => Self::Left,
            "renamed" => Self::Renamed,
            "promoted" => Self::Promoted,
            "demoted" => Self::Demoted,
            "diverged" => Self::Diverged,
            "reset" => Self::Reset,
            _ => return None,
        })
    }
}

/// A membership or metadata change of a group chat, as stored in its timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    /// The conversation (`#TITLE`) at the time it is reported.
    pub conversation: String,
    /// What happened.
    pub kind: GroupEventKind,
    /// Who did it (the committer; for `left`, the member who left).
    pub by: String,
    /// The handles concerned (added, removed, promoted...).
    pub handles: Vec<String>,
    /// The new title, for `renamed`.
    pub title: Option<String>,
    /// When this device learned of it.
    pub at_ms: u64,
}

/// One member of a group chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's handle.
    pub handle: String,
    /// The member's devices in the group.
    pub devices: Vec<u32>,
    /// Whether the member is an (effective) admin.
    pub admin: bool,
}

/// A group chat as this device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDetails {
    /// The local conversation name (`#TITLE`).
    pub conversation: String,
    /// The title.
    pub title: String,
    /// The description.
    pub description: String,
    /// Members, sorted by handle.
    pub members: Vec<GroupMember>,
    /// Whether only admins change membership.
    pub admins_only: bool,
    /// The group's suite.
    pub suite: crate::Suite,
    /// The local epoch.
    pub epoch: u64,
    /// `pending`, `active`, `inactive` (no longer a member) or `failed`.
    pub state: String,
    /// We asked to leave and wait for a member to commit it.
    pub leaving: bool,
}

/// Checks a title: 1..=100 characters, no control characters, not blank.
pub fn validate_title(title: &str) -> Result<(), E2eError> {
    if title.trim().is_empty() {
        return Err(E2eError::Protocol("the group title is empty".into()));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(E2eError::Protocol(format!(
            "the group title is longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    if title.chars().any(char::is_control) {
        return Err(E2eError::Protocol(
            "the group title contains control characters".into(),
        ));
    }
    Ok(())
}

/// The group-context extensions carrying `meta`.
pub fn meta_extensions(meta: &GroupMetadata) -> Result<Extensions<GroupContext>, E2eError> {
    Extensions::from_vec(vec![
        Extension::Unknown(
            GROUP_METADATA_EXTENSION,
            UnknownExtension(meta.encode_to_vec()),
        ),
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(GROUP_METADATA_EXTENSION)],
            &[],
            &[],
        )),
    ])
    .map_err(|e| E2eError::Protocol(format!("group extensions: {e}")))
}

/// The metadata of a group context, if it is a group chat. `Some(Err)` when present but
/// invalid.
pub(crate) fn metadata_of(
    extensions: &Extensions<GroupContext>,
) -> Option<Result<GroupMetadata, String>> {
    let raw = extensions.unknown(GROUP_METADATA_EXTENSION)?;
    Some(
        GroupMetadata::decode(raw.0.as_slice())
            .map_err(|e| format!("group metadata does not decode: {e}"))
            .and_then(|m| {
                validate_title(&m.title).map_err(|e| e.to_string())?;
                if m.description.chars().count() > MAX_DESCRIPTION_CHARS {
                    return Err("group description too long".into());
                }
                if !m.recovery_key.is_empty() && m.recovery_key.len() != RECOVERY_KEY_BYTES {
                    return Err("group recovery key is not 32 bytes".into());
                }
                Ok(m)
            }),
    )
}

/// Member handles → their leaf indices, in leaf order.
pub(crate) fn member_map(group: &MlsGroup) -> BTreeMap<String, Vec<(LeafNodeIndex, u32)>> {
    let mut out: BTreeMap<String, Vec<(LeafNodeIndex, u32)>> = BTreeMap::new();
    for m in group.members() {
        if let Ok(a) = parse_credential(&m.credential) {
            out.entry(a.handle)
                .or_default()
                .push((m.index, a.device_id));
        }
    }
    out
}

/// The effective admins: listed admins who are members, else the member with the lowest
/// leaf index.
pub(crate) fn effective_admins(
    meta: &GroupMetadata,
    members: &BTreeMap<String, Vec<(LeafNodeIndex, u32)>>,
) -> BTreeSet<String> {
    let admins: BTreeSet<String> = meta
        .admins
        .iter()
        .filter(|a| members.contains_key(*a))
        .cloned()
        .collect();
    if !admins.is_empty() {
        return admins;
    }
    members
        .iter()
        .filter_map(|(h, leaves)| leaves.iter().map(|(i, _)| i.u32()).min().map(|i| (i, h)))
        .min()
        .map(|(_, h)| BTreeSet::from([h.clone()]))
        .unwrap_or_default()
}

/// Whether `handle` may add and remove other members.
pub(crate) fn may_change_membership(
    meta: &GroupMetadata,
    members: &BTreeMap<String, Vec<(LeafNodeIndex, u32)>>,
    handle: &str,
) -> bool {
    meta.membership == MembershipPolicy::Anyone as i32
        || effective_admins(meta, members).contains(handle)
}

fn handle_at(group: &MlsGroup, index: LeafNodeIndex) -> Option<DeviceAddr> {
    group
        .member_at(index)
        .and_then(|m| parse_credential(&m.credential).ok())
}

/// One change a commit makes: kind, who did it, the handles concerned, the new title.
pub(crate) type Change = (GroupEventKind, String, Vec<String>, Option<String>);

/// The changes a commit makes, and whether they are allowed. `committer` is the
/// commit's sender (for an external commit: the joiner). `Err` names the violation.
pub(crate) fn authorize_commit(
    group: &MlsGroup,
    staged: &StagedCommit,
    committer: &DeviceAddr,
    external: bool,
) -> Result<Vec<Change>, String> {
    let before_meta = match metadata_of(group.extensions()) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => return Err("not a group chat".into()),
    };
    let after_meta = match metadata_of(staged.group_context().extensions()) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => return Err("the commit drops the group metadata".into()),
    };
    let before = member_map(group);
    let may_manage = may_change_membership(&before_meta, &before, &committer.handle);
    let admins_before = effective_admins(&before_meta, &before);

    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::Add(_)
            | Proposal::Remove(_)
            | Proposal::Update(_)
            | Proposal::GroupContextExtensions(_) => {}
            Proposal::ExternalInit(_) if external => {}
            other => {
                return Err(format!(
                    "proposal type {:?} is not allowed",
                    other.proposal_type()
                ));
            }
        }
    }
    let mut added: BTreeSet<String> = BTreeSet::new();
    for add in staged.add_proposals() {
        let addr = parse_credential(add.add_proposal().key_package().leaf_node().credential())?;
        let own_device = addr.handle == committer.handle;
        if !own_device && !may_manage {
            return Err(format!(
                "{} may not add members (not an admin)",
                committer.handle
            ));
        }
        if !before.contains_key(&addr.handle) {
            added.insert(addr.handle);
        }
    }
    let mut removed_devices: Vec<(String, String)> = Vec::new(); // (removed, proposer)
    let mut external_resync = false;
    for rem in staged.remove_proposals() {
        let index = rem.remove_proposal().removed();
        let removed = handle_at(group, index)
            .ok_or_else(|| "a remove proposal names an unknown leaf".to_string())?;
        let proposer = match rem.sender() {
            Sender::Member(i) => {
                handle_at(group, *i).ok_or_else(|| "a proposal from an unknown leaf".to_string())?
            }
            Sender::NewMemberCommit => committer.clone(),
            _ => return Err("a remove proposal from outside the group".into()),
        };
        if external && removed == *committer {
            external_resync = true;
        }
        let proposer_admin = may_change_membership(&before_meta, &before, &proposer.handle);
        if removed.handle != proposer.handle && !proposer_admin {
            return Err(format!(
                "{} may not remove {} (not an admin)",
                proposer.handle, removed.handle
            ));
        }
        removed_devices.push((removed.handle, proposer.handle));
    }
    // An external commit rejoins the committer's own leaf (its state broke), or brings
    // in a new device of a member account (restored from a backup): never a stranger.
    if external && !external_resync && !before.contains_key(&committer.handle) {
        return Err(
            "an external commit is accepted only from a device of a member (to rejoin)".into(),
        );
    }
    if before_meta.recovery_key != after_meta.recovery_key {
        return Err("the commit changes the group's recovery key".into());
    }
    if before_meta != after_meta && !admins_before.contains(&committer.handle) {
        return Err(format!(
            "{} may not change the group's info (not an admin)",
            committer.handle
        ));
    }

    // What changed, as events.
    let mut after_handles: HashSet<String> = before.keys().cloned().collect();
    after_handles.extend(added.iter().cloned());
    let mut gone: BTreeMap<String, String> = BTreeMap::new();
    for (removed, proposer) in &removed_devices {
        gone.insert(removed.clone(), proposer.clone());
    }
    // A handle is gone only if every one of its devices is removed.
    let mut events = Vec::new();
    let removed_leaves: HashSet<u32> = staged
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    let mut removed_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut left: Vec<String> = Vec::new();
    for (handle, proposer) in gone {
        let all_gone = before.get(&handle).is_some_and(|leaves| {
            leaves
                .iter()
                .all(|(i, _)| removed_leaves.contains(&i.u32()))
        });
        let readded = staged.add_proposals().any(|a| {
            parse_credential(a.add_proposal().key_package().leaf_node().credential())
                .is_ok_and(|x| x.handle == handle)
        });
        if !all_gone || readded || (external && handle == committer.handle) {
            continue;
        }
        after_handles.remove(&handle);
        if proposer == handle {
            left.push(handle);
        } else {
            removed_by.entry(proposer).or_default().push(handle);
        }
    }
    if !added.is_empty() {
        events.push((
            GroupEventKind::Added,
            committer.handle.clone(),
            added.into_iter().collect(),
            None,
        ));
    }
    for (by, handles) in removed_by {
        events.push((GroupEventKind::Removed, by, handles, None));
    }
    for handle in left {
        events.push((GroupEventKind::Left, handle.clone(), vec![handle], None));
    }
    if before_meta.title != after_meta.title {
        events.push((
            GroupEventKind::Renamed,
            committer.handle.clone(),
            vec![],
            Some(after_meta.title.clone()),
        ));
    }
    let a0: BTreeSet<&String> = before_meta.admins.iter().collect();
    let a1: BTreeSet<&String> = after_meta.admins.iter().collect();
    let promoted: Vec<String> = a1.difference(&a0).map(|s| (*s).clone()).collect();
    let demoted: Vec<String> = a0
        .difference(&a1)
        .filter(|h| after_handles.contains(**h))
        .map(|s| (*s).clone())
        .collect();
    if !promoted.is_empty() {
        events.push((
            GroupEventKind::Promoted,
            committer.handle.clone(),
            promoted,
            None,
        ));
    }
    if !demoted.is_empty() {
        events.push((
            GroupEventKind::Demoted,
            committer.handle.clone(),
            demoted,
            None,
        ));
    }
    Ok(events)
}

/// A unique local conversation name for `title`: `#TITLE`, else `#TITLE~2`, `~3`...
pub(crate) fn unique_name(
    conn: &Connection,
    title: &str,
    except_group: Option<&[u8]>,
) -> Result<String, E2eError> {
    let base = format!("#{title}");
    for n in 1u32.. {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}~{n}")
        };
        let owner: Option<Option<Vec<u8>>> = conn
            .query_row(
                "SELECT (SELECT group_id FROM group_chats WHERE conversation = c.peer)
                 FROM conversations c WHERE c.peer = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        match owner {
            None => return Ok(name),
            Some(Some(g)) if Some(g.as_slice()) == except_group => return Ok(name),
            Some(_) => {}
        }
    }
    Err(E2eError::Protocol("no free conversation name".into()))
}

/// Renames a group chat's conversation everywhere it is referenced.
pub(crate) fn rename_conversation(
    conn: &Connection,
    group_id: &[u8],
    title: &str,
) -> Result<String, E2eError> {
    let old: String = conn.query_row(
        "SELECT conversation FROM group_chats WHERE group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    let new = unique_name(conn, title, Some(group_id))?;
    if new == old {
        return Ok(new);
    }
    for sql in [
        "UPDATE conversations SET peer = ?2 WHERE peer = ?1",
        "UPDATE groups SET conversation = ?2 WHERE conversation = ?1",
        "UPDATE messages SET conversation = ?2 WHERE conversation = ?1",
        "UPDATE outbox SET conversation = ?2 WHERE conversation = ?1",
        "UPDATE failures SET conversation = ?2 WHERE conversation = ?1",
        "UPDATE group_chats SET conversation = ?2 WHERE conversation = ?1",
    ] {
        conn.execute(sql, params![old, new])?;
    }
    Ok(new)
}

/// Stores a group event in the conversation's timeline and returns it.
#[allow(clippy::too_many_arguments)] // one timeline row's columns
pub(crate) fn record_event(
    conn: &Connection,
    conversation: &str,
    group_id: &[u8],
    kind: GroupEventKind,
    by: &str,
    handles: Vec<String>,
    title: Option<String>,
    outgoing: bool,
    now_ms: u64,
) -> Result<GroupEvent, E2eError> {
    let body = serde_json::json!({
        "event": kind.as_str(),
        "handles": handles,
        "title": title,
    })
    .to_string();
    let id = crate::profile::new_message_id(now_ms);
    conn.execute(
        "INSERT INTO messages (id, conversation, sender, sender_device, group_id, sent_at_ms,
             received_at_ms, body, outgoing, state, kind)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5, ?6, ?7, ?8, 1)",
        params![
            &id[..],
            conversation,
            by,
            group_id,
            to_sql_u64(now_ms)?,
            body,
            outgoing,
            if outgoing {
                crate::MessageState::Sent.to_i64()
            } else {
                crate::MessageState::Received.to_i64()
            }
        ],
    )?;
    Ok(GroupEvent {
        conversation: conversation.to_string(),
        kind,
        by: by.to_string(),
        handles,
        title,
        at_ms: now_ms,
    })
}

/// Parses a stored group event row.
pub(crate) fn parse_event(
    conversation: String,
    by: String,
    body: &str,
    at_ms: u64,
) -> Option<GroupEvent> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let kind = GroupEventKind::from_str(v.get("event")?.as_str()?)?;
    let handles = v
        .get("handles")
        .and_then(|h| h.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let title = v.get("title").and_then(|t| t.as_str()).map(str::to_string);
    Some(GroupEvent {
        conversation,
        kind,
        by,
        handles,
        title,
        at_ms,
    })
}

/// Whether `conversation` names a group chat (`#...`).
pub fn is_group_name(conversation: &str) -> bool {
    conversation.starts_with('#')
}
