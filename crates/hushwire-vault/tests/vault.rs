//! The key file: round trip, wrong passphrase, tampering, passphrase change, keyring
//! fallback. Real Argon2id (default cost) and real AEAD throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use hushwire_vault::{
    KEY_FILE, KEYRING_TIMEOUT, Passphrase, Protection, Unlock, VaultError, change_passphrase,
    key_file, protection, unlock,
};

fn read(dir: &Path) -> Vec<u8> {
    std::fs::read(key_file(dir)).unwrap()
}

#[test]
fn a_new_profile_gets_a_key_file_and_the_same_key_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let key = unlock(dir.path(), &Unlock::passphrase("correct horse")).unwrap();
    let created = t.elapsed();
    let t = Instant::now();
    let again = unlock(dir.path(), &Unlock::passphrase("correct horse")).unwrap();
    eprintln!(
        "Argon2id (default cost): create {created:?}, unlock {:?}",
        t.elapsed()
    );
    assert_eq!(key.expose(), again.expose());
    assert_eq!(
        protection(dir.path()).unwrap(),
        Some(Protection::Passphrase)
    );
    let text = String::from_utf8(read(dir.path())).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(text.contains("\"kek\": \"passphrase\""), "{text}");
    assert!(text.contains("\"m_kib\": 65536"), "{text}");
    // Neither the passphrase nor the key is in the file.
    assert!(!text.contains("correct horse"));
    assert!(!text.contains(&hex::encode(key.expose())));
    assert_eq!(format!("{key:?}"), "StoreKey(<redacted>)");
    assert_eq!(
        format!("{:?}", Unlock::passphrase("correct horse")),
        "Passphrase(Passphrase(<redacted>))"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(key_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }
    // Two profiles never share a key.
    let other = tempfile::tempdir().unwrap();
    let k2 = unlock(other.path(), &Unlock::passphrase("correct horse")).unwrap();
    assert_ne!(key.expose(), k2.expose());
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = unlock(dir.path(), &Unlock::passphrase("right")).unwrap();
    let before = read(dir.path());
    let err = unlock(dir.path(), &Unlock::passphrase("wrong")).unwrap_err();
    assert!(matches!(err, VaultError::WrongPassphrase { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("wrong passphrase for profile {}", dir.path().display())
    );
    assert_eq!(before, read(dir.path()));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "only {KEY_FILE}");
    let again = unlock(dir.path(), &Unlock::passphrase("right")).unwrap();
    assert_eq!(key.expose(), again.expose());
}

#[test]
fn a_tampered_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    unlock(dir.path(), &Unlock::passphrase("right")).unwrap();
    let good = String::from_utf8(read(dir.path())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let set = |field: &str, value: serde_json::Value| {
        let mut v = v.clone();
        v[field] = value;
        std::fs::write(key_file(dir.path()), serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let try_unlock = || unlock(dir.path(), &Unlock::passphrase("right"));

    // One bit of the sealed key flipped: the AEAD fails.
    let mut wrapped = base64_decode(v["wrapped"].as_str().unwrap());
    wrapped[3] ^= 1;
    set("wrapped", base64_encode(&wrapped).into());
    assert!(matches!(
        try_unlock(),
        Err(VaultError::WrongPassphrase { .. })
    ));
    // Another salt: another KEK.
    set("salt", base64_encode(&[0u8; 16]).into());
    assert!(matches!(
        try_unlock(),
        Err(VaultError::WrongPassphrase { .. })
    ));
    // Impossible values.
    set("salt", base64_encode(&[0u8; 15]).into());
    assert!(matches!(try_unlock(), Err(VaultError::Corrupt { .. })));
    set("nonce", "not base64!".into());
    assert!(matches!(try_unlock(), Err(VaultError::Corrupt { .. })));
    set("m_kib", (1u64 << 40).into());
    assert!(matches!(try_unlock(), Err(VaultError::Corrupt { .. })));
    set("kek", "magic".into());
    assert!(matches!(try_unlock(), Err(VaultError::Corrupt { .. })));
    set("version", 2.into());
    assert!(matches!(
        try_unlock(),
        Err(VaultError::UnsupportedVersion { version: 2, .. })
    ));
    std::fs::write(key_file(dir.path()), b"{\"version\":1,").unwrap();
    assert!(matches!(try_unlock(), Err(VaultError::Corrupt { .. })));
    // The intact file still works.
    std::fs::write(key_file(dir.path()), &good).unwrap();
    try_unlock().unwrap();
}

#[test]
fn changing_the_passphrase_rewraps_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = unlock(dir.path(), &Unlock::passphrase("old one")).unwrap();
    let before = read(dir.path());
    let err = change_passphrase(
        dir.path(),
        &Passphrase::new("not it"),
        &Passphrase::new("new one"),
    )
    .unwrap_err();
    assert!(matches!(err, VaultError::WrongPassphrase { .. }), "{err:?}");
    assert_eq!(before, read(dir.path()));
    assert!(matches!(
        change_passphrase(
            dir.path(),
            &Passphrase::new("old one"),
            &Passphrase::new("")
        ),
        Err(VaultError::EmptyPassphrase)
    ));
    change_passphrase(
        dir.path(),
        &Passphrase::new("old one"),
        &Passphrase::new("new one"),
    )
    .unwrap();
    assert!(matches!(
        unlock(dir.path(), &Unlock::passphrase("old one")),
        Err(VaultError::WrongPassphrase { .. })
    ));
    let again = unlock(dir.path(), &Unlock::passphrase("new one")).unwrap();
    assert_eq!(key.expose(), again.expose());
}

#[test]
fn an_encrypted_database_without_its_key_file_is_not_given_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("profile.sqlite"), [0x5au8; 4096]).unwrap();
    assert!(matches!(
        unlock(dir.path(), &Unlock::passphrase("x")),
        Err(VaultError::KeyFileMissing { .. })
    ));
    assert!(!key_file(dir.path()).exists());
    // A plaintext database of an older release does get a key (it is encrypted on open).
    std::fs::write(dir.path().join("profile.sqlite"), b"SQLite format 3\0rest").unwrap();
    unlock(dir.path(), &Unlock::passphrase("x")).unwrap();
}

#[test]
fn empty_passphrases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        unlock(dir.path(), &Unlock::passphrase("")),
        Err(VaultError::EmptyPassphrase)
    ));
    assert!(!key_file(dir.path()).exists());
}

/// This machine (CI, containers) has no Secret Service: asking for the keyring fails
/// fast and cleanly, writes nothing, and the passphrase still works. Where a keyring
/// answers, a keyring-protected profile round-trips instead.
#[test]
fn the_keyring_is_used_when_it_answers_and_fails_cleanly_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let available = hushwire_vault::keyring_available();
    assert!(t.elapsed() < KEYRING_TIMEOUT + Duration::from_secs(2));
    let t = Instant::now();
    match unlock(dir.path(), &Unlock::Keyring) {
        Ok(key) => {
            assert!(available);
            assert_eq!(protection(dir.path()).unwrap(), Some(Protection::Keyring));
            // The key file decides: a passphrase is not needed (nor used).
            let again = unlock(dir.path(), &Unlock::passphrase("ignored")).unwrap();
            assert_eq!(key.expose(), again.expose());
            assert!(matches!(
                change_passphrase(dir.path(), &Passphrase::new("a"), &Passphrase::new("b")),
                Err(VaultError::NotPassphraseProtected { .. })
            ));
        }
        Err(e) => {
            assert!(!available);
            assert!(matches!(e, VaultError::KeyringUnavailable(_)), "{e:?}");
            assert!(t.elapsed() < KEYRING_TIMEOUT + Duration::from_secs(2));
            assert!(!key_file(dir.path()).exists());
            unlock(dir.path(), &Unlock::passphrase("fallback")).unwrap();
            assert_eq!(
                protection(dir.path()).unwrap(),
                Some(Protection::Passphrase)
            );
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
