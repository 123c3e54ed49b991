//! Conversation features through the fake Delivery Service in `harness`: the ephemeral
//! budget (receivers keep up after skipped signals; a spent budget rotates keys),
//! message requests and signals, and disappearing messages deleted by the sweep at their
//! time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::{Client, Ds, settle};
use hushwire_e2e::{EPHEMERAL_BUDGET, EphemeralOut, Event};
use hushwire_proto::wire;

fn contacts(root: &std::path::Path, ds: &mut Ds) -> (Client, Client) {
    let mut a = Client::new(root, ds, "alice");
    let mut b = Client::new(root, ds, "bob");
    a.profile.queue_text("bob", "hello", ds.tick()).unwrap();
    settle(ds, &mut [&mut a, &mut b]);
    assert!(b.profile.is_request("alice").unwrap());
    b.profile.accept("alice", ds.tick()).unwrap();
    settle(ds, &mut [&mut a, &mut b]);
    (a, b)
}

fn relayed(from: &Client, out: &EphemeralOut) -> wire::EphemeralDelivery {
    let (handle, device_id) = from.dev();
    wire::EphemeralDelivery {
        group_id: out.group_id.clone().into(),
        sender: Some(wire::DeviceAddress { handle, device_id }),
        mls_message: out.mls_message.clone().into(),
        server_time_ms: 0,
    }
}

#[test]
fn skipped_ephemeral_signals_and_a_spent_budget() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = contacts(root.path(), &mut ds);

    // A whole budget of signals bob never sees: he still decrypts the next message.
    for _ in 0..EPHEMERAL_BUDGET {
        assert!(
            a.profile
                .ephemeral_typing("bob", true, ds.tick())
                .unwrap()
                .is_some()
        );
    }
    a.profile
        .queue_text("bob", "after the typing", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert_eq!(b.texts("alice").last().unwrap().1, "after the typing");

    // The stored message restarted the budget; the one he does see is a Typing event.
    let out = a
        .profile
        .ephemeral_typing("bob", true, ds.tick())
        .unwrap()
        .unwrap();
    let got = b
        .profile
        .receive_ephemeral(&relayed(&a, &out), ds.tick())
        .unwrap();
    assert!(matches!(
        got.events.as_slice(),
        [Event::Typing { from, typing: true, .. }] if from == "alice"
    ));
    // A replayed signal is dropped quietly.
    let again = b
        .profile
        .receive_ephemeral(&relayed(&a, &out), ds.tick())
        .unwrap();
    assert!(again.events.is_empty());

    // Spend the budget: the next signal is not built, a self-update is queued instead.
    for _ in 1..EPHEMERAL_BUDGET {
        assert!(
            a.profile
                .ephemeral_typing("bob", false, ds.tick())
                .unwrap()
                .is_some()
        );
    }
    assert!(
        a.profile
            .ephemeral_typing("bob", true, ds.tick())
            .unwrap()
            .is_none()
    );
    assert_eq!(a.profile.outbox_len().unwrap(), 1);
    let epoch = a.profile.groups("bob").unwrap()[0].epoch;
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert_eq!(a.profile.groups("bob").unwrap()[0].epoch, epoch + 1);
    // New epoch, new budget; bob follows.
    let out = a
        .profile
        .ephemeral_typing("bob", true, ds.tick())
        .unwrap()
        .unwrap();
    let got = b
        .profile
        .receive_ephemeral(&relayed(&a, &out), ds.tick())
        .unwrap();
    assert_eq!(got.events.len(), 1);
}

#[test]
fn a_request_gets_no_signals_and_its_signals_are_ignored() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let mut a = Client::new(root.path(), &mut ds, "alice");
    let mut b = Client::new(root.path(), &mut ds, "bob");
    a.profile.queue_text("bob", "hi", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    // bob has not accepted: he sends alice no typing, and ignores hers.
    assert!(
        b.profile
            .ephemeral_typing("alice", true, ds.tick())
            .unwrap()
            .is_none()
    );
    assert!(
        b.profile
            .ephemeral_presence("alice", true, true, ds.tick())
            .unwrap()
            .is_none()
    );
    let out = a
        .profile
        .ephemeral_typing("bob", true, ds.tick())
        .unwrap()
        .unwrap();
    let got = b
        .profile
        .receive_ephemeral(&relayed(&a, &out), ds.tick())
        .unwrap();
    assert!(got.events.is_empty());
    // Accepted: both ways from then on.
    b.profile.accept("alice", ds.tick()).unwrap();
    let out = a
        .profile
        .ephemeral_typing("bob", true, ds.tick())
        .unwrap()
        .unwrap();
    let got = b
        .profile
        .receive_ephemeral(&relayed(&a, &out), ds.tick())
        .unwrap();
    assert_eq!(got.events.len(), 1);
    assert!(
        b.profile
            .ephemeral_typing("alice", true, ds.tick())
            .unwrap()
            .is_some()
    );
}

#[test]
fn disappearing_messages_are_swept_at_their_time() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = contacts(root.path(), &mut ds);
    a.profile.set_timer("bob", 60_000, ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert_eq!(b.profile.timer("alice").unwrap(), 60_000);
    let sent_at = ds.tick();
    let id = a.profile.queue_text("bob", "short-lived", sent_at).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    let mine = a.profile.find_message(&id).unwrap();
    assert_eq!(mine.expires_at_ms, Some(sent_at + 60_000));
    let theirs = b.profile.find_message(&id).unwrap();
    let expires = theirs.expires_at_ms.unwrap();
    // Not yet.
    assert_eq!(b.profile.sweep_expired(expires - 1).unwrap(), 0);
    assert_eq!(b.profile.sweep_expired(expires).unwrap(), 1);
    assert!(b.profile.find_message(&id).is_err());
    assert_eq!(a.profile.sweep_expired(sent_at + 60_000).unwrap(), 1);
    assert_eq!(a.texts("bob"), [("alice".to_string(), "hello".to_string())]);
    // Off again: later messages stay.
    a.profile.set_timer("bob", 0, ds.tick()).unwrap();
    let id = a.profile.queue_text("bob", "stays", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert_eq!(b.profile.find_message(&id).unwrap().expires_at_ms, None);
}
