//! Two server nodes in one process sharing ONE store, each with its own bus connection:
//! pushes and ephemeral signals cross nodes over NATS (`HUSHWIRE_TEST_NATS_URL`,
//! skipped visibly when unset), and with NATS down delivery goes on by polling; a node
//! shows the key directory epochs another node published.

// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "server/common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hushwire_proto::mls::{self, ContentType};
use hushwire_proto::wire::{self, client_frame, server_frame};
use hushwire_server::{RunningServer, Server, ServerConfig};
use hushwire_store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Node {
    addr: std::net::SocketAddr,
    prefix: String,
    pin: String,
    server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), hushwire_server::ServerError>>>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(store: Arc<dyn Store>, bus_url: &str, prefix: &str, poll: Duration) -> Self {
        Self::start_with(store, bus_url, prefix, poll, |_| {}).await
    }

    async fn start_with(
        store: Arc<dyn Store>,
        bus_url: &str,
        prefix: &str,
        poll: Duration,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config: ServerConfig = test_config(dir.path());
        config.bus.url = Some(bus_url.to_string());
        config.bus.subject_prefix = prefix.to_string();
        config.bus.poll_interval = poll;
        tweak(&mut config);
        let running: RunningServer = hushwire_server::bind(config, store).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let node = Node {
            addr: running.local_addr(),
            prefix: running.path_prefix().to_owned(),
            pin: running.pin().to_owned(),
            server: running.server().clone(),
            shutdown: Some(tx),
            handle: None,
            _dir: dir,
        };
        let handle = tokio::spawn(running.run(async move {
            let _ = rx.await;
        }));
        Node {
            handle: Some(handle),
            ..node
        }
    }

    fn client(&self) -> Client {
        Client {
            addr: self.addr,
            prefix: self.prefix.clone(),
            tls: client_tls(&self.pin),
            source: None,
        }
    }

    async fn bus_ready(&self) {
        tokio::time::timeout(TIMEOUT, async {
            while !self.server.bus_stats().ready {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the bus never became ready");
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(TIMEOUT, h)
                .await
                .expect("node did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

/// One store for both nodes (the embedded SQLite on a temp dir).
async fn shared_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    (hushwire_server::open_embedded(&config).await.unwrap(), dir)
}

fn nats_url() -> Option<String> {
    match std::env::var("HUSHWIRE_TEST_NATS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: HUSHWIRE_TEST_NATS_URL unset");
            None
        }
    }
}

fn random_prefix() -> String {
    format!("hwtest.{:016x}", rand::random::<u64>())
}

/// A URL where nothing listens.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("nats://127.0.0.1:{port}")
}

async fn create_group(ws: &mut Ws, group: &[u8], members: &[&Identity], id: u64) {
    let mut c = commit(group, 0, id, members);
    c.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: members.iter().skip(1).map(|m| m.addr()).collect(),
    }];
    accepted(ws.submit(id, c).await);
}

/// The next `deliver` of `kind`, skipping other frames, within `within`.
async fn next_deliver(ws: &mut Ws, kind: wire::EnvelopeKind, within: Duration) -> wire::Envelope {
    tokio::time::timeout(within, async {
        loop {
            if let Some(server_frame::Body::Deliver(e)) = ws.recv().await.body
                && e.kind == kind as i32
            {
                return e;
            }
        }
    })
    .await
    .expect("no delivery in time")
}

/// The next ephemeral signal, skipping other frames, within TIMEOUT.
async fn next_signal(ws: &mut Ws) -> wire::EphemeralDelivery {
    loop {
        if let Some(server_frame::Body::Ephemeral(e)) = ws.recv().await.body {
            return e;
        }
    }
}

/// `from` sends an ephemeral signal to g1; `to` (on the other node) receives it.
async fn signal_crosses(from: &mut Ws, to: &mut Ws, request_id: u64, text: &[u8]) {
    let mls = mls::synthetic_private_message(b"g1", 1, ContentType::Application, text);
    from.send(
        request_id,
        client_frame::Body::Ephemeral(wire::Ephemeral {
            group_id: Bytes::from_static(b"g1"),
            mls_message: mls.clone().into(),
        }),
    )
    .await;
    let got = tokio::time::timeout(PUSH_BOUND, next_signal(to))
        .await
        .expect("no signal in time");
    assert_eq!(got.mls_message, Bytes::from(mls));
    assert_eq!(got.group_id, Bytes::from_static(b"g1"));
}

/// Far beyond how long a push takes, far below the poll interval of the NATS tests.
const PUSH_BOUND: Duration = Duration::from_secs(15);
const LONG_POLL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn pushes_cross_nodes_over_nats_and_local_recipients_publish_nothing() {
    let Some(url) = nats_url() else { return };
    let (store, _store_dir) = shared_store().await;
    let prefix = random_prefix();
    let mut n1 = Node::start(Arc::clone(&store), &url, &prefix, LONG_POLL).await;
    let mut n2 = Node::start(Arc::clone(&store), &url, &prefix, LONG_POLL).await;
    n1.bus_ready().await;
    n2.bus_ready().await;
    let (c1, c2) = (n1.client(), n2.client());
    let alice = c1.new_user("alice").await;
    let carol = c1.new_user("carol").await;
    let bob = c2.new_user("bob").await;
    let mut alice_ws = c1.login(&alice).await;
    alice_ws.backlog().await;
    let mut carol_ws = c1.login(&carol).await;
    carol_ws.backlog().await;
    let mut bob_ws = c2.login(&bob).await;
    bob_ws.backlog().await;

    // alice (node 1) → bob (node 2): the Welcome, then a message, both pushed through
    // the bus well before node 2's poller (60 s) would find them.
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let welcome = next_deliver(&mut bob_ws, wire::EnvelopeKind::Welcome, PUSH_BOUND).await;
    assert_eq!(welcome.seq, 1);
    accepted(
        alice_ws
            .submit(2, app_message(b"g1", 1, 2, b"hi bob"))
            .await,
    );
    let msg = next_deliver(&mut bob_ws, wire::EnvelopeKind::Application, PUSH_BOUND).await;
    assert_eq!(msg.seq, 2);
    assert_eq!(msg.message_id, message_id(2));
    assert_eq!(msg.sender.unwrap().handle, "alice");
    assert!(n2.server.stats().wake_refetches >= 2);
    assert_eq!(n1.server.bus_stats().published, 2);

    // alice → carol, both on node 1: delivered by the hub, nothing published.
    create_group(&mut alice_ws, b"g2", &[&alice, &carol], 3).await;
    next_deliver(&mut carol_ws, wire::EnvelopeKind::Welcome, PUSH_BOUND).await;
    accepted(
        alice_ws
            .submit(4, app_message(b"g2", 1, 4, b"hi carol"))
            .await,
    );
    let msg = next_deliver(&mut carol_ws, wire::EnvelopeKind::Application, PUSH_BOUND).await;
    assert_eq!(msg.message_id, message_id(4));
    assert_eq!(n1.server.bus_stats().published, 2);

    // bob (node 2) answers alice (node 1).
    accepted(
        bob_ws
            .submit(5, app_message(b"g1", 1, 5, b"hi alice"))
            .await,
    );
    let msg = next_deliver(&mut alice_ws, wire::EnvelopeKind::Application, PUSH_BOUND).await;
    assert_eq!(msg.message_id, message_id(5));
    assert_eq!(n2.server.bus_stats().published, 1);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test]
async fn typing_and_presence_cross_nodes_over_nats() {
    let Some(url) = nats_url() else { return };
    let (store, _store_dir) = shared_store().await;
    let prefix = random_prefix();
    let mut n1 = Node::start(Arc::clone(&store), &url, &prefix, LONG_POLL).await;
    let mut n2 = Node::start(Arc::clone(&store), &url, &prefix, LONG_POLL).await;
    n1.bus_ready().await;
    n2.bus_ready().await;
    let (c1, c2) = (n1.client(), n2.client());
    let alice = c1.new_user("alice").await;
    let bob = c2.new_user("bob").await;
    let mut alice_ws = c1.login(&alice).await;
    alice_ws.backlog().await;
    let mut bob_ws = c2.login(&bob).await;
    bob_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;

    signal_crosses(&mut alice_ws, &mut bob_ws, 10, b"alice is typing").await;
    signal_crosses(&mut bob_ws, &mut alice_ws, 11, b"bob is online").await;
    // Never stored: the signals left no mailbox entries behind the Welcome.
    n1.stop().await;
    n2.stop().await;
    let bob_dev = store
        .device(&hushwire_store::DeviceAddr {
            handle: "bob".into(),
            device_id: bob.device_id,
        })
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(store.pending(bob_dev).await.unwrap(), 1);
}

#[tokio::test]
async fn with_nats_down_delivery_continues_by_polling_and_nothing_is_lost() {
    let (store, _store_dir) = shared_store().await;
    let url = closed_port_url();
    let poll = Duration::from_millis(200);
    let mut n1 = Node::start(Arc::clone(&store), &url, "hw", poll).await;
    let mut n2 = Node::start(Arc::clone(&store), &url, "hw", poll).await;
    let (c1, c2) = (n1.client(), n2.client());
    let alice = c1.new_user("alice").await;
    let bob = c2.new_user("bob").await;
    let mut alice_ws = c1.login(&alice).await;
    alice_ws.backlog().await;
    let mut bob_ws = c2.login(&bob).await;
    bob_ws.backlog().await;

    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    const N: u64 = 20;
    for i in 0..N {
        accepted(
            alice_ws
                .submit(10 + i, app_message(b"g1", 1, 10 + i, b"m"))
                .await,
        );
    }
    // Everything arrives, in order, without a gap.
    let welcome = next_deliver(&mut bob_ws, wire::EnvelopeKind::Welcome, TIMEOUT).await;
    assert_eq!(welcome.seq, 1);
    for i in 0..N {
        let e = next_deliver(&mut bob_ws, wire::EnvelopeKind::Application, TIMEOUT).await;
        assert_eq!(e.seq, 2 + i);
        assert_eq!(e.message_id, message_id(10 + i));
    }
    // And alice hears bob the same way.
    accepted(bob_ws.submit(99, app_message(b"g1", 1, 99, b"back")).await);
    let e = next_deliver(&mut alice_ws, wire::EnvelopeKind::Application, TIMEOUT).await;
    assert_eq!(e.message_id, message_id(99));

    assert!(n2.server.stats().wake_refetches >= 1);
    for n in [&n1, &n2] {
        let s = n.server.bus_stats();
        assert!(!s.ready);
        assert_eq!(s.published, 0);
    }
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test]
async fn a_device_removed_through_another_node_is_disconnected_by_the_poller() {
    use ed25519_dalek::{Signer, SigningKey};
    use prost::Message as _;
    let (store, _store_dir) = shared_store().await;
    let url = closed_port_url();
    let poll = Duration::from_millis(200);
    let mut n1 = Node::start(Arc::clone(&store), &url, "hw", poll).await;
    let mut n2 = Node::start(Arc::clone(&store), &url, "hw", poll).await;
    let (c1, c2) = (n1.client(), n2.client());
    let alice = c1.new_user("alice").await;
    let device = SigningKey::generate(&mut rand::rngs::OsRng);
    let key = device.verifying_key().to_bytes();
    let created = now_ms();
    let payload = hushwire_proto::identity::device_cert_payload("alice", &key, created);
    let added: wire::DeviceAdded = c1
        .signed(
            &alice,
            "POST",
            "/v1/devices",
            wire::AddDevice {
                certificate: Some(wire::DeviceCertificate {
                    device_key: Bytes::copy_from_slice(&key),
                    created_at_ms: created,
                    signature: Bytes::copy_from_slice(&alice.account.sign(&payload).to_bytes()),
                }),
            }
            .encode_to_vec(),
        )
        .await
        .decode();
    let alice2 = Identity {
        handle: "alice".into(),
        account: alice.account.clone(),
        device,
        device_id: added.device_id,
    };
    let mut ws1 = c1.login(&alice).await;
    ws1.backlog().await;
    let mut ws2 = c2.login(&alice2).await;
    ws2.backlog().await;

    // Removed through node 1; its connection is on node 2, which learns it by polling.
    c1.signed(&alice, "DELETE", "/v1/devices/2", vec![])
        .await
        .decode::<()>();
    let (code, reason) = ws2.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "device removed"));
    ws1.ping().await;
    n1.stop().await;
    n2.stop().await;
}

/// Node 1 publishes the key directory every 200 ms, node 2 every hour (so within the
/// test it never follows on its own schedule). Node 2's public roots still show node 1's
/// epoch at once, and its audit proof covers it: a client or an auditor moving between
/// nodes never sees the directory go back.
#[tokio::test]
async fn a_node_shows_the_directory_epochs_another_node_published() {
    let (store, _store_dir) = shared_store().await;
    let url = closed_port_url();
    let poll = Duration::from_millis(200);
    let interval = |d: Duration| move |c: &mut ServerConfig| c.directory.publish_interval = d;
    let mut n1 = Node::start_with(
        Arc::clone(&store),
        &url,
        "hw",
        poll,
        interval(Duration::from_millis(200)),
    )
    .await;
    let mut n2 = Node::start_with(
        Arc::clone(&store),
        &url,
        "hw",
        poll,
        interval(Duration::from_secs(3600)),
    )
    .await;
    let (c1, c2) = (n1.client(), n2.client());
    let latest = async |c: &Client| {
        let r = c.raw("GET", "/v1/directory", vec![], &[]).await;
        // 503 while the node is still opening its directory.
        (r.status == 200).then(|| r.decode::<wire::DirectoryRoot>())
    };
    // Both directories open (bounded) before anything is published: node 2's own tree
    // stays at epoch 0.
    for c in [&c1, &c2] {
        let root = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(root) = latest(c).await {
                    break root;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a node never opened its directory");
        assert_eq!(root.epoch, 0);
    }
    c1.new_user("alice").await;
    // Bounded: until node 1 has published alice's epoch.
    let published = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(root) = latest(&c1).await
                && root.epoch >= 1
            {
                break root;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node 1 never published the directory");
    let shown = latest(&c2).await.expect("node 2's directory is open");
    assert_eq!(
        (shown.epoch, &shown.root_hash, &shown.signature),
        (published.epoch, &published.root_hash, &published.signature)
    );
    let roots: wire::DirectoryRoots = c2
        .raw("GET", "/v1/directory/roots?after=0", vec![], &[])
        .await
        .decode();
    let last = roots.roots.last().expect("node 2 lists no root");
    assert_eq!(
        (last.epoch, &last.root_hash),
        (published.epoch, &published.root_hash)
    );
    let audit: wire::DirectoryAudit = c2
        .raw(
            "GET",
            &format!("/v1/directory/audit/{}", published.epoch),
            vec![],
            &[],
        )
        .await
        .decode();
    assert_eq!(audit.epoch, published.epoch);
    assert!(!audit.proof.is_empty());
    n1.stop().await;
    n2.stop().await;
}
