//! The server's key directory: an akd tree in memory, persisted as an epoch log.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLockReadGuard};
use std::time::Duration;

use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::StorageManager;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, EpochHash, HistoryParams};
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use hushwire_proto::directory::{DirectoryValue, EPOCH_MARKER_LABEL, root_signing_payload};
use hushwire_proto::wire;
use hushwire_store::{DirectoryEpoch, MAX_DIRECTORY_ACCOUNTS, Store, StoreError};
use prost::Message as _;
use protobuf::Message as _;
use rand::RngCore;
use tokio::sync::RwLock;
use zeroize::Zeroizing;

use crate::Config;
use crate::worker::TreeWorker;

/// Most pending changes one publication takes.
const MAX_CHANGES_PER_EPOCH: usize = 50_000;
/// Most epoch records read from the store at a time.
const EPOCH_PAGE: usize = 256;
/// Most roots [`KeyDirectory::roots`] returns.
pub const MAX_ROOTS: usize = 1000;
/// Most handles one lookup request may name.
pub const MAX_LOOKUPS: usize = 256;
/// [`KeyDirectory::lease_state`]: not claimed yet (or given up).
const LEASE_UNKNOWN: u8 = 0;
/// [`KeyDirectory::lease_state`]: this node holds the publisher lease.
const LEASE_MINE: u8 = 1;
/// [`KeyDirectory::lease_state`]: another node holds it.
const LEASE_OTHER: u8 = 2;

/// Errors of the key directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// akd failed (the message is for logs).
    #[error("key directory: {0}")]
    Akd(String),
    /// The stored log does not replay to the roots it records: it was altered.
    #[error("the key directory log is corrupt at epoch {epoch}: {reason}")]
    Corrupt {
        /// The first epoch that does not replay.
        epoch: u64,
        /// What differs.
        reason: String,
    },
    /// No such epoch (yet).
    #[error("no epoch {0}")]
    UnknownEpoch(u64),
    /// The handle has no entry in the directory (not published yet).
    #[error("not in the key directory")]
    NotPublished,
    /// The tree is being replayed from the log (after a lost race or a failure): proofs
    /// wait until it holds every epoch again. The roots still answer.
    #[error("the key directory is being rebuilt")]
    Rebuilding,
}

fn akd_err(e: akd::errors::AkdError) -> DirectoryError {
    DirectoryError::Akd(e.to_string())
}

/// The persisted form of one epoch (the store's opaque `DirectoryEpoch::record`).
#[derive(Clone, PartialEq, prost::Message)]
struct EpochRecord {
    #[prost(message, repeated, tag = "1")]
    updates: Vec<Update>,
    #[prost(bytes = "vec", tag = "2")]
    root_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Update {
    #[prost(bytes = "vec", tag = "1")]
    label: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The directory's VRF key, handed to akd. Zeroized on drop; never printed.
#[derive(Clone)]
struct Vrf(Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for Vrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vrf(<redacted>)")
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for Vrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

type Akd = akd::Directory<Config, AsyncInMemoryDatabase, Vrf>;

/// The directory's two secrets, from the store's 64-byte directory secret.
struct Secrets {
    vrf: Vrf,
    signing: SigningKey,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    fn from_bytes(secret: &[u8]) -> Result<Self, DirectoryError> {
        if secret.len() != 64 {
            return Err(DirectoryError::Corrupt {
                epoch: 0,
                reason: format!("the directory secret has {} bytes, not 64", secret.len()),
            });
        }
        let mut vrf = Zeroizing::new([0u8; 32]);
        vrf.copy_from_slice(&secret[..32]);
        let mut signing = Zeroizing::new([0u8; 32]);
        signing.copy_from_slice(&secret[32..]);
        Ok(Self {
            vrf: Vrf(Arc::new(vrf)),
            signing: SigningKey::from_bytes(&signing),
        })
    }
}

/// The tree and what the server tracks beside it. Replaced whole on a rebuild.
struct Tree {
    akd: Akd,
    /// The tree's latest epoch (its root is `roots[epoch]` of the [`KeyDirectory`]).
    epoch: u64,
    /// The value last published for each label.
    values: HashMap<Vec<u8>, Vec<u8>>,
}

/// What [`KeyDirectory::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Nothing was pending.
    NothingPending,
    /// Epoch `epoch` was published with `entries` changed entries.
    Published {
        /// The new epoch.
        epoch: u64,
        /// Handles whose entry changed.
        entries: usize,
    },
    /// Another node published first; this node followed its epochs instead.
    Lost,
}

/// The server's key directory. Cheap to share (`Arc`); every method takes `&self`.
pub struct KeyDirectory {
    store: Arc<dyn Store>,
    secrets: Secrets,
    vrf_public: Bytes,
    interval: Duration,
    /// This node's name in the publisher lease (random, per process).
    node: String,
    /// Who held the publisher lease at this node's last claim: [`LEASE_UNKNOWN`],
    /// [`LEASE_MINE`] or [`LEASE_OTHER`] (logged when it changes).
    lease_state: AtomicU8,
    /// Held across a publication, a follow or a whole rebuild (seconds with a large
    /// epoch or a long log): proofs wait for it, the roots below do not.
    tree: RwLock<Tree>,
    /// Where epochs are inserted into the tree: a thread of its own at a lower CPU
    /// priority (see the `worker` module).
    worker: TreeWorker,
    /// Set while an insertion runs on the tree thread, cleared when its caller has the
    /// result. Still set under the tree's lock means the caller was dropped mid-way
    /// (a lookup whose client went away while it followed): the insertion ran on
    /// without the lock, so the tree is rebuilt before it serves again.
    inserting: AtomicBool,
    /// Root of every epoch, index = epoch (0: the empty tree, unsigned). Kept outside
    /// the tree's lock so `GET /v1/directory` and the auditors' root lists answer during
    /// a publication. Changed only under the tree's write lock. It only grows while the
    /// log is append-only (a rebuilt tree replays the same roots); a log rewritten under
    /// the node replaces what it no longer holds once a rebuild replays it.
    roots: std::sync::RwLock<Vec<wire::DirectoryRoot>>,
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("interval", &self.interval)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl KeyDirectory {
    /// Opens the directory of `store`: loads (or creates, once per deployment) its secret
    /// and replays every stored epoch, checking each root. `interval` is how often
    /// [`KeyDirectory::run_publisher`] publishes.
    pub async fn open(store: Arc<dyn Store>, interval: Duration) -> Result<Self, DirectoryError> {
        let mut candidate = Zeroizing::new([0u8; 64]);
        rand::rngs::OsRng.fill_bytes(candidate.as_mut_slice());
        let secret = Zeroizing::new(
            store
                .directory_secret(Bytes::copy_from_slice(candidate.as_slice()))
                .await?
                .to_vec(),
        );
        let secrets = Secrets::from_bytes(&secret)?;
        let vrf_public = secrets
            .vrf
            .get_vrf_public_key()
            .await
            .map_err(|e| DirectoryError::Akd(e.to_string()))?
            .as_bytes()
            .to_vec()
            .into();
        let secrets_vrf = secrets.vrf.clone();
        let mut this = Self {
            store,
            secrets,
            vrf_public,
            interval,
            node: format!("{:016x}", rand::random::<u64>()),
            lease_state: AtomicU8::new(LEASE_UNKNOWN),
            // Replaced right below by the replayed tree.
            tree: RwLock::new(Tree {
                akd: empty_akd(secrets_vrf.clone()).await?,
                epoch: 0,
                values: HashMap::new(),
            }),
            roots: std::sync::RwLock::new(Vec::new()),
            worker: TreeWorker::start(),
            inserting: AtomicBool::new(false),
        };
        let mut tree = this.empty_tree().await?;
        this.follow(&mut tree).await?;
        *this.tree.get_mut() = tree;
        Ok(this)
    }

    /// The directory's VRF public key (clients pin it).
    pub fn vrf_public_key(&self) -> &[u8] {
        &self.vrf_public
    }

    /// The root-signing public key (clients pin it).
    pub fn signing_key(&self) -> [u8; 32] {
        self.secrets.signing.verifying_key().to_bytes()
    }

    /// How often this node publishes.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// This node's name in the publisher lease.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a claim of the publisher lease lasts: two intervals, so the holder
    /// renews it every round with a round to spare, and a publication that takes about
    /// an interval (a bulk import) does not let it run out.
    fn lease(&self) -> u64 {
        u64::try_from(self.interval.as_millis().saturating_mul(2)).unwrap_or(u64::MAX)
    }

    /// Claims or renews the publisher lease at `now_ms` (see
    /// [`hushwire_store::KeyDirectory::claim_directory_publisher`]): whether this node
    /// publishes this round. Another node holding it is not an error.
    pub async fn claim_turn(&self, now_ms: u64) -> Result<bool, DirectoryError> {
        let lease = self
            .store
            .claim_directory_publisher(&self.node, now_ms, now_ms.saturating_add(self.lease()))
            .await?;
        let mine = lease.holder == self.node;
        let state = if mine { LEASE_MINE } else { LEASE_OTHER };
        if self.lease_state.swap(state, Ordering::Relaxed) != state {
            if mine {
                tracing::info!(node = %self.node, "this node now publishes the key directory");
            } else {
                tracing::debug!(
                    holder = %lease.holder,
                    until_ms = lease.until_ms,
                    "another node publishes the key directory"
                );
            }
        }
        Ok(mine)
    }

    /// Gives the publisher lease up if this node holds it (at shutdown), so another
    /// node takes over at its next round instead of when the lease runs out.
    pub async fn release_turn(&self) -> Result<(), DirectoryError> {
        if self.lease_state.swap(LEASE_UNKNOWN, Ordering::Relaxed) == LEASE_MINE {
            let now = unix_ms();
            self.store
                .claim_directory_publisher(&self.node, now, now)
                .await?;
        }
        Ok(())
    }

    fn root(
        &self,
        epoch: u64,
        root_hash: &[u8],
        published_at_ms: u64,
        signature: Vec<u8>,
    ) -> wire::DirectoryRoot {
        wire::DirectoryRoot {
            epoch,
            root_hash: Bytes::copy_from_slice(root_hash),
            published_at_ms,
            signature: signature.into(),
            vrf_public_key: self.vrf_public.clone(),
            signing_key: Bytes::copy_from_slice(&self.signing_key()),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The roots, read. Nothing panics while holding the lock, so a poisoned lock
    /// still holds a consistent list.
    fn roots_read(&self) -> RwLockReadGuard<'_, Vec<wire::DirectoryRoot>> {
        self.roots.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the root a tree reached. A rebuilt tree replays roots already recorded
    /// (the same ones, as long as the log is append-only): only a new epoch is added. A
    /// replayed root that differs means the log was rewritten under the node: the roots
    /// from that epoch on are replaced, so the node serves the history it can prove (and
    /// auditors who kept the old one see the rewrite).
    fn record_root(&self, root: wire::DirectoryRoot) {
        let mut roots = self.roots.write().unwrap_or_else(PoisonError::into_inner);
        let known = roots.len();
        let Ok(index) = usize::try_from(root.epoch) else {
            return;
        };
        match roots.get(index) {
            Some(recorded) if *recorded == root => {}
            Some(_) => {
                tracing::warn!(
                    epoch = root.epoch,
                    "the key directory log was rewritten: its roots from this epoch on are replaced"
                );
                roots.truncate(index);
                roots.push(root);
            }
            None if index == known => roots.push(root),
            // Trees advance one epoch at a time from 0 and record each: unreachable.
            None => tracing::error!(
                epoch = root.epoch,
                known,
                "a key directory root skipped epochs; not recorded"
            ),
        }
    }

    /// Forgets the roots after `epoch`: a completed replay ended there, so the log no
    /// longer holds them (it was rewritten).
    fn forget_roots_after(&self, epoch: u64) {
        let mut roots = self.roots.write().unwrap_or_else(PoisonError::into_inner);
        let keep = usize::try_from(epoch).map_or(usize::MAX, |e| e.saturating_add(1));
        if roots.len() > keep {
            tracing::warn!(
                epoch,
                forgotten = roots.len() - keep,
                "the key directory log was rewritten: it ends before the roots served"
            );
            roots.truncate(keep);
        }
    }

    /// The empty tree (epoch 0).
    async fn empty_tree(&self) -> Result<Tree, DirectoryError> {
        let akd = empty_akd(self.secrets.vrf.clone()).await?;
        let EpochHash(epoch, hash) = akd.get_epoch_hash().await.map_err(akd_err)?;
        self.record_root(self.root(epoch, &hash, 0, Vec::new()));
        Ok(Tree {
            akd,
            epoch,
            values: HashMap::new(),
        })
    }

    /// Replaces `tree` with one replayed from the store's log. The old tree goes first,
    /// so a rebuild never holds two trees (at 100,000 accounts each is ~400 MiB). If the
    /// replay fails, the tree stays behind the recorded roots: proofs answer
    /// [`DirectoryError::Rebuilding`] and the next follow goes on from where it stopped.
    async fn rebuild(&self, tree: &mut Tree) -> Result<(), DirectoryError> {
        *tree = self.empty_tree().await?;
        // An insertion left running by a dropped caller changes the old tree, not this one.
        self.inserting.store(false, Ordering::SeqCst);
        self.follow(tree).await?;
        self.forget_roots_after(tree.epoch);
        Ok(())
    }

    /// The tree for a proof, after following any epoch another node stored since: once
    /// one node has served an epoch (appended before it is served), every node proves
    /// against it or a later one, so a client moving between nodes never sees the
    /// directory go back. One indexed store query when nothing is new.
    async fn current_tree(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Tree>, DirectoryError> {
        let newer = self.store.directory_epochs(self.latest().epoch, 1).await?;
        if !newer.is_empty() || self.inserting.load(Ordering::SeqCst) {
            self.catch_up().await?;
        }
        let tree = self.tree.read().await;
        if self.inserting.load(Ordering::SeqCst) {
            // Another caller was dropped mid-insertion since: its catch-up rebuilds.
            return Err(DirectoryError::Rebuilding);
        }
        Ok(tree)
    }

    /// The latest root, when `tree` holds every recorded epoch. Called with the tree's
    /// lock held (read or write): the roots grow only under its write lock.
    fn complete_root(&self, tree: &Tree) -> Result<wire::DirectoryRoot, DirectoryError> {
        let latest = self.latest();
        if tree.epoch == latest.epoch {
            Ok(latest)
        } else {
            Err(DirectoryError::Rebuilding)
        }
    }

    /// Applies the epochs stored after the tree's last one. Returns how many.
    async fn follow(&self, tree: &mut Tree) -> Result<usize, DirectoryError> {
        let mut applied = 0;
        loop {
            let page = self.store.directory_epochs(tree.epoch, EPOCH_PAGE).await?;
            if page.is_empty() {
                return Ok(applied);
            }
            for stored in page {
                self.apply(tree, stored).await?;
                applied += 1;
            }
        }
    }

    /// Inserts `updates` as the tree's next epoch, on the tree thread. Called with the
    /// tree's write lock held. On an error the tree may be half-changed: callers rebuild.
    async fn insert(
        &self,
        tree: &mut Tree,
        updates: Vec<(AkdLabel, AkdValue)>,
    ) -> Result<EpochHash, DirectoryError> {
        let akd = tree.akd.clone();
        self.inserting.store(true, Ordering::SeqCst);
        let done = self
            .worker
            .run(async move { akd.publish(updates).await })
            .await;
        self.inserting.store(false, Ordering::SeqCst);
        match done {
            Some(result) => result.map_err(akd_err),
            None => Err(DirectoryError::Akd(
                "the insertion failed on the tree thread".into(),
            )),
        }
    }

    async fn apply(&self, tree: &mut Tree, stored: DirectoryEpoch) -> Result<(), DirectoryError> {
        let epoch = stored.epoch;
        let corrupt = |reason: String| DirectoryError::Corrupt { epoch, reason };
        let expected = tree.epoch + 1;
        if epoch != expected {
            return Err(corrupt(format!("expected epoch {expected}")));
        }
        let record =
            EpochRecord::decode(stored.record.as_ref()).map_err(|e| corrupt(e.to_string()))?;
        let updates = record
            .updates
            .iter()
            .map(|u| (AkdLabel(u.label.clone()), AkdValue(u.value.clone())))
            .collect();
        let EpochHash(got, hash) = self.insert(tree, updates).await?;
        if got != epoch {
            return Err(corrupt(format!("replay reached epoch {got}")));
        }
        if hash.as_slice() != record.root_hash.as_slice() {
            return Err(corrupt(
                "the replayed root differs from the stored one".into(),
            ));
        }
        let root = self.root(epoch, &hash, stored.published_at_ms, record.signature);
        hushwire_proto::directory::verify_root(&root)
            .map_err(|e| corrupt(format!("stored root: {e}")))?;
        for u in record.updates {
            tree.values.insert(u.label, u.value);
        }
        tree.epoch = epoch;
        self.record_root(root);
        Ok(())
    }

    /// Publishes the pending changes as the next epoch, after following any epochs other
    /// nodes stored. Each changed handle gets its current account's value (or
    /// [`DirectoryValue::Released`] when its account is gone); unchanged values are
    /// skipped; the epoch marker records the publication time, so an epoch always
    /// changes the tree. When another node stored the same epoch first, the tree is
    /// rebuilt from the log.
    pub async fn publish(&self, now_ms: u64) -> Result<PublishOutcome, DirectoryError> {
        let mut tree = self.tree.write().await;
        if self.inserting.load(Ordering::SeqCst) {
            self.rebuild(&mut tree).await?;
        }
        if let Err(e) = self.follow(&mut tree).await {
            // A half-applied epoch must not stay: start over from the log.
            self.rebuild(&mut tree).await?;
            return Err(e);
        }
        let changes = self.store.directory_changes(MAX_CHANGES_PER_EPOCH).await?;
        let Some(consumed_through) = changes.iter().map(|c| c.seq).max() else {
            return Ok(PublishOutcome::NothingPending);
        };
        // The changed handles, once each; their accounts, a batch per round trip.
        let mut handles: Vec<String> = changes.iter().map(|c| c.handle.clone()).collect();
        handles.sort_unstable();
        handles.dedup();
        let mut accounts = HashMap::with_capacity(handles.len());
        for batch in handles.chunks(MAX_DIRECTORY_ACCOUNTS) {
            for account in self.store.directory_accounts(batch).await? {
                accounts.insert(account.handle.clone(), account);
            }
        }
        // Latest value per handle, in a stable order.
        let mut wanted: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for handle in handles {
            let account = accounts.remove(&handle);
            let label = handle.into_bytes();
            let value = match account {
                Some(account) => {
                    let list = account
                        .device_list
                        .and_then(|l| wire::SignedDeviceList::decode(l.data).ok());
                    match DirectoryValue::of_account(&account.account_key, list.as_ref()) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::error!(error = %e, "an account does not make a directory value; skipped");
                            continue;
                        }
                    }
                }
                None if tree.values.contains_key(&label) => DirectoryValue::Released,
                // Never published and gone: nothing to say.
                None => continue,
            };
            wanted.insert(label, value.encode());
        }
        wanted.retain(|label, value| tree.values.get(label) != Some(value));
        let entries = wanted.len();
        let mut updates: Vec<Update> = wanted
            .into_iter()
            .map(|(label, value)| Update { label, value })
            .collect();
        updates.push(Update {
            label: EPOCH_MARKER_LABEL.to_vec(),
            value: now_ms.to_be_bytes().to_vec(),
        });
        let next = tree.epoch + 1;
        let akd_updates = updates
            .iter()
            .map(|u| (AkdLabel(u.label.clone()), AkdValue(u.value.clone())))
            .collect();
        let EpochHash(epoch, hash) = match self.insert(&mut tree, akd_updates).await {
            Ok(h) => h,
            Err(e) => {
                // The in-memory tree may be half-updated: start over from the log.
                self.rebuild(&mut tree).await?;
                return Err(e);
            }
        };
        if epoch != next {
            self.rebuild(&mut tree).await?;
            return Err(DirectoryError::Akd(format!(
                "publish reached epoch {epoch}, expected {next}"
            )));
        }
        let signature = self
            .secrets
            .signing
            .sign(&root_signing_payload(epoch, &hash, now_ms))
            .to_bytes()
            .to_vec();
        let record = EpochRecord {
            updates,
            root_hash: hash.to_vec(),
            signature: signature.clone(),
        };
        let stored = DirectoryEpoch {
            epoch,
            published_at_ms: now_ms,
            record: Bytes::from(record.encode_to_vec()),
        };
        let appended = match self
            .store
            .append_directory_epoch(stored, consumed_through)
            .await
        {
            Ok(appended) => appended,
            Err(e) => {
                self.rebuild(&mut tree).await?;
                return Err(e.into());
            }
        };
        if !appended {
            self.rebuild(&mut tree).await?;
            return Ok(PublishOutcome::Lost);
        }
        for u in record.updates {
            tree.values.insert(u.label, u.value);
        }
        tree.epoch = epoch;
        self.record_root(self.root(epoch, &hash, now_ms, signature));
        Ok(PublishOutcome::Published { epoch, entries })
    }

    /// Follows epochs other nodes stored. Returns how many were applied.
    pub async fn catch_up(&self) -> Result<usize, DirectoryError> {
        let mut tree = self.tree.write().await;
        if self.inserting.load(Ordering::SeqCst) {
            self.rebuild(&mut tree).await?;
        }
        let result = self.follow(&mut tree).await;
        if result.is_err() {
            // Half-applied epochs must not stay: start over from the log.
            self.rebuild(&mut tree).await?;
        }
        result
    }

    /// Publishes about every interval until `shutdown` resolves, then gives the
    /// publisher lease up. Every round follows the epochs other nodes stored; only the
    /// node holding the publisher lease (claimed or renewed each round, see
    /// [`KeyDirectory::claim_turn`]) publishes, so nodes do not race for the same epoch,
    /// where each loser replays the whole log. Nodes start their rounds at random
    /// offsets within the interval. Errors are logged; the next round retries.
    pub async fn run_publisher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let offset = self.interval.mul_f64(rand::random::<f64>());
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let now = unix_ms();
            if let Err(e) = self.catch_up().await {
                tracing::error!(error = %e, "following the key directory failed");
                continue;
            }
            match self.claim_turn(now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "claiming the key directory publisher lease failed");
                    continue;
                }
            }
            let started = std::time::Instant::now();
            match self.publish(now).await {
                Ok(PublishOutcome::Published { epoch, entries }) => {
                    let elapsed_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(epoch, entries, elapsed_ms, "key directory epoch published");
                }
                Ok(PublishOutcome::Lost) => {
                    tracing::debug!("another node published the key directory epoch");
                }
                Ok(PublishOutcome::NothingPending) => {}
                Err(e) => tracing::error!(error = %e, "key directory publication failed"),
            }
        }
        if let Err(e) = self.release_turn().await {
            tracing::warn!(error = %e, "giving up the key directory publisher lease failed");
        }
    }

    /// The latest root. Never waits for a publication or a rebuild.
    pub fn latest(&self) -> wire::DirectoryRoot {
        self.roots_read().last().cloned().unwrap_or_default()
    }

    /// The roots of epochs `after + 1 ..`, at most `limit` (capped at [`MAX_ROOTS`]).
    /// Never waits for a publication or a rebuild.
    pub fn roots(&self, after: u64, limit: usize) -> Vec<wire::DirectoryRoot> {
        let start = usize::try_from(after.saturating_add(1)).unwrap_or(usize::MAX);
        self.roots_read()
            .iter()
            .skip(start)
            .take(limit.min(MAX_ROOTS))
            .cloned()
            .collect()
    }

    /// [`KeyDirectory::latest`] as the store holds it now: the latest root this node
    /// applied, or, when another node stored newer epochs since, the newest of those,
    /// read from its record (signed with the deployment's key; this node checks the
    /// root against its own replay when it follows). Waits for the store, never for the
    /// tree. With the store unreachable, this node's latest root.
    pub async fn stored_latest(&self) -> wire::DirectoryRoot {
        let mut latest = self.latest();
        loop {
            match self.store.directory_epochs(latest.epoch, EPOCH_PAGE).await {
                Ok(page) => {
                    let full = page.len() == EPOCH_PAGE;
                    let Some(last) = page.into_iter().next_back() else {
                        return latest;
                    };
                    match self.stored_root(last) {
                        Some(root) => latest = root,
                        None => return latest,
                    }
                    if !full {
                        return latest;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the store did not answer; serving this node's latest root");
                    return latest;
                }
            }
        }
    }

    /// [`KeyDirectory::roots`] as the store holds them now: the roots this node applied,
    /// then those of epochs another node stored since, read from their records (see
    /// [`KeyDirectory::stored_latest`]). With the store unreachable, this node's roots.
    pub async fn stored_roots(&self, after: u64, limit: usize) -> Vec<wire::DirectoryRoot> {
        let limit = limit.min(MAX_ROOTS);
        let (mut roots, applied) = {
            let all = self.roots_read();
            let start = usize::try_from(after.saturating_add(1)).unwrap_or(usize::MAX);
            let roots: Vec<_> = all.iter().skip(start).take(limit).cloned().collect();
            (roots, all.last().map_or(0, |r| r.epoch))
        };
        if roots.len() < limit {
            let from = after.max(applied);
            match self.store.directory_epochs(from, limit - roots.len()).await {
                Ok(page) => roots.extend(page.into_iter().map_while(|e| self.stored_root(e))),
                Err(e) => {
                    tracing::debug!(error = %e, "the store did not answer; serving this node's roots");
                }
            }
        }
        roots
    }

    /// The signed root in a stored epoch's record, or None (logged) when the record
    /// does not decode or its signature does not verify: then only a replay can tell.
    fn stored_root(&self, stored: DirectoryEpoch) -> Option<wire::DirectoryRoot> {
        let record = match EpochRecord::decode(stored.record.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(epoch = stored.epoch, error = %e, "a stored directory epoch does not decode");
                return None;
            }
        };
        let root = self.root(
            stored.epoch,
            &record.root_hash,
            stored.published_at_ms,
            record.signature,
        );
        match hushwire_proto::directory::verify_root(&root) {
            Ok(()) => Some(root),
            Err(e) => {
                tracing::warn!(epoch = stored.epoch, error = %e, "a stored directory root does not verify");
                None
            }
        }
    }

    /// Lookup proofs of `handles` (at most [`MAX_LOOKUPS`]) against the latest root, after
    /// following the store; an empty proof for a handle not published yet.
    pub async fn lookup(
        &self,
        handles: &[String],
    ) -> Result<wire::DirectoryLookupResponse, DirectoryError> {
        let tree = self.current_tree().await?;
        let root = self.complete_root(&tree)?;
        let mut lookups = Vec::with_capacity(handles.len());
        for handle in handles.iter().take(MAX_LOOKUPS) {
            let label = handle.as_bytes().to_vec();
            let proof = if tree.values.contains_key(&label) {
                let (proof, _) = tree.akd.lookup(AkdLabel(label)).await.map_err(akd_err)?;
                akd::proto::specs::types::LookupProof::from(&proof)
                    .write_to_bytes()
                    .map_err(|e| DirectoryError::Akd(e.to_string()))?
            } else {
                Vec::new()
            };
            lookups.push(wire::DirectoryLookup {
                handle: handle.clone(),
                proof: proof.into(),
            });
        }
        Ok(wire::DirectoryLookupResponse {
            root: Some(root),
            lookups,
        })
    }

    /// The complete history proof of `handle` against the latest root, after following
    /// the store (empty when not published yet).
    pub async fn history(&self, handle: &str) -> Result<wire::DirectoryHistory, DirectoryError> {
        let tree = self.current_tree().await?;
        let root = self.complete_root(&tree)?;
        let label = handle.as_bytes().to_vec();
        let proof = if tree.values.contains_key(&label) {
            let (proof, _) = tree
                .akd
                .key_history(&AkdLabel(label), HistoryParams::Complete)
                .await
                .map_err(akd_err)?;
            akd::proto::specs::types::HistoryProof::from(&proof)
                .write_to_bytes()
                .map_err(|e| DirectoryError::Akd(e.to_string()))?
        } else {
            Vec::new()
        };
        Ok(wire::DirectoryHistory {
            root: Some(root),
            proof: proof.into(),
        })
    }

    /// The append-only proof from `epoch - 1` to `epoch`.
    pub async fn audit(&self, epoch: u64) -> Result<wire::DirectoryAudit, DirectoryError> {
        let tree = self.current_tree().await?;
        if epoch == 0 || epoch > self.latest().epoch {
            return Err(DirectoryError::UnknownEpoch(epoch));
        }
        if epoch > tree.epoch {
            return Err(DirectoryError::Rebuilding);
        }
        let proof = tree.akd.audit(epoch - 1, epoch).await.map_err(akd_err)?;
        let proof = akd::proto::specs::types::AppendOnlyProof::from(&proof)
            .write_to_bytes()
            .map_err(|e| DirectoryError::Akd(e.to_string()))?;
        Ok(wire::DirectoryAudit {
            epoch,
            proof: proof.into(),
        })
    }
}

async fn empty_akd(vrf: Vrf) -> Result<Akd, DirectoryError> {
    let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
    akd::Directory::new(storage, vrf, AzksParallelismConfig::default())
        .await
        .map_err(akd_err)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    // Test code: failing loudly is the point.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use hushwire_store::NewAccount;
    use hushwire_store_sqlite::{SqliteOptions, SqliteStore};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// Polls `fut` once: whether it finished without waiting on anything.
    fn ready_now<F: Future>(fut: F) -> Poll<F::Output> {
        let mut fut = pin!(fut);
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A new account whose account key is `key` repeated.
    fn account(handle: &str, key: u8) -> NewAccount {
        NewAccount {
            handle: handle.to_owned(),
            account_key: [key; 32].to_vec(),
            device_key: [1u8; 32].to_vec(),
            cert_created_at_ms: NOW - 5,
            cert_signature: vec![2u8; 64],
            invite: None,
            now_ms: NOW,
        }
    }

    async fn directory_with_epochs(epochs: u64) -> (tempfile::TempDir, KeyDirectory) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("db"), SqliteOptions::default()).unwrap());
        let directory = KeyDirectory::open(Arc::clone(&store), Duration::from_secs(30))
            .await
            .unwrap();
        for n in 0..epochs {
            let handle = format!("user{n}");
            let key = u8::try_from(n + 1).unwrap();
            store.create_account(account(&handle, key)).await.unwrap();
            let outcome = directory.publish(NOW + n).await.unwrap();
            assert_eq!(
                outcome,
                PublishOutcome::Published {
                    epoch: n + 1,
                    entries: 1
                }
            );
        }
        (dir, directory)
    }

    /// Another node on the store of `directory_with_epochs`.
    async fn second_node(dir: &tempfile::TempDir) -> KeyDirectory {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("db"), SqliteOptions::default()).unwrap());
        KeyDirectory::open(store, Duration::from_secs(30))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn roots_answer_while_a_publication_holds_the_tree() {
        let (_dir, directory) = directory_with_epochs(3).await;
        let before = directory.roots(0, 10);
        assert_eq!(
            before.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            [1, 2, 3]
        );

        // What a long publication or a rebuild holds.
        let held = directory.tree.write().await;
        assert_eq!(directory.latest().epoch, 3);
        assert_eq!(directory.roots(0, 10), before);
        assert_eq!(directory.roots(1, 1)[0].epoch, 2);
        // Proofs need the tree: they wait for it.
        assert!(ready_now(directory.lookup(&["user0".to_owned()])).is_pending());
        assert!(ready_now(directory.audit(2)).is_pending());
        drop(held);

        let response = directory.lookup(&["user0".to_owned()]).await.unwrap();
        assert_eq!(response.root.unwrap(), before[2]);
        assert_eq!(directory.audit(3).await.unwrap().epoch, 3);
        assert!(matches!(
            directory.audit(4).await,
            Err(DirectoryError::UnknownEpoch(4))
        ));
    }

    /// Drives `fut` until it has handed an insertion to the tree thread, drops it there,
    /// then lets the insertion run on to its end.
    async fn drop_mid_insertion<T>(directory: &KeyDirectory, fut: impl Future<Output = T>) {
        // The tree thread is held, so the insertion cannot finish (and `fut` with it)
        // before the test sees it begin, however fast a small epoch is.
        let release = directory.worker.pause();
        // Boxed, so that dropping it drops the tree's lock it holds.
        let mut fut = Box::pin(fut);
        let started = std::time::Instant::now();
        while !directory.inserting.load(Ordering::SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no insertion began"
            );
            tokio::select! {
                biased;
                _ = &mut fut => panic!("it ended before it inserted"),
                () = tokio::task::yield_now() => {}
            }
        }
        drop(fut);
        drop(release);
    }

    #[tokio::test]
    async fn a_publication_dropped_mid_insertion_never_shows_its_epoch() {
        let (_dir, directory) = directory_with_epochs(1).await;
        let published = directory.latest();
        directory
            .store
            .create_account(account("late", 9))
            .await
            .unwrap();
        // E.g. the server shutting down mid-publication: the insertion runs on to its end
        // on the tree thread, into a tree whose epoch 2 is never stored.
        drop_mid_insertion(&directory, directory.publish(NOW + 10)).await;

        // Proofs still verify against the published root: the tree was rebuilt first.
        let response = directory.lookup(&["user0".to_owned()]).await.unwrap();
        let root = response.root.unwrap();
        assert_eq!(root, published);
        let proof =
            akd::proto::specs::types::LookupProof::parse_from_bytes(&response.lookups[0].proof)
                .unwrap();
        akd::client::lookup_verify::<Config>(
            &root.vrf_public_key,
            akd::hash::try_parse_digest(&root.root_hash).unwrap(),
            root.epoch,
            AkdLabel(b"user0".to_vec()),
            akd::LookupProof::try_from(&proof).unwrap(),
        )
        .unwrap();
        // The change is still pending: the next publication is epoch 2 and carries it.
        assert_eq!(
            directory.publish(NOW + 20).await.unwrap(),
            PublishOutcome::Published {
                epoch: 2,
                entries: 1
            }
        );
    }

    #[tokio::test]
    async fn a_lookup_dropped_while_its_follow_inserts_leaves_no_half_tree() {
        let (dir, node1) = directory_with_epochs(1).await;
        let node2 = second_node(&dir).await;
        for n in 0..50u8 {
            node1
                .store
                .create_account(account(&format!("late{n}"), n))
                .await
                .unwrap();
        }
        let published = node1.publish(NOW + 10).await.unwrap();
        assert_eq!(
            published,
            PublishOutcome::Published {
                epoch: 2,
                entries: 50
            }
        );

        // Node 2 follows inside a lookup; its client goes away while the epoch is being
        // inserted on the tree thread.
        let handles = ["late7".to_owned()];
        drop_mid_insertion(&node2, node2.lookup(&handles)).await;
        assert!(node2.inserting.load(Ordering::SeqCst));

        // The next user rebuilds from the log: node 2 proves against node 1's epoch.
        let response = node2.lookup(&handles).await.unwrap();
        assert_eq!(response.root.unwrap(), node1.latest());
        assert!(!response.lookups[0].proof.is_empty());
        assert!(!node2.inserting.load(Ordering::SeqCst));
        assert_eq!(node2.tree.read().await.epoch, 2);
        assert_eq!(node2.audit(2).await.unwrap().epoch, 2);
    }

    #[tokio::test]
    async fn a_rebuild_keeps_the_recorded_roots_and_proofs_wait_for_it() {
        let (_dir, directory) = directory_with_epochs(2).await;
        let before = directory.roots(0, 10);
        assert_eq!(before.len(), 2);

        // A replay that stopped at epoch 0 (the store failed mid-way): the roots stay,
        // proofs say "rebuilding" rather than answer from an older tree.
        *directory.tree.write().await = directory.empty_tree().await.unwrap();
        assert_eq!(directory.roots(0, 10), before);
        assert_eq!(directory.latest(), before[1]);
        let handles = ["user0".to_owned()];
        assert!(matches!(
            directory.lookup(&handles).await,
            Err(DirectoryError::Rebuilding)
        ));
        assert!(matches!(
            directory.history("user0").await,
            Err(DirectoryError::Rebuilding)
        ));
        assert!(matches!(
            directory.audit(1).await,
            Err(DirectoryError::Rebuilding)
        ));

        // The next follow goes on from there.
        assert_eq!(directory.catch_up().await.unwrap(), 2);
        let response = directory.lookup(&handles).await.unwrap();
        assert_eq!(response.root.unwrap(), before[1]);
        assert!(!response.lookups[0].proof.is_empty());

        let mut tree = directory.tree.write().await;
        directory.rebuild(&mut tree).await.unwrap();
        assert_eq!(tree.epoch, 2);
        drop(tree);
        assert_eq!(directory.roots(0, 10), before);
        assert_eq!(directory.roots_read()[0].epoch, 0);
        assert!(directory.roots_read()[0].signature.is_empty());
    }

    #[tokio::test]
    async fn a_rebuild_on_a_rewritten_log_serves_the_rewritten_history() {
        let (dir, directory) = directory_with_epochs(3).await;
        let old = directory.roots(0, 10);
        // The operator cuts the log back to epoch 1.
        let db = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        db.execute("DELETE FROM directory_epochs WHERE epoch > 1", [])
            .unwrap();
        drop(db);

        let mut tree = directory.tree.write().await;
        directory.rebuild(&mut tree).await.unwrap();
        assert_eq!(tree.epoch, 1);
        drop(tree);
        assert_eq!(directory.roots(0, 10), old[..1]);
        assert_eq!(directory.latest(), old[0]);
        directory.lookup(&["user0".to_owned()]).await.unwrap();

        // The next epoch 2 is a different one, and it is what the node serves.
        directory
            .store
            .create_account(account("late", 99))
            .await
            .unwrap();
        assert!(matches!(
            directory.publish(NOW + 100).await.unwrap(),
            PublishOutcome::Published { epoch: 2, .. }
        ));
        let now = directory.roots(0, 10);
        assert_eq!(now.len(), 2);
        assert_ne!(now[1], old[1]);
        let response = directory.lookup(&["late".to_owned()]).await.unwrap();
        assert_eq!(response.root.unwrap(), now[1]);
    }

    #[tokio::test]
    async fn a_proof_follows_the_epochs_another_node_stored() {
        let (dir, a) = directory_with_epochs(1).await;
        let b = second_node(&dir).await;
        a.store.create_account(account("late", 99)).await.unwrap();
        assert!(matches!(
            a.publish(NOW + 100).await.unwrap(),
            PublishOutcome::Published { epoch: 2, .. }
        ));
        // B has not followed yet: its latest root lags, its proofs do not.
        assert_eq!(b.latest().epoch, 1);
        let response = b.lookup(&["late".to_owned()]).await.unwrap();
        assert_eq!(response.root.unwrap(), a.latest());
        assert!(!response.lookups[0].proof.is_empty());
        assert_eq!(b.latest(), a.latest());
        assert_eq!(b.history("late").await.unwrap().root.unwrap().epoch, 2);
    }

    #[tokio::test]
    async fn roots_and_audits_show_the_epochs_another_node_stored() {
        let (dir, a) = directory_with_epochs(2).await;
        let b = second_node(&dir).await;
        a.store.create_account(account("late", 99)).await.unwrap();
        assert!(matches!(
            a.publish(NOW + 100).await.unwrap(),
            PublishOutcome::Published { epoch: 3, .. }
        ));
        // B has not followed: its own view lags, the stored view does not.
        assert_eq!(b.latest().epoch, 2);
        assert_eq!(b.stored_latest().await, a.latest());
        assert_eq!(b.stored_roots(0, 10).await, a.roots(0, 10));
        assert_eq!(b.stored_roots(1, 10).await, a.roots(1, 10));
        assert_eq!(b.stored_roots(2, 10).await, a.roots(2, 10));
        assert_eq!(b.stored_roots(0, 2).await, a.roots(0, 2));
        assert!(b.stored_roots(3, 10).await.is_empty());
        assert_eq!(b.latest().epoch, 2, "reading roots does not touch the tree");
        // An auditor walking those roots gets B's proof of epoch 3 (B follows first).
        let proof = b.audit(3).await.unwrap();
        let roots = b.roots(1, 10);
        assert_eq!((roots[0].epoch, roots[1].epoch), (2, 3));
        crate::audit::verify_step(&roots[0].root_hash, &roots[1], &proof)
            .await
            .unwrap();

        // A stored record whose root is not validly signed is not served.
        let mut bad = a.store.directory_epochs(2, 1).await.unwrap().remove(0);
        let mut record = EpochRecord::decode(bad.record.as_ref()).unwrap();
        record.signature[0] ^= 1;
        bad.epoch = 4;
        bad.record = Bytes::from(record.encode_to_vec());
        assert!(a.store.append_directory_epoch(bad, 0).await.unwrap());
        assert_eq!(b.stored_latest().await, a.latest());
        assert_eq!(
            b.stored_roots(0, 10).await,
            a.roots(0, 10),
            "epochs 1-3, not 4"
        );
        assert_eq!(a.roots(0, 10).len(), 3);
    }

    #[tokio::test]
    async fn one_node_publishes_while_it_renews_its_lease() {
        let (dir, a) = directory_with_epochs(0).await;
        let b = second_node(&dir).await;
        assert_ne!(a.node(), b.node());
        // The lease lasts two intervals (60 s); each round renews it.
        assert!(a.claim_turn(NOW).await.unwrap());
        assert!(!b.claim_turn(NOW + 1).await.unwrap());
        assert!(a.claim_turn(NOW + 30_000).await.unwrap());
        assert!(!b.claim_turn(NOW + 60_000).await.unwrap());
        assert!(a.claim_turn(NOW + 60_000).await.unwrap());
        // a stops renewing (a crash): b takes over when the lease runs out.
        assert!(!b.claim_turn(NOW + 119_999).await.unwrap());
        assert!(b.claim_turn(NOW + 120_000).await.unwrap());
        assert!(!a.claim_turn(NOW + 120_001).await.unwrap());
    }

    #[tokio::test]
    async fn a_node_shutting_down_hands_the_lease_over() {
        let (dir, a) = directory_with_epochs(0).await;
        let b = second_node(&dir).await;
        let now = unix_ms();
        assert!(a.claim_turn(now).await.unwrap());
        assert!(!b.claim_turn(now).await.unwrap());
        // Releasing what b does not hold changes nothing.
        b.release_turn().await.unwrap();
        assert!(!b.claim_turn(now).await.unwrap());
        a.release_turn().await.unwrap();
        assert!(b.claim_turn(unix_ms()).await.unwrap());
    }
}
