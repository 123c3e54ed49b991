//! Storage traits of the Hushwire server, and the conformance suite every backend runs.
//!
//! The traits are shaped by the domain, not by a key-value layer: [`Accounts`],
//! [`KeyPackages`], [`Delivery`] (the MLS Delivery Service's ordered group logs) and
//! [`Mailboxes`] (per-device store-and-forward) and [`Blobs`] (media blob metadata and
//! quotas) and [`Controls`] (blocking, retraction, disappearing messages) and [`Links`]
//! (the write-once slots of device-linking sessions) and [`KeyDirectory`] (the key
//! transparency log: its secret, published epochs and pending changes). [`Store`] is all
//! of them; the server holds an `Arc<dyn Store>`.
//!
//! Every method is one atomic, durable operation: when it returns `Ok`, the change has
//! reached stable storage (the embedded backend batches many callers into one commit).
//!
//! # Layout
//! - `types`: records, submissions and outcomes.
//! - `blobs`: the [`Blobs`] trait and its types.
//! - `controls`: [`Controls`]: block lists, retraction, disappearing messages, the
//!   audience of ephemeral signals.
//! - `links`: [`Links`]: link sessions (joining a new device to an account).
//! - `directory`: [`KeyDirectory`]: the key directory's secret, epoch log and change
//!   queue; the tombstone handles of reset accounts.
//! - `conformance` (feature `conformance`): one suite, run by every backend's tests.

use async_trait::async_trait;

mod blobs;
mod controls;
mod directory;
mod links;
mod types;
pub use blobs::*;
pub use controls::*;
pub use directory::*;
pub use links::*;
pub use types::*;

#[cfg(feature = "conformance")]
pub mod conformance;

/// Errors a backend reports. Domain outcomes (stale epoch, duplicate) are not errors:
/// they are variants of the operation's outcome type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The handle is registered already.
    #[error("handle is taken")]
    HandleTaken,
    /// The invite code is unknown, used or expired.
    #[error("invite code is invalid, used or expired")]
    InviteInvalid,
    /// A referenced device does not exist (or is revoked).
    #[error("unknown device {0}")]
    UnknownDevice(DeviceAddr),
    /// An input breaks a backend limit (for example a value too large).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The backend has shut down.
    #[error("store is closed")]
    Closed,
    /// The database failed; the message is for logs, never for clients.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The backend has no room to store more (its disk is full). Nothing of the failed
    /// write was kept; the same write may succeed once space is freed. The message is
    /// for logs.
    #[error("storage is full: {0}")]
    StorageFull(String),
    /// The backend does not implement this operation (named).
    #[error("operation {0} is not supported by this backend")]
    Unsupported(&'static str),
}

/// Accounts, their devices, and invite codes.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Creates an account with its first device (device id 1). Consumes `invite` in the
    /// same transaction when given, and adds a pending [`KeyDirectory`] change for the
    /// handle. Fails with [`StoreError::HandleTaken`] or [`StoreError::InviteInvalid`].
    async fn create_account(&self, new: NewAccount) -> Result<DeviceRecord, StoreError>;
    /// The account with all its devices (revoked ones included, flagged).
    async fn account(&self, handle: &str) -> Result<Option<AccountRecord>, StoreError>;
    /// One device by address.
    async fn device(&self, addr: &DeviceAddr) -> Result<Option<DeviceRecord>, StoreError>;
    /// Stores a new single-use invite code. An existing code is
    /// [`StoreError::Invalid`].
    async fn create_invite(&self, code: &str, expires_at_ms: u64) -> Result<(), StoreError>;
    /// Adds a device to an existing account under the next device number (numbers are
    /// never reused). `None` when the handle is unknown.
    async fn add_device(
        &self,
        handle: &str,
        device: NewDevice,
    ) -> Result<Option<DeviceRecord>, StoreError>;
    /// [`Accounts::add_device`], checked in the same transaction: refused
    /// ([`AddDevice::KeyInUse`]) when a device of the account, revoked or not, has the
    /// key, and ([`AddDevice::TooManyDevices`]) when the account has `max_active`
    /// non-revoked devices or more. Concurrent additions to one account are
    /// serialized, so the limit holds under races (also across server nodes).
    async fn add_device_within(
        &self,
        handle: &str,
        device: NewDevice,
        max_active: usize,
    ) -> Result<AddDevice, StoreError>;
    /// Revokes a device: it is flagged revoked, its KeyPackages and waiting mailbox
    /// entries are deleted, it is left out of claims and receives nothing from then on
    /// (it may stay in group rosters until a commit removes it). Returns whether a
    /// non-revoked device was revoked.
    async fn revoke_device(&self, addr: &DeviceAddr) -> Result<bool, StoreError>;
    /// Of `ids`, the devices that are revoked (in the order given; unknown ids are left
    /// out). For the server's cluster poller, which closes the connections of devices
    /// revoked through another node; asked in batches of up to 512.
    async fn revoked_devices(&self, ids: &[DeviceId]) -> Result<Vec<DeviceId>, StoreError>;
    /// Stores `signed`, the account's signed device list of version `version` (opaque
    /// here: the server verified it), if `version` is greater than the stored list's
    /// (any version beats no list). Returns whether it was stored; an older or equal
    /// version changes nothing and returns false. [`StoreError::Invalid`] for an
    /// unknown handle. Served back in [`AccountRecord::device_list`]. When it stores the
    /// list, it adds a pending [`KeyDirectory`] change for the handle in the same
    /// transaction.
    async fn set_device_list(
        &self,
        handle: &str,
        version: u64,
        signed: bytes::Bytes,
    ) -> Result<bool, StoreError>;
    /// Releases `handle` whose owner lost every device (operator action), all in one
    /// transaction:
    /// - the account disappears: [`Accounts::account`] answers `None`, its devices are
    ///   no longer found by their old addresses, and [`Accounts::create_account`] may
    ///   register the handle again (with new keys, starting at device number 1);
    /// - all its devices are revoked as by [`Accounts::revoke_device`] (KeyPackages and
    ///   waiting mailbox entries deleted, they receive nothing,
    ///   [`Accounts::revoked_devices`] reports them). They, its device list and its
    ///   blobs move to a tombstone account named by [`reset_tombstone_handle`], so
    ///   group rosters keep them (under the tombstone's address) until a commit
    ///   removes them, and the new owner starts with no quota used;
    /// - its block list goes, and so do other accounts' blocks of the handle (a new
    ///   person may take it); reports by and about it name the tombstone; link
    ///   sessions its devices opened are deleted;
    /// - a pending [`KeyDirectory`] change for the handle is added.
    ///
    /// Serialized with concurrent [`Accounts::add_device`] and
    /// [`Accounts::create_account`] of the handle (also across server nodes): a device
    /// added concurrently is either reset with the account or refused as of an unknown
    /// account. Returns false when there is no such account.
    async fn reset_account(&self, handle: &str, now_ms: u64) -> Result<bool, StoreError>;
}

/// MLS KeyPackages: one-time packages handed out once, plus one last-resort package per
/// device and ciphersuite.
#[async_trait]
pub trait KeyPackages: Send + Sync {
    /// Adds packages for a device. A new last-resort package replaces the device's
    /// previous one for the same ciphersuite. Returns how many were stored.
    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
    ) -> Result<u32, StoreError>;
    /// Claims one package per non-revoked device of `handle` for `ciphersuite`, in one
    /// transaction: a one-time package is deleted as it is handed out; the last-resort
    /// package is handed out only when none is left and is kept. Devices with neither
    /// are left out. Ordered by device id.
    async fn claim_key_packages(
        &self,
        handle: &str,
        ciphersuite: u16,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError>;
    /// What a device has left for a ciphersuite.
    async fn key_package_stock(
        &self,
        device: DeviceId,
        ciphersuite: u16,
    ) -> Result<KeyPackageStock, StoreError>;
}

/// The MLS Delivery Service: one totally ordered log per group, commit fencing by epoch,
/// idempotent sends, fan-out by reference into device mailboxes.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// Appends one message to its group's log and fans it out, all in one transaction.
    /// See [`Submission`] for the rules.
    async fn submit(&self, submission: Submission) -> Result<SubmitOutcome, StoreError>;
    /// The group's current epoch and its roster, if the group exists.
    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>, StoreError>;
    /// The latest GroupInfo a committer published for the group (for external joins).
    async fn group_info(&self, group_id: &[u8]) -> Result<Option<GroupInfoRecord>, StoreError>;
}

/// Per-device store-and-forward mailboxes.
#[async_trait]
pub trait Mailboxes: Send + Sync {
    /// Up to `limit` entries with `seq > after_seq`, in seq order.
    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError>;
    /// Deletes every entry with `seq <= up_to_seq`; message bodies no mailbox refers to
    /// any more are deleted too. Returns the number of entries removed.
    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError>;
    /// [`Mailboxes::ack`] as a hint, for the live connection's acks: the backend may
    /// apply it later and coalesce it with the device's next acks, and it returns once
    /// the ack is queued, before it is durable. Losing one (a crash before it is
    /// applied) only causes a redelivery, which clients skip by seq. The default applies
    /// it at once.
    async fn ack_hint(&self, device: DeviceId, up_to_seq: u64) -> Result<(), StoreError> {
        self.ack(device, up_to_seq).await.map(|_| ())
    }
    /// Number of entries waiting for the device.
    async fn pending(&self, device: DeviceId) -> Result<u64, StoreError>;
    /// Of `cursors` (a device and the highest seq its connection has been sent), the
    /// devices with an entry after that seq, in the order given. For the server's
    /// cluster poller, which asks every `bus.poll_interval` about its connected devices
    /// in batches of up to 512. The default asks [`Mailboxes::fetch`] once per device; a
    /// backend serving several nodes should answer a batch in one query.
    async fn devices_with_mail(
        &self,
        cursors: &[(DeviceId, u64)],
    ) -> Result<Vec<DeviceId>, StoreError> {
        let mut out = Vec::new();
        for &(device, after) in cursors {
            if !self.fetch(device, after, 1).await?.is_empty() {
                out.push(device);
            }
        }
        Ok(out)
    }
    /// Deletes mailbox entries, message bodies and idempotency records whose retention
    /// ended before `now_ms`. Returns the number of message bodies removed.
    async fn expire(&self, now_ms: u64) -> Result<u64, StoreError>;
}

/// Everything the server needs from a backend.
pub trait Store:
    Accounts + KeyPackages + Delivery + Mailboxes + Blobs + Controls + Links + KeyDirectory
{
}
impl<T> Store for T where
    T: Accounts + KeyPackages + Delivery + Mailboxes + Blobs + Controls + Links + KeyDirectory
{
}
