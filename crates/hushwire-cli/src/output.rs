//! Rendering: human lines and JSON objects (one per line, signal-cli style).

use std::io::Write;

use hushwire_client::StoredMessage;
use hushwire_e2e::{ConversationSummary, GroupEvent, GroupEventKind};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

fn datetime(ms: u64) -> Option<OffsetDateTime> {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// `2026-11-27 10:00:00` (UTC).
pub(crate) fn human_time(ms: u64) -> String {
    datetime(ms)
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// RFC 3339 (UTC).
pub(crate) fn rfc3339(ms: u64) -> String {
    datetime(ms)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `[2026-11-27 10:00:00] bob: hi`
pub(crate) fn message_line(m: &StoredMessage) -> String {
    // Reply, edited, view once, disappearing (features.rs).
    crate::features::decorate_line(
        format!("[{}] {}: {}", human_time(m.sent_at_ms), m.from, m.text),
        m,
    )
}

/// `{"type":"message","id":…,"conversation":…,"from":…,"sent_at":…,"text":…}`
/// (plus `reply_to`, `view_once`, `expires_at`, `edited_at` when they apply)
pub(crate) fn message_json(m: &StoredMessage) -> String {
    crate::features::message_value(m).to_string()
}

/// `{"type":"group","event":"added","conversation":"#T","by":…,"handles":[…],"at":…}`
/// (`"title"` too for `renamed`).
pub(crate) fn group_event_json(e: &GroupEvent) -> String {
    let mut v = json!({
        "type": "group",
        "event": e.kind.as_str(),
        "conversation": e.conversation,
        "by": e.by,
        "handles": e.handles,
        "at": rfc3339(e.at_ms),
    });
    if let (Some(title), Some(obj)) = (&e.title, v.as_object_mut()) {
        obj.insert("title".into(), json!(title));
    }
    v.to_string()
}

/// `[2026-11-27 10:00:00] #Trip: alice added bob, carol`
pub(crate) fn group_event_line(e: &GroupEvent) -> String {
    let who = e.handles.join(", ");
    let what = match e.kind {
        GroupEventKind::Added => format!("{} added {who}", e.by),
        GroupEventKind::Removed => format!("{} removed {who}", e.by),
        GroupEventKind::Left => format!("{} left", e.by),
        GroupEventKind::Renamed => format!(
            "{} renamed the group to \"{}\"",
            e.by,
            e.title.as_deref().unwrap_or_default()
        ),
        GroupEventKind::Promoted => format!("{} made {who} admin", e.by),
        GroupEventKind::Demoted => format!("{} removed {who} as admin", e.by),
        GroupEventKind::Diverged => format!(
            "this device refused a change by {} that the group's rules do not allow; \
             until an admin runs `hushwire group reset '{}'` the group cannot change",
            e.by, e.conversation
        ),
        GroupEventKind::Reset if who.is_empty() => format!("{} reset the group", e.by),
        GroupEventKind::Reset => format!("{} reset the group without {who}", e.by),
    };
    format!("[{}] {}: {what}", human_time(e.at_ms), e.conversation)
}

/// `{"type":"conversation","name":…,"last_message_at":…,"messages":N}`
pub(crate) fn conversation_json(c: &ConversationSummary) -> String {
    json!({
        "type": "conversation",
        "name": c.name,
        "last_message_at": c.last_message_at_ms.map(rfc3339),
        "messages": c.message_count,
        "suite": suite_name(c.suite),
        "timer": crate::features::timer_text(c.expire_timer_ms),
        "request": c.request,
    })
    .to_string()
}

/// `bob  3 messages, last 2026-11-27 10:00:00, xwing`
pub(crate) fn conversation_line(c: &ConversationSummary) -> String {
    let last = c
        .last_message_at_ms
        .map(|ms| format!(", last {}", human_time(ms)))
        .unwrap_or_default();
    let plural = if c.message_count == 1 { "" } else { "s" };
    let timer = match c.expire_timer_ms {
        0 => String::new(),
        t => format!(", disappearing {}", crate::features::timer_text(t)),
    };
    let request = if c.request { " (message request)" } else { "" };
    format!(
        "{}{request}  {} message{plural}{last}, {}{timer}",
        c.name,
        c.message_count,
        suite_name(c.suite)
    )
}

/// Prints one line to stdout and flushes it (so pipes see live messages at once).
pub(crate) fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The CLI name of a ciphersuite, as `--suite` takes it.
pub(crate) fn suite_name(s: hushwire_e2e::Suite) -> &'static str {
    match s {
        hushwire_e2e::Suite::XWing => "xwing",
        hushwire_e2e::Suite::Classic => "classic",
    }
}
