//! Several devices per account end to end (issue 6): linking a device with a link code
//! (history transferred, both devices receive, sends appear on the other device),
//! removing one (locked out of new messages and connections), the signed device list
//! stopping a server that inserts a device, wrong and reused link codes, and linking
//! while a conversation changes. In-process server on port 0, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hushwire_client::{Client, ClientError, ClientOptions, Event, Joined, LinkReport};
use hushwire_e2e::{LinkSecrets, MessageState, Suite};
use hushwire_proto::link::LinkCode;
use hushwire_store::{Accounts, DeviceAddr, KeyPackages, NewDevice, NewKeyPackage};
use hushwire_tests::{OP_TIMEOUT, TestServer, history_texts, open, receive, register, send};
use tokio::sync::oneshot;

const LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `device link` on `existing` and `link CODE` into `root/new_dir` at once.
async fn link(
    existing: &mut Client,
    root: &Path,
    new_dir: &str,
) -> (Result<LinkReport, ClientError>, Result<Joined, ClientError>) {
    let (tx, rx) = oneshot::channel::<String>();
    let tx = Mutex::new(Some(tx));
    let mut on_code = |code: &LinkCode| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(code.encode());
        }
    };
    let mut approve = |_name: &str| true;
    let mut ignore = |_: Event| {};
    let existing_side = existing.link_device(LINK_TIMEOUT, &mut on_code, &mut approve, &mut ignore);
    let dir = root.join(new_dir);
    let new_side = async move {
        let code = rx.await.unwrap();
        hushwire_client::join_by_link(
            &dir,
            &code,
            "laptop",
            ClientOptions::default().with_passphrase("test passphrase"),
            LINK_TIMEOUT,
            &mut |_| {},
        )
        .await
    };
    tokio::join!(existing_side, new_side)
}

async fn flush(c: &mut Client) {
    c.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    assert_eq!(c.profile().outbox_len().unwrap(), 0);
}

fn members(c: &Client, conversation: &str) -> Vec<String> {
    let groups = c.profile().groups(conversation).unwrap();
    let g = groups.iter().find(|g| g.sending).expect("a sending group");
    g.members.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_device_gets_history_and_both_devices_take_part() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;
    let mut bob = register(root, &server, "bob").await;
    let mut carol = register(root, &server, "carol").await;

    // History before linking: a 1:1 chat and a group chat.
    send(&mut alice, "bob", "hi bob, before linking").await;
    receive(&mut bob).await;
    bob.profile_mut()
        .accept("alice", hushwire_client::api::unix_ms())
        .unwrap();
    send(&mut bob, "alice", "hi alice, before linking").await;
    receive(&mut alice).await;
    let team = alice
        .create_group("team", &["bob".into(), "carol".into()], None)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;
    send(&mut carol, &team, "carol in the team, before linking").await;
    receive(&mut alice).await;

    let (report, joined) = link(&mut alice, root, "alice-laptop").await;
    let report = report.unwrap();
    let joined = joined.unwrap();
    assert_eq!(report.device_id, 2);
    assert_eq!(joined.identity.handle, "alice");
    assert_eq!(joined.identity.device_id, 2);
    assert_eq!(report.conversations, 2, "the 1:1 chat and the group");
    assert!(report.history.messages >= 3);

    let mut laptop = Client::open(
        &root.join("alice-laptop"),
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    // The history from before the link is on the new device, own messages as sent.
    assert_eq!(
        history_texts(&laptop, "bob"),
        vec!["hi bob, before linking", "hi alice, before linking"]
    );
    let h = laptop.profile().history("bob").unwrap();
    assert_eq!(h[0].from, "alice");
    assert_eq!(h[0].state, MessageState::Sent);
    assert!(history_texts(&laptop, &team).contains(&"carol in the team, before linking".into()));

    // Both devices are leaves of both conversations.
    receive(&mut alice).await;
    for conv in ["bob", team.as_str()] {
        let m = members(&alice, conv);
        assert!(m.contains(&"alice/2".to_string()), "{conv}: {m:?}");
    }
    // The account's devices, as the signed list says.
    let devices = laptop.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .any(|d| d.device_id == 2 && d.current && d.name == "laptop")
    );

    // A change made on one device is shown on the others (the next session's receive).
    laptop.rename_device(1, "phone").await.unwrap();
    drop(alice);
    let mut alice = open(root, "alice");
    let mut news = Vec::new();
    alice
        .sync(OP_TIMEOUT, &mut |e| {
            if let Event::DevicesChanged(n) = e {
                news.push(n);
            }
        })
        .await
        .unwrap();
    assert!(
        news.iter()
            .any(|n| n.renamed.contains(&(1, "phone".to_string()))),
        "{news:?}"
    );

    // Contacts' messages reach both devices.
    receive(&mut bob).await;
    receive(&mut carol).await;
    send(&mut bob, "alice", "after linking, from bob").await;
    send(&mut carol, &team, "after linking, from carol").await;
    for c in [&mut alice, &mut laptop] {
        let got: Vec<String> = receive(c).await.into_iter().map(|m| m.text).collect();
        assert!(got.contains(&"after linking, from bob".into()), "{got:?}");
        assert!(got.contains(&"after linking, from carol".into()), "{got:?}");
    }
    // A message one device sends appears on the other as sent by the user.
    send(&mut laptop, "bob", "from the laptop").await;
    send(&mut alice, &team, "from the phone").await;
    // (The phone may have stored it while sending: look in its history.)
    receive(&mut alice).await;
    let on_phone = alice.profile().history("bob").unwrap();
    let m = on_phone
        .iter()
        .find(|m| m.text == "from the laptop")
        .expect("the laptop's message on the phone");
    assert_eq!(m.from, "alice");
    assert!(
        matches!(m.state, MessageState::Sent),
        "own message from another device: {:?}",
        m.state
    );
    receive(&mut laptop).await;
    let on_laptop = laptop.profile().history(&team).unwrap();
    assert!(
        on_laptop
            .iter()
            .any(|m| m.text == "from the phone" && m.from == "alice")
    );
    let at_bob: Vec<(String, String)> = receive(&mut bob)
        .await
        .into_iter()
        .map(|m| (m.from, m.text))
        .collect();
    assert!(at_bob.contains(&("alice".into(), "from the laptop".into())));
    assert!(at_bob.contains(&("alice".into(), "from the phone".into())));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_device_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;
    let mut bob = register(root, &server, "bob").await;
    send(&mut alice, "bob", "hello").await;
    receive(&mut bob).await;
    let (r, j) = link(&mut alice, root, "alice-laptop").await;
    r.unwrap();
    j.unwrap();
    let mut laptop = Client::open(
        &root.join("alice-laptop"),
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    receive(&mut laptop).await;

    let mut news = Vec::new();
    let removed = alice
        .remove_device(2, OP_TIMEOUT, &mut |e| {
            if let Event::DevicesChanged(n) = e {
                news.push(n);
            }
        })
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(
        news.iter()
            .any(|n| n.removed.iter().any(|(id, _)| *id == 2))
    );
    let record = server
        .store
        .device(&DeviceAddr {
            handle: "alice".into(),
            device_id: 2,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(record.revoked);

    // The conversation no longer has the laptop's leaf; bob's new message is not for it.
    receive(&mut bob).await;
    assert!(!members(&bob, "alice").contains(&"alice/2".to_string()));
    send(&mut bob, "alice", "after removal").await;
    let got: Vec<String> = receive(&mut alice)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(got.contains(&"after removal".into()));
    // The laptop can no longer connect, and has nothing new.
    let err = laptop.sync(OP_TIMEOUT, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { .. } | ClientError::Api { .. }),
        "{err:?}"
    );
    assert!(!history_texts(&laptop, "alice").contains(&"after removal".into()));
    assert!(!history_texts(&laptop, "bob").contains(&"after removal".into()));
    // The list the contacts see no longer has it.
    let devices = alice.devices().await.unwrap();
    assert_eq!(
        devices.iter().map(|d| d.device_id).collect::<Vec<_>>(),
        vec![1]
    );
    server.stop().await;
}

/// A device the server puts into an account (its own key, no valid certificate), and a
/// device with a valid certificate that the account's signed list does not name, are
/// never added by a contact's client; the account's real devices still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_inserted_devices_are_refused_by_contacts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let alice = register(root, &server, "alice").await;
    let mut bob = register(root, &server, "bob").await;

    // 1. A device made by the server: key and certificate from another account key.
    let evil_dir = tmp.path().join("evil");
    let mut evil = hushwire_tests::open_profile(&evil_dir).unwrap();
    let reg = evil.create_identity("alice", 1).unwrap();
    let fake = server
        .store
        .add_device(
            "alice",
            NewDevice {
                device_key: reg.device.device_key.to_vec(),
                cert_created_at_ms: reg.device.created_at_ms,
                cert_signature: reg.device.signature.to_vec(),
            },
        )
        .await
        .unwrap()
        .unwrap();
    evil.complete_registration(&server.url, Some(&server.pin), fake.addr.device_id)
        .unwrap();
    let kp = evil.key_packages(Suite::XWing, 1, true).unwrap().remove(0);
    server
        .store
        .add_key_packages(
            fake.id,
            vec![NewKeyPackage {
                ciphersuite: Suite::XWing.code(),
                data: kp.into(),
                last_resort: true,
            }],
        )
        .await
        .unwrap();

    // 2. A device whose certificate the account key did sign (say, by a device removed
    // later) but that the signed list does not name.
    let ghost_dir = tmp.path().join("ghost");
    let mut ghost = hushwire_tests::open_profile(&ghost_dir).unwrap();
    let ghost_key = ghost.begin_link(1).unwrap();
    let cert = alice.profile().certify_device(&ghost_key, 2).unwrap();
    let ghost_rec = server
        .store
        .add_device(
            "alice",
            NewDevice {
                device_key: ghost_key.to_vec(),
                cert_created_at_ms: cert.created_at_ms,
                cert_signature: cert.signature.to_vec(),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let LinkSecrets {
        handle,
        account_secret,
    } = alice.profile().link_secrets().unwrap();
    ghost
        .complete_link(
            &LinkSecrets {
                handle,
                account_secret,
            },
            ghost_rec.addr.device_id,
            &cert,
            &server.url,
            Some(&server.pin),
        )
        .unwrap();
    let kp = ghost.key_packages(Suite::XWing, 1, true).unwrap().remove(0);
    server
        .store
        .add_key_packages(
            ghost_rec.id,
            vec![NewKeyPackage {
                ciphersuite: Suite::XWing.code(),
                data: kp.into(),
                last_resort: true,
            }],
        )
        .await
        .unwrap();

    // bob starts a conversation with alice: only alice's real device is added.
    send(&mut bob, "alice", "hi alice").await;
    let m = members(&bob, "alice");
    assert_eq!(m, vec!["alice/1".to_string(), "bob/1".to_string()], "{m:?}");
    let mut alice = open(root, "alice");
    let got: Vec<String> = receive(&mut alice)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, vec!["hi alice"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_reused_link_codes_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;

    // A code that is not one.
    let err = hushwire_client::join_by_link(
        &root.join("x"),
        "hwlink1:AAAA",
        "x",
        ClientOptions::default().with_passphrase("test passphrase"),
        LINK_TIMEOUT,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Link(_)), "{err:?}");

    // An unknown session: the right server and pin, a made-up session id.
    let made_up = LinkCode {
        servers: vec![server.url.clone()],
        pin: {
            let hex = server.pin.trim_start_matches("sha256:");
            let mut p = [0u8; 32];
            for (i, b) in p.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            Some(p)
        },
        link_id: [7; 16],
        secret: [8; 32],
    };
    let err = hushwire_client::join_by_link(
        &root.join("y"),
        &made_up.encode(),
        "y",
        ClientOptions::default().with_passphrase("test passphrase"),
        LINK_TIMEOUT,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Link(m) if m.contains("unknown or expired")),
        "{err:?}"
    );

    // A real code used twice: the first link succeeds, the second attempt is refused.
    let (tx, rx) = oneshot::channel::<String>();
    let tx = Mutex::new(Some(tx));
    let mut on_code = |code: &LinkCode| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(code.encode());
        }
    };
    let mut approve = |_: &str| true;
    let mut ignore = |_: Event| {};
    let existing = alice.link_device(LINK_TIMEOUT, &mut on_code, &mut approve, &mut ignore);
    let dir1 = root.join("first");
    let dir2 = root.join("second");
    let new_side = async move {
        let code = rx.await.unwrap();
        let first = hushwire_client::join_by_link(
            &dir1,
            &code,
            "first",
            ClientOptions::default().with_passphrase("test passphrase"),
            LINK_TIMEOUT,
            &mut |_| {},
        )
        .await;
        let second = hushwire_client::join_by_link(
            &dir2,
            &code,
            "second",
            ClientOptions::default().with_passphrase("test passphrase"),
            Duration::from_secs(5),
            &mut |_| {},
        )
        .await;
        (first, second)
    };
    let (report, (first, second)) = tokio::join!(existing, new_side);
    report.unwrap();
    first.unwrap();
    let err = second.unwrap_err();
    assert!(matches!(err, ClientError::Link(_)), "{err:?}");

    // A code whose secret is wrong (typed wrong): the devices cannot read each other.
    let (tx, rx) = oneshot::channel::<String>();
    let tx = Mutex::new(Some(tx));
    let mut on_code = |code: &LinkCode| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let mut wrong = code.clone();
            wrong.secret[0] ^= 1;
            let _ = tx.send(wrong.encode());
        }
    };
    let mut ignore2 = |_: Event| {};
    let existing = alice.link_device(
        Duration::from_secs(20),
        &mut on_code,
        &mut approve,
        &mut ignore2,
    );
    let dir3 = root.join("third");
    let new_side = async move {
        let code = rx.await.unwrap();
        hushwire_client::join_by_link(
            &dir3,
            &code,
            "third",
            ClientOptions::default().with_passphrase("test passphrase"),
            Duration::from_secs(20),
            &mut |_| {},
        )
        .await
    };
    let (report, joined) = tokio::join!(existing, new_side);
    assert!(report.is_err());
    assert!(joined.is_err());
    // Nothing was registered for it: alice still has two devices.
    let devices = alice.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    server.stop().await;
}

/// A group member commits while the account's new device is being added: the add is
/// redone at the new epoch and everyone converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_while_the_group_changes_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;
    let mut bob = register(root, &server, "bob").await;
    let mut carol = register(root, &server, "carol").await;
    let mut dave = register(root, &server, "dave").await;
    let team = alice
        .create_group("team", &["bob".into(), "carol".into()], None)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;

    // bob (made admin) adds dave while alice links her laptop.
    alice
        .profile_mut()
        .group_set_admin(&team, "bob", true, hushwire_client::api::unix_ms())
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    bob.profile_mut()
        .group_add(&team, &["dave".into()], hushwire_client::api::unix_ms())
        .unwrap();
    let bob_adds = async {
        bob.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    };
    let ((r, j), ()) = tokio::join!(link(&mut alice, root, "alice-laptop"), bob_adds);
    r.unwrap();
    j.unwrap();
    let mut laptop = Client::open(
        &root.join("alice-laptop"),
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    for c in [&mut alice, &mut bob, &mut carol, &mut dave, &mut laptop] {
        receive(c).await;
    }
    let mut expected = vec!["alice/1", "alice/2", "bob/1", "carol/1", "dave/1"];
    expected.sort();
    for (name, c) in [
        ("alice", &alice),
        ("bob", &bob),
        ("carol", &carol),
        ("dave", &dave),
        ("laptop", &laptop),
    ] {
        let mut m = members(c, &team);
        m.sort();
        assert_eq!(m, expected, "{name}");
    }
    send(&mut dave, &team, "all here").await;
    for c in [&mut alice, &mut laptop, &mut bob, &mut carol] {
        let got: Vec<String> = receive(c).await.into_iter().map(|m| m.text).collect();
        assert!(got.contains(&"all here".into()), "{got:?}");
    }
    server.stop().await;
}

/// An account holds up to 8 devices (the server's default limit); the ninth link is
/// refused with a clear error and registers nothing. Every device gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_devices_and_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;
    let mut bob = register(root, &server, "bob").await;
    send(&mut bob, "alice", "before the devices").await;
    receive(&mut alice).await;
    for n in 2..=8 {
        let (r, j) = link(&mut alice, root, &format!("alice-{n}")).await;
        assert_eq!(r.unwrap().device_id, n);
        j.unwrap();
    }
    let (r, j) = link(&mut alice, root, "alice-9").await;
    let err = r.unwrap_err();
    assert!(
        matches!(&err, ClientError::Link(m) if m.contains("most devices")),
        "{err:?}"
    );
    let err = j.unwrap_err();
    assert!(
        matches!(&err, ClientError::Link(m) if m.contains("refused")),
        "{err:?}"
    );
    assert_eq!(alice.devices().await.unwrap().len(), 8);

    receive(&mut bob).await;
    assert_eq!(
        members(&bob, "alice").len(),
        9,
        "8 devices of alice and bob's"
    );
    send(&mut bob, "alice", "to all eight").await;
    receive(&mut alice).await;
    assert!(history_texts(&alice, "bob").contains(&"to all eight".into()));
    for n in 2..=8 {
        let mut c = Client::open(
            &root.join(format!("alice-{n}")),
            ClientOptions::default().with_passphrase("test passphrase"),
        )
        .unwrap();
        receive(&mut c).await;
        let h = history_texts(&c, "bob");
        assert!(
            h.contains(&"before the devices".into()),
            "device {n}: {h:?}"
        );
        assert!(h.contains(&"to all eight".into()), "device {n}: {h:?}");
    }
    server.stop().await;
}
