//! The profile's key file: the key the profile database is encrypted with
//! ([`StoreKey`], SQLCipher), kept wrapped so that it never lies on the disk in clear.
//!
//! `DIR/profile.key` is JSON, versioned (`{"version":1,...}`). It holds a random 32-byte
//! data key sealed with XChaCha20-Poly1305 under a key-encryption key (KEK) that is
//! either
//!
//! - `"kek":"keyring"`: a random 32-byte secret in the OS keyring (Secret Service on
//!   Linux over D-Bus in pure Rust, the Keychain on macOS, the Credential Manager on
//!   Windows), named by `service`/`user` in the file; or
//! - `"kek":"passphrase"`: Argon2id of the passphrase with a random 16-byte salt and the
//!   cost parameters recorded in the file (default m = 64 MiB, t = 3, p = 1).
//!
//! The KEK parameters are the AEAD's associated data, so editing them is detected like a
//! wrong passphrase. Changing the passphrase rewraps the data key: the database is not
//! rekeyed. A damaged sealed key cannot be told apart from a wrong passphrase (both fail
//! the AEAD); either way nothing is written.
//!
//! Which KEK a new profile gets ([`Unlock::Auto`]): a passphrase if `HUSHWIRE_PASSPHRASE`
//! is set (scripts), else the OS keyring if one answers, else a passphrase asked twice on
//! the terminal, else an error telling the user to set `HUSHWIRE_PASSPHRASE`. For an
//! existing profile the key file decides.
//!
//! Passphrases and keys are never logged; passphrases live in [`Passphrase`] (zeroized,
//! redacted `Debug`), keys in [`StoreKey`].

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use hushwire_e2e::StoreKey;

/// The key file's name in the profile directory.
pub const KEY_FILE: &str = "profile.key";
/// The passphrase for scripts (and the current one for `change_passphrase` callers).
pub const PASSPHRASE_ENV: &str = "HUSHWIRE_PASSPHRASE";
/// The new passphrase when changing it non-interactively.
pub const NEW_PASSPHRASE_ENV: &str = "HUSHWIRE_NEW_PASSPHRASE";
/// Argon2id memory cost in KiB for key files written from now on (default 65536 =
/// 64 MiB; at least [`MIN_MEMORY_KIB`]). Existing key files keep their own parameters.
pub const ARGON2_MEMORY_ENV: &str = "HUSHWIRE_ARGON2_MEMORY_KIB";

/// Default Argon2id memory cost (KiB).
pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
/// The lowest memory cost [`ARGON2_MEMORY_ENV`] may choose (KiB).
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
/// Default Argon2id passes.
pub const DEFAULT_TIME_COST: u32 = 3;
/// Default Argon2id lanes.
pub const DEFAULT_LANES: u32 = 1;
/// The keyring service name entries are stored under.
pub const KEYRING_SERVICE: &str = "hushwire";
/// How long a keyring call may take before the keyring counts as unavailable (a locked
/// or absent Secret Service must not hang the client).
pub const KEYRING_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bounds accepted when reading a key file (a hostile file must not make the
/// client allocate without limit).
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_TIME_COST: u32 = 64;
const MAX_LANES: u32 = 64;
const VERSION: u32 = 1;
const AAD_PREFIX: &[u8] = b"hushwire-vault/v1\0";
const PLAINTEXT_DB_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Everything the vault can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The passphrase does not unwrap the profile's key (or the sealed key is damaged).
    /// Nothing was changed.
    #[error("wrong passphrase for profile {}", dir.display())]
    WrongPassphrase {
        /// The profile directory.
        dir: PathBuf,
    },
    /// A passphrase is needed and none was given: no `HUSHWIRE_PASSPHRASE`, no terminal.
    #[error(
        "profile {} needs a passphrase: set HUSHWIRE_PASSPHRASE (or run in a terminal to be asked)",
        dir.display()
    )]
    NeedPassphrase {
        /// The profile directory.
        dir: PathBuf,
    },
    /// An empty passphrase was given.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// The two passphrases typed when creating or changing it differ.
    #[error("the passphrases do not match")]
    PassphraseMismatch,
    /// The OS keyring did not answer (absent, locked, timed out) or failed.
    #[error("OS keyring unavailable: {0}")]
    KeyringUnavailable(String),
    /// The key file names a keyring entry the keyring does not have.
    #[error("the OS keyring has no key for profile {}", dir.display())]
    KeyringEntryMissing {
        /// The profile directory.
        dir: PathBuf,
    },
    /// The profile has an encrypted database but no key file: its key is lost.
    #[error("profile {} has an encrypted database but no key file ({KEY_FILE})", dir.display())]
    KeyFileMissing {
        /// The profile directory.
        dir: PathBuf,
    },
    /// The key file does not parse or has impossible values.
    #[error("key file {} is damaged: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file was written by a newer release.
    #[error("key file {} has version {version}; this build reads version {VERSION}", path.display())]
    UnsupportedVersion {
        /// The key file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The operation needs a passphrase-protected profile, and this one uses the keyring.
    #[error("profile {} is protected by the OS keyring, not a passphrase", dir.display())]
    NotPassphraseProtected {
        /// The profile directory.
        dir: PathBuf,
    },
    /// Reading the passphrase from the terminal failed.
    #[error("reading the passphrase: {0}")]
    Prompt(std::io::Error),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A passphrase: zeroized on drop, `Debug` redacted.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(Zeroizing::new(passphrase.into()))
    }

    /// The passphrase text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// From `HUSHWIRE_PASSPHRASE` (or another variable), if set.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var).ok().map(Self::new)
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// How to unlock (or, for a new profile, protect) a profile's key.
#[derive(Debug, Clone, Default)]
pub enum Unlock {
    /// The key file decides; a new profile uses `HUSHWIRE_PASSPHRASE` if set, else the OS
    /// keyring if available, else a passphrase asked on the terminal.
    #[default]
    Auto,
    /// This passphrase (a new profile is protected by it).
    Passphrase(Passphrase),
    /// A new profile is protected by the OS keyring (an error if there is none).
    Keyring,
    /// A key already unlocked (by [`unlock`] earlier in the same process): returned as is,
    /// the key file is not read. The database open checks it.
    Key(StoreKey),
}

impl Unlock {
    /// `Unlock::Passphrase` of `passphrase`.
    pub fn passphrase(passphrase: impl Into<String>) -> Self {
        Self::Passphrase(Passphrase::new(passphrase))
    }
}

/// What protects a profile's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// A passphrase (Argon2id).
    Passphrase,
    /// The OS keyring.
    Keyring,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub time_cost: u32,
    /// Lanes.
    pub lanes: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Self {
            memory_kib: DEFAULT_MEMORY_KIB,
            time_cost: DEFAULT_TIME_COST,
            lanes: DEFAULT_LANES,
        }
    }
}

impl Argon2Cost {
    /// The cost for key files written now: the default, with the memory cost from
    /// [`ARGON2_MEMORY_ENV`] if set (never below [`MIN_MEMORY_KIB`]).
    pub fn for_new_files() -> Self {
        let mut cost = Self::default();
        if let Ok(v) = std::env::var(ARGON2_MEMORY_ENV) {
            match v.trim().parse::<u32>() {
                Ok(kib) => cost.memory_kib = kib.clamp(MIN_MEMORY_KIB, MAX_MEMORY_KIB),
                Err(_) => tracing::warn!("{ARGON2_MEMORY_ENV} is not a number of KiB; ignored"),
            }
        }
        cost
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kek", rename_all = "snake_case")]
enum Kek {
    Passphrase {
        m_kib: u32,
        t: u32,
        p: u32,
        /// Base64, 16 bytes.
        salt: String,
    },
    Keyring {
        service: String,
        user: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    #[serde(flatten)]
    kek: Kek,
    /// Base64, 24 bytes.
    nonce: String,
    /// Base64: the sealed 32-byte data key (48 bytes).
    wrapped: String,
}

/// The key file's path for profile `dir`.
pub fn key_file(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// What protects the profile in `dir`, or `None` if it has no key file yet.
pub fn protection(dir: &Path) -> Result<Option<Protection>, VaultError> {
    Ok(read_key_file(dir)?.map(|f| match f.kek {
        Kek::Passphrase { .. } => Protection::Passphrase,
        Kek::Keyring { .. } => Protection::Keyring,
    }))
}

/// The database key of the profile in `dir`, unwrapped as `how` says. A profile without
/// a key file gets one (a new random key), unless it has an encrypted database already
/// ([`VaultError::KeyFileMissing`]). A plaintext database of an older release is left to
/// `Profile::open`, which encrypts it with the returned key.
pub fn unlock(dir: &Path, how: &Unlock) -> Result<StoreKey, VaultError> {
    if let Unlock::Key(key) = how {
        return Ok(key.clone());
    }
    match read_key_file(dir)? {
        Some(file) => open_existing(dir, &file, how),
        None => create(dir, how),
    }
}

/// Rewraps the data key of the passphrase-protected profile in `dir` under `new`. The
/// database is not touched. A wrong `old` is [`VaultError::WrongPassphrase`], with
/// nothing written.
pub fn change_passphrase(dir: &Path, old: &Passphrase, new: &Passphrase) -> Result<(), VaultError> {
    if new.expose().is_empty() {
        return Err(VaultError::EmptyPassphrase);
    }
    let path = key_file(dir);
    let Some(file) = read_key_file(dir)? else {
        return Err(VaultError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no key file"),
        });
    };
    if !matches!(file.kek, Kek::Passphrase { .. }) {
        return Err(VaultError::NotPassphraseProtected {
            dir: dir.to_path_buf(),
        });
    }
    let key = unwrap_with(dir, &file, &*kek_from_passphrase(&path, &file.kek, old)?)?;
    let (kek_params, kek) = new_passphrase_kek(new)?;
    write_key_file(dir, &seal(&kek_params, &kek, &key)?)
}

/// Whether the OS keyring answers (stores, reads back and deletes a probe entry within
/// [`KEYRING_TIMEOUT`]).
pub fn keyring_available() -> bool {
    let user = format!("probe-{}", hex::encode(random::<8>()));
    keyring_call(move || {
        let entry = keyring::Entry::new(KEYRING_SERVICE, &user)?;
        entry.set_secret(b"probe")?;
        let ok = entry.get_secret()? == b"probe";
        let _ = entry.delete_credential();
        Ok(ok)
    })
    .unwrap_or(false)
}

fn open_existing(dir: &Path, file: &KeyFile, how: &Unlock) -> Result<StoreKey, VaultError> {
    let path = key_file(dir);
    let kek = match &file.kek {
        Kek::Keyring { service, user } => keyring_get(dir, service, user)?,
        Kek::Passphrase { .. } => {
            let passphrase = match how {
                Unlock::Passphrase(p) => p.clone(),
                Unlock::Auto | Unlock::Keyring | Unlock::Key(_) => {
                    match Passphrase::from_env(PASSPHRASE_ENV) {
                        Some(p) => p,
                        None if std::io::stdin().is_terminal() => {
                            prompt(&format!("Passphrase for profile {}: ", dir.display()))?
                        }
                        None => {
                            return Err(VaultError::NeedPassphrase {
                                dir: dir.to_path_buf(),
                            });
                        }
                    }
                }
            };
            kek_from_passphrase(&path, &file.kek, &passphrase)?
        }
    };
    unwrap_with(dir, file, &kek)
}

fn create(dir: &Path, how: &Unlock) -> Result<StoreKey, VaultError> {
    refuse_orphan_database(dir)?;
    let (kek_params, kek) = match how {
        Unlock::Passphrase(p) => new_passphrase_kek(p)?,
        Unlock::Keyring => new_keyring_kek()?,
        Unlock::Key(key) => return Ok(key.clone()),
        Unlock::Auto => match Passphrase::from_env(PASSPHRASE_ENV) {
            Some(p) => new_passphrase_kek(&p)?,
            None => match new_keyring_kek() {
                Ok(k) => k,
                Err(e) => {
                    tracing::info!("no OS keyring ({e}); protecting the profile with a passphrase");
                    if !std::io::stdin().is_terminal() {
                        return Err(VaultError::NeedPassphrase {
                            dir: dir.to_path_buf(),
                        });
                    }
                    let p = prompt_new(dir)?;
                    new_passphrase_kek(&p)?
                }
            },
        },
    };
    let key = StoreKey::generate();
    write_key_file(dir, &seal(&kek_params, &kek, &key)?)?;
    Ok(key)
}

/// A database that is encrypted (not a plaintext SQLite file, not empty) without a key
/// file cannot be opened: say so rather than create a key that does not fit.
fn refuse_orphan_database(dir: &Path) -> Result<(), VaultError> {
    use std::io::Read as _;
    let db = dir.join(hushwire_e2e::PROFILE_DB);
    let mut f = match std::fs::File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&db)(e)),
    };
    let mut header = Vec::with_capacity(16);
    (&mut f)
        .take(16)
        .read_to_end(&mut header)
        .map_err(io_err(&db))?;
    if header.is_empty() || header.as_slice() == PLAINTEXT_DB_HEADER {
        Ok(())
    } else {
        Err(VaultError::KeyFileMissing {
            dir: dir.to_path_buf(),
        })
    }
}

/// Asks for a passphrase on the terminal (not echoed); an empty one is refused.
pub fn prompt(text: &str) -> Result<Passphrase, VaultError> {
    let p = Passphrase::new(rpassword::prompt_password(text).map_err(VaultError::Prompt)?);
    if p.expose().is_empty() {
        return Err(VaultError::EmptyPassphrase);
    }
    Ok(p)
}

/// Asks for a new passphrase twice.
pub fn prompt_new(dir: &Path) -> Result<Passphrase, VaultError> {
    let first = prompt(&format!("New passphrase for profile {}: ", dir.display()))?;
    let second = prompt("Repeat the passphrase: ")?;
    if first.expose() != second.expose() {
        return Err(VaultError::PassphraseMismatch);
    }
    Ok(first)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn new_passphrase_kek(p: &Passphrase) -> Result<(Kek, Zeroizing<[u8; 32]>), VaultError> {
    if p.expose().is_empty() {
        return Err(VaultError::EmptyPassphrase);
    }
    let cost = Argon2Cost::for_new_files();
    let kek = Kek::Passphrase {
        m_kib: cost.memory_kib,
        t: cost.time_cost,
        p: cost.lanes,
        salt: B64.encode(random::<16>()),
    };
    let key = kek_from_passphrase(Path::new(KEY_FILE), &kek, p)?;
    Ok((kek, key))
}

fn new_keyring_kek() -> Result<(Kek, Zeroizing<[u8; 32]>), VaultError> {
    let secret = Zeroizing::new(random::<32>());
    let user = format!("profile-{}", hex::encode(random::<16>()));
    let stored = Zeroizing::new(secret.to_vec());
    let u = user.clone();
    let ok = keyring_call(move || {
        let entry = keyring::Entry::new(KEYRING_SERVICE, &u)?;
        entry.set_secret(&stored)?;
        let back = Zeroizing::new(entry.get_secret()?);
        Ok(back.as_slice() == stored.as_slice())
    })?;
    if !ok {
        return Err(VaultError::KeyringUnavailable(
            "the keyring returned a different secret".into(),
        ));
    }
    Ok((
        Kek::Keyring {
            service: KEYRING_SERVICE.to_string(),
            user,
        },
        secret,
    ))
}

fn keyring_get(dir: &Path, service: &str, user: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let (service, user) = (service.to_string(), user.to_string());
    let got = keyring_call(move || {
        let entry = keyring::Entry::new(&service, &user)?;
        match entry.get_secret() {
            Ok(s) => Ok(Some(Zeroizing::new(s))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    let Some(secret) = got else {
        return Err(VaultError::KeyringEntryMissing {
            dir: dir.to_path_buf(),
        });
    };
    let arr: [u8; 32] = secret.as_slice().try_into().map_err(|_| {
        VaultError::KeyringUnavailable("the keyring entry is not a 32-byte key".into())
    })?;
    Ok(Zeroizing::new(arr))
}

/// Runs a keyring call on its own thread (the Secret Service client starts its own
/// runtime, which must not nest in the caller's) and gives up after
/// [`KEYRING_TIMEOUT`]; a call that hangs is left behind on its thread.
fn keyring_call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
) -> Result<T, VaultError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hushwire-keyring".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| VaultError::KeyringUnavailable(format!("spawning a thread: {e}")))?;
    match rx.recv_timeout(KEYRING_TIMEOUT) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(VaultError::KeyringUnavailable(e.to_string())),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(VaultError::KeyringUnavailable(format!(
            "no answer within {} s",
            KEYRING_TIMEOUT.as_secs()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(VaultError::KeyringUnavailable(
            "the keyring call failed".into(),
        )),
    }
}

fn kek_from_passphrase(
    path: &Path,
    kek: &Kek,
    passphrase: &Passphrase,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let corrupt = |reason: String| VaultError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let Kek::Passphrase { m_kib, t, p, salt } = kek else {
        return Err(corrupt("not a passphrase key file".into()));
    };
    if *m_kib > MAX_MEMORY_KIB || *t > MAX_TIME_COST || *p > MAX_LANES {
        return Err(corrupt(format!(
            "Argon2id parameters out of range (m={m_kib} KiB, t={t}, p={p})"
        )));
    }
    let salt = B64
        .decode(salt)
        .map_err(|e| corrupt(format!("salt: {e}")))?;
    if salt.len() != 16 {
        return Err(corrupt(format!("salt has {} bytes, not 16", salt.len())));
    }
    let params = argon2::Params::new(*m_kib, *t, *p, Some(32))
        .map_err(|e| corrupt(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.expose().as_bytes(), &salt, out.as_mut())
        .map_err(|e| corrupt(format!("Argon2id: {e}")))?;
    Ok(out)
}

fn aad(kek: &Kek) -> Result<Vec<u8>, VaultError> {
    let mut aad = AAD_PREFIX.to_vec();
    let params = serde_json::to_vec(kek).map_err(|e| VaultError::Corrupt {
        path: PathBuf::from(KEY_FILE),
        reason: e.to_string(),
    })?;
    aad.extend(params);
    Ok(aad)
}

fn seal(kek_params: &Kek, kek: &[u8; 32], key: &StoreKey) -> Result<KeyFile, VaultError> {
    let nonce = random::<24>();
    let cipher = XChaCha20Poly1305::new(kek.into());
    let aad = aad(kek_params)?;
    let wrapped = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: key.expose(),
                aad: &aad,
            },
        )
        .map_err(|_| VaultError::Corrupt {
            path: PathBuf::from(KEY_FILE),
            reason: "sealing the key failed".into(),
        })?;
    Ok(KeyFile {
        version: VERSION,
        kek: kek_params.clone(),
        nonce: B64.encode(nonce),
        wrapped: B64.encode(wrapped),
    })
}

fn unwrap_with(dir: &Path, file: &KeyFile, kek: &[u8; 32]) -> Result<StoreKey, VaultError> {
    let path = key_file(dir);
    let corrupt = |reason: String| VaultError::Corrupt {
        path: path.clone(),
        reason,
    };
    let nonce = B64
        .decode(&file.nonce)
        .map_err(|e| corrupt(format!("nonce: {e}")))?;
    if nonce.len() != 24 {
        return Err(corrupt(format!("nonce has {} bytes, not 24", nonce.len())));
    }
    let wrapped = B64
        .decode(&file.wrapped)
        .map_err(|e| corrupt(format!("wrapped key: {e}")))?;
    if wrapped.len() != 48 {
        return Err(corrupt(format!(
            "wrapped key has {} bytes, not 48",
            wrapped.len()
        )));
    }
    let cipher = XChaCha20Poly1305::new(kek.into());
    let aad = aad(&file.kek)?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &wrapped,
                    aad: &aad,
                },
            )
            .map_err(|_| match file.kek {
                Kek::Passphrase { .. } => VaultError::WrongPassphrase {
                    dir: dir.to_path_buf(),
                },
                Kek::Keyring { .. } => corrupt("the keyring's key does not open it".into()),
            })?,
    );
    StoreKey::from_slice(&plain).ok_or_else(|| corrupt("the key is not 32 bytes".into()))
}

fn read_key_file(dir: &Path) -> Result<Option<KeyFile>, VaultError> {
    let path = key_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_str(&text).map_err(|e| VaultError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if v.version != VERSION {
        return Err(VaultError::UnsupportedVersion {
            path,
            version: v.version,
        });
    }
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| VaultError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(file))
}

/// Writes the key file atomically: a temporary file (mode 0600 on Unix), fsync, rename,
/// fsync of the directory.
fn write_key_file(dir: &Path, file: &KeyFile) -> Result<(), VaultError> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = key_file(dir);
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(file).map_err(|e| VaultError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&text).map_err(io_err(&tmp))?;
    f.write_all(b"\n").map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Parameters other than the default are read from the file (here: cheaper ones a
    /// key file written with `HUSHWIRE_ARGON2_MEMORY_KIB` would carry).
    #[test]
    fn parameters_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = Passphrase::new("correct horse");
        let params = Kek::Passphrase {
            m_kib: MIN_MEMORY_KIB,
            t: 1,
            p: 2,
            salt: B64.encode(random::<16>()),
        };
        let kek = kek_from_passphrase(Path::new(KEY_FILE), &params, &p).unwrap();
        let key = StoreKey::generate();
        write_key_file(dir.path(), &seal(&params, &kek, &key).unwrap()).unwrap();
        let got = unlock(dir.path(), &Unlock::Passphrase(p)).unwrap();
        assert_eq!(got.expose(), key.expose());
        let text = std::fs::read_to_string(key_file(dir.path())).unwrap();
        assert!(text.contains("\"m_kib\": 8192"), "{text}");
        // Editing the parameters is caught (they are the AEAD's associated data).
        let edited = text.replace("\"t\": 1", "\"t\": 2");
        std::fs::write(key_file(dir.path()), edited).unwrap();
        assert!(matches!(
            unlock(dir.path(), &Unlock::passphrase("correct horse")),
            Err(VaultError::WrongPassphrase { .. })
        ));
    }

    #[test]
    fn out_of_range_parameters_are_refused_without_deriving() {
        let params = Kek::Passphrase {
            m_kib: MAX_MEMORY_KIB + 1,
            t: 1,
            p: 1,
            salt: B64.encode(random::<16>()),
        };
        assert!(matches!(
            kek_from_passphrase(Path::new(KEY_FILE), &params, &Passphrase::new("x")),
            Err(VaultError::Corrupt { .. })
        ));
    }
}
