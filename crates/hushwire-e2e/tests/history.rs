//! The history archive of a newly linked device, through the fake Delivery Service in
//! `harness`: real history built by several profiles (1:1 chats, a group chat, replies,
//! edits, deletes, reactions, receipts, view-once, disappearing messages, attachments,
//! requests, blocks), exported by one device, imported by a second device of the same
//! account, and compared; a double import changes nothing; cut archives fail cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashMap;
use std::path::Path;

use harness::{Client, Ds, settle};
use hushwire_e2e::{
    E2eError, HistoryOptions, HistoryStats, NewUpload, PresenceShare, Profile, Registration,
    TimelineItem,
};

/// A second device of `existing`'s account, linked with the profile's own linking API.
fn link(root: &Path, ds: &mut Ds, existing: &Client, dir_name: &str) -> Client {
    let dir = root.join(dir_name);
    let mut profile = Profile::open(&dir, &hushwire_e2e::StoreKey::from_bytes([7; 32])).unwrap();
    let key = profile.begin_link(ds.tick()).unwrap();
    let cert = existing.profile.certify_device(&key, ds.tick()).unwrap();
    let me = existing.profile.identity().unwrap().clone();
    let id = ds.register(
        &me.handle,
        &Registration {
            account_key: me.account_key,
            device: cert.clone(),
        },
    );
    let secrets = existing.profile.link_secrets().unwrap();
    profile
        .complete_link(&secrets, id, &cert, "https://test.invalid", None)
        .unwrap();
    assert_eq!(profile.identity().unwrap().device_id, id);
    let mut c = Client {
        handle: me.handle,
        dir,
        profile,
        events: vec![],
    };
    c.upload(ds, 3);
    c
}

fn upload(conversation: &str, name: &str, caption: &str, key: u8) -> NewUpload {
    NewUpload {
        conversation: conversation.into(),
        source_path: std::env::temp_dir().join(name),
        source_len: 5,
        ciphertext_len: 21,
        key: [key; 32],
        nonce_prefix: vec![7; 19],
        chunk_size: 65_536,
        file_name: name.into(),
        mime: "text/plain".into(),
        thumbnail: vec![1, 2, 3],
        width: 0,
        height: 0,
        voice: false,
        caption: caption.into(),
        view_once: false,
    }
}

/// Queues a file from `c` to `conversation` as if its blob had been uploaded.
fn send_file(ds: &mut Ds, c: &mut Client, conversation: &str, name: &str, key: u8) -> String {
    let id = c
        .profile
        .create_upload(&upload(conversation, name, "see file", key), ds.tick())
        .unwrap();
    let group = c.profile.send_group_id(conversation).unwrap().unwrap();
    c.profile
        .upload_blob_created(&id, &group, &[key; 32], 4096)
        .unwrap();
    c.profile
        .finish_upload(&id, &[4; 32], &[5; 32], ds.tick())
        .unwrap()
}

fn export(p: &Profile, now_ms: u64) -> (Vec<u8>, HistoryStats) {
    let mut out = Vec::new();
    let opts = HistoryOptions {
        now_ms: Some(now_ms),
        ..HistoryOptions::default()
    };
    let stats = p.export_history(&mut out, &opts).unwrap();
    assert_eq!(stats.bytes, out.len() as u64);
    (out, stats)
}

/// What a conversation looks like to the user, minus what an archive never carries:
/// view-once messages and where a file sits on the device.
fn visible(p: &Profile, conversation: &str) -> Vec<TimelineItem> {
    p.timeline(conversation)
        .unwrap()
        .into_iter()
        .filter_map(|item| match item {
            TimelineItem::Message(m) if m.view_once => None,
            TimelineItem::Attachment(m, _) if m.view_once => None,
            TimelineItem::Attachment(m, mut info) => {
                info.path = None;
                info.error = None;
                Some(TimelineItem::Attachment(m, info))
            }
            other => Some(other),
        })
        .collect()
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    conversations: Vec<(String, u64, bool)>,
    timelines: HashMap<String, Vec<TimelineItem>>,
    reactions: HashMap<String, Vec<(String, String, String)>>,
    receipts: HashMap<String, Vec<(String, String, String)>>,
    blocked: Vec<String>,
    presence: PresenceShare,
    read_receipts: bool,
}

fn snapshot(p: &Profile) -> Snapshot {
    let mut conversations: Vec<(String, u64, bool)> = p
        .conversations()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.expire_timer_ms, c.request))
        .collect();
    conversations.sort();
    let mut timelines = HashMap::new();
    let mut reactions = HashMap::new();
    let mut receipts = HashMap::new();
    for (name, _, _) in &conversations {
        let timeline = visible(p, name);
        // Reactions and receipts of messages the user sees.
        let shown: std::collections::HashSet<String> = timeline
            .iter()
            .filter_map(|i| match i {
                TimelineItem::Message(m)
                | TimelineItem::RelayLink(m)
                | TimelineItem::Attachment(m, _) => Some(m.id.clone()),
                TimelineItem::Group(_) => None,
            })
            .collect();
        timelines.insert(name.clone(), timeline);
        let mut r: Vec<_> = p
            .reactions(name)
            .unwrap()
            .into_iter()
            .filter(|(id, _)| shown.contains(id))
            .flat_map(|(id, list)| {
                list.into_iter()
                    .map(move |r| (id.clone(), r.from, format!("{}@{}", r.emoji, r.at_ms)))
            })
            .collect();
        r.sort();
        reactions.insert(name.clone(), r);
        let mut r: Vec<_> = p
            .receipts(name)
            .unwrap()
            .into_iter()
            .filter(|(id, _)| shown.contains(id))
            .flat_map(|(id, list)| {
                list.into_iter().map(move |r| {
                    (
                        id.clone(),
                        r.member,
                        format!("{}@{}", r.status.as_str(), r.at_ms),
                    )
                })
            })
            .collect();
        r.sort();
        receipts.insert(name.clone(), r);
    }
    Snapshot {
        conversations,
        timelines,
        reactions,
        receipts,
        blocked: p.blocked().unwrap(),
        presence: p.presence_share().unwrap(),
        read_receipts: p.read_receipts().unwrap(),
    }
}

fn is_archive_error(e: &E2eError) -> bool {
    matches!(e, E2eError::InvalidArchive(_))
}

#[test]
fn a_linked_device_gets_the_history_as_the_user_sees_it() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let mut a = Client::new(root.path(), &mut ds, "alice");
    let mut b = Client::new(root.path(), &mut ds, "bob");
    let mut c = Client::new(root.path(), &mut ds, "carol");
    let mut d = Client::new(root.path(), &mut ds, "dave");

    // 1:1 with bob: texts both ways, a reply, an edit, a delete, reactions, receipts.
    let hi = a.profile.queue_text("bob", "hi bob", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    b.profile.accept("alice", ds.tick()).unwrap();
    let hello = b
        .profile
        .queue_text("alice", "hi alice", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    b.profile.queue_reply(&hi, "a reply", ds.tick()).unwrap();
    let oops = a.profile.queue_text("bob", "oops", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    a.profile.edit(&hi, "hi bob (edited)", ds.tick()).unwrap();
    a.profile.delete_message(&oops, ds.tick()).unwrap();
    b.profile.react(&hi, "👍", ds.tick()).unwrap();
    a.profile.react(&hello, "🎉", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    a.profile.mark_read("bob", ds.tick()).unwrap();
    b.profile.mark_read("alice", ds.tick()).unwrap();
    // View-once both ways: never in an archive.
    let secret_in = b
        .profile
        .queue_text_with("alice", "secret", None, true, ds.tick())
        .unwrap();
    let secret_out = a
        .profile
        .queue_text_with("bob", "my secret", None, true, ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut b]);
    // Files both ways; alice saved the one she received.
    let file_out = send_file(&mut ds, &mut a, "bob", "out.txt", 0x11);
    settle(&mut ds, &mut [&mut a, &mut b]);
    let file_in = send_file(&mut ds, &mut b, "alice", "in.txt", 0x22);
    settle(&mut ds, &mut [&mut a, &mut b]);
    a.profile
        .set_attachment_path("bob", &file_in, &root.path().join("saved.txt"))
        .unwrap();

    // carol: a request alice accepted, then disappearing messages.
    c.profile
        .queue_text("alice", "hi, I am carol", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut c]);
    a.profile.accept("carol", ds.tick()).unwrap();
    a.profile.set_timer("carol", 3_600_000, ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut c]);
    a.profile
        .queue_text("carol", "gone in an hour", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut c]);
    // dave: a request alice never answered.
    d.profile.queue_text("alice", "buy now", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut d]);
    assert!(a.profile.is_request("dave").unwrap());

    // A group chat with its events and a message from bob.
    let team = a
        .profile
        .create_group("team", &["bob".into(), "carol".into()], None, ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut b, &mut c]);
    b.profile
        .queue_text(&team, "hello team", ds.tick())
        .unwrap();
    settle(&mut ds, &mut [&mut a, &mut b, &mut c]);
    let last = a.profile.history(&team).unwrap().last().unwrap().id.clone();
    a.profile.react(&last, "❤", ds.tick()).unwrap();
    settle(&mut ds, &mut [&mut a, &mut b, &mut c]);

    // Settings, and a text still in the outbox.
    a.profile.block("mallory", ds.tick()).unwrap();
    a.profile
        .set_presence_share(PresenceShare::Everyone)
        .unwrap();
    a.profile.set_read_receipts(false).unwrap();
    let unsent = a
        .profile
        .queue_text("bob", "not sent yet", ds.tick())
        .unwrap();
    assert!(a.profile.is_outbox_item_pending(&unsent).unwrap());
    assert!(a.profile.find_message(&secret_in).unwrap().view_once);

    let now = ds.tick();
    let (archive, out_stats) = export(&a.profile, now);
    assert_eq!(out_stats.conversations, 4);
    assert_eq!(out_stats.attachments, 2);
    assert_eq!(out_stats.reactions, 3);

    let mut a2 = link(root.path(), &mut ds, &a, "alice-laptop");
    let in_stats = a2.profile.import_history(&mut archive.as_slice()).unwrap();
    assert_eq!(
        (
            in_stats.conversations,
            in_stats.messages,
            in_stats.attachments
        ),
        (
            out_stats.conversations,
            out_stats.messages,
            out_stats.attachments
        )
    );
    assert_eq!(in_stats.reactions, out_stats.reactions);
    assert_eq!(in_stats.bytes, archive.len() as u64);

    // What the user sees is the same, the outbox item and view-once messages aside.
    let mut expected = snapshot(&a.profile);
    let bob = expected.timelines.get_mut("bob").unwrap();
    let before = bob.len();
    bob.retain(|i| !matches!(i, TimelineItem::Message(m) if m.id == unsent));
    assert_eq!(bob.len(), before - 1, "the unsent text was in the timeline");
    assert_eq!(snapshot(&a2.profile), expected);
    // ... and there was something to compare: the group chat's events and message,
    // reactions everywhere, bob's delivered and read receipts.
    let team_items = &expected.timelines[&team];
    assert!(
        team_items
            .iter()
            .any(|i| matches!(i, TimelineItem::Group(_)))
    );
    assert!(
        team_items
            .iter()
            .any(|i| matches!(i, TimelineItem::Message(m) if m.text == "hello team"))
    );
    assert_eq!(expected.reactions.values().map(Vec::len).sum::<usize>(), 3);
    assert!(
        expected.receipts["bob"]
            .iter()
            .any(|(id, member, status)| *id == hi && member == "bob" && status.starts_with("read"))
    );
    assert_eq!(expected.conversations.len(), 4);

    // Spot checks of the details.
    let hist = a2.profile.history("bob").unwrap();
    let texts: Vec<(&str, &str)> = hist
        .iter()
        .map(|m| (m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            ("alice", "hi bob (edited)"),
            ("bob", "hi alice"),
            ("bob", "a reply")
        ]
    );
    assert!(hist[0].outgoing && hist[0].edited_at_ms.is_some());
    assert_eq!(hist[2].reply_to.as_deref(), Some(hi.as_str()));
    for id in [&oops, &secret_in, &secret_out, &unsent] {
        assert!(a2.profile.find_message(id).is_err(), "{id} was exported");
    }
    let gone = a2
        .profile
        .history("carol")
        .unwrap()
        .into_iter()
        .find(|m| m.text == "gone in an hour")
        .unwrap();
    assert!(gone.expires_at_ms.unwrap() > now);
    assert_eq!(a2.profile.timer("carol").unwrap(), 3_600_000);
    assert!(!a2.profile.is_request("carol").unwrap());
    assert!(a2.profile.is_request("dave").unwrap());
    // Both files can be fetched later: key and blob id came along, the saved path did not.
    let pending: Vec<String> = a2
        .profile
        .pending_downloads()
        .unwrap()
        .into_iter()
        .map(|r| r.message.id)
        .collect();
    assert_eq!(pending, [file_out.clone(), file_in.clone()]);
    let record = a2.profile.attachment("bob", &file_in).unwrap().unwrap();
    assert_eq!(record.wire.key.as_ref(), &[0x22; 32]);
    assert_eq!(record.wire.blob_id.as_ref(), &[0x22; 32]);
    assert_eq!(record.info.path, None);
    // The archive carries no MLS state: the new device is in no group yet.
    assert!(a2.profile.groups("bob").unwrap().is_empty());
    assert_eq!(a2.profile.outbox_len().unwrap(), 0);

    // A second import changes nothing.
    let again = a2.profile.import_history(&mut archive.as_slice()).unwrap();
    assert_eq!(
        again,
        HistoryStats {
            bytes: archive.len() as u64,
            ..HistoryStats::default()
        }
    );
    assert_eq!(snapshot(&a2.profile), expected);

    // Later, the disappearing message has expired: it is no longer exported.
    let (late, _) = export(&a.profile, gone.expires_at_ms.unwrap());
    let mut a3 = link(root.path(), &mut ds, &a, "alice-tablet");
    a3.profile.import_history(&mut late.as_slice()).unwrap();
    assert!(a3.profile.find_message(&gone.id).is_err());
    assert_eq!(
        a3.profile.history("carol").unwrap().len(),
        a2.profile.history("carol").unwrap().len() - 1
    );
}

#[test]
fn cut_or_foreign_archives_fail_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let mut ds = Ds::default();
    let mut a = Client::new(root.path(), &mut ds, "alice");
    let mut b = Client::new(root.path(), &mut ds, "bob");
    for i in 0..5 {
        a.profile
            .queue_text("bob", &format!("message {i}"), ds.tick())
            .unwrap();
        b.profile
            .queue_text("alice", &format!("answer {i}"), ds.tick())
            .unwrap();
        settle(&mut ds, &mut [&mut a, &mut b]);
    }
    let (archive, stats) = export(&a.profile, ds.tick());
    assert_eq!(stats.messages, 10);

    let mut a2 = link(root.path(), &mut ds, &a, "alice-2");
    // Every cut is an error naming the archive, never a panic or a partial message.
    for cut in [
        0,
        1,
        5,
        archive.len() / 2,
        archive.len() - 3,
        archive.len() - 1,
    ] {
        let e = a2.profile.import_history(&mut &archive[..cut]).unwrap_err();
        assert!(is_archive_error(&e), "cut at {cut}: {e}");
        for m in a2.profile.history("bob").unwrap() {
            assert!(m.text.starts_with("message ") || m.text.starts_with("answer "));
        }
    }
    // Bytes after the end record.
    let mut longer = archive.clone();
    longer.extend_from_slice(&[2, 8, 1]);
    assert!(is_archive_error(
        &a2.profile
            .import_history(&mut longer.as_slice())
            .unwrap_err()
    ));
    // Another account's archive is refused before anything is written.
    let (bobs, _) = export(&b.profile, ds.tick());
    let before = a2.profile.history("bob").unwrap().len();
    assert!(is_archive_error(
        &a2.profile.import_history(&mut bobs.as_slice()).unwrap_err()
    ));
    assert!(a2.profile.conversations().unwrap().len() <= 1);
    assert_eq!(a2.profile.history("bob").unwrap().len(), before);
    // The whole archive still imports after all that, completing what was there.
    a2.profile.import_history(&mut archive.as_slice()).unwrap();
    assert_eq!(
        a2.profile.history("bob").unwrap(),
        a.profile.history("bob").unwrap()
    );
}
