//! Encryption at rest of the client's profile, through the built `hushwire` binary: after
//! a real conversation (a server, two profiles, messages both ways and one left pending),
//! no file of either profile — `profile.sqlite`, its `-wal`/`-shm`, the key file,
//! anything else — nor the clients' temporary directory holds any canary, as raw bytes,
//! UTF-16 or hex. The same scan finds every canary in the decrypted `history` output (the
//! plaintext control). A wrong `HUSHWIRE_PASSPHRASE` exits 1 with one clear line and
//! changes no byte; the right one still works.

// Test helpers: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{PASSPHRASE, Server, assert_ok, command};

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The encodings a canary is searched in.
fn encodings(canary: &str) -> Vec<(&'static str, Vec<u8>)> {
    let utf16le: Vec<u8> = canary.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf16be: Vec<u8> = canary.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let hex_lower: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw", canary.as_bytes().to_vec()),
        ("utf-16le", utf16le),
        ("utf-16be", utf16be),
        ("hex", hex_lower.clone().into_bytes()),
        ("HEX", hex_lower.to_uppercase().into_bytes()),
    ]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// `(file, canary, encoding, offset)` of every hit under `dirs`.
fn scan(dirs: &[&Path], canaries: &[String]) -> (Vec<String>, usize, u64) {
    let mut hits = Vec::new();
    let (mut n, mut total) = (0, 0u64);
    for dir in dirs {
        for path in files(dir) {
            // A file may vanish between listing and reading (a journal).
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            n += 1;
            total += bytes.len() as u64;
            for c in canaries {
                for (enc, needle) in encodings(c) {
                    if let Some(at) = find(&bytes, &needle) {
                        hits.push(format!("{} at {at}: {c} ({enc})", path.display()));
                    }
                }
            }
        }
    }
    (hits, n, total)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

struct Env {
    tmp: PathBuf,
}

impl Env {
    /// A client command with its temporary directory in the test's tree.
    fn run(&self, profile: &Path, args: &[&str]) -> Output {
        command(profile, args)
            .env("TMPDIR", &self.tmp)
            .env("SQLITE_TMPDIR", &self.tmp)
            .output()
            .unwrap()
    }

    fn ok(&self, profile: &Path, args: &[&str]) -> String {
        let o = self.run(profile, args);
        assert_ok(&o);
        String::from_utf8(o.stdout).unwrap()
    }
}

#[test]
fn no_canary_in_any_client_file_after_a_conversation() {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        tmp: root.path().join("tmp"),
    };
    std::fs::create_dir_all(&env.tmp).unwrap();
    let server = Server::start(&root.path().join("server"));
    let alice = root.path().join("alice");
    let bob = root.path().join("bob");
    for (p, h) in [(&alice, "alice"), (&bob, "bob")] {
        env.ok(
            p,
            &["register", h, "--server", &server.url, "--pin", &server.pin],
        );
    }
    let canaries: Vec<String> = (0..4)
        .map(|i| format!("canary{i}-{}", random_hex(12)))
        .collect();

    env.ok(&alice, &["send", "bob", &canaries[0]]);
    let got = env.ok(&bob, &["receive"]);
    assert!(got.contains(&canaries[0]), "{got}");
    env.ok(&bob, &["send", "alice", &format!("re: {}", canaries[1])]);
    let got = env.ok(&alice, &["receive"]);
    assert!(got.contains(&canaries[1]), "{got}");
    env.ok(&alice, &["send", "bob", &canaries[2]]);
    env.ok(&bob, &["sync"]);
    // Left pending on the server: only in alice's history (and bob's queue).
    env.ok(&alice, &["send", "bob", &canaries[3]]);

    // The plaintext control: the decrypted history has every canary, and the scanner
    // finds it there in the very same way.
    let history = env.ok(&alice, &["history", "bob"]);
    let control = root.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(control.join("history.txt"), &history).unwrap();
    let utf16: Vec<u8> = history.encode_utf16().flat_map(u16::to_le_bytes).collect();
    std::fs::write(control.join("history.utf16"), utf16).unwrap();
    let (hits, _, _) = scan(&[&control], &canaries);
    for c in &canaries {
        for enc in ["raw", "utf-16le"] {
            assert!(
                hits.iter()
                    .any(|h| h.contains(c) && h.ends_with(&format!("({enc})"))),
                "the control misses {c} ({enc}): {hits:?}"
            );
        }
    }

    // Every client file: none.
    let (hits, n, total) = scan(&[&alice, &bob, &env.tmp], &canaries);
    assert!(hits.is_empty(), "PLAINTEXT AT REST:\n{}", hits.join("\n"));
    eprintln!("scanned {n} client files, {total} bytes: 0 hits");
    let names: Vec<String> = files(&alice)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"profile.sqlite".to_string()), "{names:?}");
    assert!(names.contains(&"profile.key".to_string()), "{names:?}");
    for p in [&alice, &bob] {
        let db = std::fs::read(p.join("profile.sqlite")).unwrap();
        assert!(!db.starts_with(b"SQLite format 3\0"), "plaintext header");
        // No handle or table name either: the whole file is ciphertext.
        assert!(find(&db, b"CREATE TABLE").is_none());
        let key = std::fs::read_to_string(p.join("profile.key")).unwrap();
        assert!(key.contains("\"kek\": \"passphrase\""), "{key}");
        assert!(!key.contains(PASSPHRASE));
    }
}

#[test]
fn a_wrong_passphrase_is_a_clear_error_and_damages_nothing() {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        tmp: root.path().join("tmp"),
    };
    std::fs::create_dir_all(&env.tmp).unwrap();
    let server = Server::start(&root.path().join("server"));
    let alice = root.path().join("alice");
    let bob = root.path().join("bob");
    for (p, h) in [(&alice, "alice"), (&bob, "bob")] {
        env.ok(
            p,
            &["register", h, "--server", &server.url, "--pin", &server.pin],
        );
    }
    env.ok(&alice, &["send", "bob", "before the wrong passphrase"]);
    let before = snapshot(&alice);

    for args in [&["history", "bob"][..], &["send", "bob", "x"], &["receive"]] {
        let o = command(&alice, args)
            .env("HUSHWIRE_PASSPHRASE", "not the passphrase")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&format!("wrong passphrase for profile {}", alice.display())),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }
    // No passphrase at all, no terminal: told what to do.
    let o = command(&alice, &["history", "bob"])
        .env_remove("HUSHWIRE_PASSPHRASE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("set HUSHWIRE_PASSPHRASE"), "{err}");
    assert_eq!(before, snapshot(&alice), "a refused unlock changed a file");

    // The right passphrase: everything is still there and works.
    let history = env.ok(&alice, &["history", "bob"]);
    assert!(history.contains("before the wrong passphrase"), "{history}");
    env.ok(&alice, &["send", "bob", "after"]);
    let got = env.ok(&bob, &["receive"]);
    assert!(
        got.contains("before the wrong passphrase") && got.contains("after"),
        "{got}"
    );

    // `passphrase change`: a wrong current one is refused; then the new one works and
    // the old one no longer does. The database is not rewritten.
    let o = command(&alice, &["passphrase", "change"])
        .env("HUSHWIRE_PASSPHRASE", "not the passphrase")
        .env("HUSHWIRE_NEW_PASSPHRASE", "new passphrase")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let db_before = std::fs::read(alice.join("profile.sqlite")).unwrap();
    let o = command(&alice, &["passphrase", "change"])
        .env("HUSHWIRE_NEW_PASSPHRASE", "new passphrase")
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        db_before,
        std::fs::read(alice.join("profile.sqlite")).unwrap()
    );
    let o = command(&alice, &["history", "bob"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "the old passphrase still works");
    let o = command(&alice, &["history", "bob"])
        .env("HUSHWIRE_PASSPHRASE", "new passphrase")
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("after"));
}
