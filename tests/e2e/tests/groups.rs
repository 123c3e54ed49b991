//! Group chats end to end: in-process server on port 0, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hushwire_client::{Client, ClientError, Event};
use hushwire_e2e::{E2eError, GroupEventKind, Suite, TimelineItem};
use hushwire_tests::{
    OP_TIMEOUT, TestServer, contains, history_texts, open, options, read_tree, receive, register,
    send,
};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
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

fn member_handles(c: &Client, conv: &str) -> Vec<String> {
    c.group_details(conv)
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.handle)
        .collect()
}

fn group_events(c: &Client, conv: &str) -> Vec<(GroupEventKind, String, Vec<String>)> {
    c.profile()
        .timeline(conv)
        .unwrap()
        .into_iter()
        .filter_map(|t| match t {
            TimelineItem::Group(e) => Some((e.kind, e.by, e.handles)),
            TimelineItem::Message(_)
            | TimelineItem::RelayLink(_)
            | TimelineItem::Attachment(..) => None,
        })
        .collect()
}

async fn three_members(suite: Suite) {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;

    let conv = alice
        .create_group("Trip", &names(&["bob", "carol"]), Some(suite))
        .unwrap();
    assert_eq!(conv, "#Trip");
    flush(&mut alice).await;
    send(&mut alice, "#Trip", "hello group").await;

    for c in [&mut bob, &mut carol] {
        let got = receive(c).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].conversation, "#Trip");
        assert_eq!(got[0].from, "alice");
        assert_eq!(got[0].text, "hello group");
    }
    send(&mut bob, "#Trip", "hi from bob").await;
    send(&mut carol, "#Trip", "hi from carol").await;
    let got = receive(&mut alice).await;
    let texts: Vec<(String, String)> = got
        .iter()
        .map(|m| (m.from.clone(), m.text.clone()))
        .collect();
    assert_eq!(
        texts,
        [
            ("bob".to_string(), "hi from bob".to_string()),
            ("carol".to_string(), "hi from carol".to_string())
        ]
    );
    let got = receive(&mut bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "carol");
    let expected = ["hello group", "hi from bob", "hi from carol"];
    assert_eq!(history_texts(&alice, "#Trip"), expected);
    assert_eq!(history_texts(&bob, "#Trip"), expected);
    assert_eq!(history_texts(&carol, "#Trip").len(), 3);
    for c in [&alice, &bob, &carol] {
        let d = c.group_details("#Trip").unwrap();
        assert_eq!(d.title, "Trip");
        assert_eq!(d.suite, suite);
        assert_eq!(member_handles(c, "#Trip"), ["alice", "bob", "carol"]);
        assert!(d.members.iter().all(|m| m.admin == (m.handle == "alice")));
    }
    assert_eq!(
        group_events(&bob, "#Trip"),
        [(GroupEventKind::Added, "alice".to_string(), names(&["bob"]))]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_xwing() {
    three_members(Suite::XWing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_classic() {
    three_members(Suite::Classic).await;
}

/// A newcomer added after messages were sent reads only what comes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_reads_only_later_messages() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut dave = register(root.path(), &server, "dave").await;
    alice
        .create_group("Book club", &names(&["bob"]), None)
        .unwrap();
    flush(&mut alice).await;
    send(&mut alice, "#Book club", "before dave").await;
    assert_eq!(receive(&mut bob).await.len(), 1);

    alice
        .profile_mut()
        .group_add("#Book club", &names(&["dave"]), 1)
        .unwrap();
    flush(&mut alice).await;
    send(&mut alice, "#Book club", "after dave").await;
    let events = sync_events(&mut dave).await;
    assert!(events.contains(&Event::ConversationStarted {
        conversation: "#Book club".into()
    }));
    assert_eq!(history_texts(&dave, "#Book club"), ["after dave"]);
    // bob learns of the add and reads on.
    let events = sync_events(&mut bob).await;
    assert!(events.iter().any(|e| matches!(e, Event::Group(g)
        if g.kind == GroupEventKind::Added && g.handles == ["dave"] && g.by == "alice")));
    assert_eq!(
        history_texts(&bob, "#Book club"),
        ["before dave", "after dave"]
    );
    send(&mut dave, "#Book club", "hi, dave here").await;
    for c in [&mut alice, &mut bob] {
        let got = receive(c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].from.as_str(), got[0].text.as_str()),
            ("dave", "hi, dave here")
        );
    }
    server.stop().await;
}

/// A removed member is locked out of later messages; a non-admin may not remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_is_locked_out() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    let mut dave = register(root.path(), &server, "dave").await;
    alice
        .create_group(
            "Team",
            &names(&["bob", "carol", "dave"]),
            Some(Suite::Classic),
        )
        .unwrap();
    flush(&mut alice).await;
    for c in [&mut bob, &mut carol, &mut dave] {
        receive(c).await;
    }

    // A non-admin may not remove others.
    let err = bob
        .profile_mut()
        .group_remove("#Team", &names(&["carol"]), 1)
        .unwrap_err();
    assert!(
        matches!(err, hushwire_e2e::E2eError::NotAuthorized(_)),
        "{err}"
    );

    alice
        .profile_mut()
        .group_remove("#Team", &names(&["carol"]), 1)
        .unwrap();
    flush(&mut alice).await;
    send(&mut alice, "#Team", "carol cannot read this").await;
    let events = sync_events(&mut carol).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Group(g)
        if g.kind == GroupEventKind::Removed && g.handles == ["carol"])),
        "{events:?}"
    );
    assert!(history_texts(&carol, "#Team").is_empty());
    assert_eq!(carol.group_details("#Team").unwrap().state, "inactive");
    assert!(carol.queue_text("#Team", "still here?").is_err());

    server.stop().await;
}

/// A commit adding a member from a non-admin (a modified client) and its Welcome are
/// rejected by every honest client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_add_rejected_by_all() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    let mut mallory = register(root.path(), &server, "mallory").await;
    alice
        .create_group("Private", &names(&["bob", "carol"]), None)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;

    // The honest API refuses.
    let err = carol
        .profile_mut()
        .group_add("#Private", &names(&["mallory"]), 1)
        .unwrap_err();
    assert!(matches!(err, hushwire_e2e::E2eError::NotAuthorized(_)));
    // A modified client does it anyway; the server cannot tell.
    let group_id = carol.profile().groups("#Private").unwrap()[0]
        .group_id
        .clone();
    carol
        .profile_mut()
        .queue_group_op_unchecked("#Private", &group_id, "gadd", &names(&["mallory"]), None, 1)
        .unwrap();
    flush(&mut carol).await;

    for c in [&mut alice, &mut bob] {
        let events = sync_events(c).await;
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Undecryptable { reason, .. }
                if reason.contains("not authorized"))),
            "{events:?}"
        );
        assert_eq!(member_handles(c, "#Private"), ["alice", "bob", "carol"]);
    }
    let events = sync_events(&mut mallory).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ConversationStarted { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { reason, .. }
        if reason.contains("Welcome not authorized")))
    );
    assert!(mallory.profile().conversations().unwrap().is_empty());
    // alice and bob keep talking at their (legitimate) epoch.
    send(&mut alice, "#Private", "still private").await;
    assert_eq!(receive(&mut bob).await[0].text, "still private");
    server.stop().await;
}

/// After every honest client refused a non-admin's commit, the group is "diverged": it
/// is never rejoined from the GroupInfo that commit published (which would let the
/// intruder in), texts still flow between the honest members, and an admin's reset moves
/// the conversation, with its history, to a new group without the offender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_group_is_reset_by_an_admin() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    let mut mallory = register(root.path(), &server, "mallory").await;
    let mut dave = register(root.path(), &server, "dave").await;
    alice
        .create_group("Private", &names(&["bob", "carol"]), None)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;
    send(&mut alice, "#Private", "before").await;
    assert_eq!(receive(&mut bob).await[0].text, "before");

    // carol's modified client adds mallory; every honest client refuses the commit.
    let group_id = carol.profile().groups("#Private").unwrap()[0]
        .group_id
        .clone();
    carol
        .profile_mut()
        .queue_group_op_unchecked("#Private", &group_id, "gadd", &names(&["mallory"]), None, 1)
        .unwrap();
    flush(&mut carol).await;
    for c in [&mut alice, &mut bob] {
        sync_events(c).await;
        let diverged: Vec<_> = group_events(c, "#Private")
            .into_iter()
            .filter(|(k, _, _)| *k == GroupEventKind::Diverged)
            .collect();
        assert_eq!(
            diverged,
            [(GroupEventKind::Diverged, "carol".into(), vec![])]
        );
    }
    receive(&mut mallory).await;

    // carol talks in her branch: the honest clients cannot read it, do not buffer it,
    // and do not rejoin from the GroupInfo of the commit they refused.
    send(&mut carol, "#Private", "from the branch").await;
    for c in [&mut alice, &mut bob] {
        let events = sync_events(c).await;
        assert!(
            !events.iter().any(|e| matches!(e, Event::Message(_))),
            "{events:?}"
        );
        sync_events(c).await;
        assert!(c.profile().stuck_groups().unwrap().is_empty());
        assert_eq!(c.profile().outbox_len().unwrap(), 0);
        assert_eq!(member_handles(c, "#Private"), ["alice", "bob", "carol"]);
    }
    // Texts still flow at the honest epoch; membership changes wait for a reset.
    send(&mut bob, "#Private", "still here").await;
    assert_eq!(receive(&mut alice).await[0].text, "still here");
    let err = alice
        .profile_mut()
        .group_add("#Private", &names(&["dave"]), 1)
        .unwrap_err();
    assert!(err.to_string().contains("reset"), "{err}");
    let err = bob.profile_mut().group_reset("#Private", 1).unwrap_err();
    assert!(matches!(err, E2eError::NotAuthorized(_)), "{err}");

    // alice (admin) resets: carol is left out, the history stays.
    let left_out = alice.profile_mut().group_reset("#Private", 1).unwrap();
    assert_eq!(left_out, ["carol"]);
    flush(&mut alice).await;
    sync_events(&mut bob).await;
    for c in [&alice, &bob] {
        assert_eq!(member_handles(c, "#Private"), ["alice", "bob"]);
        assert!(
            group_events(c, "#Private").contains(&(
                GroupEventKind::Reset,
                "alice".into(),
                names(&["carol"])
            )),
            "{:?}",
            group_events(c, "#Private")
        );
        assert_eq!(history_texts(c, "#Private"), ["before", "still here"]);
        assert_eq!(c.profile().conversations().unwrap().len(), 1);
    }
    send(&mut alice, "#Private", "after the reset").await;
    let got = receive(&mut bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "after the reset");
    assert_eq!(got[0].conversation, "#Private");
    // Neither the offender nor the intruder reads it.
    for c in [&mut carol, &mut mallory] {
        assert!(receive(c).await.iter().all(|m| m.text != "after the reset"));
    }
    // The group works again: the admin adds someone.
    alice
        .profile_mut()
        .group_add("#Private", &names(&["dave"]), 1)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut dave).await;
    sync_events(&mut bob).await;
    assert_eq!(member_handles(&bob, "#Private"), ["alice", "bob", "dave"]);
    send(&mut bob, "#Private", "welcome dave").await;
    assert_eq!(receive(&mut dave).await[0].text, "welcome dave");
    assert_eq!(receive(&mut alice).await[0].text, "welcome dave");
    server.stop().await;
}

/// A member offline while the group goes through 50 epochs catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_member_catches_up_fifty_epochs() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let carol = register(root.path(), &server, "carol").await;
    drop(carol);
    alice
        .create_group("Long", &names(&["bob", "carol"]), Some(Suite::Classic))
        .unwrap();
    flush(&mut alice).await;
    let start = alice.group_details("#Long").unwrap().epoch;
    for i in 0..50 {
        let conv = if i == 0 {
            "#Long".to_string()
        } else {
            format!("#Long {}", i - 1)
        };
        alice
            .profile_mut()
            .group_rename(&conv, &format!("Long {i}"), 1)
            .unwrap();
        flush(&mut alice).await;
        if i % 10 == 9 {
            send(&mut alice, &format!("#Long {i}"), &format!("at rename {i}")).await;
        }
        if i % 7 == 0 {
            receive(&mut bob).await;
        }
    }
    let end = alice.group_details("#Long 49").unwrap().epoch;
    assert!(end >= start + 50);
    let mut carol = open(root.path(), "carol");
    receive(&mut carol).await;
    let d = carol.group_details("#Long 49").unwrap();
    assert_eq!(d.epoch, end);
    let texts = history_texts(&carol, "#Long 49");
    let expected: Vec<String> = (0..5)
        .map(|k| format!("at rename {}", k * 10 + 9))
        .collect();
    let at: Vec<String> = texts
        .into_iter()
        .filter(|t| t.starts_with("at rename"))
        .collect();
    assert_eq!(at, expected);
    send(&mut carol, "#Long 49", "back").await;
    assert_eq!(receive(&mut alice).await[0].text, "back");
    server.stop().await;
}

/// The server's files hold neither the group's title nor any text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_hold_no_title_or_text() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let title = "Secret-Title-8c1f";
    let text = "secret-text-4d27";
    alice.create_group(title, &names(&["bob"]), None).unwrap();
    flush(&mut alice).await;
    send(&mut alice, &format!("#{title}"), text).await;
    alice
        .profile_mut()
        .group_rename(&format!("#{title}"), "Renamed-Title-77aa", 1)
        .unwrap();
    flush(&mut alice).await;
    let got = receive(&mut bob).await;
    assert_eq!(got[0].text, text);
    let data_dir = server.data_dir.clone();
    server.stop().await;
    for (path, bytes) in read_tree(&data_dir) {
        for needle in [title, text, "Renamed-Title-77aa"] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{} contains {needle:?}",
                path.display()
            );
        }
    }
}

/// Leaving is a self-remove proposal that a remaining member's client commits; the
/// leaver is locked out of later messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaver_is_locked_out() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    alice
        .create_group("Club", &names(&["bob", "carol"]), None)
        .unwrap();
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;

    bob.profile_mut().group_leave("#Club", 1).unwrap();
    flush(&mut bob).await;
    assert!(bob.group_details("#Club").unwrap().leaving);
    assert!(bob.queue_text("#Club", "one more thing").is_err());
    // carol is online first: her client commits bob's leave proposal.
    sync_events(&mut carol).await;
    sync_events(&mut alice).await;
    for c in [&alice, &carol] {
        assert_eq!(member_handles(c, "#Club"), ["alice", "carol"]);
        assert!(
            group_events(c, "#Club")
                .iter()
                .any(|(k, by, h)| *k == GroupEventKind::Left
                    && by == "bob"
                    && h == &names(&["bob"]))
        );
    }
    send(&mut alice, "#Club", "bob has gone").await;
    let events = sync_events(&mut bob).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Group(g)
            if g.kind == GroupEventKind::Left && g.by == "bob")),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Message(_))));
    assert!(history_texts(&bob, "#Club").is_empty());
    assert_eq!(bob.group_details("#Club").unwrap().state, "inactive");
    assert_eq!(receive(&mut carol).await[0].text, "bob has gone");
    server.stop().await;
}

fn converged(clients: &[&Client], conv: &str) {
    let first = clients[0].profile().groups(conv).unwrap();
    for c in clients {
        let g = c.profile().groups(conv).unwrap();
        assert_eq!(g[0].epoch, first[0].epoch, "epochs differ");
        assert_eq!(
            g[0].epoch_authenticator, first[0].epoch_authenticator,
            "epoch authenticators differ"
        );
        assert_eq!(g[0].members, first[0].members);
        assert_eq!(
            c.group_details(conv).unwrap(),
            clients[0].group_details(conv).unwrap()
        );
    }
}

/// Three admins change the group at the same time: one commit wins each epoch, the
/// others redo theirs at the new epoch, and everyone ends in the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_converge() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    let mut dave = register(root.path(), &server, "dave").await;
    let mut erin = register(root.path(), &server, "erin").await;
    let mut frank = register(root.path(), &server, "frank").await;
    alice
        .create_group("Race", &names(&["bob", "carol", "frank"]), None)
        .unwrap();
    flush(&mut alice).await;
    for h in ["bob", "carol"] {
        alice
            .profile_mut()
            .group_set_admin("#Race", h, true, 1)
            .unwrap();
    }
    flush(&mut alice).await;
    receive(&mut bob).await;
    receive(&mut carol).await;
    for c in [&bob, &carol] {
        assert!(
            c.group_details("#Race")
                .unwrap()
                .members
                .iter()
                .filter(|m| m.admin)
                .count()
                == 3
        );
    }

    // All three build a commit for the same epoch: alice's wins; bob and carol (who
    // have not seen it) get `stale_epoch`, process what won, and redo theirs.
    alice
        .profile_mut()
        .group_add("#Race", &names(&["dave"]), 1)
        .unwrap();
    bob.profile_mut()
        .group_add("#Race", &names(&["erin"]), 1)
        .unwrap();
    carol
        .profile_mut()
        .group_remove("#Race", &names(&["frank"]), 1)
        .unwrap();
    let epoch = alice.group_details("#Race").unwrap().epoch;
    flush(&mut alice).await;
    assert_eq!(bob.group_details("#Race").unwrap().epoch, epoch);
    flush(&mut bob).await;
    assert_eq!(carol.group_details("#Race").unwrap().epoch, epoch);
    flush(&mut carol).await;
    assert_eq!(carol.group_details("#Race").unwrap().epoch, epoch + 3);
    for c in [&mut alice, &mut bob, &mut carol] {
        sync_events(c).await;
        assert_eq!(c.profile().outbox_len().unwrap(), 0);
    }
    sync_events(&mut dave).await;
    sync_events(&mut erin).await;
    let clients = [&alice, &bob, &carol, &dave, &erin];
    converged(&clients, "#Race");
    assert_eq!(
        member_handles(&alice, "#Race"),
        ["alice", "bob", "carol", "dave", "erin"]
    );
    sync_events(&mut frank).await;
    assert_eq!(frank.group_details("#Race").unwrap().state, "inactive");

    // Now truly at the same time: rename, demote and promote from three admins.
    alice
        .profile_mut()
        .group_rename("#Race", "Race 2", 1)
        .unwrap();
    bob.profile_mut()
        .group_set_admin("#Race", "carol", false, 1)
        .unwrap();
    carol
        .profile_mut()
        .group_set_admin("#Race", "dave", true, 1)
        .unwrap();
    let (mut ea, mut eb, mut ec) = (|_| {}, |_| {}, |_| {});
    let (a, b, c) = tokio::join!(
        alice.flush_outbox(OP_TIMEOUT, &mut ea),
        bob.flush_outbox(OP_TIMEOUT, &mut eb),
        carol.flush_outbox(OP_TIMEOUT, &mut ec),
    );
    a.unwrap();
    b.unwrap();
    // If bob's demotion won first, carol's client drops her promotion instead of
    // sending a commit every other client would reject.
    if let Err(e) = c {
        assert!(
            matches!(e, ClientError::E2e(E2eError::NotAuthorized(_))),
            "{e}"
        );
    }
    for c in [&mut alice, &mut bob, &mut carol, &mut dave, &mut erin] {
        sync_events(c).await;
        assert_eq!(c.profile().outbox_len().unwrap(), 0);
    }
    let clients = [&alice, &bob, &carol, &dave, &erin];
    converged(&clients, "#Race 2");
    let admins: Vec<String> = alice
        .group_details("#Race 2")
        .unwrap()
        .members
        .into_iter()
        .filter(|m| m.admin)
        .map(|m| m.handle)
        .collect();
    assert!(
        admins == ["alice", "bob", "dave"] || admins == ["alice", "bob"],
        "{admins:?}"
    );

    send(&mut erin, "#Race 2", "all settled").await;
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        let got = receive(c).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].text, "all settled");
        assert_eq!(got[0].conversation, "#Race 2");
    }
    server.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A member whose group state fell behind for good (its profile was restored from an old
/// backup, and the commits it missed are gone from the server) rejoins by External Commit
/// from the sealed GroupInfo the server keeps, and keeps its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_with_lost_state_rejoins() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    alice
        .create_group("Backup", &names(&["bob", "carol"]), None)
        .unwrap();
    flush(&mut alice).await;
    send(&mut alice, "#Backup", "before the backup").await;
    receive(&mut bob).await;
    receive(&mut carol).await;

    // carol backs up her profile, then follows the group for a while.
    drop(carol.close().await);
    let backup = root.path().join("carol-backup");
    copy_dir(&root.path().join("carol"), &backup);
    let mut carol = open(root.path(), "carol");
    alice
        .profile_mut()
        .group_rename("#Backup", "Backup 2", 1)
        .unwrap();
    flush(&mut alice).await;
    send(
        &mut alice,
        "#Backup 2",
        "carol reads this before the restore",
    )
    .await;
    alice
        .profile_mut()
        .group_rename("#Backup 2", "Backup 3", 1)
        .unwrap();
    flush(&mut alice).await;
    assert_eq!(receive(&mut carol).await.len(), 1);
    drop(carol.close().await);

    // The backup comes back: carol's state is two epochs behind, and the server deleted
    // the commits she acknowledged.
    std::fs::remove_dir_all(root.path().join("carol")).unwrap();
    copy_dir(&backup, &root.path().join("carol"));
    let mut carol = open(root.path(), "carol");
    assert_eq!(carol.group_details("#Backup").unwrap().title, "Backup");
    send(&mut alice, "#Backup 3", "lost to the restored state").await;
    let events = sync_events(&mut carol).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::GroupOperationFailed { .. })),
        "{events:?}"
    );
    // Rejoined: current title, current epoch, history kept.
    let d = carol.group_details("#Backup 3").unwrap();
    assert_eq!(d.state, "active");
    assert_eq!(history_texts(&carol, "#Backup 3")[0], "before the backup");
    sync_events(&mut alice).await;
    sync_events(&mut bob).await;
    converged(&[&alice, &bob, &carol], "#Backup 3");
    assert_eq!(
        member_handles(&alice, "#Backup 3"),
        ["alice", "bob", "carol"]
    );

    send(&mut alice, "#Backup 3", "welcome back").await;
    let got = receive(&mut carol).await;
    assert_eq!(got.last().unwrap().text, "welcome back");
    send(&mut carol, "#Backup 3", "back from the backup").await;
    for c in [&mut alice, &mut bob] {
        let got = receive(c).await;
        assert_eq!(got.last().unwrap().text, "back from the backup");
    }
    server.stop().await;
}

/// Runs `work` on every item on two threads (client futures are not `Send`, so each
/// thread drives its half on its own runtime) and returns the results in order.
fn on_two_threads<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> std::pin::Pin<Box<dyn std::future::Future<Output = R>>> + Sync,
) -> Vec<R> {
    let mut items: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    let half = items.split_off(items.len() / 2);
    let run = |part: Vec<(usize, T)>| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        part.into_iter()
            .map(|(i, t)| (i, rt.block_on(work(t))))
            .collect::<Vec<_>>()
    };
    let mut out = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| run(items));
            let b = s.spawn(|| run(half));
            let mut v = a.join().unwrap();
            v.extend(b.join().unwrap());
            v
        })
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// A 200-member group of real clients: created in one commit (classic suite, by the size
/// policy); a member is removed after the first message; every member joins from its
/// Welcome and reads what was sent while it was a member; the removed one is locked out
/// of the rest; a reply from the last member reaches the creator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_members() {
    const N: usize = 200;
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let handles: Vec<String> = (1..N).map(|i| format!("member{i:03}")).collect();
    let dir = root.path().to_path_buf();
    let (url, pin) = (server.url.clone(), server.pin.clone());
    let members: Vec<Client> = on_two_threads(handles.clone(), |h| {
        let (dir, url, pin) = (dir.join(&h), url.clone(), pin.clone());
        Box::pin(async move {
            hushwire_client::register(&dir, &h, &url, Some(&pin), None, options())
                .await
                .unwrap();
            Client::open(&dir, options()).unwrap()
        })
    });

    let conv = alice.create_group("Crowd", &handles, None).unwrap();
    flush(&mut alice).await;
    let d = alice.group_details(&conv).unwrap();
    assert_eq!(d.members.len(), N);
    assert_eq!(
        d.suite,
        Suite::Classic,
        "the size policy picks classic here"
    );
    send(&mut alice, &conv, "hello crowd").await;
    alice
        .profile_mut()
        .group_remove(&conv, &names(&["member100"]), 1)
        .unwrap();
    flush(&mut alice).await;
    send(&mut alice, &conv, "one fewer").await;

    let mut members: Vec<(Client, Vec<hushwire_client::StoredMessage>)> =
        on_two_threads(members, |mut c| {
            Box::pin(async move {
                let got = receive(&mut c).await;
                (c, got)
            })
        });
    for (i, (m, got)) in members.iter().enumerate() {
        let texts: Vec<&str> = got.iter().map(|g| g.text.as_str()).collect();
        assert!(
            got.iter()
                .all(|g| g.conversation == "#Crowd" && g.from == "alice")
        );
        if i + 1 == 100 {
            assert_eq!(texts, ["hello crowd"], "the removed member read more");
            assert_eq!(m.group_details(&conv).unwrap().state, "inactive");
        } else {
            assert_eq!(texts, ["hello crowd", "one fewer"]);
        }
    }
    let (last, _) = members.last_mut().unwrap();
    send(last, &conv, "from the back row").await;
    let got = receive(&mut alice).await;
    assert_eq!(got[0].from, format!("member{:03}", N - 1));
    assert_eq!(alice.group_details(&conv).unwrap().members.len(), N - 1);
    drop(members);
    server.stop().await;
}
