//! `hushwire group …`: group chats (create, add, remove, leave, promote, demote, rename,
//! reset, members). A group is the conversation `#TITLE` (`#TITLE~2` when a title is taken
//! locally); `send`, `history` and `receive` take and show it like a handle.
//!
//! Every changing command queues the operation in the profile's outbox (with the local
//! admin check), then sends it and waits until the server ordered it. If the server is
//! unreachable the operation stays queued (exit 3) and the next command that connects
//! sends it.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use hushwire_client::{Client, ClientError, Event};
use hushwire_e2e::{E2eError, GroupDetails};
use serde_json::json;

use crate::commands::{NETWORK_TIMEOUT, open_client};
use crate::output::{print_line, suite_name};
use crate::{SuiteArg, user_error};

/// The `group` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group chat; prints its conversation name (`#TITLE`). You are its admin.
    Create {
        /// The title (1-100 characters; never seen by the server).
        title: String,
        /// The other members' handles, comma-separated.
        #[arg(
            long,
            value_name = "HANDLE,...",
            value_delimiter = ',',
            required = true
        )]
        members: Vec<String>,
        /// Ciphersuite. Default: X-Wing (post-quantum) for groups under 128 members,
        /// classic above (see BENCHMARKS.md, "Groups").
        #[arg(long, value_enum)]
        suite: Option<SuiteArg>,
    },
    /// Add members (admins only).
    Add {
        /// The group, `#TITLE`.
        group: String,
        /// Handles to add.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Remove members (admins only); they cannot read anything sent afterwards.
    Remove {
        /// The group, `#TITLE`.
        group: String,
        /// Handles to remove.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Leave a group. Another member's client commits it; the chat is read-only for you
    /// from now on.
    Leave {
        /// The group, `#TITLE`.
        group: String,
    },
    /// Make a member an admin (admins only).
    Promote {
        /// The group, `#TITLE`.
        group: String,
        /// The member's handle.
        handle: String,
    },
    /// Take a member's admin rights away (admins only).
    Demote {
        /// The group, `#TITLE`.
        group: String,
        /// The member's handle.
        handle: String,
    },
    /// Rename a group (admins only); its conversation becomes `#NEW` everywhere.
    Rename {
        /// The group, `#TITLE`.
        group: String,
        /// The new title.
        title: String,
    },
    /// Rebuild a group as a new end-to-end encrypted group with the same title, admins
    /// and members, keeping the chat history (admins only). The way out when this device
    /// refused a change the group's rules do not allow (the group "diverged"): the
    /// member who made it is left out.
    Reset {
        /// The group, `#TITLE`.
        group: String,
    },
    /// List a group's members and admins (from the local store; `sync` first to be
    /// current).
    Members {
        /// The group, `#TITLE`.
        group: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn check_group_name(name: &str) -> anyhow::Result<()> {
    if !hushwire_e2e::group::is_group_name(name) {
        return Err(user_error(format!(
            "{name:?} is not a group; group names start with '#' (quote them in the shell: '#TITLE')"
        )));
    }
    Ok(())
}

/// Local refusals (not an admin, not a member, bad title) are the user's error.
fn local(e: E2eError) -> anyhow::Error {
    match e {
        E2eError::NotAuthorized(msg) | E2eError::Protocol(msg) => user_error(msg),
        E2eError::UnknownConversation(c) => user_error(format!("no group {c}")),
        other => other.into(),
    }
}

pub(crate) async fn run(dir: &Path, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Members { group, json } => members(dir, &group, json),
        GroupCommand::Create {
            title,
            members,
            suite,
        } => {
            let mut client = open_client(dir)?;
            let me = client.identity()?.handle.clone();
            let mut handles = Vec::new();
            for h in members.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
                hushwire_proto::identity::validate_handle(h).map_err(ClientError::from)?;
                if h != me && !handles.iter().any(|x| x == h) {
                    handles.push(h.to_string());
                }
            }
            if handles.is_empty() {
                return Err(user_error("a group needs at least one other member"));
            }
            let name = client
                .profile_mut()
                .create_group(
                    &title,
                    &handles,
                    suite.map(Into::into),
                    hushwire_client::api::unix_ms(),
                )
                .map_err(local)?;
            finish(client, &name, true).await
        }
        other => {
            let mut client = open_client(dir)?;
            // Apply what the group did meanwhile, so the admin check and the change use
            // the current state. Messages stay on the server for `receive`.
            let name = match &other {
                GroupCommand::Add { group, .. }
                | GroupCommand::Remove { group, .. }
                | GroupCommand::Leave { group }
                | GroupCommand::Promote { group, .. }
                | GroupCommand::Demote { group, .. }
                | GroupCommand::Rename { group, .. }
                | GroupCommand::Reset { group } => group.clone(),
                GroupCommand::Create { .. } | GroupCommand::Members { .. } => String::new(),
            };
            check_group_name(&name)?;
            let now = hushwire_client::api::unix_ms();
            let p = client.profile_mut();
            match other {
                GroupCommand::Add { group, handles } => p.group_add(&group, &handles, now),
                GroupCommand::Remove { group, handles } => p.group_remove(&group, &handles, now),
                GroupCommand::Leave { group } => p.group_leave(&group, now),
                GroupCommand::Promote { group, handle } => {
                    p.group_set_admin(&group, &handle, true, now)
                }
                GroupCommand::Demote { group, handle } => {
                    p.group_set_admin(&group, &handle, false, now)
                }
                GroupCommand::Rename { group, title } => p.group_rename(&group, &title, now),
                GroupCommand::Reset { group } => p.group_reset(&group, now).map(|left_out| {
                    if !left_out.is_empty() {
                        eprintln!("{group}: leaving out {}", left_out.join(", "));
                    }
                }),
                GroupCommand::Create { .. } | GroupCommand::Members { .. } => Ok(()),
            }
            .map_err(local)?;
            finish(client, &name, false).await
        }
    }
}

/// Sends the queued operation and reports failures the server or the profile reported.
async fn finish(mut client: Client, name: &str, print_name: bool) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let flushed = client
        .flush_outbox(NETWORK_TIMEOUT, &mut |e| match e {
            Event::GroupOperationFailed {
                conversation,
                reason,
            } => failures.push(format!("{conversation}: {reason}")),
            Event::SendFailed { id, reason } => {
                failures.push(format!("message {id}: {reason}"));
            }
            _ => {}
        })
        .await;
    let left = client.profile().outbox_len()?;
    let _ = client.close().await;
    if print_name {
        print_line(name)?;
    }
    for f in &failures {
        eprintln!("warning: {f}");
    }
    match flushed {
        Err(e) if left > 0 => {
            eprintln!(
                "warning: the change to {name} is queued but not sent: {e}\n\
                 it will be sent by the next `hushwire sync`"
            );
            Err(e.into())
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(()),
    }
}

fn members(dir: &Path, group: &str, json: bool) -> anyhow::Result<()> {
    check_group_name(group)?;
    let profile = hushwire_client::open_profile(dir, &hushwire_client::Unlock::Auto)
        .with_context(|| format!("cannot open the profile in {}", dir.display()))?;
    if profile.identity().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    let d = profile.group_details(group).map_err(local)?;
    if json {
        print_line(&details_json(&d))?;
    } else {
        print_line(&format!(
            "{}  \"{}\", {} members, {}, epoch {}, {}{}",
            d.conversation,
            d.title,
            d.members.len(),
            suite_name(d.suite),
            d.epoch,
            d.state,
            if d.leaving { " (leaving)" } else { "" }
        ))?;
        for m in &d.members {
            print_line(&format!(
                "{}{}",
                m.handle,
                if m.admin { "  admin" } else { "" }
            ))?;
        }
    }
    Ok(())
}

/// `{"type":"group_members","conversation":…,"title":…,"members":[{"handle","admin","devices"}],…}`
fn details_json(d: &GroupDetails) -> String {
    json!({
        "type": "group_members",
        "conversation": d.conversation,
        "title": d.title,
        "description": d.description,
        "suite": suite_name(d.suite),
        "epoch": d.epoch,
        "state": d.state,
        "leaving": d.leaving,
        "admins_only": d.admins_only,
        "members": d.members.iter().map(|m| json!({
            "handle": m.handle,
            "admin": m.admin,
            "devices": m.devices,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}
