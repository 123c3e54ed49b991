//! Service events as the JSON the browser receives on the WebSocket. Message bodies are
//! not included (the browser fetches the rendered timeline); the events only say what
//! changed where.

use hushwire_e2e::Event;
use hushwire_service::ServiceEvent;
use serde_json::{Value, json};

/// The JSON form of one event.
pub(crate) fn to_json(event: &ServiceEvent) -> Value {
    match event {
        ServiceEvent::Connection { online, .. } => json!({"type": "connection", "online": online}),
        ServiceEvent::Client(e) => client_event(e),
    }
}

fn client_event(e: &Event) -> Value {
    match e {
        Event::Message(m) | Event::RelayLink(m) => json!({
            "type": "message", "conversation": m.conversation, "id": m.id,
            "from": m.from, "outgoing": m.outgoing,
        }),
        Event::Attachment(m, _) => json!({
            "type": "message", "conversation": m.conversation, "id": m.id,
            "from": m.from, "outgoing": m.outgoing, "attachment": true,
        }),
        Event::ConversationStarted { conversation } => {
            json!({"type": "conversation", "conversation": conversation})
        }
        Event::Request { conversation, from } => {
            json!({"type": "request", "conversation": conversation, "from": from})
        }
        Event::Undecryptable { conversation, .. } => {
            json!({"type": "undecryptable", "conversation": conversation})
        }
        Event::Sent { id } => json!({"type": "sent", "id": id}),
        Event::SendFailed { id, reason } => {
            json!({"type": "send_failed", "id": id, "reason": reason})
        }
        Event::Group(g) => json!({
            "type": "group", "conversation": g.conversation, "kind": g.kind.as_str(), "by": g.by,
        }),
        Event::GroupOperationFailed {
            conversation,
            reason,
        } => json!({"type": "group_failed", "conversation": conversation, "reason": reason}),
        Event::Receipt {
            conversation,
            message_id,
            status,
            ..
        } => json!({
            "type": "receipt", "conversation": conversation, "id": message_id,
            "status": status.as_str(),
        }),
        Event::Reaction {
            conversation,
            message_id,
            from,
            ..
        } => {
            json!({"type": "reaction", "conversation": conversation, "id": message_id, "from": from})
        }
        Event::Edited {
            conversation,
            message_id,
            ..
        } => json!({"type": "edited", "conversation": conversation, "id": message_id}),
        Event::Deleted {
            conversation,
            message_id,
            ..
        } => json!({"type": "deleted", "conversation": conversation, "id": message_id}),
        Event::Typing {
            conversation,
            from,
            typing,
        } => {
            json!({"type": "typing", "conversation": conversation, "from": from, "typing": typing})
        }
        Event::Presence {
            from,
            online,
            last_seen_ms,
        } => {
            json!({"type": "presence", "from": from, "online": online, "last_seen_ms": last_seen_ms})
        }
        Event::DevicesChanged(_) => json!({"type": "devices"}),
        Event::IdentityChanged { handle } => {
            json!({"type": "identity", "handle": handle, "conversation": handle})
        }
        Event::TimerChanged {
            conversation,
            timer_ms,
            ..
        } => json!({"type": "timer", "conversation": conversation, "timer_ms": timer_ms}),
        _ => json!({"type": "other"}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn events_carry_no_message_text() {
        let m = hushwire_e2e::StoredMessage {
            id: "0190".into(),
            conversation: "bob".into(),
            from: "bob".into(),
            sent_at_ms: 1,
            received_at_ms: Some(2),
            text: "secret words".into(),
            outgoing: false,
            state: hushwire_e2e::MessageState::Received,
            reply_to: None,
            view_once: false,
            viewed: false,
            expires_at_ms: None,
            edited_at_ms: None,
        };
        let v = to_json(&ServiceEvent::Client(Event::Message(m)));
        assert_eq!(v["type"], "message");
        assert_eq!(v["conversation"], "bob");
        assert!(!v.to_string().contains("secret words"));
        let t = to_json(&ServiceEvent::Client(Event::Typing {
            conversation: "bob".into(),
            from: "bob".into(),
            typing: true,
        }));
        assert_eq!(t["typing"], true);
        let c = to_json(&ServiceEvent::Connection {
            online: false,
            reason: Some("x".into()),
        });
        assert_eq!(c, json!({"type": "connection", "online": false}));
    }
}
