//! The server's key directory: an akd tree in memory, persisted as an epoch log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::StorageManager;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, EpochHash, HistoryParams};
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use hushwire_proto::directory::{DirectoryValue, EPOCH_MARKER_LABEL, root_signing_payload};
use hushwire_proto::wire;
use hushwire_store::{DirectoryEpoch, Store, StoreError};
use prost::Message as _;
use protobuf::Message as _;
use rand::RngCore;
use tokio::sync::RwLock;
use zeroize::Zeroizing;

use crate::Config;

/// Most pending changes one publication takes.
const MAX_CHANGES_PER_EPOCH: usize = 50_000;
/// Most epoch records read from the store at a time.
const EPOCH_PAGE: usize = 256;
/// Most roots [`KeyDirectory::roots`] returns.
pub const MAX_ROOTS: usize = 1000;
/// Most handles one lookup request may name.
pub const MAX_LOOKUPS: usize = 256;

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
    /// Root of every epoch, index = epoch (0: the empty tree, unsigned).
    roots: Vec<wire::DirectoryRoot>,
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
    tree: RwLock<Tree>,
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("interval", &self.interval)
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
            // Replaced right below by the replayed tree.
            tree: RwLock::new(Tree {
                akd: empty_akd(secrets_vrf.clone()).await?,
                roots: Vec::new(),
                values: HashMap::new(),
            }),
        };
        let tree = this.build().await?;
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

    /// A fresh tree, replayed from the store's log.
    async fn build(&self) -> Result<Tree, DirectoryError> {
        let akd = empty_akd(self.secrets.vrf.clone()).await?;
        let EpochHash(epoch, hash) = akd.get_epoch_hash().await.map_err(akd_err)?;
        let mut tree = Tree {
            akd,
            roots: vec![self.root(epoch, &hash, 0, Vec::new())],
            values: HashMap::new(),
        };
        self.follow(&mut tree).await?;
        Ok(tree)
    }

    /// Applies the epochs stored after the tree's last one. Returns how many.
    async fn follow(&self, tree: &mut Tree) -> Result<usize, DirectoryError> {
        let mut applied = 0;
        loop {
            let last = tree.roots.len() as u64 - 1;
            let page = self.store.directory_epochs(last, EPOCH_PAGE).await?;
            if page.is_empty() {
                return Ok(applied);
            }
            for stored in page {
                self.apply(tree, stored).await?;
                applied += 1;
            }
        }
    }

    async fn apply(&self, tree: &mut Tree, stored: DirectoryEpoch) -> Result<(), DirectoryError> {
        let epoch = stored.epoch;
        let corrupt = |reason: String| DirectoryError::Corrupt { epoch, reason };
        let expected = tree.roots.len() as u64;
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
        let EpochHash(got, hash) = tree.akd.publish(updates).await.map_err(akd_err)?;
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
        tree.roots.push(root);
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
        self.follow(&mut tree).await?;
        let changes = self.store.directory_changes(MAX_CHANGES_PER_EPOCH).await?;
        let Some(consumed_through) = changes.iter().map(|c| c.seq).max() else {
            return Ok(PublishOutcome::NothingPending);
        };
        // Latest value per handle, in a stable order.
        let mut wanted: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for change in &changes {
            let label = change.handle.as_bytes().to_vec();
            if wanted.contains_key(&label) {
                continue;
            }
            let value = match self.store.account(&change.handle).await? {
                Some(record) => {
                    let list = record
                        .device_list
                        .and_then(|l| wire::SignedDeviceList::decode(l.data).ok());
                    match DirectoryValue::of_account(&record.account_key, list.as_ref()) {
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
        let next = tree.roots.len() as u64;
        let akd_updates = updates
            .iter()
            .map(|u| (AkdLabel(u.label.clone()), AkdValue(u.value.clone())))
            .collect();
        let EpochHash(epoch, hash) = match tree.akd.publish(akd_updates).await {
            Ok(h) => h,
            Err(e) => {
                // The in-memory tree may be half-updated: start over from the log.
                *tree = self.build().await?;
                return Err(akd_err(e));
            }
        };
        if epoch != next {
            *tree = self.build().await?;
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
                *tree = self.build().await?;
                return Err(e.into());
            }
        };
        if !appended {
            *tree = self.build().await?;
            return Ok(PublishOutcome::Lost);
        }
        for u in record.updates {
            tree.values.insert(u.label, u.value);
        }
        let root = self.root(epoch, &hash, now_ms, signature);
        tree.roots.push(root);
        Ok(PublishOutcome::Published { epoch, entries })
    }

    /// Follows epochs other nodes stored. Returns how many were applied.
    pub async fn catch_up(&self) -> Result<usize, DirectoryError> {
        let mut tree = self.tree.write().await;
        let result = self.follow(&mut tree).await;
        if result.is_err() {
            // Half-applied epochs must not stay: start over from the log.
            *tree = self.build().await?;
        }
        result
    }

    /// Publishes every interval until `shutdown` resolves. Errors are logged; the next
    /// round retries.
    pub async fn run_publisher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match self.publish(unix_ms()).await {
                Ok(PublishOutcome::Published { epoch, entries }) => {
                    tracing::info!(epoch, entries, "key directory epoch published");
                }
                Ok(PublishOutcome::Lost) => {
                    tracing::debug!("another node published the key directory epoch");
                }
                Ok(PublishOutcome::NothingPending) => {}
                Err(e) => tracing::error!(error = %e, "key directory publication failed"),
            }
        }
    }

    /// The latest root.
    pub async fn latest(&self) -> wire::DirectoryRoot {
        let tree = self.tree.read().await;
        tree.roots.last().cloned().unwrap_or_default()
    }

    /// The roots of epochs `after + 1 ..`, at most `limit` (capped at [`MAX_ROOTS`]).
    pub async fn roots(&self, after: u64, limit: usize) -> Vec<wire::DirectoryRoot> {
        let tree = self.tree.read().await;
        let start = usize::try_from(after.saturating_add(1)).unwrap_or(usize::MAX);
        tree.roots
            .iter()
            .skip(start)
            .take(limit.min(MAX_ROOTS))
            .cloned()
            .collect()
    }

    /// Lookup proofs of `handles` (at most [`MAX_LOOKUPS`]) against the latest root; an
    /// empty proof for a handle not published yet.
    pub async fn lookup(
        &self,
        handles: &[String],
    ) -> Result<wire::DirectoryLookupResponse, DirectoryError> {
        let tree = self.tree.read().await;
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
            root: tree.roots.last().cloned(),
            lookups,
        })
    }

    /// The complete history proof of `handle` against the latest root (empty when not
    /// published yet).
    pub async fn history(&self, handle: &str) -> Result<wire::DirectoryHistory, DirectoryError> {
        let tree = self.tree.read().await;
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
            root: tree.roots.last().cloned(),
            proof: proof.into(),
        })
    }

    /// The append-only proof from `epoch - 1` to `epoch`.
    pub async fn audit(&self, epoch: u64) -> Result<wire::DirectoryAudit, DirectoryError> {
        let tree = self.tree.read().await;
        if epoch == 0 || epoch >= tree.roots.len() as u64 {
            return Err(DirectoryError::UnknownEpoch(epoch));
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
