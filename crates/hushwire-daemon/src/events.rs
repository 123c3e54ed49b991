//! Events as JSON, the pump that queues every service event, and the reconciliation
//! with the profile at start.

use hushwire_client::{AttachmentInfo, Event, MessageState, StoredMessage};
use hushwire_e2e::TimelineItem;
use hushwire_service::{Service, ServiceEvent};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::queue::{EventQueue, NewEvent, QueueError};

/// Most events appended in one transaction.
const BATCH: usize = 512;

/// The key a message is queued under: `FROM/ID` (ids are the sender's).
pub(crate) fn message_key(m: &StoredMessage) -> String {
    format!("{}/{}", m.from, m.id)
}

fn message_fields(m: &StoredMessage) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(m.id));
    o.insert("conversation".into(), json!(m.conversation));
    o.insert("from".into(), json!(m.from));
    o.insert("sentAt".into(), json!(m.sent_at_ms));
    o.insert("receivedAt".into(), json!(m.received_at_ms));
    // A view-once message's content is only for `openViewOnce` (the profile hides it).
    o.insert(
        "text".into(),
        if m.view_once {
            Value::Null
        } else {
            json!(m.text)
        },
    );
    o.insert("outgoing".into(), json!(m.outgoing));
    o.insert("state".into(), json!(state_name(m.state)));
    o.insert("replyTo".into(), json!(m.reply_to));
    o.insert("viewOnce".into(), json!(m.view_once));
    o.insert("expiresAt".into(), json!(m.expires_at_ms));
    o.insert("editedAt".into(), json!(m.edited_at_ms));
    o
}

/// `queued`, `sent`, `received`, `failed`.
pub(crate) fn state_name(s: MessageState) -> &'static str {
    match s {
        MessageState::Queued => "queued",
        MessageState::Sent => "sent",
        MessageState::Received => "received",
        MessageState::Failed => "failed",
    }
}

pub(crate) fn attachment_json(a: &AttachmentInfo) -> Value {
    json!({
        "fileName": a.file_name,
        "mime": a.mime,
        "size": a.size,
        "sha256": hex::encode(a.plaintext_sha256),
        "width": a.width,
        "height": a.height,
        "voice": a.voice,
        "path": a.path.as_ref().map(|p| p.display().to_string()),
        "error": a.error,
    })
}

fn typed(kind: &str, mut fields: Map<String, Value>) -> Value {
    fields.insert("type".into(), json!(kind));
    Value::Object(fields)
}

/// A message-like timeline entry as JSON (`history` and events).
pub(crate) fn message_json(kind: &str, m: &StoredMessage, a: Option<&AttachmentInfo>) -> Value {
    let mut o = message_fields(m);
    if let Some(a) = a {
        o.insert("attachment".into(), attachment_json(a));
    }
    typed(kind, o)
}

pub(crate) fn group_event_json(g: &hushwire_e2e::GroupEvent) -> Value {
    json!({
        "type": "group",
        "conversation": g.conversation,
        "kind": g.kind.as_str(),
        "by": g.by,
        "handles": g.handles,
        "title": g.title,
        "at": g.at_ms,
    })
}

/// A timeline entry as JSON.
pub(crate) fn timeline_json(item: &TimelineItem) -> Value {
    match item {
        TimelineItem::Message(m) => message_json("message", m, None),
        TimelineItem::RelayLink(m) => message_json("relayLink", m, None),
        TimelineItem::Attachment(m, a) => message_json("attachment", m, Some(a)),
        TimelineItem::Group(g) => group_event_json(g),
    }
}

/// A service event as a queue entry.
pub(crate) fn event_entry(event: &ServiceEvent) -> NewEvent {
    let plain = |body: Value| NewEvent {
        body,
        message_id: None,
        repeat: false,
    };
    let event = match event {
        ServiceEvent::Connection { online, reason } => {
            return plain(json!({"type": "connection", "online": online, "reason": reason}));
        }
        ServiceEvent::Client(e) => e,
    };
    match event {
        Event::Message(m) => NewEvent {
            body: message_json("message", m, None),
            message_id: Some(message_key(m)),
            repeat: false,
        },
        Event::RelayLink(m) => NewEvent {
            body: message_json("relayLink", m, None),
            message_id: Some(message_key(m)),
            repeat: false,
        },
        Event::Attachment(m, a) => NewEvent {
            body: message_json("attachment", m, Some(a)),
            message_id: Some(message_key(m)),
            // The report after a download (path or error) follows the pending one.
            repeat: a.path.is_some() || a.error.is_some(),
        },
        Event::ConversationStarted { conversation } => {
            plain(json!({"type": "conversationStarted", "conversation": conversation}))
        }
        Event::Undecryptable {
            conversation,
            reason,
        } => {
            plain(json!({"type": "undecryptable", "conversation": conversation, "reason": reason}))
        }
        Event::Sent { id } => plain(json!({"type": "sent", "id": id})),
        Event::Group(g) => plain(group_event_json(g)),
        Event::GroupOperationFailed {
            conversation,
            reason,
        } => plain(
            json!({"type": "groupOperationFailed", "conversation": conversation,
                          "reason": reason}),
        ),
        Event::SendFailed { id, reason } => {
            plain(json!({"type": "sendFailed", "id": id, "reason": reason}))
        }
        Event::Request { conversation, from } => {
            plain(json!({"type": "request", "conversation": conversation, "from": from}))
        }
        Event::Receipt {
            conversation,
            message_id,
            from,
            status,
        } => plain(json!({"type": "receipt", "conversation": conversation,
                          "messageId": message_id, "from": from, "status": status.as_str()})),
        Event::Reaction {
            conversation,
            message_id,
            from,
            emoji,
        } => plain(json!({"type": "reaction", "conversation": conversation,
                          "messageId": message_id, "from": from, "emoji": emoji})),
        Event::Edited {
            conversation,
            message_id,
            from,
            text,
        } => plain(json!({"type": "edited", "conversation": conversation,
                          "messageId": message_id, "from": from, "text": text})),
        Event::Deleted {
            conversation,
            message_id,
            from,
        } => plain(json!({"type": "deleted", "conversation": conversation,
                          "messageId": message_id, "from": from})),
        Event::Typing {
            conversation,
            from,
            typing,
        } => plain(
            json!({"type": "typing", "conversation": conversation, "from": from,
                          "typing": typing}),
        ),
        Event::Presence {
            from,
            online,
            last_seen_ms,
        } => plain(json!({"type": "presence", "from": from, "online": online,
                          "lastSeen": last_seen_ms})),
        Event::DevicesChanged(news) => {
            let list = |v: &Vec<(u32, String)>| {
                v.iter()
                    .map(|(id, name)| json!({"deviceId": id, "name": name}))
                    .collect::<Vec<_>>()
            };
            plain(json!({"type": "devicesChanged", "version": news.version,
                         "added": list(&news.added), "removed": list(&news.removed),
                         "renamed": list(&news.renamed)}))
        }
        Event::TimerChanged {
            conversation,
            by,
            timer_ms,
        } => plain(
            json!({"type": "timerChanged", "conversation": conversation, "by": by,
                          "timer": hushwire_service::timer_text(*timer_ms), "timerMs": timer_ms}),
        ),
        Event::IdentityChanged { handle } => {
            plain(json!({"type": "identityChanged", "handle": handle}))
        }
        _ => plain(json!({"type": "other"})),
    }
}

/// Received messages in the profile (texts, files, relay links) as queue entries, with
/// their keys.
pub(crate) fn stored_messages(
    p: &hushwire_e2e::Profile,
) -> Result<Vec<(String, NewEvent)>, hushwire_e2e::E2eError> {
    let mut out = Vec::new();
    for conv in p.conversations()? {
        for item in p.timeline(&conv.name)? {
            let m = match &item {
                TimelineItem::Message(m)
                | TimelineItem::RelayLink(m)
                | TimelineItem::Attachment(m, _) => m,
                TimelineItem::Group(_) => continue,
            };
            if m.outgoing {
                continue;
            }
            let key = message_key(m);
            let mut body = timeline_json(&item);
            if let Value::Object(o) = &mut body {
                o.insert("recovered".into(), json!(true));
            }
            out.push((
                key.clone(),
                NewEvent {
                    body,
                    message_id: Some(key),
                    repeat: false,
                },
            ));
        }
    }
    Ok(out)
}

/// Queues what the profile stored but the queue never got (the daemon was killed
/// between the two); on a new queue (`baseline`), records what the profile holds as
/// already reported instead. Returns how many were queued.
pub(crate) async fn reconcile(
    found: Vec<(String, NewEvent)>,
    queue: &EventQueue,
    baseline: bool,
) -> Result<usize, QueueError> {
    if baseline {
        queue
            .mark_seen(found.into_iter().map(|(k, _)| k).collect())
            .await?;
        return Ok(0);
    }
    let unseen = queue
        .unseen(found.iter().map(|(k, _)| k.clone()).collect())
        .await?;
    let unseen: std::collections::HashSet<String> = unseen.into_iter().collect();
    let missing: Vec<NewEvent> = found
        .into_iter()
        .filter(|(k, _)| unseen.contains(k))
        .map(|(_, e)| e)
        .collect();
    queue.append(missing).await
}

/// [`reconcile`] while the service runs (after the pump lagged).
async fn reconcile_live(
    service: &Service,
    queue: &EventQueue,
) -> Result<usize, crate::DaemonError> {
    let found = service
        .with(|c| Box::pin(async move { stored_messages(c.profile()) }))
        .await
        .map_err(crate::DaemonError::Service)?
        .map_err(|e| crate::DaemonError::Profile(e.into()))?;
    Ok(reconcile(found, queue, false).await?)
}

/// Queues every service event until `stop` fires (then queues what is still buffered).
pub(crate) async fn pump(
    service: Service,
    queue: EventQueue,
    mut rx: broadcast::Receiver<ServiceEvent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), crate::DaemonError> {
    loop {
        let first = tokio::select! {
            biased;
            r = rx.recv() => match r {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event pump lagged; reconciling with the profile");
                    reconcile_live(&service, &queue).await?;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = &mut stop => {
                let mut rest = Vec::new();
                while let Ok(e) = rx.try_recv() {
                    rest.push(event_entry(&e));
                }
                append_retrying(&queue, rest).await?;
                return Ok(());
            }
        };
        let mut batch = vec![event_entry(&first)];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(event_entry(&e)),
                Err(_) => break,
            }
        }
        append_retrying(&queue, batch).await?;
    }
}

async fn append_retrying(queue: &EventQueue, batch: Vec<NewEvent>) -> Result<(), QueueError> {
    // One retry for a transient failure (a busy file); then the daemon stops rather
    // than drop events.
    match queue.append(batch.clone()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "appending events failed; retrying once");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            queue.append(batch).await.map(|_| ())
        }
    }
}
