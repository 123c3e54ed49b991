//! End-to-end scenarios: two or three profiles in temp dirs talking through the fake
//! Delivery Service in `harness`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::{Client, Ds, settle};
use hushwire_e2e::{Action, E2eError, Event, MessageState, Suite};
use hushwire_proto::wire::submit_result::Outcome;

fn pair(root: &std::path::Path, ds: &mut Ds) -> (Client, Client) {
    let a = Client::new(root, ds, "alice");
    let b = Client::new(root, ds, "bob");
    (a, b)
}

fn talk(ds: &mut Ds, a: &mut Client, b: &mut Client, text: &str) {
    a.profile.queue_text(&b.handle, text, ds.tick()).unwrap();
    settle(ds, &mut [a, b]);
}

fn conversation_with_suite(suite: Suite) {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    a.profile.set_default_suite(suite).unwrap();

    let id = a.profile.queue_text("bob", "hello bob", ds.tick()).unwrap();
    assert!(a.profile.is_outbox_item_pending(&id).unwrap());
    let h = a.profile.history("bob").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].state, MessageState::Queued);
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert!(!a.profile.is_outbox_item_pending(&id).unwrap());
    assert_eq!(a.profile.outbox_len().unwrap(), 0);
    assert!(a.events.contains(&Event::Sent { id: id.clone() }));

    let h = b.profile.history("alice").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "hello bob");
    assert_eq!(h[0].from, "alice");
    assert_eq!(h[0].id, id);
    assert_eq!(h[0].state, MessageState::Received);
    assert!(!h[0].outgoing);
    assert!(b.events.contains(&Event::ConversationStarted {
        conversation: "alice".into()
    }));

    talk(&mut ds, &mut b, &mut a, "hi alice");
    talk(&mut ds, &mut a, &mut b, "how are you?");
    assert_eq!(
        a.texts("bob"),
        vec![
            ("alice".into(), "hello bob".into()),
            ("bob".into(), "hi alice".into()),
            ("alice".into(), "how are you?".into())
        ]
    );
    assert_eq!(a.texts("bob"), b.texts("alice"));
    let mine = a.profile.history("bob").unwrap();
    assert!(mine[0].outgoing && mine[0].state == MessageState::Sent);

    let ga = a.profile.groups("bob").unwrap();
    let gb = b.profile.groups("alice").unwrap();
    assert_eq!(ga.len(), 1);
    assert_eq!(ga, gb);
    assert_eq!(
        ga[0].members,
        vec!["alice/1".to_string(), "bob/1".to_string()]
    );
    let conv = a.profile.conversations().unwrap();
    assert_eq!(conv.len(), 1);
    assert_eq!(conv[0].suite, suite);
    assert_eq!(conv[0].message_count, 3);
    assert_eq!(b.profile.conversations().unwrap()[0].suite, suite);
}

#[test]
fn xwing_conversation_both_directions() {
    conversation_with_suite(Suite::XWing);
}

#[test]
fn classic_conversation_both_directions() {
    conversation_with_suite(Suite::Classic);
}

#[test]
fn default_suite_is_xwing_and_codes_round_trip() {
    assert_eq!(Suite::default(), Suite::XWing);
    assert_eq!(Suite::XWing.code(), 0x004F);
    assert_eq!(Suite::Classic.code(), 0x0001);
    for s in [Suite::XWing, Suite::Classic] {
        assert_eq!(Suite::from_code(s.code()), Some(s));
    }
    assert_eq!(Suite::from_code(0x004D), None);
}

#[test]
fn submit_is_stable_until_resolved_and_padded() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "first");
    a.profile.queue_text("bob", "x", ds.tick()).unwrap();
    let Action::Submit(s1) = a.profile.next_action(ds.tick()).unwrap() else {
        panic!("expected a submit");
    };
    a.reopen();
    let Action::Submit(s2) = a.profile.next_action(ds.tick()).unwrap() else {
        panic!("expected a submit");
    };
    assert_eq!(s1, s2, "retry resends identical bytes with the same id");
    assert_eq!(s1.message_id.len(), 16);
    assert!(s1.roster.is_empty() && s1.welcomes.is_empty());
    a.profile
        .queue_text("bob", &"y".repeat(40), ds.tick())
        .unwrap();
    // Short texts of different lengths give ciphertexts of the same length.
    let r = ds.submit(&a.dev(), &s1);
    a.profile
        .submit_result(&s1.message_id, &r, ds.tick())
        .unwrap();
    let Action::Submit(s3) = a.profile.next_action(ds.tick()).unwrap() else {
        panic!("expected a submit");
    };
    assert_eq!(s1.mls_message.len(), s3.mls_message.len());
    // Duplicate submit: the server answers duplicate=true, the client is fine with it.
    let r = ds.submit(&a.dev(), &s3);
    let r2 = ds.submit(&a.dev(), &s3);
    assert!(matches!(r2.outcome, Some(Outcome::Accepted(ref x)) if x.duplicate));
    a.profile
        .submit_result(&s3.message_id, &r, ds.tick())
        .unwrap();
    assert!(
        a.profile
            .submit_result(&s3.message_id, &r2, ds.tick())
            .unwrap()
            .is_empty()
    );
    settle(&mut ds, &mut [&mut a, &mut b]);
    assert_eq!(b.texts("alice").len(), 3);
}

#[test]
fn reopening_profiles_mid_conversation() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "one");
    a.reopen();
    b.reopen();
    assert_eq!(a.profile.identity().unwrap().handle, "alice");
    talk(&mut ds, &mut b, &mut a, "two");
    // Queue, restart before sending, then send.
    a.profile.queue_text("bob", "three", ds.tick()).unwrap();
    a.reopen();
    assert_eq!(a.profile.outbox_len().unwrap(), 1);
    settle(&mut ds, &mut [&mut a, &mut b]);
    b.reopen();
    a.profile.queue_self_update("bob").unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    b.reopen();
    talk(&mut ds, &mut b, &mut a, "four");
    assert_eq!(b.texts("alice").len(), 4);
    assert_eq!(a.texts("bob"), b.texts("alice"));
    let (ga, gb) = (
        a.profile.groups("bob").unwrap(),
        b.profile.groups("alice").unwrap(),
    );
    assert_eq!(ga[0].epoch, 2);
    assert_eq!(ga[0].epoch_authenticator, gb[0].epoch_authenticator);
}

#[test]
fn redelivered_envelopes_are_not_duplicated() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "once");
    talk(&mut ds, &mut a, &mut b, "twice?");
    let all = ds.mailbox(&b.dev());
    assert!(all.len() >= 3); // commit + welcome + 2 messages
    // A crash after storing but before acking: the server delivers everything again.
    b.reopen();
    for env in &all {
        assert!(b.profile.receive(env, ds.tick()).unwrap().is_empty());
    }
    assert_eq!(b.texts("alice").len(), 2);
    assert_eq!(
        b.profile.last_received_seq().unwrap(),
        all.last().unwrap().seq
    );
}

#[test]
fn need_account_changes_nothing_until_learned() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    a.profile.queue_text("bob", "hi", ds.tick()).unwrap();
    a.pump(&mut ds);
    let mailbox = ds.mailbox(&b.dev());
    let welcome = mailbox
        .iter()
        .find(|e| e.kind == hushwire_proto::wire::EnvelopeKind::Welcome as i32)
        .unwrap()
        .clone();
    // Earlier envelopes first (the epoch-0 commit is ignorable/buffered).
    for e in mailbox.iter().filter(|e| e.seq < welcome.seq) {
        b.receive(&mut ds, e);
    }
    let before = b.profile.last_received_seq().unwrap();
    match b.profile.receive(&welcome, ds.tick()) {
        Err(E2eError::NeedAccount(h)) => assert_eq!(h, "alice"),
        other => panic!("expected NeedAccount, got {other:?}"),
    }
    assert_eq!(b.profile.last_received_seq().unwrap(), before);
    assert!(b.profile.conversations().unwrap().is_empty());
    b.profile
        .learn_account(&ds.accounts["alice"].clone())
        .unwrap();
    let ev = b.profile.receive(&welcome, ds.tick()).unwrap();
    assert!(ev.contains(&Event::ConversationStarted {
        conversation: "alice".into()
    }));
    b.deliver(&mut ds);
    assert_eq!(b.texts("alice"), vec![("alice".into(), "hi".into())]);
}

fn race_self_updates(incoming_first: bool) {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "before");
    a.profile.queue_self_update("bob").unwrap();
    b.profile.queue_self_update("alice").unwrap();
    let Action::Submit(sa) = a.profile.next_action(ds.tick()).unwrap() else {
        panic!("alice should submit")
    };
    let Action::Submit(sb) = b.profile.next_action(ds.tick()).unwrap() else {
        panic!("bob should submit")
    };
    assert!(!sa.roster.is_empty() && !sb.roster.is_empty());
    let ra = ds.submit(&a.dev(), &sa);
    let rb = ds.submit(&b.dev(), &sb);
    assert!(matches!(ra.outcome, Some(Outcome::Accepted(_))));
    let Some(Outcome::StaleEpoch(stale)) = rb.outcome.clone() else {
        panic!("bob's commit must be stale: {rb:?}")
    };
    assert_eq!(stale.current_epoch, 2);
    a.profile
        .submit_result(&sa.message_id, &ra, ds.tick())
        .unwrap();
    if incoming_first {
        // Bob sees Alice's commit before his own answer: his pending commit is dropped.
        b.deliver(&mut ds);
        b.profile
            .submit_result(&sb.message_id, &rb, ds.tick())
            .unwrap();
    } else {
        b.profile
            .submit_result(&sb.message_id, &rb, ds.tick())
            .unwrap();
        assert_eq!(
            b.profile.next_action(ds.tick()).unwrap(),
            Action::AwaitIncoming
        );
        b.deliver(&mut ds);
    }
    // Bob redoes his update at the new epoch automatically.
    let Action::Submit(sb2) = b.profile.next_action(ds.tick()).unwrap() else {
        panic!("bob should redo his update")
    };
    assert_ne!(sb2.message_id, sb.message_id);
    settle(&mut ds, &mut [&mut a, &mut b]);
    let (ga, gb) = (
        a.profile.groups("bob").unwrap(),
        b.profile.groups("alice").unwrap(),
    );
    assert_eq!(ga[0].epoch, 3);
    assert_eq!(gb[0].epoch, 3);
    assert_eq!(ga[0].epoch_authenticator, gb[0].epoch_authenticator);
    talk(&mut ds, &mut a, &mut b, "after a");
    talk(&mut ds, &mut b, &mut a, "after b");
    assert_eq!(a.texts("bob"), b.texts("alice"));
    assert_eq!(a.texts("bob").len(), 3);
}

#[test]
fn concurrent_self_updates_one_wins_both_converge() {
    race_self_updates(false);
}

#[test]
fn concurrent_self_updates_winner_arrives_before_stale_answer() {
    race_self_updates(true);
}

#[test]
fn simultaneous_start_converges() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    a.profile
        .queue_text("bob", "hi from alice", ds.tick())
        .unwrap();
    b.profile
        .queue_text("alice", "hi from bob", ds.tick())
        .unwrap();
    // Both create a group before seeing the other's.
    a.pump(&mut ds);
    b.pump(&mut ds);
    settle(&mut ds, &mut [&mut a, &mut b]);
    let (ga, gb) = (
        a.profile.groups("bob").unwrap(),
        b.profile.groups("alice").unwrap(),
    );
    assert_eq!(ga.len(), 2);
    assert_eq!(gb.len(), 2);
    let send_a: Vec<_> = ga
        .iter()
        .filter(|g| g.sending)
        .map(|g| g.group_id.clone())
        .collect();
    let send_b: Vec<_> = gb
        .iter()
        .filter(|g| g.sending)
        .map(|g| g.group_id.clone())
        .collect();
    assert_eq!(send_a.len(), 1);
    assert_eq!(send_a, send_b, "both sides send on the same group");
    assert_eq!(
        send_a[0],
        ga.iter().map(|g| g.group_id.clone()).min().unwrap()
    );
    talk(&mut ds, &mut a, &mut b, "again a");
    talk(&mut ds, &mut b, &mut a, "again b");
    let mut ta = a.texts("bob");
    let mut tb = b.texts("alice");
    ta.sort();
    tb.sort();
    assert_eq!(ta, tb);
    assert_eq!(ta.len(), 4);
    assert_eq!(a.profile.conversations().unwrap().len(), 1);
}

#[test]
fn future_epoch_message_is_buffered_then_delivered() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "start");
    // Bob's commit is accepted, but the answer is delayed.
    b.profile.queue_self_update("alice").unwrap();
    let Action::Submit(sb) = b.profile.next_action(ds.tick()).unwrap() else {
        panic!()
    };
    let rb = ds.submit(&b.dev(), &sb);
    // Alice processes it and answers at the new epoch.
    a.deliver(&mut ds);
    a.profile
        .queue_text("bob", "from the next epoch", ds.tick())
        .unwrap();
    a.pump(&mut ds);
    b.deliver(&mut ds);
    // Bob could not decrypt yet: buffered, no event, still at the old epoch.
    assert_eq!(b.texts("alice").len(), 1);
    assert_eq!(b.profile.groups("alice").unwrap()[0].epoch, 1);
    // Survives a restart.
    b.reopen();
    let events = b
        .profile
        .submit_result(&sb.message_id, &rb, ds.tick())
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.text == "from the next epoch"))
    );
    assert_eq!(b.texts("alice").len(), 2);
    assert_eq!(b.profile.groups("alice").unwrap()[0].epoch, 2);
}

#[test]
fn last_resort_key_package_is_reused() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    // Bob uploads nothing but his last-resort packages.
    let mut bob = Client::new(root.path(), &mut ds, "bob");
    for _ in 0..2 {
        for suite in [Suite::XWing, Suite::Classic] {
            ds.claim("bob", suite);
            ds.claim("bob", suite);
            ds.claim("bob", suite);
        }
    }
    let mut alice = Client::new(root.path(), &mut ds, "alice");
    let mut carol = Client::new(root.path(), &mut ds, "carol");
    alice
        .profile
        .queue_text("bob", "from alice", ds.tick())
        .unwrap();
    carol
        .profile
        .queue_text("bob", "from carol", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut alice, &mut carol, &mut bob]);
    assert_eq!(
        bob.texts("alice"),
        vec![("alice".into(), "from alice".into())]
    );
    assert_eq!(
        bob.texts("carol"),
        vec![("carol".into(), "from carol".into())]
    );
    talk(&mut ds, &mut bob, &mut carol, "hi carol");
    assert_eq!(carol.texts("bob").len(), 2);
}

#[test]
fn identity_change_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "hello");
    // Bob's handle gets a new account key (a new registration in a new profile).
    let imposter_root = tempfile::tempdir().unwrap();
    let _imposter = Client::new(imposter_root.path(), &mut ds, "bob");
    let info = ds.accounts["bob"].clone();
    match a.profile.learn_account(&info) {
        Err(E2eError::IdentityChanged { handle }) => assert_eq!(handle, "bob"),
        other => panic!("expected IdentityChanged, got {other:?}"),
    }
    let kps = ds.claim("bob", Suite::XWing);
    assert!(matches!(
        a.profile.provide_peer(&info, &kps, ds.tick()),
        Err(E2eError::IdentityChanged { .. })
    ));
    // Nothing of the new key is used until alice accepts it, which changes the safety
    // number; then her next message starts a conversation with the new devices.
    let before = a.profile.safety_number("bob").unwrap();
    a.profile.mark_verified("bob", ds.tick()).unwrap();
    a.profile.trust(&info).unwrap();
    let after = a.profile.safety_number("bob").unwrap();
    assert_ne!(before.digits, after.digits);
    assert!(
        !after.verified,
        "verification does not survive a key change"
    );
    a.profile.learn_account(&info).unwrap();
}

#[test]
fn uncertified_devices_are_rejected() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, _b) = pair(root.path(), &mut ds);
    let mut mallory = Client::new(root.path(), &mut ds, "mallory");

    // 1a. A key package whose leaf claims to be bob/1 but carries another signature key.
    let forged = {
        use openmls::prelude::*;
        use openmls_basic_credential::SignatureKeyPair;
        let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let cred = CredentialWithKey {
            credential: BasicCredential::new(b"bob/1".to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        let kp = KeyPackage::builder()
            .build(
                Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
                &provider,
                &signer,
                cred,
            )
            .unwrap();
        MlsMessageOut::from(kp.key_package().clone())
            .to_bytes()
            .unwrap()
    };
    a.profile.queue_text("bob", "secret", ds.tick()).unwrap();
    let info = ds.accounts["bob"].clone();
    let claimed = vec![hushwire_proto::wire::ClaimedKeyPackage {
        device_id: 1,
        key_package: forged.into(),
    }];
    match a.profile.provide_peer(&info, &claimed, ds.tick()) {
        Err(E2eError::InvalidKeyPackage(r)) => {
            assert!(r.contains("not the certified device key"), "{r}")
        }
        other => panic!("expected InvalidKeyPackage, got {other:?}"),
    }
    // 1b. Mallory's genuine key package handed out as bob's device 1.
    a.profile
        .learn_account(&ds.accounts["mallory"].clone())
        .unwrap();
    let mallory_kp = mallory
        .profile
        .key_packages(Suite::XWing, 1, false)
        .unwrap();
    let claimed = vec![hushwire_proto::wire::ClaimedKeyPackage {
        device_id: 1,
        key_package: mallory_kp[0].clone().into(),
    }];
    match a.profile.provide_peer(&info, &claimed, ds.tick()) {
        Err(E2eError::InvalidKeyPackage(r)) => assert!(r.contains("is for mallory/1"), "{r}"),
        other => panic!("expected InvalidKeyPackage, got {other:?}"),
    }
    // 2. Wrong suite.
    let classic = ds.claim("bob", Suite::Classic);
    assert!(matches!(
        a.profile.provide_peer(&info, &classic, ds.tick()),
        Err(E2eError::InvalidKeyPackage(_))
    ));
    // 3. An AccountInfo with device certificates the account key did not sign: those
    // devices are ignored (never trusted), so nothing of theirs is accepted.
    let mut bad = ds.accounts["bob"].clone();
    let mallory_info = ds.accounts["mallory"].clone();
    bad.handle = "bobby".into();
    bad.devices = mallory_info.devices.clone();
    a.profile.learn_account(&bad).unwrap();
    let claimed = vec![hushwire_proto::wire::ClaimedKeyPackage {
        device_id: 1,
        key_package: mallory
            .profile
            .key_packages(Suite::XWing, 1, false)
            .unwrap()
            .remove(0)
            .into(),
    }];
    assert!(matches!(
        a.profile.provide_peer(&bad, &claimed, ds.tick()),
        Err(E2eError::InvalidKeyPackage(_))
    ));
    // Nothing was sent.
    assert!(matches!(
        a.profile.next_action(ds.tick()).unwrap(),
        Action::NeedPeer { .. }
    ));
}

#[test]
fn welcome_with_uncertified_member_is_rejected() {
    use openmls::prelude::{tls_codec::Deserialize as _, *};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, _b) = pair(root.path(), &mut ds);
    // Alice knows bob's real account.
    a.profile
        .learn_account(&ds.accounts["bob"].clone())
        .unwrap();

    // Mallory builds a group whose creator leaf claims to be bob/1 with her own key,
    // and invites alice with a key package claimed from the server.
    let provider = OpenMlsRustCrypto::default();
    let cs = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let cred = CredentialWithKey {
        credential: BasicCredential::new(b"bob/1".to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(cs)
        .use_ratchet_tree_extension(true)
        .build();
    let mut group = MlsGroup::new(&provider, &signer, &cfg, cred).unwrap();
    let kp_bytes = ds.claim("alice", Suite::XWing).remove(0).key_package;
    let kp = match MlsMessageIn::tls_deserialize_exact(kp_bytes.as_ref())
        .unwrap()
        .extract()
    {
        MlsMessageBodyIn::KeyPackage(k) => k
            .validate(provider.crypto(), ProtocolVersion::Mls10)
            .unwrap(),
        _ => panic!(),
    };
    let (_commit, welcome, _) = group.add_members(&provider, &signer, &[kp]).unwrap();
    let env = ds.inject(&a.dev(), welcome.to_bytes().unwrap());
    let ev = a.profile.receive(&env, ds.tick()).unwrap();
    assert!(
        matches!(&ev[..], [Event::Undecryptable { reason, .. }] if reason.contains("not authenticated")),
        "{ev:?}"
    );
    assert!(a.profile.conversations().unwrap().is_empty());
    assert_eq!(a.profile.last_received_seq().unwrap(), env.seq);
}

#[test]
fn rejected_text_is_marked_failed() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "ok");
    let id = a.profile.queue_text("bob", "too much", ds.tick()).unwrap();
    let Action::Submit(s) = a.profile.next_action(ds.tick()).unwrap() else {
        panic!()
    };
    let rejected = hushwire_proto::wire::SubmitResult {
        outcome: Some(Outcome::Rejected(hushwire_proto::wire::Error {
            code: hushwire_proto::wire::ErrorCode::TooLarge as i32,
            message: "too large".into(),
        })),
    };
    let ev = a
        .profile
        .submit_result(&s.message_id, &rejected, ds.tick())
        .unwrap();
    assert!(matches!(&ev[..], [Event::SendFailed { id: i, .. }] if *i == id));
    assert_eq!(
        a.profile.history("bob").unwrap()[1].state,
        MessageState::Failed
    );
    assert_eq!(a.profile.next_action(ds.tick()).unwrap(), Action::Idle);
}

#[test]
fn garbage_envelope_is_recorded_not_fatal() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let (mut a, mut b) = pair(root.path(), &mut ds);
    talk(&mut ds, &mut a, &mut b, "ok");
    let env = ds.inject(&b.dev(), vec![0, 1, 0, 2, 9, 9]);
    let seq = env.seq;
    let ev = b.profile.receive(&env, ds.tick()).unwrap();
    assert!(matches!(&ev[..], [Event::Undecryptable { .. }]));
    assert_eq!(b.profile.last_received_seq().unwrap(), seq);
    talk(&mut ds, &mut a, &mut b, "still works");
    assert_eq!(b.texts("alice").len(), 2);
}

#[test]
fn secrets_are_redacted_in_debug() {
    let k = hushwire_e2e::keys::SecretKey::generate();
    let hex: String = k.expose().iter().map(|b| format!("{b:02x}")).collect();
    let dbg = format!("{k:?}");
    assert!(!dbg.contains(&hex));
    assert!(!dbg.contains(&format!("{:?}", k.expose())));
    assert!(!dbg.contains(&k.expose()[0].to_string()) || dbg == "SecretKey(<redacted>)");

    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let a = Client::new(root.path(), &mut ds, "alice");
    let dbg = format!("{:?}", a.profile);
    assert!(dbg.contains("redacted"));
    // Signing works and verifies under the device key.
    let sig = a.profile.sign(b"payload").unwrap();
    let pk = a.profile.identity().unwrap().device_key;
    hushwire_proto::identity::verify(&pk, b"payload", &sig).unwrap();
}

#[test]
fn profile_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<hushwire_e2e::Profile>();
}

#[test]
fn registration_rules() {
    let root = tempfile::tempdir().unwrap();
    let mut p =
        hushwire_e2e::Profile::open(root.path(), &hushwire_e2e::StoreKey::from_bytes([7; 32]))
            .unwrap();
    assert!(p.identity().is_none());
    assert!(matches!(
        p.queue_text("bob", "x", 1),
        Err(E2eError::NotRegistered)
    ));
    assert!(matches!(
        p.create_identity("Bad Handle", 1),
        Err(E2eError::Protocol(_))
    ));
    let reg = p.create_identity("alice", 5).unwrap();
    let payload = hushwire_proto::identity::device_cert_payload(
        "alice",
        &reg.device.device_key,
        reg.device.created_at_ms,
    );
    hushwire_proto::identity::verify(&reg.account_key, &payload, &reg.device.signature).unwrap();
    p.complete_registration("https://x", Some("sha256:00"), 7)
        .unwrap();
    assert!(matches!(
        p.create_identity("alice", 6),
        Err(E2eError::AlreadyRegistered)
    ));
    drop(p);
    let p = hushwire_e2e::Profile::open(root.path(), &hushwire_e2e::StoreKey::from_bytes([7; 32]))
        .unwrap();
    let id = p.identity().unwrap();
    assert_eq!((id.handle.as_str(), id.device_id), ("alice", 7));
    assert_eq!(id.account_key, reg.account_key);
    assert_eq!(id.pin.as_deref(), Some("sha256:00"));
}

/// 200 messages one way through the whole stack (SQLite, one transaction per operation)
/// in both suites, all received in order. Prints rough per-operation costs (a
/// measurement, never asserted):
/// `cargo test -p hushwire-e2e --test conversations -- --nocapture costs`
#[test]
fn costs() {
    for suite in [Suite::Classic, Suite::XWing] {
        let root = tempfile::tempdir().unwrap();
        let mut ds = Ds::default();
        let (mut a, mut b) = pair(root.path(), &mut ds);
        a.profile.set_default_suite(suite).unwrap();
        let t = std::time::Instant::now();
        let kps = a.profile.key_packages(suite, 20, false).unwrap();
        let kp_ms = t.elapsed().as_secs_f64() * 1e3 / 20.0;
        let t = std::time::Instant::now();
        talk(&mut ds, &mut a, &mut b, "start");
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        let n = 200;
        let t = std::time::Instant::now();
        for i in 0..n {
            a.profile
                .queue_text("bob", &format!("message {i}"), ds.tick())
                .unwrap();
            a.pump(&mut ds);
        }
        let send_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
        let t = std::time::Instant::now();
        b.deliver(&mut ds);
        let recv_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
        let texts: Vec<String> = b
            .profile
            .history("alice")
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        let expected: Vec<String> = std::iter::once("start".to_string())
            .chain((0..n).map(|i| format!("message {i}")))
            .collect();
        assert_eq!(texts, expected);
        let t = std::time::Instant::now();
        a.profile.queue_self_update("bob").unwrap();
        a.pump(&mut ds);
        b.deliver(&mut ds);
        let upd_ms = t.elapsed().as_secs_f64() * 1e3;
        let sub = {
            a.profile.queue_text("bob", "x", ds.tick()).unwrap();
            match a.profile.next_action(ds.tick()).unwrap() {
                Action::Submit(s) => s,
                _ => panic!(),
            }
        };
        println!(
            "{suite:?}: key package {kp_ms:.2} ms ({} B); start (create+welcome+join+1 msg) {start_ms:.1} ms; \
             queue+encrypt+accept {send_ms:.2} ms/msg; decrypt+store {recv_ms:.2} ms/msg; \
             self-update round {upd_ms:.1} ms; short text on the wire {} B",
            kps[0].len(),
            sub.mls_message.len()
        );
    }
}
