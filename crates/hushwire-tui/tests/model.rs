//! The terminal app's model and rendering, without a terminal: ratatui's `TestBackend`
//! renders [`App`] and the tests assert what is on screen; keys and client events drive
//! the model and the tests assert the resulting state and actions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hushwire_client::{Event, MessageState, StoredMessage};
use hushwire_e2e::{Reaction, Receipt, ReceiptStatus, TimelineItem};
use hushwire_service::{Command, ServiceEvent};
use hushwire_tui::app::{
    Action, AttachmentView, ConversationRow, GroupOp, MessageView, Snapshot,
    TYPING_SEND_INTERVAL_MS, TYPING_SHOWN_MS, Ticks, message_views, safety_lines,
};
use hushwire_tui::{App, Focus, Overlay};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: u64 = 1_764_806_400_000; // 2025-12-04 00:00 UTC

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(app: &mut App, text: &str, now: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    for c in text.chars() {
        actions.extend(app.handle_key(key(KeyCode::Char(c)), now));
    }
    actions
}

/// Types `line` into the compose line and presses Enter.
fn run(app: &mut App, line: &str) -> Vec<Action> {
    app.focus = Focus::Compose;
    app.compose.clear();
    type_text(app, line, NOW);
    app.handle_key(key(KeyCode::Enter), NOW)
}

/// The screen as text, one string per row (wide characters' trailing cells skipped).
fn render(app: &App, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| hushwire_tui::draw(f, app, NOW)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            let mut row = String::new();
            let mut skip = 0;
            for x in 0..width {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let symbol = buffer[(x, y)].symbol();
                skip = unicode_width::UnicodeWidthStr::width(symbol).saturating_sub(1);
                row.push_str(symbol);
            }
            row
        })
        .collect()
}

fn screen_has(screen: &[String], needle: &str) -> bool {
    screen.iter().any(|row| row.contains(needle))
}

fn msg(id: &str, from: &str, text: &str, outgoing: bool, at: u64) -> StoredMessage {
    StoredMessage {
        id: id.into(),
        conversation: "bob".into(),
        from: from.into(),
        sent_at_ms: at,
        received_at_ms: None,
        text: text.into(),
        outgoing,
        state: if outgoing {
            MessageState::Sent
        } else {
            MessageState::Received
        },
        reply_to: None,
        view_once: false,
        viewed: false,
        expires_at_ms: None,
        edited_at_ms: None,
    }
}

fn view(id: &str, from: &str, text: &str, outgoing: bool) -> MessageView {
    MessageView {
        id: id.into(),
        from: from.into(),
        at_ms: NOW + 9 * 3_600_000 + 5 * 60_000,
        text: text.into(),
        outgoing,
        ticks: outgoing.then_some(Ticks::Sent),
        quote: None,
        reactions: Vec::new(),
        attachment: None,
        notice: false,
        edited: false,
        view_once: false,
        expires_at_ms: None,
    }
}

fn row(name: &str, preview: &str) -> ConversationRow {
    ConversationRow {
        name: name.into(),
        unread: 0,
        preview: preview.into(),
        last_at_ms: Some(NOW),
        request: false,
    }
}

/// alice with two conversations, bob's open.
fn sample_app() -> App {
    let mut app = App::new("alice");
    app.online = true;
    app.set_snapshot(Snapshot {
        conversations: vec![row("bob", "see you"), row("#friends", "carol: party!")],
        open: None,
        timer_ms: 0,
    });
    let _ = app.open_conversation("bob");
    let mut hi = view("m1", "alice", "hi bob", true);
    hi.ticks = Some(Ticks::Read);
    let mut second = view("m2", "alice", "are you there?", true);
    second.ticks = Some(Ticks::Delivered);
    let mut answer = view("m3", "bob", "yes, here", false);
    answer.quote = Some(("alice".into(), "are you there?".into()));
    answer.reactions = vec![("👍".into(), vec!["alice".into()])];
    let mut photo = view("m4", "bob", "", false);
    photo.attachment = Some(AttachmentView {
        name: "photo.jpg".into(),
        size: 1_500,
        path: Some("/home/alice/media/photo.jpg".into()),
        error: None,
    });
    let mut queued = view("m5", "alice", "see you", true);
    queued.ticks = Some(Ticks::Queued);
    app.set_snapshot(Snapshot {
        conversations: vec![row("bob", "see you"), row("#friends", "carol: party!")],
        open: Some(("bob".into(), vec![hi, second, answer, photo, queued])),
        timer_ms: 0,
    });
    app
}

#[test]
fn renders_list_messages_ticks_replies_reactions_and_files() {
    let mut app = sample_app();
    // Two messages arrive in the group, which is not open: unread count and a bell.
    let mut group_msg = msg("g1", "carol", "party!", false, NOW);
    group_msg.conversation = "#friends".into();
    for _ in 0..2 {
        let out = app.apply_event(
            &ServiceEvent::Client(Event::Message(group_msg.clone())),
            NOW,
        );
        assert!(out.bell);
    }
    let screen = render(&app, 110, 30);
    let text = screen.join("\n");
    // The list: both conversations, the group's unread count and previews.
    assert!(screen_has(&screen, "bob"), "{text}");
    assert!(screen_has(&screen, "#friends (2)"), "{text}");
    assert!(screen_has(&screen, "carol: party!"), "{text}");
    assert!(screen_has(&screen, "Chats — alice"), "{text}");
    // The message pane: senders, time, texts and ticks.
    assert!(screen_has(&screen, "alice  09:05  ✓✓ read"), "{text}");
    assert!(screen_has(&screen, "alice  09:05  ✓✓"), "{text}");
    assert!(screen_has(&screen, "  hi bob"), "{text}");
    assert!(screen_has(&screen, "bob  09:05"), "{text}");
    // The reply quotes, the reaction is under the message.
    assert!(screen_has(&screen, "┃ alice: are you there?"), "{text}");
    assert!(screen_has(&screen, "👍 alice"), "{text}");
    // The file, with where it was saved.
    assert!(
        screen_has(
            &screen,
            "📎 photo.jpg (1.5 KB) saved to /home/alice/media/photo.jpg"
        ),
        "{text}"
    );
    // Queued own message.
    assert!(screen_has(&screen, "alice  09:05  …"), "{text}");
    // Status bar and compose line.
    assert!(screen_has(&screen, "● online"), "{text}");
    assert!(screen_has(&screen, "Message bob"), "{text}");
    assert!(screen_has(&screen, "F1/? help"), "{text}");
}

#[test]
fn help_overlay_lists_keys_and_commands() {
    let mut app = sample_app();
    app.focus = Focus::List;
    app.handle_key(key(KeyCode::Char('?')), NOW);
    assert_eq!(app.overlay, Some(Overlay::Help));
    let screen = render(&app, 110, 32);
    let text = screen.join("\n");
    for needle in [
        "Help — keys and commands",
        "/group create TITLE a,b",
        "/link",
        "/file PATH",
        "PgUp PgDn",
        "reply to / react to the selected message",
        "/timer 30m|1h|7d|off",
        "/viewonce PATH",
        "delete the selected message",
        "/verify [HANDLE] [mark]  /trust HANDLE",
    ] {
        assert!(screen_has(&screen, needle), "missing {needle:?}:\n{text}");
    }
    app.handle_key(key(KeyCode::Esc), NOW);
    assert_eq!(app.overlay, None);
    // F1 works from the compose line too, where `?` is just a character.
    app.focus = Focus::Compose;
    app.handle_key(key(KeyCode::Char('?')), NOW);
    assert_eq!(app.compose, "?");
    app.handle_key(key(KeyCode::F(1)), NOW);
    assert_eq!(app.overlay, Some(Overlay::Help));
}

#[test]
fn offline_typing_and_link_overlay_render() {
    let mut app = sample_app();
    app.apply_event(
        &ServiceEvent::Client(Event::Typing {
            conversation: "bob".into(),
            from: "bob".into(),
            typing: true,
        }),
        NOW - 1,
    );
    app.apply_event(
        &ServiceEvent::Connection {
            online: false,
            reason: Some("refused".into()),
        },
        NOW,
    );
    let screen = render(&app, 110, 30);
    assert!(screen_has(&screen, "○ offline"), "{}", screen.join("\n"));
    assert!(screen_has(&screen, "bob typing…"), "{}", screen.join("\n"));
    // The typing signal expires.
    app.tick(NOW + TYPING_SHOWN_MS);
    assert!(app.typing_in_open(NOW + TYPING_SHOWN_MS).is_empty());

    // /link opens the linking overlay; the code and its QR code show when they come.
    type_text(&mut app, "/link", NOW);
    let actions = app.handle_key(key(KeyCode::Enter), NOW);
    assert_eq!(actions, vec![Action::Link]);
    let code = "hwlink1:EXAMPLECODE";
    let qr = qrcode::QrCode::new(code.as_bytes())
        .unwrap()
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    app.overlay = Some(Overlay::Link {
        code: code.into(),
        qr: qr.clone(),
        status: "waiting for the new device".into(),
    });
    let screen = render(&app, 120, 40);
    let text = screen.join("\n");
    assert!(
        screen_has(&screen, "link-code: hwlink1:EXAMPLECODE"),
        "{text}"
    );
    let qr_row = qr.lines().nth(3).unwrap();
    assert!(screen_has(&screen, qr_row), "{text}");
    // The device's approval question answers with y.
    app.overlay = Some(Overlay::Approve {
        name: "laptop".into(),
    });
    let screen = render(&app, 120, 40);
    assert!(screen_has(&screen, "\"laptop\""), "{}", screen.join("\n"));
    assert_eq!(
        app.handle_key(key(KeyCode::Char('y')), NOW),
        vec![Action::ApproveLink(true)]
    );
}

#[test]
fn keys_send_reply_react_and_switch_panes() {
    let mut app = sample_app();
    assert_eq!(app.focus, Focus::Compose);
    // Typing sends one signal per interval.
    let first = type_text(&mut app, "hel", NOW);
    assert_eq!(
        first,
        vec![Action::Typing {
            conversation: "bob".into(),
            typing: true
        }]
    );
    assert!(type_text(&mut app, "lo", NOW + 1_000).is_empty());
    assert_eq!(
        type_text(&mut app, "!", NOW + TYPING_SEND_INTERVAL_MS).len(),
        1,
        "a new signal after the interval"
    );
    app.handle_key(key(KeyCode::Backspace), NOW);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), NOW),
        vec![Action::Send {
            to: "bob".into(),
            text: "hello".into(),
            reply_to: None
        }]
    );
    assert!(app.compose.is_empty());

    // Tab cycles compose → list → messages → compose; arrows and Esc go back.
    app.handle_key(key(KeyCode::Tab), NOW);
    assert_eq!(app.focus, Focus::List);
    app.handle_key(key(KeyCode::Tab), NOW);
    assert_eq!(app.focus, Focus::Messages);
    app.handle_key(key(KeyCode::Left), NOW);
    assert_eq!(app.focus, Focus::List);
    app.handle_key(key(KeyCode::Right), NOW);
    assert_eq!(app.focus, Focus::Compose, "Right opens the selected chat");
    app.handle_key(key(KeyCode::Esc), NOW);
    assert_eq!(app.focus, Focus::Messages);

    // Select the message above the newest and reply to it.
    app.handle_key(key(KeyCode::Up), NOW);
    app.handle_key(key(KeyCode::Up), NOW);
    assert_eq!(app.target_message().unwrap().id, "m4");
    app.handle_key(key(KeyCode::Up), NOW);
    assert_eq!(app.target_message().unwrap().id, "m3");
    app.handle_key(key(KeyCode::Char('r')), NOW);
    assert_eq!(app.focus, Focus::Compose);
    assert_eq!(app.reply_to.as_deref(), Some("m3"));
    let screen = render(&app, 110, 30);
    assert!(
        screen_has(&screen, "Reply to bob: yes, here"),
        "{}",
        screen.join("\n")
    );
    type_text(&mut app, "great", NOW);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), NOW),
        vec![Action::Send {
            to: "bob".into(),
            text: "great".into(),
            reply_to: Some("m3".into())
        }]
    );
    assert_eq!(app.reply_to, None);

    // React to the selected message.
    app.handle_key(key(KeyCode::BackTab), NOW);
    assert_eq!(app.focus, Focus::Messages);
    app.handle_key(key(KeyCode::PageUp), NOW);
    assert_eq!(
        app.target_message().unwrap().id,
        "m1",
        "PgUp moves a page up"
    );
    app.handle_key(key(KeyCode::PageDown), NOW);
    assert_eq!(app.selected_message, None, "PgDn back to the newest");
    app.handle_key(key(KeyCode::Up), NOW);
    app.handle_key(key(KeyCode::Char('e')), NOW);
    let actions = type_text(&mut app, "🎉", NOW);
    assert!(actions.is_empty());
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), NOW),
        vec![Action::React {
            message_id: "m5".into(),
            emoji: "🎉".into()
        }]
    );
    assert_eq!(app.react_prompt, None);

    // `/` in the message pane starts a command.
    assert_eq!(app.focus, Focus::Messages);
    app.handle_key(key(KeyCode::Char('/')), NOW);
    assert_eq!((app.focus, app.compose.as_str()), (Focus::Compose, "/"));

    // Ctrl-C quits from anywhere.
    let actions = app.handle_key(
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        NOW,
    );
    assert_eq!(actions, vec![Action::Quit]);
    assert!(app.quit);
}

#[test]
fn slash_commands() {
    let mut app = sample_app();
    assert_eq!(
        run(&mut app, "/new carol"),
        vec![Action::Refresh, Action::MarkRead("carol".into())]
    );
    assert_eq!(app.open.as_deref(), Some("carol"));
    assert!(app.messages.is_empty());
    assert_eq!(
        run(&mut app, "/file /tmp/a b.png"),
        vec![Action::SendFile {
            to: "carol".into(),
            path: "/tmp/a b.png".into(),
            view_once: false,
        }]
    );
    assert_eq!(
        run(&mut app, "/group create Book club bob,carol"),
        vec![Action::GroupCreate {
            title: "Book club".into(),
            members: vec!["bob".into(), "carol".into()]
        }]
    );
    // Group changes need a group: named, or the open one.
    assert!(run(&mut app, "/group add dave").is_empty());
    assert!(app.status.contains("open a group"), "{}", app.status);
    assert_eq!(
        run(&mut app, "/group add #friends dave,erin"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Add(vec!["dave".into(), "erin".into()])
        }]
    );
    run(&mut app, "/new #friends");
    assert_eq!(
        run(&mut app, "/group remove dave"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Remove(vec!["dave".into()])
        }]
    );
    assert_eq!(
        run(&mut app, "/group promote erin"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Promote("erin".into())
        }]
    );
    assert_eq!(
        run(&mut app, "/group demote erin"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Demote("erin".into())
        }]
    );
    assert!(
        run(&mut app, "/group promote a,b").is_empty(),
        "one at a time"
    );
    assert_eq!(
        run(&mut app, "/group info"),
        vec![Action::GroupInfo("#friends".into())]
    );
    assert_eq!(
        run(&mut app, "/group rename Old friends"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Rename("Old friends".into())
        }]
    );
    assert_eq!(
        run(&mut app, "/group leave"),
        vec![Action::Group {
            group: "#friends".into(),
            op: GroupOp::Leave
        }]
    );
    assert_eq!(run(&mut app, "/devices"), vec![Action::Devices]);
    assert_eq!(
        run(&mut app, "/read"),
        vec![Action::MarkRead("#friends".into())]
    );
    assert!(run(&mut app, "/bogus").is_empty());
    assert!(app.status.contains("unknown command /bogus"));
    assert_eq!(run(&mut app, "/quit"), vec![Action::Quit]);
    assert!(app.quit);
}

#[test]
fn events_ring_count_unread_and_mark_the_open_chat_read() {
    let mut app = sample_app();
    // Offline until the service or an event from the server says otherwise.
    app.online = false;
    // An own message (from another device of the account) rings nothing.
    let own = msg("x1", "alice", "from my phone", true, NOW);
    let out = app.apply_event(&ServiceEvent::Client(Event::Message(own)), NOW);
    assert!(!out.bell);
    assert_eq!(out.actions, vec![Action::Refresh]);
    assert!(
        app.online,
        "an event from the server shows the connection works"
    );
    // An incoming one in the open chat: bell and read receipts.
    let incoming = msg("x2", "bob", "new!", false, NOW);
    let out = app.apply_event(&ServiceEvent::Client(Event::Message(incoming)), NOW);
    assert!(out.bell);
    assert!(out.actions.contains(&Action::MarkRead("bob".into())));
    assert_eq!(app.unread("bob"), 0);
    // In another chat: counted unread until it is opened.
    let mut other = msg("x3", "dave", "psst", false, NOW);
    other.conversation = "dave".into();
    let out = app.apply_event(&ServiceEvent::Client(Event::Message(other)), NOW);
    assert!(out.bell);
    assert!(!out.actions.contains(&Action::MarkRead("dave".into())));
    assert_eq!(app.unread("dave"), 1);
    // The unread count survives a reload of the list.
    app.set_snapshot(Snapshot {
        conversations: vec![row("dave", "psst"), row("bob", "new!")],
        open: None,
        timer_ms: 0,
    });
    assert_eq!(app.conversations[0].unread, 1);
    assert_eq!(app.conversations[1].name, "bob");
    app.open_conversation("dave");
    assert_eq!(app.unread("dave"), 0);
    assert_eq!(app.conversations[0].unread, 0);
}

#[test]
fn timeline_becomes_views_with_ticks_quotes_and_reactions() {
    let mut sent = msg("a", "alice", "hi", true, NOW);
    sent.conversation = "bob".into();
    let mut read = msg("b", "alice", "read me", true, NOW);
    read.conversation = "bob".into();
    let mut queued = msg("c", "alice", "later", true, NOW);
    queued.state = MessageState::Queued;
    let mut reply = msg("d", "bob", "sure", false, NOW);
    reply.reply_to = Some("b".into());
    let items = vec![
        TimelineItem::Message(sent),
        TimelineItem::Message(read),
        TimelineItem::Message(queued),
        TimelineItem::Message(reply),
    ];
    let mut receipts = HashMap::new();
    receipts.insert(
        "a".to_string(),
        vec![Receipt {
            member: "bob".into(),
            status: ReceiptStatus::Delivered,
            at_ms: NOW,
        }],
    );
    receipts.insert(
        "b".to_string(),
        vec![Receipt {
            member: "bob".into(),
            status: ReceiptStatus::Read,
            at_ms: NOW,
        }],
    );
    let mut reactions = HashMap::new();
    reactions.insert(
        "d".to_string(),
        vec![
            Reaction {
                from: "alice".into(),
                emoji: "❤".into(),
                at_ms: NOW,
            },
            Reaction {
                from: "carol".into(),
                emoji: "❤".into(),
                at_ms: NOW,
            },
        ],
    );
    let views = message_views(&items, &reactions, &receipts);
    let ticks: Vec<Option<Ticks>> = views.iter().map(|v| v.ticks).collect();
    assert_eq!(
        ticks,
        vec![
            Some(Ticks::Delivered),
            Some(Ticks::Read),
            Some(Ticks::Queued),
            None
        ]
    );
    assert_eq!(
        views[3].quote,
        Some(("alice".to_string(), "read me".to_string()))
    );
    assert_eq!(
        views[3].reactions,
        vec![(
            "❤".to_string(),
            vec!["alice".to_string(), "carol".to_string()]
        )]
    );
}

#[test]
fn small_terminal_renders_without_panicking() {
    let mut app = sample_app();
    for (w, h) in [(20, 6), (1, 1), (40, 10)] {
        render(&app, w, h);
        app.overlay = Some(Overlay::Help);
        render(&app, w, h);
        app.overlay = None;
    }
}

#[test]
fn edit_delete_view_once_timer_requests_and_blocking() {
    let mut app = sample_app();
    // E on an own text: the compose line takes its text; Enter saves the edit.
    app.focus = Focus::Messages;
    app.selected_message = Some(1); // m2, alice's "are you there?"
    app.handle_key(key(KeyCode::Char('E')), NOW);
    assert_eq!(app.focus, Focus::Compose);
    assert_eq!(app.compose, "are you there?");
    assert_eq!(app.editing.as_deref(), Some("m2"));
    assert!(screen_has(&render(&app, 100, 30), "Edit your message"));
    app.handle_key(key(KeyCode::Backspace), NOW);
    let actions = type_text(&mut app, "!", NOW);
    assert!(actions.is_empty(), "no typing signal while editing");
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), NOW),
        vec![Action::Command(Command::Edit {
            id: "m2".into(),
            text: "are you there!".into()
        })]
    );
    assert_eq!(app.editing, None);
    // Esc cancels an edit and empties the line.
    app.focus = Focus::Messages;
    app.selected_message = Some(0);
    app.handle_key(key(KeyCode::Char('E')), NOW);
    app.handle_key(key(KeyCode::Esc), NOW);
    assert_eq!((app.editing.as_deref(), app.compose.as_str()), (None, ""));
    // Someone else's message is not editable.
    app.focus = Focus::Messages;
    app.selected_message = Some(2);
    app.handle_key(key(KeyCode::Char('E')), NOW);
    assert_eq!(app.editing, None);
    assert!(app.status.contains("only your own"), "{}", app.status);

    // d asks first; y deletes (bob's message: on this device only).
    assert!(app.handle_key(key(KeyCode::Char('d')), NOW).is_empty());
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { question, .. })
        if question.contains("on this device"))
    );
    assert!(screen_has(&render(&app, 100, 30), "y = yes, n = no"));
    assert_eq!(
        app.handle_key(key(KeyCode::Char('y')), NOW),
        vec![Action::Command(Command::Delete { id: "m3".into() })]
    );
    assert_eq!(app.overlay, None);
    app.focus = Focus::Messages;
    app.selected_message = Some(0);
    app.handle_key(key(KeyCode::Delete), NOW);
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { question, .. })
        if question.contains("for everyone"))
    );
    assert!(app.handle_key(key(KeyCode::Char('n')), NOW).is_empty());
    assert_eq!(app.overlay, None);

    // /edit TEXT edits the selected own message; /delete asks.
    app.selected_message = Some(0);
    assert_eq!(
        run(&mut app, "/edit hello bob"),
        vec![Action::Command(Command::Edit {
            id: "m1".into(),
            text: "hello bob".into()
        })]
    );
    app.selected_message = Some(0);
    assert!(run(&mut app, "/delete").is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Confirm { .. })));
    app.handle_key(key(KeyCode::Esc), NOW);

    // Timer: set, shown in the title once the snapshot says so, refused when invalid.
    assert_eq!(
        run(&mut app, "/timer 1h"),
        vec![Action::Command(Command::Timer {
            conversation: "bob".into(),
            timer_ms: 3_600_000
        })]
    );
    assert!(run(&mut app, "/timer 3x").is_empty());
    assert!(app.status.contains("not a timer"), "{}", app.status);
    let mut expiring = view("m9", "bob", "gone soon", false);
    expiring.expires_at_ms = Some(NOW + 3_600_000);
    let mut once = view(
        "m10",
        "bob",
        "(view-once message: select it and press v to open it once)",
        false,
    );
    once.view_once = true;
    app.set_snapshot(Snapshot {
        conversations: vec![row("bob", "see you")],
        open: Some(("bob".into(), vec![expiring, once])),
        timer_ms: 3_600_000,
    });
    let screen = render(&app, 100, 30);
    assert!(screen_has(&screen, "bob ⏱ 1h"), "{}", screen.join("\n"));
    assert!(screen_has(&screen, "press v to open it once"));
    assert!(run(&mut app, "/timer").is_empty());
    assert!(
        app.status.contains("disappearing messages: 1h"),
        "{}",
        app.status
    );

    // v opens a received view-once message; closing the window discards its file.
    app.focus = Focus::Messages;
    app.selected_message = Some(1);
    assert_eq!(
        app.handle_key(key(KeyCode::Char('v')), NOW),
        vec![Action::OpenViewOnce("m10".into())]
    );
    app.overlay = Some(Overlay::ViewOnce {
        from: "bob".into(),
        text: "a secret".into(),
        path: Some("/p/media/.view-once/photo.jpg".into()),
    });
    let screen = render(&app, 100, 30);
    assert!(screen_has(&screen, "a secret"));
    assert!(screen_has(&screen, "/p/media/.view-once/photo.jpg"));
    assert_eq!(
        app.handle_key(key(KeyCode::Esc), NOW),
        vec![Action::DiscardViewOnce(
            "/p/media/.view-once/photo.jpg".into()
        )]
    );
    assert_eq!(app.overlay, None);
    // A normal message is not opened with v.
    app.selected_message = Some(0);
    assert!(app.handle_key(key(KeyCode::Char('v')), NOW).is_empty());
    assert_eq!(
        run(&mut app, "/viewonce ~/secret.jpg"),
        vec![Action::SendFile {
            to: "bob".into(),
            path: "~/secret.jpg".into(),
            view_once: true,
        }]
    );

    // Requests: the compose line says how to answer; /accept and /block name the open chat.
    let mut request = row("mallory", "buy now");
    request.request = true;
    app.set_snapshot(Snapshot {
        conversations: vec![request, row("bob", "see you")],
        open: None,
        timer_ms: 0,
    });
    app.open_conversation("mallory");
    assert!(screen_has(
        &render(&app, 110, 30),
        "Message request from mallory"
    ));
    assert_eq!(
        run(&mut app, "/accept"),
        vec![Action::Command(Command::Accept {
            handle: "mallory".into()
        })]
    );
    assert_eq!(
        run(&mut app, "/block"),
        vec![Action::Command(Command::Block {
            handle: "mallory".into()
        })]
    );
    assert_eq!(
        run(&mut app, "/unblock mallory"),
        vec![Action::Command(Command::Unblock {
            handle: "mallory".into()
        })]
    );
    assert_eq!(run(&mut app, "/blocked"), vec![Action::Blocked]);
    assert_eq!(
        run(&mut app, "/receipts off"),
        vec![Action::Command(Command::ReadReceipts(false))]
    );
    assert_eq!(
        run(&mut app, "/presence nobody"),
        vec![Action::Command(Command::Presence(
            hushwire_e2e::PresenceShare::Nobody
        ))]
    );
    assert!(run(&mut app, "/presence sometimes").is_empty());
    assert!(app.status.contains("usage: /presence"));
}

#[test]
fn safety_numbers_and_a_changed_account_key() {
    let mut app = sample_app();
    // The open chat's contact by default, or a named one; `mark` after the digits match.
    assert_eq!(
        run(&mut app, "/verify"),
        vec![Action::Verify {
            handle: "bob".into(),
            mark: false
        }]
    );
    assert_eq!(
        run(&mut app, "/verify mark"),
        vec![Action::Verify {
            handle: "bob".into(),
            mark: true
        }]
    );
    assert_eq!(
        run(&mut app, "/verify carol mark"),
        vec![Action::Verify {
            handle: "carol".into(),
            mark: true
        }]
    );
    assert_eq!(run(&mut app, "/trust"), vec![Action::Trust("bob".into())]);
    assert_eq!(
        run(&mut app, "/trust carol"),
        vec![Action::Trust("carol".into())]
    );

    // A contact's key changed: the bell rings and the status line says what to do.
    let out = app.apply_event(
        &ServiceEvent::Client(Event::IdentityChanged {
            handle: "bob".into(),
        }),
        NOW,
    );
    assert!(out.bell);
    assert!(
        app.status.contains("bob's account key changed"),
        "{}",
        app.status
    );
    assert!(app.status.contains("/verify bob") && app.status.contains("/trust bob"));

    // In a group there is no one contact: the usage is shown.
    app.open_conversation("#friends");
    assert!(run(&mut app, "/trust").is_empty());
    assert!(app.status.contains("usage: /trust"), "{}", app.status);
    assert!(run(&mut app, "/verify").is_empty());
    assert!(app.status.contains("usage: /verify"), "{}", app.status);

    // The overlay: twelve groups in three rows, and whether it is verified.
    let number = hushwire_e2e::SafetyNumber {
        digits: (0..12)
            .map(|i| format!("{i:05}"))
            .collect::<Vec<_>>()
            .join(" "),
        qr_payload: vec![],
        verified: false,
    };
    let lines = safety_lines("bob", &number);
    assert_eq!(lines[0], "  00000 00001 00002 00003");
    assert_eq!(lines[2], "  00008 00009 00010 00011");
    assert!(lines[4].starts_with("not verified") && lines[4].contains("/verify bob mark"));
    app.overlay = Some(Overlay::Info {
        title: "Safety number with bob".into(),
        lines,
    });
    let screen = render(&app, 100, 30);
    assert!(screen_has(&screen, "Safety number with bob"));
    assert!(screen_has(&screen, "00004 00005 00006 00007"));
    let verified = safety_lines(
        "bob",
        &hushwire_e2e::SafetyNumber {
            verified: true,
            ..number
        },
    );
    assert!(verified[4].starts_with("verified"));
}
