//! A full disk on the server: sending is refused clearly and stays queued on the
//! sender, what was stored before is still delivered, and once space returns the
//! queued message goes out and new ones work.
//!
//! The server's data directory is a small tmpfs mounted by the test (it runs as root, as
//! CI does); a mount failure fails the test rather than skipping it.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, assert_ok, hushwire, register};
use serde_json::Value;

/// A tmpfs mounted at a directory, unmounted (lazily, so that a still-open file does
/// not keep it) on drop, also when the test panics.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount (the test needs root): {e}"));
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed (this test needs root or CAP_SYS_ADMIN): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system is full; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Smaller writes take what a whole chunk did not fit into.
    loop {
        match f.write(&chunk[..512]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `send`, returning the output and the message id (the last line of stdout).
fn send(profile: &Path, to: &str, body: &str) -> (Output, String) {
    let o = hushwire(profile, &["send", to, body]);
    let id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    (o, id)
}

/// The message texts `receive --json` returns, in order.
fn receive_texts(profile: &Path) -> Vec<(String, String)> {
    let o = hushwire(profile, &["receive", "--json"]);
    assert_ok(&o);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .filter(|v| v["type"] == "message")
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The sender's own view of message `id` in the conversation with `peer`.
fn own_message(profile: &Path, peer: &str, id: &str) -> Value {
    let o = hushwire(profile, &["history", peer, "--json"]);
    assert_ok(&o);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("message {id} not in the history:\n{}", text(&o)))
}

#[test]
fn disk_full_is_refused_clearly_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&root.path().join("data"), "8m");
    let data = mnt.dir.join("server");
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));

    let mut server = Server::start_with(&data, &[]);
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);

    // Stored before the disk fills up.
    let mut expected = Vec::new();
    for body in ["before 1", "before 2"] {
        let (o, id) = send(&alice, "bob", body);
        assert_ok(&o);
        expected.push((id, body.to_string()));
    }

    // Fill the file system (the filler is deleted below to give the space back).
    let filler = mnt.dir.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "nothing could be written to the tmpfs");

    // Sending is refused with a clear, retryable error; the message stays queued.
    let (o, queued_id) = send(&alice, "bob", "during full");
    eprintln!("send while full: {}", text(&o));
    assert_ne!(o.status.code(), Some(0), "a send on a full disk succeeded");
    let stderr = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(
        stderr.contains("storage") && stderr.contains("full"),
        "the user is not told that the server's storage is full:\n{}",
        text(&o)
    );
    assert!(
        stderr.contains("queued"),
        "the user is not told the message stays queued:\n{}",
        text(&o)
    );
    let mine = own_message(&alice, "bob", &queued_id);
    assert_eq!(
        mine["status"], "queued",
        "a full disk did not leave the message queued: {mine}"
    );

    // The server is still up, and what it stored before is still delivered.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited on a full disk"
    );
    let got = receive_texts(&bob);
    assert_eq!(got, expected, "bob's messages while the disk is full");

    // Space returns: the queued message goes out with the next sync, new ones work.
    std::fs::remove_file(&filler).unwrap();
    let o = hushwire(&alice, &["sync"]);
    eprintln!("sync after space returned: {}", text(&o));
    assert_ok(&o);
    let mine = own_message(&alice, "bob", &queued_id);
    assert_eq!(mine["status"], "sent", "{mine}");
    let (o, id) = send(&alice, "bob", "after");
    assert_ok(&o);

    let got = receive_texts(&bob);
    assert_eq!(
        got,
        vec![
            (queued_id.clone(), "during full".to_string()),
            (id, "after".to_string())
        ],
        "bob gets the queued message and the new one, once each"
    );
    assert!(receive_texts(&bob).is_empty(), "delivered twice");
    drop(server);
}
