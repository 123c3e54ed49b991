//! Two server nodes in one process sharing ONE store, each with its own bus connection:
//! pushes and ephemeral signals cross nodes over NATS (`HUSHWIRE_TEST_NATS_URL`,
//! skipped visibly when unset), and with NATS down delivery goes on by polling.

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
        let dir = tempfile::tempdir().unwrap();
        let mut config: ServerConfig = test_config(dir.path());
        config.bus.url = Some(bus_url.to_string());
        config.bus.subject_prefix = prefix.to_string();
        config.bus.poll_interval = poll;
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
