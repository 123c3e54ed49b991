//! The profile database: one SQLite file holding OpenMLS's state (tables created by
//! `openmls_sqlite_storage`) and our own tables, on ONE connection so every operation is
//! a single transaction across both.

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::{Connection, OptionalExtension, params};

use std::path::Path;

use crate::E2eError;
use crate::keys::StoreKey;

/// Serde codec for the OpenMLS storage provider.
#[derive(Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// An OpenMLS provider borrowing the profile's connection (or an open transaction /
/// savepoint on it). Built per operation, so `Profile` owns a plain `Connection` and is
/// `Send`.
pub(crate) struct Provider<'c> {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'c Connection>,
}

impl<'c> Provider<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage: SqliteStorageProvider::new(conn),
        }
    }
}

impl<'c> openmls_traits::OpenMlsProvider for Provider<'c> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'c Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

/// Our schema, one entry per version. `PRAGMA user_version` records how many ran.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1
    r#"
    -- The profile's own identity (one row). device_id is NULL until registration completes.
    CREATE TABLE identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        handle TEXT NOT NULL,
        device_id INTEGER,
        server_url TEXT,
        pin TEXT,
        account_secret BLOB NOT NULL,
        device_secret BLOB NOT NULL,
        device_cert_created_at_ms INTEGER NOT NULL,
        device_cert_signature BLOB NOT NULL
    );
    -- Small settings and counters (default_suite, last_received_seq).
    CREATE TABLE kv (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    -- Account keys pinned on first use (TOFU).
    CREATE TABLE accounts (handle TEXT PRIMARY KEY, account_key BLOB NOT NULL);
    -- Device keys certified by the pinned account key.
    CREATE TABLE devices (
        handle TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        device_key BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (handle, device_id)
    );
    -- One row per 1:1 conversation, named by the peer's handle.
    CREATE TABLE conversations (
        peer TEXT PRIMARY KEY,
        suite INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    -- MLS groups of a conversation (several after a simultaneous start).
    -- state: 'pending' (our creating commit is not accepted yet), 'active', 'inactive'
    -- (we were removed), 'failed' (the server rejected our creating commit).
    CREATE TABLE groups (
        group_id BLOB PRIMARY KEY,
        conversation TEXT NOT NULL,
        suite INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX groups_by_conversation ON groups (conversation, state);
    -- History. id is the 16-byte content id; unique per sender handle.
    -- state: 0 queued, 1 sent, 2 received, 3 failed.
    CREATE TABLE messages (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL,
        conversation TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_device INTEGER NOT NULL,
        group_id BLOB,
        sent_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER,
        body TEXT NOT NULL,
        outgoing INTEGER NOT NULL,
        state INTEGER NOT NULL,
        UNIQUE (sender, id)
    );
    CREATE INDEX messages_by_conversation ON messages (conversation, n);
    -- Strictly ordered outbox (by ord; group creation is inserted in front).
    -- kind: 'text', 'create' (group-creating commit), 'update' (self-update commit).
    -- item_id: stable id (the message id for text). message_id: the Submit's current
    -- idempotency key (a commit redone after StaleEpoch gets a new one).
    -- submit: the encoded Submit once built; resent verbatim until resolved.
    -- await_epoch: after StaleEpoch, wait until the group reaches this epoch.
    CREATE TABLE outbox (
        ord INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        conversation TEXT NOT NULL,
        item_id BLOB NOT NULL UNIQUE,
        message_id BLOB NOT NULL UNIQUE,
        group_id BLOB,
        submit BLOB,
        await_epoch INTEGER
    );
    -- Envelopes that cannot be processed yet (future epoch, unknown group).
    CREATE TABLE inbox_buffer (
        seq INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL,
        epoch INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    CREATE INDEX inbox_buffer_by_group ON inbox_buffer (group_id, epoch);
    -- Envelopes that could not be processed (undecryptable, invalid). No plaintext.
    CREATE TABLE failures (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL,
        conversation TEXT,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    "#,
    // v2: group chats.
    r#"
    -- Parameters of group operations (JSON), e.g. {"handles":["bob"]}.
    ALTER TABLE outbox ADD COLUMN params TEXT;
    -- 0: a text; 1: a group event (body is its JSON), shown in the timeline only.
    ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    -- Group chats (conversations named '#TITLE', disambiguated locally as '#TITLE~2').
    -- leaving: we proposed our own removal and wait for a member to commit it.
    CREATE TABLE group_chats (
        group_id BLOB PRIMARY KEY,
        conversation TEXT NOT NULL UNIQUE,
        leaving INTEGER NOT NULL DEFAULT 0
    );
    -- Key packages claimed for a pending group operation (kept so that a commit redone
    -- after a lost race reuses them).
    CREATE TABLE outbox_key_packages (
        item_id BLOB NOT NULL,
        handle TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        key_package BLOB NOT NULL,
        PRIMARY KEY (item_id, handle, device_id)
    );
    "#,
    // v3
    r#"
    -- The key sealing the group's published GroupInfo (GroupMetadata.recovery_key), kept
    -- outside the MLS state so that a member whose state broke can still rejoin.
    ALTER TABLE group_chats ADD COLUMN recovery_key BLOB;
    "#,
    // v4
    r#"
    -- Set when this device refused a commit of the group chat (not authorized, or not
    -- valid MLS): the handle of the member whose commit it was. The server's log went
    -- on without us; the group is not rejoined from that member's GroupInfo but reset
    -- by an admin (Profile::group_reset).
    ALTER TABLE group_chats ADD COLUMN diverged_by TEXT;
    "#,
    // v5: conversation features (features.rs).
    r#"
    -- reply_to: the quoted message's id. edited_at_ms: last edit. expires_at_ms: when a
    -- disappearing message is deleted (the sweep deletes the row). view_once: 0 no,
    -- 1 not yet viewed, 2 viewed (body erased). read_at_ms: received messages the user
    -- has read (read receipts sent, if on).
    ALTER TABLE messages ADD COLUMN reply_to BLOB;
    ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER;
    ALTER TABLE messages ADD COLUMN expires_at_ms INTEGER;
    ALTER TABLE messages ADD COLUMN view_once INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN read_at_ms INTEGER;
    CREATE INDEX messages_by_expiry ON messages (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
    CREATE INDEX messages_by_id ON messages (id);
    -- The disappearing-messages timer (0 off); request = 1 while a conversation someone
    -- else started is an unanswered message request.
    ALTER TABLE conversations ADD COLUMN expire_timer_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN request INTEGER NOT NULL DEFAULT 0;
    -- Ephemeral messages (typing, presence) this device sent in the group's current
    -- epoch since its last stored one: bounded so that a receiver's ratchet never has to
    -- skip more than MLS allows.
    ALTER TABLE groups ADD COLUMN ephemeral_epoch INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE groups ADD COLUMN ephemeral_sent INTEGER NOT NULL DEFAULT 0;
    -- Outbox items of kind 'content' (receipts, reactions, edits, deletes, timer
    -- changes): the encoded Content to send.
    ALTER TABLE outbox ADD COLUMN content BLOB;
    -- One reaction per member and message.
    CREATE TABLE reactions (
        message_sender TEXT NOT NULL,
        message_id BLOB NOT NULL,
        reactor TEXT NOT NULL,
        emoji TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (message_sender, message_id, reactor)
    );
    -- Receipts for this account's own messages: the best status per member.
    -- status: 1 delivered, 2 read, 3 viewed.
    CREATE TABLE receipts (
        message_id BLOB NOT NULL,
        member TEXT NOT NULL,
        status INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (message_id, member)
    );
    -- Messages deleted for everyone before they arrived (retracted): dropped if they do.
    CREATE TABLE tombstones (
        sender TEXT NOT NULL,
        id BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, id)
    );
    -- Accounts this user blocked.
    CREATE TABLE blocked (handle TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
    -- What contacts last shared of their presence.
    CREATE TABLE presence (
        handle TEXT PRIMARY KEY,
        online INTEGER NOT NULL,
        last_seen_ms INTEGER,
        updated_at_ms INTEGER NOT NULL
    );
    -- Requests to the server that are not messages (block, unblock, retract), in order,
    -- until the server confirmed them.
    CREATE TABLE server_requests (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        handle TEXT,
        blocked INTEGER,
        group_id BLOB,
        message_id BLOB
    );
    "#,
    // v6: attachments (attachments.rs).
    r#"
    -- An upload in progress (resumable across restarts). id: the message id it will be
    -- sent under. attachment: the encoded wire Attachment so far (file KEY, nonce prefix,
    -- name, MIME type, preview, caption, sizes; blob id and hashes come at the end).
    -- group_id/blob_id/part_size: the blob once created. parts_done: leading parts the
    -- server confirmed; prefix_sha256: SHA-256 of their ciphertext (a resume re-encrypts
    -- the file and checks it is unchanged).
    CREATE TABLE media_uploads (
        id BLOB PRIMARY KEY,
        conversation TEXT NOT NULL,
        source_path TEXT NOT NULL,
        source_len INTEGER NOT NULL,
        attachment BLOB NOT NULL,
        group_id BLOB,
        blob_id BLOB,
        part_size INTEGER,
        parts_done INTEGER NOT NULL DEFAULT 0,
        prefix_sha256 BLOB,
        created_at_ms INTEGER NOT NULL
    );
    -- The attachment of a message (messages.kind 3; sent or received): the encoded wire
    -- Attachment, key included. path: where the plaintext is (the source of a sent one,
    -- the saved file of a downloaded one). error: why a download failed for good. A
    -- received attachment with neither is a pending download.
    CREATE TABLE attachments (
        sender TEXT NOT NULL,
        id BLOB NOT NULL,
        attachment BLOB NOT NULL,
        path TEXT,
        error TEXT,
        PRIMARY KEY (sender, id)
    );
    "#,
    // v7: view-once attachments. An upload flagged view-once becomes a view-once message.
    r#"
    ALTER TABLE media_uploads ADD COLUMN view_once INTEGER NOT NULL DEFAULT 0;
    "#,
    // v8: multi-device (devices.rs). Signed device lists pinned per account (never an
    // older version than the pinned one); `announced` is the own list last shown to the
    // user. `devices.listed`: the device is in its account's current signed list (a
    // device that is not may stay in old groups until removed, but is never added).
    // `link_pending`: the device key of a device being linked, before it knows its
    // account.
    r#"
    CREATE TABLE device_lists (
        handle TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        list BLOB NOT NULL,
        announced BLOB
    );
    ALTER TABLE devices ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE link_pending (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        device_secret BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    "#,
    // v9: contacts the user verified (safety.rs): the account key they compared.
    r#"
    CREATE TABLE verified (
        handle TEXT PRIMARY KEY,
        account_key BLOB NOT NULL,
        at_ms INTEGER NOT NULL
    );
    "#,
    // v10: key transparency (directory.rs). `directory_pin`: the server's directory keys
    // (pinned on first use) and the highest signed root seen. `directory_checks`: the
    // account key each contact's directory entry was checked against; epoch NULL while
    // the server had not published it yet (checked again later).
    r#"
    CREATE TABLE directory_pin (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        vrf_key BLOB NOT NULL,
        signing_key BLOB NOT NULL,
        epoch INTEGER NOT NULL,
        root BLOB NOT NULL
    );
    CREATE TABLE directory_checks (
        handle TEXT PRIMARY KEY,
        account_key BLOB NOT NULL,
        epoch INTEGER,
        at_ms INTEGER NOT NULL
    );
    "#,
    // v11: scheduled backups (backup_schedule.rs): where, how often, how many to keep,
    // and the recovery key (kept in this encrypted database, so that scheduled backups
    // need no one to type it).
    r#"
    CREATE TABLE backup_schedule (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        dir TEXT NOT NULL,
        every_ms INTEGER NOT NULL,
        keep INTEGER NOT NULL,
        media INTEGER NOT NULL,
        recovery_key BLOB NOT NULL,
        last_ms INTEGER
    );
    "#,
];

/// The first bytes of a plaintext SQLite database file (an SQLCipher file starts with
/// its random salt instead).
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether `path` is a plaintext (unencrypted) SQLite database, i.e. a profile from a
/// release before encryption at rest.
pub(crate) fn is_plaintext_db(path: &Path) -> Result<bool, E2eError> {
    use std::io::Read as _;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) => Ok(&header == PLAINTEXT_HEADER),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens `path` and keys the connection: `PRAGMA key` must be the very first statement.
/// Then checks that the library is SQLCipher and that the key opens the file (reading
/// `sqlite_master` decrypts page 1); nothing is written before that check.
fn open_keyed(path: &Path, key: &StoreKey) -> Result<Connection, E2eError> {
    let conn = Connection::open(path)?;
    let literal = key.sqlcipher_literal();
    let mut stmt = zeroize::Zeroizing::new(String::with_capacity(80));
    stmt.push_str("PRAGMA key = \"");
    stmt.push_str(&literal);
    stmt.push_str("\";");
    conn.execute_batch(&stmt)?;
    // A wrong key is our error to report, not SQLCipher's to log on stderr.
    conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()))
        .optional()?;
    let cipher: Option<String> = conn
        .query_row("PRAGMA cipher_version", [], |r| r.get(0))
        .optional()?;
    if cipher.as_deref().is_none_or(str::is_empty) {
        return Err(E2eError::Storage(
            "SQLite is not SQLCipher: the profile cannot be encrypted".into(),
        ));
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(conn),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            Err(E2eError::WrongKey(path.display().to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The SQLCipher version the profile database is encrypted with (`PRAGMA cipher_version`).
pub(crate) fn cipher_version(conn: &Connection) -> Result<String, E2eError> {
    Ok(conn.query_row("PRAGMA cipher_version", [], |r| r.get(0))?)
}

/// Encrypts a plaintext profile database from a release before encryption at rest, in
/// place: SQLCipher's `sqlcipher_export` into `<path>.migrating` (keyed with `key`), the
/// schema version copied, fsync, then an atomic rename over the old file. The old file's
/// blocks are overwritten with zeros through a handle kept open across the rename (best
/// effort: copy-on-write filesystems, SSD wear levelling and backups may keep plaintext
/// blocks of the old file on the disk). A crash at any point leaves either the old
/// plaintext file or the new encrypted one.
fn encrypt_plaintext_db(path: &Path, key: &StoreKey) -> Result<(), E2eError> {
    let tmp = sibling(path, ".migrating");
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Bring committed WAL frames into the main file first.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let literal = key.sqlcipher_literal();
        let tmp_str = tmp.to_str().ok_or_else(|| {
            E2eError::Storage(format!("profile path {} is not UTF-8", tmp.display()))
        })?;
        // The key as a bound parameter: "x'<hex>'" text is SQLCipher's raw-key form.
        conn.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            params![tmp_str, literal.as_str()],
        )?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        conn.execute_batch(&format!("PRAGMA encrypted.user_version = {version};"))?;
        conn.execute_batch("DETACH DATABASE encrypted;")?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    // Keep the old inode to scrub it once it is unlinked by the rename.
    let old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        match std::fs::remove_file(sibling(path, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    scrub(old);
    Ok(())
}

/// Overwrites an (unlinked) file with zeros and syncs it. Best effort.
fn scrub(mut file: std::fs::File) {
    use std::io::{Seek as _, Write as _};
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    if file.seek(std::io::SeekFrom::Start(0)).is_err() {
        return;
    }
    let zeros = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        if file.write_all(&zeros[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = file.sync_all();
}

fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

/// Opens (creating if needed) an SQLite database encrypted with `key` (SQLCipher, raw
/// key), for the profile database and the other databases a front end keeps in the
/// profile directory (e.g. the daemon's event queue). A plaintext database from a release
/// before encryption at rest is encrypted in place first (see `encrypt_plaintext_db`). A
/// wrong key is [`E2eError::WrongKey`] and leaves the file untouched. Temporary tables
/// and indices stay in memory.
pub fn open_encrypted(path: &Path, key: &StoreKey) -> Result<Connection, E2eError> {
    if is_plaintext_db(path)? {
        tracing::info!(path = %path.display(), "encrypting a plaintext database");
        encrypt_plaintext_db(path, key)?;
    }
    let conn = open_keyed(path, key)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Opens (creating if needed) the profile database, encrypted with `key`, and brings both
/// schemas up to date. A plaintext database from an older release is encrypted first. A
/// wrong key is [`E2eError::WrongKey`] and leaves the file untouched.
pub(crate) fn open_db(path: &Path, key: &StoreKey) -> Result<Connection, E2eError> {
    let mut conn = open_encrypted(path, key)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows are zeroed in their pages: a deleted or disappeared message leaves no
    // plaintext in the file's free space (the WAL is truncated after the sweep).
    conn.pragma_update(None, "secure_delete", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
        .run_migrations()
        .map_err(|e| E2eError::Storage(format!("OpenMLS storage migrations: {e}")))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version)
        .map_err(|_| E2eError::Storage(format!("bad schema version {version}")))?;
    if version > MIGRATIONS.len() {
        return Err(E2eError::Storage(format!(
            "profile schema v{version} is newer than this build (v{})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

pub(crate) fn kv_get(conn: &Connection, key: &str) -> Result<Option<i64>, E2eError> {
    Ok(conn
        .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub(crate) fn kv_set(conn: &Connection, key: &str, value: i64) -> Result<(), E2eError> {
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// u64 <-> SQLite INTEGER (i64). Values above i64::MAX are refused rather than wrapped.
pub(crate) fn to_sql_u64(v: u64) -> Result<i64, E2eError> {
    i64::try_from(v).map_err(|_| E2eError::Protocol(format!("value {v} out of range")))
}

pub(crate) fn from_sql_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
