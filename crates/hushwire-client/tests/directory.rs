//! Key transparency against an in-process server on 127.0.0.1 that publishes its key
//! directory every 100 ms: a key the server substitutes is caught, a key published for
//! an account without it is noticed by the account, a rewritten history is refused.
//! The "malicious server" is the same server whose database is edited underneath it,
//! as an operator with access to it could.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hushwire_client::{
    ApiClient, ApiRequest, Client, ClientError, ClientOptions, Endpoint, Method, register,
};
use hushwire_proto::wire;
use hushwire_server::{DirectoryConfig, ServerConfig};

const T: Duration = Duration::from_secs(20);

struct TestServer {
    url: String,
    pin: String,
    db: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("server"),
            directory: DirectoryConfig {
                publish_interval: Duration::from_millis(100),
            },
            ..ServerConfig::default()
        };
        // A slow machine needs more new accounts before the rewritten history passes
        // the epoch alice saw: more than the default 5 registrations a minute from one IP.
        config.rate_limits.registrations_per_ip_per_minute = 1000;
        let db = config.database_path();
        let store = hushwire_server::open_embedded(&config).await.unwrap();
        let running = hushwire_server::bind(config, store).await.unwrap();
        let (url, pin) = (running.url(), running.pin().to_string());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            running
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            url,
            pin,
            db,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The server's database, opened beside the server (as its operator could).
    fn sql(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

async fn user(server: &TestServer, root: &Path, handle: &str) -> Client {
    let dir = root.join(handle);
    register(
        &dir,
        handle,
        &server.url,
        Some(&server.pin),
        None,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .await
    .unwrap();
    Client::open(
        &dir,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap()
}

/// Fetches `handle` until the directory has published it (bounded).
async fn fetch_published(client: &Client, handle: &str) {
    let until = Instant::now() + T;
    loop {
        client.fetch_account(handle).await.unwrap();
        let check = client.profile().directory_check(handle).unwrap().unwrap();
        if check.epoch.is_some() {
            return;
        }
        assert!(Instant::now() < until, "{handle} was never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the directory's latest epoch is above `epoch` (bounded).
async fn epoch_above(client: &mut Client, epoch: u64) -> u64 {
    let until = Instant::now() + T;
    loop {
        let e = client.check_directory().await.unwrap();
        if e > epoch {
            return e;
        }
        assert!(Instant::now() < until, "no epoch after {epoch}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_kt(e: &ClientError, handle: &str) -> bool {
    matches!(e, ClientError::KeyTransparency { handle: h, .. } if h == handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_key_without_a_matching_proof_is_caught() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let alice = user(&server, root.path(), "alice").await;
    let _bob = user(&server, root.path(), "bob").await;
    fetch_published(&alice, "bob").await;
    let check = alice.profile().directory_check("bob").unwrap().unwrap();
    assert_eq!(check.account_key.len(), 32);

    // The operator swaps bob's account key for one it holds, without publishing it.
    server
        .sql()
        .execute(
            "UPDATE accounts SET account_key = ?1 WHERE handle = 'bob'",
            [[0x42u8; 32].as_slice()],
        )
        .unwrap();

    // carol has never seen bob: trust on first use alone would take the new key.
    let carol = user(&server, root.path(), "carol").await;
    let err = carol.fetch_account("bob").await.unwrap_err();
    assert!(is_kt(&err, "bob"), "{err:?}");
    let err = alice.fetch_account("bob").await.unwrap_err();
    assert!(is_kt(&err, "bob"), "{err:?}");
    // Nothing was learned about the substituted key.
    assert!(carol.profile().directory_check("bob").unwrap().is_none());

    alice.close().await;
    carol.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_notices_a_key_published_for_it_that_it_did_not_create() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut alice = user(&server, root.path(), "alice").await;
    let first = epoch_above(&mut alice, 0).await;
    // Published: alice's own history holds only her key.
    fetch_published(&alice, "alice").await;
    alice.check_directory().await.unwrap();

    // The operator publishes another key for alice (to show others), keeping her
    // devices working.
    {
        let db = server.sql();
        db.execute(
            "UPDATE accounts SET account_key = ?1 WHERE handle = 'alice'",
            [[0x42u8; 32].as_slice()],
        )
        .unwrap();
        db.execute(
            "INSERT INTO directory_changes (handle) VALUES ('alice')",
            [],
        )
        .unwrap();
    }
    let until = Instant::now() + T;
    let err = loop {
        match alice.check_directory().await {
            Err(e) => break e,
            Ok(e) => {
                assert!(Instant::now() < until, "still epoch {e} (first {first})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(is_kt(&err, "alice"), "{err:?}");
    assert!(err.to_string().contains("did not create"), "{err}");
    // A receive goes on, and reports it.
    let report = alice.sync(T, &mut |_| {}).await.unwrap();
    let e = report
        .directory_error
        .expect("the receive's own check failed");
    assert!(is_kt(&e, "alice"), "{e:?}");

    alice.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_history_is_refused() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let alice = user(&server, root.path(), "alice").await;
    let _bob = user(&server, root.path(), "bob").await;
    fetch_published(&alice, "bob").await;
    let (seen, _) = alice.profile().directory_root().unwrap().unwrap();

    // The operator throws the history away and has every account published again. The
    // running node loses its next append (the log no longer ends where its tree does),
    // rebuilds from the emptied log and publishes a new history, consistent in itself.
    {
        let db = server.sql();
        db.execute("DELETE FROM directory_epochs", []).unwrap();
        db.execute(
            "INSERT INTO directory_changes (handle) SELECT handle FROM accounts",
            [],
        )
        .unwrap();
    }
    // New accounts push the new history past the epoch alice saw (the old tree cannot
    // move on: each of its appends fails).
    let api = ApiClient::new(Endpoint::new(&server.url, Some(&server.pin)).unwrap()).unwrap();
    let until = Instant::now() + T;
    let mut n = 0;
    loop {
        let latest: wire::DirectoryRoot = api
            .call(ApiRequest::new(Method::GET, "/v1/directory", Vec::new()))
            .await
            .unwrap();
        if latest.epoch > seen {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new history stayed at {}",
            latest.epoch
        );
        n += 1;
        user(&server, root.path(), &format!("user{n}")).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let carol = user(&server, root.path(), "carol").await;
    let err = alice.fetch_account("bob").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::KeyTransparency { reason, .. } if reason.contains("fork")),
        "{err:?}"
    );
    // The new history is what carol, who saw nothing before, was shown: she accepts it.
    carol.fetch_account("bob").await.unwrap();

    alice.close().await;
    carol.close().await;
    server.stop().await;
}
