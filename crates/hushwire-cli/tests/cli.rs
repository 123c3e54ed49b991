//! Runs the built `hushwire` binary: a real server process on 127.0.0.1 and client
//! commands in temporary profiles.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hushwire");
/// The passphrase the test profiles are encrypted at rest under.
const PASSPHRASE: &str = "test passphrase";

/// A `hushwire serve` child process, stopped with SIGTERM on drop.
struct Server {
    child: Option<Child>,
    url: String,
    pin: String,
}

impl Server {
    /// Starts `hushwire serve` on `listen` with `data` and waits for its url and pin.
    fn start(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hushwire serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut pin = None;
        while url.is_none() || pin.is_none() {
            let line = lines
                .next()
                .expect("serve exited before printing url and pin")
                .unwrap();
            if let Some(u) = line.strip_prefix("url: ") {
                url = Some(u.to_string());
            } else if let Some(p) = line.strip_prefix("pin: ") {
                pin = Some(p.to_string());
            }
        }
        Server {
            child: Some(child),
            url: url.unwrap(),
            pin: pin.unwrap(),
        }
    }

    /// Sends SIGTERM and returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn hushwire(profile: &Path, args: &[&str]) -> Output {
    hushwire_stdin(profile, args, None)
}

fn hushwire_stdin(profile: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HUSHWIRE_PROFILE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn register(profile: &Path, handle: &str, server: &Server) {
    let o = hushwire(
        profile,
        &[
            "register",
            handle,
            "--server",
            &server.url,
            "--pin",
            &server.pin,
        ],
    );
    assert_code(&o, 0);
}

/// `send`, returning the message id from the last line of stdout.
fn send(profile: &Path, to: &str, text: &str, expect: i32) -> String {
    let o = hushwire(profile, &["send", to, text]);
    assert_code(&o, expect);
    last_line(&o)
}

fn last_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .last()
        .expect("some stdout")
        .trim()
        .to_string()
}

/// `receive --json` without the notifications about conversations (message requests,
/// receipts: see `conversation_features`), which these tests do not look at.
fn receive_json(profile: &Path) -> Vec<Value> {
    receive_json_all(profile)
        .into_iter()
        .filter(|v| v["type"] != "request" && v["type"] != "receipt")
        .collect()
}

/// Every line of `receive --json`.
fn receive_json_all(profile: &Path) -> Vec<Value> {
    let o = hushwire(profile, &["receive", "--json"]);
    assert_code(&o, 0);
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

struct Env {
    _root: tempfile::TempDir,
    server_data: PathBuf,
    alice: PathBuf,
    bob: PathBuf,
}

fn env() -> Env {
    let root = tempfile::tempdir().unwrap();
    Env {
        server_data: root.path().join("server"),
        alice: root.path().join("alice"),
        bob: root.path().join("bob"),
        _root: root,
    }
}

#[test]
fn serve_prints_url_and_pin_then_stops_cleanly_on_sigterm() {
    let e = env();
    let mut server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let hex = server.pin.strip_prefix("sha256:").expect("sha256: pin");
    assert_eq!(hex.len(), 64);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{status:?}");

    // Restarting on the same data directory keeps the key, hence the pin.
    let again = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    assert_eq!(again.pin, server.pin);
}

#[test]
fn register_send_receive_between_two_profiles() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);

    let o = hushwire(&e.alice, &["whoami"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("handle: alice"), "{}", stdout(&o));

    let id1 = send(&e.alice, "bob", "hello bob, this is alice", 0);
    assert!(is_uuid(&id1), "{id1:?}");
    let id2 = send(&e.alice, "bob", "second one", 0);

    let got = receive_json(&e.bob);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["type"], "message");
    assert_eq!(got[0]["id"], id1.as_str());
    assert_eq!(got[0]["conversation"], "alice");
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["text"], "hello bob, this is alice");
    assert!(got[0]["sent_at"].as_str().unwrap().contains('T'));
    assert_eq!(got[1]["id"], id2.as_str());
    // Acknowledged: nothing is delivered twice.
    assert!(receive_json(&e.bob).is_empty());

    // Reply with the text on stdin.
    let o = hushwire_stdin(&e.bob, &["send", "alice", "-"], Some("hi alice\n"));
    assert_code(&o, 0);
    let reply = last_line(&o);
    let got = receive_json(&e.alice);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], reply.as_str());
    assert_eq!(got[0]["from"], "bob");
    assert_eq!(got[0]["text"], "hi alice");

    let o = hushwire(&e.alice, &["history", "bob", "--json"]);
    assert_code(&o, 0);
    let history: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["hello bob, this is alice", "second one", "hi alice"]
    );
    assert_eq!(history[0]["from"], "alice");
    assert_eq!(history[0]["conversation"], "bob");

    let o = hushwire(&e.bob, &["conversations"]);
    assert_code(&o, 0);
    assert!(stdout(&o).starts_with("alice"), "{}", stdout(&o));

    // Human output.
    send(&e.alice, "bob", "plain text please", 0);
    let o = hushwire(&e.bob, &["receive"]);
    assert_code(&o, 0);
    let line = stdout(&o);
    assert!(
        line.starts_with('[') && line.trim_end().ends_with("] alice: plain text please"),
        "{line}"
    );
}

/// New conversations use X-Wing unless the profile (at registration) or the first
/// `send` chooses the classic suite; the receiving side follows the starter's choice.
#[test]
fn ciphersuite_can_be_chosen() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);
    let carol = e.alice.parent().unwrap().join("carol");
    let o = hushwire(
        &carol,
        &[
            "register",
            "carol",
            "--server",
            &server.url,
            "--pin",
            &server.pin,
            "--suite",
            "classic",
        ],
    );
    assert_code(&o, 0);

    send(&e.alice, "bob", "post-quantum by default", 0);
    let o = hushwire_stdin(
        &e.bob,
        &["send", "carol", "classic by choice", "--suite", "classic"],
        None,
    );
    assert_code(&o, 0);
    send(&carol, "alice", "classic by profile", 0);
    for p in [&e.alice, &e.bob, &carol] {
        hushwire(p, &["sync"]);
    }
    let suites = |p: &Path| -> Vec<(String, String)> {
        let o = hushwire(p, &["conversations", "--json"]);
        assert_code(&o, 0);
        let mut v: Vec<(String, String)> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|c| {
                (
                    c["name"].as_str().unwrap().into(),
                    c["suite"].as_str().unwrap().into(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        suites(&e.alice),
        [pair("bob", "xwing"), pair("carol", "classic")]
    );
    assert_eq!(
        suites(&e.bob),
        [pair("alice", "xwing"), pair("carol", "classic")]
    );
    assert_eq!(
        suites(&carol),
        [pair("alice", "classic"), pair("bob", "classic")]
    );
}

#[test]
fn user_errors_exit_1() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    // Not registered.
    assert_code(&hushwire(&e.alice, &["send", "bob", "hi"]), 1);
    assert_code(&hushwire(&e.alice, &["whoami"]), 1);
    // Bad arguments and handles.
    assert_code(&hushwire(&e.alice, &["send"]), 1);
    assert_code(
        &hushwire(
            &e.alice,
            &[
                "register",
                "A!",
                "--server",
                &server.url,
                "--pin",
                &server.pin,
            ],
        ),
        1,
    );
    register(&e.alice, "alice", &server);
    // Taken handle.
    let o = hushwire(
        &e.bob,
        &[
            "register",
            "alice",
            "--server",
            &server.url,
            "--pin",
            &server.pin,
        ],
    );
    assert_code(&o, 1);
    assert!(stderr(&o).contains("taken"), "{}", stderr(&o));
    // Unknown recipient: refused, nothing queued.
    let o = hushwire(&e.alice, &["send", "nobody", "hi"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("nobody"), "{}", stderr(&o));
    assert_code(&hushwire(&e.alice, &["history", "nobody"]), 1);
}

#[test]
fn register_with_wrong_pin_fails_clearly() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let o = hushwire(
        &e.alice,
        &[
            "register",
            "alice",
            "--server",
            &server.url,
            "--pin",
            &wrong,
        ],
    );
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("does not match the pin"), "{err}");
    assert!(err.contains(&wrong) && err.contains(&server.pin), "{err}");
    // No identity was created; the right pin still works.
    assert_code(&hushwire(&e.alice, &["whoami"]), 1);
    register(&e.alice, "alice", &server);
}

#[test]
fn send_while_server_down_stays_queued_and_is_delivered_once() {
    let e = env();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&e.server_data, &listen, &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);
    // An existing conversation, then the server goes away.
    let first = send(&e.alice, "bob", "before the outage", 0);
    assert_eq!(server.stop().code(), Some(0));

    let o = hushwire(&e.alice, &["send", "bob", "during the outage"]);
    assert_code(&o, 3);
    let queued = last_line(&o);
    assert!(is_uuid(&queued), "{queued:?}");
    assert!(stderr(&o).contains("queued"), "{}", stderr(&o));
    let o = hushwire(&e.alice, &["history", "bob"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("during the outage  (queued)"),
        "{}",
        stdout(&o)
    );
    // Receiving fails the same way.
    assert_code(&hushwire(&e.bob, &["receive"]), 3);

    let _server = Server::start(&e.server_data, &listen, &[]);
    assert_code(&hushwire(&e.alice, &["sync"]), 0);
    let o = hushwire(&e.alice, &["history", "bob"]);
    assert!(!stdout(&o).contains("(queued)"), "{}", stdout(&o));
    // A second sync has nothing left to send.
    assert_code(&hushwire(&e.alice, &["sync"]), 0);
    let later = send(&e.alice, "bob", "after the outage", 0);

    let got = receive_json(&e.bob);
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [first.as_str(), queued.as_str(), later.as_str()],
        "{got:?}"
    );
    assert_eq!(got[1]["text"], "during the outage");
}

#[test]
fn demo_runs_and_finds_no_plaintext() {
    let o = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .arg("demo")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("plaintext found: no"), "{out}");
    assert!(out.contains("bob received from alice: Hi Bob!"), "{out}");
    assert!(out.contains("alice received from bob:"), "{out}");
}

#[test]
fn help_lists_every_command() {
    let o = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .arg("--help")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    for cmd in [
        "serve",
        "admin",
        "register",
        "send",
        "receive",
        "sync",
        "history",
        "conversations",
        "whoami",
        "demo",
        "read",
        "react",
        "reply",
        "edit",
        "delete",
        "view",
        "timer",
        "typing",
        "presence",
        "requests",
        "accept",
        "decline",
        "block",
        "unblock",
        "settings",
        "passphrase",
        "device",
        "link",
        "chat",
        "app",
        "daemon",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from:\n{out}");
    }
}

#[test]
fn invite_only_server_needs_an_admin_invite() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &["--registration", "invite"]);
    let o = hushwire(
        &e.alice,
        &[
            "register",
            "alice",
            "--server",
            &server.url,
            "--pin",
            &server.pin,
        ],
    );
    assert_code(&o, 1);
    assert!(stderr(&o).contains("invite"), "{}", stderr(&o));
    let o = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .args(["admin", "invite", "--data"])
        .arg(&e.server_data)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let code = last_line(&o);
    let o = hushwire(
        &e.alice,
        &[
            "register",
            "alice",
            "--server",
            &server.url,
            "--pin",
            &server.pin,
            "--invite",
            &code,
        ],
    );
    assert_code(&o, 0);
}

#[test]
fn receive_waits_for_live_messages_and_acks_on_sigterm() {
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);
    send(&e.alice, "bob", "first", 0);

    let mut bob = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .arg("--profile")
        .arg(&e.bob)
        .args(["receive", "--json", "--timeout", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(bob.stdout.take().unwrap()).lines();
    // The next message line (a first message from alice comes after its request line).
    let mut next_message = || loop {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["type"] == "message" {
            return v;
        }
    };
    let first = next_message();
    assert_eq!(first["text"], "first");
    // bob is now connected and waiting: this one is pushed live.
    let id = send(&e.alice, "bob", "live one", 0);
    let live = next_message();
    assert_eq!(live["id"], id.as_str());
    assert_eq!(live["text"], "live one");

    let status = Command::new("kill")
        .args(["-TERM", &bob.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(bob.wait().unwrap().code(), Some(0));
    // Both were acknowledged before exiting.
    assert!(receive_json(&e.bob).is_empty());
}

/// The group commands end to end through the binary: create, send and receive with
/// `#TITLE`, membership events in `receive --json` and `history --json`, members,
/// promote, rename, remove, leave, and the admin check.
#[test]
fn group_commands() {
    let e = env();
    let carol = e._root.path().join("carol");
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);
    register(&carol, "carol", &server);

    let o = hushwire(
        &e.alice,
        &["group", "create", "Trip", "--members", "bob,carol"],
    );
    assert_code(&o, 0);
    assert_eq!(last_line(&o), "#Trip");
    send(&e.alice, "#Trip", "hello group", 0);
    let got = receive_json(&e.bob);
    let added = got
        .iter()
        .find(|v| v["type"] == "group")
        .expect("an added event");
    assert_eq!(added["event"], "added");
    assert_eq!(added["conversation"], "#Trip");
    assert_eq!(added["by"], "alice");
    let msg = got.iter().find(|v| v["type"] == "message").unwrap();
    assert_eq!(msg["conversation"], "#Trip");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["text"], "hello group");

    // bob is no admin: refused locally with a user error.
    let o = hushwire(&e.bob, &["group", "remove", "#Trip", "carol"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("admin"), "{}", stderr(&o));
    let o = hushwire(&e.alice, &["group", "promote", "#Trip", "bob"]);
    assert_code(&o, 0);
    let o = hushwire(&e.alice, &["group", "rename", "#Trip", "Holiday"]);
    assert_code(&o, 0);
    let got = receive_json(&e.bob);
    let events: Vec<&str> = got
        .iter()
        .filter(|v| v["type"] == "group")
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["promoted", "renamed"], "{got:?}");
    let o = hushwire(&e.bob, &["group", "members", "#Holiday", "--json"]);
    assert_code(&o, 0);
    let v: Value = serde_json::from_str(&last_line(&o)).unwrap();
    assert_eq!(v["title"], "Holiday");
    let admins: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["admin"] == true)
        .map(|m| m["handle"].as_str().unwrap())
        .collect();
    assert_eq!(admins, ["alice", "bob"]);

    // bob, now an admin, removes carol; carol sees it and is locked out.
    let o = hushwire(&e.bob, &["group", "remove", "#Holiday", "carol"]);
    assert_code(&o, 0);
    send(&e.bob, "#Holiday", "without carol", 0);
    let got = receive_json(&carol);
    assert!(
        got.iter()
            .any(|v| v["event"] == "removed" && v["handles"][0] == "carol"),
        "{got:?}"
    );
    assert!(!got.iter().any(|v| v["text"] == "without carol"), "{got:?}");
    let o = hushwire(&carol, &["send", "#Holiday", "am I still here?"]);
    assert_code(&o, 1);

    // bob leaves; alice's client commits it.
    let o = hushwire(&e.bob, &["group", "leave", "#Holiday"]);
    assert_code(&o, 0);
    receive_json(&e.alice);
    let o = hushwire(&e.alice, &["history", "#Holiday", "--json"]);
    assert_code(&o, 0);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "group")
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["added", "promoted", "renamed", "removed", "left"],
        "{lines:?}"
    );
    let texts: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello group", "without carol"]);
    let o = hushwire(&e.alice, &["group", "members", "#Holiday"]);
    assert_code(&o, 0);
    assert!(!stdout(&o).contains("bob"), "{}", stdout(&o));
}

/// `relay share` sends a relay link end-to-end encrypted; the receiver sees it in
/// `receive --json` and `history`, and it joins the routes only on `relay add-shared`.
#[test]
fn relay_share_then_add_shared() {
    const LINK: &str = "hushwire-relay://relay.example.org:8443?s=Zk3pQ9vT2mW8xY4rB7nC1d&pin=\
                        00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let e = env();
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);

    // Without a LINK and without relays of its own, alice has nothing to share.
    let o = hushwire(&e.alice, &["relay", "share", "bob"]);
    assert_code(&o, 1);
    let o = hushwire(&e.alice, &["relay", "share", "bob", "not a link"]);
    assert_code(&o, 1);
    let o = hushwire(&e.alice, &["relay", "add", LINK]);
    assert_code(&o, 0);
    let o = hushwire(&e.alice, &["relay", "share", "bob"]);
    assert_code(&o, 0);
    let id = last_line(&o);
    assert!(is_uuid(&id), "{id:?}");
    assert!(
        !stderr(&o).contains("Zk3pQ9vT2mW8xY4rB7nC1d"),
        "{}",
        stderr(&o)
    );

    let got = receive_json(&e.bob);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "relay_link");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["conversation"], "alice");
    assert_eq!(got[0]["relay"], "relay.example.org:8443");
    assert_eq!(got[0]["link"], LINK);

    // Not added by itself.
    let o = hushwire(&e.bob, &["relay", "list"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).starts_with("direct"), "{}", stdout(&o));
    let o = hushwire(&e.bob, &["history", "alice"]);
    assert_code(&o, 0);
    let line = stdout(&o);
    assert!(
        line.contains("alice shared a relay: relay.example.org:8443")
            && line.contains(&format!("relay add-shared {id}"))
            && !line.contains("Zk3pQ9vT2mW8xY4rB7nC1d"),
        "{line}"
    );

    let o = hushwire(
        &e.bob,
        &[
            "relay",
            "add-shared",
            "0190b5d2-0000-7000-8000-000000000000",
        ],
    );
    assert_code(&o, 1);
    let o = hushwire(&e.bob, &["relay", "add-shared", &id]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("added relay relay.example.org:8443 (shared by alice)"));
    let o = hushwire(&e.bob, &["relay", "list", "--links"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("direct"), "{lines:?}");
    assert_eq!(lines[1], format!("relay {LINK}"));
}

fn lines_of(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn of_type<'a>(got: &'a [Value], t: &str) -> Vec<&'a Value> {
    got.iter().filter(|v| v["type"] == t).collect()
}

/// The conversation features' CLI contract (issue 7): requests, receipts, reactions,
/// replies, edits, deletes, timers, view once, blocking, settings, typing, presence.
#[test]
fn conversation_features() {
    let e = env();
    let carol = e._root.path().join("carol");
    let server = Server::start(&e.server_data, "127.0.0.1:0", &[]);
    register(&e.alice, "alice", &server);
    register(&e.bob, "bob", &server);
    register(&carol, "carol", &server);

    let id1 = send(&e.alice, "bob", "hi bob", 0);
    let id2 = send(&e.alice, "bob", "are you there?", 0);
    let got = receive_json_all(&e.bob);
    assert_eq!(got[0]["type"], "request", "{got:?}");
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(of_type(&got, "message").len(), 2);
    let o = hushwire(&e.bob, &["requests", "--json"]);
    assert_code(&o, 0);
    let reqs = lines_of(&o);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0]["from"].as_str(), reqs[0]["messages"].as_u64()),
        (Some("alice"), Some(2))
    );
    // No receipt goes to a requester.
    assert!(of_type(&receive_json_all(&e.alice), "receipt").is_empty());

    assert_code(&hushwire(&e.bob, &["accept", "alice"]), 0);
    assert!(lines_of(&hushwire(&e.bob, &["requests", "--json"])).is_empty());
    let got = receive_json_all(&e.alice);
    let receipts = of_type(&got, "receipt");
    assert_eq!(receipts.len(), 2, "{got:?}");
    assert_eq!(receipts[0]["status"], "delivered");
    assert_eq!(receipts[0]["message_id"], id1.as_str());
    assert_eq!(receipts[0]["from"], "bob");

    assert_code(&hushwire(&e.bob, &["read", "alice"]), 0);
    assert_code(&hushwire(&e.bob, &["react", &id1, "👍"]), 0);
    let o = hushwire(&e.bob, &["reply", &id1, "yes, here"]);
    assert_code(&o, 0);
    let reply = last_line(&o);
    assert!(is_uuid(&reply), "{reply:?}");
    let got = receive_json_all(&e.alice);
    let read: Vec<&str> = of_type(&got, "receipt")
        .iter()
        .filter(|r| r["status"] == "read")
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(read, [id1.as_str(), id2.as_str()]);
    let reaction = of_type(&got, "reaction");
    assert_eq!(reaction.len(), 1);
    assert_eq!(
        (
            reaction[0]["message_id"].as_str(),
            reaction[0]["emoji"].as_str(),
            reaction[0]["from"].as_str()
        ),
        (Some(id1.as_str()), Some("👍"), Some("bob"))
    );
    let msg = of_type(&got, "message");
    assert_eq!(msg[0]["id"], reply.as_str());
    assert_eq!(msg[0]["reply_to"], id1.as_str());

    // Edits and deletes: the author's only.
    assert_code(&hushwire(&e.alice, &["edit", &id1, "hi bob (edited)"]), 0);
    let o = hushwire(&e.bob, &["edit", &id2, "not mine"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("author"), "{}", stderr(&o));
    assert_code(&hushwire(&e.bob, &["react", "not-an-id", "👍"]), 1);
    let got = receive_json_all(&e.bob);
    let edit = of_type(&got, "edit");
    assert_eq!(
        (edit[0]["message_id"].as_str(), edit[0]["text"].as_str()),
        (Some(id1.as_str()), Some("hi bob (edited)"))
    );
    // history --json: current text, reactions, receipt status.
    let o = hushwire(&e.alice, &["history", "bob", "--json"]);
    assert_code(&o, 0);
    let history = lines_of(&o);
    let first = history.iter().find(|m| m["id"] == id1.as_str()).unwrap();
    assert_eq!(first["text"], "hi bob (edited)");
    assert!(first["edited_at"].is_string());
    assert_eq!(first["reactions"][0]["emoji"], "👍");
    assert_eq!(first["status"], "read");
    assert_eq!(first["receipts"][0]["member"], "bob");
    assert_code(&hushwire(&e.alice, &["delete", &id2]), 0);
    let got = receive_json_all(&e.bob);
    let del = of_type(&got, "delete");
    assert_eq!(del[0]["message_id"], id2.as_str());
    let o = hushwire(&e.bob, &["history", "alice", "--json"]);
    assert!(!stdout(&o).contains(&id2), "{}", stdout(&o));

    // Disappearing-messages timer.
    assert_code(&hushwire(&e.alice, &["timer", "bob", "1s"]), 1);
    assert_code(&hushwire(&e.alice, &["timer", "bob", "1h"]), 0);
    let got = receive_json_all(&e.bob);
    let timer = of_type(&got, "timer");
    assert_eq!(
        (timer[0]["timer"].as_str(), timer[0]["by"].as_str()),
        (Some("1h"), Some("alice"))
    );
    let o = hushwire(&e.bob, &["conversations", "--json"]);
    assert!(stdout(&o).contains("\"timer\":\"1h\""), "{}", stdout(&o));
    let later = send(&e.alice, "bob", "gone in an hour", 0);
    let got = receive_json_all(&e.bob);
    let m = of_type(&got, "message");
    assert_eq!(m[0]["id"], later.as_str());
    assert!(m[0]["expires_at"].is_string());
    assert_code(&hushwire(&e.alice, &["timer", "bob", "off"]), 0);

    // View once.
    let o = hushwire(&e.alice, &["send", "bob", "look once", "--view-once"]);
    assert_code(&o, 0);
    let once = last_line(&o);
    let got = receive_json_all(&e.bob);
    let m = of_type(&got, "message");
    let m = m.iter().find(|m| m["id"] == once.as_str()).unwrap();
    assert_eq!(
        (m["view_once"].as_bool(), m["text"].is_null()),
        (Some(true), true)
    );
    let o = hushwire(&e.bob, &["view", &once]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("look once"), "{}", stdout(&o));
    assert_code(&hushwire(&e.bob, &["view", &once]), 1);

    // Typing and presence (alice is offline: bob learns nothing, cleanly).
    assert_code(&hushwire(&e.bob, &["typing", "alice"]), 0);
    let o = hushwire(&e.bob, &["presence", "alice", "--timeout", "1", "--json"]);
    assert_code(&o, 0);
    assert_eq!(lines_of(&o).last().unwrap()["type"], "presence");

    // Blocking a stranger.
    send(&carol, "bob", "buy my stuff", 0);
    assert_code(&hushwire(&e.bob, &["block", "carol"]), 0);
    send(&carol, "bob", "really, buy it", 0);
    let got = receive_json_all(&e.bob);
    assert!(!got.iter().any(|v| v["from"] == "carol"), "{got:?}");
    assert!(lines_of(&hushwire(&e.bob, &["requests", "--json"])).is_empty());
    let o = hushwire(&e.bob, &["settings"]);
    assert!(stdout(&o).contains("blocked: carol"), "{}", stdout(&o));
    assert_code(&hushwire(&e.bob, &["unblock", "carol"]), 0);
    assert_code(&hushwire(&e.bob, &["unblock", "carol"]), 1);

    // Settings.
    let o = hushwire(&e.bob, &["settings", "read-receipts", "off"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("read-receipts: off"), "{}", stdout(&o));
    let o = hushwire(&e.bob, &["settings", "presence", "nobody"]);
    assert!(stdout(&o).contains("presence: nobody"), "{}", stdout(&o));
    assert_code(&hushwire(&e.bob, &["presence", "alice"]), 1);
    assert_code(&hushwire(&e.bob, &["settings", "presence", "sometimes"]), 1);
}
