//! `hushwire chat` in a real terminal: tmux runs the app for alice, the test types into
//! it (send-keys) and reads the screen (capture-pane); bob uses the command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Server, assert_ok, hushwire, register};

/// How long the app gets for each step (a bound on waiting, not a speed requirement).
const STEP: Duration = Duration::from_secs(60);

/// A tmux server of our own (its socket in the test's directory) with one session;
/// killed on drop, even when the test fails.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    fn start(dir: &Path, command: &str) -> Tmux {
        let t = Tmux {
            socket: dir.join("tmux.sock"),
            session: format!("hw-chat-{}-{}", std::process::id(), unique()),
        };
        let o = t.run(&[
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "120",
            "-y",
            "40",
            command,
        ]);
        assert_ok(&o);
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux (apt-get install tmux)")
    }

    fn keys(&self, literal: &str) {
        assert_ok(&self.run(&["send-keys", "-t", &self.session, "-l", literal]));
    }

    fn key(&self, name: &str) {
        assert_ok(&self.run(&["send-keys", "-t", &self.session, name]));
    }

    fn screen(&self) -> String {
        let o = self.run(&["capture-pane", "-p", "-t", &self.session]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits (bounded) until the screen shows `needle`; returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                start.elapsed() < STEP,
                "the screen never showed {needle:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-session", "-t", &self.session]);
        let _ = self.run(&["kill-server"]);
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Texts of the messages `profile` receives now.
fn received_texts(profile: &Path) -> Vec<String> {
    let o = hushwire(profile, &["receive", "--json", "--timeout", "0"]);
    assert_ok(&o);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "message")
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn chat_sends_and_shows_a_reply_in_tmux() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("server"));
    let alice = root.path().join("alice");
    let bob = root.path().join("bob");
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);

    // The app; if it exits, the pane keeps its last words for the failure message.
    let command = format!(
        "HUSHWIRE_PASSPHRASE={} {} --profile {} chat; echo \"chat exited: $?\"; sleep 600",
        shell_quote(common::PASSPHRASE),
        shell_quote(BIN),
        shell_quote(&alice.display().to_string())
    );
    let tmux = Tmux::start(root.path(), &command);
    tmux.wait_for("Chats — alice");

    // Open a conversation with bob and send a message.
    tmux.keys("/new bob");
    tmux.key("Enter");
    tmux.wait_for("Message bob");
    tmux.keys("hello from the terminal app");
    tmux.key("Enter");
    tmux.wait_for("  hello from the terminal app");

    // bob receives it.
    let start = Instant::now();
    loop {
        let texts = received_texts(&bob);
        if texts.iter().any(|t| t == "hello from the terminal app") {
            break;
        }
        assert!(start.elapsed() < STEP, "bob never got the message");
        std::thread::sleep(Duration::from_millis(300));
    }

    // bob answers; the reply shows up live on alice's screen, in the list too.
    assert_ok(&hushwire(&bob, &["send", "alice", "hi alice, got it"]));
    let screen = tmux.wait_for("  hi alice, got it");
    assert!(screen.contains("bob"), "{screen}");
    // alice's own message got its ticks (sent at least).
    assert!(screen.contains('✓'), "{screen}");
    assert!(screen.contains("● online"), "{screen}");

    // alice edits her message (the newest of her own) and sets a disappearing timer.
    tmux.keys("/edit hello, edited in the terminal app");
    tmux.key("Enter");
    tmux.wait_for("message edited");
    tmux.wait_for("(edited)");
    tmux.keys("/timer 1h");
    tmux.key("Enter");
    tmux.wait_for("bob ⏱ 1h");
    let start = Instant::now();
    let (mut edited, mut timer) = (false, false);
    while !(edited && timer) {
        let o = hushwire(&bob, &["receive", "--json", "--timeout", "0"]);
        assert_ok(&o);
        for v in String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            edited |= v["type"] == "edit" && v["text"] == "hello, edited in the terminal app";
            timer |= v["type"] == "timer";
        }
        assert!(
            start.elapsed() < STEP,
            "bob never got the edit and the timer"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The help overlay, then quit.
    tmux.key("F1");
    tmux.wait_for("Help — keys and commands");
    // (`q` closes it: an Esc right before other keys could read as Alt.)
    tmux.keys("q");
    tmux.keys("/quit");
    tmux.key("Enter");
    let screen = tmux.wait_for("chat exited: 0");
    // The terminal was restored: the shell's output is on the normal screen.
    assert!(!screen.contains("Chats — alice"), "{screen}");
}
