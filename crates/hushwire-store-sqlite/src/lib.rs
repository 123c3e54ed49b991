//! Embedded SQLite backend for Hushwire's server storage traits
//! ([`hushwire_store::Store`]), built for many durable writes per second on one disk.
//!
//! [`SqliteStore::open`] opens (or creates) one database file in WAL mode with
//! `synchronous=FULL`: when a method returns `Ok`, its change has been fsynced.
//! To make that fast, all writes go to **one writer thread** that owns the only
//! read-write connection and commits them in groups: it drains up to
//! [`SqliteOptions::max_batch`] queued operations (under load it waits up to
//! [`SqliteOptions::commit_window`] for more), runs them inside one
//! `BEGIN IMMEDIATE … COMMIT` (an operation that fails changes nothing: see `writer.rs`),
//! and answers every caller after the commit (group commit). Reads run on a small pool
//! of read-only connections.
//!
//! Two writes are deliberately lazy:
//! - [`Mailboxes::ack_hint`] (the live connection's acks) only queues the ack: the
//!   writer applies the latest one per device at the start of its next batch, inside
//!   that batch's commit, and nobody waits for it. A crash can lose an ack that was
//!   queued but not committed; the entries are then delivered again and the client
//!   skips them by seq. [`Mailboxes::ack`] stays durable on `Ok`.
//! - [`Mailboxes::expire`] runs as a series of bounded steps (one write job each), so
//!   an hourly sweep never holds the writer for long; it scans `mailbox` and `messages`
//!   by primary key because they have no expiry index (migration 0002).
//!
//! # Layout
//! - `lib.rs`: [`SqliteStore`], [`SqliteOptions`], [`SqliteStoreError`] and the trait
//!   implementations (thin: each sends a job to the writer or runs a read).
//! - `writer.rs`: the writer thread, batching and savepoints.
//! - `ops.rs`: the write operations and the writer's caches (group epochs, rosters and
//!   seqs, devices, per-device mailbox seqs), filled lazily from the database.
//! - `read.rs`: the read pool and read queries.
//! - `blobs.rs`: media blob metadata ([`Blobs`]): its writes and reads.
//! - `links.rs`: device lists and link sessions ([`Links`]).
//! - `directory.rs`: the key directory's secret, epoch log, change queue and publisher
//!   lease ([`KeyDirectory`]); `reset.rs`: [`Accounts::reset_account`].
//! - `controls.rs`: [`Controls`]: block lists, retraction, the purge of disappearing
//!   messages and the WAL wipe after it, the audience of ephemeral signals.
//! - `conv.rs`: integer conversions (u64 is stored saturated at `i64::MAX`) and the
//!   mapping of SQLite errors to [`StoreError::Backend`].
//! - `schema.rs` + `migrations/NNNN_name.sql`: versioned migrations
//!   (`PRAGMA user_version`), applied in order at open.
//! - `examples/submit_bench.rs`: submit and ack throughput.

use async_trait::async_trait;
use hushwire_store::{
    AccountRecord, Accounts, BlobId, BlobPart, BlobReader, BlobRecord, BlobSweep, Blobs,
    ClaimedKeyPackage, CreateBlobOutcome, Delivery, DeviceAddr, DeviceId, DeviceRecord, Envelope,
    GroupInfoRecord, GroupRecord, KeyPackageStock, KeyPackages, Mailboxes, NewAccount, NewBlob,
    NewDevice, NewKeyPackage, PartOutcome, StoreError, Submission, SubmitOutcome,
};
use hushwire_store::{Controls, NewReport, RelayAudience, ReportRecord};
use hushwire_store::{
    DirectoryAccount, DirectoryChange, DirectoryEpoch, DirectoryLease, KeyDirectory,
};
use hushwire_store::{LinkId, LinkSlot, Links, PutSlot};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod blobs;
mod controls;
mod conv;
mod directory;
mod links;
mod ops;
mod read;
mod reset;
mod schema;
mod writer;

pub use schema::SCHEMA_VERSION;

use ops::{ExpireCursor, WriterState};

/// Rows the retention sweep looks at per write job.
const EXPIRE_STEP: usize = 2048;
use read::ReadPool;
use writer::{FnJob, Msg};

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most write operations committed together (default 512).
    pub max_batch: usize,
    /// Under load (the previous commit carried more than one operation), how long the
    /// writer keeps a small batch (under 32 operations) open for more before committing
    /// it (default 500 µs; zero disables). Fewer, larger commits cost less CPU per
    /// operation; an operation alone in its batch (low load) never waits, nor does a
    /// large batch.
    pub commit_window: Duration,
    /// Write operations that may wait for the writer before callers are held back
    /// (default 8192).
    pub queue_capacity: usize,
    /// Read-only connections (default 4).
    pub readers: usize,
    /// How long a connection waits for a lock held by another process (default 5 s).
    pub busy_timeout: Duration,
    /// SQLite page cache of the writer connection, in KiB (default 32 MiB); each
    /// reader gets a quarter of it.
    pub cache_kib: u32,
    /// WAL size, in pages, past which a commit also checkpoints (default 8192, 32 MiB
    /// with 4 KiB pages). The checkpoint runs on the writer thread and holds the commits
    /// behind it for the copy and an fsync of the database file. Larger means rarer
    /// stalls and fewer copies (pages rewritten in the WAL are copied once).
    pub wal_autocheckpoint_pages: u32,
    /// After disappearing or retracted messages were deleted, the writer truncates the
    /// WAL (so no old copy of their pages stays on disk) at most this often (default
    /// 5 s). See `controls.rs`.
    pub wipe_interval: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            commit_window: Duration::from_micros(500),
            queue_capacity: 8192,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            cache_kib: 32 * 1024,
            wal_autocheckpoint_pages: 8192,
            wipe_interval: Duration::from_secs(5),
        }
    }
}

/// Why a [`SqliteStore`] could not be opened or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteStoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of Hushwire.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The database's version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The database carries a schema version that no build writes.
    #[error("database schema version {found} is invalid")]
    SchemaCorrupt {
        /// The database's version.
        found: i64,
    },
    /// A migration failed (and was rolled back).
    #[error("schema migration to version {version} failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file is damaged (truncated, overwritten): refused rather than
    /// served, which would lose or garble what it holds.
    #[error(
        "database {path} is damaged ({detail}); restore it from a backup, or move it \
         away to start with an empty server"
    )]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A SQLite call failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOptions(&'static str),
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The embedded backend: one SQLite database, one writer thread, a read pool.
///
/// Dropping it finishes the queued writes and joins the writer (briefly blocking);
/// [`SqliteStore::shutdown`] does the same without blocking and also checkpoints the
/// WAL. Either way, every write that was answered `Ok` was committed before its answer.
pub struct SqliteStore {
    tx: Option<mpsc::Sender<Msg>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: ReadPool,
    closed: AtomicBool,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Whether SQLite reports a damaged or foreign file.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn configure(conn: &Connection, busy_timeout: Duration, cache_kib: u32) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib.max(64)))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, applies pending migrations and starts
    /// the writer thread. Refuses a database from a newer schema version
    /// ([`SqliteStoreError::SchemaTooNew`]) and a damaged one
    /// ([`SqliteStoreError::Corrupt`]: an existing but empty file, which SQLite would
    /// take for a new database, or one failing `PRAGMA quick_check`, which reads every
    /// page once).
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, SqliteStoreError> {
        if options.max_batch == 0 {
            return Err(SqliteStoreError::InvalidOptions(
                "max_batch must be at least 1",
            ));
        }
        if options.queue_capacity == 0 {
            return Err(SqliteStoreError::InvalidOptions(
                "queue_capacity must be at least 1",
            ));
        }
        if options.readers == 0 {
            return Err(SqliteStoreError::InvalidOptions(
                "readers must be at least 1",
            ));
        }
        let corrupt = |detail: String| SqliteStoreError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        // Any statement may be the first to read a damaged page (the schema, say).
        let open_err = |source: rusqlite::Error| {
            if is_damage(&source) {
                corrupt(source.to_string())
            } else {
                SqliteStoreError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        };

        // A new database gets its pages during this open (the schema), so an existing
        // empty file was truncated: SQLite would silently start it over, empty.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(corrupt("the file is empty".into()));
        }

        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        configure(&conn, options.busy_timeout, options.cache_kib).map_err(open_err)?;
        // Truncated or overwritten pages would otherwise surface later, as failing
        // requests (or not at all for pages read rarely).
        let check: rusqlite::Result<Vec<String>> = conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
        match check {
            Ok(rows) if rows.iter().all(|r| r == "ok") => {}
            Ok(rows) => return Err(corrupt(rows.join("; "))),
            Err(e) => return Err(open_err(e)),
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL was refused"
            ))));
        }
        // Deleted rows are zeroed in their pages (acknowledged, expired, retracted and
        // disappearing messages leave no ciphertext behind in free space).
        conn.pragma_update(None, "secure_delete", true)
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint_pages)
            .map_err(open_err)?;
        schema::migrate(&mut conn)?;

        let mut readers = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            configure(&r, options.busy_timeout, options.cache_kib / 4).map_err(open_err)?;
            r.pragma_update(None, "query_only", true)
                .map_err(open_err)?;
            readers.push(r);
        }

        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let mut state = WriterState::new(conn);
        state.controls.wipe_interval = options.wipe_interval;
        state.controls.busy_timeout = options.busy_timeout;
        let batching = writer::Batching {
            max_batch: options.max_batch,
            window: options.commit_window,
        };
        let writer = std::thread::Builder::new()
            .name("hushwire-sqlite-writer".into())
            .spawn(move || writer::run(state, rx, batching))
            .map_err(SqliteStoreError::Spawn)?;
        tracing::info!(path = %path.display(), "opened SQLite store");
        Ok(Self {
            tx: Some(tx),
            writer: Mutex::new(Some(writer)),
            readers: ReadPool::new(readers),
            closed: AtomicBool::new(false),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes every write queued before this call, checkpoints the WAL, closes the
    /// database and stops the writer. Later calls fail with [`StoreError::Closed`].
    /// Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.readers.close();
        if let Some(tx) = &self.tx {
            let (reply, done) = oneshot::channel();
            if tx.send(Msg::Shutdown(reply)).await.is_ok() {
                // An error means the writer is gone already.
                let _ = done.await;
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            // The writer has replied and is returning; joining is quick.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        // FnMut: a job may run again after its batch was rolled back (see `writer`).
        F: FnMut(&mut WriterState) -> Result<T, StoreError> + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Job(Box::new(FnJob::new(f, reply))))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.readers.run(f).await
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and return.
        drop(self.tx.take());
        self.readers.close();
        let handle = self.writer.get_mut().ok().and_then(|h| h.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn create_account(&self, new: NewAccount) -> Result<DeviceRecord, StoreError> {
        self.write(move |w| w.create_account(new.clone())).await
    }

    async fn account(&self, handle: &str) -> Result<Option<AccountRecord>, StoreError> {
        let handle = handle.to_owned();
        self.read(move |c| read::account(c, &handle)).await
    }

    async fn device(&self, addr: &DeviceAddr) -> Result<Option<DeviceRecord>, StoreError> {
        let addr = addr.clone();
        self.read(move |c| read::device(c, &addr)).await
    }

    async fn create_invite(&self, code: &str, expires_at_ms: u64) -> Result<(), StoreError> {
        let code = code.to_owned();
        self.write(move |w| w.create_invite(&code, expires_at_ms))
            .await
    }

    async fn add_device(
        &self,
        handle: &str,
        device: NewDevice,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let handle = handle.to_owned();
        self.write(move |w| w.add_device(&handle, device.clone()))
            .await
    }

    async fn add_device_within(
        &self,
        handle: &str,
        device: NewDevice,
        max_active: usize,
    ) -> Result<hushwire_store::AddDevice, StoreError> {
        let handle = handle.to_owned();
        self.write(move |w| w.add_device_within(&handle, device.clone(), max_active))
            .await
    }

    async fn revoke_device(&self, addr: &DeviceAddr) -> Result<bool, StoreError> {
        let addr = addr.clone();
        self.write(move |w| w.revoke_device(&addr)).await
    }

    async fn revoked_devices(&self, ids: &[DeviceId]) -> Result<Vec<DeviceId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.read(move |c| links::revoked_devices(c, &ids)).await
    }

    async fn set_device_list(
        &self,
        handle: &str,
        version: u64,
        signed: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        let handle = handle.to_owned();
        self.write(move |w| links::set_device_list(&w.conn, &handle, version, &signed))
            .await
    }

    async fn reset_account(&self, handle: &str, now_ms: u64) -> Result<bool, StoreError> {
        let handle = handle.to_owned();
        self.write(move |w| w.reset_account(&handle, now_ms)).await
    }
}

#[async_trait]
impl KeyDirectory for SqliteStore {
    async fn directory_secret(&self, candidate: bytes::Bytes) -> Result<bytes::Bytes, StoreError> {
        self.write(move |w| directory::directory_secret(&w.conn, &candidate))
            .await
    }

    async fn directory_changes(&self, limit: usize) -> Result<Vec<DirectoryChange>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| directory::directory_changes(c, limit))
            .await
    }

    async fn append_directory_epoch(
        &self,
        epoch: DirectoryEpoch,
        consumed_through: u64,
    ) -> Result<bool, StoreError> {
        self.write(move |w| directory::append_epoch(&w.conn, &epoch, consumed_through))
            .await
    }

    async fn directory_epochs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DirectoryEpoch>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| directory::directory_epochs(c, after, limit))
            .await
    }

    async fn directory_accounts(
        &self,
        handles: &[String],
    ) -> Result<Vec<DirectoryAccount>, StoreError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let handles = handles.to_vec();
        self.read(move |c| directory::directory_accounts(c, &handles))
            .await
    }

    async fn claim_directory_publisher(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<DirectoryLease, StoreError> {
        let holder = holder.to_owned();
        self.write(move |w| directory::claim_publisher(&w.conn, &holder, now_ms, until_ms))
            .await
    }
}

#[async_trait]
impl Links for SqliteStore {
    async fn create_link(
        &self,
        id: LinkId,
        owner: &DeviceAddr,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let owner = owner.clone();
        self.write(move |w| links::create_link(&w.conn, &id, &owner, expires_at_ms))
            .await
    }

    async fn put_link_slot(
        &self,
        id: LinkId,
        slot: &str,
        data: bytes::Bytes,
        now_ms: u64,
    ) -> Result<PutSlot, StoreError> {
        let slot = slot.to_owned();
        self.write(move |w| links::put_link_slot(&w.conn, &id, &slot, &data, now_ms))
            .await
    }

    async fn link_slot(&self, id: LinkId, slot: &str, now_ms: u64) -> Result<LinkSlot, StoreError> {
        let slot = slot.to_owned();
        self.read(move |c| links::link_slot(c, &id, &slot, now_ms))
            .await
    }

    async fn link_owner(&self, id: LinkId, now_ms: u64) -> Result<Option<DeviceAddr>, StoreError> {
        self.read(move |c| links::link_owner(c, &id, now_ms)).await
    }

    async fn delete_link(&self, id: LinkId) -> Result<bool, StoreError> {
        self.write(move |w| links::delete_link(&w.conn, &id)).await
    }

    async fn purge_expired_links(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(move |w| links::purge_expired_links(&w.conn, now_ms))
            .await
    }
}

#[async_trait]
impl KeyPackages for SqliteStore {
    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
    ) -> Result<u32, StoreError> {
        self.write(move |w| w.add_key_packages(device, packages.clone()))
            .await
    }

    async fn claim_key_packages(
        &self,
        handle: &str,
        ciphersuite: u16,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let handle = handle.to_owned();
        self.write(move |w| w.claim_key_packages(&handle, ciphersuite))
            .await
    }

    async fn key_package_stock(
        &self,
        device: DeviceId,
        ciphersuite: u16,
    ) -> Result<KeyPackageStock, StoreError> {
        self.read(move |c| read::key_package_stock(c, device, ciphersuite))
            .await
    }
}

#[async_trait]
impl Delivery for SqliteStore {
    async fn submit(&self, submission: Submission) -> Result<SubmitOutcome, StoreError> {
        self.write(move |w| w.submit(submission.clone())).await
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |c| read::group(c, &group_id)).await
    }

    async fn group_info(&self, group_id: &[u8]) -> Result<Option<GroupInfoRecord>, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |c| read::group_info(c, &group_id)).await
    }
}

#[async_trait]
impl Mailboxes for SqliteStore {
    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.read(move |c| read::fetch(c, device, after_seq, limit))
            .await
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        self.write(move |w| w.ack(device, up_to_seq)).await
    }

    async fn pending(&self, device: DeviceId) -> Result<u64, StoreError> {
        self.read(move |c| read::pending(c, device)).await
    }

    async fn ack_hint(&self, device: DeviceId, up_to_seq: u64) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        // Waits only for room in the queue, never for the commit.
        tx.send(Msg::Ack { device, up_to_seq })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut cursor = ExpireCursor::START;
        let mut bodies = 0u64;
        // Bounded: every step advances the cursor through a finite table or ends its
        // phase, and each step is its own job so other writes interleave.
        loop {
            let step = self
                .write(move |w| w.expire_step(now_ms, cursor, EXPIRE_STEP))
                .await?;
            bodies += step.bodies;
            match step.next {
                Some(next) => cursor = next,
                None => return Ok(bodies),
            }
        }
    }
}

#[async_trait]
impl Blobs for SqliteStore {
    async fn create_blob(&self, new: NewBlob) -> Result<CreateBlobOutcome, StoreError> {
        self.write(move |w| w.create_blob(&new)).await
    }

    async fn blob(&self, id: &BlobId) -> Result<Option<BlobRecord>, StoreError> {
        let id = *id;
        self.read(move |c| blobs::blob(c, &id)).await
    }

    async fn blob_parts(&self, id: &BlobId) -> Result<Vec<BlobPart>, StoreError> {
        let id = *id;
        self.read(move |c| blobs::blob_parts(c, &id)).await
    }

    async fn record_blob_part(
        &self,
        id: &BlobId,
        part: BlobPart,
        now_ms: u64,
    ) -> Result<PartOutcome, StoreError> {
        let id = *id;
        self.write(move |w| w.record_blob_part(&id, part, now_ms))
            .await
    }

    async fn readable_blob(
        &self,
        id: &BlobId,
        device: DeviceId,
    ) -> Result<Option<BlobRecord>, StoreError> {
        let id = *id;
        self.read(move |c| blobs::readable_blob(c, &id, device))
            .await
    }

    async fn record_blob_fetch(
        &self,
        id: &BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let id = *id;
        self.write(move |w| w.record_blob_fetch(&id, device, now_ms))
            .await
    }

    async fn blob_readers(&self, id: &BlobId) -> Result<Vec<BlobReader>, StoreError> {
        let id = *id;
        self.read(move |c| blobs::blob_readers(c, &id)).await
    }

    async fn blob_usage(&self, account: &str, now_ms: u64) -> Result<u64, StoreError> {
        let account = account.to_owned();
        self.read(move |c| blobs::blob_usage(c, &account, now_ms))
            .await
    }

    async fn begin_blob_deletion(&self, id: &BlobId, now_ms: u64) -> Result<bool, StoreError> {
        let id = *id;
        self.write(move |w| w.begin_blob_deletion(&id, now_ms))
            .await
    }

    async fn sweep_blobs(&self, sweep: BlobSweep, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        self.write(move |w| w.sweep_blobs(sweep, limit)).await
    }

    async fn purge_blobs(&self, ids: &[BlobId]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.write(move |w| w.purge_blobs(&ids)).await
    }

    async fn known_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| blobs::known_blobs(c, &ids)).await
    }
}

#[async_trait]
impl Controls for SqliteStore {
    async fn set_block(
        &self,
        blocker: &str,
        handle: &str,
        blocked: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (blocker, handle) = (blocker.to_owned(), handle.to_owned());
        self.write(move |w| w.set_block(&blocker, &handle, blocked, now_ms))
            .await
    }

    async fn blocked_by(&self, blocker: &str) -> Result<Vec<String>, StoreError> {
        let blocker = blocker.to_owned();
        self.read(move |c| controls::blocked_by(c, &blocker)).await
    }

    async fn retract(
        &self,
        sender: DeviceId,
        group_id: &[u8],
        message_id: [u8; 16],
    ) -> Result<u64, StoreError> {
        let group_id = group_id.to_vec();
        self.write(move |w| w.retract(sender, &group_id, message_id))
            .await
    }

    async fn relay_audience(
        &self,
        sender: DeviceId,
        group_id: &[u8],
    ) -> Result<RelayAudience, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |c| controls::relay_audience(c, sender, &group_id))
            .await
    }

    async fn purge_disappearing(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        // Bounded: each step deletes the timed entries it looks at (at most
        // PURGE_STEP), and only entries due before `now_ms` are looked at.
        loop {
            let (n, more) = self.write(move |w| w.purge_step(now_ms)).await?;
            removed += n;
            if !more {
                return Ok(removed);
            }
        }
    }

    async fn file_report(&self, report: NewReport) -> Result<u64, StoreError> {
        self.write(move |w| w.file_report(&report)).await
    }

    async fn reports(&self, after_id: u64, limit: usize) -> Result<Vec<ReportRecord>, StoreError> {
        self.read(move |c| controls::reports(c, after_id, limit))
            .await
    }

    async fn close_report(&self, id: u64) -> Result<bool, StoreError> {
        self.write(move |w| w.close_report(id)).await
    }
}
