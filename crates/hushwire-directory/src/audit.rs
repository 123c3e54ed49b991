//! The auditor's checks: signed roots against pinned keys, and akd append-only proofs
//! between consecutive epochs. No I/O: `hushwire audit` fetches, this verifies.

use akd::storage::StorageManager;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::{AzksParallelismConfig, Digest, EpochHash};
use hushwire_proto::directory::verify_root;
use hushwire_proto::wire;
use protobuf::Message as _;

use crate::Config;

/// Why an audit failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// A root is malformed or its signature does not verify.
    #[error("epoch {epoch}: {reason}")]
    BadRoot {
        /// The epoch.
        epoch: u64,
        /// What is wrong.
        reason: String,
    },
    /// A root is signed by another key, or names another VRF key, than the pinned ones.
    #[error("epoch {epoch}: the directory's keys changed")]
    KeysChanged {
        /// The epoch.
        epoch: u64,
    },
    /// A root differs from the one recorded for the same epoch before: the server
    /// rewrote its history (or shows different views).
    #[error("epoch {epoch}: the root differs from the one audited before (history was rewritten)")]
    Fork {
        /// The epoch.
        epoch: u64,
    },
    /// The roots are not consecutive, or go backwards.
    #[error("expected epoch {expected}, got {got}")]
    Sequence {
        /// The epoch expected.
        expected: u64,
        /// The epoch received.
        got: u64,
    },
    /// The append-only proof does not verify.
    #[error("epoch {epoch}: the append-only proof does not verify: {reason}")]
    Proof {
        /// The epoch.
        epoch: u64,
        /// What failed.
        reason: String,
    },
}

/// The root hash of the empty directory (epoch 0), which no server signs.
pub async fn empty_root() -> Result<Digest, AuditError> {
    // The empty tree's root does not depend on the VRF key.
    let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
    let dir = akd::Directory::<Config, _, _>::new(
        storage,
        akd::ecvrf::HardCodedAkdVRF {},
        AzksParallelismConfig::default(),
    )
    .await
    .map_err(|e| AuditError::Proof {
        epoch: 0,
        reason: e.to_string(),
    })?;
    let EpochHash(_, hash) = dir.get_epoch_hash().await.map_err(|e| AuditError::Proof {
        epoch: 0,
        reason: e.to_string(),
    })?;
    Ok(hash)
}

/// Checks a signed root (epoch ≥ 1): well formed, signed under its key, and those keys
/// are `pinned` (VRF key, signing key) when given.
pub fn check_root(
    root: &wire::DirectoryRoot,
    pinned: Option<(&[u8], &[u8])>,
) -> Result<(), AuditError> {
    verify_root(root).map_err(|e| AuditError::BadRoot {
        epoch: root.epoch,
        reason: e.to_string(),
    })?;
    if let Some((vrf, signing)) = pinned
        && (vrf != &root.vrf_public_key[..] || signing != &root.signing_key[..])
    {
        return Err(AuditError::KeysChanged { epoch: root.epoch });
    }
    Ok(())
}

/// Verifies that `root` (epoch n) extends `previous_hash` (epoch n-1) append-only, by
/// the server's proof.
pub async fn verify_step(
    previous_hash: &[u8],
    root: &wire::DirectoryRoot,
    audit: &wire::DirectoryAudit,
) -> Result<(), AuditError> {
    let epoch = root.epoch;
    let fail = |reason: String| AuditError::Proof { epoch, reason };
    if audit.epoch != epoch {
        return Err(AuditError::Sequence {
            expected: epoch,
            got: audit.epoch,
        });
    }
    let proof = akd::proto::specs::types::AppendOnlyProof::parse_from_bytes(&audit.proof)
        .map_err(|e| fail(e.to_string()))?;
    let proof = akd::AppendOnlyProof::try_from(&proof).map_err(|e| fail(e.to_string()))?;
    let previous = akd::hash::try_parse_digest(previous_hash).map_err(fail)?;
    let current = akd::hash::try_parse_digest(&root.root_hash).map_err(fail)?;
    akd::auditor::audit_verify::<Config>(vec![previous, current], proof)
        .await
        .map_err(|e| fail(e.to_string()))
}
