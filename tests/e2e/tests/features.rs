//! Conversation features end to end (issue 7): receipts, reactions, replies, edits,
//! deletes, disappearing and view-once messages, typing, presence, message requests and
//! blocking, between two clients and in a three-member group. In-process server on port
//! 0, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use hushwire_client::{Client, ClientError, Event};
use hushwire_e2e::{Action, E2eError, ReceiptStatus};
use hushwire_proto::wire::{self, content::Body};
use hushwire_store::{Accounts, Controls, DeviceAddr, Mailboxes};
use hushwire_tests::{
    OP_TIMEOUT, TestServer, contains, history_texts, read_tree, receive, register, send,
};

fn now() -> u64 {
    hushwire_client::api::unix_ms()
}

async fn flush(c: &mut Client) {
    c.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    assert_eq!(c.profile().outbox_len().unwrap(), 0);
}

/// Every event of one sync.
async fn sync_events(c: &mut Client) -> Vec<Event> {
    let mut got = Vec::new();
    c.sync(OP_TIMEOUT, &mut |e| got.push(e)).await.unwrap();
    got
}

fn receipts_of(events: &[Event]) -> Vec<(String, String, ReceiptStatus)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Receipt {
                message_id,
                from,
                status,
                ..
            } => Some((message_id.clone(), from.clone(), *status)),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Undecryptable { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Mailbox entries the server holds for `handle`'s first device.
async fn pending_on_server(server: &TestServer, handle: &str) -> u64 {
    let d = server
        .store
        .device(&DeviceAddr {
            handle: handle.into(),
            device_id: 1,
        })
        .await
        .unwrap()
        .unwrap();
    server.store.pending(d.id).await.unwrap()
}

/// bob accepts alice's first message: a contact from then on.
async fn contacts(alice: &mut Client, bob: &mut Client) {
    send(alice, "bob", "hello bob").await;
    let events = sync_events(bob).await;
    assert!(events.iter().any(
        |e| matches!(e, Event::Request { conversation, from } if conversation == "alice" && from == "alice")
    ));
    bob.profile_mut().accept("alice", now()).unwrap();
    flush(bob).await;
    sync_events(alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_requests_receipts_reactions_replies_edits_deletes() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;

    // A first message from a stranger lands in requests: no receipt goes back.
    let hello = send(&mut alice, "bob", "hello bob").await;
    let events = sync_events(&mut bob).await;
    let request = events
        .iter()
        .position(|e| matches!(e, Event::Request { from, .. } if from == "alice"))
        .expect("a request event");
    let message = events
        .iter()
        .position(|e| matches!(e, Event::Message(m) if m.text == "hello bob"))
        .expect("the message");
    assert!(request < message, "the request comes first: {events:?}");
    let requests = bob.profile().requests().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].from, "alice");
    assert!(bob.profile().is_request("alice").unwrap());
    assert_eq!(
        bob.profile().outbox_len().unwrap(),
        0,
        "no receipt to a requester"
    );
    bob.profile_mut().mark_read("alice", now()).unwrap();
    assert_eq!(
        bob.profile().outbox_len().unwrap(),
        0,
        "no read receipt either"
    );
    assert!(receipts_of(&sync_events(&mut alice).await).is_empty());

    // Accepting sends the delivered receipt; reading then sends a read receipt
    // (marked read above already: read again after a new message).
    bob.profile_mut().accept("alice", now()).unwrap();
    assert!(bob.profile().requests().unwrap().is_empty());
    flush(&mut bob).await;
    let got = receipts_of(&sync_events(&mut alice).await);
    assert_eq!(
        got,
        [(hello.clone(), "bob".to_string(), ReceiptStatus::Delivered)]
    );
    let second = send(&mut alice, "bob", "second").await;
    // Stored on bob's device: delivered automatically.
    sync_events(&mut bob).await;
    assert_eq!(
        receipts_of(&sync_events(&mut alice).await),
        [(second.clone(), "bob".to_string(), ReceiptStatus::Delivered)]
    );
    assert_eq!(bob.profile_mut().mark_read("alice", now()).unwrap(), 1);
    flush(&mut bob).await;
    assert_eq!(
        receipts_of(&sync_events(&mut alice).await),
        [(second.clone(), "bob".to_string(), ReceiptStatus::Read)]
    );
    let receipts = alice.profile().receipts("bob").unwrap();
    assert_eq!(receipts[&second][0].status, ReceiptStatus::Read);
    assert_eq!(receipts[&hello][0].status, ReceiptStatus::Delivered);

    // Reactions: one per member, replaced, removed.
    bob.profile_mut().react(&second, "👍", now()).unwrap();
    flush(&mut bob).await;
    let events = sync_events(&mut alice).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::Reaction { message_id, emoji, from, .. }
            if *message_id == second && emoji == "👍" && from == "bob")));
    bob.profile_mut().react(&second, "❤️", now()).unwrap();
    alice.profile_mut().react(&second, "😂", now()).unwrap();
    flush(&mut bob).await;
    flush(&mut alice).await;
    sync_events(&mut alice).await;
    sync_events(&mut bob).await;
    for c in [&alice, &bob] {
        let r = c.profile().reactions("bob").unwrap_or_default();
        let r = if r.is_empty() {
            c.profile().reactions("alice").unwrap()
        } else {
            r
        };
        let mut got: Vec<(String, String)> = r[&second]
            .iter()
            .map(|x| (x.from.clone(), x.emoji.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("alice".to_string(), "😂".to_string()),
                ("bob".to_string(), "❤️".to_string())
            ]
        );
    }

    // A reply quotes the message it answers.
    let reply = bob
        .profile_mut()
        .queue_reply(&second, "a reply", now())
        .unwrap();
    flush(&mut bob).await;
    let got = receive(&mut alice).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, reply);
    assert_eq!(got[0].reply_to.as_deref(), Some(second.as_str()));

    // Edits by the author reach everyone; forged ones are rejected.
    alice
        .profile_mut()
        .edit(&second, "second (fixed)", now())
        .unwrap();
    flush(&mut alice).await;
    let events = sync_events(&mut bob).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::Edited { message_id, text, .. } if *message_id == second && text == "second (fixed)")));
    let m = bob
        .profile()
        .history("alice")
        .unwrap()
        .into_iter()
        .find(|m| m.id == second)
        .unwrap();
    assert_eq!(m.text, "second (fixed)");
    assert!(m.edited_at_ms.is_some());
    assert!(matches!(
        bob.profile_mut().edit(&second, "not mine", now()),
        Err(E2eError::NotAuthorized(_))
    ));
    // What a modified client of bob could send: alice's devices refuse it.
    let raw = |id: &str| hushwire_e2e::parse_message_id(id).unwrap().to_vec();
    bob.profile_mut()
        .queue_raw_content(
            "alice",
            Body::Edit(wire::Edit {
                message_id: raw(&second).into(),
                text: "forged".into(),
            }),
            now(),
        )
        .unwrap();
    bob.profile_mut()
        .queue_raw_content(
            "alice",
            Body::Delete(wire::Delete {
                message_id: raw(&hello).into(),
            }),
            now(),
        )
        .unwrap();
    flush(&mut bob).await;
    let events = sync_events(&mut alice).await;
    let refused = rejections(&events);
    assert_eq!(refused.len(), 2, "{events:?}");
    assert!(refused[0].contains("edit rejected: bob is not the author"));
    assert!(refused[1].contains("delete rejected: bob is not the author"));
    assert!(
        !refused.iter().any(|r| r.contains("forged")),
        "no plaintext in failures"
    );
    assert_eq!(
        history_texts(&alice, "bob"),
        ["hello bob", "second (fixed)", "a reply"]
    );

    // Delete for everyone by the author.
    assert_eq!(
        alice.profile_mut().delete_message(&second, now()).unwrap(),
        hushwire_e2e::DeleteScope::Everyone
    );
    flush(&mut alice).await;
    let events = sync_events(&mut bob).await;
    assert!(events.iter().any(
        |e| matches!(e, Event::Deleted { message_id, from, .. } if *message_id == second && from == "alice")
    ));
    assert_eq!(history_texts(&bob, "alice"), ["hello bob", "a reply"]);
    assert_eq!(history_texts(&alice, "bob"), ["hello bob", "a reply"]);
    assert!(
        !bob.profile()
            .reactions("alice")
            .unwrap()
            .contains_key(&second)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_group_features() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    let members = ["bob".to_string(), "carol".to_string()];
    alice.create_group("Trip", &members, None).unwrap();
    flush(&mut alice).await;
    let tent = send(&mut alice, "#Trip", "who brings the tent?").await;
    for c in [&mut bob, &mut carol] {
        let events = sync_events(c).await;
        assert!(!events.iter().any(|e| matches!(e, Event::Request { .. })));
    }
    // Per-member delivered receipts, then carol reads.
    let got = receipts_of(&sync_events(&mut alice).await);
    let mut from: Vec<String> = got.iter().map(|r| r.1.clone()).collect();
    from.sort();
    assert_eq!(from, ["bob", "carol"]);
    carol.profile_mut().mark_read("#Trip", now()).unwrap();
    flush(&mut carol).await;
    assert_eq!(
        receipts_of(&sync_events(&mut alice).await),
        [(tent.clone(), "carol".to_string(), ReceiptStatus::Read)]
    );
    let r = &alice.profile().receipts("#Trip").unwrap()[&tent];
    let status: Vec<(String, ReceiptStatus)> =
        r.iter().map(|x| (x.member.clone(), x.status)).collect();
    assert_eq!(
        status,
        [
            ("bob".to_string(), ReceiptStatus::Delivered),
            ("carol".to_string(), ReceiptStatus::Read)
        ]
    );
    // bob's and carol's read receipts of each other's messages are not recorded by them
    // (only the author records receipts).
    sync_events(&mut bob).await;
    assert!(bob.profile().receipts("#Trip").unwrap().is_empty());

    // Reactions and a reply in the group.
    bob.profile_mut().react(&tent, "🏕️", now()).unwrap();
    flush(&mut bob).await;
    let reply = carol
        .profile_mut()
        .queue_reply(&tent, "me!", now())
        .unwrap();
    flush(&mut carol).await;
    for c in [&mut alice, &mut bob] {
        sync_events(c).await;
        let r = &c.profile().reactions("#Trip").unwrap()[&tent];
        assert_eq!((r[0].from.as_str(), r[0].emoji.as_str()), ("bob", "🏕️"));
        let m = c
            .profile()
            .history("#Trip")
            .unwrap()
            .into_iter()
            .find(|m| m.id == reply)
            .unwrap();
        assert_eq!(m.reply_to.as_deref(), Some(tent.as_str()));
    }
    sync_events(&mut carol).await;

    // The author edits; a non-author's forged edit and delete are refused by all.
    alice
        .profile_mut()
        .edit(&tent, "who brings the big tent?", now())
        .unwrap();
    flush(&mut alice).await;
    let raw = hushwire_e2e::parse_message_id(&tent).unwrap().to_vec();
    carol
        .profile_mut()
        .queue_raw_content(
            "#Trip",
            Body::Delete(wire::Delete {
                message_id: raw.clone().into(),
            }),
            now(),
        )
        .unwrap();
    flush(&mut carol).await;
    for c in [&mut alice, &mut bob] {
        let events = sync_events(c).await;
        let refused = rejections(&events);
        assert_eq!(refused.len(), 1, "{events:?}");
        assert!(refused[0].contains("delete rejected: carol is not the author"));
        assert_eq!(history_texts(c, "#Trip")[0], "who brings the big tent?");
    }
    sync_events(&mut carol).await;
    assert_eq!(
        history_texts(&carol, "#Trip")[0],
        "who brings the big tent?"
    );

    // Timer: admins only. bob is refused locally, and a forged change is refused by all.
    assert!(matches!(
        bob.profile_mut().set_timer("#Trip", 3_600_000, now()),
        Err(E2eError::NotAuthorized(_))
    ));
    bob.profile_mut()
        .queue_raw_content(
            "#Trip",
            Body::Timer(wire::TimerChange { timer_ms: 5_000 }),
            now(),
        )
        .unwrap();
    flush(&mut bob).await;
    for c in [&mut alice, &mut carol] {
        let refused = rejections(&sync_events(c).await);
        assert!(refused[0].contains("timer change rejected: bob is not an admin"));
        assert_eq!(c.profile().timer("#Trip").unwrap(), 0);
    }
    alice
        .profile_mut()
        .set_timer("#Trip", 3_600_000, now())
        .unwrap();
    flush(&mut alice).await;
    for c in [&mut bob, &mut carol] {
        let events = sync_events(c).await;
        assert!(events.iter().any(|e| matches!(e,
            Event::TimerChanged { by, timer_ms: 3_600_000, .. } if by == "alice")));
        assert_eq!(c.profile().timer("#Trip").unwrap(), 3_600_000);
    }
    // A message sent now disappears in an hour, on every device.
    let later = send(&mut alice, "#Trip", "gone in an hour").await;
    for c in [&mut bob, &mut carol] {
        let got = receive(c).await;
        assert_eq!(got[0].id, later);
        let expires = got[0].expires_at_ms.unwrap();
        assert!(expires > now() + 3_500_000 && expires <= now() + 3_600_000);
    }

    // Delete for everyone by the author.
    alice.profile_mut().delete_message(&tent, now()).unwrap();
    flush(&mut alice).await;
    for c in [&mut bob, &mut carol] {
        sync_events(c).await;
        assert!(!history_texts(c, "#Trip").iter().any(|t| t.contains("tent")));
    }
    assert!(
        !history_texts(&alice, "#Trip")
            .iter()
            .any(|t| t.contains("tent"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_off_sends_none() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    bob.profile_mut().set_read_receipts(false).unwrap();
    let id = send(&mut alice, "bob", "did you read this?").await;
    sync_events(&mut bob).await;
    assert_eq!(
        bob.profile().unread_counts().unwrap(),
        [("alice".to_string(), 2)],
        "the two unread messages are counted"
    );
    assert_eq!(bob.profile_mut().mark_read("alice", now()).unwrap(), 2);
    assert!(bob.profile().unread_counts().unwrap().is_empty());
    assert_eq!(bob.profile().outbox_len().unwrap(), 0, "nothing queued");
    sync_events(&mut bob).await;
    let got = receipts_of(&sync_events(&mut alice).await);
    assert_eq!(
        got,
        [(id.clone(), "bob".to_string(), ReceiptStatus::Delivered)]
    );
    assert_eq!(
        alice.profile().receipts("bob").unwrap()[&id][0].status,
        ReceiptStatus::Delivered
    );
    // Turned on again, the next read sends one.
    bob.profile_mut().set_read_receipts(true).unwrap();
    let id2 = send(&mut alice, "bob", "and this?").await;
    sync_events(&mut bob).await;
    bob.profile_mut().mark_read("alice", now()).unwrap();
    flush(&mut bob).await;
    let got = receipts_of(&sync_events(&mut alice).await);
    assert!(got.contains(&(id2, "bob".to_string(), ReceiptStatus::Read)));
    server.stop().await;
}

/// Disappearing messages are gone from both clients' stores, the server's queue and
/// every file of the server after the timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_vanish_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");
    let server = TestServer::start(&server_dir).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    alice.profile_mut().set_timer("bob", 5_000, now()).unwrap();
    flush(&mut alice).await;
    let events = sync_events(&mut bob).await;
    assert!(events.iter().any(|e| matches!(
        e,
        Event::TimerChanged {
            timer_ms: 5_000,
            ..
        }
    )));
    assert_eq!(bob.profile().timer("alice").unwrap(), 5_000);

    // One message bob receives, one still queued on the server when its time is up.
    let seen_text = "self-destructing note 4711";
    let queued_text = "never fetched note 0815";
    let capture = |c: &mut Client, text: &str| {
        let id = c.queue_text("bob", text).unwrap();
        let Action::Submit(s) = c.profile_mut().next_action(now()).unwrap() else {
            panic!("expected a submit")
        };
        assert_eq!(s.expire_after_ms, 5_000);
        (id, s.mls_message.to_vec())
    };
    let (seen_id, seen_ct) = capture(&mut alice, seen_text);
    flush(&mut alice).await;
    let got = receive(&mut bob).await;
    assert_eq!(got[0].id, seen_id);
    assert!(got[0].expires_at_ms.is_some());
    let (_, queued_ct) = capture(&mut alice, queued_text);
    flush(&mut alice).await;
    assert_eq!(pending_on_server(&server, "bob").await, 1);
    assert!(
        read_tree(&server_dir)
            .iter()
            .any(|(_, b)| contains(b, &queued_ct)),
        "the queued ciphertext is on the server's disk before its time"
    );

    let alice_dir = root.path().join("alice");
    let bob_dir = root.path().join("bob");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        alice.profile_mut().sweep_expired(now()).unwrap();
        bob.profile_mut().sweep_expired(now()).unwrap();
        let stores_empty =
            history_texts(&alice, "bob").len() == 1 && history_texts(&bob, "alice").len() == 1;
        let in_profiles = [&alice_dir, &bob_dir].iter().any(|d| {
            read_tree(d).iter().any(|(_, b)| {
                contains(b, seen_text.as_bytes()) || contains(b, queued_text.as_bytes())
            })
        });
        let on_server = read_tree(&server_dir)
            .iter()
            .any(|(_, b)| contains(b, &seen_ct) || contains(b, &queued_ct));
        let queued = pending_on_server(&server, "bob").await;
        if stores_empty && !in_profiles && !on_server && queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there after 60 s: stores_empty={stores_empty} in_profiles={in_profiles} \
             on_server={on_server} queued={queued}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The purged one never arrives.
    assert!(receive(&mut bob).await.is_empty());
    assert_eq!(history_texts(&bob, "alice"), ["hello bob"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_once_is_shown_once_then_erased() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    let secret = "look once: 9911";
    let id = alice
        .profile_mut()
        .queue_text_with("bob", secret, None, true, now())
        .unwrap();
    flush(&mut alice).await;
    let got = receive(&mut bob).await;
    assert_eq!(got[0].id, id);
    assert!(got[0].view_once);
    assert_eq!(got[0].text, "", "hidden until opened");
    assert_eq!(history_texts(&bob, "alice")[1], "");
    let opened = bob.profile_mut().view_once(&id, now()).unwrap();
    assert_eq!(opened.text, secret);
    assert!(matches!(
        bob.profile_mut().view_once(&id, now()),
        Err(E2eError::Protocol(m)) if m.contains("viewed already")
    ));
    flush(&mut bob).await;
    let got = receipts_of(&sync_events(&mut alice).await);
    assert!(got.contains(&(id.clone(), "bob".to_string(), ReceiptStatus::Viewed)));
    // Erased on the recipient's device: in none of its files.
    let files = read_tree(&root.path().join("bob"));
    assert!(
        !files.iter().any(|(_, b)| contains(b, secret.as_bytes())),
        "the view-once text is still in bob's files"
    );
    server.stop().await;
}

/// Delete for everyone of a message still queued: the server drops its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_retracts_queued_copies() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    let oops = send(&mut alice, "bob", "oops, wrong chat").await;
    assert_eq!(pending_on_server(&server, "bob").await, 1);
    alice.profile_mut().delete_message(&oops, now()).unwrap();
    flush(&mut alice).await;
    // The retraction removed the text; what is queued now is the delete itself.
    assert_eq!(pending_on_server(&server, "bob").await, 1);
    let events = sync_events(&mut bob).await;
    assert!(!events.iter().any(|e| matches!(e, Event::Message(_))));
    assert_eq!(history_texts(&bob, "alice"), ["hello bob"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_sender_is_never_shown_nor_queued() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    send(&mut carol, "bob", "hi, buy my stuff").await;
    sync_events(&mut bob).await;
    assert_eq!(bob.profile().requests().unwrap().len(), 1);

    // Sent before the block reaches the server: bob's client drops it.
    send(&mut carol, "bob", "before the block").await;
    bob.profile_mut().block("carol", now()).unwrap();
    assert!(bob.profile().requests().unwrap().is_empty());
    let events = sync_events(&mut bob).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Message(_))),
        "{events:?}"
    );
    assert_eq!(
        server.store.blocked_by("bob").await.unwrap(),
        ["carol".to_string()]
    );
    // From now on the server queues nothing of carol's for bob.
    send(&mut carol, "bob", "after the block").await;
    assert_eq!(pending_on_server(&server, "bob").await, 0);
    assert!(receive(&mut bob).await.is_empty());
    assert_eq!(history_texts(&bob, "carol"), ["hi, buy my stuff"]);

    // Unblocked: delivered again.
    bob.profile_mut().unblock("carol").unwrap();
    flush(&mut bob).await;
    assert!(server.store.blocked_by("bob").await.unwrap().is_empty());
    send(&mut carol, "bob", "hello again").await;
    let got = receive(&mut bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "hello again");
    server.stop().await;
}

/// Typing reaches a contact who is online; presence is shared with contacts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_reach_contacts_only() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    contacts(&mut alice, &mut bob).await;
    // carol is a stranger to bob: her conversation is a request on his side.
    send(&mut carol, "bob", "hi bob, it's carol").await;
    sync_events(&mut bob).await;
    assert!(bob.profile().is_request("carol").unwrap());

    // bob stays online for a while, collecting what arrives, while alice and carol act
    // (one task: the two futures are polled together).
    let online = async {
        let mut events = Vec::new();
        bob.receive(Duration::from_secs(20), OP_TIMEOUT, &mut |e| events.push(e))
            .await
            .unwrap();
        events
    };
    let others = async {
        // alice asks until bob answers (he is then in his wait).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = alice
                .request_presence("bob", Duration::from_secs(1), OP_TIMEOUT, &mut |_| {})
                .await
                .unwrap();
            if p.is_some_and(|p| p.online) {
                break;
            }
            assert!(Instant::now() < deadline, "bob never answered alice");
        }
        assert!(alice.send_typing("bob", true, OP_TIMEOUT).await.unwrap());
        // carol is not a contact of bob: he answers nothing, and ignores her typing.
        let p = carol
            .request_presence("bob", Duration::from_secs(2), OP_TIMEOUT, &mut |_| {})
            .await
            .unwrap();
        assert!(p.is_none(), "presence revealed to a non-contact: {p:?}");
        carol.send_typing("bob", true, OP_TIMEOUT).await.unwrap();
        // bob still answers alice after carol's attempt.
        let p = alice
            .request_presence("bob", Duration::from_secs(5), OP_TIMEOUT, &mut |_| {})
            .await
            .unwrap();
        assert!(p.is_some_and(|p| p.online));
        alice.send_typing("bob", false, OP_TIMEOUT).await.unwrap();
    };
    let (events, ()) = tokio::join!(online, others);
    let typing: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Typing { from, typing, .. } => Some((from.clone(), *typing)),
            _ => None,
        })
        .collect();
    assert_eq!(
        typing,
        [("alice".to_string(), true), ("alice".to_string(), false)]
    );
    // Nobody's presence settings let carol see bob's; bob kept nothing from carol.
    assert!(bob.profile().presence_of("carol").unwrap().is_none());
    assert!(carol.profile().presence_of("bob").unwrap().is_none());
    // Ephemeral signals are never stored by the server.
    assert_eq!(pending_on_server(&server, "bob").await, 0);
    // Hiding from a contact means not seeing theirs either.
    alice
        .profile_mut()
        .set_presence_share(hushwire_e2e::PresenceShare::Nobody)
        .unwrap();
    assert!(matches!(
        alice
            .request_presence("bob", Duration::from_secs(1), OP_TIMEOUT, &mut |_| {})
            .await,
        Err(ClientError::E2e(E2eError::NotAuthorized(_)))
    ));
    server.stop().await;
}

/// The server's files of blob `id` (its hex id is in their paths).
fn blob_files(data_dir: &std::path::Path, blob_id: &[u8]) -> Vec<std::path::PathBuf> {
    let hex: String = blob_id.iter().map(|b| format!("{b:02x}")).collect();
    read_tree(data_dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.to_string_lossy().contains(&hex))
        .collect()
}

async fn send_file(c: &mut Client, source: &std::path::Path) -> String {
    let id = c
        .send_file("bob", source, &hushwire_client::SendFileOptions::default())
        .await
        .unwrap();
    c.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    id
}

async fn fetch_files(c: &mut Client) -> Vec<(String, hushwire_client::AttachmentInfo)> {
    let mut got = Vec::new();
    c.sync(OP_TIMEOUT, &mut |e| {
        if let Event::Attachment(m, info) = e {
            got.push((m.id, info));
        }
    })
    .await
    .unwrap();
    got
}

/// Attachments go with their message: delete for everyone and disappearing messages
/// remove the blob from the server and the downloaded file from the recipient's device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_disappearing_attachments_take_their_files() {
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");
    let server = TestServer::start(&server_dir).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    let downloads = root.path().join("downloads");
    bob.set_auto_download(Some(downloads.clone()));
    let source = root.path().join("photo.bin");
    std::fs::write(
        &source,
        b"not really a photo, but private bytes".repeat(100),
    )
    .unwrap();

    // Delete for everyone.
    let id = send_file(&mut alice, &source).await;
    let got = fetch_files(&mut bob).await;
    let (got_id, info) = &got[0];
    assert_eq!(*got_id, id);
    let saved = info.path.clone().expect("downloaded");
    assert!(saved.exists());
    assert!(!blob_files(&server_dir, &info.blob_id).is_empty());
    alice.profile_mut().delete_message(&id, now()).unwrap();
    flush(&mut alice).await;
    assert!(
        blob_files(&server_dir, &info.blob_id).is_empty(),
        "blob kept"
    );
    let events = sync_events(&mut bob).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Deleted { message_id, .. } if *message_id == id))
    );
    assert!(!saved.exists(), "the downloaded file is still there");
    assert!(source.exists(), "the sender's own file is never touched");

    // Disappearing.
    alice.profile_mut().set_timer("bob", 5_000, now()).unwrap();
    flush(&mut alice).await;
    sync_events(&mut bob).await;
    let id = send_file(&mut alice, &source).await;
    let got = fetch_files(&mut bob).await;
    let (_, info) = &got[0];
    let saved = info.path.clone().expect("downloaded");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        alice.profile_mut().sweep_expired(now()).unwrap();
        bob.profile_mut().sweep_expired(now()).unwrap();
        // The sender's sweep queued the blob's deletion: send it.
        alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
        let gone = !saved.exists()
            && blob_files(&server_dir, &info.blob_id).is_empty()
            && alice.profile().find_message(&id).is_err()
            && bob.profile().find_message(&id).is_err();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attachment outlived its timer"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(source.exists());
    server.stop().await;
}

/// A view-once file: no preview, not auto-downloaded; opened once (downloaded and
/// decrypted just then), after which its key and the file are gone from the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_once_file_is_opened_once() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    let downloads = root.path().join("downloads");
    bob.set_auto_download(Some(downloads.clone()));
    // An image: an ordinary one would travel with a preview.
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2 % 256) as u8, (y * 3 % 256) as u8, 77])
    });
    let mut secret = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut secret),
        image::ImageFormat::Png,
    )
    .unwrap();
    let source = root.path().join("once.png");
    std::fs::write(&source, &secret).unwrap();
    let options = hushwire_client::SendFileOptions {
        view_once: true,
        ..Default::default()
    };
    let id = alice.send_file("bob", &source, &options).await.unwrap();
    flush(&mut alice).await;

    let got = fetch_files(&mut bob).await;
    let (got_id, info) = &got[0];
    assert_eq!(*got_id, id);
    assert!(
        info.path.is_none(),
        "a view-once file is not auto-downloaded"
    );
    assert!(
        info.thumbnail.is_empty(),
        "a view-once file carries no preview"
    );
    assert!(
        std::fs::read_dir(&downloads).map_or(true, |mut d| d.next().is_none()),
        "nothing saved in the download directory"
    );

    let view_dir = root.path().join("viewing");
    let (message, path) = bob.open_view_once(&id, &view_dir).await.unwrap();
    assert!(message.view_once);
    let path = path.expect("the file was fetched to be shown");
    assert_eq!(std::fs::read(&path).unwrap(), secret);
    std::fs::remove_file(&path).unwrap();

    // Once only: the key is gone, a second open is refused.
    let again = bob.open_view_once(&id, &view_dir).await;
    assert!(
        matches!(&again, Err(ClientError::E2e(E2eError::Protocol(m))) if m.contains("viewed already")),
        "{again:?}"
    );
    assert!(bob.profile().attachment("alice", &id).unwrap().is_none());
    // The entry stays in the timeline, marked opened, with nothing of its content.
    let entry = bob
        .profile()
        .timeline("alice")
        .unwrap()
        .into_iter()
        .find_map(|i| match i {
            hushwire_e2e::TimelineItem::Message(m) if m.id == id => Some(m),
            _ => None,
        })
        .expect("the opened view-once entry is still listed");
    assert!(entry.view_once && entry.viewed && entry.text.is_empty());
    flush(&mut bob).await;
    let receipts = receipts_of(&sync_events(&mut alice).await);
    assert!(receipts.contains(&(id.clone(), "bob".to_string(), ReceiptStatus::Viewed)));
    let files = read_tree(&root.path().join("bob"));
    assert!(
        !files.iter().any(|(_, b)| contains(b, &secret)),
        "the view-once file is still in bob's files"
    );
    server.stop().await;
}

/// Block and report: the operator receives the reporter's reason and the reported
/// account's latest messages (disclosed by the reporter), and the account is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_discloses_chosen_messages_and_blocks() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    contacts(&mut alice, &mut bob).await;
    for text in [
        "buy cheap pills 1",
        "buy cheap pills 2",
        "buy cheap pills 3",
    ] {
        send(&mut bob, "alice", text).await;
    }
    receive(&mut alice).await;

    // Refused cleanly: oneself, an unknown account, an oversized reason.
    assert!(alice.report("alice", "", 5).await.is_err());
    let unknown = alice.report("nobody", "", 5).await;
    assert!(
        matches!(unknown, Err(ClientError::Api { status: 404, .. })),
        "{unknown:?}"
    );
    let long = alice.report("bob", &"x".repeat(5000), 5).await;
    assert!(
        matches!(long, Err(ClientError::Api { status: 400, .. })),
        "{long:?}"
    );
    assert!(server.store.reports(0, 10).await.unwrap().is_empty());

    let id = alice.report("bob", "spam", 2).await.unwrap();
    let reports = server.store.reports(0, 10).await.unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.id, id);
    assert_eq!(
        (r.report.reporter.as_str(), r.report.reported.as_str()),
        ("alice", "bob")
    );
    assert_eq!(r.report.reason, "spam");
    let texts: Vec<String> = hushwire_server::reports::evidence_messages(&r.report.evidence)
        .into_iter()
        .map(|m| {
            assert_eq!(m.from, "bob");
            assert_eq!(m.message_id.len(), 16);
            m.text
        })
        .collect();
    assert_eq!(
        texts,
        ["buy cheap pills 2", "buy cheap pills 3"],
        "the latest two"
    );

    // Blocked, on the device and on the server.
    flush(&mut alice).await;
    assert_eq!(alice.profile().blocked().unwrap(), ["bob"]);
    assert_eq!(server.store.blocked_by("alice").await.unwrap(), ["bob"]);
    send(&mut bob, "alice", "still there?").await;
    assert_eq!(pending_on_server(&server, "alice").await, 0);

    // The operator closes it.
    assert!(server.store.close_report(id).await.unwrap());
    assert!(!server.store.close_report(id).await.unwrap());
    assert!(server.store.reports(0, 10).await.unwrap().is_empty());
    server.stop().await;
}
