//! The sync engine and the raw connection against an in-process server on 127.0.0.1.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use hushwire_client::{
    ApiClient, ApiRequest, Client, ClientError, ClientOptions, Connection, Endpoint, Event,
    KeySigner, register,
};
use hushwire_proto::identity::device_cert_payload;
use hushwire_proto::wire::{self, server_frame};
use hushwire_server::ServerConfig;

const T: Duration = Duration::from_secs(20);

struct TestServer {
    url: String,
    pin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("server"),
            ..ServerConfig::default()
        };
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
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

async fn user(server: &TestServer, root: &Path, handle: &str) -> Client {
    let dir = root.join(handle);
    let r = register(
        &dir,
        handle,
        &server.url,
        Some(&server.pin),
        None,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .await
    .unwrap();
    assert!(r.key_package_error.is_none());
    assert_eq!(r.key_packages, 42);
    Client::open(
        &dir,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap()
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

async fn receive_all(client: &mut Client) -> Vec<Event> {
    let mut events = Vec::new();
    client.sync(T, &mut |e| events.push(e)).await.unwrap();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_and_are_acknowledged_once_stored() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut alice = user(&server, root.path(), "alice").await;
    let mut bob = user(&server, root.path(), "bob").await;

    let id = alice.queue_text("bob", "hello").unwrap();
    let mut sent = Vec::new();
    alice.flush_outbox(T, &mut |e| sent.push(e)).await.unwrap();
    assert!(sent.contains(&Event::Sent { id: id.clone() }), "{sent:?}");
    assert!(!alice.profile().is_outbox_item_pending(&id).unwrap());

    let got = receive_all(&mut bob).await;
    assert_eq!(texts(&got), ["hello"]);
    // A fresh connection gets nothing again: the envelopes were acknowledged.
    bob.disconnect().await;
    assert!(texts(&receive_all(&mut bob).await).is_empty());

    bob.queue_text("alice", "hi").unwrap();
    bob.flush_outbox(T, &mut |_| {}).await.unwrap();
    assert_eq!(texts(&receive_all(&mut alice).await), ["hi"]);

    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_deliveries_wait_for_the_next_receive() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut alice = user(&server, root.path(), "alice").await;
    let mut bob = user(&server, root.path(), "bob").await;

    alice.queue_text("bob", "one").unwrap();
    alice.flush_outbox(T, &mut |_| {}).await.unwrap();

    // bob sends without receiving: alice's message is delivered on his connection but
    // left on the server.
    bob.set_defer_deliveries(true);
    bob.queue_text("alice", "two").unwrap();
    let mut during = Vec::new();
    bob.flush_outbox(T, &mut |e| during.push(e)).await.unwrap();
    assert!(texts(&during).is_empty(), "{during:?}");

    assert_eq!(texts(&receive_all(&mut bob).await), ["one"]);
    assert_eq!(texts(&receive_all(&mut alice).await), ["two"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_topped_up_when_claimed() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut alice = user(&server, root.path(), "alice").await;
    // Nothing to do right after registration.
    assert_eq!(alice.top_up_key_packages().await.unwrap(), 0);
    // Starting conversations claims one-time packages of the peers.
    for peer in ["bob", "carol", "dave"] {
        let mut c = user(&server, root.path(), peer).await;
        c.queue_text("alice", "hi").unwrap();
        c.flush_outbox(T, &mut |_| {}).await.unwrap();
    }
    assert_eq!(texts(&receive_all(&mut alice).await).len(), 3);
    // 20 - 3 = 17 left, above the low-water mark: still nothing to upload.
    assert_eq!(alice.top_up_key_packages().await.unwrap(), 0);
    let options = ClientOptions {
        key_package_low_water: 18,
        ..ClientOptions::default().with_passphrase("test passphrase")
    };
    let mut alice = Client::from_profile(alice.close().await, options).unwrap();
    assert_eq!(alice.top_up_key_packages().await.unwrap(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_connection_authenticates_with_a_device_key_only() {
    let server = TestServer::start().await;
    let endpoint = Endpoint::new(&server.url, Some(&server.pin)).unwrap();
    let api = ApiClient::new(endpoint.clone()).unwrap();

    let account = SigningKey::from_bytes(&[1u8; 32]);
    let device = SigningKey::from_bytes(&[2u8; 32]);
    let device_key = device.verifying_key().to_bytes();
    let req = wire::RegisterRequest {
        handle: "loadgen.1".into(),
        account_key: account.verifying_key().to_bytes().to_vec().into(),
        device: Some(wire::DeviceCertificate {
            device_key: device_key.to_vec().into(),
            created_at_ms: 1,
            signature: account
                .sign(&device_cert_payload("loadgen.1", &device_key, 1))
                .to_bytes()
                .to_vec()
                .into(),
        }),
        invite: String::new(),
    };
    let resp: wire::RegisterResponse = api.call(ApiRequest::register(&req)).await.unwrap();

    let signer = KeySigner::new("loadgen.1", resp.device_id, device);
    let mut conn = Connection::connect_with_signer(&endpoint, &signer)
        .await
        .unwrap();
    let frame = conn.recv().await.unwrap();
    assert!(
        matches!(frame.body, Some(server_frame::Body::Drained(_))),
        "{frame:?}"
    );
    let (mut tx, mut rx) = conn.split();
    tx.send(&wire::ClientFrame {
        request_id: 9,
        body: Some(wire::client_frame::Body::Ping(wire::Ping {
            client_time_ms: 5,
        })),
    })
    .await
    .unwrap();
    let pong = rx.recv().await.unwrap();
    assert!(
        matches!(pong.body, Some(server_frame::Body::Pong(_))),
        "{pong:?}"
    );

    // Another key for the same device is refused with close code 1008.
    let wrong = KeySigner::new(
        "loadgen.1",
        resp.device_id,
        SigningKey::from_bytes(&[3u8; 32]),
    );
    match Connection::connect_with_signer(&endpoint, &wrong).await {
        Err(ClientError::Closed { code: 1008, .. }) => {}
        other => panic!("expected close 1008, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_recipient_fails_its_texts_and_receiving_still_works() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut alice = user(&server, root.path(), "alice").await;
    match alice.fetch_account("nobody").await {
        Err(ClientError::UnknownHandle(h)) => assert_eq!(h, "nobody"),
        other => panic!("{other:?}"),
    }
    alice.queue_text("nobody", "lost?").unwrap();
    let err = alice.flush_outbox(T, &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownHandle(_)), "{err:?}");
    // The text failed for good and left the outbox; syncing goes on cleanly.
    let report = alice.sync(T, &mut |_| {}).await.unwrap();
    assert!(report.outbox_error.is_none(), "{:?}", report.outbox_error);
    assert_eq!(report.outbox_left, 0);
    let history = alice.profile().history("nobody").unwrap();
    assert_eq!(history[0].state, hushwire_client::MessageState::Failed);
    server.stop().await;
}
