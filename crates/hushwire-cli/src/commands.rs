//! The client commands: register, send, receive, sync, history, conversations, whoami.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hushwire_client::{Client, ClientError, ClientOptions, Event, MessageState};
use hushwire_e2e::{Profile, TimelineItem};

use crate::output::{
    conversation_json, conversation_line, group_event_json, group_event_line, message_json,
    message_line, print_line,
};
use crate::user_error;

/// How long a command may spend on network work before giving up (3).
pub(crate) const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);

/// `--profile`, else the user data directory (`…/hushwire`).
pub(crate) fn profile_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    directories::ProjectDirs::from("", "", "hushwire")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| user_error("no home directory found; pass --profile DIR"))
}

pub(crate) fn open_client(dir: &Path) -> anyhow::Result<Client> {
    let profile = open_registered(dir)?;
    let mut client = Client::from_profile(profile, ClientOptions::default())?;
    // The profile's ways in: direct, relays, proxy (`hushwire relay …`, `--proxy`).
    client.set_routes(hushwire_client::RouteBook::load(dir)?)?;
    // Partial downloads and, by default, received files.
    client.set_media_dir(dir.join("media"));
    Ok(client)
}

pub(crate) fn open_registered(dir: &Path) -> anyhow::Result<Profile> {
    let profile = hushwire_client::open_profile(dir, &hushwire_client::Unlock::Auto)
        .with_context(|| format!("cannot open the profile in {}", dir.display()))?;
    if profile.identity().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    Ok(profile)
}

pub(crate) async fn register(
    dir: &Path,
    handle: &str,
    servers: &[String],
    pin: Option<&str>,
    invite: Option<&str>,
    suite: hushwire_e2e::Suite,
) -> anyhow::Result<()> {
    hushwire_proto::identity::validate_handle(handle).map_err(ClientError::from)?;
    // Unlocked (or, for a new profile, protected) once: a passphrase is asked once.
    let key = hushwire_client::profile_key(dir, &hushwire_client::Unlock::Auto)?;
    let options = ClientOptions {
        unlock: hushwire_client::Unlock::Key(key.clone()),
        ..ClientOptions::default()
    };
    let registered = hushwire_client::register_servers(dir, handle, servers, pin, invite, options)
        .await
        .map_err(|e| match e {
            // The pin is the user's input here.
            ClientError::PinMismatch { .. } | ClientError::UntrustedCertificate(_) => {
                user_error(format!("cannot register: {e}"))
            }
            other => anyhow::Error::new(other).context("registration failed"),
        })?;
    if let Some(e) = &registered.key_package_error {
        eprintln!(
            "warning: registered, but uploading key packages failed ({e}); `hushwire sync` retries"
        );
    }
    Profile::open(dir, &key)?.set_default_suite(suite)?;
    let id = &registered.identity;
    let others = hushwire_client::RouteBook::load(dir)?.servers().count();
    print_line(&format!(
        "registered {} (device {}) on {}{}",
        id.handle,
        id.device_id,
        id.server_url,
        match others {
            0 => String::new(),
            1 => " (+1 more server)".to_string(),
            n => format!(" (+{n} more servers)"),
        }
    ))?;
    Ok(())
}

pub(crate) fn read_text(text: &str) -> anyhow::Result<String> {
    let text = if text == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .context("cannot read the message from stdin")?;
        if buf.ends_with('\n') {
            buf.pop();
            if buf.ends_with('\r') {
                buf.pop();
            }
        }
        buf
    } else {
        text.to_string()
    };
    if text.is_empty() {
        return Err(user_error("the message is empty"));
    }
    Ok(text)
}

pub(crate) async fn send(
    dir: &Path,
    peer: &str,
    text: &str,
    suite: Option<hushwire_e2e::Suite>,
    view_once: bool,
) -> anyhow::Result<()> {
    let text = read_text(text)?;
    let mut client = open_client(dir)?;
    let group = hushwire_e2e::group::is_group_name(peer);
    if group {
        if !client.has_conversation(peer)? {
            return Err(user_error(format!("no group {peer}")));
        }
    } else {
        hushwire_proto::identity::validate_handle(peer).map_err(ClientError::from)?;
    }
    if peer == client.identity()?.handle {
        return Err(user_error("you cannot send a message to yourself"));
    }
    // A first message to a handle: check it exists before queueing, so that a typo does
    // not sit at the head of the outbox. If the server is unreachable, queue anyway.
    if !group && !client.has_conversation(peer)? {
        match client.fetch_account(peer).await {
            Ok(_) => {}
            Err(e @ ClientError::UnknownHandle(_)) => return Err(e.into()),
            Err(e) if e.is_network() => {
                tracing::info!(error = %e, "cannot check the recipient now; queueing");
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A suite chosen for this send applies only if it starts the conversation.
    let restore = match suite {
        Some(s) if !client.has_conversation(peer)? => {
            let previous = client.profile().default_suite()?;
            client.profile_mut().set_default_suite(s)?;
            Some(previous)
        }
        _ => None,
    };
    let queued = if view_once {
        let now = hushwire_client::api::unix_ms();
        client
            .profile_mut()
            .queue_text_with(peer, &text, None, true, now)
            .map_err(ClientError::from)
    } else {
        client.queue_text(peer, &text)
    };
    if let Some(previous) = restore {
        client.profile_mut().set_default_suite(previous)?;
    }
    let id = queued.map_err(|e| match e {
        ClientError::E2e(hushwire_e2e::E2eError::Protocol(msg)) => user_error(msg),
        other => other.into(),
    })?;
    client.set_defer_deliveries(true);
    let flushed = client.flush_outbox(NETWORK_TIMEOUT, &mut |_| {}).await;
    let pending = client.profile().is_outbox_item_pending(&id)?;
    let state = client
        .profile()
        .history(peer)?
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.state);
    let _ = client.close().await;
    print_line(&id)?;
    match flushed {
        Err(e) if pending => {
            eprintln!(
                "warning: message {id} is queued but not sent: {e}\n\
                 it will be sent by the next `hushwire send` or `hushwire sync`"
            );
            Err(e.into())
        }
        _ if pending => Err(anyhow::anyhow!(
            "message {id} is still queued; run `hushwire sync` to retry"
        )),
        _ if state == Some(MessageState::Failed) => {
            Err(anyhow::anyhow!("the server rejected message {id}"))
        }
        // Sent; a later outbox item (queued earlier) may have failed, which the next
        // sync retries.
        _ => Ok(()),
    }
}

pub(crate) async fn receive(
    dir: &Path,
    json: bool,
    download_dir: Option<PathBuf>,
    wait_secs: u64,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    // Received files are saved as they arrive (and earlier pending ones first).
    let download_dir = download_dir.unwrap_or_else(|| dir.join("media"));
    client.set_auto_download(Some(download_dir));
    client.set_progress(crate::media::progress_bars());
    crate::media::resume_uploads(&mut client).await?;
    let mut print_err: Option<anyhow::Error> = None;
    let mut on_event = |event: Event| {
        let line = match event {
            Event::Message(m) => Some(if json {
                message_json(&m)
            } else {
                message_line(&m)
            }),
            Event::Undecryptable {
                conversation,
                reason,
            } => {
                eprintln!(
                    "warning: a message{} could not be decrypted: {reason}",
                    conversation
                        .map(|c| format!(" from {c}"))
                        .unwrap_or_default()
                );
                None
            }
            Event::SendFailed { id, reason } => {
                eprintln!("warning: the server rejected message {id}: {reason}");
                None
            }
            Event::Group(g) => Some(if json {
                group_event_json(&g)
            } else {
                group_event_line(&g)
            }),
            Event::RelayLink(m) => Some(if json {
                crate::relay::shared_link_json(&m)
            } else {
                crate::relay::shared_link_line(&m)
            }),
            Event::Attachment(m, info) => {
                if let Some(e) = &info.error {
                    eprintln!("warning: the file of message {} was not saved: {e}", m.id);
                }
                Some(if json {
                    crate::media::attachment_message_json(&m, &info)
                } else {
                    crate::media::attachment_line(&m, &info)
                })
            }
            Event::GroupOperationFailed {
                conversation,
                reason,
            } => {
                eprintln!("warning: a change to {conversation} failed: {reason}");
                None
            }
            // Receipts, reactions, edits, deletes, typing, presence, requests, timers.
            other => crate::features::event_line(&other, json),
        };
        if let Some(line) = line
            && print_err.is_none()
            && let Err(e) = print_line(&line)
        {
            print_err = Some(e);
        }
    };
    // SIGINT/SIGTERM end the wait early and cleanly: what is stored gets acknowledged.
    let wait = Duration::from_secs(wait_secs);
    let result = tokio::select! {
        r = client.receive(wait, NETWORK_TIMEOUT, &mut on_event) => Some(r),
        () = crate::serve::shutdown_signal() => None,
    };
    let _ = client.close().await;
    let Some(result) = result else {
        return Ok(());
    };
    if let Some(e) = print_err {
        return Err(e);
    }
    let report = result?;
    if let Some(e) = report.outbox_error {
        eprintln!("warning: queued messages not sent: {e}");
    }
    if let Some(e) = report.directory_error {
        eprintln!("WARNING: the key directory check of your own account failed: {e}");
    }
    Ok(())
}

pub(crate) async fn sync(dir: &Path) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    client.set_progress(crate::media::progress_bars());
    crate::media::resume_uploads(&mut client).await?;
    let result = client.sync(NETWORK_TIMEOUT, &mut |_| {}).await;
    let _ = client.close().await;
    let report = result?;
    if let Some(e) = report.outbox_error {
        return Err(anyhow::Error::new(e).context("queued messages not sent"));
    }
    if let Some(e) = report.directory_error {
        return Err(
            anyhow::Error::new(e).context("the key directory check of your own account failed")
        );
    }
    Ok(())
}

pub(crate) fn history(dir: &Path, peer: &str, json: bool) -> anyhow::Result<()> {
    let mut profile = open_registered(dir)?;
    let group = hushwire_e2e::group::is_group_name(peer);
    if !group {
        hushwire_proto::identity::validate_handle(peer).map_err(ClientError::from)?;
    }
    // Disappearing messages whose time is up are deleted, not shown.
    profile.sweep_expired(hushwire_client::api::unix_ms())?;
    let timeline = profile.timeline(peer)?;
    let reactions = profile.reactions(peer)?;
    let receipts = profile.receipts(peer)?;
    // Whose receipts make a message delivered / read: every other member.
    let members = if group {
        profile
            .group_details(peer)
            .map(|d| d.members.len().saturating_sub(1))
            .unwrap_or(1)
    } else {
        1
    };
    if timeline.is_empty() && !profile.conversations()?.iter().any(|c| c.name == peer) {
        return Err(user_error(format!("no conversation with {peer}")));
    }
    for item in &timeline {
        let m = match item {
            TimelineItem::Message(m) => m,
            TimelineItem::Group(g) => {
                print_line(&if json {
                    group_event_json(g)
                } else {
                    group_event_line(g)
                })?;
                continue;
            }
            TimelineItem::RelayLink(m) => {
                print_line(&if json {
                    crate::relay::shared_link_json(m)
                } else {
                    crate::relay::shared_link_line(m)
                })?;
                continue;
            }
            TimelineItem::Attachment(m, info) => {
                print_line(&if json {
                    crate::media::attachment_message_json(m, info)
                } else {
                    crate::media::attachment_line(m, info)
                })?;
                continue;
            }
        };
        let line = if json {
            crate::features::history_json(m, &reactions, &receipts, members)
        } else {
            let mark = match m.state {
                MessageState::Queued => "  (queued)",
                MessageState::Failed => "  (failed)",
                MessageState::Sent | MessageState::Received => "",
            };
            format!(
                "{}{mark}{}",
                message_line(m),
                crate::features::history_suffix(m, &reactions, &receipts, members)
            )
        };
        print_line(&line)?;
    }
    Ok(())
}

pub(crate) fn conversations(dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut profile = open_registered(dir)?;
    profile.sweep_expired(hushwire_client::api::unix_ms())?;
    for c in profile.conversations()? {
        // What a 1:1 contact last shared of their presence.
        let presence = if hushwire_e2e::group::is_group_name(&c.name) {
            None
        } else {
            profile.presence_of(&c.name)?
        };
        print_line(&if json {
            let mut v: serde_json::Value = serde_json::from_str(&conversation_json(&c))?;
            if let (Some(p), Some(obj)) = (presence, v.as_object_mut()) {
                obj.insert(
                    "presence".into(),
                    serde_json::json!({
                        "online": p.online,
                        "last_seen": p.last_seen_ms.map(crate::output::rfc3339),
                    }),
                );
            }
            v.to_string()
        } else {
            let seen = match presence {
                Some(p) if p.online => "  (online)".to_string(),
                Some(p) => p
                    .last_seen_ms
                    .map(|t| format!("  (last seen {})", crate::output::human_time(t)))
                    .unwrap_or_default(),
                None => String::new(),
            };
            format!("{}{seen}", conversation_line(&c))
        })?;
    }
    Ok(())
}

pub(crate) fn whoami(dir: &Path) -> anyhow::Result<()> {
    let profile = open_registered(dir)?;
    let id = profile.identity().ok_or(ClientError::NotRegistered)?;
    print_line(&format!("handle: {}", id.handle))?;
    print_line(&format!("device: {}", id.device_id))?;
    print_line(&format!("server: {}", id.server_url))?;
    if let Some(pin) = &id.pin {
        print_line(&format!("pin: {pin}"))?;
    }
    print_line(&format!("profile: {}", dir.display()))?;
    Ok(())
}
