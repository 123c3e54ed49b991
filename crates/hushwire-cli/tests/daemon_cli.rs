//! `hushwire daemon` through the built binary: every method (the conversation features
//! too) over stdio against a
//! `hushwire serve` child, `--socket` and `--http` started from the command line, and
//! events surviving a daemon killed with SIGKILL while messages arrive.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{BIN, Server, assert_ok, hushwire, register};

const WAIT: Duration = Duration::from_secs(60);

/// A `hushwire daemon` child speaking JSON-RPC on stdio.
struct Daemon {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    notifications: Vec<Value>,
    next_id: u64,
}

impl Daemon {
    fn start(profile: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
            .arg("--profile")
            .arg(profile)
            .arg("daemon")
            .args(args)
            .env_remove("HUSHWIRE_PROFILE")
            .env_remove("HUSHWIRE_DAEMON_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON on stdout: {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Daemon {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            notifications: Vec::new(),
            next_id: 1,
        }
    }

    fn next(&mut self) -> Value {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the daemon")
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
        loop {
            let v = self.next();
            if v["method"] == json!("receive") {
                self.notifications.push(v["params"].clone());
                continue;
            }
            assert_eq!(v["id"], json!(id), "{v}");
            return v;
        }
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        let v = self.call(method, params);
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    fn event(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.notifications.iter().position(&f) {
            return self.notifications.remove(i);
        }
        loop {
            let v = self.next();
            assert_eq!(v["method"], json!("receive"), "{v}");
            if f(&v["params"]) {
                return v["params"].clone();
            }
            self.notifications.push(v["params"].clone());
        }
    }

    fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Closing stdin ends a stdio daemon.
        drop(self.stdin.take());
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// `receive --json` on `profile`, until an entry matches `f` (a few rounds).
fn receive_until(profile: &Path, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..10 {
        let out = hushwire(profile, &["receive", "--json", "--timeout", "2"]);
        assert_ok(&out);
        if let Some(v) = json_lines(&out.stdout).into_iter().find(|v| f(v)) {
            return v;
        }
    }
    panic!("never received the expected entry");
}

#[test]
fn every_method_over_stdio() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob, carol) = (
        tmp.path().join("alice"),
        tmp.path().join("bob"),
        tmp.path().join("carol"),
    );
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    register(&carol, "carol", &server);
    let mut d = Daemon::start(&bob, &[]);

    assert!(d.ok("version", json!({}))["version"].is_string());
    // send → alice gets it
    let r = d.ok("send", json!({"to": "alice", "text": "hi from the daemon"}));
    assert_eq!(r["sent"], json!(true));
    let id = r["id"].as_str().unwrap().to_string();
    let got = receive_until(&alice, |v| v["text"] == json!("hi from the daemon"));
    assert_eq!(got["id"], json!(id));
    // alice answers → a receive notification
    assert_ok(&hushwire(&alice, &["send", "bob", "hello bot"]));
    let e = d.event(|p| p["type"] == json!("message") && p["text"] == json!("hello bot"));
    assert_eq!(e["from"], json!("alice"));
    let ping_id = e["id"].as_str().unwrap().to_string();

    let list = d.ok("listConversations", json!({}));
    assert_eq!(list[0]["conversation"], json!("alice"));
    let h = d.ok("history", json!({"conversation": "alice"}));
    let texts: Vec<&Value> = h.as_array().unwrap().iter().map(|m| &m["text"]).collect();
    assert_eq!(
        texts,
        vec![&json!("hi from the daemon"), &json!("hello bot")]
    );

    d.ok("sendReaction", json!({"id": ping_id, "emoji": "🎉"}));
    let got = receive_until(&alice, |v| v["type"] == json!("reaction"));
    assert_eq!(got["emoji"], json!("🎉"));
    let r = d.ok("markRead", json!({"conversation": "alice"}));
    assert_eq!(r["read"], json!(1));
    receive_until(&alice, |v| {
        v["type"] == json!("receipt") && v["status"] == json!("read")
    });
    d.ok("sendReceipt", json!({"conversation": "alice"}));

    let r = d.ok(
        "send",
        json!({"to": "alice", "text": "a reply", "replyTo": ping_id}),
    );
    assert_eq!(r["sent"], json!(true));
    let file = tmp.path().join("report.txt");
    std::fs::write(&file, "daily report").unwrap();
    d.ok(
        "send",
        json!({"to": "alice", "file": file, "text": "the report"}),
    );
    let got = receive_until(&alice, |v| v["text"] == json!("the report"));
    assert!(got.to_string().contains("report.txt"), "{got}");

    d.ok("sendTyping", json!({"conversation": "alice"}));
    d.ok("sendTyping", json!({"conversation": "alice", "stop": true}));

    // Conversation features: edit, delete, timer, blocking, settings, view once.
    let r = d.ok("send", json!({"to": "alice", "text": "teh typo"}));
    let own = r["id"].as_str().unwrap().to_string();
    d.ok("editMessage", json!({"id": own, "text": "the typo"}));
    let got = receive_until(&alice, |v| v["type"] == json!("edit"));
    assert_eq!(
        (&got["message_id"], &got["text"]),
        (&json!(own), &json!("the typo"))
    );
    let r = d.ok("remoteDelete", json!({"id": own}));
    assert_eq!(r["scope"], json!("everyone"));
    receive_until(&alice, |v| {
        v["type"] == json!("delete") && v["message_id"] == json!(own)
    });
    assert_eq!(
        d.call("remoteDelete", json!({"id": own}))["error"]["code"],
        json!(-32002)
    );
    let r = d.ok("setTimer", json!({"conversation": "alice", "timer": "1h"}));
    assert_eq!(r["timer"], json!("1h"));
    let got = receive_until(&alice, |v| v["type"] == json!("timer"));
    assert_eq!(got["timer"], json!("1h"));
    d.ok("setTimer", json!({"conversation": "alice", "timer": "off"}));
    assert_eq!(
        d.call("setTimer", json!({"conversation": "alice", "timer": "1y"}))["error"]["code"],
        json!(-32602)
    );
    assert_eq!(d.ok("listRequests", json!({})), json!([]));
    d.ok("block", json!({"handle": "carol"}));
    assert_eq!(d.ok("listBlocked", json!({})), json!(["carol"]));
    d.ok("unblock", json!({"handle": "carol"}));
    assert_eq!(d.ok("listBlocked", json!({})), json!([]));
    let s = d.ok("updateSettings", json!({"presence": "everyone"}));
    assert_eq!(s["presence"], json!("everyone"));
    assert_eq!(d.ok("getSettings", json!({})), s);
    assert_ok(&hushwire(
        &alice,
        &["send", "bob", "only once", "--view-once"],
    ));
    let e = d.event(|p| p["type"] == json!("message") && p["viewOnce"] == json!(true));
    assert!(e["text"].is_null(), "{e}");
    let r = d.ok("openViewOnce", json!({"id": e["id"]}));
    assert_eq!(
        (&r["from"], &r["text"]),
        (&json!("alice"), &json!("only once"))
    );
    assert_eq!(
        d.call("openViewOnce", json!({"id": e["id"]}))["error"]["code"],
        json!(-32003)
    );

    let r = d.ok(
        "createGroup",
        json!({"title": "ops", "members": ["alice", "carol"]}),
    );
    assert_eq!(r["conversation"], json!("#ops"));
    d.ok(
        "updateGroup",
        json!({"group": "#ops", "promote": ["carol"], "remove": ["alice"]}),
    );
    let g = d.ok("getGroup", json!({"group": "#ops"}));
    let members: Vec<(String, bool)> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["handle"].as_str().unwrap().to_string(),
                m["admin"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(members, vec![("bob".into(), true), ("carol".into(), true)]);
    d.ok(
        "updateGroup",
        json!({"group": "#ops", "demote": ["carol"], "add": ["alice"]}),
    );
    let groups = d.ok("listGroups", json!({}));
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(
        groups[0]["members"].as_array().unwrap().len(),
        3,
        "{groups}"
    );
    d.ok("quitGroup", json!({"group": "#ops"}));
    assert_eq!(
        d.ok("getGroup", json!({"group": "#ops"}))["leaving"],
        json!(true)
    );

    let devices = d.ok("listDevices", json!({}));
    assert_eq!(devices.as_array().unwrap().len(), 1);

    assert_eq!(d.call("nope", json!({}))["error"]["code"], json!(-32601));
    assert_eq!(d.call("history", json!({}))["error"]["code"], json!(-32602));
    // A parse error answers with id null; the daemon keeps going.
    let stdin = d.stdin.as_mut().unwrap();
    writeln!(stdin, "{{oops").unwrap();
    stdin.flush().unwrap();
    let v = loop {
        let v = d.next();
        if v["method"] != json!("receive") {
            break v;
        }
    };
    assert_eq!(v["error"]["code"], json!(-32700));
    assert!(d.ok("version", json!({}))["version"].is_string());

    // stdin closing ends the daemon cleanly.
    drop(d.stdin.take());
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn socket_and_http_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let bob = tmp.path().join("bob");
    register(&bob, "bob", &server);
    let sock = tmp.path().join("bob.sock");
    let mut child = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
        .arg("--profile")
        .arg(&bob)
        .args(["daemon", "--http", "127.0.0.1:0", "--socket"])
        .arg(&sock)
        .env_remove("HUSHWIRE_DAEMON_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut http, mut socket) = (None, false);
    while http.is_none() || !socket {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the daemon exited"
        );
        if let Some(rest) = line.trim().strip_prefix("listening: http://") {
            http = Some(rest.trim_end_matches("/api/v1/rpc").to_string());
        } else if line.trim() == format!("listening: {}", sock.display()) {
            socket = true;
        }
    }
    // Socket: a line in, a line out.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    writeln!(
        s,
        r#"{{"jsonrpc":"2.0","id":7,"method":"listConversations"}}"#
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let v = loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["method"] != json!("receive") {
            break v;
        }
    };
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": 7, "result": []}));
    // HTTP on loopback: no token needed.
    let addr = http.unwrap();
    let mut t = std::net::TcpStream::connect(&addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    write!(t, "GET /api/v1/check HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    t.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains(r#""ok":true"#), "{out}");
    // SIGTERM: the socket file goes.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
}

#[test]
fn events_survive_sigkill() {
    const N: usize = 12;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    let mut d = Daemon::start(&bob, &[]);
    // Messages arrive while the daemon is killed.
    let sender = {
        let alice = alice.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                assert_ok(&hushwire(&alice, &["send", "bob", &format!("m{i}")]));
            }
        })
    };
    let mut seqs: HashMap<String, HashSet<u64>> = HashMap::new();
    let note = |p: &Value, seqs: &mut HashMap<String, HashSet<u64>>| {
        if p["type"] == json!("message") {
            seqs.entry(p["text"].as_str().unwrap().to_string())
                .or_default()
                .insert(p["seq"].as_u64().unwrap());
        }
    };
    let e = d.event(|p| p["type"] == json!("message") && p["text"] == json!("m2"));
    note(&e, &mut seqs);
    for p in &d.notifications {
        note(p, &mut seqs);
    }
    d.kill9();
    sender.join().unwrap();
    // Restarted, it reports everything it had not, in order of the queue.
    let mut d = Daemon::start(&bob, &[]);
    while (0..N).any(|i| !seqs.contains_key(&format!("m{i}"))) {
        let v = d.next();
        assert_eq!(v["method"], json!("receive"), "{v}");
        note(&v["params"], &mut seqs);
    }
    // Each message was queued once (one seq), whatever was delivered twice.
    for (text, s) in &seqs {
        assert_eq!(s.len(), 1, "{text} queued as {s:?}");
    }
    let out = hushwire(&bob, &["history", "alice", "--json"]);
    assert_ok(&out);
    assert_eq!(json_lines(&out.stdout).len(), N);
}
