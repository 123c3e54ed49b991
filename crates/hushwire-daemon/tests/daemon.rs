//! The daemon in process: every method over the unix socket and over HTTP (the
//! conversation features checked end to end by a second client), events,
//! the durable queue (replay to the next consumer, recovery of what the profile stored
//! but the queue missed) and the HTTP token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hushwire_client::{Client, Event, SendFileOptions};
use hushwire_daemon::{Daemon, EventQueue, METHODS, Token, http_token};
use hushwire_service::ServiceOptions;
use hushwire_tests::{TestServer, register};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

const WAIT: Duration = Duration::from_secs(60);

/// A line-protocol client: responses by id, notifications kept.
struct LineClient {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    notifications: Vec<Value>,
    next_id: u64,
}

impl LineClient {
    async fn connect(path: &Path) -> Self {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
            notifications: Vec::new(),
            next_id: 1,
        }
    }

    async fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
    }

    async fn read_value(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line within the wait")
            .unwrap();
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap()
    }

    /// The next response (not a notification).
    async fn response(&mut self) -> Value {
        loop {
            let v = self.read_value().await;
            if v.get("method") == Some(&json!("receive")) {
                self.notifications.push(v["params"].clone());
            } else {
                return v;
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_line(&req.to_string()).await;
        let resp = self.response().await;
        assert_eq!(resp["id"], json!(id), "{resp}");
        resp
    }

    /// Waits for an event matching `f` (looking at those already seen first).
    async fn event(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.notifications.iter().position(&f) {
            return self.notifications.remove(pos);
        }
        loop {
            let v = self.read_value().await;
            assert_eq!(v["method"], json!("receive"), "{v}");
            let p = v["params"].clone();
            if f(&p) {
                return p;
            }
            self.notifications.push(p);
        }
    }
}

/// A raw HTTP/1.0 request (the body ends with the connection).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status: u16 = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An SSE stream: yields (id, params) of each event.
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, last_event_id: Option<u64>) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = "GET /api/v1/events HTTP/1.0\r\nHost: localhost\r\n".to_string();
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        Self { reader }
    }

    async fn next(&mut self) -> (u64, Value) {
        let (mut id, mut data) = (None, None);
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                id = Some(v.trim().parse::<u64>().unwrap());
            } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                data = Some(serde_json::from_str::<Value>(v).unwrap());
            } else if line.is_empty()
                && let (Some(i), Some(d)) = (id.take(), data.take())
            {
                assert_eq!(d["method"], json!("receive"));
                return (i, d["params"].clone());
            }
        }
    }

    async fn event(&mut self, f: impl Fn(&Value) -> bool) -> (u64, Value) {
        loop {
            let (id, p) = self.next().await;
            if f(&p) {
                return (id, p);
            }
        }
    }
}

enum Link {
    Socket(LineClient),
    Http {
        addr: std::net::SocketAddr,
        events: Sse,
        next_id: u64,
    },
}

/// One transport, and the methods called over it (every one must be).
struct Transport {
    link: Link,
    called: BTreeSet<String>,
}

impl Transport {
    fn new(link: Link) -> Self {
        Self {
            link,
            called: BTreeSet::new(),
        }
    }

    /// Asserts that every method of the daemon was called over this transport.
    fn assert_every_method_called(&self, tag: &str) {
        let missing: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| !self.called.contains(*m))
            .collect();
        assert!(missing.is_empty(), "not exercised over {tag}: {missing:?}");
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.called.insert(method.to_string());
        match &mut self.link {
            Link::Socket(c) => c.call(method, params).await,
            Link::Http { addr, next_id, .. } => {
                *next_id += 1;
                let req =
                    json!({"jsonrpc": "2.0", "id": *next_id, "method": method, "params": params});
                let (status, body) =
                    http(*addr, "POST", "/api/v1/rpc", &[], &req.to_string()).await;
                assert_eq!(status, 200, "{body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["id"], json!(*next_id));
                v
            }
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let v = self.call(method, params).await;
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    async fn err(&mut self, method: &str, params: Value) -> i64 {
        let v = self.call(method, params).await;
        v["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{method}: {v}"))
    }

    async fn event(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        match &mut self.link {
            Link::Socket(c) => c.event(f).await,
            Link::Http { events, .. } => events.event(f).await.1,
        }
    }

    /// Sends a raw line/body; returns the answer, if any.
    async fn raw(&mut self, text: &str) -> Option<Value> {
        match &mut self.link {
            Link::Socket(c) => {
                c.send_line(text).await;
                // A marker call tells whether an answer came before it.
                let marker = 999_999;
                c.send_line(&json!({"jsonrpc":"2.0","id":marker,"method":"version"}).to_string())
                    .await;
                let first = c.response().await;
                if first["id"] == json!(marker) {
                    return None;
                }
                let second = c.response().await;
                assert_eq!(second["id"], json!(marker));
                Some(first)
            }
            Link::Http { addr, .. } => {
                let (status, body) = http(*addr, "POST", "/api/v1/rpc", &[], text).await;
                if status == 204 {
                    return None;
                }
                assert_eq!(status, 200, "{body}");
                Some(serde_json::from_str(&body).unwrap())
            }
        }
    }
}

/// Everything `alice` gets until she is caught up.
async fn alice_events(alice: &mut Client) -> Vec<Event> {
    let mut got = Vec::new();
    alice.sync(WAIT, &mut |e| got.push(e)).await.unwrap();
    got
}

/// Syncs alice until `f` matches one of her events.
async fn alice_until(alice: &mut Client, f: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..20 {
        if let Some(e) = alice_events(alice).await.into_iter().find(|e| f(e)) {
            return e;
        }
    }
    panic!("alice never got the expected event");
}

async fn exercise(t: &mut Transport, alice: &mut Client, tag: &str, tmp: &Path) {
    // version
    let v = t.ok("version", json!({})).await;
    assert!(!v["version"].as_str().unwrap().is_empty());

    // send: text
    let hello = format!("hello via {tag}");
    let sent = t.ok("send", json!({"to": "alice", "text": hello})).await;
    assert_eq!(sent["sent"], json!(true));
    let hello_id = sent["id"].as_str().unwrap().to_string();
    let got = alice_until(alice, |e| matches!(e, Event::Message(m) if m.text == hello)).await;
    let Event::Message(m) = got else {
        unreachable!()
    };
    assert_eq!(m.id, hello_id);

    // a message arrives live as an event
    let ping = format!("ping {tag}");
    let ping_id = hushwire_tests::send(alice, "bob", &ping).await;
    let e = t
        .event(|p| p["type"] == json!("message") && p["text"] == json!(ping))
        .await;
    assert_eq!(e["from"], json!("alice"));
    assert_eq!(e["id"], json!(ping_id));
    assert!(e["seq"].as_u64().unwrap() > 0);

    // getSafetyNumber: the same 60 digits alice sees; markVerified records the check.
    let n = t.ok("getSafetyNumber", json!({"handle": "alice"})).await;
    let alices = alice.profile().safety_number("bob").unwrap();
    assert_eq!(n["safetyNumber"], json!(alices.digits));
    assert_eq!(
        n["safetyNumber"].as_str().unwrap().len(),
        71,
        "12 groups of 5"
    );
    assert_eq!(
        n["qrPayload"].as_str().unwrap().len(),
        alices.qr_payload.len() * 2
    );
    let n = t
        .ok(
            "getSafetyNumber",
            json!({"handle": "alice", "markVerified": true}),
        )
        .await;
    assert_eq!(n["verified"], json!(true));
    assert_eq!(
        t.err("getSafetyNumber", json!({"handle": "x"})).await,
        -32602
    );
    assert_eq!(
        t.err("getSafetyNumber", json!({"handle": "nobody_here"}))
            .await,
        -32002
    );
    // trustIdentity: accepting the key alice has now keeps the conversation working.
    assert_eq!(
        t.ok("trustIdentity", json!({"handle": "alice"})).await,
        json!({"trusted": true})
    );
    assert_eq!(t.err("trustIdentity", json!({})).await, -32602);

    // listConversations, history
    let list = t.ok("listConversations", json!({})).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["conversation"] == json!("alice")),
        "{list}"
    );
    let h = t
        .ok("history", json!({"conversation": "alice", "limit": 2}))
        .await;
    let h = h.as_array().unwrap();
    assert!(h.len() <= 2);
    assert_eq!(h.last().unwrap()["text"], json!(ping));
    assert_eq!(
        t.err("history", json!({"conversation": "nobody"})).await,
        -32002
    );

    // sendReaction
    let r = t
        .ok("sendReaction", json!({"id": ping_id, "emoji": "👍"}))
        .await;
    assert_eq!(r["sent"], json!(true));
    alice_until(alice, |e| matches!(e, Event::Reaction { emoji, message_id, .. } if emoji == "👍" && *message_id == ping_id)).await;

    // markRead / sendReceipt
    let method = if tag == "socket" {
        "markRead"
    } else {
        "sendReceipt"
    };
    let r = t.ok(method, json!({"conversation": "alice"})).await;
    assert!(r["read"].as_u64().unwrap() >= 1, "{r}");
    alice_until(alice, |e| matches!(e, Event::Receipt { message_id, status, .. } if *message_id == ping_id && status.as_str() == "read")).await;

    // send: a reply
    let reply = format!("reply via {tag}");
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "text": reply, "replyTo": ping_id}),
        )
        .await;
    let reply_id = r["id"].as_str().unwrap().to_string();
    let got = alice_until(
        alice,
        |e| matches!(e, Event::Message(m) if m.id == reply_id),
    )
    .await;
    let Event::Message(m) = got else {
        unreachable!()
    };
    assert_eq!(m.reply_to.as_deref(), Some(ping_id.as_str()));

    // send: a file
    let file = tmp.join(format!("note-{tag}.txt"));
    std::fs::write(&file, format!("file contents {tag}")).unwrap();
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "file": file, "text": "a file"}),
        )
        .await;
    let file_id = r["id"].as_str().unwrap().to_string();
    let got = alice_until(
        alice,
        |e| matches!(e, Event::Attachment(m, _) if m.id == file_id),
    )
    .await;
    let Event::Attachment(m, info) = got else {
        unreachable!()
    };
    assert_eq!(m.text, "a file");
    assert_eq!(info.file_name, format!("note-{tag}.txt"));
    assert_eq!(
        t.err("send", json!({"to": "alice", "file": tmp.join("missing")}))
            .await,
        -32005
    );

    // sendTyping
    let r = t.ok("sendTyping", json!({"conversation": "alice"})).await;
    assert_eq!(r["sent"], json!(true));

    // groups
    let title = format!("team-{tag}");
    let r = t
        .ok(
            "createGroup",
            json!({"title": title, "members": ["alice", "carol"]}),
        )
        .await;
    let group = r["conversation"].as_str().unwrap().to_string();
    assert_eq!(group, format!("#{title}"));
    assert_eq!(r["sent"], json!(true));
    let groups = t.ok("listGroups", json!({})).await;
    assert!(
        groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["conversation"] == json!(group)),
        "{groups}"
    );
    t.ok("updateGroup", json!({"group": group, "promote": ["alice"]}))
        .await;
    let d = t.ok("getGroup", json!({"group": group})).await;
    let alice_m = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["handle"] == json!("alice"))
        .unwrap()
        .clone();
    assert_eq!(alice_m["admin"], json!(true), "{d}");
    t.ok("updateGroup", json!({"group": group, "remove": ["carol"]}))
        .await;
    let d = t.ok("getGroup", json!({"group": group})).await;
    assert!(
        !d["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["handle"] == json!("carol")),
        "{d}"
    );
    let renamed = format!("crew-{tag}");
    t.ok("updateGroup", json!({"group": group, "rename": renamed}))
        .await;
    let d = t
        .ok("getGroup", json!({"group": format!("#{renamed}")}))
        .await;
    assert_eq!(d["title"], json!(renamed));
    let r = t
        .ok(
            "send",
            json!({"to": format!("#{renamed}"), "text": "to the group"}),
        )
        .await;
    assert_eq!(r["sent"], json!(true));
    t.ok("quitGroup", json!({"group": format!("#{renamed}")}))
        .await;
    let d = t
        .ok("getGroup", json!({"group": format!("#{renamed}")}))
        .await;
    assert_eq!(d["leaving"], json!(true), "{d}");
    assert_eq!(t.err("getGroup", json!({"group": "alice"})).await, -32602);

    // devices
    let devices = t.ok("listDevices", json!({})).await;
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["current"], json!(true));

    // JSON-RPC errors, batches, notifications
    assert_eq!(t.err("noSuchMethod", json!({})).await, -32601);
    assert_eq!(t.err("send", json!({"to": "alice"})).await, -32602);
    assert_eq!(
        t.err("send", json!({"to": "alice", "text": "x", "bogus": 1}))
            .await,
        -32602
    );
    let parse = t.raw("{not json").await.unwrap();
    assert_eq!(parse["error"]["code"], json!(-32700));
    assert_eq!(parse["id"], Value::Null);
    let invalid = t
        .raw(r#"{"jsonrpc":"1.0","id":5,"method":"version"}"#)
        .await
        .unwrap();
    assert_eq!(invalid["error"]["code"], json!(-32600));
    let empty = t.raw("[]").await.unwrap();
    assert_eq!(empty["error"]["code"], json!(-32600));
    let batch = t
        .raw(r#"[{"jsonrpc":"2.0","id":"a","method":"version"},{"jsonrpc":"2.0","method":"version"},{"jsonrpc":"2.0","id":"b","method":"nope"}]"#)
        .await
        .unwrap();
    let batch = batch.as_array().unwrap();
    assert_eq!(batch.len(), 2, "the notification gets no answer: {batch:?}");
    assert_eq!(batch[0]["id"], json!("a"));
    assert!(batch[0]["result"]["version"].is_string());
    assert_eq!(batch[1]["error"]["code"], json!(-32601));
    assert!(
        t.raw(r#"{"jsonrpc":"2.0","method":"version"}"#)
            .await
            .is_none()
    );
}

/// A well-formed message id no one used.
const UNKNOWN_ID: &str = "01900000-0000-7000-8000-000000000000";

fn now() -> u64 {
    hushwire_client::api::unix_ms()
}

/// Sends what `c` queued.
async fn flush_client(c: &mut Client) {
    c.flush_outbox(WAIT, &mut |_| {}).await.unwrap();
}

/// Syncs `c` until `f` matches one of its events; returns every event seen until then.
async fn collect_until(c: &mut Client, f: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let got = alice_events(c).await;
        let found = got.iter().any(&f);
        seen.extend(got);
        if found {
            return seen;
        }
    }
    panic!("never got the expected event");
}

/// The `conversation`'s timeline over `t`.
async fn history_of(t: &mut Transport, conversation: &str) -> Vec<Value> {
    let h = t
        .ok(
            "history",
            json!({"conversation": conversation, "limit": 1000}),
        )
        .await;
    h.as_array().unwrap().clone()
}

async fn conversation_of(t: &mut Transport, conversation: &str) -> Value {
    let list = t.ok("listConversations", json!({})).await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == json!(conversation))
        .unwrap_or_else(|| panic!("no {conversation} in {list}"))
        .clone()
}

/// Edits, deletes, timers, view once, requests, blocking and settings over `t`, each
/// checked on the other side (alice, and `stranger`, who is not bob's contact yet).
async fn conversation_features(
    t: &mut Transport,
    alice: &mut Client,
    stranger: &mut Client,
    tag: &str,
    tmp: &Path,
) {
    let stranger_name = stranger.identity().unwrap().handle.clone();

    // editMessage: an own text, for everyone.
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "text": format!("typo {tag}")}),
        )
        .await;
    let own = r["id"].as_str().unwrap().to_string();
    alice_until(alice, |e| matches!(e, Event::Message(m) if m.id == own)).await;
    let edited = format!("fixed {tag}");
    let r = t
        .ok("editMessage", json!({"id": own, "text": edited}))
        .await;
    assert_eq!(r["sent"], json!(true));
    alice_until(alice, |e| {
        matches!(e, Event::Edited { message_id, text, from, .. }
            if *message_id == own && *text == edited && from == "bob")
    })
    .await;
    assert_eq!(alice.profile().find_message(&own).unwrap().text, edited);
    for (params, code) in [
        (json!({"id": "not-an-id", "text": "x"}), -32602),
        (json!({"id": UNKNOWN_ID, "text": "x"}), -32002),
        (json!({"id": own}), -32602),
        (json!({"id": own, "text": ""}), -32602),
    ] {
        assert_eq!(t.err("editMessage", params.clone()).await, code, "{params}");
    }
    // Someone else's message cannot be edited; their edit arrives as an event.
    let theirs = hushwire_tests::send(alice, "bob", &format!("alice's {tag}")).await;
    t.event(|p| p["type"] == json!("message") && p["id"] == json!(theirs))
        .await;
    assert_eq!(
        t.err("editMessage", json!({"id": theirs, "text": "x"}))
            .await,
        -32003
    );
    let alice_edit = format!("alice's, edited {tag}");
    alice
        .profile_mut()
        .edit(&theirs, &alice_edit, now())
        .unwrap();
    flush_client(alice).await;
    let e = t
        .event(|p| p["type"] == json!("edited") && p["messageId"] == json!(theirs))
        .await;
    assert_eq!(
        (&e["text"], &e["from"]),
        (&json!(alice_edit), &json!("alice"))
    );
    let h = history_of(t, "alice").await;
    let m = h.iter().find(|m| m["id"] == json!(theirs)).unwrap();
    assert_eq!(m["text"], json!(alice_edit));
    assert!(m["editedAt"].is_u64(), "{m}");

    // send with replyTo: the quoted message must exist, in the conversation named.
    assert_eq!(
        t.err(
            "send",
            json!({"to": "alice", "text": "x", "replyTo": UNKNOWN_ID})
        )
        .await,
        -32002
    );
    assert_eq!(
        t.err(
            "send",
            json!({"to": "carol", "text": "x", "replyTo": theirs})
        )
        .await,
        -32602
    );
    assert_eq!(
        t.err("sendReaction", json!({"id": UNKNOWN_ID, "emoji": "👍"}))
            .await,
        -32002
    );

    // remoteDelete: an own message for everyone.
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "text": format!("regret {tag}")}),
        )
        .await;
    let gone = r["id"].as_str().unwrap().to_string();
    alice_until(alice, |e| matches!(e, Event::Message(m) if m.id == gone)).await;
    let r = t.ok("remoteDelete", json!({"id": gone})).await;
    assert_eq!(r["scope"], json!("everyone"), "{r}");
    alice_until(
        alice,
        |e| matches!(e, Event::Deleted { message_id, .. } if *message_id == gone),
    )
    .await;
    assert!(alice.profile().find_message(&gone).is_err());
    // Someone else's: on this device only.
    let r = t.ok("remoteDelete", json!({"targetId": theirs})).await;
    assert_eq!(r["scope"], json!("me"), "{r}");
    assert!(
        !history_of(t, "alice")
            .await
            .iter()
            .any(|m| m["id"] == json!(theirs))
    );
    assert!(alice.profile().find_message(&theirs).is_ok());
    assert_eq!(t.err("remoteDelete", json!({"id": theirs})).await, -32002);
    assert_eq!(t.err("remoteDelete", json!({"id": "nope"})).await, -32602);
    // alice deletes hers: bob's copy goes.
    let hers = hushwire_tests::send(alice, "bob", &format!("oops {tag}")).await;
    t.event(|p| p["type"] == json!("message") && p["id"] == json!(hers))
        .await;
    alice.profile_mut().delete_message(&hers, now()).unwrap();
    flush_client(alice).await;
    let e = t
        .event(|p| p["type"] == json!("deleted") && p["messageId"] == json!(hers))
        .await;
    assert_eq!(e["from"], json!("alice"));
    assert!(
        !history_of(t, "alice")
            .await
            .iter()
            .any(|m| m["id"] == json!(hers))
    );

    // setTimer: set on both sides.
    let r = t
        .ok("setTimer", json!({"conversation": "alice", "timer": "1h"}))
        .await;
    assert_eq!(
        (&r["timer"], &r["timerMs"], &r["sent"]),
        (&json!("1h"), &json!(3_600_000), &json!(true))
    );
    alice_until(
        alice,
        |e| matches!(e, Event::TimerChanged { by, timer_ms: 3_600_000, .. } if by == "bob"),
    )
    .await;
    assert_eq!(alice.profile().timer("bob").unwrap(), 3_600_000);
    let c = conversation_of(t, "alice").await;
    assert_eq!(
        (&c["timer"], &c["timerMs"]),
        (&json!("1h"), &json!(3_600_000))
    );
    for (params, code) in [
        (json!({"conversation": "alice", "timer": "1s"}), -32602),
        (json!({"conversation": "alice", "timer": "soon"}), -32602),
        (json!({"conversation": "alice"}), -32602),
        (json!({"conversation": "nobody", "timer": "1h"}), -32002),
    ] {
        assert_eq!(t.err("setTimer", params.clone()).await, code, "{params}");
    }
    // alice turns it off: bob sees the change.
    alice.profile_mut().set_timer("bob", 0, now()).unwrap();
    flush_client(alice).await;
    let e = t
        .event(|p| p["type"] == json!("timerChanged") && p["by"] == json!("alice"))
        .await;
    assert_eq!((&e["timer"], &e["timerMs"]), (&json!("off"), &json!(0)));
    assert_eq!(conversation_of(t, "alice").await["timer"], json!("off"));

    // send viewOnce: a file and a text alice opens once.
    let file = tmp.join(format!("once-{tag}.txt"));
    std::fs::write(&file, format!("for your eyes only {tag}")).unwrap();
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "file": file, "text": "once", "viewOnce": true}),
        )
        .await;
    let once = r["id"].as_str().unwrap().to_string();
    let got = alice_until(
        alice,
        |e| matches!(e, Event::Attachment(m, _) if m.id == once),
    )
    .await;
    let Event::Attachment(m, _) = got else {
        unreachable!()
    };
    assert!(m.view_once);
    let dir = tmp.join(format!("alice-view-{tag}"));
    let (m, path) = alice.open_view_once(&once, &dir).await.unwrap();
    assert_eq!(m.text, "once");
    assert_eq!(
        std::fs::read_to_string(path.unwrap()).unwrap(),
        format!("for your eyes only {tag}")
    );
    assert!(alice.open_view_once(&once, &dir).await.is_err());
    assert_eq!(
        t.err("openViewOnce", json!({"id": once})).await,
        -32003,
        "an own view-once message"
    );
    let secret = format!("a secret {tag}");
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "text": secret, "viewOnce": true}),
        )
        .await;
    let once_text = r["id"].as_str().unwrap().to_string();
    let got = alice_until(
        alice,
        |e| matches!(e, Event::Message(m) if m.id == once_text),
    )
    .await;
    let Event::Message(m) = got else {
        unreachable!()
    };
    assert!(m.view_once && m.text.is_empty());
    let (m, path) = alice.open_view_once(&once_text, &dir).await.unwrap();
    assert_eq!((m.text, path), (secret, None));
    assert_eq!(
        t.err(
            "send",
            json!({"to": "alice", "text": "x", "viewOnce": true, "replyTo": theirs})
        )
        .await,
        -32602
    );

    // openViewOnce: alice's view-once file, once.
    let src = tmp.join(format!("from-alice-{tag}.txt"));
    std::fs::write(&src, format!("alice's eyes-only file {tag}")).unwrap();
    let options = SendFileOptions {
        caption: "just once".into(),
        view_once: true,
        ..SendFileOptions::default()
    };
    let vid = alice.send_file("bob", &src, &options).await.unwrap();
    flush_client(alice).await;
    let e = t
        .event(|p| p["type"] == json!("attachment") && p["id"] == json!(vid))
        .await;
    assert_eq!((&e["viewOnce"], &e["text"]), (&json!(true), &Value::Null));
    let dir = tmp.join(format!("bob-view-{tag}"));
    let r = t.ok("openViewOnce", json!({"id": vid, "dir": dir})).await;
    assert_eq!(
        (&r["from"], &r["text"]),
        (&json!("alice"), &json!("just once"))
    );
    let path = r["path"].as_str().unwrap();
    assert!(Path::new(path).starts_with(&dir), "{path}");
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        format!("alice's eyes-only file {tag}")
    );
    assert_eq!(
        t.err("openViewOnce", json!({"id": vid, "dir": dir})).await,
        -32003,
        "opened once only"
    );
    alice_until(alice, |e| {
        matches!(e, Event::Receipt { message_id, status, .. }
            if *message_id == vid && status.as_str() == "viewed")
    })
    .await;
    // A view-once text, into the default directory.
    let secret = format!("alice's secret {tag}");
    let vid = alice
        .profile_mut()
        .queue_text_with("bob", &secret, None, true, now())
        .unwrap();
    flush_client(alice).await;
    let e = t
        .event(|p| p["type"] == json!("message") && p["id"] == json!(vid))
        .await;
    assert_eq!((&e["viewOnce"], &e["text"]), (&json!(true), &Value::Null));
    let r = t.ok("openViewOnce", json!({"id": vid})).await;
    assert_eq!((&r["text"], &r["path"]), (&json!(secret), &Value::Null));
    assert_eq!(t.err("openViewOnce", json!({"id": vid})).await, -32003);
    assert_eq!(
        t.err("openViewOnce", json!({"id": UNKNOWN_ID})).await,
        -32002
    );
    assert_eq!(
        t.err("openViewOnce", json!({"id": own})).await,
        -32003,
        "not view-once"
    );

    // Message requests: a stranger writes.
    let hello = format!("hello from {stranger_name} {tag}");
    hushwire_tests::send(stranger, "bob", &hello).await;
    t.event(|p| p["type"] == json!("request") && p["from"] == json!(stranger_name))
        .await;
    t.event(|p| p["type"] == json!("message") && p["text"] == json!(hello))
        .await;
    let reqs = t.ok("listRequests", json!({})).await;
    let req = reqs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == json!(stranger_name))
        .unwrap_or_else(|| panic!("{reqs}"))
        .clone();
    assert_eq!(
        (&req["messages"], &req["lastText"], &req["conversation"]),
        (&json!(1), &json!(hello), &json!(stranger_name))
    );
    assert_eq!(
        conversation_of(t, &stranger_name).await["request"],
        json!(true)
    );
    assert_eq!(
        t.err("acceptRequest", json!({"handle": "Not A Handle"}))
            .await,
        -32602
    );
    assert_eq!(
        t.err("acceptRequest", json!({"handle": "alice"})).await,
        -32002
    );
    let r = t
        .ok("acceptRequest", json!({"handle": stranger_name}))
        .await;
    assert_eq!(r["sent"], json!(true));
    let reqs = t.ok("listRequests", json!({})).await;
    assert!(
        !reqs
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == json!(stranger_name)),
        "{reqs}"
    );
    assert_eq!(
        conversation_of(t, &stranger_name).await["request"],
        json!(false)
    );
    // Accepting sends the delivered receipt the request held back.
    collect_until(stranger, |e| {
        matches!(e, Event::Receipt { from, status, .. }
            if from == "bob" && status.as_str() == "delivered")
    })
    .await;

    // Blocking: the stranger's messages are not shown.
    let r = t.ok("block", json!({"handle": stranger_name})).await;
    assert_eq!(r["sent"], json!(true));
    assert_eq!(t.ok("listBlocked", json!({})).await, json!([stranger_name]));
    assert_eq!(t.err("block", json!({"handle": "bob"})).await, -32003);
    assert_eq!(t.err("block", json!({"handle": "x"})).await, -32602);
    assert_eq!(t.err("block", json!({})).await, -32602);
    let spam = format!("spam {tag}");
    stranger.queue_text("bob", &spam).unwrap();
    let _ = stranger.flush_outbox(WAIT, &mut |_| {}).await;
    // alice's message, sent after it, arrives; the blocked one never does.
    let after = format!("after the block {tag}");
    hushwire_tests::send(alice, "bob", &after).await;
    t.event(|p| p["type"] == json!("message") && p["text"] == json!(after))
        .await;
    assert!(
        !history_of(t, &stranger_name)
            .await
            .iter()
            .any(|m| m["text"] == json!(spam))
    );
    if let Link::Socket(c) = &t.link {
        assert!(
            !c.notifications.iter().any(|p| p["text"] == json!(spam)),
            "a blocked sender's message was reported"
        );
    }
    t.ok("unblock", json!({"recipient": stranger_name})).await;
    assert_eq!(t.ok("listBlocked", json!({})).await, json!([]));
    assert_eq!(
        t.err("unblock", json!({"handle": stranger_name})).await,
        -32002
    );

    // Settings.
    let s = t.ok("getSettings", json!({})).await;
    assert_eq!(s, json!({"readReceipts": true, "presence": "contacts"}));
    let method = if tag == "socket" {
        "updateSettings"
    } else {
        "updateConfiguration"
    };
    let s = t
        .ok(method, json!({"readReceipts": false, "presence": "nobody"}))
        .await;
    assert_eq!(s, json!({"readReceipts": false, "presence": "nobody"}));
    for params in [
        json!({}),
        json!({"readReceipts": true, "presence": "sometimes"}),
        json!({"readReceipts": "yes"}),
        json!({"typingIndicators": true}),
    ] {
        assert_eq!(
            t.err("updateSettings", params.clone()).await,
            -32602,
            "{params}"
        );
    }
    assert_eq!(
        t.ok("getSettings", json!({})).await,
        json!({"readReceipts": false, "presence": "nobody"}),
        "a rejected update changes nothing"
    );
    // With read receipts off, reading sends none.
    let quiet = hushwire_tests::send(alice, "bob", &format!("unreceipted {tag}")).await;
    t.event(|p| p["type"] == json!("message") && p["id"] == json!(quiet))
        .await;
    let read = if tag == "socket" {
        "sendReceipt"
    } else {
        "markRead"
    };
    let r = t.ok(read, json!({"conversation": "alice"})).await;
    assert!(r["read"].as_u64().unwrap() >= 1, "{r}");
    let r = t
        .ok(
            "send",
            json!({"to": "alice", "text": format!("marker {tag}")}),
        )
        .await;
    let marker = r["id"].as_str().unwrap().to_string();
    let seen = collect_until(alice, |e| matches!(e, Event::Message(m) if m.id == marker)).await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Receipt { message_id, status, .. }
            if *message_id == quiet && status.as_str() == "read")),
        "a read receipt went out with read receipts off"
    );
    let s = t
        .ok(
            "updateSettings",
            json!({"readReceipts": true, "presence": "contacts"}),
        )
        .await;
    assert_eq!(s, json!({"readReceipts": true, "presence": "contacts"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_the_socket_and_http() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let mut alice = register(tmp.path(), &server, "alice").await;
    drop(register(tmp.path(), &server, "bob").await);
    drop(register(tmp.path(), &server, "carol").await);
    // Strangers who write to bob: one per transport.
    let mut dave = register(tmp.path(), &server, "dave").await;
    let mut erin = register(tmp.path(), &server, "erin").await;
    let daemon = Daemon::start(
        &tmp.path().join("bob"),
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        },
    )
    .await
    .unwrap();

    // Unix socket, mode 0600.
    let path = tmp.path().join("bob.sock");
    let socket = daemon.bind_socket(&path).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let socket_task = tokio::spawn(async move {
        let r = socket.run().await;
        drop(socket);
        r
    });
    let mut t = Transport::new(Link::Socket(LineClient::connect(&path).await));
    exercise(&mut t, &mut alice, "socket", tmp.path()).await;
    conversation_features(&mut t, &mut alice, &mut dave, "socket", tmp.path()).await;
    t.assert_every_method_called("socket");
    drop(t);

    // HTTP on loopback (no token needed).
    let (addr, fut) = daemon
        .bind_http("127.0.0.1:0".parse().unwrap(), None, std::future::pending())
        .await
        .unwrap();
    let http_task = tokio::spawn(fut);
    let (status, body) = http(addr, "GET", "/api/v1/check", &[], "").await;
    assert_eq!(status, 200);
    let check: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(check["ok"], json!(true));
    assert!(check["online"].is_boolean());
    let events = Sse::open(addr, None).await;
    let mut t = Transport::new(Link::Http {
        addr,
        events,
        next_id: 0,
    });
    exercise(&mut t, &mut alice, "http", tmp.path()).await;
    conversation_features(&mut t, &mut alice, &mut erin, "http", tmp.path()).await;
    t.assert_every_method_called("http");

    // SSE resumes after Last-Event-ID.
    let Link::Http { mut events, .. } = t.link else {
        unreachable!()
    };
    let (first, _) = events.next().await;
    let mut resumed = Sse::open(addr, Some(first - 1)).await;
    assert_eq!(resumed.next().await.0, first);
    let (status, _) = http(addr, "POST", "/api/v1/rpc", &[], &"x".repeat(2 << 20)).await;
    assert_eq!(status, 413, "bodies are bounded");

    http_task.abort();
    socket_task.abort();
    let _ = socket_task.await;
    assert!(!path.exists(), "the socket file is removed");
    daemon.shutdown().await;
    server.stop().await;
}

/// Waits until the queue holds a message event with `text`.
async fn queued(queue: &EventQueue, text: &str) -> Value {
    let mut latest = queue.latest();
    tokio::time::timeout(WAIT, async {
        loop {
            let all = queue.read_after(0, 100_000).await.unwrap();
            if let Some(e) = all.into_iter().find(|e| e.body["text"] == json!(text)) {
                return e.body;
            }
            latest.changed().await.unwrap();
        }
    })
    .await
    .expect("queued within the wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_the_next_consumer_and_are_replayed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let mut alice = register(tmp.path(), &server, "alice").await;
    drop(register(tmp.path(), &server, "bob").await);
    let daemon = Daemon::start(
        &tmp.path().join("bob"),
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        },
    )
    .await
    .unwrap();
    // No consumer attached: events accumulate.
    for i in 0..3 {
        hushwire_tests::send(&mut alice, "bob", &format!("offline {i}")).await;
    }
    queued(daemon.queue(), "offline 2").await;
    let path = tmp.path().join("d.sock");
    let socket = daemon.bind_socket(&path).unwrap();
    let task = tokio::spawn(async move { socket.run().await });
    // The first consumer gets them in order.
    let mut c1 = LineClient::connect(&path).await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        let e = c1.event(|p| p["type"] == json!("message")).await;
        assert_eq!(e["text"], json!(format!("offline {i}")));
        seqs.push(e["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // Make sure c1's writes were recorded before it leaves.
    c1.call("version", json!({})).await;
    drop(c1);
    let mut latest = daemon.queue().latest();
    let _ = latest.borrow_and_update();
    // The next consumer does not get them again.
    let mut c2 = LineClient::connect(&path).await;
    c2.call("version", json!({})).await;
    hushwire_tests::send(&mut alice, "bob", "marker").await;
    let e = c2.event(|p| p["type"] == json!("message")).await;
    assert_eq!(e["text"], json!("marker"), "replayed twice: {e}");
    task.abort();
    daemon.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_but_not_queued_are_recovered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let mut alice = register(tmp.path(), &server, "alice").await;
    let bob_dir = tmp.path().join("bob");
    drop(register(tmp.path(), &server, "bob").await);
    hushwire_tests::send(&mut alice, "bob", "before the daemon").await;
    let mut bob = hushwire_tests::open(tmp.path(), "bob");
    hushwire_tests::receive(&mut bob).await;
    drop(bob);
    // First start: what the profile holds counts as reported.
    let daemon = Daemon::start(
        &bob_dir,
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        },
    )
    .await
    .unwrap();
    daemon.shutdown().await;
    // The profile stores a message the queue never sees (as when the daemon is killed
    // between the two).
    hushwire_tests::send(&mut alice, "bob", "in the window").await;
    let mut bob = hushwire_tests::open(tmp.path(), "bob");
    let got = hushwire_tests::receive(&mut bob).await;
    assert_eq!(got.len(), 1);
    drop(bob);
    for _ in 0..2 {
        let daemon = Daemon::start(
            &bob_dir,
            ServiceOptions {
                client: hushwire_tests::options(),
                ..ServiceOptions::default()
            },
        )
        .await
        .unwrap();
        let all = daemon.queue().read_after(0, 100_000).await.unwrap();
        let texts: Vec<&Value> = all
            .iter()
            .filter(|e| e.body["type"] == json!("message"))
            .map(|e| &e.body["text"])
            .collect();
        assert_eq!(texts, vec![&json!("in the window")], "queued exactly once");
        let e = all
            .iter()
            .find(|e| e.body["type"] == json!("message"))
            .unwrap();
        assert_eq!(e.body["recovered"], json!(true));
        daemon.shutdown().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_when_configured() {
    // Not loopback: a token is generated; loopback: none unless given.
    let (t, generated) = http_token(&"0.0.0.0:8080".parse().unwrap(), None).unwrap();
    assert!(generated);
    assert_eq!(t.expose().len(), 64);
    assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    assert!(http_token(&"127.0.0.1:8080".parse().unwrap(), None).is_none());
    assert!(http_token(&"[::1]:8080".parse().unwrap(), None).is_none());
    let (t, generated) =
        http_token(&"127.0.0.1:1".parse().unwrap(), Some("s3cret".into())).unwrap();
    assert!(!generated);
    assert_eq!(t.expose(), "s3cret");

    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    drop(register(tmp.path(), &server, "bob").await);
    let daemon = Daemon::start(
        &tmp.path().join("bob"),
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        },
    )
    .await
    .unwrap();
    let token = Token::generate();
    let secret = token.expose().to_string();
    let (addr, fut) = daemon
        .bind_http(
            "127.0.0.1:0".parse().unwrap(),
            Some(token),
            std::future::pending(),
        )
        .await
        .unwrap();
    let task = tokio::spawn(fut);
    let req = r#"{"jsonrpc":"2.0","id":1,"method":"version"}"#;
    for path in ["/api/v1/check", "/api/v1/events"] {
        assert_eq!(http(addr, "GET", path, &[], "").await.0, 401);
    }
    assert_eq!(http(addr, "POST", "/api/v1/rpc", &[], req).await.0, 401);
    let wrong = format!("Bearer {}", "0".repeat(64));
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/v1/rpc",
            &[("Authorization", &wrong)],
            req
        )
        .await
        .0,
        401
    );
    let right = format!("Bearer {secret}");
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/rpc",
        &[("Authorization", &right)],
        req,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\""));
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/v1/check",
            &[("Authorization", &right)],
            ""
        )
        .await
        .0,
        200
    );
    task.abort();

    // The socket: a running daemon's is not taken over; a stale file is replaced.
    let path = tmp.path().join("t.sock");
    let first = daemon.bind_socket(&path).unwrap();
    assert!(matches!(
        daemon.bind_socket(&path),
        Err(hushwire_daemon::DaemonError::SocketInUse(_))
    ));
    drop(first);
    assert!(!path.exists());
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file");
    let again = daemon.bind_socket(&path).unwrap();
    UnixStream::connect(&path).await.unwrap();
    drop(again);
    std::fs::write(&path, "not a socket").unwrap();
    assert!(
        daemon.bind_socket(&path).is_err(),
        "other files are left alone"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");

    daemon.shutdown().await;
    server.stop().await;
}
