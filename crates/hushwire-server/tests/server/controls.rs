//! Conversation features on the WebSocket: ephemeral signals (relayed to connected
//! members only, never stored), blocks, retraction and disappearing submissions.

use bytes::Bytes;
use hushwire_proto::mls::{self, ContentType};
use hushwire_proto::wire::{self, EnvelopeKind, ErrorCode, client_frame, server_frame};
use hushwire_store::{Accounts, DeviceAddr, Mailboxes};

use crate::common::*;

async fn create_group(ws: &mut Ws, group: &[u8], members: &[&Identity], id: u64) {
    let mut c = commit(group, 0, id, members);
    c.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: members.iter().skip(1).map(|m| m.addr()).collect(),
    }];
    accepted(ws.submit(id, c).await);
}

/// Sends a frame answered by `done` and returns the answer.
pub(crate) async fn done(ws: &mut Ws, request_id: u64, body: client_frame::Body) -> wire::Done {
    ws.send(request_id, body).await;
    loop {
        let f = ws.recv().await;
        if let Some(server_frame::Body::Done(d)) = f.body {
            assert_eq!(f.request_id, request_id);
            return d;
        }
    }
}

pub(crate) fn code(d: &wire::Done) -> Option<ErrorCode> {
    d.error
        .as_ref()
        .map(|e| ErrorCode::try_from(e.code).unwrap())
}

fn ephemeral(group: &[u8], text: &[u8]) -> client_frame::Body {
    client_frame::Body::Ephemeral(wire::Ephemeral {
        group_id: Bytes::copy_from_slice(group),
        mls_message: mls::synthetic_private_message(group, 1, ContentType::Application, text)
            .into(),
    })
}

/// The next ephemeral signal pushed to `ws`: (sender handle, payload).
async fn next_signal(ws: &mut Ws) -> (String, Bytes) {
    loop {
        if let Some(server_frame::Body::Ephemeral(e)) = ws.recv().await.body {
            return (e.sender.unwrap().handle, e.mls_message);
        }
    }
}

pub(crate) async fn pending(server: &TestServer, who: &Identity) -> u64 {
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
    server.store.pending(device).await.unwrap()
}

#[tokio::test]
async fn ephemeral_signals_reach_connected_members_and_are_never_stored() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    assert_eq!(backlog.len(), 1); // the Welcome, left unacknowledged

    let d = done(&mut alice_ws, 2, ephemeral(b"g1", b"typing")).await;
    assert_eq!(d.error, None);
    let (from, payload) = next_signal(&mut bob_ws).await;
    assert_eq!(from, "alice");
    assert!(payload.ends_with(b"typing"));
    // Nothing was queued for bob: only the Welcome is there.
    assert_eq!(pending(&server, &bob).await, 1);

    // Refused: not a member, unknown group, not an application message, too large.
    let mut carol_ws = c.login(&carol).await;
    carol_ws.backlog().await;
    let d = done(&mut carol_ws, 3, ephemeral(b"g1", b"x")).await;
    assert_eq!(code(&d), Some(ErrorCode::NotMember));
    let d = done(&mut alice_ws, 4, ephemeral(b"nope", b"x")).await;
    assert_eq!(code(&d), Some(ErrorCode::UnknownGroup));
    let d = done(
        &mut alice_ws,
        5,
        client_frame::Body::Ephemeral(wire::Ephemeral {
            group_id: Bytes::from_static(b"g1"),
            mls_message: mls::synthetic_private_message(b"g1", 1, ContentType::Commit, b"c").into(),
        }),
    )
    .await;
    assert_eq!(code(&d), Some(ErrorCode::BadRequest));
    let big = vec![7u8; hushwire_proto::limits::MAX_EPHEMERAL_BYTES];
    let d = done(&mut alice_ws, 6, ephemeral(b"g1", &big)).await;
    assert_eq!(code(&d), Some(ErrorCode::TooLarge));
    // Every connection stayed open.
    alice_ws.ping().await;
    carol_ws.ping().await;
    bob_ws.ping().await;
}

#[tokio::test]
async fn ephemeral_signals_are_rate_limited() {
    let server = TestServer::start_with(|c| c.rate_limits.signals_per_device_per_minute = 3).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    for i in 0..3 {
        assert_eq!(
            done(&mut alice_ws, 10 + i, ephemeral(b"g1", b"x"))
                .await
                .error,
            None
        );
    }
    let d = done(&mut alice_ws, 20, ephemeral(b"g1", b"x")).await;
    assert_eq!(code(&d), Some(ErrorCode::RateLimited));
    alice_ws.ping().await;
}

#[tokio::test]
async fn submits_are_rate_limited_per_device_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| c.rate_limits.submits_per_device_per_minute = 4).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    let mut bob_ws = c.login(&bob).await;
    bob_ws.backlog().await;
    // The group's creating commit is a submit too: 1 of alice's 4.
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    bob_ws.expect_deliver().await; // the welcome
    for i in 2..=4 {
        accepted(alice_ws.submit(i, app_message(b"g1", 1, i, b"hi")).await);
    }
    // A flood (reactions, receipts and texts alike to the server): refused, nothing
    // stored for bob, alice's connection kept.
    for i in 5..=20 {
        match alice_ws.submit(i, app_message(b"g1", 1, i, b"flood")).await {
            wire::submit_result::Outcome::Rejected(e) => {
                assert_eq!(e.code(), ErrorCode::RateLimited, "{}", e.message);
            }
            other => panic!("submit {i} past the limit: {other:?}"),
        }
    }
    alice_ws.ping().await;
    assert_eq!(pending(&server, &bob).await, 4);
    // bob's own budget is untouched: he replies at once.
    for i in 100..104 {
        accepted(bob_ws.submit(i, app_message(b"g1", 1, i, b"reply")).await);
    }
    assert_eq!(pending(&server, &alice).await, 4);
}

#[tokio::test]
async fn a_block_stops_messages_and_signals_to_the_blocker() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob, &carol], 1).await;
    let mut bob_ws = c.login(&bob).await;
    let (_, last) = bob_ws.backlog().await;
    bob_ws
        .send(0, client_frame::Body::Ack(wire::Ack { up_to_seq: last }))
        .await;
    let mut carol_ws = c.login(&carol).await;
    carol_ws.backlog().await;

    let block = |handle: &str, blocked| {
        client_frame::Body::Block(wire::SetBlock {
            handle: handle.into(),
            blocked,
        })
    };
    assert_eq!(
        code(&done(&mut bob_ws, 2, block("bob", true)).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        code(&done(&mut bob_ws, 3, block("Not Valid", true)).await),
        Some(ErrorCode::InvalidHandle)
    );
    assert_eq!(done(&mut bob_ws, 4, block("alice", true)).await.error, None);

    // alice's message is not queued for bob; carol's is.
    accepted(
        alice_ws
            .submit(5, app_message(b"g1", 1, 5, b"from alice"))
            .await,
    );
    accepted(
        carol_ws
            .submit(6, app_message(b"g1", 1, 6, b"from carol"))
            .await,
    );
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.sender.unwrap().handle, "carol");
    // Signals likewise: the first bob sees is carol's (the queue keeps order).
    assert_eq!(
        done(&mut alice_ws, 7, ephemeral(b"g1", b"a")).await.error,
        None
    );
    assert_eq!(
        done(&mut carol_ws, 8, ephemeral(b"g1", b"c")).await.error,
        None
    );
    assert_eq!(next_signal(&mut bob_ws).await.0, "carol");

    // Unblocked: alice reaches bob again.
    assert_eq!(
        done(&mut bob_ws, 9, block("alice", false)).await.error,
        None
    );
    accepted(
        alice_ws
            .submit(10, app_message(b"g1", 1, 10, b"again"))
            .await,
    );
    let e = bob_ws.expect_deliver().await;
    assert_eq!(e.sender.unwrap().handle, "alice");
}

#[tokio::test]
async fn retract_removes_queued_copies_of_own_messages_only() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let msg = app_message(b"g1", 1, 2, b"regret");
    accepted(alice_ws.submit(2, msg.clone()).await);
    assert_eq!(pending(&server, &bob).await, 2);

    let retract = |id: Bytes| {
        client_frame::Body::Retract(wire::Retract {
            group_id: Bytes::from_static(b"g1"),
            message_id: id,
        })
    };
    // bob cannot retract alice's message; a malformed id is refused.
    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    assert_eq!(backlog.len(), 2);
    let d = done(&mut bob_ws, 3, retract(msg.message_id.clone())).await;
    assert_eq!(d.error, None);
    assert_eq!(pending(&server, &bob).await, 2);
    let d = done(&mut bob_ws, 4, retract(Bytes::from_static(b"abc"))).await;
    assert_eq!(code(&d), Some(ErrorCode::BadRequest));
    drop(bob_ws);

    let d = done(&mut alice_ws, 5, retract(msg.message_id.clone())).await;
    assert_eq!(d.error, None);
    assert_eq!(pending(&server, &bob).await, 1);
    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0].kind, EnvelopeKind::Welcome as i32);
}

#[tokio::test]
async fn disappearing_submissions_leave_the_queue_at_their_expiry() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    create_group(&mut alice_ws, b"g1", &[&alice, &bob], 1).await;
    let mut m = app_message(b"g1", 1, 2, b"poof");
    m.expire_after_ms = 1_000;
    accepted(alice_ws.submit(2, m).await);
    accepted(alice_ws.submit(3, app_message(b"g1", 1, 3, b"stays")).await);
    assert_eq!(pending(&server, &bob).await, 3);
    // The purge runs every second: poll with a bound.
    let mut left = 3;
    for _ in 0..200 {
        left = pending(&server, &bob).await;
        if left == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 2, "the disappearing message is still queued");
    let mut bob_ws = c.login(&bob).await;
    let (backlog, _) = bob_ws.backlog().await;
    assert!(backlog.iter().all(|e| !e.payload.ends_with(b"poof")));
    assert!(backlog.iter().any(|e| e.payload.ends_with(b"stays")));
}
