//! The key directory's persistent state: its secret, the append-only log of published
//! epochs, and the queue of handles whose entries must be (re)published.
//!
//! The server keeps an auditable key directory (key transparency) in memory and
//! persists it here as a log of epochs; every node rebuilds it by replaying the log.
//! The store never interprets an epoch's record or the secret: both are opaque bytes.
//!
//! Pending changes are added by the store itself, in the same transaction as the
//! change they announce: [`Accounts::create_account`](crate::Accounts::create_account)
//! (on success), [`Accounts::set_device_list`](crate::Accounts::set_device_list) (only
//! when it stored the list) and [`Accounts::reset_account`](crate::Accounts::reset_account).
//! A publisher reads them with [`KeyDirectory::directory_changes`], builds the next
//! epoch, and appends it with [`KeyDirectory::append_directory_epoch`], which consumes
//! the changes it covered in the same transaction.
//!
//! Rules every backend implements:
//! - Change seqs increase in the order the changes were committed and are never reused,
//!   so a change committed after a publisher read the queue always has a seq above
//!   every seq that publisher saw (it survives the append that consumes them).
//! - Epoch numbers are contiguous from 1: an append succeeds only for the number after
//!   the last stored one, so of several nodes publishing the same epoch exactly one
//!   succeeds.
//! - The publisher lease ([`KeyDirectory::claim_directory_publisher`]) has at most one
//!   holder at a time. It only spares the other nodes from building an epoch they would
//!   lose: the append rule above still decides (a lease may run out mid-publication).

use async_trait::async_trait;
use bytes::Bytes;

use crate::StoreError;

/// One published epoch of the key directory as the server persists it (opaque record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEpoch {
    /// The epoch's number (1 for the first).
    pub epoch: u64,
    /// When it was published (Unix milliseconds).
    pub published_at_ms: u64,
    /// What the server needs to replay it, as the server encoded it.
    pub record: Bytes,
}

/// A handle whose directory entry must be (re)published, in change order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChange {
    /// Position in the change queue (increasing, never reused).
    pub seq: u64,
    /// The account's handle. The same handle may appear in several changes.
    pub handle: String,
}

/// What the key directory publishes of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryAccount {
    /// The account's handle.
    pub handle: String,
    /// Its account key.
    pub account_key: Vec<u8>,
    /// Its latest signed device list, when it stored one.
    pub device_list: Option<crate::StoredDeviceList>,
}

/// Most handles one [`KeyDirectory::directory_accounts`] call takes.
pub const MAX_DIRECTORY_ACCOUNTS: usize = 1_000;

/// Who may publish the key directory's epochs, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryLease {
    /// The node holding the lease (an id the node chose).
    pub holder: String,
    /// Unix milliseconds; the lease is free from then on.
    pub until_ms: u64,
}

/// The key directory's secret, epoch log, change queue and publisher lease.
#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// The directory's persistent secret (the server's VRF and signing key seeds). When
    /// none is stored yet, stores `candidate` and returns it; write-once: concurrent
    /// callers (also on other nodes) all get the one stored value.
    async fn directory_secret(&self, candidate: Bytes) -> Result<Bytes, StoreError>;

    /// Up to `limit` pending changes, ascending by seq.
    async fn directory_changes(&self, limit: usize) -> Result<Vec<DirectoryChange>, StoreError>;

    /// Appends `epoch` when its number is exactly the last stored epoch + 1 (1 when none
    /// is stored), and in the same transaction deletes the pending changes with
    /// `seq <= consumed_through`. Returns false and changes nothing when the number is
    /// not the next one (another node published first, or a gap).
    async fn append_directory_epoch(
        &self,
        epoch: DirectoryEpoch,
        consumed_through: u64,
    ) -> Result<bool, StoreError>;

    /// Stored epochs with number > `after`, ascending, at most `limit`.
    async fn directory_epochs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DirectoryEpoch>, StoreError>;

    /// The accounts named by `handles` (at most [`MAX_DIRECTORY_ACCOUNTS`], else
    /// [`StoreError::Invalid`]) that exist, with what the directory publishes of them,
    /// in any order; a handle without an account is left out. One round trip, where
    /// [`Accounts::account`](crate::Accounts::account) per handle would take one each.
    async fn directory_accounts(
        &self,
        handles: &[String],
    ) -> Result<Vec<DirectoryAccount>, StoreError>;

    /// Claims the publisher lease for `holder` until `until_ms`, atomically: granted when
    /// no lease was ever taken, when the stored one ran out (`until_ms <= now_ms`) or
    /// when `holder` holds it already (a renewal; `until_ms <= now_ms` then gives it
    /// up). Returns the lease as it stands afterwards: `holder` has it exactly when the
    /// returned holder is `holder`. The times are the callers' clocks, so nodes' clocks
    /// should agree to well within a lease.
    async fn claim_directory_publisher(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<DirectoryLease, StoreError>;
}

/// Prefix of every handle [`reset_tombstone_handle`] makes.
pub const RESET_TOMBSTONE_PREFIX: &str = "!reset:";

/// The handle under which [`Accounts::reset_account`](crate::Accounts::reset_account)
/// keeps a reset account's devices, device list and blobs, so that foreign keys and
/// group rosters stay intact: `!reset:{now_ms}:{handle}`, or with `attempt > 0` (when
/// that one is taken, e.g. two resets of one handle in one millisecond)
/// `!reset:{now_ms}.{attempt}:{handle}`. Never a valid handle (valid handles contain
/// neither `!` nor `:`), so nobody can register or address it.
pub fn reset_tombstone_handle(handle: &str, now_ms: u64, attempt: u32) -> String {
    if attempt == 0 {
        format!("{RESET_TOMBSTONE_PREFIX}{now_ms}:{handle}")
    } else {
        format!("{RESET_TOMBSTONE_PREFIX}{now_ms}.{attempt}:{handle}")
    }
}

/// Whether `handle` was made by [`reset_tombstone_handle`]: it names a reset account.
pub fn is_reset_tombstone(handle: &str) -> bool {
    handle.starts_with(RESET_TOMBSTONE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_distinct_and_recognised() {
        let a = reset_tombstone_handle("alice", 5, 0);
        let b = reset_tombstone_handle("alice", 5, 1);
        assert_eq!(a, "!reset:5:alice");
        assert_eq!(b, "!reset:5.1:alice");
        assert!(is_reset_tombstone(&a) && is_reset_tombstone(&b));
        assert!(!is_reset_tombstone("alice"));
    }
}
