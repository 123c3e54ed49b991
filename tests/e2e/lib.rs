//! Test support for Hushwire's end-to-end scenarios (`tests/*.rs`): an in-process server
//! on a loopback port 0 over the embedded SQLite store, and real clients with their own
//! profiles. This crate is never shipped; it exists only for the scenario tests.
// Test-support code: a failed set-up step should abort the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hushwire_client::{Client, ClientOptions, Event, StoredMessage};
use hushwire_server::{RunningServer, ServerConfig};
use hushwire_store_sqlite::SqliteStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for one client operation against a loopback server.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A server running in this process on 127.0.0.1, port chosen by the OS.
pub struct TestServer {
    /// Base URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// Certificate pin.
    pub pin: String,
    /// The data directory it runs on.
    pub data_dir: PathBuf,
    /// The store, for inspection.
    pub store: Arc<SqliteStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A configuration for tests: loopback port 0, rate limits lifted.
pub fn test_config(data_dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        ..ServerConfig::default()
    };
    config.rate_limits.registrations_per_ip_per_minute = 10_000;
    config.rate_limits.claims_per_device_per_minute = 10_000;
    config.shutdown_grace_secs = 5;
    config
}

/// [`test_config`] on the same address as `url` (a server printed it): a server
/// restarted with it is found again by the profiles that stored `url`.
pub fn config_at(data_dir: &Path, url: &str) -> ServerConfig {
    let mut config = test_config(data_dir);
    config.listen = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {url}"));
    config
}

impl TestServer {
    /// Starts a server on `data_dir` (created if missing; reused data is kept).
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(test_config(data_dir)).await
    }

    /// Starts a server with an explicit configuration.
    pub async fn start_with(config: ServerConfig) -> Self {
        let data_dir = config.data_dir.clone();
        let store = hushwire_server::open_sqlite(&config).await.unwrap();
        let running: RunningServer = hushwire_server::bind(config, store.clone()).await.unwrap();
        let url = running.url();
        let pin = running.pin().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            running
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            pin,
            data_dir,
            store,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts down cleanly: closes connections, finishes queued writes, checkpoints.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.store.shutdown().await;
    }
}

/// Registers `handle` in a new profile under `root` and opens a client on it.
pub async fn register(root: &Path, server: &TestServer, handle: &str) -> Client {
    let dir = root.join(handle);
    hushwire_client::register(
        &dir,
        handle,
        &server.url,
        Some(&server.pin),
        None,
        options(),
    )
    .await
    .unwrap();
    open(root, handle)
}

/// The passphrase every test profile is encrypted at rest under.
pub const PASSPHRASE: &str = "test passphrase";

/// Client options for a test profile: the defaults, unlocked with [`PASSPHRASE`].
pub fn options() -> ClientOptions {
    ClientOptions::default().with_passphrase(PASSPHRASE)
}

/// Opens a test profile's database directly (unlocked with [`PASSPHRASE`]).
pub fn open_profile(dir: &Path) -> Result<hushwire_e2e::Profile, hushwire_client::ClientError> {
    hushwire_client::open_profile(dir, &hushwire_client::Unlock::passphrase(PASSPHRASE))
}

/// Opens the client of an existing profile (as a new process would).
pub fn open(root: &Path, handle: &str) -> Client {
    Client::open(&root.join(handle), options()).unwrap()
}

/// Queues `text` to `peer` and flushes the outbox until the server accepted it.
pub async fn send(client: &mut Client, peer: &str, text: &str) -> String {
    let id = client.queue_text(peer, text).unwrap();
    client.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    assert!(!client.profile().is_outbox_item_pending(&id).unwrap());
    id
}

/// Receives everything pending and returns the messages among the events.
pub async fn receive(client: &mut Client) -> Vec<StoredMessage> {
    let mut got = Vec::new();
    client
        .sync(OP_TIMEOUT, &mut |e| {
            if let Event::Message(m) = e {
                got.push(m);
            }
        })
        .await
        .unwrap();
    got
}

/// Texts of a conversation's history, in order.
pub fn history_texts(client: &Client, conversation: &str) -> Vec<String> {
    client
        .profile()
        .history(conversation)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// Every file under `dir`, recursively, as (path, bytes).
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
