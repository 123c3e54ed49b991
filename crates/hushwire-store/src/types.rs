use bytes::Bytes;
use std::fmt;

/// A device's storage-wide id (stable, never reused). Not the per-account device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

/// A device's public address: handle plus per-account device number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr {
    /// The account's handle.
    pub handle: String,
    /// The device number within the account (1 for the first device).
    pub device_id: u32,
}

impl fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.handle, self.device_id)
    }
}

/// A new account with its first device.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Validated handle.
    pub handle: String,
    /// Ed25519 account public key.
    pub account_key: Vec<u8>,
    /// Ed25519 device public key.
    pub device_key: Vec<u8>,
    /// The device certificate's timestamp.
    pub cert_created_at_ms: u64,
    /// The account key's signature over the device certificate.
    pub cert_signature: Vec<u8>,
    /// Invite code to consume, when registration needs one.
    pub invite: Option<String>,
    /// Server clock.
    pub now_ms: u64,
}

/// A further device for an existing account.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Ed25519 device public key.
    pub device_key: Vec<u8>,
    /// The device certificate's timestamp.
    pub cert_created_at_ms: u64,
    /// The account key's signature over the device certificate.
    pub cert_signature: Vec<u8>,
}

/// Outcome of [`Accounts::add_device_within`](crate::Accounts::add_device_within).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddDevice {
    /// Added under the next device number.
    Added(DeviceRecord),
    /// No such account.
    UnknownAccount,
    /// A device of the account (revoked ones included) has this key.
    KeyInUse,
    /// The account has the maximum number of non-revoked devices already.
    TooManyDevices,
}

/// An account and its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Handle.
    pub handle: String,
    /// Ed25519 account public key.
    pub account_key: Vec<u8>,
    /// When the account was created.
    pub created_at_ms: u64,
    /// All devices, ordered by device number.
    pub devices: Vec<DeviceRecord>,
    /// The latest device list the account's devices published
    /// ([`Accounts::set_device_list`](crate::Accounts::set_device_list)), if any.
    pub device_list: Option<StoredDeviceList>,
}

/// An account's signed device list as stored: opaque bytes (the server checked them
/// before storing) and the version they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeviceList {
    /// The list's version (strictly increasing per account).
    pub version: u64,
    /// The `SignedDeviceList` bytes, as received.
    pub data: Bytes,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Storage-wide id.
    pub id: DeviceId,
    /// Public address.
    pub addr: DeviceAddr,
    /// Ed25519 device public key.
    pub device_key: Vec<u8>,
    /// The device certificate's timestamp.
    pub cert_created_at_ms: u64,
    /// The account key's signature over the device certificate.
    pub cert_signature: Vec<u8>,
    /// A revoked device may not log in and receives nothing.
    pub revoked: bool,
}

/// A KeyPackage to store.
#[derive(Debug, Clone)]
pub struct NewKeyPackage {
    /// Ciphersuite code point read from the package.
    pub ciphersuite: u16,
    /// MLSMessage(KeyPackage) bytes.
    pub data: Bytes,
    /// Kept and reused once one-time packages run out.
    pub last_resort: bool,
}

/// A KeyPackage handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// Device number within the account.
    pub device_id: u32,
    /// MLSMessage(KeyPackage) bytes.
    pub data: Bytes,
}

/// What a device has left for one ciphersuite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyPackageStock {
    /// One-time packages left.
    pub available: u32,
    /// Whether a last-resort package is held.
    pub has_last_resort: bool,
}

/// Kinds of message in a group log or mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// MLS application message.
    Application,
    /// MLS proposal.
    Proposal,
    /// MLS commit.
    Commit,
    /// MLS Welcome, addressed to the devices a commit added.
    Welcome,
}

impl EnvelopeKind {
    /// Stable numeric code, equal to the wire enum's value.
    pub fn code(self) -> u8 {
        match self {
            Self::Application => 1,
            Self::Proposal => 2,
            Self::Commit => 3,
            Self::Welcome => 4,
        }
    }
    /// Inverse of [`EnvelopeKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Application),
            2 => Some(Self::Proposal),
            3 => Some(Self::Commit),
            4 => Some(Self::Welcome),
            _ => None,
        }
    }
}

/// A Welcome to fan out with a commit.
#[derive(Debug, Clone)]
pub struct WelcomeOut {
    /// MLSMessage(Welcome) bytes, stored once.
    pub payload: Bytes,
    /// Devices that receive it.
    pub recipients: Vec<DeviceAddr>,
}

/// What kind of message is submitted, with what a commit carries.
#[derive(Debug, Clone)]
pub enum SubmitKind {
    /// An application message.
    Application,
    /// A proposal.
    Proposal,
    /// A commit, with the roster after it, Welcomes for added devices and an optional
    /// GroupInfo.
    Commit {
        /// Every member device after the commit, the sender included.
        roster: Vec<DeviceAddr>,
        /// Welcomes for the devices the commit adds.
        welcomes: Vec<WelcomeOut>,
        /// GroupInfo for external joins.
        group_info: Option<Bytes>,
    },
}

/// One message posted to a group's log.
///
/// Rules every backend implements, in one transaction:
/// 1. Idempotency: if `(sender, message_id)` was accepted before, return that original
///    [`Accepted`] with `duplicate = true` and change nothing.
/// 2. Commit to an unknown group at epoch 0 creates the group (epoch 0, roster = the
///    sender) and then proceeds as below. Anything else to an unknown group is
///    [`SubmitOutcome::UnknownGroup`].
/// 3. The sender must be in the group's roster, else [`SubmitOutcome::NotMember`]. A
///    commit may also come from another device of an account that has a device in the
///    roster: an External Commit by which a new device of a member (one restored from
///    a backup) joins; the members' clients check it like any commit.
/// 4. A commit is accepted only if `epoch` equals the group's epoch, else
///    [`SubmitOutcome::StaleEpoch`]. Accepting it increments the epoch, replaces the roster
///    (every roster device must exist: else [`StoreError::UnknownDevice`](crate::StoreError::UnknownDevice) and nothing
///    changes), and stores the GroupInfo. It is fanned out to the old roster except the
///    sender (members being removed learn of it); devices the commit adds get their
///    Welcome instead, never the commit they cannot process.
/// 5. Application messages and proposals are not fenced; they go to the roster except the
///    sender.
/// 6. The body is stored once; each recipient's mailbox gets the next seq of that device
///    and a reference. The group log's seq increases by one per accepted message.
/// 7. Welcome recipients must exist like roster devices. A revoked device may stay in a
///    roster, but it gets no mailbox entries. A commit without `group_info` keeps the
///    stored GroupInfo (its record names the epoch it was published for).
#[derive(Debug, Clone)]
pub struct Submission {
    /// The posting device.
    pub sender: DeviceId,
    /// Client-chosen idempotency key.
    pub message_id: [u8; 16],
    /// The group.
    pub group_id: Bytes,
    /// Epoch from the MLS header.
    pub epoch: u64,
    /// What it is.
    pub kind: SubmitKind,
    /// The MLS message, stored once.
    pub payload: Bytes,
    /// Server clock.
    pub now_ms: u64,
    /// When the body and its mailbox entries are deleted even if unacknowledged.
    pub expires_at_ms: u64,
    /// A disappearing message (the sender set an expiry): deleted promptly once
    /// `expires_at_ms` passes by [`Controls::purge_disappearing`](crate::Controls::purge_disappearing),
    /// not only by the retention sweep.
    pub disappearing: bool,
    /// An application message accepted at a past epoch (`Submit.past_epoch`: a client
    /// whose group diverged). Without it, an application message must be at the group's
    /// epoch.
    pub past_epoch_ok: bool,
}

/// A message accepted into a group log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Position in the group log (1 for the first message).
    pub group_seq: u64,
    /// The group's epoch after the message.
    pub epoch: u64,
    /// True when the message id had been accepted before.
    pub duplicate: bool,
    /// The mailbox entries created (empty for a duplicate), so the server can push them
    /// to connected devices without reading them back.
    pub deliveries: Vec<Delivered>,
}

/// A mailbox entry created by a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The recipient device.
    pub device: DeviceId,
    /// The entry as [`Mailboxes::fetch`](crate::Mailboxes::fetch) would return it.
    pub envelope: Envelope,
}

/// Result of [`Delivery::submit`](crate::Delivery::submit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Appended (or found as a duplicate).
    Accepted(Accepted),
    /// A commit for an epoch other than the current one.
    StaleEpoch {
        /// The group's current epoch.
        current_epoch: u64,
    },
    /// The sender is not in the roster.
    NotMember,
    /// No such group (and not a creating commit).
    UnknownGroup,
}

/// A group's state as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Current epoch.
    pub epoch: u64,
    /// Member devices, ordered.
    pub roster: Vec<DeviceAddr>,
    /// Last group log seq.
    pub last_seq: u64,
}

/// A stored GroupInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRecord {
    /// The epoch it was published for.
    pub epoch: u64,
    /// MLSMessage(GroupInfo) bytes.
    pub data: Bytes,
}

/// One mailbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Per-device sequence number, strictly increasing, starting at 1.
    pub seq: u64,
    /// The sender's idempotency key.
    pub message_id: [u8; 16],
    /// The group.
    pub group_id: Bytes,
    /// Position in the group log (0 for Welcome).
    pub group_seq: u64,
    /// Kind.
    pub kind: EnvelopeKind,
    /// The posting device.
    pub sender: DeviceAddr,
    /// When the server accepted it.
    pub server_time_ms: u64,
    /// The MLS message.
    pub payload: Bytes,
}
