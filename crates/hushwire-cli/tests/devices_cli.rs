//! Several devices per account through the built binary: `device link` (prints
//! `link-code:`), `link CODE` on a new profile, `device list --json`, `device rename`,
//! `device remove`, and what each device then receives.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

mod common;
use common::{Server, assert_ok, command, hushwire, register};

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn texts(out: &[u8]) -> Vec<String> {
    json_lines(out)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn link_list_rename_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let alice = tmp.path().join("alice");
    let laptop = tmp.path().join("alice-laptop");
    let bob = tmp.path().join("bob");
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    assert_ok(&hushwire(&alice, &["send", "bob", "before linking"]));
    assert_ok(&hushwire(&bob, &["receive", "--timeout", "0"]));
    assert_ok(&hushwire(&bob, &["accept", "alice"]));

    // `device link` prints the code first and waits; `link CODE` joins.
    let mut linker = command(&alice, &["device", "link", "--timeout", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(linker.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let code = first
        .strip_prefix("link-code: ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    assert!(code.starts_with("hwlink1:"));
    let joined = hushwire(&laptop, &["link", &code, "--name", "laptop"]);
    assert_ok(&joined);
    assert!(String::from_utf8_lossy(&joined.stdout).contains("alice/2"));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(linker.wait().unwrap().code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("linked: device 2")),
        "{rest:?}"
    );

    // The same code again: refused, exit 1, nothing registered.
    let again = hushwire(
        &tmp.path().join("other"),
        &["link", &code, "--timeout", "5"],
    );
    assert_eq!(again.status.code(), Some(1), "{again:?}");

    // History from before linking is on the laptop.
    let h = hushwire(&laptop, &["history", "bob", "--json"]);
    assert_ok(&h);
    assert!(String::from_utf8_lossy(&h.stdout).contains("before linking"));

    // device list --json, from either device.
    let list = hushwire(&laptop, &["device", "list", "--json"]);
    assert_ok(&list);
    let devices = json_lines(&list.stdout);
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices[0]["id"], 1);
    assert_eq!(devices[0]["current"], false);
    assert_eq!(devices[1]["id"], 2);
    assert_eq!(devices[1]["name"], "laptop");
    assert_eq!(devices[1]["current"], true);
    assert!(devices[1]["linked_at"].as_u64().unwrap() > 0);

    assert_ok(&hushwire(&alice, &["device", "rename", "1", "phone"]));
    let list = hushwire(&laptop, &["device", "list", "--json"]);
    assert_eq!(json_lines(&list.stdout)[0]["name"], "phone");

    // Both devices receive bob's message; the laptop's own message shows on the phone.
    assert_ok(&hushwire(&bob, &["send", "alice", "to both"]));
    for p in [&alice, &laptop] {
        let r = hushwire(p, &["receive", "--json", "--timeout", "0"]);
        assert_ok(&r);
        assert!(
            texts(&r.stdout).contains(&"to both".into()),
            "{}: {}\n{}",
            p.display(),
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    assert_ok(&hushwire(&laptop, &["send", "bob", "from the laptop"]));
    let r = hushwire(&alice, &["receive", "--json", "--timeout", "0"]);
    assert_ok(&r);
    let got = json_lines(&r.stdout);
    assert!(
        got.iter()
            .any(|v| v["text"] == "from the laptop" && v["from"] == "alice"),
        "{got:?}"
    );

    // The laptop is removed: bob's next message is not for it, and it cannot connect.
    let removed = hushwire(&alice, &["device", "remove", "2"]);
    assert_ok(&removed);
    assert_ok(&hushwire(&bob, &["receive", "--timeout", "0"]));
    assert_ok(&hushwire(&bob, &["send", "alice", "after removal"]));
    let r = hushwire(&alice, &["receive", "--json", "--timeout", "0"]);
    assert!(texts(&r.stdout).contains(&"after removal".into()));
    let r = hushwire(&laptop, &["receive", "--json", "--timeout", "0"]);
    assert_ne!(r.status.code(), Some(0), "a removed device is refused");
    assert!(!texts(&r.stdout).contains(&"after removal".into()));
    let list = hushwire(&alice, &["device", "list", "--json"]);
    assert_eq!(json_lines(&list.stdout).len(), 1);
}

/// `verify`: the same 60-digit safety number on both sides; `--mark` records it.
#[test]
fn verify_shows_the_same_safety_number_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    let a = hushwire(&alice, &["verify", "bob", "--json"]);
    assert_ok(&a);
    let b = hushwire(&bob, &["verify", "alice", "--mark", "--json"]);
    assert_ok(&b);
    let (a, b) = (&json_lines(&a.stdout)[0], &json_lines(&b.stdout)[0]);
    assert_eq!(a["safety_number"], b["safety_number"]);
    assert_eq!(a["qr_payload"], b["qr_payload"]);
    let digits: Vec<&str> = a["safety_number"].as_str().unwrap().split(' ').collect();
    assert_eq!(digits.len(), 12);
    assert!(digits.iter().all(|g| g.len() == 5));
    assert_eq!(a["verified"], false);
    assert_eq!(b["verified"], true);
    let again = hushwire(&bob, &["verify", "alice", "--json"]);
    assert_eq!(json_lines(&again.stdout)[0]["verified"], true);
    let bad = hushwire(&bob, &["verify", "nobody_here"]);
    assert_ne!(bad.status.code(), Some(0));
}
