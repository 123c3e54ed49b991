//! What must never happen: duplicates after a crash between store and ack, forked groups
//! after a commit race, harm from hostile frames, a dead end when key packages run out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::{SinkExt, StreamExt};
use hushwire_client::api::signing_time_ms;
use hushwire_client::{ApiClient, ApiRequest, Connection, Endpoint, ProfileSigner};
use hushwire_e2e::{E2eError, Profile};
use hushwire_proto::wire::{self, server_frame};
use hushwire_store::{Accounts, DeviceAddr, Mailboxes};
use hushwire_tests::{OP_TIMEOUT, TestServer, history_texts, open, receive, register, send};

fn now_ms() -> u64 {
    hushwire_client::api::unix_ms()
}

async fn fetch_account(endpoint: &Endpoint, profile: &Profile, handle: &str) -> wire::AccountInfo {
    let req = ApiRequest::account(handle)
        .sign(
            endpoint,
            &ProfileSigner::new(profile).unwrap(),
            signing_time_ms(),
        )
        .unwrap();
    ApiClient::new(endpoint.clone())
        .unwrap()
        .call(req)
        .await
        .unwrap()
}

/// A client that stored envelopes and died before acknowledging them gets them again
/// from the server, and shows each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_between_store_and_ack_shows_no_duplicate() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    drop(register(root.path(), &server, "bob").await);
    for i in 0..5 {
        send(&mut alice, "bob", &format!("m{i}")).await;
    }

    // Bob's process: connects, stores every envelope, and is killed before its ack.
    let endpoint = Endpoint::new(&server.url, Some(&server.pin)).unwrap();
    let mut profile = hushwire_tests::open_profile(&root.path().join("bob")).unwrap();
    let pending = Connection::open(&endpoint).await.unwrap();
    let auth = pending
        .auth_response(&ProfileSigner::new(&profile).unwrap())
        .unwrap();
    let mut conn = pending.authenticate(auth, OP_TIMEOUT).await.unwrap();
    let mut stored = 0;
    loop {
        let frame = tokio::time::timeout(OP_TIMEOUT, conn.recv())
            .await
            .unwrap()
            .unwrap();
        match frame.body {
            Some(server_frame::Body::Deliver(env)) => loop {
                match profile.receive(&env, now_ms()) {
                    Ok(_) => {
                        stored += 1;
                        break;
                    }
                    Err(E2eError::NeedAccount(h)) => {
                        let info = fetch_account(&endpoint, &profile, &h).await;
                        profile.learn_account(&info).unwrap();
                    }
                    Err(e) => panic!("receive failed: {e}"),
                }
            },
            Some(server_frame::Body::Drained(_)) => break,
            _ => {}
        }
    }
    assert_eq!(stored, 6, "one Welcome and five messages");
    assert_eq!(history_texts_of(&profile, "alice").len(), 5);
    drop(conn); // killed: no ack was sent
    drop(profile);

    let bob_dev = server
        .store
        .device(&DeviceAddr {
            handle: "bob".into(),
            device_id: 1,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        server.store.pending(bob_dev.id).await.unwrap(),
        6,
        "nothing was acked"
    );

    // Restarted, bob receives again: the server redelivers, nothing shows twice.
    let mut bob = open(root.path(), "bob");
    assert!(receive(&mut bob).await.is_empty());
    assert_eq!(history_texts(&bob, "alice"), ["m0", "m1", "m2", "m3", "m4"]);
    // The ack is a one-way frame: wait (bounded) for the server to have applied it.
    bob.disconnect().await;
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = server.store.pending(bob_dev.id).await.unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pending, 0, "the redelivered entries were acknowledged");
    server.stop().await;
}

fn history_texts_of(profile: &Profile, conversation: &str) -> Vec<String> {
    profile
        .history(conversation)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// Both members commit in the same epoch at once: the server accepts exactly one, the
/// loser redoes its change at the next epoch, and both end in the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_one_wins_and_both_converge() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    send(&mut alice, "bob", "hi").await;
    receive(&mut bob).await;
    let group_id = alice.profile().groups("bob").unwrap()[0].group_id.clone();
    let before = hushwire_store::Delivery::group(&*server.store, &group_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.epoch, 1);

    alice.profile_mut().queue_self_update("bob").unwrap();
    bob.profile_mut().queue_self_update("alice").unwrap();
    let (mut ignore_a, mut ignore_b) = (|_| {}, |_| {});
    let (a, b) = tokio::join!(
        alice.flush_outbox(OP_TIMEOUT, &mut ignore_a),
        bob.flush_outbox(OP_TIMEOUT, &mut ignore_b)
    );
    a.unwrap();
    b.unwrap();
    // Let each side process the other's commit (and any redo).
    for _ in 0..3 {
        receive(&mut alice).await;
        receive(&mut bob).await;
    }
    let after = hushwire_store::Delivery::group(&*server.store, &group_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.epoch, 3,
        "one commit won epoch 1, the loser's redo took epoch 2"
    );
    let ga = &alice.profile().groups("bob").unwrap()[0];
    let gb = &bob.profile().groups("alice").unwrap()[0];
    assert_eq!((ga.epoch, gb.epoch), (3, 3));
    assert_eq!(
        ga.epoch_authenticator, gb.epoch_authenticator,
        "same group state"
    );

    send(&mut alice, "bob", "after the race").await;
    send(&mut bob, "alice", "still talking").await;
    receive(&mut alice).await;
    receive(&mut bob).await;
    for client in [&alice, &bob] {
        let peer = if client.identity().unwrap().handle == "alice" {
            "bob"
        } else {
            "alice"
        };
        // Each side lists its own message where it queued it, so compare as sets.
        let mut texts = history_texts(client, peer);
        texts.sort();
        assert_eq!(texts, ["after the race", "hi", "still talking"]);
    }
    server.stop().await;
}

/// Malformed, oversized and text frames close only the offending connection; a
/// conversation going on at the same time is unaffected and nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_harm_no_one_else() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    send(&mut alice, "bob", "before").await;

    let endpoint = Endpoint::new(&server.url, Some(&server.pin)).unwrap();
    let attacks: Vec<(tokio_tungstenite::tungstenite::Message, u16)> = vec![
        (vec![0xff, 0xff, 0xff, 0x01].into(), 1002), // undecodable frame
        ("hello".into(), 1003),                      // text frame
        (vec![0u8; 2 * 1024 * 1024].into(), 1009),   // oversized
    ];
    for (msg, expected) in attacks {
        let tls = endpoint.connect_tls().await.unwrap();
        let url = endpoint.ws_url().unwrap();
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.max_frame_size = None;
        config.max_message_size = None;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(config))
                .await
                .unwrap();
        let _challenge = ws.next().await.unwrap().unwrap();
        let _ = ws.send(msg).await;
        let code = loop {
            match tokio::time::timeout(OP_TIMEOUT, ws.next()).await.unwrap() {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    break u16::from(f.code);
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(code, expected);
    }

    send(&mut alice, "bob", "after").await;
    let texts: Vec<String> = receive(&mut bob)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["before", "after"]);
    server.stop().await;
}

/// When every one-time key package of a device has been claimed, the last-resort one
/// still lets a new conversation start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_key_packages_fall_back_to_last_resort() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let endpoint = Endpoint::new(&server.url, Some(&server.pin)).unwrap();
    let api = ApiClient::new(endpoint.clone()).unwrap();
    let suite = hushwire_e2e::Suite::XWing.code();
    // Drain bob's one-time packages (registration uploaded INITIAL_KEY_PACKAGES).
    for _ in 0..hushwire_client::INITIAL_KEY_PACKAGES {
        let req = ApiRequest::claim_key_packages(&wire::ClaimKeyPackages {
            handle: "bob".into(),
            ciphersuite: u32::from(suite),
        })
        .sign(
            &endpoint,
            &ProfileSigner::new(alice.profile()).unwrap(),
            signing_time_ms(),
        )
        .unwrap();
        let got: wire::ClaimedKeyPackages = api.call(req).await.unwrap();
        assert_eq!(got.key_packages.len(), 1);
    }
    let count_req = ApiRequest::key_package_count(suite)
        .sign(
            &endpoint,
            &ProfileSigner::new(bob.profile()).unwrap(),
            signing_time_ms(),
        )
        .unwrap();
    let count: wire::KeyPackageCount = api.call(count_req).await.unwrap();
    assert_eq!((count.available, count.has_last_resort), (0, true));

    send(&mut alice, "bob", "via last resort").await;
    assert_eq!(receive(&mut bob).await[0].text, "via last resort");
    // Bob's client topped its one-time packages up again while receiving.
    let count_req = ApiRequest::key_package_count(suite)
        .sign(
            &endpoint,
            &ProfileSigner::new(bob.profile()).unwrap(),
            signing_time_ms(),
        )
        .unwrap();
    let count: wire::KeyPackageCount = api.call(count_req).await.unwrap();
    assert!(count.available > 0);
    server.stop().await;
}
