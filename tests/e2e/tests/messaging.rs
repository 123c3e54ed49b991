//! 1:1 messaging end to end: in-process server on port 0, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hushwire_e2e::{MessageState, Suite};
use hushwire_tests::{TestServer, history_texts, open, options, receive, register, send};

async fn both_directions(suite: Suite) {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    alice.profile_mut().set_default_suite(suite).unwrap();

    let id = send(&mut alice, "bob", "hello bob").await;
    let got = receive(&mut bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].from, "alice");
    assert_eq!(got[0].conversation, "alice");
    assert_eq!(got[0].text, "hello bob");

    send(&mut bob, "alice", "hello alice").await;
    let got = receive(&mut alice).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "hello alice");
    assert_eq!(got[0].from, "bob");

    assert_eq!(history_texts(&alice, "bob"), ["hello bob", "hello alice"]);
    assert_eq!(history_texts(&bob, "alice"), ["hello bob", "hello alice"]);
    let conv = alice.profile().conversations().unwrap();
    assert_eq!(conv.len(), 1);
    assert_eq!(conv[0].suite, suite);
    let own = alice.profile().history("bob").unwrap();
    assert!(own[0].outgoing && own[0].state == MessageState::Sent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_xwing() {
    both_directions(Suite::XWing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_classic() {
    both_directions(Suite::Classic).await;
}

/// 100 messages to a recipient who is offline arrive once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_messages_to_offline_recipient() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let bob = register(root.path(), &server, "bob").await;
    drop(bob); // offline: no connection, profile closed

    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(alice.queue_text("bob", &format!("message {i}")).unwrap());
    }
    alice
        .flush_outbox(hushwire_tests::OP_TIMEOUT, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(alice.profile().outbox_len().unwrap(), 0);

    let mut bob = open(root.path(), "bob");
    let got = receive(&mut bob).await;
    let texts: Vec<String> = got.iter().map(|m| m.text.clone()).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    // Nothing comes twice.
    assert!(receive(&mut bob).await.is_empty());
    assert_eq!(history_texts(&bob, "alice"), expected);
    server.stop().await;
}

/// The server is shut down and reopened on the same data between send and receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_between_send_and_receive_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let (url, pin) = (server.url.clone(), server.pin.clone());
    let mut alice = register(root.path(), &server, "alice").await;
    let bob = register(root.path(), &server, "bob").await;
    drop(bob);
    for i in 0..10 {
        send(&mut alice, "bob", &format!("before restart {i}")).await;
    }
    alice.disconnect().await;
    server.stop().await;

    // Same data dir and the same port, so the profiles' stored URL still works.
    let config = hushwire_tests::config_at(&data, &url);
    let server = TestServer::start_with(config).await;
    assert_eq!(server.pin, pin, "the certificate survives a restart");

    let mut bob = open(root.path(), "bob");
    let got = receive(&mut bob).await;
    let expected: Vec<String> = (0..10).map(|i| format!("before restart {i}")).collect();
    assert_eq!(
        got.iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        expected
    );
    // The conversation goes on after the restart, both ways.
    send(&mut bob, "alice", "after restart").await;
    let got = receive(&mut alice).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "after restart");
    server.stop().await;
}

/// A live `receive` outlasts a server restart that takes longer than a few reconnect
/// attempts: it keeps reconnecting until its wait ends and gets what came meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_receive_outlasts_a_server_restart() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let url = server.url.clone();
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    send(&mut alice, "bob", "before").await;
    assert_eq!(receive(&mut bob).await.len(), 1);

    let mut texts = Vec::new();
    let mut on_event = |e: hushwire_client::Event| {
        if let hushwire_client::Event::Message(m) = e {
            texts.push(m.text);
        }
    };
    let waiting = bob.receive(
        std::time::Duration::from_secs(15),
        std::time::Duration::from_secs(10),
        &mut on_event,
    );
    let outage = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        alice.disconnect().await;
        server.stop().await;
        // Down for longer than the client's 4 attempts (about 1.5 s of backoff).
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let config = hushwire_tests::config_at(&data, &url);
        let server = TestServer::start_with(config).await;
        send(&mut alice, "bob", "after the restart").await;
        server
    };
    let (report, server) = tokio::join!(waiting, outage);
    report.expect("the wait outlasts the outage");
    assert_eq!(texts, ["after the restart"]);
    server.stop().await;
}

/// A message queued while the server is down stays in the outbox and goes out once,
/// with its original id, when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_keeps_message_in_outbox() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let url = server.url.clone();
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    send(&mut alice, "bob", "first").await;
    alice.disconnect().await;
    server.stop().await;

    let id = alice
        .queue_text("bob", "while the server was down")
        .unwrap();
    let err = alice
        .flush_outbox(std::time::Duration::from_secs(2), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, hushwire_client::ClientError::Unreachable { .. }),
        "got {err:?}"
    );
    assert!(alice.profile().is_outbox_item_pending(&id).unwrap());
    drop(alice); // the process ends with the message still queued

    let config = hushwire_tests::config_at(&data, &url);
    let server = TestServer::start_with(config).await;
    let mut alice = open(root.path(), "alice");
    receive(&mut alice).await; // any command that connects flushes the outbox
    assert!(!alice.profile().is_outbox_item_pending(&id).unwrap());
    let got = receive(&mut bob).await;
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["first", "while the server was down"]);
    assert_eq!(got[1].id, id);
    assert!(receive(&mut bob).await.is_empty());
    server.stop().await;
}

/// Sending to a handle nobody registered fails clearly and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handle_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    alice.queue_text("nobody", "hello?").unwrap();
    let err = alice
        .flush_outbox(hushwire_tests::OP_TIMEOUT, &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, hushwire_client::ClientError::UnknownHandle(ref h) if h == "nobody"),
        "got {err:?}"
    );
    // The text is marked failed and leaves the outbox: it blocks nothing behind it.
    assert_eq!(alice.profile().outbox_len().unwrap(), 0);
    let h = alice.profile().history("nobody").unwrap();
    assert_eq!(h[0].state, MessageState::Failed);
    let _bob = register(root.path(), &server, "bob").await;
    alice.queue_text("nobody", "again?").unwrap();
    alice.queue_text("bob", "behind it").unwrap();
    assert!(
        alice
            .flush_outbox(hushwire_tests::OP_TIMEOUT, &mut |_| {})
            .await
            .is_err()
    );
    alice
        .flush_outbox(hushwire_tests::OP_TIMEOUT, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(alice.profile().outbox_len().unwrap(), 0);
    assert_eq!(
        alice.profile().history("bob").unwrap()[0].state,
        MessageState::Sent
    );
    server.stop().await;
}

/// Taken handle and wrong pin are refused at registration with precise errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    register(root.path(), &server, "alice").await;
    let err = hushwire_client::register(
        &root.path().join("alice2"),
        "alice",
        &server.url,
        Some(&server.pin),
        None,
        options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, hushwire_client::ClientError::HandleTaken(_)),
        "got {err:?}"
    );

    let wrong_pin = format!("sha256:{}", "00".repeat(32));
    let err = hushwire_client::register(
        &root.path().join("carol"),
        "carol",
        &server.url,
        Some(&wrong_pin),
        None,
        options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, hushwire_client::ClientError::PinMismatch { .. }),
        "got {err:?}"
    );
    server.stop().await;
}
