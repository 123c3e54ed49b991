use bytes::Bytes;
use hushwire_proto::wire::{self, EnvelopeKind, ErrorCode, client_frame, submit_result};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn ws_auth_good_and_bad() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;

    // Good, then ping.
    let mut ws = c.login(&alice).await;
    assert_eq!(ws.backlog().await, (vec![], 0));
    ws.ping().await;

    // Signature by another key.
    let mut mallory = Identity::new("alice");
    mallory.device_id = 1;
    let mut ws2 = c.ws_connect().await;
    let nonce = ws2.challenge().await;
    ws2.send_auth(&mallory, &nonce).await;
    let (code, reason) = ws2.expect_close().await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "authentication failed");

    // Signature over another nonce.
    let mut ws3 = c.ws_connect().await;
    let _ = ws3.challenge().await;
    ws3.send_auth(&alice, &[0u8; 32]).await;
    assert_eq!(ws3.expect_close().await.0, 1008);

    // Unknown device.
    let mut ghost = Identity::new("ghost");
    ghost.device_id = 1;
    let mut ws4 = c.ws_connect().await;
    let nonce = ws4.challenge().await;
    ws4.send_auth(&ghost, &nonce).await;
    let (code, reason) = ws4.expect_close().await;
    assert_eq!(code, 1008);
    // The same answer as a bad signature: it does not say whether "ghost" exists.
    assert_eq!(reason, "authentication failed");

    // A frame before auth.
    let mut ws5 = c.ws_connect().await;
    let _ = ws5.challenge().await;
    ws5.send(
        1,
        client_frame::Body::Ping(wire::Ping { client_time_ms: 1 }),
    )
    .await;
    let (code, reason) = ws5.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("auth"), "{reason}");

    // The good connection is unaffected.
    ws.ping().await;
}

#[tokio::test]
async fn revoked_device_cannot_log_in() {
    use hushwire_store::{Accounts, DeviceAddr};
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    server
        .store
        .revoke_device(&DeviceAddr {
            handle: "alice".into(),
            device_id: 1,
        })
        .await
        .unwrap();
    let mut ws = c.ws_connect().await;
    let nonce = ws.challenge().await;
    ws.send_auth(&alice, &nonce).await;
    assert_eq!(ws.expect_close().await.0, 1008);
}

/// alice creates a group with bob (and optionally more); returns the epoch after.
/// As a real client does, the creating commit carries a Welcome for every added member:
/// they receive that Welcome (kind WELCOME, group_seq 0), never the commit itself.
async fn create_group(ws: &mut Ws, group: &[u8], members: &[&Identity], id: u64) -> u64 {
    let mut c = commit(group, 0, id, members);
    c.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: members.iter().skip(1).map(|m| m.addr()).collect(),
    }];
    let a = accepted(ws.submit(id, c).await);
    assert_eq!(a.group_seq, 1);
    assert!(!a.duplicate);
    a.epoch
}

#[tokio::test]
async fn bad_frames_close_only_that_connection() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut bob_ws = c.login(&bob).await;
    bob_ws.backlog().await;

    let cases: Vec<(Message, u16, &str)> = vec![
        (
            Message::Binary(Bytes::from_static(&[0xff, 0xff, 0xff])),
            1002,
            "malformed",
        ),
        (Message::Binary(Bytes::new()), 1002, "missing"),
        (Message::Text("hello".into()), 1003, "text"),
        (
            Message::Binary(Bytes::from(vec![
                0u8;
                hushwire_proto::limits::MAX_FRAME_BYTES + 1
            ])),
            1009,
            "exceeds",
        ),
    ];
    for (msg, want_code, want_reason) in cases {
        let mut ws = c.login(&alice).await;
        ws.backlog().await;
        ws.send_raw(msg).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, want_code, "{reason}");
        assert!(reason.contains(want_reason), "{reason}");
        // bob keeps working.
        bob_ws.ping().await;
    }
    // An auth frame after login is a protocol error too.
    let mut ws = c.login(&alice).await;
    ws.backlog().await;
    let nonce = [0u8; 32];
    ws.send_auth(&alice, &nonce).await;
    assert_eq!(ws.expect_close().await.0, 1002);

    // And bob still gets messages.
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.kind, EnvelopeKind::Welcome as i32);
}

#[tokio::test]
async fn submit_is_pushed_to_the_online_recipient() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    let mut bob_ws = c.login(&bob).await;
    bob_ws.backlog().await;

    let epoch = create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    assert_eq!(epoch, 1);
    // bob was added: he gets the Welcome (outside the group log), not the commit.
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.kind, EnvelopeKind::Welcome as i32);
    assert_eq!(e.group_seq, 0);
    assert_eq!(e.sender.as_ref().unwrap().handle, "alice");
    let first_seq = e.seq;

    let msg = app_message(b"g1", 1, 2, b"hello bob");
    let a = accepted(alice_ws.submit(2, msg.clone()).await);
    assert_eq!((a.group_seq, a.epoch, a.duplicate), (2, 1, false));
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.seq, first_seq + 1);
    assert_eq!(e.kind, EnvelopeKind::Application as i32);
    assert_eq!(e.payload, msg.mls_message);
    assert_eq!(e.message_id, msg.message_id);
    assert_eq!(e.group_id.as_ref(), b"g1");

    // bob answers; alice gets it.
    let a = accepted(
        bob_ws
            .submit(3, app_message(b"g1", 1, 3, b"hi alice"))
            .await,
    );
    assert_eq!(a.group_seq, 3);
    let e = alice_ws.expect_deliver().await;
    assert_eq!(e.sender.as_ref().unwrap().handle, "bob");
}

#[tokio::test]
async fn offline_recipient_gets_backlog_then_drained_and_ack_deletes() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    for i in 2..=4 {
        accepted(alice_ws.submit(i, app_message(b"g1", 1, i, b"m")).await);
    }

    let mut bob_ws = c.login(&bob).await;
    let (backlog, last) = bob_ws.backlog().await;
    assert_eq!(backlog.len(), 4);
    assert!(backlog.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(last, backlog[3].seq);
    // The Welcome (group_seq 0), then the three messages of the group log.
    let group_seqs: Vec<u64> = backlog.iter().map(|e| e.group_seq).collect();
    assert_eq!(group_seqs, vec![0, 2, 3, 4]);

    // Ack the first two; the other two come again on the next connection.
    bob_ws
        .send(
            0,
            client_frame::Body::Ack(wire::Ack {
                up_to_seq: backlog[1].seq,
            }),
        )
        .await;
    // Acks are hints the store applies with its next commit, without holding up the
    // connection: wait (bounded) until this one has been applied.
    wait_pending(&server, &bob, 2).await;
    drop(bob_ws);
    let mut bob_ws = c.login(&bob).await;
    let (again, last2) = bob_ws.backlog().await;
    assert_eq!(
        again.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![backlog[2].seq, backlog[3].seq]
    );
    assert_eq!(last2, backlog[3].seq);
    bob_ws
        .send(0, client_frame::Body::Ack(wire::Ack { up_to_seq: last2 }))
        .await;
    wait_pending(&server, &bob, 0).await;
    drop(bob_ws);
    let mut bob_ws = c.login(&bob).await;
    assert_eq!(bob_ws.backlog().await, (vec![], 0));

    // A live message after an empty backlog is still delivered.
    accepted(alice_ws.submit(5, app_message(b"g1", 1, 5, b"live")).await);
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.seq, last2 + 1);
}

/// Waits (at most 5 s) until `who`'s mailbox holds exactly `n` entries.
async fn wait_pending(server: &TestServer, who: &Identity, n: u64) {
    use hushwire_store::{Accounts, DeviceAddr, Mailboxes};
    let addr = who.addr();
    let device = server
        .store
        .device(&DeviceAddr {
            handle: addr.handle.clone(),
            device_id: addr.device_id,
        })
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = server.store.pending(device).await.unwrap();
        if pending == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("mailbox holds {pending} entries, expected {n}");
}

#[tokio::test]
async fn duplicate_submit_returns_the_original_result() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let msg = app_message(b"g1", 1, 2, b"once");
    let first = accepted(alice_ws.submit(10, msg.clone()).await);
    let again = accepted(alice_ws.submit(11, msg).await);
    assert!(again.duplicate);
    assert_eq!(
        (again.group_seq, again.epoch),
        (first.group_seq, first.epoch)
    );

    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    assert_eq!(
        backlog.len(),
        2,
        "commit + one copy of the message: {backlog:?}"
    );
}

#[tokio::test]
async fn stale_epoch_and_rejections() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mallory = c.new_user("mallory").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;

    match alice_ws
        .submit(2, commit(b"g1", 0, 2, &[&alice, &bob]))
        .await
    {
        submit_result::Outcome::StaleEpoch(s) => assert_eq!(s.current_epoch, 1),
        other => panic!("expected stale_epoch, got {other:?}"),
    }
    let a = accepted(
        alice_ws
            .submit(3, commit(b"g1", 1, 3, &[&alice, &bob]))
            .await,
    );
    assert_eq!(a.epoch, 2);

    let rejected = |o: submit_result::Outcome| match o {
        submit_result::Outcome::Rejected(e) => e,
        other => panic!("expected rejected, got {other:?}"),
    };
    let e = rejected(
        alice_ws
            .submit(4, app_message(b"nogroup", 0, 4, b"x"))
            .await,
    );
    assert_eq!(e.code, ErrorCode::UnknownGroup as i32);

    let mut mallory_ws = c.login(&mallory).await;
    mallory_ws.backlog().await;
    let e = rejected(mallory_ws.submit(5, app_message(b"g1", 2, 5, b"x")).await);
    assert_eq!(e.code, ErrorCode::NotMember as i32);

    // Group id mismatch and a short message id are refused without closing.
    let mut bad = app_message(b"g1", 2, 6, b"x");
    bad.group_id = Bytes::from_static(b"g2");
    assert_eq!(
        rejected(alice_ws.submit(6, bad).await).code,
        ErrorCode::BadRequest as i32
    );
    let mut bad = app_message(b"g1", 2, 7, b"x");
    bad.message_id = Bytes::from_static(b"short");
    assert_eq!(
        rejected(alice_ws.submit(7, bad).await).code,
        ErrorCode::BadRequest as i32
    );
    // Roster with an unknown device.
    let mut ghost = Identity::new("ghost");
    ghost.device_id = 1;
    let e = rejected(
        alice_ws
            .submit(8, commit(b"g1", 2, 8, &[&alice, &ghost]))
            .await,
    );
    assert_eq!(e.code, ErrorCode::NotFound as i32, "{e:?}");
    alice_ws.ping().await;
}

#[tokio::test]
async fn commit_welcomes_reach_added_devices() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    let mut s = commit(b"g1", 0, 1, &[&alice, &bob]);
    s.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: vec![bob.addr()],
    }];
    accepted(alice_ws.submit(1, s).await);
    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    let kinds: Vec<i32> = backlog.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&(EnvelopeKind::Welcome as i32)), "{kinds:?}");
    let w = backlog
        .iter()
        .find(|e| e.kind == EnvelopeKind::Welcome as i32)
        .unwrap();
    assert_eq!(w.payload, welcome_bytes());
    assert_eq!(w.group_seq, 0);
}

#[tokio::test]
async fn live_pushes_stay_in_order_even_for_a_slow_consumer() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    // bob's socket has a tiny receive buffer and bob does not read while the others
    // send ~8 MB: the server's writes to him block, his 32-slot push queue overflows
    // and his connection must fall back to the mailbox.
    let mut bob_ws = c.login_on(c.ws_connect_small_buffer().await, &bob).await;
    bob_ws.backlog().await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    let mut carol_ws = c.login(&carol).await;
    carol_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob, &carol], 1).await;

    const N: u64 = 80;
    let big = vec![7u8; 100 * 1024];
    let a = async {
        for i in 0..N {
            accepted(
                alice_ws
                    .submit(100 + i, app_message(b"g1", 1, 100 + i, &big))
                    .await,
            );
        }
    };
    let b = async {
        for i in 0..N {
            accepted(
                carol_ws
                    .submit(1000 + i, app_message(b"g1", 1, 1000 + i, b"c"))
                    .await,
            );
        }
    };
    tokio::join!(a, b);

    let mut seqs = Vec::new();
    let mut from_alice = 0;
    for _ in 0..(1 + 2 * N) {
        let e = bob_ws.expect_deliver().await;
        if e.sender.as_ref().unwrap().handle == "alice"
            && e.kind == EnvelopeKind::Application as i32
        {
            assert!(e.payload.len() > 100 * 1024);
            from_alice += 1;
        }
        seqs.push(e.seq);
    }
    assert_eq!(from_alice, N);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or reorder: {seqs:?}"
    );
    bob_ws.ping().await; // nothing else was queued before the pong
    assert!(
        server.server.stats().lag_refetches > 0,
        "the overflow path was not exercised: {:?}",
        server.server.stats()
    );
}

#[tokio::test]
async fn a_new_login_replaces_the_old_connection() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let mut first = c.login(&alice).await;
    first.backlog().await;
    let mut second = c.login(&alice).await;
    second.backlog().await;
    let (code, reason) = first.expect_close().await;
    assert_eq!(code, 4000);
    assert!(reason.contains("replaced"));
    second.ping().await;
    assert_eq!(server.server.stats().devices_online, 1);
}

#[tokio::test]
async fn graceful_shutdown_closes_websockets_with_1001() {
    let mut server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut a = c.login(&alice).await;
    a.backlog().await;
    let mut b = c.login(&bob).await;
    b.backlog().await;
    // One socket still waiting for auth.
    let mut pending = c.ws_connect().await;
    pending.challenge().await;

    let stop = async { server.stop().await };
    let closes = async {
        let ca = a.expect_close().await;
        let cb = b.expect_close().await;
        let cp = pending.expect_close().await;
        (ca, cb, cp)
    };
    let ((), (ca, cb, cp)) = tokio::join!(stop, closes);
    assert_eq!(ca.0, 1001);
    assert_eq!(cb.0, 1001);
    assert_eq!(cp.0, 1001);
    assert_eq!(server.server.stats().connections, 0);
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn silent_client_is_closed_after_the_auth_timeout() {
    let server = TestServer::start_with(|c| c.auth_timeout_secs = 1).await;
    let c = server.client();
    let mut ws = c.ws_connect().await;
    ws.challenge().await;
    let (code, reason) = ws.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("timed out"), "{reason}");
}
