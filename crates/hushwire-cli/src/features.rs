//! Conversation features on the command line: `read`, `react`, `reply`, `edit`,
//! `delete`, `view`, `timer`, `typing`, `presence`, `requests`, `accept`, `decline`,
//! `block`, `unblock`, `settings`; and how their events print in `receive` and
//! `history`.
//!
//! Message ids are printed and taken as hyphenated UUIDs (the 16-byte content id), the
//! same string `send` prints, `receive --json` and `history --json` show as `"id"`, and
//! receipts, reactions, edits and deletes name as `"message_id"`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use hushwire_client::{Client, ClientError, Event, MessageState, StoredMessage};
use hushwire_e2e::{DeleteScope, PresenceShare, Reaction, Receipt, ReceiptStatus};
use serde_json::{Value, json};

use crate::commands::{NETWORK_TIMEOUT, open_client, open_registered};
use crate::output::{human_time, print_line, rfc3339};
use crate::user_error;

/// `settings …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SettingsCommand {
    /// Send read receipts (`on`, the default) or not (`off`: then you see none either).
    ReadReceipts {
        /// on or off.
        #[arg(value_enum)]
        value: OnOff,
    },
    /// Who sees when you are online and your last seen (default: contacts).
    Presence {
        /// everyone, contacts or nobody.
        #[arg(value_enum)]
        value: ShareArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShareArg {
    /// Your 1:1 contacts and the members of your group chats.
    Everyone,
    /// Your 1:1 contacts (not message requests).
    Contacts,
    /// Nobody (and you see nobody's).
    Nobody,
}

impl From<ShareArg> for PresenceShare {
    fn from(s: ShareArg) -> Self {
        match s {
            ShareArg::Everyone => Self::Everyone,
            ShareArg::Contacts => Self::Contacts,
            ShareArg::Nobody => Self::Nobody,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `5s`, `30m`, `1h`, `7d`, `2w`, `off` → milliseconds (0: off).
pub(crate) fn parse_timer(text: &str) -> anyhow::Result<u64> {
    hushwire_service::parse_timer(text).map_err(user_error)
}

/// A timer as the user writes it: `5s`, `1h`, `7d`, `off`.
pub(crate) fn timer_text(ms: u64) -> String {
    hushwire_service::timer_text(ms)
}

/// E2E errors the user caused (a wrong id, not the author...) exit with 1.
fn user_facing(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::E2e(
            hushwire_e2e::E2eError::Protocol(msg) | hushwire_e2e::E2eError::NotAuthorized(msg),
        ) => user_error(msg),
        other => other.into(),
    }
}

fn local<T>(r: Result<T, hushwire_e2e::E2eError>) -> anyhow::Result<T> {
    r.map_err(|e| user_facing(e.into()))
}

/// Sends what the command queued (and any earlier queue), like `send`: exit 3 when the
/// server is unreachable (it stays queued).
async fn flush(mut client: Client) -> anyhow::Result<()> {
    let result = client.flush_outbox(NETWORK_TIMEOUT, &mut |_| {}).await;
    let _ = client.close().await;
    result.map_err(|e| {
        if e.is_network() {
            eprintln!("warning: queued, not sent yet: {e}; `hushwire sync` retries");
        }
        anyhow::Error::new(e)
    })
}

async fn with_client(
    dir: &Path,
    f: impl FnOnce(&mut Client) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    client.set_defer_deliveries(true);
    let printed = f(&mut client)?;
    let flushed = flush(client).await;
    if let Some(line) = printed {
        print_line(&line)?;
    }
    flushed
}

pub(crate) async fn read(dir: &Path, conversation: &str) -> anyhow::Result<()> {
    with_client(dir, |c| {
        let n = local(c.profile_mut().mark_read(conversation, now_ms()))?;
        eprintln!("{n} message{} marked read", if n == 1 { "" } else { "s" });
        Ok(None)
    })
    .await
}

pub(crate) async fn react(dir: &Path, id: &str, emoji: &str) -> anyhow::Result<()> {
    with_client(dir, |c| {
        local(c.profile_mut().react(id, emoji, now_ms()))?;
        Ok(None)
    })
    .await
}

pub(crate) async fn reply(dir: &Path, id: &str, text: &str) -> anyhow::Result<()> {
    let text = crate::commands::read_text(text)?;
    with_client(dir, |c| {
        let new = local(c.profile_mut().queue_reply(id, &text, now_ms()))?;
        Ok(Some(new))
    })
    .await
}

pub(crate) async fn edit(dir: &Path, id: &str, text: &str) -> anyhow::Result<()> {
    let text = crate::commands::read_text(text)?;
    with_client(dir, |c| {
        local(c.profile_mut().edit(id, &text, now_ms()))?;
        Ok(None)
    })
    .await
}

pub(crate) async fn delete(dir: &Path, id: &str) -> anyhow::Result<()> {
    with_client(dir, |c| {
        let scope = local(c.profile_mut().delete_message(id, now_ms()))?;
        eprintln!(
            "{}",
            match scope {
                DeleteScope::Everyone => "deleted for everyone",
                DeleteScope::Unsent => "deleted (it had not been sent)",
                DeleteScope::ForMe => "deleted on this device (it is someone else's message)",
            }
        );
        Ok(None)
    })
    .await
}

/// `view ID`: shows a view-once message once. A file is downloaded and decrypted into
/// `{profile}/media/.view-once/`, its path printed, and deleted when the user presses
/// Enter (on a terminal), after `keep_secs`, or on Ctrl-C; files left there by an
/// interrupted view are deleted first.
pub(crate) async fn view(dir: &Path, id: &str, json: bool, keep_secs: u64) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    client.set_defer_deliveries(true);
    let view_dir = dir.join("media").join(".view-once");
    remove_view_once_files(&view_dir);
    let (m, file) = client
        .open_view_once(id, &view_dir)
        .await
        .map_err(user_facing)?;
    print_line(&if json {
        let mut v = message_value(&m);
        v["text"] = json!(m.text);
        if let Some(path) = &file {
            v["file"] = json!(path.display().to_string());
        }
        v.to_string()
    } else {
        let mut line = format!("[{}] {}: {}", human_time(m.sent_at_ms), m.from, m.text);
        if let Some(path) = &file {
            line.push_str(&format!("\nfile: {}", path.display()));
        }
        line
    })?;
    // The viewed receipt goes out while the user looks.
    let flushed = flush(client).await;
    if let Some(path) = file {
        use std::io::IsTerminal as _;
        let keep = Duration::from_secs(keep_secs);
        if std::io::stdin().is_terminal() {
            eprintln!("(view once: the file is deleted when you press Enter, or in {keep_secs} s)");
            let enter = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            });
            tokio::select! {
                _ = enter => {}
                _ = tokio::time::sleep(keep) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(keep) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: could not delete {}: {e}", path.display());
        }
    }
    eprintln!("(view once: it is gone from this device now)");
    flushed
}

/// Deletes what an interrupted `view` left in `dir`.
fn remove_view_once_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}

pub(crate) async fn timer(dir: &Path, conversation: &str, value: &str) -> anyhow::Result<()> {
    let ms = parse_timer(value)?;
    with_client(dir, |c| {
        local(c.profile_mut().set_timer(conversation, ms, now_ms()))?;
        eprintln!(
            "disappearing messages in {conversation}: {}",
            timer_text(ms)
        );
        Ok(None)
    })
    .await
}

pub(crate) async fn typing(dir: &Path, conversation: &str, stop: bool) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    client.set_defer_deliveries(true);
    let sent = client
        .send_typing(conversation, !stop, NETWORK_TIMEOUT)
        .await
        .map_err(user_facing);
    let _ = client.close().await;
    if !sent? {
        eprintln!("nothing sent (no conversation yet, or a message request)");
    }
    Ok(())
}

pub(crate) async fn presence(
    dir: &Path,
    handle: &str,
    wait_secs: u64,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    if !client.has_conversation(handle)? {
        return Err(user_error(format!("no conversation with {handle}")));
    }
    let mut lines = Vec::new();
    let result = client
        .request_presence(
            handle,
            Duration::from_secs(wait_secs),
            NETWORK_TIMEOUT,
            &mut |e| {
                if let Some(l) = event_line(&e, json) {
                    lines.push(l);
                }
            },
        )
        .await;
    let _ = client.close().await;
    for l in lines {
        print_line(&l)?;
    }
    let info = result.map_err(user_facing)?;
    print_line(&if json {
        json!({
            "type": "presence",
            "from": handle,
            "online": info.as_ref().map(|p| p.online),
            "last_seen": info.as_ref().and_then(|p| p.last_seen_ms).map(rfc3339),
            "known": info.is_some(),
        })
        .to_string()
    } else {
        match info {
            Some(p) if p.online => format!("{handle}: online"),
            Some(p) => match p.last_seen_ms {
                Some(t) => format!("{handle}: last seen {}", human_time(t)),
                None => format!("{handle}: offline"),
            },
            None => format!("{handle}: unknown (not shared with you, or not online)"),
        }
    })
}

pub(crate) fn requests(dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut profile = open_registered(dir)?;
    profile.sweep_expired(now_ms())?;
    for r in profile.requests()? {
        print_line(&if json {
            json!({
                "type": "request",
                "from": r.from,
                "conversation": r.from,
                "messages": r.messages,
                "first_at": rfc3339(r.first_at_ms),
                "last_text": r.last_text,
            })
            .to_string()
        } else {
            format!(
                "{}  {} message{}, since {}: {}",
                r.from,
                r.messages,
                if r.messages == 1 { "" } else { "s" },
                human_time(r.first_at_ms),
                r.last_text
            )
        })?;
    }
    Ok(())
}

pub(crate) async fn accept(dir: &Path, handle: &str) -> anyhow::Result<()> {
    with_client(dir, |c| {
        local(c.profile_mut().accept(handle, now_ms()))?;
        eprintln!("{handle} is a contact now");
        Ok(None)
    })
    .await
}

pub(crate) fn decline(dir: &Path, handle: &str) -> anyhow::Result<()> {
    let mut profile = open_registered(dir)?;
    local(profile.decline(handle))?;
    eprintln!("the request from {handle} was deleted");
    Ok(())
}

/// `report HANDLE`: block and report.
pub(crate) async fn report(
    dir: &Path,
    handle: &str,
    reason: &str,
    messages: usize,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    client.set_defer_deliveries(true);
    let id = client
        .report(handle, reason, messages)
        .await
        .map_err(user_facing)?;
    eprintln!(
        "reported {handle} to the server's operator (report {id}, with up to {messages} of \
         their latest messages); {handle} is blocked"
    );
    flush(client).await
}

pub(crate) async fn block(dir: &Path, handle: &str, blocked: bool) -> anyhow::Result<()> {
    hushwire_proto::identity::validate_handle(handle).map_err(ClientError::from)?;
    with_client(dir, |c| {
        if blocked {
            local(c.profile_mut().block(handle, now_ms()))?;
            eprintln!("{handle} is blocked");
        } else {
            local(c.profile_mut().unblock(handle))?;
            eprintln!("{handle} is unblocked");
        }
        Ok(None)
    })
    .await
}

pub(crate) fn settings(dir: &Path, command: Option<SettingsCommand>) -> anyhow::Result<()> {
    let mut profile = open_registered(dir)?;
    match command {
        Some(SettingsCommand::ReadReceipts { value }) => {
            profile.set_read_receipts(value == OnOff::On)?;
        }
        Some(SettingsCommand::Presence { value }) => {
            profile.set_presence_share(value.into())?;
        }
        None => {}
    }
    print_line(&format!(
        "read-receipts: {}",
        if profile.read_receipts()? {
            "on"
        } else {
            "off"
        }
    ))?;
    print_line(&format!("presence: {}", profile.presence_share()?.as_str()))?;
    print_line(&format!("blocked: {}", profile.blocked()?.join(", ")))?;
    Ok(())
}

// ------------------------------------------------------------------ rendering

/// The fields of a message every JSON line shows.
pub(crate) fn message_value(m: &StoredMessage) -> Value {
    let mut v = json!({
        "type": "message",
        "id": m.id,
        "conversation": m.conversation,
        "from": m.from,
        "sent_at": rfc3339(m.sent_at_ms),
        "text": m.text,
    });
    add_message_extras(&mut v, m);
    v
}

/// Adds `reply_to`, `view_once`, `expires_at` and `edited_at` when they apply.
pub(crate) fn add_message_extras(v: &mut Value, m: &StoredMessage) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if let Some(r) = &m.reply_to {
        obj.insert("reply_to".into(), json!(r));
    }
    if m.view_once {
        obj.insert("view_once".into(), json!(true));
        obj.insert("text".into(), Value::Null);
    }
    if let Some(t) = m.expires_at_ms {
        obj.insert("expires_at".into(), json!(rfc3339(t)));
    }
    if let Some(t) = m.edited_at_ms {
        obj.insert("edited_at".into(), json!(rfc3339(t)));
    }
}

/// `[time] bob: text` with a reply marker, `(edited)`, `(view once)`, `(disappears …)`.
pub(crate) fn decorate_line(line: String, m: &StoredMessage) -> String {
    let mut out = line;
    if let Some(r) = &m.reply_to {
        out.push_str(&format!("  ↪ {r}"));
    }
    if m.view_once {
        out.push_str(&format!("(view once: hushwire view {})", m.id));
    }
    if m.edited_at_ms.is_some() {
        out.push_str("  (edited)");
    }
    if let Some(t) = m.expires_at_ms {
        out.push_str(&format!("  (disappears {})", human_time(t)));
    }
    out
}

/// The overall status of an own message: `queued`, `failed`, `sent`, `delivered`,
/// `read` (delivered/read once every other member has).
pub(crate) fn own_status(m: &StoredMessage, receipts: &[Receipt], members: usize) -> &'static str {
    match m.state {
        MessageState::Queued => return "queued",
        MessageState::Failed => return "failed",
        MessageState::Received => return "received",
        MessageState::Sent => {}
    }
    let members = members.max(1);
    let at_least = |s: ReceiptStatus| receipts.iter().filter(|r| r.status >= s).count();
    if at_least(ReceiptStatus::Read) >= members {
        "read"
    } else if at_least(ReceiptStatus::Delivered) >= members {
        "delivered"
    } else {
        "sent"
    }
}

/// A history line's JSON with the message's current state: reactions, and for own
/// messages the overall status and each member's receipt.
pub(crate) fn history_json(
    m: &StoredMessage,
    reactions: &HashMap<String, Vec<Reaction>>,
    receipts: &HashMap<String, Vec<Receipt>>,
    members: usize,
) -> String {
    let mut v = message_value(m);
    if let Some(obj) = v.as_object_mut() {
        let rs = reactions.get(&m.id).cloned().unwrap_or_default();
        obj.insert(
            "reactions".into(),
            Value::Array(
                rs.iter()
                    .map(|r| json!({"from": r.from, "emoji": r.emoji}))
                    .collect(),
            ),
        );
        if m.outgoing {
            let rc = receipts.get(&m.id).cloned().unwrap_or_default();
            obj.insert("status".into(), json!(own_status(m, &rc, members)));
            obj.insert(
                "receipts".into(),
                Value::Array(
                    rc.iter()
                        .map(|r| {
                            json!({"member": r.member, "status": r.status.as_str(),
                                   "at": rfc3339(r.at_ms)})
                        })
                        .collect(),
                ),
            );
        }
    }
    v.to_string()
}

/// A history line for people: reactions and ticks (✓ sent, ✓✓ delivered, read).
pub(crate) fn history_suffix(
    m: &StoredMessage,
    reactions: &HashMap<String, Vec<Reaction>>,
    receipts: &HashMap<String, Vec<Receipt>>,
    members: usize,
) -> String {
    let mut out = String::new();
    if let Some(rs) = reactions.get(&m.id)
        && !rs.is_empty()
    {
        let list: Vec<String> = rs
            .iter()
            .map(|r| format!("{} {}", r.emoji, r.from))
            .collect();
        out.push_str(&format!("  [{}]", list.join(", ")));
    }
    if m.outgoing && m.state == MessageState::Sent {
        let rc = receipts.get(&m.id).cloned().unwrap_or_default();
        out.push_str(match own_status(m, &rc, members) {
            "read" => "  ✓✓ read",
            "delivered" => "  ✓✓",
            _ => "  ✓",
        });
    }
    out
}

/// How an event of this module prints in `receive` (`None`: nothing on stdout).
pub(crate) fn event_line(event: &Event, json: bool) -> Option<String> {
    let now = now_ms();
    Some(match event {
        Event::Request { conversation, from } => {
            if json {
                json!({"type": "request", "conversation": conversation, "from": from}).to_string()
            } else {
                format!(
                    "message request from {from}: `hushwire accept {from}`, `hushwire decline \
                     {from}` or `hushwire block {from}`"
                )
            }
        }
        Event::Receipt {
            conversation,
            message_id,
            from,
            status,
        } => {
            if json {
                json!({"type": "receipt", "status": status.as_str(), "message_id": message_id,
                       "from": from, "conversation": conversation})
                .to_string()
            } else {
                format!(
                    "[{}] {conversation}: {from} {} {message_id}",
                    human_time(now),
                    status.as_str()
                )
            }
        }
        Event::Reaction {
            conversation,
            message_id,
            from,
            emoji,
        } => {
            if json {
                json!({"type": "reaction", "message_id": message_id, "emoji": emoji,
                       "from": from, "conversation": conversation})
                .to_string()
            } else if emoji.is_empty() {
                format!(
                    "[{}] {conversation}: {from} removed a reaction to {message_id}",
                    human_time(now)
                )
            } else {
                format!(
                    "[{}] {conversation}: {from} reacted {emoji} to {message_id}",
                    human_time(now)
                )
            }
        }
        Event::Edited {
            conversation,
            message_id,
            from,
            text,
        } => {
            if json {
                json!({"type": "edit", "message_id": message_id, "text": text, "from": from,
                       "conversation": conversation})
                .to_string()
            } else {
                format!("[{}] {from} edited {message_id}: {text}", human_time(now))
            }
        }
        Event::Deleted {
            conversation,
            message_id,
            from,
        } => {
            if json {
                json!({"type": "delete", "message_id": message_id, "from": from,
                       "conversation": conversation})
                .to_string()
            } else {
                format!(
                    "[{}] {conversation}: {from} deleted {message_id}",
                    human_time(now)
                )
            }
        }
        Event::Typing {
            conversation,
            from,
            typing,
        } => {
            if json {
                json!({"type": "typing", "conversation": conversation, "from": from,
                       "typing": typing})
                .to_string()
            } else if *typing {
                format!("{from} is typing… ({conversation})")
            } else {
                format!("{from} stopped typing ({conversation})")
            }
        }
        Event::Presence {
            from,
            online,
            last_seen_ms,
        } => {
            if json {
                json!({"type": "presence", "from": from, "online": online,
                       "last_seen": last_seen_ms.map(rfc3339)})
                .to_string()
            } else if *online {
                format!("{from} is online")
            } else {
                match last_seen_ms {
                    Some(t) => format!("{from} was last seen {}", human_time(*t)),
                    None => format!("{from} is offline"),
                }
            }
        }
        Event::TimerChanged {
            conversation,
            by,
            timer_ms,
        } => {
            if json {
                json!({"type": "timer", "conversation": conversation, "by": by,
                       "timer_ms": timer_ms, "timer": timer_text(*timer_ms)})
                .to_string()
            } else {
                format!(
                    "[{}] {conversation}: {by} set disappearing messages to {}",
                    human_time(now),
                    timer_text(*timer_ms)
                )
            }
        }
        Event::DevicesChanged(news) => crate::device::news_line(news, json),
        Event::IdentityChanged { handle } => {
            if json {
                json!({"type": "identity_changed", "conversation": handle, "handle": handle})
                    .to_string()
            } else {
                format!(
                    "[{}] {handle}: the account key changed. Sending to {handle} is refused \
                     until you compare safety numbers (`hushwire verify {handle}`) and run \
                     `hushwire trust {handle}`",
                    human_time(now)
                )
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_parse_and_print() {
        assert_eq!(parse_timer("5s").ok(), Some(5_000));
        assert_eq!(parse_timer("1h").ok(), Some(3_600_000));
        assert_eq!(parse_timer("7d").ok(), Some(7 * 86_400_000));
        assert_eq!(parse_timer("off").ok(), Some(0));
        assert_eq!(parse_timer("90d").ok(), Some(90 * 86_400_000));
        assert!(parse_timer("91d").is_err());
        assert!(parse_timer("1s").is_err());
        assert!(parse_timer("5x").is_err());
        assert!(parse_timer("").is_err());
        assert!(parse_timer("h").is_err());
        for t in ["5s", "30m", "1h", "7d", "2w", "off", "90s"] {
            assert_eq!(timer_text(parse_timer(t).unwrap_or(1)), t);
        }
    }
}
