//! Crash consistency of the real binaries: a `hushwire serve` process killed with SIGKILL
//! at random moments under sustained traffic and restarted on the same port and data
//! directory; and `hushwire daemon` clients killed at random moments (between receiving
//! and acknowledging, in the middle of sending) and restarted on the same profile.
//!
//! Knobs: `HUSHWIRE_CRASH_SEED` (default [`DEFAULT_SEED`]), `HUSHWIRE_CRASH_KILLS` (server
//! kills, default 20), `HUSHWIRE_CRASH_CLIENT_KILLS` (client kills, default 12). A failure
//! prints them; rerun with the same values to replay the same kill schedule (the traffic
//! races the kills, so a replay is close, not identical).
//!
//! What passes: every message whose `send` was answered (sent, or queued in the outbox)
//! reaches every other member of its conversation exactly once as the user sees it (the
//! daemon's events deduplicated by `seq` as documented, and the profile's history), in
//! each sender's order; one whose sending daemon was killed before answering arrives at
//! most once. And the conversations still work afterwards: a message round, a commit
//! adding a member to the group, a message the new member reads.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{BIN, assert_ok, hushwire};

const DEFAULT_SEED: u64 = 0x4855_5348_5749_5245; // "HUSHWIRE"
const DEFAULT_KILLS: u64 = 20;
const DEFAULT_CLIENT_KILLS: u64 = 12;
/// Bound for one RPC answer (a send retries within the client's own 30 s deadline).
const RPC_WAIT: Duration = Duration::from_secs(90);
/// Bound for everything to arrive once the server stays up.
const SETTLE: Duration = Duration::from_secs(120);
/// Messages per sender and conversation at most (history returns 1000 entries at most).
const MAX_PER_STREAM: u64 = 250;
/// The group's title (its conversation is `#crash`).
const GROUP: &str = "#crash";

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// SplitMix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// The last `n` lines of a log file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// A `hushwire serve` process that can be SIGKILLed and restarted on the same port and
/// data directory (so the same URL and pin).
struct ServerProc {
    child: Option<Child>,
    data: PathBuf,
    listen: String,
    url: String,
    pin: String,
    log: PathBuf,
    starts: usize,
}

impl ServerProc {
    fn start(data: &Path, log: &Path) -> ServerProc {
        let mut s = ServerProc {
            child: None,
            data: data.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            url: String::new(),
            pin: String::new(),
            log: log.to_path_buf(),
            starts: 0,
        };
        s.spawn();
        let port = s
            .url
            .strip_prefix("https://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected url {}", s.url));
        s.listen = format!("127.0.0.1:{port}");
        s
    }

    /// Starts the process and waits for its url and pin (a few tries: the port may
    /// briefly still be held by the killed process's sockets).
    fn spawn(&mut self) {
        assert!(self.child.is_none());
        for attempt in 0..20 {
            self.starts += 1;
            writeln!(
                log_file(&self.log),
                "=== start #{} (attempt {attempt}) ===",
                self.starts
            )
            .unwrap();
            let mut child = Command::new(BIN)
                .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
                .args(["serve", "--listen", &self.listen, "--data"])
                .arg(&self.data)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file(&self.log))
                .spawn()
                .expect("spawn hushwire serve");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let (mut url, mut pin) = (None, None);
            while url.is_none() || pin.is_none() {
                let Some(Ok(line)) = lines.next() else { break };
                if let Some(u) = line.strip_prefix("url: ") {
                    url = Some(u.to_string());
                } else if let Some(p) = line.strip_prefix("pin: ") {
                    pin = Some(p.to_string());
                }
            }
            if let (Some(url), Some(pin)) = (url, pin) {
                if !self.url.is_empty() {
                    assert_eq!(url, self.url, "the restarted server has another url");
                    assert_eq!(pin, self.pin, "the restarted server has another pin");
                }
                self.url = url;
                self.pin = pin;
                self.child = Some(child);
                return;
            }
            let status = child.wait().unwrap();
            writeln!(log_file(&self.log), "=== exited early: {status} ===").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the server did not start; its log ends:\n{}",
            tail(&self.log, 40)
        );
    }

    fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// A `hushwire daemon` child on one profile, speaking JSON-RPC on stdio. Its `receive`
/// notifications go to `events` (shared by every daemon run on the same profile).
struct Daemon {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    responses: Mutex<mpsc::Receiver<Value>>,
    next_id: AtomicU64,
}

/// The daemon died (was killed) before answering.
#[derive(Debug)]
struct Died;

impl Daemon {
    fn start(profile: &Path, log: &Path, events: Arc<Mutex<Vec<Value>>>) -> Daemon {
        let mut child = Command::new(BIN)
            .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
            .arg("--profile")
            .arg(profile)
            .arg("daemon")
            .env_remove("HUSHWIRE_PROFILE")
            .env_remove("HUSHWIRE_DAEMON_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON on stdout: {line:?}: {e}"));
                if v["method"] == json!("receive") {
                    events.lock().unwrap().push(v["params"].clone());
                } else if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Daemon {
            stdin: Mutex::new(child.stdin.take()),
            child: Mutex::new(child),
            responses: Mutex::new(rx),
            next_id: AtomicU64::new(1),
        }
    }

    /// One request and its answer (result or error object); [`Died`] if the process
    /// ended first.
    fn try_call(&self, method: &str, params: Value) -> Result<Value, Died> {
        let responses = self.responses.lock().unwrap();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut stdin = self.stdin.lock().unwrap();
            let stdin = stdin.as_mut().ok_or(Died)?;
            let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            writeln!(stdin, "{req}").map_err(|_| Died)?;
            stdin.flush().map_err(|_| Died)?;
        }
        match responses.recv_timeout(RPC_WAIT) {
            Ok(v) => {
                assert_eq!(v["id"], json!(id), "{v}");
                Ok(v)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Died),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{method}: no answer from the daemon in {RPC_WAIT:?}")
            }
        }
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        let v = self
            .try_call(method, params)
            .unwrap_or_else(|_| panic!("{method}: the daemon died"));
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// SIGKILL, whatever it is doing.
    fn sigkill(&self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Closing stdin ends a stdio daemon cleanly.
        drop(self.stdin.lock().unwrap().take());
        let child = self.child.get_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One user: a profile, its current daemon, and every event its daemons reported.
struct User {
    handle: &'static str,
    profile: PathBuf,
    log: PathBuf,
    events: Arc<Mutex<Vec<Value>>>,
    daemon: Mutex<Option<Arc<Daemon>>>,
    /// Daemon starts on this profile.
    starts: AtomicU64,
}

impl User {
    fn new(root: &Path, handle: &'static str) -> User {
        User {
            handle,
            profile: root.join(handle),
            log: root.join(format!("{handle}.log")),
            events: Arc::default(),
            daemon: Mutex::new(None),
            starts: AtomicU64::new(0),
        }
    }

    fn register(&self, server: &ServerProc) {
        assert_ok(&hushwire(
            &self.profile,
            &[
                "register",
                self.handle,
                "--server",
                &server.url,
                "--pin",
                &server.pin,
            ],
        ));
    }

    /// Starts a daemon on the profile (replacing a dead one).
    fn start_daemon(&self) {
        self.starts.fetch_add(1, Ordering::Relaxed);
        let d = Arc::new(Daemon::start(&self.profile, &self.log, self.events.clone()));
        *self.daemon.lock().unwrap() = Some(d);
    }

    fn current(&self) -> Arc<Daemon> {
        self.daemon.lock().unwrap().clone().expect("a daemon")
    }

    /// SIGKILLs the current daemon (it stays in place, dead, until `start_daemon`).
    fn kill_daemon(&self) {
        self.current().sigkill();
    }

    fn stop_daemon(&self) {
        let d = self.daemon.lock().unwrap().take();
        drop(d);
    }

    /// Waits (bounded) until an event matches `f`.
    fn wait_event(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| f(v)) {
                return v.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: never got {what}; its log ends:\n{}",
            self.handle,
            tail(&self.log, 30)
        );
    }
}

/// `crash SENDER CONVERSATION N`: who sent it, where, and the sender's number for it.
fn message_text(from: &str, conversation: &str, n: u64) -> String {
    format!("crash {from} {conversation} {n}")
}

fn parse_text(text: &str) -> Option<(String, String, u64)> {
    let mut parts = text.split(' ');
    if parts.next()? != "crash" {
        return None;
    }
    let from = parts.next()?.to_string();
    let conv = parts.next()?.to_string();
    let n = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((from, conv, n))
}

/// What one sender sent into one conversation: `count` numbers, of which `uncertain`
/// were in flight when the sender's own daemon was killed (each may have been queued
/// or not: it must arrive at most once).
#[derive(Clone, Debug, Default)]
struct Sent {
    count: u64,
    uncertain: HashSet<u64>,
}

/// Keeps `user`'s current daemon sending numbered texts round-robin over `streams`
/// until `stop`. A `send` that was answered (sent, or queued in the outbox) must arrive;
/// one whose daemon was killed before answering is uncertain, and the thread goes on
/// with the next daemon started on the profile.
fn traffic(
    user: Arc<User>,
    streams: Vec<String>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let me = user.handle;
        let mut sent = vec![Sent::default(); streams.len()];
        let mut queued_offline = 0u64;
        'outer: while !stop.load(Ordering::Relaxed) {
            for (i, to) in streams.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
                if sent[i].count >= MAX_PER_STREAM {
                    continue;
                }
                let n = sent[i].count;
                let text = message_text(me, to, n);
                let daemon = user.current();
                match daemon.try_call("send", json!({"to": to, "text": text})) {
                    Ok(v) => {
                        if let Some(e) = v.get("error") {
                            // -32001: the server was unreachable; the message stays
                            // queued in the outbox and goes out on the next connection.
                            assert_eq!(e["code"], json!(-32001), "{me}: send {text:?}: {v}");
                            queued_offline += 1;
                        } else if v["result"]["sent"] == json!(false) {
                            queued_offline += 1;
                        }
                    }
                    Err(Died) => {
                        sent[i].uncertain.insert(n);
                        // Wait (bounded) for the next daemon on this profile.
                        let deadline = Instant::now() + SETTLE;
                        while Arc::ptr_eq(&daemon, &user.current()) {
                            assert!(Instant::now() < deadline, "{me}: no daemon restarted");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                sent[i].count += 1;
            }
            if sent.iter().all(|s| s.count >= MAX_PER_STREAM) {
                break;
            }
            std::thread::sleep(pause);
        }
        eprintln!("{me}: sent {sent:?} ({queued_offline} left queued by send)");
        sent
    })
}

/// The message events of `user` deduplicated by `seq` (the daemon's documented
/// contract), in queue order. Fails if one `seq` names two different events.
fn messages_by_seq(user: &User) -> Vec<Value> {
    let events = user.events.lock().unwrap();
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    for e in events.iter() {
        let seq = e["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {e}"));
        if let Some(prev) = by_seq.get(&seq) {
            assert_eq!(
                prev, e,
                "{}: seq {seq} reported twice, differently",
                user.handle
            );
        } else {
            by_seq.insert(seq, e.clone());
        }
    }
    by_seq
        .into_values()
        .filter(|e| e["type"] == json!("message"))
        .collect()
}

/// Checks `got` (sender and text as the user sees them, in order) against what each
/// sender sent: each sender's numbers strictly increasing (no duplicate, order kept),
/// none missing but uncertain ones. `expected`: (sender, sender's name for the
/// conversation) → what was sent. Returns the number of messages checked.
fn check_stream(
    ctx: &str,
    receiver: &str,
    got: &[(String, String)],
    expected: &HashMap<(String, String), Sent>,
) -> usize {
    let mut seen: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for (from, text) in got {
        let Some((sender, conv, n)) = parse_text(text) else {
            continue;
        };
        assert_eq!(
            &sender, from,
            "{ctx}: {receiver}: {text:?} claims another sender"
        );
        let list = seen.entry((sender, conv)).or_default();
        if let Some(&last) = list.last() {
            assert!(
                n > last,
                "{ctx}: {receiver}: {text:?} after number {last}: duplicated or out of order"
            );
        }
        list.push(n);
    }
    let mut checked = 0;
    for (key, sent) in expected {
        let got = seen.remove(key).unwrap_or_default();
        if let Some(&last) = got.last() {
            assert!(
                last < sent.count,
                "{ctx}: {receiver} got number {last} of {} in {}, only {} were sent",
                key.0,
                key.1,
                sent.count
            );
        }
        let missing: Vec<u64> = (0..sent.count)
            .filter(|n| got.binary_search(n).is_err() && !sent.uncertain.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {receiver} lacks {} of the {} messages {} sent to {}: numbers {missing:?}",
            missing.len(),
            sent.count,
            key.0,
            key.1
        );
        checked += got.len();
    }
    assert!(
        seen.is_empty(),
        "{ctx}: {receiver} got messages from nowhere: {seen:?}"
    );
    checked
}

/// A sender's conversation: the sender (index into the users), its name for it, and
/// who receives it under which name.
struct Stream {
    sender: usize,
    to: String,
    receivers: Vec<(usize, String)>,
}

/// alice <-> bob, and alice's group with bob and carol where all three write.
fn streams() -> Vec<Stream> {
    let s = |sender, to: &str, receivers: &[(usize, &str)]| Stream {
        sender,
        to: to.into(),
        receivers: receivers.iter().map(|(r, c)| (*r, c.to_string())).collect(),
    };
    vec![
        s(0, "bob", &[(1, "alice")]),
        s(0, GROUP, &[(1, GROUP), (2, GROUP)]),
        s(1, "alice", &[(0, "bob")]),
        s(1, GROUP, &[(0, GROUP), (2, GROUP)]),
        s(2, GROUP, &[(0, GROUP), (1, GROUP)]),
    ]
}

/// A server, alice, bob, carol (with daemons) and dave (joins the group at the end).
struct World {
    server: ServerProc,
    users: Vec<Arc<User>>,
    ctx: String,
    started: Instant,
    /// Last: removed once the server has stopped.
    _tmp: tempfile::TempDir,
}

impl World {
    fn new(ctx: String) -> World {
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let server = ServerProc::start(&root.join("server"), &root.join("server.log"));
        let users: Vec<Arc<User>> = ["alice", "bob", "carol", "dave"]
            .into_iter()
            .map(|h| Arc::new(User::new(root, h)))
            .collect();
        for u in &users {
            u.register(&server);
        }
        for u in &users[..3] {
            u.start_daemon();
        }
        // The conversations exist before the traffic.
        let r = users[0].current().ok(
            "createGroup",
            json!({"title": "crash", "members": ["bob", "carol"]}),
        );
        assert_eq!(r["conversation"], json!(GROUP), "{r}");
        users[0]
            .current()
            .ok("send", json!({"to": "bob", "text": "hello bob"}));
        for u in &users[1..3] {
            u.wait_event("the group", |e| {
                e["type"] == json!("group") && e["conversation"] == json!(GROUP)
            });
        }
        users[1].wait_event("alice's hello", |e| e["text"] == json!("hello bob"));
        World {
            server,
            users,
            ctx,
            started,
            _tmp: tmp,
        }
    }

    /// Starts the senders; returns their threads (in stream order of each sender).
    fn traffic(&self, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<Sent>>> {
        let streams = streams();
        (0..3)
            .map(|u| {
                let mine = streams
                    .iter()
                    .filter(|s| s.sender == u)
                    .map(|s| s.to.clone())
                    .collect();
                traffic(
                    self.users[u].clone(),
                    mine,
                    stop.clone(),
                    Duration::from_millis(30),
                )
            })
            .collect()
    }

    /// Waits for everything to arrive, then checks every receiver's events and history
    /// and every sender's own history. Returns (messages sent, deliveries checked).
    fn check(&self, sent: Vec<Vec<Sent>>) -> (u64, usize) {
        let ctx = &self.ctx;
        let streams = streams();
        // Per receiver and its conversation name: (sender, sender's name) -> Sent.
        type Expected = HashMap<(usize, String), HashMap<(String, String), Sent>>;
        let mut expected: Expected = HashMap::new();
        let mut own: Vec<Vec<(String, Sent)>> = vec![Vec::new(); 3];
        let mut next_of = [0usize; 3];
        let mut total = 0;
        for st in &streams {
            let s = sent[st.sender][next_of[st.sender]].clone();
            next_of[st.sender] += 1;
            total += s.count;
            own[st.sender].push((st.to.clone(), s.clone()));
            for (receiver, conv) in &st.receivers {
                expected
                    .entry((*receiver, conv.clone()))
                    .or_default()
                    .insert(
                        (self.users[st.sender].handle.to_string(), st.to.clone()),
                        s.clone(),
                    );
            }
        }
        assert!(total > 0, "{ctx}: nothing was sent");

        // Everything certain arrives (bounded wait).
        let complete = |r: usize| {
            let msgs = messages_by_seq(&self.users[r]);
            expected
                .iter()
                .filter(|((rr, _), _)| *rr == r)
                .all(|((_, conv), want)| {
                    want.iter().all(|((sender, sconv), s)| {
                        (0..s.count).filter(|n| !s.uncertain.contains(n)).all(|n| {
                            let text = message_text(sender, sconv, n);
                            msgs.iter().any(|m| {
                                m["conversation"] == json!(conv) && m["text"] == json!(text)
                            })
                        })
                    })
                })
        };
        let deadline = Instant::now() + SETTLE;
        while !(0..3).all(complete) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }

        let as_seen = |m: &Value| {
            (
                m["from"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            )
        };
        let mut checked = 0;
        for ((r, conv), want) in &expected {
            let user = &self.users[*r];
            let seen: Vec<(String, String)> = messages_by_seq(user)
                .iter()
                .filter(|m| m["conversation"] == json!(conv))
                .map(as_seen)
                .collect();
            checked += check_stream(&format!("{ctx} (events, {conv})"), user.handle, &seen, want);
            let history = user
                .current()
                .ok("history", json!({"conversation": conv, "limit": 1000}));
            let seen: Vec<(String, String)> = history
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["type"] == json!("message") && m["from"] != json!(user.handle))
                .map(as_seen)
                .collect();
            check_stream(
                &format!("{ctx} (history, {conv})"),
                user.handle,
                &seen,
                want,
            );
        }
        // The senders' own copies: once each, in order.
        for (r, convs) in own.iter().enumerate() {
            let user = &self.users[r];
            for (conv, s) in convs {
                let history = user
                    .current()
                    .ok("history", json!({"conversation": conv, "limit": 1000}));
                let seen: Vec<(String, String)> = history
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["type"] == json!("message") && m["from"] == json!(user.handle))
                    .map(as_seen)
                    .collect();
                let want = HashMap::from([((user.handle.to_string(), conv.clone()), s.clone())]);
                check_stream(
                    &format!("{ctx} (own history, {conv})"),
                    user.handle,
                    &seen,
                    &want,
                );
            }
        }
        (total, checked)
    }

    /// The conversations still work: a round from everyone in the group and in the
    /// 1:1, then a commit adding dave, then a message dave reads (and the others).
    fn still_usable(&self) {
        let ctx = &self.ctx;
        let u = &self.users;
        // (sender, its name for the conversation, [(receiver, its name)]).
        type Round<'a> = (usize, &'a str, &'a [(usize, &'a str)]);
        let rounds: [Round; 5] = [
            (0, GROUP, &[(1, GROUP), (2, GROUP)]),
            (1, GROUP, &[(0, GROUP), (2, GROUP)]),
            (2, GROUP, &[(0, GROUP), (1, GROUP)]),
            (0, "bob", &[(1, "alice")]),
            (1, "alice", &[(0, "bob")]),
        ];
        for (from, to, receivers) in rounds {
            let text = format!("after the crashes from {} to {to}", u[from].handle);
            let r = u[from]
                .current()
                .ok("send", json!({"to": to, "text": text}));
            assert_eq!(r["sent"], json!(true), "{ctx}: {r}");
            for (rcv, conv) in receivers {
                u[*rcv].wait_event(&text, |e| {
                    e["conversation"] == json!(conv) && e["text"] == json!(text)
                });
            }
        }
        let r = u[0]
            .current()
            .ok("updateGroup", json!({"group": GROUP, "add": ["dave"]}));
        assert_eq!(r["sent"], json!(true), "{ctx}: {r}");
        let r = u[2]
            .current()
            .ok("send", json!({"to": GROUP, "text": "welcome dave"}));
        assert_eq!(
            r["sent"],
            json!(true),
            "{ctx}: carol's send after the commit: {r}; her log ends:\n{}",
            tail(&u[2].log, 40)
        );
        for user in &u[..2] {
            user.wait_event("welcome dave", |e| e["text"] == json!("welcome dave"));
        }
        let mut dave_got = Vec::new();
        for _ in 0..10 {
            let out = hushwire(&u[3].profile, &["receive", "--json", "--timeout", "2"]);
            assert_ok(&out);
            dave_got.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
            if dave_got.iter().any(|v| v["text"] == json!("welcome dave")) {
                break;
            }
        }
        assert!(
            dave_got
                .iter()
                .any(|v| v["conversation"] == json!(GROUP) && v["text"] == json!("welcome dave")),
            "{ctx}: dave, added after the crashes, never read the group: {dave_got:?}"
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for u in &self.users {
            u.stop_daemon();
        }
        if std::thread::panicking() {
            eprintln!(
                "FAILED with {}; the server log ends:\n{}",
                self.ctx,
                tail(&self.server.log, 40)
            );
        }
    }
}

fn knobs(kills_var: &str, default_kills: u64) -> (u64, usize, String) {
    let seed = env_u64("HUSHWIRE_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = usize::try_from(env_u64(kills_var).unwrap_or(default_kills)).unwrap();
    let ctx = format!("HUSHWIRE_CRASH_SEED={seed:#x} {kills_var}={kills}");
    eprintln!("crash harness: {ctx}");
    (seed, kills, ctx)
}

/// The server SIGKILLed at random moments under traffic, restarted on the same port and
/// data directory each time.
#[test]
fn server_sigkill_under_sustained_traffic() {
    let (seed, kills, ctx) = knobs("HUSHWIRE_CRASH_KILLS", DEFAULT_KILLS);
    let mut rng = Rng(seed);
    let mut w = World::new(ctx);
    let stop = Arc::new(AtomicBool::new(false));
    let senders = w.traffic(&stop);
    // The server runs a random while (sometimes only just restarted, still catching the
    // clients up), is killed, stays down a random while, comes back.
    for k in 0..kills {
        std::thread::sleep(rng.millis(50, 1500));
        w.server.sigkill();
        std::thread::sleep(rng.millis(0, 400));
        w.server.restart();
        if k % 5 == 4 {
            eprintln!("{} server kills, {:?}", k + 1, w.started.elapsed());
        }
    }
    // Some traffic on the last run too, then the senders stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Vec<Sent>> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let traffic_phase = w.started.elapsed();
    let (total, checked) = w.check(sent);
    w.still_usable();
    eprintln!(
        "crash harness passed: {}: {kills} server kills ({} starts), {total} messages sent, \
         {checked} deliveries checked exactly once and in order; traffic until {traffic_phase:?}, \
         total {:?}",
        w.ctx,
        w.server.starts,
        w.started.elapsed()
    );
}

/// Client daemons SIGKILLed at random moments while they receive (between storing and
/// acknowledging, between storing and reporting) and while they send (in the middle of
/// encrypting, committing the outbox, submitting), restarted on the same profile.
#[test]
fn client_sigkill_under_sustained_traffic() {
    let (seed, kills, ctx) = knobs("HUSHWIRE_CRASH_CLIENT_KILLS", DEFAULT_CLIENT_KILLS);
    let mut rng = Rng(seed ^ 0x00C1_1E47);
    let w = World::new(ctx);
    let stop = Arc::new(AtomicBool::new(false));
    let senders = w.traffic(&stop);
    for k in 0..kills {
        std::thread::sleep(rng.millis(100, 1200));
        let victim = &w.users[usize::try_from(rng.next() % 3).unwrap()];
        victim.kill_daemon();
        std::thread::sleep(rng.millis(0, 300));
        victim.start_daemon();
        if k % 5 == 4 {
            eprintln!("{} client kills, {:?}", k + 1, w.started.elapsed());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Vec<Sent>> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let traffic_phase = w.started.elapsed();
    let (total, checked) = w.check(sent);
    w.still_usable();
    let starts: Vec<u64> = w.users[..3]
        .iter()
        .map(|u| u.starts.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "crash harness passed: {}: {kills} client kills (daemon starts {starts:?}), {total} \
         messages sent, {checked} deliveries checked exactly once and in order; traffic \
         until {traffic_phase:?}, total {:?}",
        w.ctx,
        w.started.elapsed()
    );
}

/// A damaged database file (truncated to nothing, cut in half, pages overwritten, the
/// header overwritten) stops `hushwire serve` at start with a message naming the file:
/// no panic, and no server started empty or on garbled data.
#[test]
fn damaged_database_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    {
        let server = ServerProc::start(&data, &tmp.path().join("server.log"));
        for h in ["alice", "bob", "carol"] {
            User::new(tmp.path(), h).register(&server);
        }
        // SIGTERM on drop: a clean stop checkpoints the WAL into the database file.
    }
    let db = data.join("hushwire.db");
    for side in ["hushwire.db-wal", "hushwire.db-shm"] {
        let p = data.join(side);
        assert!(
            std::fs::metadata(&p).map_or(true, |m| m.len() == 0),
            "{side} left non-empty by a clean stop"
        );
        let _ = std::fs::remove_file(p);
    }
    let good = std::fs::read(&db).unwrap();
    assert!(
        good.len() >= 8 * 4096,
        "a small database: {} bytes",
        good.len()
    );

    let half = good.len() / 2;
    let damages: [(&str, Vec<u8>); 4] = [
        ("truncated to nothing", Vec::new()),
        ("cut in half", good[..half].to_vec()),
        ("pages overwritten", {
            let mut b = good.clone();
            for (i, x) in b[4096..4 * 4096].iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31) ^ 0xA5;
            }
            b
        }),
        ("header overwritten", {
            let mut b = good.clone();
            b[..100].fill(0x5A);
            b
        }),
    ];
    let shown = db.display().to_string();
    for (what, bytes) in damages {
        std::fs::write(&db, &bytes).unwrap();
        for side in ["hushwire.db-wal", "hushwire.db-shm"] {
            let _ = std::fs::remove_file(data.join(side));
        }
        let mut child = Command::new(BIN)
            .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a server that started anyway is killed and reported.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status =
            status.unwrap_or_else(|| panic!("{what}: the server started: {stdout}{stderr}"));
        assert!(!stdout.contains("url: "), "{what}: it served: {stdout}");
        assert_eq!(
            status.code(),
            Some(2),
            "{what}: {status}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&shown) && stderr.contains("is damaged"),
            "{what}: stderr does not say the database is damaged:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        // The damaged file is left as it was, for the operator to restore or inspect.
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{what}: the file was changed"
        );
    }
    // The intact file starts again, with its accounts.
    std::fs::write(&db, &good).unwrap();
    let server = ServerProc::start(&data, &tmp.path().join("server.log"));
    let again = User::new(tmp.path(), "alice2");
    again.register(&server);
    let out = hushwire(&again.profile, &["send", "bob", "still here?"]);
    assert_ok(&out);
}
