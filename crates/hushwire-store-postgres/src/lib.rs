//! PostgreSQL backend for Hushwire's server storage traits ([`hushwire_store::Store`]):
//! the system of record when several server nodes share one database.
//!
//! # Connection
//! [`PgStore::connect`] takes a `postgres://` URL (the password it may carry is never
//! logged: [`PgStore`] and [`PgOptions`] do not keep it, and errors quote only the
//! server's primary message and SQLSTATE) and builds a `deadpool-postgres` pool of
//! [`PgOptions::pool_size`] connections without TLS (loopback or a private network).
//! Every session is opened with `synchronous_commit=on` and `READ COMMITTED` as its
//! default isolation, whatever the server's defaults: an `Ok` means the change is on
//! the primary's disk. A lost connection fails the operation under way with
//! [`StoreError::Backend`]; the pool drops the closed connection and opens a new one on
//! the next use, so a database restart is survived without restarting the node.
//!
//! # Schema
//! Numbered SQL files in `migrations/`, embedded with `include_str!` and recorded in
//! `schema_migrations`; see [`schema`](crate::SCHEMA_VERSION) for how nodes starting
//! together apply them once (one transaction under an advisory lock).
//! - `accounts`, `devices` (identity ids, never reused), `invites`, `key_packages`.
//! - `groups`: one row per group log with its `epoch` and `last_seq`; the row is the
//!   group's lock. `group_members`, `group_infos`.
//! - `messages`: each body once, with `refcount` = mailbox entries still referring to
//!   it. `mailbox (device, seq) → message`: a group message is fanned out by
//!   reference. `mailbox_seqs`: the last seq handed out per device.
//! - `dedup (message_id, sender)`: idempotency records with the original outcome.
//! - `blobs`, `blob_parts`, `blob_readers`: media metadata. `blocks`: block lists.
//! - `device_lists`: each account's latest signed device list. `links`, `link_slots`:
//!   link sessions and their write-once slots.
//! - `directory_secret`, `directory_epochs`, `directory_changes`,
//!   `directory_publisher`: the key directory's secret, epoch log, change queue and
//!   publisher lease (`directory.rs`); account reset in `reset.rs`.
//!
//! # Transactions
//! Every trait method is one transaction (reads: one statement, so one snapshot), at
//! READ COMMITTED with explicit row locks; deadlocks and serialization failures are
//! retried a bounded number of times. Except: application messages, proposals and
//! [`Mailboxes::ack_hint`]s go to the node's **batcher** (`batch.rs`), which applies
//! everything queued in one shared transaction of five statements (group commit) and
//! answers each submitter after its `COMMIT`, with the same rules as below. Pool size
//! and batching come from [`PgOptions`] or the store URL's query parameters
//! (`?pool_size=32`); [`PgStats`] counts statements and commits.
//! - **Commit fencing**: `submit` locks the group row (`SELECT … FOR UPDATE`) before
//!   it compares the epoch, so of two nodes committing at the same epoch the second
//!   waits, then reads the incremented epoch and answers `StaleEpoch`. A group's
//!   creation is an `INSERT … ON CONFLICT DO NOTHING`; the loser runs again and meets
//!   the winner's group.
//! - **Idempotency**: a duplicate is found by the first statement; two copies racing
//!   (on two nodes) meet at the `dedup` insert (`ON CONFLICT DO NOTHING`): the loser
//!   rolls back and runs again, answering with the winner's original result.
//! - **Fan-out** is one statement per body (`FAN_OUT` in `delivery.rs`): the recipients'
//!   seq counters are locked in device order and incremented, the body is inserted
//!   once with its reference count, and the mailbox rows are inserted from the
//!   counters' `RETURNING`. Seqs are gap-free per device and never reused.
//! - **Acknowledgement** deletes a seq range in one statement that also lowers the
//!   bodies' reference counts (body rows locked in id order); bodies left unreferenced
//!   go in a second statement of the same transaction. Concurrent acks of one device
//!   from two nodes remove each entry once.
//! - **Claims** of KeyPackages take one-time packages with `FOR UPDATE SKIP LOCKED`,
//!   so concurrent claims hand out distinct packages.
//! - **Sweeps** (retention, disappearing messages, blobs) run in bounded steps, each
//!   its own transaction.
//!
//! Deleted ciphertext stays in PostgreSQL's pages until VACUUM and in its WAL until
//! recycled: the backend deletes promptly, the operator runs autovacuum and keeps the
//! data directory on encrypted storage.

mod accounts;
mod batch;
mod blobs;
mod controls;
mod conv;
mod delivery;
mod directory;
mod links;
mod mailbox;
mod reset;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use conv::{TxError, in_tx};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hushwire_store::{
    AccountRecord, Accounts, BlobId, BlobPart, BlobReader, BlobRecord, BlobSweep, Blobs,
    ClaimedKeyPackage, Controls, CreateBlobOutcome, Delivery, DeviceAddr, DeviceId, DeviceRecord,
    Envelope, GroupInfoRecord, GroupRecord, KeyPackageStock, KeyPackages, Mailboxes, NewAccount,
    NewBlob, NewDevice, NewKeyPackage, NewReport, PartOutcome, RelayAudience, ReportRecord,
    StoreError, Submission, SubmitKind, SubmitOutcome,
};
use hushwire_store::{
    DirectoryAccount, DirectoryChange, DirectoryEpoch, DirectoryLease, KeyDirectory,
};
use hushwire_store::{LinkId, LinkSlot, Links, PutSlot};
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

pub use schema::SCHEMA_VERSION;

/// Session settings every connection is opened with (server defaults are not trusted).
const SESSION_OPTIONS: &str =
    "-c synchronous_commit=on -c default_transaction_isolation=read\\ committed";

/// Bodies and idempotency records the retention sweep may delete per call, in steps
/// of `mailbox::EXPIRE_STEP` (a bound on one call; the rest goes at the next sweep).
const EXPIRE_MAX_STEPS: u32 = 10_000;

/// Pool, connection and batching settings. [`PgStore::connect`] also reads them from
/// the URL's query parameters (`pool_size`, `batch_max`, `batch_window_us`,
/// `batch_concurrency`), which override the values given here, so an operator sets them
/// in `store = "postgres://…?pool_size=32"`.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool (default 16). One per batch in flight, the rest for
    /// reads, commits and the other operations.
    pub pool_size: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection.
    pub wait_timeout: Duration,
    /// Most operations (application messages, proposals, acknowledgement hints) in one
    /// batch transaction (default 256).
    pub batch_max: usize,
    /// How long a batch is held open for more operations when the previous batch had
    /// company (default 0: never wait; batches form while the previous one commits).
    pub batch_window: Duration,
    /// Batch transactions in flight at once per node (default 1).
    pub batch_concurrency: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
            batch_max: 256,
            batch_window: Duration::ZERO,
            batch_concurrency: 1,
        }
    }
}

/// The URL query parameters this backend reads (and removes before the URL is parsed
/// as a PostgreSQL connection string).
const OWN_PARAMS: [&str; 4] = [
    "pool_size",
    "batch_max",
    "batch_window_us",
    "batch_concurrency",
];

impl PgOptions {
    /// Applies this backend's query parameters of `url` to `self` and returns the URL
    /// without them. Values must be whole numbers (`pool_size` and `batch_max` at least
    /// 1, `batch_concurrency` 1 to 64, `batch_window_us` at most 1,000,000).
    pub fn apply_url(&mut self, url: &str) -> Result<String, StoreError> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok(url.to_owned());
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !OWN_PARAMS.contains(&key) {
                kept.push(pair);
                continue;
            }
            let n: u64 = value.parse().map_err(|_| {
                StoreError::Invalid(format!("store URL parameter {key} must be a whole number"))
            })?;
            let size = |lo: u64, hi: u64| {
                if (lo..=hi).contains(&n) {
                    Ok(usize::try_from(n).unwrap_or(usize::MAX))
                } else {
                    Err(StoreError::Invalid(format!(
                        "store URL parameter {key} must be {lo} to {hi}"
                    )))
                }
            };
            match key {
                "pool_size" => self.pool_size = size(1, 10_000)?,
                "batch_max" => self.batch_max = size(1, 100_000)?,
                "batch_concurrency" => self.batch_concurrency = size(1, 64)?,
                _ => self.batch_window = Duration::from_micros(size(0, 1_000_000)? as u64),
            }
        }
        Ok(if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        })
    }
}

/// Process-wide counters of this backend (every [`PgStore`] of the process together):
/// what the benchmarks divide by the messages delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Statements sent, `BEGIN`/`COMMIT`/`ROLLBACK` included (each a protocol round
    /// trip, except that a batch pipelines three of them in one).
    pub statements: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Batch transactions run (attempts that were retried count once).
    pub batches: u64,
    /// Submissions that went through batches.
    pub batched_submits: u64,
    /// Acknowledgement hints applied through batches, after coalescing per device.
    pub batched_ack_hints: u64,
}

impl PgStats {
    /// The counters now.
    pub fn now() -> Self {
        Self {
            statements: conv::STATEMENTS.load(Ordering::Relaxed),
            commits: conv::COMMITS.load(Ordering::Relaxed),
            batches: batch::BATCHES.load(Ordering::Relaxed),
            batched_submits: batch::BATCHED_SUBMITS.load(Ordering::Relaxed),
            batched_ack_hints: batch::BATCHED_HINTS.load(Ordering::Relaxed),
        }
    }
}

/// A connection from `pool`, its failures as store errors.
pub(crate) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Client, StoreError> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Closed => StoreError::Closed,
        PoolError::Backend(e) => conv::backend(e),
        PoolError::Timeout(kind) => {
            StoreError::Backend(format!("postgres: no connection in time ({kind:?})"))
        }
        other => StoreError::Backend(format!("postgres pool: {other}")),
    })
}

/// The PostgreSQL store. Cheap to clone (clones share the pool and the batcher).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The batcher's queue (see `batch.rs`); it ends when the last clone is dropped.
    batcher: mpsc::Sender<batch::Op>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// The connection settings of `url` with this backend's session settings added, for
    /// callers building their own pool for [`PgStore::connect_with_pool`].
    /// This backend's own query parameters (see [`PgOptions`]) are left out.
    pub fn pg_config(url: &str, options: &PgOptions) -> Result<tokio_postgres::Config, StoreError> {
        let url = options.clone().apply_url(url)?;
        // The parser's message may quote the URL: not repeated.
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StoreError::Invalid("invalid PostgreSQL connection URL".into()))?;
        let options_value = match config.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        };
        config.options(&options_value);
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("hushwire");
        }
        Ok(config)
    }

    /// Connects to `url` (`postgres://user:password@host:port/db`, with optional
    /// [`PgOptions`] query parameters such as `?pool_size=32`), brings the schema up
    /// to date and returns the store.
    pub async fn connect(url: &str, mut options: PgOptions) -> Result<Self, StoreError> {
        let url = options.apply_url(url)?;
        let config = Self::pg_config(&url, &options)?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL pool: {e}")))?;
        Self::connect_batching(pool, &options).await
    }

    /// Uses an existing pool (its connections should be configured with
    /// [`PgStore::pg_config`]); brings the schema up to date. Refuses a pool whose
    /// sessions run with `synchronous_commit` off.
    /// Batches as [`PgOptions::default`] says.
    pub async fn connect_with_pool(pool: Pool) -> Result<Self, StoreError> {
        Self::connect_batching(pool, &PgOptions::default()).await
    }

    async fn connect_batching(pool: Pool, options: &PgOptions) -> Result<Self, StoreError> {
        let mut client = pooled(&pool).await?;
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(conv::backend)?
            .get(0);
        if sync != "on" && sync != "remote_apply" && sync != "remote_write" {
            return Err(StoreError::Invalid(format!(
                "sessions run with synchronous_commit={sync}; this store needs it on"
            )));
        }
        schema::migrate(&mut client).await?;
        drop(client);
        let max = options.batch_max.max(1);
        let (batcher, rx) = mpsc::channel(max.saturating_mul(8).min(65_536));
        tokio::spawn(batch::run(
            pool.clone(),
            rx,
            batch::Batching {
                max,
                window: options.batch_window,
                concurrency: options.batch_concurrency.max(1),
            },
        ));
        Ok(Self { pool, batcher })
    }

    /// Closes the pool: operations waiting or started later fail with
    /// [`StoreError::Closed`]. Idempotent.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The schema version of the database (the highest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let r = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(conv::backend)?;
        Ok(r.get(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        pooled(&self.pool).await
    }

    /// Runs a read on a pooled connection.
    async fn read<T>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let client = self.client().await?;
        f(&client).await.map_err(|e| match e {
            TxError::Db(e) => conv::backend(e),
            TxError::Store(e) => e,
            TxError::Retry => StoreError::Backend("read lost a race".into()),
        })
    }
}

#[async_trait]
impl Accounts for PgStore {
    async fn create_account(&self, new: NewAccount) -> Result<DeviceRecord, StoreError> {
        in_tx!(self, |tx| accounts::create_account(&tx, &new).await)
    }

    async fn account(&self, handle: &str) -> Result<Option<AccountRecord>, StoreError> {
        self.read(async |c| accounts::account(c, handle).await)
            .await
    }

    async fn device(&self, addr: &DeviceAddr) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(async |c| accounts::device(c, addr).await).await
    }

    async fn create_invite(&self, code: &str, expires_at_ms: u64) -> Result<(), StoreError> {
        in_tx!(self, |tx| accounts::create_invite(&tx, code, expires_at_ms)
            .await)
    }

    async fn add_device(
        &self,
        handle: &str,
        device: NewDevice,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        in_tx!(self, |tx| accounts::add_device(&tx, handle, &device).await)
    }

    async fn add_device_within(
        &self,
        handle: &str,
        device: NewDevice,
        max_active: usize,
    ) -> Result<hushwire_store::AddDevice, StoreError> {
        in_tx!(self, |tx| accounts::add_device_within(
            &tx, handle, &device, max_active
        )
        .await)
    }

    async fn revoke_device(&self, addr: &DeviceAddr) -> Result<bool, StoreError> {
        in_tx!(self, |tx| accounts::revoke_device(&tx, addr).await)
    }

    async fn revoked_devices(&self, ids: &[DeviceId]) -> Result<Vec<DeviceId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read(async |c| links::revoked_devices(c, ids).await)
            .await
    }

    async fn set_device_list(
        &self,
        handle: &str,
        version: u64,
        signed: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| links::set_device_list(
            &tx, handle, version, &signed
        )
        .await)
    }

    async fn reset_account(&self, handle: &str, now_ms: u64) -> Result<bool, StoreError> {
        in_tx!(self, |tx| reset::reset_account(&tx, handle, now_ms).await)
    }
}

#[async_trait]
impl KeyDirectory for PgStore {
    async fn directory_secret(&self, candidate: bytes::Bytes) -> Result<bytes::Bytes, StoreError> {
        in_tx!(self, |tx| directory::directory_secret(&tx, &candidate)
            .await)
    }

    async fn directory_changes(&self, limit: usize) -> Result<Vec<DirectoryChange>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(async |c| directory::directory_changes(c, limit).await)
            .await
    }

    async fn append_directory_epoch(
        &self,
        epoch: DirectoryEpoch,
        consumed_through: u64,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| directory::append_epoch(
            &tx,
            &epoch,
            consumed_through
        )
        .await)
    }

    async fn directory_epochs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DirectoryEpoch>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(async |c| directory::directory_epochs(c, after, limit).await)
            .await
    }

    async fn directory_accounts(
        &self,
        handles: &[String],
    ) -> Result<Vec<DirectoryAccount>, StoreError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        self.read(async |c| directory::directory_accounts(c, handles).await)
            .await
    }

    async fn claim_directory_publisher(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<DirectoryLease, StoreError> {
        in_tx!(self, |tx| directory::claim_publisher(
            &tx, holder, now_ms, until_ms
        )
        .await)
    }
}

#[async_trait]
impl Links for PgStore {
    async fn create_link(
        &self,
        id: LinkId,
        owner: &DeviceAddr,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        in_tx!(self, |tx| links::create_link(
            &tx,
            &id,
            owner,
            expires_at_ms
        )
        .await)
    }

    async fn put_link_slot(
        &self,
        id: LinkId,
        slot: &str,
        data: bytes::Bytes,
        now_ms: u64,
    ) -> Result<PutSlot, StoreError> {
        in_tx!(self, |tx| links::put_link_slot(
            &tx, &id, slot, &data, now_ms
        )
        .await)
    }

    async fn link_slot(&self, id: LinkId, slot: &str, now_ms: u64) -> Result<LinkSlot, StoreError> {
        self.read(async |c| links::link_slot(c, &id, slot, now_ms).await)
            .await
    }

    async fn link_owner(&self, id: LinkId, now_ms: u64) -> Result<Option<DeviceAddr>, StoreError> {
        self.read(async |c| links::link_owner(c, &id, now_ms).await)
            .await
    }

    async fn delete_link(&self, id: LinkId) -> Result<bool, StoreError> {
        in_tx!(self, |tx| links::delete_link(&tx, &id).await)
    }

    async fn purge_expired_links(&self, now_ms: u64) -> Result<u64, StoreError> {
        in_tx!(self, |tx| links::purge_expired_links(&tx, now_ms).await)
    }
}

#[async_trait]
impl KeyPackages for PgStore {
    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
    ) -> Result<u32, StoreError> {
        in_tx!(self, |tx| accounts::add_key_packages(
            &tx, device, &packages
        )
        .await)
    }

    async fn claim_key_packages(
        &self,
        handle: &str,
        ciphersuite: u16,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        in_tx!(self, |tx| accounts::claim_key_packages(
            &tx,
            handle,
            ciphersuite
        )
        .await)
    }

    async fn key_package_stock(
        &self,
        device: DeviceId,
        ciphersuite: u16,
    ) -> Result<KeyPackageStock, StoreError> {
        self.read(async |c| accounts::key_package_stock(c, device, ciphersuite).await)
            .await
    }
}

#[async_trait]
impl Delivery for PgStore {
    async fn submit(&self, submission: Submission) -> Result<SubmitOutcome, StoreError> {
        if matches!(submission.kind, SubmitKind::Commit { .. }) {
            // Rare, and they change rosters: one transaction each (same group lock).
            return in_tx!(self, |tx| delivery::submit(&tx, &submission).await);
        }
        if self.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        self.batcher
            .send(batch::Op::Submit(Box::new(submission), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>, StoreError> {
        self.read(async |c| delivery::group(c, group_id).await)
            .await
    }

    async fn group_info(&self, group_id: &[u8]) -> Result<Option<GroupInfoRecord>, StoreError> {
        self.read(async |c| delivery::group_info(c, group_id).await)
            .await
    }
}

#[async_trait]
impl Mailboxes for PgStore {
    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.read(async |c| mailbox::fetch(c, device, after_seq, limit).await)
            .await
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        let (dev, up_to) = (conv::to_i64(device.0), conv::to_i64(up_to_seq));
        in_tx!(self, |tx| mailbox::ack(&tx, dev, up_to).await)
    }

    async fn ack_hint(&self, device: DeviceId, up_to_seq: u64) -> Result<(), StoreError> {
        if self.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        // Waits only for room in the queue, never for the commit.
        self.batcher
            .send(batch::Op::AckHint {
                device: conv::to_i64(device.0),
                up_to_seq: conv::to_i64(up_to_seq),
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn pending(&self, device: DeviceId) -> Result<u64, StoreError> {
        self.read(async |c| mailbox::pending(c, device).await).await
    }

    async fn devices_with_mail(
        &self,
        cursors: &[(DeviceId, u64)],
    ) -> Result<Vec<DeviceId>, StoreError> {
        self.read(async |c| mailbox::devices_with_mail(c, cursors).await)
            .await
    }

    async fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let now = conv::to_i64(now_ms);
        let mut bodies = 0u64;
        // Bounded: each step deletes what it looks at; at most EXPIRE_MAX_STEPS each.
        for _ in 0..EXPIRE_MAX_STEPS {
            let n = in_tx!(self, |tx| mailbox::expire_bodies_step(&tx, now).await)?;
            bodies += n;
            if n < mailbox::EXPIRE_STEP as u64 {
                break;
            }
        }
        for _ in 0..EXPIRE_MAX_STEPS {
            let n = in_tx!(self, |tx| mailbox::expire_dedup_step(&tx, now).await)?;
            if n < mailbox::EXPIRE_STEP as u64 {
                break;
            }
        }
        Ok(bodies)
    }
}

#[async_trait]
impl Blobs for PgStore {
    async fn create_blob(&self, new: NewBlob) -> Result<CreateBlobOutcome, StoreError> {
        in_tx!(self, |tx| blobs::create_blob(&tx, &new).await)
    }

    async fn blob(&self, id: &BlobId) -> Result<Option<BlobRecord>, StoreError> {
        self.read(async |c| blobs::blob(c, id).await).await
    }

    async fn blob_parts(&self, id: &BlobId) -> Result<Vec<BlobPart>, StoreError> {
        self.read(async |c| blobs::blob_parts(c, id).await).await
    }

    async fn record_blob_part(
        &self,
        id: &BlobId,
        part: BlobPart,
        now_ms: u64,
    ) -> Result<PartOutcome, StoreError> {
        in_tx!(self, |tx| blobs::record_blob_part(&tx, id, part, now_ms)
            .await)
    }

    async fn readable_blob(
        &self,
        id: &BlobId,
        device: DeviceId,
    ) -> Result<Option<BlobRecord>, StoreError> {
        self.read(async |c| blobs::readable_blob(c, id, device).await)
            .await
    }

    async fn record_blob_fetch(
        &self,
        id: &BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| blobs::record_blob_fetch(&tx, id, device, now_ms)
            .await)
    }

    async fn blob_readers(&self, id: &BlobId) -> Result<Vec<BlobReader>, StoreError> {
        self.read(async |c| blobs::blob_readers(c, id).await).await
    }

    async fn blob_usage(&self, account: &str, now_ms: u64) -> Result<u64, StoreError> {
        self.read(async |c| blobs::blob_usage(c, account, now_ms).await)
            .await
    }

    async fn begin_blob_deletion(&self, id: &BlobId, now_ms: u64) -> Result<bool, StoreError> {
        in_tx!(self, |tx| blobs::begin_blob_deletion(&tx, id, now_ms).await)
    }

    async fn sweep_blobs(&self, sweep: BlobSweep, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        in_tx!(self, |tx| blobs::sweep_blobs(&tx, sweep, limit).await)
    }

    async fn purge_blobs(&self, ids: &[BlobId]) -> Result<u64, StoreError> {
        in_tx!(self, |tx| blobs::purge_blobs(&tx, ids).await)
    }

    async fn known_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError> {
        self.read(async |c| blobs::known_blobs(c, ids).await).await
    }
}

#[async_trait]
impl Controls for PgStore {
    async fn set_block(
        &self,
        blocker: &str,
        handle: &str,
        blocked: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| controls::set_block(
            &tx, blocker, handle, blocked, now_ms
        )
        .await)
    }

    async fn blocked_by(&self, blocker: &str) -> Result<Vec<String>, StoreError> {
        self.read(async |c| controls::blocked_by(c, blocker).await)
            .await
    }

    async fn retract(
        &self,
        sender: DeviceId,
        group_id: &[u8],
        message_id: [u8; 16],
    ) -> Result<u64, StoreError> {
        in_tx!(self, |tx| controls::retract(
            &tx, sender, group_id, message_id
        )
        .await)
    }

    async fn relay_audience(
        &self,
        sender: DeviceId,
        group_id: &[u8],
    ) -> Result<RelayAudience, StoreError> {
        self.read(async |c| controls::relay_audience(c, sender, group_id).await)
            .await
    }

    async fn purge_disappearing(&self, now_ms: u64) -> Result<u64, StoreError> {
        let now = conv::to_i64(now_ms);
        let mut removed = 0u64;
        // Bounded: each step deletes the bodies it looks at (at most PURGE_STEP), and
        // only bodies due before `now_ms` are looked at.
        for _ in 0..EXPIRE_MAX_STEPS {
            let (n, more) = in_tx!(self, |tx| controls::purge_step(&tx, now).await)?;
            removed += n;
            if !more {
                break;
            }
        }
        Ok(removed)
    }

    async fn file_report(&self, report: NewReport) -> Result<u64, StoreError> {
        in_tx!(self, |tx| controls::file_report(&tx, &report).await)
    }

    async fn reports(&self, after_id: u64, limit: usize) -> Result<Vec<ReportRecord>, StoreError> {
        self.read(async |c| controls::reports(c, after_id, limit).await)
            .await
    }

    async fn close_report(&self, id: u64) -> Result<bool, StoreError> {
        in_tx!(self, |tx| controls::close_report(&tx, id).await)
    }
}
