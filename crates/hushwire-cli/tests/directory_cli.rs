//! `hushwire audit` and `hushwire admin reset-account` against a `hushwire serve` child
//! process on 127.0.0.1 that publishes its key directory every 100 ms.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, assert_ok, hushwire, register};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// Accounts registered to give the directory something to publish (unique names).
static PUSHED: AtomicUsize = AtomicUsize::new(0);

fn fast_directory(dir: &Path) -> String {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        "[directory]\npublish_interval = \"100ms\"\n\n\
         [rate_limits]\nregistrations_per_ip_per_minute = 1000\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn audit(profile: &Path, server: &Server, extra: &[&str]) -> Output {
    let mut args = vec![
        "audit",
        "--server",
        &server.url,
        "--pin",
        &server.pin,
        "--json",
    ];
    args.extend_from_slice(extra);
    hushwire(profile, &args)
}

fn report(o: &Output) -> Value {
    assert_ok(o);
    serde_json::from_slice(o.stdout.trim_ascii()).unwrap()
}

/// Waits (bounded) until the directory's latest epoch is above `epoch`; registers a new
/// account per round when `push` (so that there is something to publish).
fn latest_above(tmp: &Path, server: &Server, epoch: u64, push: bool) -> u64 {
    let until = Instant::now() + LIMIT;
    loop {
        let latest = report(&audit(&tmp.join("auditor"), server, &["--to", "0"]))["latest"]
            .as_u64()
            .unwrap();
        if latest > epoch {
            return latest;
        }
        assert!(
            Instant::now() < until,
            "the directory stayed at epoch {latest}"
        );
        if push {
            let n = PUSHED.fetch_add(1, Ordering::SeqCst);
            register(&tmp.join(format!("u{n}")), &format!("user{n}"), server);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn audit_verifies_every_epoch_and_catches_a_rewritten_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let config = fast_directory(tmp.path());
    let server = Server::start_with(&data, &["--config", &config]);
    register(&tmp.path().join("alice"), "alice", &server);
    register(&tmp.path().join("bob"), "bob", &server);
    let latest = latest_above(tmp.path(), &server, 1, true);

    let auditor = tmp.path().join("auditor");
    let state = tmp.path().join("audit-state.json");
    let state_arg = state.to_str().unwrap();
    let all = report(&audit(&auditor, &server, &["--state", state_arg]));
    assert!(all["epochs"].as_u64().unwrap() >= latest, "{all}");
    assert_eq!(all["from"], 1);
    let audited = all["to"].as_u64().unwrap();
    // A range.
    let one = report(&audit(&auditor, &server, &["--from", "2", "--to", "2"]));
    assert_eq!(
        (
            one["from"].clone(),
            one["to"].clone(),
            one["epochs"].clone()
        ),
        (2.into(), 2.into(), 1.into())
    );
    // The same auditor again: the history still holds what it audited.
    report(&audit(&auditor, &server, &["--state", state_arg]));

    // The operator rewrites the history: the log is emptied and every account is
    // published again (the running node rebuilds on it when its next append fails).
    {
        let db = rusqlite::Connection::open(data.join("hushwire.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.execute("DELETE FROM directory_epochs", []).unwrap();
        db.execute(
            "INSERT INTO directory_changes (handle) SELECT handle FROM accounts",
            [],
        )
        .unwrap();
    }
    latest_above(tmp.path(), &server, audited, true);
    let o = audit(&auditor, &server, &["--state", state_arg]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rewritten"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An auditor that saw nothing before finds the new history consistent in itself.
    report(&audit(&auditor, &server, &[]));
    // Bad arguments are a user error.
    assert_eq!(
        audit(&auditor, &server, &["--from", "3", "--to", "2"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn reset_account_releases_the_handle_and_contacts_see_the_key_change() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data);
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    assert_ok(&hushwire(&alice, &["send", "bob", "hi bob"]));

    // bob lost every device; the operator releases the handle.
    let o = hushwire(
        &alice,
        &[
            "admin",
            "--data",
            data.to_str().unwrap(),
            "reset-account",
            "bob",
        ],
    );
    assert_ok(&o);
    let o = hushwire(
        &alice,
        &[
            "admin",
            "--data",
            data.to_str().unwrap(),
            "reset-account",
            "nobody",
        ],
    );
    assert_eq!(o.status.code(), Some(1));

    // Someone registers "bob" again, with new keys.
    let new_bob = tmp.path().join("new-bob");
    register(&new_bob, "bob", &server);
    // alice is told before anything is sent.
    let o = hushwire(&alice, &["send", "bob", "are you still bob?"]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "stderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_ok(&hushwire(&alice, &["trust", "bob"]));
    assert_ok(&hushwire(&alice, &["send", "bob", "welcome, new bob"]));
    let o = hushwire(&new_bob, &["receive", "--json"]);
    assert_ok(&o);
    let got = String::from_utf8_lossy(&o.stdout);
    assert!(got.contains("welcome, new bob"), "{got}");
    assert!(!got.contains("hi bob"), "{got}");
}
