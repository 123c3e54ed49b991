//! Sharing a relay link inside an end-to-end encrypted message (`relay share`): alice
//! shares, bob receives it as a `RelayLink` event and in his history, nothing changes
//! in his routes until he accepts it, then his routes contain it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hushwire_client::{Event, Route, RouteBook};
use hushwire_e2e::{E2eError, TimelineItem};
use hushwire_proto::relay_link::RelayLink;
use hushwire_tests::{OP_TIMEOUT, TestServer, contains, read_tree, register, send};

const LINK: &str = "hushwire-relay://relay.example.org:8443?s=Zk3pQ9vT2mW8xY4rB7nC1d&pin=\
                    00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_relay_link_arrives_and_is_added_only_when_accepted() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    send(&mut alice, "bob", "here is a way in").await;

    // A malformed link is refused before anything is queued.
    let bad = alice
        .queue_relay_link("bob", "https://relay.example.org/")
        .unwrap_err();
    assert!(matches!(
        bad,
        hushwire_client::ClientError::E2e(E2eError::Protocol(_))
    ));
    assert_eq!(alice.profile().outbox_len().unwrap(), 0);

    let id = alice.queue_relay_link("bob", LINK).unwrap();
    alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    assert!(!alice.profile().is_outbox_item_pending(&id).unwrap());

    // The server holds only ciphertext: the secret is nowhere in its files.
    let secret = RelayLink::parse(LINK).unwrap().secret;
    for (path, bytes) in read_tree(&root.path().join("server")) {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "the relay secret is in {}",
            path.display()
        );
    }

    let mut texts = Vec::new();
    let mut links = Vec::new();
    bob.sync(OP_TIMEOUT, &mut |e| match e {
        Event::Message(m) => texts.push(m.text),
        Event::RelayLink(m) => links.push(m),
        _ => {}
    })
    .await
    .unwrap();
    assert_eq!(texts, ["here is a way in"]);
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].id, id);
    assert_eq!(links[0].from, "alice");
    assert_eq!(links[0].conversation, "alice");
    assert_eq!(
        RelayLink::parse(&links[0].text).unwrap(),
        RelayLink::parse(LINK).unwrap()
    );

    // In both timelines, after the text; not counted as a text in `history`.
    for (client, conv) in [(&alice, "bob"), (&bob, "alice")] {
        let timeline = client.profile().timeline(conv).unwrap();
        assert_eq!(timeline.len(), 2);
        assert!(matches!(&timeline[0], TimelineItem::Message(m) if m.text == "here is a way in"));
        assert!(matches!(&timeline[1], TimelineItem::RelayLink(m) if m.id == id));
        assert_eq!(client.profile().history(conv).unwrap().len(), 1);
    }

    // Received, but not added to bob's routes by itself.
    let bob_dir = root.path().join("bob");
    assert_eq!(RouteBook::load(&bob_dir).unwrap().relays().count(), 0);

    // Bob accepts it.
    let shared = bob.profile().shared_relay_link(&id).unwrap().unwrap();
    assert_eq!(shared.from, "alice");
    assert!(
        bob.profile()
            .shared_relay_link("not-an-id")
            .unwrap()
            .is_none()
    );
    assert!(
        bob.profile()
            .shared_relay_link(&uuid_of_text(&bob))
            .unwrap()
            .is_none(),
        "a text's id is not a shared link"
    );
    let link = RelayLink::parse(&shared.text).unwrap();
    let book = RouteBook::add_relay(&bob_dir, link.clone()).unwrap();
    assert_eq!(book.routes(), [Route::Direct, Route::Relay(link.clone())]);
    let reloaded = RouteBook::load(&bob_dir).unwrap();
    assert_eq!(reloaded.relays().cloned().collect::<Vec<_>>(), [link]);

    // Bob still reaches the server (direct first) with the new book.
    bob.set_routes(reloaded).unwrap();
    send(&mut bob, "alice", "thanks").await;
    server.stop().await;
}

fn uuid_of_text(client: &hushwire_client::Client) -> String {
    client.profile().history("alice").unwrap()[0].id.clone()
}
