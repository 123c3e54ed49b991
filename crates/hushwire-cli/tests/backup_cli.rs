//! End-to-end encrypted backups through the built binary: `backup create` (prints
//! `recovery-key:`), `backup restore` on a new profile when every old device is gone and
//! when one is alive, a wrong key and a damaged file (nothing written), and `backup
//! schedule` run by the daemon.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Server, assert_ok, command, hushwire, register};

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Texts of `receive --json` (messages only).
fn received(profile: &Path) -> Vec<String> {
    let r = hushwire(profile, &["receive", "--json", "--timeout", "0"]);
    assert_ok(&r);
    json_lines(&r.stdout)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Texts of a conversation's history.
fn history(profile: &Path, conversation: &str) -> Vec<String> {
    let h = hushwire(profile, &["history", conversation, "--json"]);
    assert_ok(&h);
    json_lines(&h.stdout)
        .into_iter()
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

/// `backup create --to FILE`: the key it printed.
fn create_backup(profile: &Path, file: &Path) -> String {
    let o = hushwire(
        profile,
        &["backup", "create", "--to", file.to_str().unwrap()],
    );
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("recovery-key: "))
        .unwrap_or_else(|| panic!("no recovery key in {out:?}"))
        .to_string();
    assert_eq!(key.len(), 64, "{key:?}");
    assert!(out.contains("backup: "), "{out}");
    key
}

fn restore(profile: &Path, file: &Path, key: &str, wait: &str) -> Output {
    command(
        profile,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--name",
            "restored",
            "--wait",
            wait,
            "--json",
        ],
    )
    .env("HUSHWIRE_RECOVERY_KEY", key)
    .output()
    .unwrap()
}

/// Registers alice, bob and carol under `root`; alice talks with bob (1:1) and with bob
/// and carol (`#Trip`). Returns their profiles.
fn conversations(root: &Path, server: &Server) -> (PathBuf, PathBuf, PathBuf) {
    let dirs = ["alice", "bob", "carol"].map(|h| {
        let dir = root.join(h);
        register(&dir, h, server);
        dir
    });
    let [alice, bob, carol] = dirs.each_ref().map(PathBuf::as_path);
    assert_ok(&hushwire(alice, &["send", "bob", "hello bob"]));
    assert_ok(&hushwire(bob, &["receive", "--timeout", "0"]));
    assert_ok(&hushwire(bob, &["accept", "alice"]));
    assert_ok(&hushwire(bob, &["send", "alice", "hello alice"]));
    assert_eq!(received(alice), vec!["hello alice".to_string()]);
    let o = hushwire(
        alice,
        &["group", "create", "Trip", "--members", "bob,carol"],
    );
    assert_ok(&o);
    assert_ok(&hushwire(alice, &["send", "#Trip", "packing list"]));
    assert!(received(bob).contains(&"packing list".to_string()));
    assert!(received(carol).contains(&"packing list".to_string()));
    assert_ok(&hushwire(carol, &["send", "#Trip", "bring a map"]));
    assert!(received(alice).contains(&"bring a map".to_string()));
    assert_ok(&hushwire(bob, &["receive", "--timeout", "0"]));
    let [alice, bob, carol] = dirs;
    (alice, bob, carol)
}

#[test]
fn restore_when_every_old_device_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob, carol) = conversations(tmp.path(), &server);

    let file = tmp.path().join("alice.hwbackup");
    let key = create_backup(&alice, &file);
    // The file is ciphertext: no message text, no handle of a contact.
    let bytes = std::fs::read(&file).unwrap();
    for needle in ["hello bob", "packing list", "carol"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in the backup file"
        );
    }

    // Every device of alice's is lost.
    std::fs::remove_dir_all(&alice).unwrap();
    let new = tmp.path().join("alice-new");
    let o = restore(&new, &file, &key, "1");
    assert_ok(&o);
    let summary = &json_lines(&o.stdout)[0];
    assert_eq!(summary["handle"], "alice", "{summary}");
    assert_eq!(summary["device_id"], 2, "{summary}");
    assert_eq!(summary["joined_by_devices"], 0, "{summary}");
    assert_eq!(summary["rejoined"], 1, "{summary}");
    assert_eq!(summary["restarted"], 1, "{summary}");
    assert_eq!(summary["failed"], Value::Array(vec![]), "{summary}");

    // History is back.
    let h = history(&new, "bob");
    assert!(
        h.contains(&"hello bob".to_string()) && h.contains(&"hello alice".to_string()),
        "{h:?}"
    );
    let h = history(&new, "#Trip");
    assert!(h.contains(&"bring a map".to_string()), "{h:?}");

    // And the conversations work both ways, once bob's app has synced (it takes the
    // new device's welcome to the restarted 1:1).
    assert_ok(&hushwire(&bob, &["receive", "--timeout", "0"]));
    assert_ok(&hushwire(&bob, &["send", "alice", "welcome back"]));
    assert!(received(&new).contains(&"welcome back".to_string()));
    assert_ok(&hushwire(&new, &["send", "bob", "thanks"]));
    assert!(received(&bob).contains(&"thanks".to_string()));
    assert_ok(&hushwire(&carol, &["send", "#Trip", "the map is packed"]));
    assert!(received(&new).contains(&"the map is packed".to_string()));
    assert_ok(&hushwire(&new, &["send", "#Trip", "see you there"]));
    assert!(received(&bob).contains(&"see you there".to_string()));
    assert!(received(&carol).contains(&"see you there".to_string()));
}

#[test]
fn restore_through_a_device_that_is_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob, carol) = conversations(tmp.path(), &server);
    let file = tmp.path().join("alice.hwbackup");
    let key = create_backup(&alice, &file);

    // The restore waits for alice's phone, which adds the new device when it next syncs.
    let new = tmp.path().join("alice-new");
    let restoring = command(
        &new,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--wait",
            "120",
            "--json",
        ],
    )
    .env("HUSHWIRE_RECOVERY_KEY", &key)
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = hushwire(&alice, &["device", "list", "--json"]);
        assert_ok(&list);
        if json_lines(&list.stdout).len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored device never registered"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_ok(&hushwire(&alice, &["sync"]));
    let o = restoring.wait_with_output().unwrap();
    assert_ok(&o);
    let summary = &json_lines(&o.stdout)[0];
    assert_eq!(summary["joined_by_devices"], 2, "{summary}");
    assert_eq!(summary["rejoined"], 0, "{summary}");
    assert_eq!(summary["restarted"], 0, "{summary}");

    // Both of alice's devices get bob's next message and carol's group message.
    assert_ok(&hushwire(&bob, &["send", "alice", "to both devices"]));
    assert_ok(&hushwire(&carol, &["send", "#Trip", "to the group"]));
    for p in [&alice, &new] {
        let got = received(p);
        assert!(
            got.contains(&"to both devices".to_string())
                && got.contains(&"to the group".to_string()),
            "{}: {got:?}",
            p.display()
        );
    }
    assert!(history(&new, "bob").contains(&"hello bob".to_string()));
}

#[test]
fn a_wrong_key_or_a_damaged_file_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    assert_ok(&hushwire(&alice, &["send", "bob", "kept safe"]));
    let file = tmp.path().join("alice.hwbackup");
    let key = create_backup(&alice, &file);
    let new = tmp.path().join("alice-new");

    // A wrong key: refused before anything is read.
    let wrong = "0".repeat(64);
    let o = restore(&new, &file, &wrong, "0");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("recovery key"), "{err}");

    // A malformed key.
    let o = restore(&new, &file, "not a key", "0");
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // One flipped byte in the middle, and a file cut short.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let damaged = tmp.path().join("damaged.hwbackup");
    std::fs::write(&damaged, &flipped).unwrap();
    let o = restore(&new, &damaged, &key, "0");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let cut = tmp.path().join("cut.hwbackup");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let o = restore(&new, &cut, &key, "0");
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // Nothing was written: the profile is still empty and takes the real backup.
    let h = hushwire(&new, &["history", "bob"]);
    assert_ne!(h.status.code(), Some(0), "{h:?}");
    let o = restore(&new, &file, &key, "0");
    assert_ok(&o);
    assert!(history(&new, "bob").contains(&"kept safe".to_string()));

    // A restore into a profile in use is refused.
    let o = restore(&bob, &file, &key, "0");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

#[test]
fn the_daemon_runs_scheduled_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    assert_ok(&hushwire(&alice, &["send", "bob", "scheduled"]));
    let dir = tmp.path().join("backups");
    let o = hushwire(
        &alice,
        &[
            "backup",
            "schedule",
            dir.to_str().unwrap(),
            "--every",
            "1d",
            "--keep",
            "2",
        ],
    );
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("recovery-key: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let shown = hushwire(&alice, &["backup", "schedule"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("every 1d, keep 2"));

    // `backup create` now uses the schedule's key and prints none.
    let manual = tmp.path().join("manual.hwbackup");
    let o = hushwire(
        &alice,
        &["backup", "create", "--to", manual.to_str().unwrap()],
    );
    assert_ok(&o);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("recovery-key"));

    // The daemon writes the first scheduled backup at once.
    let mut daemon = command(&alice, &["daemon"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let found = std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut d| d.find_map(Result::ok))
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hwbackup"));
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "no scheduled backup was written");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the rename finish, then stop the daemon.
    std::thread::sleep(Duration::from_millis(500));
    drop(daemon.stdin.take());
    let _ = daemon.kill();
    let _ = daemon.wait();

    // Both files restore under the schedule's key.
    for (i, f) in [file, manual].iter().enumerate() {
        let p = tmp.path().join(format!("restored-{i}"));
        let o = restore(&p, f, &key, "0");
        assert_ok(&o);
        assert!(history(&p, "bob").contains(&"scheduled".to_string()));
    }
    assert_ok(&hushwire(&alice, &["backup", "schedule", "--off"]));
}
