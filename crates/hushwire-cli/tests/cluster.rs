//! Three `hushwire serve` nodes as child processes on 127.0.0.1, sharing one PostgreSQL
//! database, one NATS server (each test its own subject prefix) and, when moto is
//! installed, one local S3 bucket — driven through the built `hushwire` binary:
//!
//! 1. users on different nodes chat live (pushed: the nodes' poll interval is an hour),
//!    a group across the three nodes and a file;
//! 2. nodes killed with SIGKILL mid-traffic: clients registered with several URLs fail
//!    over, and 200 messages arrive exactly once, in order;
//! 3. a private PostgreSQL stopped and started mid-traffic: the nodes recover without a
//!    restart and nothing acknowledged is lost;
//! 4. a private NATS killed: delivery continues by polling, nothing lost; started again,
//!    the bus works again (typing, which only the bus carries, crosses nodes).
//!
//! Needs `HUSHWIRE_TEST_POSTGRES_URL` and `HUSHWIRE_TEST_NATS_URL` (each test prints a
//! visible "skipped" line and returns when one is unset). Every node of a deployment
//! shares one TLS certificate and one secret path prefix (set explicitly here), so
//! clients see one pin and one URL path.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::infra::{env_or_skip, free_port, unique, with_database};

const BIN: &str = env!("CARGO_BIN_EXE_hushwire");
/// The secret path every node of a test deployment shares.
const PATH_PREFIX: &str = "/cluster-test-9f3k";
/// Upper bound for one client command (they bound their own network work far below).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for one expected delivery in a live `receive`.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ environment

/// Runs `cmd` to completion within `limit` (killed after it); status, stdout, stderr.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
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
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

/// `psql URL -c SQL`, which must succeed.
fn psql(url: &str, sql: &str) {
    let mut c = Command::new("psql");
    c.args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
    let (code, out, err) = run_bounded(c, Duration::from_secs(60));
    assert_eq!(code, Some(0), "psql {sql}: {out}{err}");
}

/// A fresh database on the shared PostgreSQL, dropped (best effort) at the end.
struct FreshDb {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDb {
    fn create(admin_url: &str) -> FreshDb {
        let name = unique("hw_cluster_");
        psql(admin_url, &format!("CREATE DATABASE {name}"));
        FreshDb {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let mut c = Command::new("psql");
        c.args([
            &self.admin_url,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ]);
        let _ = run_bounded(c, Duration::from_secs(60));
    }
}

// ------------------------------------------------------------------ moto (local S3)

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
                "note: moto (local S3) not installed: media stays in each node's data \
                 directory (run scripts/test-tools.sh)"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut moto = Moto {
            child,
            port,
            bucket: unique("hw-cluster-").replace('_', "-"),
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

    /// One unsigned HTTP/1.1 request: status and whole response.
    fn http(&mut self, method: &str, path: &str) -> Option<(u16, String)> {
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
        s.take(4 << 20).read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text))
    }

    /// How many objects the bucket holds (moto's ListObjectsV2 answer).
    fn object_count(&mut self) -> usize {
        let bucket = self.bucket.clone();
        let (code, body) = self
            .http("GET", &format!("/{bucket}?list-type=2"))
            .expect("moto answers");
        assert_eq!(code, 200, "{body}");
        body.matches("<Key>").count()
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "hushwire-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "hushwire-test-secret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ private NATS

/// A private `nats-server` on a fixed loopback port, killable and restartable.
struct Nats {
    child: Option<Child>,
    port: u16,
}

impl Nats {
    fn start() -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
        };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it accepts.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server on PATH");
            let up = loop {
                if child.try_wait().unwrap().is_some() {
                    break false; // e.g. the port not free yet after a kill
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    // The server speaks first: `INFO {…}`.
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                        break true;
                    }
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

// ------------------------------------------------------------------ private PostgreSQL

/// A private PostgreSQL cluster (initdb into a temporary directory owned by the
/// `postgres` user when the test runs as root), stoppable and restartable.
struct PrivatePg {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

fn pg_bin(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/lib/postgresql/15/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let as_postgres = run_bounded(
            {
                let mut c = Command::new("id");
                c.arg("-u");
                c
            },
            Duration::from_secs(10),
        )
        .1
        .trim()
            == "0";
        let dir = std::env::temp_dir().join(unique("hw-cluster-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pg = PrivatePg {
            dir,
            port: free_port(),
            as_postgres,
            running: false,
        };
        if as_postgres {
            let mut c = Command::new("chown");
            c.args(["postgres:postgres"]).arg(&pg.dir);
            assert_eq!(run_bounded(c, Duration::from_secs(10)).0, Some(0));
        }
        let data = pg.dir.join("data");
        let data = data.to_str().unwrap();
        let (code, out, err) = run_bounded(
            pg.command(
                "initdb",
                &["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            ),
            Duration::from_secs(120),
        );
        assert_eq!(code, Some(0), "initdb: {out}{err}");
        pg.start_again();
        pg
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(pg_bin(tool))
                .args(args);
            c
        } else {
            let mut c = Command::new(pg_bin(tool));
            c.args(args);
            c
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, out, err) = run_bounded(self.command("pg_ctl", &all), Duration::from_secs(120));
        assert_eq!(code, Some(0), "pg_ctl {args:?}: {out}{err}");
    }

    fn start_again(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "start",
        ]);
        self.running = true;
    }

    /// `pg_ctl stop -m fast`.
    fn stop(&mut self) {
        self.pg_ctl(&["-w", "-t", "60", "stop", "-m", "fast"]);
        self.running = false;
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = run_bounded(
                self.command(
                    "pg_ctl",
                    &[
                        "-D",
                        data.to_str().unwrap(),
                        "-w",
                        "stop",
                        "-m",
                        "immediate",
                    ],
                ),
                Duration::from_secs(60),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------ nodes

/// What the nodes of one test deployment share.
struct Deployment {
    root: PathBuf,
    store: String,
    bus: String,
    subject_prefix: String,
    poll_interval: &'static str,
    media: Option<String>,
    env: Vec<(String, String)>,
    /// The shared certificate and key (made by the first node).
    tls: Option<(PathBuf, PathBuf)>,
}

/// A `hushwire serve` child process; SIGKILLed on drop if still running.
struct Node {
    child: Option<Child>,
    url: String,
    pin: String,
}

impl Deployment {
    fn new(root: &Path, store: String, bus: String, poll_interval: &'static str) -> Deployment {
        Deployment {
            root: root.to_path_buf(),
            store,
            bus,
            subject_prefix: unique("hwtest.cluster.n"),
            poll_interval,
            media: None,
            env: Vec::new(),
            tls: None,
        }
    }

    fn with_s3(&mut self, moto: &Moto) {
        self.media = Some(format!("s3://{}/media", moto.bucket));
        self.env = moto.env();
    }

    /// Starts node `name` (config file and data directory under the root). The first
    /// node generates the self-signed certificate every later node is given.
    fn start(&mut self, name: &str) -> Node {
        let data = self.root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npath_prefix = \"{PATH_PREFIX}\"\n\
             store = {:?}\n",
            data.to_str().unwrap(),
            self.store
        );
        if let Some((cert, key)) = &self.tls {
            config += &format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                cert.to_str().unwrap(),
                key.to_str().unwrap()
            );
        }
        config += &format!(
            "[bus]\nurl = {:?}\nsubject_prefix = {:?}\npoll_interval = {:?}\n",
            self.bus, self.subject_prefix, self.poll_interval
        );
        if let Some(media) = &self.media {
            config += &format!("[media]\nstore = {media:?}\n");
        }
        let path = self.root.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("HUSHWIRE_STORE")
            .env_remove("HUSHWIRE_BUS")
            .env_remove("HUSHWIRE_MEDIA_STORE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn hushwire serve");
        let (tx, rx) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut url, mut pin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while url.is_none() || pin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("url: ") {
                        url = Some(u.to_string());
                    } else if let Some(p) = line.strip_prefix("pin: ") {
                        pin = Some(p.to_string());
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {name} did not print url and pin: {e:?}");
                }
            }
        }
        if self.tls.is_none() {
            let tls = data.join("tls");
            self.tls = Some((tls.join("cert.pem"), tls.join("key.pem")));
        }
        let url = url.unwrap();
        assert!(url.ends_with(PATH_PREFIX), "{url}");
        Node {
            child: Some(child),
            url,
            pin: pin.unwrap(),
        }
    }

    /// Three nodes; they show one pin.
    fn start_three(&mut self) -> [Node; 3] {
        let nodes = [self.start("a"), self.start("b"), self.start("c")];
        assert_eq!(nodes[0].pin, nodes[1].pin);
        assert_eq!(nodes[0].pin, nodes[2].pin);
        nodes
    }
}

impl Node {
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------ clients

fn client(profile: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE);
    c.arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HUSHWIRE_PROFILE");
    c
}

/// Runs a client command; exit code and stdout (stderr shown on failure).
fn hushwire(profile: &Path, args: &[&str], expect: &[i32]) -> String {
    let (code, out, err) = run_bounded(client(profile, args), COMMAND_TIMEOUT);
    assert!(
        code.is_some_and(|c| expect.contains(&c)),
        "hushwire {args:?} exited {code:?}, expected {expect:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// `typing PEER`, which must have been sent (exit 0 and no "nothing sent").
fn typing(profile: &Path, peer: &str) {
    let (code, out, err) = run_bounded(client(profile, &["typing", peer]), COMMAND_TIMEOUT);
    assert_eq!(code, Some(0), "typing: {out}{err}");
    assert!(!err.contains("nothing sent"), "typing not sent: {err}");
}

/// alice writes to bob, bob accepts the message request (typing needs an accepted
/// conversation), then bob's live `receive` starts and has fetched his backlog.
fn connect_pair(alice: &Path, bob: &Path, download_dir: Option<&Path>) -> Live {
    hushwire(alice, &["send", "bob", "hello bob"], &[0]);
    let got = message_lines(&hushwire(bob, &["receive", "--json"], &[0]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "hello bob");
    hushwire(bob, &["accept", "alice"], &[0]);
    hushwire(alice, &["send", "bob", "before bob connects"], &[0]);
    let live = Live::start(bob, download_dir);
    assert_eq!(
        live.next_message(DELIVERY_TIMEOUT)["text"],
        "before bob connects"
    );
    live
}

fn register(profile: &Path, handle: &str, nodes: &[&Node]) {
    let mut args = vec!["register", handle];
    for n in nodes {
        args.extend(["--server", n.url.as_str()]);
    }
    args.extend(["--pin", nodes[0].pin.as_str()]);
    hushwire(profile, &args, &[0]);
}

/// A long-running `receive --json`, its lines parsed by a thread; killed on drop.
struct Live {
    child: Option<Child>,
    lines: Receiver<Value>,
    profile: PathBuf,
    download_dir: Option<PathBuf>,
    /// How often `receive` gave up (exit 3, the server unreachable) and was started again
    /// by [`Live::next_message_or_restart`].
    restarts: usize,
}

impl Live {
    fn start(profile: &Path, download_dir: Option<&Path>) -> Live {
        let (child, lines) = Self::spawn(profile, download_dir);
        Live {
            child: Some(child),
            lines,
            profile: profile.to_path_buf(),
            download_dir: download_dir.map(Path::to_path_buf),
            restarts: 0,
        }
    }

    fn spawn(profile: &Path, download_dir: Option<&Path>) -> (Child, Receiver<Value>) {
        let mut cmd = client(profile, &["receive", "--json", "--timeout", "900"]);
        if let Some(d) = download_dir {
            cmd.arg("--download-dir").arg(d);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// The next message; if `receive` exited meanwhile it must have exited 3 (the
    /// deployment unreachable after its retries), and is started again, as an app
    /// would (at most 10 times).
    fn next_message_or_restart(&mut self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["type"] == "message" => return v,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no message within {limit:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    let code = self.child.take().unwrap().wait().unwrap().code();
                    assert_eq!(code, Some(3), "receive exited with {code:?}");
                    self.restarts += 1;
                    assert!(self.restarts <= 10, "receive keeps failing");
                    let (child, lines) = Self::spawn(&self.profile, self.download_dir.as_deref());
                    self.child = Some(child);
                    self.lines = lines;
                }
            }
        }
    }

    /// The next line matching `want`, skipping others, within `limit`.
    fn next_where(&self, what: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {limit:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("receive exited before {what}"),
            }
        }
    }

    fn next_message(&self, limit: Duration) -> Value {
        self.next_where("message", limit, |v| v["type"] == "message")
    }

    /// SIGTERM (acknowledges what it stored) and waits; the lines not read yet.
    fn stop(mut self) -> Vec<Value> {
        let mut child = self.child.take().unwrap();
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
                panic!("receive did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(code, Some(0), "receive exit status");
        self.lines.try_iter().collect()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn message_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "message")
        .collect()
}

fn sha256_file(path: &Path) -> String {
    let mut c = Command::new("sha256sum");
    c.arg(path);
    let (code, out, _) = run_bounded(c, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    out.split_whitespace().next().unwrap().to_string()
}

/// `len` bytes of an LCG pattern (incompressible enough), written to `path`.
fn write_pattern(path: &Path, len: usize) {
    let mut x: u32 = 0x2545_F491;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

/// Sends `texts` one `send` process after another (each waits for the server's durable
/// acknowledgement; exit 3 = queued for the next command); calls `between(i)` before
/// message `i`.
fn send_all(profile: &Path, to: &str, texts: &[String], mut between: impl FnMut(usize)) {
    for (i, text) in texts.iter().enumerate() {
        between(i);
        hushwire(profile, &["send", to, text], &[0, 3]);
    }
    // Whatever was queued by an exit 3 goes out now.
    hushwire(profile, &["sync"], &[0]);
}

/// Reads `n` message lines from `live` and checks they are exactly `texts`, in order.
fn expect_in_order(live: &mut Live, texts: &[String]) {
    let mut got = Vec::new();
    while got.len() < texts.len() {
        let v = live.next_message_or_restart(DELIVERY_TIMEOUT);
        got.push(v["text"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(got, texts, "every message exactly once, in order");
}

// ------------------------------------------------------------------ tests

/// Users on three nodes: 1:1 messages pushed across nodes (the poll interval is an hour,
/// so only a bus wake-up explains a prompt delivery), a group spanning the three nodes,
/// and a file (in the shared S3 bucket when moto is installed).
#[test]
fn users_on_different_nodes_chat_live_in_groups_and_with_files() {
    let Some((pg, nats)) = env_or_skip("users_on_different_nodes_chat_live") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let db = FreshDb::create(&pg);
    let mut d = Deployment::new(root.path(), db.url.clone(), nats, "1h");
    let mut moto = Moto::start();
    if let Some(m) = &moto {
        d.with_s3(m);
    }
    let [a, b, c] = d.start_three();
    let (alice, bob, carol) = (
        root.path().join("alice"),
        root.path().join("bob"),
        root.path().join("carol"),
    );
    register(&alice, "alice", &[&a]);
    register(&bob, "bob", &[&b]);
    register(&carol, "carol", &[&c]);

    // bob waits on node b; alice writes through node a.
    let downloads = root.path().join("downloads");
    let live = connect_pair(&alice, &bob, Some(&downloads));
    for i in 0..3 {
        let text = format!("live {i}");
        let id = hushwire(&alice, &["send", "bob", &text], &[0]);
        let got = live.next_message(DELIVERY_TIMEOUT);
        assert_eq!(got["text"], text.as_str());
        assert_eq!(got["id"], id.lines().last().unwrap().trim());
        assert_eq!(got["from"], "alice");
    }
    // Typing exists only on the bus (never stored, never polled).
    typing(&alice, "bob");
    let t = live.next_where("typing", DELIVERY_TIMEOUT, |v| v["type"] == "typing");
    assert_eq!(t["from"], "alice");

    // A group of one member per node.
    let out = hushwire(
        &alice,
        &["group", "create", "Trio", "--members", "bob,carol"],
        &[0],
    );
    assert_eq!(out.lines().last().unwrap().trim(), "#Trio");
    hushwire(&alice, &["send", "#Trio", "hello trio"], &[0]);
    let g = live.next_message(DELIVERY_TIMEOUT);
    assert_eq!(g["conversation"], "#Trio");
    assert_eq!(g["text"], "hello trio");
    let carol_got = message_lines(&hushwire(&carol, &["receive", "--json"], &[0]));
    assert!(
        carol_got
            .iter()
            .any(|v| v["conversation"] == "#Trio" && v["text"] == "hello trio"),
        "{carol_got:?}"
    );
    hushwire(&carol, &["send", "#Trio", "carol on node c"], &[0]);
    let g = live.next_message(DELIVERY_TIMEOUT);
    assert_eq!(g["from"], "carol");
    assert_eq!(g["text"], "carol on node c");
    let alice_got = message_lines(&hushwire(&alice, &["receive", "--json"], &[0]));
    assert!(
        alice_got.iter().any(|v| v["text"] == "carol on node c"),
        "{alice_got:?}"
    );

    // A file: uploaded through node a, downloaded by bob's client through node b.
    let objects_before = moto.as_mut().map(Moto::object_count);
    let file = root.path().join("clip.bin");
    write_pattern(&file, 700_000);
    hushwire(
        &alice,
        &[
            "send",
            "bob",
            "--file",
            file.to_str().unwrap(),
            "--caption",
            "clip",
        ],
        &[0],
    );
    let f = live.next_where("attachment", DELIVERY_TIMEOUT, |v| {
        v["type"] == "message" && v.get("attachment").is_some_and(|a| !a.is_null())
    });
    let att = &f["attachment"];
    assert_eq!(att["sha256"].as_str().unwrap(), sha256_file(&file));
    let saved = Path::new(att["path"].as_str().unwrap());
    assert_eq!(sha256_file(saved), sha256_file(&file));
    if let (Some(m), Some(before)) = (moto.as_mut(), objects_before) {
        assert!(
            m.object_count() > before,
            "the ciphertext is in the shared bucket"
        );
        for node in ["a", "b", "c"] {
            let blobs = root.path().join(node).join("blobs");
            let local = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
            assert_eq!(local, 0, "no media in {}", blobs.display());
        }
    } else {
        eprintln!("note: the file went through each node's local media store (no moto)");
    }
    let rest = live.stop();
    assert!(
        !rest.iter().any(|v| v["type"] == "message"),
        "nothing unexpected: {rest:?}"
    );
    drop((a, b, c));
}

/// 200 messages from alice to bob while first bob's node, then alice's node is killed
/// with SIGKILL: both clients were registered with two URLs and fail over; bob's live
/// `receive` gets every message exactly once, in order.
#[test]
fn nodes_killed_mid_traffic_lose_and_duplicate_nothing() {
    let Some((pg, nats)) = env_or_skip("nodes_killed_mid_traffic") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let db = FreshDb::create(&pg);
    let mut d = Deployment::new(root.path(), db.url.clone(), nats, "300ms");
    let [mut a, mut b, c] = d.start_three();
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &[&a, &c]);
    register(&bob, "bob", &[&b, &c]);

    let mut live = connect_pair(&alice, &bob, None);

    let texts: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    send_all(&alice, "bob", &texts, |i| {
        if i == 60 {
            b.kill9(); // bob's node: his receive moves to c
        }
        if i == 130 {
            a.kill9(); // alice's node: her next send goes to c
        }
    });
    expect_in_order(&mut live, &texts);
    assert_eq!(live.restarts, 0, "the same receive failed over");
    let rest = live.stop();
    assert!(
        !rest.iter().any(|v| v["type"] == "message"),
        "no duplicates: {rest:?}"
    );
    // Nothing left on the server either.
    assert!(message_lines(&hushwire(&bob, &["receive", "--json"], &[0])).is_empty());
    // bob's history holds each once.
    let history = hushwire(&bob, &["history", "alice", "--json"], &[0]);
    let got: Vec<String> = message_lines(&history)
        .iter()
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .filter(|t| t.starts_with('m'))
        .collect();
    assert_eq!(got, texts);
    drop(c);
}

/// A private PostgreSQL stopped (`pg_ctl stop -m fast`) while alice sends 40 messages
/// (one `send` process after another, in a thread) and started again: the nodes recover
/// without a restart, every `send` either was acknowledged (exit 0) or kept its message
/// queued (exit 3, sent by a later command), and bob gets all 40 exactly once, in order.
#[test]
fn postgres_restart_mid_traffic_nodes_recover() {
    let Some((_pg, nats)) = env_or_skip("postgres_restart_mid_traffic") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let mut pg = PrivatePg::start();
    let mut d = Deployment::new(root.path(), pg.url(), nats, "300ms");
    let [a, b, c] = d.start_three();
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &[&a]);
    register(&bob, "bob", &[&b]);
    let mut live = connect_pair(&alice, &bob, None);

    let texts: Vec<String> = (0..40).map(|i| format!("p{i:03}")).collect();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (alice, texts, started) = (alice.clone(), texts.clone(), started.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            for text in &texts {
                started.fetch_add(1, Ordering::SeqCst);
                let (code, out, err) =
                    run_bounded(client(&alice, &["send", "bob", text]), COMMAND_TIMEOUT);
                assert!(
                    matches!(code, Some(0 | 3)),
                    "send {text}: {code:?}\n{out}\n{err}"
                );
                codes.push(code.unwrap_or(-1));
            }
            codes
        })
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while started.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "sender stuck before {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(10);
    pg.stop();
    let stopped_at = started.load(Ordering::SeqCst);
    // At least three sends start while the database is down.
    wait_for(stopped_at + 3);
    pg.start_again();
    let codes = sender.join().unwrap();
    let queued = codes.iter().filter(|c| **c == 3).count();
    eprintln!(
        "sends: {} acknowledged, {queued} queued during the outage",
        40 - queued
    );
    assert!(queued >= 1, "a send while PostgreSQL was down: {codes:?}");
    // Whatever was queued goes out now (in order, ahead of anything newer).
    hushwire(&alice, &["sync"], &[0]);
    expect_in_order(&mut live, &texts);
    eprintln!(
        "bob's receive gave up (exit 3) {} time(s) while PostgreSQL was down",
        live.restarts
    );
    // The nodes work after the restart without being restarted themselves.
    let after: Vec<String> = (0..5).map(|i| format!("q{i:03}")).collect();
    send_all(&alice, "bob", &after, |_| {});
    expect_in_order(&mut live, &after);
    let rest = live.stop();
    assert!(
        !rest.iter().any(|v| v["type"] == "message"),
        "no duplicates: {rest:?}"
    );
    drop((a, b, c));
}

/// A private NATS killed: delivery across nodes continues by polling (poll interval
/// 300 ms), nothing lost; NATS started again on its port: the nodes reconnect and the bus
/// carries typing (which has no polling fallback) across nodes again.
#[test]
fn nats_down_delivery_continues_by_polling_then_bus_resumes() {
    let Some((pg, _nats)) = env_or_skip("nats_down_delivery_continues") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let db = FreshDb::create(&pg);
    let mut nats = Nats::start();
    let mut d = Deployment::new(root.path(), db.url.clone(), nats.url(), "300ms");
    let [a, b, c] = d.start_three();
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &[&a]);
    register(&bob, "bob", &[&b]);
    let mut live = connect_pair(&alice, &bob, None);
    typing(&alice, "bob");
    live.next_where("typing over the bus", DELIVERY_TIMEOUT, |v| {
        v["type"] == "typing"
    });

    nats.kill();
    let during: Vec<String> = (0..30).map(|i| format!("n{i:03}")).collect();
    send_all(&alice, "bob", &during, |_| {});
    expect_in_order(&mut live, &during);

    nats.restart();
    // The nodes reconnect in the background; typing crosses nodes only over the bus.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        typing(&alice, "bob");
        let got = live
            .lines
            .recv_timeout(Duration::from_secs(3))
            .ok()
            .filter(|v| v["type"] == "typing");
        if got.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bus did not come back after NATS restarted"
        );
    }
    let after: Vec<String> = (0..5).map(|i| format!("r{i:03}")).collect();
    send_all(&alice, "bob", &after, |_| {});
    expect_in_order(&mut live, &after);
    assert_eq!(
        live.restarts, 0,
        "receive never gave up while NATS was down"
    );
    let rest = live.stop();
    assert!(
        !rest.iter().any(|v| v["type"] == "message"),
        "no duplicates: {rest:?}"
    );
    drop((a, b, c));
}
