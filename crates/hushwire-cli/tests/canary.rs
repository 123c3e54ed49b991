//! Plaintext canary: a full scenario through the built `hushwire` binary — 1:1 both
//! ways, a group of three whose title is a canary, a file whose name, caption and content
//! are canaries, a second linked device (its name a canary) that sends, and a client that
//! reaches its server only through a `hushwire relay` — with a fresh random canary in
//! every piece of plaintext. Every message is checked to arrive decrypted; then
//! everything the server side wrote is scanned for every canary, and must hold none:
//!
//! - `single_node_sqlite_holds_no_plaintext`: one `hushwire serve` on its embedded
//!   store: every file of its data directory (database, `-wal`, `-shm`, blobs, TLS, site)
//!   while it runs and again after a clean shutdown, its stdout/stderr at
//!   `RUST_LOG=trace`, and the relay's data directory and logs.
//! - `scale_out_postgres_nats_holds_no_plaintext`: two nodes on a fresh PostgreSQL
//!   database and NATS (a fresh subject prefix), media in a local S3 (moto) when it is
//!   installed: the same files and logs, a `pg_dump` of the database, every S3 object,
//!   and every NATS message under the prefix (recorded for the whole scenario). Needs
//!   `HUSHWIRE_TEST_POSTGRES_URL` and `HUSHWIRE_TEST_NATS_URL` (skipped with a visible line
//!   when unset).
//!
//! Each canary is searched as raw bytes and in encodings a careless server could apply:
//! upper/lower case, UTF-16 (LE/BE), hex (both cases), base64 and base64url (all three
//! alignments, so a canary inside a longer base64 string is found), a Rust `{:?}` byte
//! list (`67, 65, 78, …`, as `tokio-postgres` logs parameters at debug), and its random
//! part alone (a truncated copy). The scanner is checked against a synthetic leak, and
//! against the clients' own decrypted output, where every canary must be found.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use serde_json::Value;

mod common;

use common::infra::{env_or_skip, free_port, unique, with_database};

const BIN: &str = env!("CARGO_BIN_EXE_hushwire");
/// The secret path the scale-out nodes share.
const PATH_PREFIX: &str = "/canary-test-4q7z";
/// Upper bound for one client command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for a server, node or relay to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How many `receive` rounds may pass before an expected message must have arrived.
const RECEIVE_ROUNDS: usize = 10;
/// Hits shown in a failure message.
const SHOWN_HITS: usize = 25;

// ------------------------------------------------------------------ canaries

/// One canary: `CANARY-<32 random hex>-<label>`.
#[derive(Debug, Clone)]
struct Canary {
    label: &'static str,
    text: String,
    random: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    hex::encode(buf)
}

/// The canaries of one run, by label.
struct Canaries(Vec<Canary>);

impl Canaries {
    fn new(labels: &[&'static str]) -> Canaries {
        Canaries(
            labels
                .iter()
                .map(|&label| {
                    let random = random_hex(16);
                    Canary {
                        label,
                        text: format!("CANARY-{random}-{label}"),
                        random,
                    }
                })
                .collect(),
        )
    }

    fn get(&self, label: &str) -> &str {
        &self
            .0
            .iter()
            .find(|c| c.label == label)
            .unwrap_or_else(|| panic!("no canary {label}"))
            .text
    }
}

/// `(encoding, bytes)` of every form `text` is searched in.
fn encodings(c: &Canary) -> Vec<(&'static str, Vec<u8>)> {
    let text = c.text.as_bytes();
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("raw", text.to_vec()),
        ("random part", c.random.as_bytes().to_vec()),
        ("uppercase", c.text.to_uppercase().into_bytes()),
        ("lowercase", c.text.to_lowercase().into_bytes()),
        (
            "utf-16le",
            c.text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        (
            "utf-16be",
            c.text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        ),
        ("hex", hex::encode(text).into_bytes()),
        ("HEX", hex::encode_upper(text).into_bytes()),
        (
            "debug byte list",
            text.iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", ")
                .into_bytes(),
        ),
    ];
    let engines: [(&'static str, &base64::engine::GeneralPurpose); 2] = [
        ("base64", &base64::engine::general_purpose::STANDARD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE),
    ];
    for (name, engine) in engines {
        for shift in 0..3 {
            // The canary after `shift` other bytes: the characters that depend on the
            // canary alone (not on its neighbours) are what any enclosing base64 holds.
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(text);
            let encoded = engine.encode(&buf);
            let start = if shift == 0 { 0 } else { 4 };
            let end = buf.len() / 3 * 4;
            out.push((name, encoded.as_bytes()[start..end].to_vec()));
        }
    }
    let mut seen = Vec::new();
    out.retain(|(_, b)| {
        let new = !seen.contains(b);
        seen.push(b.clone());
        new
    });
    out
}

/// Where a canary was found.
#[derive(Debug, Clone)]
struct Hit {
    source: String,
    offset: usize,
    label: &'static str,
    encoding: &'static str,
}

/// Every needle of every canary, searched in one pass.
#[derive(Clone)]
struct Scanner {
    ac: AhoCorasick,
    /// Per pattern: the canary's label and the encoding.
    meta: Arc<Vec<(&'static str, &'static str)>>,
}

impl Scanner {
    fn new(canaries: &Canaries) -> Scanner {
        let mut patterns = Vec::new();
        let mut meta = Vec::new();
        for c in &canaries.0 {
            for (encoding, bytes) in encodings(c) {
                patterns.push(bytes);
                meta.push((c.label, encoding));
            }
        }
        Scanner {
            ac: AhoCorasick::new(&patterns).unwrap(),
            meta: Arc::new(meta),
        }
    }

    fn scan(&self, source: &str, bytes: &[u8]) -> Vec<Hit> {
        self.ac
            .find_overlapping_iter(bytes)
            .map(|m| {
                let (label, encoding) = self.meta[m.pattern().as_usize()];
                Hit {
                    source: source.to_string(),
                    offset: m.start(),
                    label,
                    encoding,
                }
            })
            .collect()
    }
}

/// What one scan covered and found.
#[derive(Default)]
struct Tally {
    what: String,
    sources: usize,
    bytes: u64,
    hits: Vec<Hit>,
    /// Every source and its size.
    names: Vec<(String, usize)>,
}

impl Tally {
    fn new(what: &str) -> Tally {
        Tally {
            what: what.to_string(),
            ..Tally::default()
        }
    }

    fn bytes(&mut self, scanner: &Scanner, source: &str, bytes: &[u8]) {
        self.sources += 1;
        self.bytes += bytes.len() as u64;
        self.names.push((source.to_string(), bytes.len()));
        self.hits.extend(scanner.scan(source, bytes));
    }

    /// Every regular file under `dir` (symbolic links are not followed).
    fn tree(&mut self, scanner: &Scanner, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        let mut visited = 0;
        while let Some(d) = stack.pop() {
            visited += 1;
            assert!(visited < 100_000, "runaway directory walk under {dir:?}");
            for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{d:?}: {e}")) {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                let path = entry.path();
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    // A file may vanish between listing and reading (SQLite's journal).
                    if let Ok(bytes) = std::fs::read(&path) {
                        self.bytes(scanner, &path.display().to_string(), &bytes);
                    }
                }
            }
        }
    }

    fn assert_clean(&self) {
        let shown: Vec<String> = self
            .hits
            .iter()
            .take(SHOWN_HITS)
            .map(|h| {
                format!(
                    "  {} at offset {}: canary {} ({})",
                    h.source, h.offset, h.label, h.encoding
                )
            })
            .collect();
        assert!(
            self.hits.is_empty(),
            "PLAINTEXT LEAK: {} hit(s) in {} ({} sources, {} bytes):\n{}",
            self.hits.len(),
            self.what,
            self.sources,
            self.bytes,
            shown.join("\n")
        );
        eprintln!(
            "scanned {}: {} sources, {} bytes, 0 hits",
            self.what, self.sources, self.bytes
        );
        if self.names.len() <= 40 {
            for (name, len) in &self.names {
                eprintln!("  {len:>10}  {name}");
            }
        }
    }

    fn has(&self, label: &str, encoding: &str) -> bool {
        self.hits
            .iter()
            .any(|h| h.label == label && h.encoding == encoding)
    }
}

/// The scanner finds a canary hidden in every encoding, mid-buffer and unaligned, in a
/// file on disk — so zero hits elsewhere means something.
fn scanner_self_test(scanner: &Scanner, canaries: &Canaries, dir: &Path) {
    let c = &canaries.0[0];
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mut leak = b"junk before ".to_vec();
    leak.extend_from_slice(b"{\"log\":\"");
    // Inside a longer base64 string, one byte off the canary's own alignment.
    let mut inner = b"x".to_vec();
    inner.extend_from_slice(c.text.as_bytes());
    inner.extend_from_slice(b" trailing");
    leak.extend_from_slice(b64(&inner).as_bytes());
    leak.extend_from_slice(b"\"} ");
    leak.extend(c.text.encode_utf16().flat_map(u16::to_le_bytes));
    leak.extend_from_slice(format!(" params: {:?} ", c.text.as_bytes()).as_bytes());
    leak.extend_from_slice(format!("\\x{} ", hex::encode(c.text.as_bytes())).as_bytes());
    leak.extend_from_slice(c.text.as_bytes());
    let path = dir.join("synthetic-leak.bin");
    std::fs::write(&path, &leak).unwrap();
    let mut t = Tally::new("a synthetic leak");
    t.tree(scanner, dir);
    for encoding in ["raw", "random part", "utf-16le", "hex", "debug byte list"] {
        assert!(t.has(c.label, encoding), "self-test misses {encoding}");
    }
    assert!(
        t.hits.iter().any(|h| h.encoding == "base64"),
        "self-test misses unaligned base64: {:?}",
        t.hits
    );
    assert!(
        t.hits
            .iter()
            .all(|h| h.source == path.display().to_string())
    );
    std::fs::remove_file(&path).unwrap();
}

// ------------------------------------------------------------------ processes

/// Runs `cmd` to completion within `limit` (killed after it); status, stdout, stderr.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        std::fs::read(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

/// A long-running `hushwire` process (server, node, relay) whose stdout and stderr go
/// to files in `logs`; SIGKILLed on drop if still running.
struct Proc {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
}

impl Proc {
    /// Starts `cmd` (at `RUST_LOG=trace`) and waits for the stdout lines starting with
    /// each of `wanted`; returns the process and the rest of those lines.
    fn start(name: &str, mut cmd: Command, logs: &Path, wanted: &[&str]) -> (Proc, Vec<String>) {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = cmd
            .env("RUST_LOG", "trace")
            // Plain text, no colour codes between the words of a line.
            .env("NO_COLOR", "1")
            .env_remove("HUSHWIRE_STORE")
            .env_remove("HUSHWIRE_BUS")
            .env_remove("HUSHWIRE_MEDIA_STORE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut p = Proc {
            name: name.to_string(),
            child: Some(child),
            stdout,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&p.stdout).unwrap_or_default();
            let found: Vec<Option<String>> = wanted
                .iter()
                .map(|w| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(w).map(str::to_string))
                })
                .collect();
            if found.iter().all(Option::is_some) {
                return (p, found.into_iter().map(Option::unwrap).collect());
            }
            if let Some(s) = p.child.as_mut().unwrap().try_wait().unwrap() {
                let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                let tail = &err[err.len().saturating_sub(4000)..];
                panic!("{name} exited ({s}) before printing {wanted:?}:\n{text}\n{tail}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not print {wanted:?} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the clean exit (status 0) within 60 s.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop on SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(code, Some(0), "{} exit status after SIGTERM", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `hushwire relay` on 127.0.0.1 towards `url`; its link.
fn start_relay(root: &Path, logs: &Path, url: &str, pin: &str) -> (Proc, String) {
    let data = root.join("relay");
    let mut cmd = Command::new(BIN);
    cmd.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
    cmd.args(["relay", "--listen", "127.0.0.1:0", "--upstream", url])
        .args([
            "--upstream-pin",
            pin,
            "--opens-per-minute",
            "1000",
            "--data",
        ])
        .arg(&data);
    let (p, mut found) = Proc::start("relay", cmd, logs, &["link: "]);
    (p, found.remove(0))
}

// ------------------------------------------------------------------ clients

/// A server (or node) a client registers with.
#[derive(Clone)]
struct Endpoint {
    url: String,
    pin: String,
}

fn client(profile: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
    c.arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HUSHWIRE_PROFILE")
        .env_remove("HUSHWIRE_PROXY")
        .env_remove("RUST_LOG");
    c
}

/// Runs a client command that must exit 0; its stdout.
fn hw(profile: &Path, args: &[&str]) -> String {
    let (code, out, err) = run_bounded(client(profile, args), COMMAND_TIMEOUT);
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(
        code,
        Some(0),
        "hushwire {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

fn register(profile: &Path, handle: &str, at: &Endpoint) {
    hw(
        profile,
        &["register", handle, "--server", &at.url, "--pin", &at.pin],
    );
}

/// The clients' decrypted output (every `receive`/`device list` stdout, every saved
/// file), where the canaries must be found.
#[derive(Default)]
struct Decrypted(Vec<u8>);

impl Decrypted {
    /// `receive --json` until a message with each of `texts` arrived (at most
    /// [`RECEIVE_ROUNDS`] rounds); every message line.
    fn receive(&mut self, profile: &Path, texts: &[&str], extra: &[&str]) -> Vec<Value> {
        let mut got: Vec<Value> = Vec::new();
        for _ in 0..RECEIVE_ROUNDS {
            let mut args = vec!["receive", "--json", "--timeout", "1"];
            args.extend_from_slice(extra);
            let out = hw(profile, &args);
            self.0.extend_from_slice(out.as_bytes());
            got.extend(
                out.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .filter(|v| v["type"] == "message"),
            );
            if texts.iter().all(|t| got.iter().any(|v| v["text"] == *t)) {
                return got;
            }
        }
        panic!(
            "{}: not all of {texts:?} arrived: {got:?}",
            profile.display()
        );
    }
}

fn message<'a>(got: &'a [Value], text: &str) -> &'a Value {
    got.iter().find(|v| v["text"] == text).unwrap()
}

/// What the scenario leaves for the checks.
struct Outcome {
    decrypted: Decrypted,
    /// Canaries sent but (deliberately) not received yet: the server holds them.
    pending: Vec<&'static str>,
    /// Profiles of the senders of `pending`.
    senders: Vec<PathBuf>,
    /// The senders' decrypted `history` of the conversations `pending` went to.
    sender_history: Vec<u8>,
}

const LABELS: &[&str] = &[
    "dm-alice-to-bob",
    "dm-bob-to-alice",
    "device-name",
    "from-second-device",
    "dm-alice-to-carol",
    "group-title",
    "group-from-alice",
    "group-from-carol-via-relay",
    "file-name",
    "file-caption",
    "file-content",
    "pending-dm",
    "pending-group",
];

/// The whole story. alice and her laptop (a linked second device) and carol use `home`,
/// bob uses `away` (another node when scaling out); carol reaches `home` only through
/// the relay (`relay_link`; her direct route switched off).
fn scenario(
    root: &Path,
    cs: &Canaries,
    home: &Endpoint,
    away: &Endpoint,
    relay_link: &str,
    relay_stderr: &Path,
) -> Outcome {
    let clients = root.join("clients");
    let [alice, laptop, bob, carol] =
        ["alice", "alice-laptop", "bob", "carol"].map(|n| clients.join(n));
    let mut d = Decrypted::default();
    register(&alice, "alice", home);
    register(&bob, "bob", away);
    register(&carol, "carol", home);

    // carol: through the relay only from now on.
    hw(&carol, &["relay", "add", relay_link]);
    let routes_path = carol.join("routes.json");
    let mut routes: Value = serde_json::from_slice(&std::fs::read(&routes_path).unwrap()).unwrap();
    routes["no_direct"] = Value::Bool(true);
    std::fs::write(&routes_path, serde_json::to_vec(&routes).unwrap()).unwrap();

    // 1:1, both ways.
    let (a2b, b2a) = (cs.get("dm-alice-to-bob"), cs.get("dm-bob-to-alice"));
    hw(&alice, &["send", "bob", a2b]);
    let got = d.receive(&bob, &[a2b], &[]);
    assert_eq!(message(&got, a2b)["from"], "alice");
    hw(&bob, &["accept", "alice"]);
    hw(&bob, &["send", "alice", b2a]);
    let got = d.receive(&alice, &[b2a], &[]);
    assert_eq!(message(&got, b2a)["from"], "bob");

    // A second device for alice, named with a canary; it gets bob's message from its
    // history and sends one of its own.
    let name = cs.get("device-name");
    let mut linker = client(&alice, &["device", "link", "--timeout", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = channel();
    let stdout = linker.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(COMMAND_TIMEOUT)
        .expect("device link prints");
    let code = first
        .strip_prefix("link-code: ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    let joined = hw(
        &laptop,
        &["link", &code, "--name", name, "--timeout", "120"],
    );
    assert!(joined.contains("alice/2"), "{joined}");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = linker.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "device link did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "device link: {status}");
    let devices = hw(&alice, &["device", "list", "--json"]);
    d.0.extend_from_slice(devices.as_bytes());
    assert!(
        devices.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["id"] == 2 && v["name"] == name
        }),
        "{devices}"
    );
    let history = hw(&laptop, &["history", "bob", "--json"]);
    assert!(history.contains(b2a), "{history}");
    d.0.extend_from_slice(history.as_bytes());
    let from_laptop = cs.get("from-second-device");
    hw(&laptop, &["send", "bob", from_laptop]);
    let got = d.receive(&bob, &[from_laptop], &[]);
    assert_eq!(message(&got, from_laptop)["from"], "alice");

    // alice and carol (carol through the relay).
    let a2c = cs.get("dm-alice-to-carol");
    hw(&alice, &["send", "carol", a2c]);
    d.receive(&carol, &[a2c], &[]);
    hw(&carol, &["accept", "alice"]);

    // A group of three, its title a canary.
    let title = cs.get("group-title");
    let out = hw(
        &alice,
        &["group", "create", title, "--members", "bob,carol"],
    );
    let group = format!("#{title}");
    assert_eq!(out.lines().last().unwrap().trim(), group);
    let (ga, gc) = (
        cs.get("group-from-alice"),
        cs.get("group-from-carol-via-relay"),
    );
    hw(&alice, &["send", &group, ga]);
    for p in [&bob, &carol] {
        let got = d.receive(p, &[ga], &[]);
        assert_eq!(message(&got, ga)["conversation"], group.as_str());
    }
    hw(&carol, &["send", &group, gc]);
    for p in [&bob, &alice] {
        let got = d.receive(p, &[gc], &[]);
        assert_eq!(message(&got, gc)["from"], "carol");
    }
    // The laptop is in the group too.
    let got = d.receive(&laptop, &[ga, gc], &[]);
    assert_eq!(message(&got, gc)["conversation"], group.as_str());

    // carol's traffic went through the relay: her only route, and it worked.
    let routes = hw(&carol, &["relay", "list"]);
    let lines: Vec<&str> = routes.lines().collect();
    assert_eq!(lines.len(), 1, "{routes}");
    assert!(
        lines[0].starts_with("relay ") && lines[0].ends_with("(worked last)"),
        "{routes}"
    );
    let relay_log = std::fs::read_to_string(relay_stderr).unwrap();
    assert!(relay_log.contains("tunnel open"), "the relay saw no tunnel");

    // A file: name, caption and content canaries; to carol (through the relay).
    let file_name = format!("{}.txt", cs.get("file-name"));
    let file = root.join(&file_name);
    let content = format!(
        "{}\n{}\n",
        cs.get("file-content"),
        "padding line\n".repeat(2000)
    );
    std::fs::write(&file, &content).unwrap();
    let caption = cs.get("file-caption");
    hw(
        &alice,
        &[
            "send",
            "carol",
            "--file",
            file.to_str().unwrap(),
            "--caption",
            caption,
        ],
    );
    std::fs::remove_file(&file).unwrap();
    let downloads = root.join("carol-downloads");
    let got = d.receive(
        &carol,
        &[caption],
        &["--download-dir", downloads.to_str().unwrap()],
    );
    let att = &message(&got, caption)["attachment"];
    assert_eq!(att["name"], file_name.as_str(), "{att}");
    let saved = std::fs::read(att["path"].as_str().unwrap()).unwrap();
    assert_eq!(saved, content.as_bytes(), "the file arrived intact");
    d.0.extend_from_slice(&saved);

    // Left on the server, not received: the server must hold them at the scan.
    hw(&alice, &["send", "bob", cs.get("pending-dm")]);
    hw(&carol, &["send", &group, cs.get("pending-group")]);
    let mut sender_history = hw(&alice, &["history", "bob"]).into_bytes();
    sender_history.extend(hw(&carol, &["history", &group]).into_bytes());

    Outcome {
        decrypted: d,
        pending: vec!["pending-dm", "pending-group"],
        senders: vec![alice, carol],
        sender_history,
    }
}

/// The scanner works where the plaintext is: every delivered canary in the clients'
/// decrypted output, every pending one in its sender's decrypted history. The senders'
/// profiles are encrypted at rest: no pending canary in any of their files.
fn client_side_sanity(scanner: &Scanner, o: &Outcome) {
    let mut t = Tally::new("the clients' decrypted output");
    t.bytes(scanner, "decrypted output", &o.decrypted.0);
    for label in LABELS.iter().filter(|l| !o.pending.contains(l)) {
        assert!(
            t.has(label, "raw"),
            "canary {label} not in the clients' output"
        );
    }
    let mut t = Tally::new("the senders' decrypted history");
    t.bytes(scanner, "history output", &o.sender_history);
    for label in &o.pending {
        assert!(
            t.has(label, "raw"),
            "pending canary {label} not client-side"
        );
    }
    let mut t = Tally::new("the senders' profiles (encrypted at rest)");
    for p in &o.senders {
        t.tree(scanner, p);
    }
    for label in &o.pending {
        assert!(
            !t.has(label, "raw"),
            "pending canary {label} in clear in its sender's profile"
        );
    }
}

/// The server logged at TRACE, in plain text.
fn assert_trace_logged(path: &Path) {
    let log = std::fs::read(path).unwrap();
    let trace = log.windows(7).filter(|w| w == b" TRACE ").count();
    assert!(trace > 100, "{}: {trace} TRACE lines", path.display());
    assert!(!log.contains(&0x1b), "{}: colour codes", path.display());
}

// ------------------------------------------------------------------ variant (a)

#[test]
fn single_node_sqlite_holds_no_plaintext() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (data, logs) = (root.join("server"), root.join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let cs = Canaries::new(LABELS);
    let scanner = Scanner::new(&cs);
    let selftest = root.join("selftest");
    std::fs::create_dir_all(&selftest).unwrap();
    scanner_self_test(&scanner, &cs, &selftest);

    let mut cmd = Command::new(BIN);

    cmd.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let (mut server, found) = Proc::start("server", cmd, &logs, &["url: ", "pin: "]);
    let at = Endpoint {
        url: found[0].clone(),
        pin: found[1].clone(),
    };
    let (mut relay, link) = start_relay(root, &logs, &at.url, &at.pin);
    let outcome = scenario(root, &cs, &at, &at, &link, &logs.join("relay.stderr"));
    client_side_sanity(&scanner, &outcome);

    // While running (the WAL not checkpointed yet) …
    let mut t = Tally::new("single node, running: data dir, relay dir, logs");
    for dir in [&data, &root.join("relay"), &logs] {
        t.tree(&scanner, dir);
    }
    for (suffix, what) in [
        ("hushwire.db", "the database"),
        ("hushwire.db-wal", "its write-ahead log (the server runs)"),
    ] {
        assert!(
            t.names.iter().any(|(n, _)| n.ends_with(suffix)),
            "{what} scanned: {:?}",
            t.names
        );
    }
    assert!(
        t.names.iter().any(|(n, _)| n.contains("/blobs/")),
        "the file's ciphertext is in the local blob store: {:?}",
        t.names
    );
    t.assert_clean();

    // … and after a clean shutdown.
    relay.stop();
    server.stop();
    let mut t = Tally::new("single node, stopped: data dir, relay dir, logs");
    for dir in [&data, &root.join("relay"), &logs] {
        t.tree(&scanner, dir);
    }
    assert_trace_logged(&logs.join("server.stderr"));
    t.assert_clean();
}

// ------------------------------------------------------------------ variant (b)

fn psql(url: &str, sql: &str) -> (Option<i32>, String) {
    let mut c = Command::new("psql");
    c.args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
    let (code, out, err) = run_bounded(c, Duration::from_secs(60));
    (code, format!("{}{err}", String::from_utf8_lossy(&out)))
}

/// A fresh database on the shared PostgreSQL, dropped (best effort) at the end.
struct FreshDb {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDb {
    fn create(admin_url: &str) -> FreshDb {
        let name = unique("hw_canary_");
        let (code, out) = psql(admin_url, &format!("CREATE DATABASE {name}"));
        assert_eq!(code, Some(0), "create database: {out}");
        FreshDb {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// `pg_dump` of the whole database (schema and data, plain SQL).
    fn dump(&self) -> Vec<u8> {
        let mut c = Command::new("pg_dump");
        c.args(["--no-owner", "--no-privileges", &self.url]);
        let (code, out, err) = run_bounded(c, Duration::from_secs(120));
        assert_eq!(code, Some(0), "pg_dump: {err}");
        out
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// A local S3 server (moto) with one bucket, killed on drop. `None` (with a visible
/// line) when moto is not installed and `CI` is unset; with `CI` set it must be there.
struct Moto {
    child: Child,
    port: u16,
    bucket: String,
}

impl Moto {
    fn start() -> Option<Moto> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed (CI is set): run scripts/test-tools.sh"
            );
            eprintln!(
                "note: moto (local S3) not installed: media stays in the node's data \
                 directory, which is scanned (run scripts/test-tools.sh)"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut moto = Moto {
            child,
            port,
            bucket: unique("hw-canary-").replace('_', "-"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(moto.http("GET", "/"), Some((200..=299, _))) {
            assert!(moto.child.try_wait().unwrap().is_none(), "moto exited");
            assert!(Instant::now() < deadline, "moto did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let bucket = moto.bucket.clone();
        let created = moto.http("PUT", &format!("/{bucket}"));
        assert!(
            matches!(created, Some((200..=299, _))),
            "bucket: {created:?}"
        );
        Some(moto)
    }

    /// One unsigned HTTP/1.1 request: status and body.
    fn http(&mut self, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut out = Vec::new();
        s.take(64 << 20).read_to_end(&mut out).ok()?;
        let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out[split + 4..].to_vec()))
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "hushwire-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "hushwire-test-secret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Downloads every object of the bucket under `dir` (with boto3, which moto
    /// needs anyway: moto refuses unsigned object reads) and scans them into `t`;
    /// how many.
    fn scan_objects(&self, scanner: &Scanner, t: &mut Tally, dir: &Path) -> usize {
        const SCRIPT: &str = "import os, sys, boto3\n\
            out, bucket = sys.argv[1], sys.argv[2]\n\
            s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
            n = 0\n\
            for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket):\n    \
                for o in page.get('Contents', []):\n        \
                    p = os.path.join(out, o['Key'])\n        \
                    os.makedirs(os.path.dirname(p), exist_ok=True)\n        \
                    s3.download_file(bucket, o['Key'], p)\n        \
                    n += 1\n\
            print(n)\n";
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Command::new("python3");
        c.args(["-c", SCRIPT])
            .arg(dir)
            .arg(&self.bucket)
            .envs(self.env());
        let (code, out, err) = run_bounded(c, Duration::from_secs(120));
        assert_eq!(code, Some(0), "downloading the bucket: {err}");
        let count: usize = String::from_utf8_lossy(&out).trim().parse().unwrap();
        let before = t.sources;
        t.tree(scanner, dir);
        assert_eq!(t.sources - before, count, "every object downloaded");
        count
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records every NATS message under `{prefix}.>` for the whole scenario, scanning each
/// (subject, headers, payload) as it comes.
struct NatsTap {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Tally>>,
}

impl NatsTap {
    fn start(url: &str, prefix: &str, scanner: &Scanner) -> NatsTap {
        let (url, subject, scanner) = (url.to_string(), format!("{prefix}.>"), scanner.clone());
        let (ready_tx, ready_rx) = channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use futures_util::StreamExt as _;
                let mut t = Tally::new(&format!("NATS traffic on {subject}"));
                let nats = async_nats::connect(url.as_str()).await.unwrap();
                let mut sub = nats.subscribe(subject.clone()).await.unwrap();
                nats.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                let record = |m: async_nats::Message, t: &mut Tally| {
                    let mut bytes = m.subject.to_string().into_bytes();
                    if let Some(h) = &m.headers {
                        bytes.extend_from_slice(format!(" {h:?} ").as_bytes());
                    }
                    bytes.push(b' ');
                    bytes.extend_from_slice(&m.payload);
                    t.bytes(&scanner, &format!("NATS {}", m.subject), &bytes);
                };
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        m = sub.next() => match m {
                            Some(m) => record(m, &mut t),
                            None => panic!("the NATS subscription ended"),
                        },
                    }
                }
                // What was published before the stop and is still on its way.
                for _ in 0..100_000 {
                    match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
                        Ok(Some(m)) => record(m, &mut t),
                        _ => break,
                    }
                }
                t
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("subscribed to NATS");
        NatsTap {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Tally {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Starts node `name` of a deployment from a config file; (process, url, pin).
#[allow(clippy::too_many_arguments)]
fn start_node(
    root: &Path,
    logs: &Path,
    name: &str,
    store: &str,
    bus: &str,
    prefix: &str,
    tls: Option<&(PathBuf, PathBuf)>,
    moto: Option<&Moto>,
) -> (Proc, Endpoint) {
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npath_prefix = \"{PATH_PREFIX}\"\n\
         store = {store:?}\n",
        data.to_str().unwrap(),
    );
    if let Some((cert, key)) = tls {
        config += &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        );
    }
    config +=
        &format!("[bus]\nurl = {bus:?}\nsubject_prefix = {prefix:?}\npoll_interval = \"2s\"\n");
    if let Some(m) = moto {
        config += &format!("[media]\nstore = \"s3://{}/media\"\n", m.bucket);
    }
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
    cmd.arg("serve").arg("--config").arg(&path);
    if let Some(m) = moto {
        cmd.envs(m.env());
    }
    let (p, found) = Proc::start(name, cmd, logs, &["url: ", "pin: "]);
    (
        p,
        Endpoint {
            url: found[0].clone(),
            pin: found[1].clone(),
        },
    )
}

#[test]
fn scale_out_postgres_nats_holds_no_plaintext() {
    let Some((pg, nats)) = env_or_skip("scale_out_postgres_nats_holds_no_plaintext") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cs = Canaries::new(LABELS);
    let scanner = Scanner::new(&cs);
    let selftest = root.join("selftest");
    std::fs::create_dir_all(&selftest).unwrap();
    scanner_self_test(&scanner, &cs, &selftest);

    let db = FreshDb::create(&pg);
    let prefix = unique("hwtest.canary.n");
    let tap = NatsTap::start(&nats, &prefix, &scanner);
    let moto = Moto::start();
    let (mut a, home) = start_node(
        root,
        &logs,
        "a",
        &db.url,
        &nats,
        &prefix,
        None,
        moto.as_ref(),
    );
    let tls = (
        root.join("a").join("tls").join("cert.pem"),
        root.join("a").join("tls").join("key.pem"),
    );
    let (mut b, away) = start_node(
        root,
        &logs,
        "b",
        &db.url,
        &nats,
        &prefix,
        Some(&tls),
        moto.as_ref(),
    );
    assert_eq!(home.pin, away.pin, "the nodes share one certificate");
    let (mut relay, link) = start_relay(root, &logs, &home.url, &home.pin);
    let outcome = scenario(root, &cs, &home, &away, &link, &logs.join("relay.stderr"));
    client_side_sanity(&scanner, &outcome);

    let dirs = [
        root.join("a"),
        root.join("b"),
        root.join("relay"),
        logs.clone(),
    ];
    let mut t = Tally::new("scale-out, running: node dirs, relay dir, logs, pg_dump, S3");
    for dir in &dirs {
        t.tree(&scanner, dir);
    }
    let dump = db.dump();
    assert!(
        String::from_utf8_lossy(&dump).contains("COPY public."),
        "the dump holds tables"
    );
    std::fs::write(root.join("pg_dump.sql"), &dump).unwrap();
    t.bytes(&scanner, "pg_dump", &dump);
    if let Some(m) = &moto {
        let objects = m.scan_objects(&scanner, &mut t, &root.join("s3-objects"));
        assert!(objects > 0, "the file's ciphertext is in S3");
        eprintln!("S3 objects scanned: {objects}");
    }
    t.assert_clean();

    relay.stop();
    a.stop();
    b.stop();
    for node in ["a", "b"] {
        assert_trace_logged(&logs.join(format!("{node}.stderr")));
    }
    let traffic = tap.finish();
    assert!(
        traffic.sources > 0,
        "the nodes published on {prefix}.> (cross-node wake-ups)"
    );
    eprintln!(
        "NATS subjects seen: {:?}",
        traffic
            .names
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    traffic.assert_clean();

    let mut t = Tally::new("scale-out, stopped: node dirs, relay dir, logs, pg_dump");
    for dir in &dirs {
        t.tree(&scanner, dir);
    }
    t.bytes(&scanner, "pg_dump after shutdown", &db.dump());
    t.assert_clean();
}
