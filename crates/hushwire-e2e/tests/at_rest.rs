//! Encryption at rest of the profile database (SQLCipher): the library really is
//! SQLCipher, a wrong key is refused without touching the file, and a plaintext profile
//! from an older release is encrypted in place with its data kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use hushwire_e2e::{E2eError, PROFILE_DB, Profile, StoreKey};
use rusqlite::Connection;

const CANARY: &str = "at-rest-canary-4f1c9a7e2b";

fn key(b: u8) -> StoreKey {
    StoreKey::from_bytes([b; 32])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file in `dir` (database, WAL, shared memory, anything else), concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn keyed(path: &Path, key: &str) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";"))
        .unwrap();
    conn
}

#[test]
fn the_library_is_sqlcipher_and_the_file_is_encrypted() {
    let root = tempfile::tempdir().unwrap();
    let mut p = Profile::open(root.path(), &key(1)).unwrap();
    let version = p.cipher_version().unwrap();
    assert!(!version.is_empty(), "PRAGMA cipher_version is empty");
    p.create_identity("alice", 1).unwrap();
    drop(p);
    let bytes = std::fs::read(root.path().join(PROFILE_DB)).unwrap();
    assert!(!bytes.starts_with(b"SQLite format 3\0"), "header in clear");
    assert!(!contains(&all_bytes(root.path()), b"alice"));
    assert!(!contains(&all_bytes(root.path()), b"CREATE TABLE"));
    // Reopens with the same key.
    let p = Profile::open(root.path(), &key(1)).unwrap();
    drop(p);
}

#[test]
fn a_wrong_key_is_refused_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut p = Profile::open(root.path(), &key(1)).unwrap();
    p.create_identity("alice", 1).unwrap();
    drop(p);
    let snapshot = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(root.path());
    match Profile::open(root.path(), &key(2)) {
        Err(E2eError::WrongKey(path)) => assert!(path.ends_with(PROFILE_DB), "{path}"),
        other => panic!("expected WrongKey, got {other:?}"),
    }
    assert_eq!(
        before,
        snapshot(root.path()),
        "a wrong key changed the files"
    );
    // The right key still works.
    Profile::open(root.path(), &key(1)).unwrap();
}

#[test]
fn a_plaintext_profile_is_encrypted_on_first_open_with_its_data() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("profile");
    // A real profile, with a row holding the canary...
    let mut p = Profile::open(&dir, &key(1)).unwrap();
    p.create_identity("alice", 1).unwrap();
    drop(p);
    let db = dir.join(PROFILE_DB);
    let conn = keyed(&db, &"01".repeat(32));
    conn.execute(
        "INSERT INTO conversations (peer, suite, created_at_ms) VALUES (?1, 1, 0)",
        [CANARY],
    )
    .unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    // ...decrypted into the plaintext file an older release would have left (WAL mode).
    let plain = root.path().join("plain.sqlite");
    conn.execute(
        "ATTACH DATABASE ?1 AS plain KEY ''",
        [plain.to_str().unwrap()],
    )
    .unwrap();
    conn.query_row("SELECT sqlcipher_export('plain')", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(&format!("PRAGMA plain.user_version = {version};"))
        .unwrap();
    drop(conn);
    for f in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::rename(&plain, &db).unwrap();
    let old = Connection::open(&db).unwrap();
    old.pragma_update(None, "journal_mode", "WAL").unwrap();
    old.execute("INSERT INTO kv (key, value) VALUES ('in_the_wal', 7)", [])
        .unwrap();
    // Keep the WAL around, as a crashed old release would have.
    std::mem::forget(old);
    assert!(
        std::fs::read(&db)
            .unwrap()
            .starts_with(b"SQLite format 3\0")
    );
    assert!(contains(&all_bytes(&dir), CANARY.as_bytes()));

    // First open with a key: encrypted in place.
    let p = Profile::open(&dir, &key(3)).unwrap();
    assert!(!p.cipher_version().unwrap().is_empty());
    drop(p);
    assert!(
        !std::fs::read(&db)
            .unwrap()
            .starts_with(b"SQLite format 3\0")
    );
    assert!(
        !contains(&all_bytes(&dir), CANARY.as_bytes()),
        "plaintext left in the profile directory"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".migrating")),
        "{names:?}"
    );
    // The data, the WAL's included, and the schema version survived.
    let conn = keyed(&db, &"03".repeat(32));
    let peer: String = conn
        .query_row("SELECT peer FROM conversations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(peer, CANARY);
    let handle: String = conn
        .query_row("SELECT handle FROM identity", [], |r| r.get(0))
        .unwrap();
    assert_eq!(handle, "alice");
    let wal_row: i64 = conn
        .query_row("SELECT value FROM kv WHERE key = 'in_the_wal'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(wal_row, 7);
    let after: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(after, version);
    drop(conn);
    // The old key no longer opens it; the new one does, again.
    assert!(matches!(
        Profile::open(&dir, &key(1)),
        Err(E2eError::WrongKey(_))
    ));
    Profile::open(&dir, &key(3)).unwrap();
}
