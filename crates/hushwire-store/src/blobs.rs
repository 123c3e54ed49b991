//! Media blob metadata: which blobs exist, who may write and read them, which parts are
//! stored, who fetched them, and the per-account quota. The bytes themselves live in a
//! blob store (`hushwire-blobstore`); this trait never sees them.
//!
//! Lifecycle of a blob:
//! 1. [`Blobs::create_blob`]: bound to one group. The uploader must be in the group's
//!    roster; the readers are that roster plus the uploading account's devices (revoked
//!    devices left out), fixed at creation; the later devices of those accounts may read
//!    it too (history a linked device received). The account's quota is checked in the same
//!    transaction (sum of the sizes of its unexpired blobs, this one included).
//! 2. [`Blobs::record_blob_part`] once a part's bytes are durably stored. The last part
//!    completes the blob.
//! 3. [`Blobs::record_blob_fetch`] when a reader received the last byte. When every
//!    reader except the uploading device (revoked devices left out) has, the blob is
//!    *fetched* (a blob with no such reader is fetched when it completes).
//! 4. Deletion in two steps, so bytes never outlive their record unnoticed:
//!    [`Blobs::begin_blob_deletion`] (on request) or [`Blobs::sweep_blobs`] (due ones)
//!    put the blob in the *deleting* state: from then on it is invisible to every other
//!    method and its quota is released. The caller deletes the bytes, then
//!    [`Blobs::purge_blobs`] removes the records. A crash in between leaves it deleting;
//!    the next sweep hands it out again.

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;

use crate::{DeviceAddr, DeviceId, StoreError};

/// Length of a blob id.
pub const BLOB_ID_LEN: usize = 32;

/// A blob's id: 32 bytes from a CSPRNG, chosen by the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; BLOB_ID_LEN]);

impl BlobId {
    /// Lowercase hex, as in routes and object names.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * BLOB_ID_LEN);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// Parses exactly 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 * BLOB_ID_LEN {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut id = [0u8; BLOB_ID_LEN];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            id[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(Self(id))
    }

    /// From a slice of exactly [`BLOB_ID_LEN`] bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// Number of parts of a blob of `size` bytes cut into `part_size`-byte parts (every part
/// but the last is full; a blob of size 0 has none). `None` when `part_size` is 0 or the
/// count does not fit in a `u32`.
pub fn blob_part_count(size: u64, part_size: u32) -> Option<u32> {
    if part_size == 0 {
        return None;
    }
    u32::try_from(size.div_ceil(u64::from(part_size))).ok()
}

/// Length of part `index` of such a blob: `part_size`, or the remainder for the last
/// part; `None` past the last part.
pub fn blob_part_len(size: u64, part_size: u32, index: u32) -> Option<u32> {
    let count = blob_part_count(size, part_size)?;
    if index >= count {
        return None;
    }
    let start = u64::from(index) * u64::from(part_size);
    let len = (size - start).min(u64::from(part_size));
    u32::try_from(len).ok()
}

/// A blob to create.
#[derive(Debug, Clone)]
pub struct NewBlob {
    /// Its id (random).
    pub id: BlobId,
    /// The uploading device.
    pub uploader: DeviceId,
    /// The group it is sent in.
    pub group_id: Bytes,
    /// Bytes it will hold.
    pub size: u64,
    /// Bytes per part (every part but the last), at least 1.
    pub part_size: u32,
    /// The uploading account's quota: the sizes of its unexpired blobs, this one
    /// included, may add up to at most this.
    pub quota_bytes: u64,
    /// Server clock.
    pub now_ms: u64,
    /// When it is deleted at the latest.
    pub expires_at_ms: u64,
}

/// A blob's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Its id.
    pub id: BlobId,
    /// The uploading device (its handle is the owning account).
    pub uploader: DeviceAddr,
    /// The group it was created for.
    pub group_id: Bytes,
    /// Bytes it holds once complete.
    pub size: u64,
    /// Bytes per part (every part but the last).
    pub part_size: u32,
    /// Parts stored so far.
    pub parts_stored: u32,
    /// Bytes in stored parts.
    pub stored_bytes: u64,
    /// When the last part was stored (`None` while parts are missing).
    pub completed_at_ms: Option<u64>,
    /// When every required reader had fetched it (see the module doc).
    pub fetched_at_ms: Option<u64>,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it is deleted at the latest.
    pub expires_at_ms: u64,
}

impl BlobRecord {
    /// The owning account's handle.
    pub fn account(&self) -> &str {
        &self.uploader.handle
    }

    /// Whether every part is stored.
    pub fn complete(&self) -> bool {
        self.completed_at_ms.is_some()
    }

    /// Number of parts.
    pub fn part_count(&self) -> u32 {
        blob_part_count(self.size, self.part_size).unwrap_or(0)
    }

    /// Length of part `index`, `None` past the last part.
    pub fn part_len(&self, index: u32) -> Option<u32> {
        blob_part_len(self.size, self.part_size, index)
    }
}

/// Result of [`Blobs::create_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateBlobOutcome {
    /// Created.
    Created(BlobRecord),
    /// The uploader is not in the group's roster, or there is no such group (or the
    /// uploader is unknown or revoked).
    NotMember,
    /// The account's unexpired blobs plus this one would exceed the quota.
    QuotaExceeded {
        /// Bytes the account's unexpired blobs hold (this one not included).
        used: u64,
        /// The quota applied.
        quota: u64,
    },
}

/// A stored part, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobPart {
    /// 0-based index.
    pub index: u32,
    /// Its length in bytes.
    pub len: u32,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// Result of [`Blobs::record_blob_part`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    /// Recorded now; the blob after it.
    Stored(BlobRecord),
    /// The same bytes (same length and hash) were recorded before; nothing changed.
    AlreadyStored(BlobRecord),
    /// Different bytes were recorded for this index before; nothing changed.
    Conflict,
    /// No such blob (or it is being deleted).
    UnknownBlob,
}

/// One reader of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobReader {
    /// The device.
    pub device: DeviceAddr,
    /// When it received the last byte, if it has.
    pub fetched_at_ms: Option<u64>,
}

/// What [`Blobs::sweep_blobs`] deletes, all times in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSweep {
    /// Server clock. Blobs whose `expires_at_ms <= now_ms` are due.
    pub now_ms: u64,
    /// Fetched blobs are due this long after they became fetched.
    pub grace_after_fetch_ms: u64,
    /// Incomplete blobs are due this long after their creation.
    pub abandoned_after_ms: u64,
}

/// Media blob metadata (see the module doc for the lifecycle). Blobs in the deleting
/// state are invisible to every method but [`Blobs::sweep_blobs`],
/// [`Blobs::purge_blobs`] and [`Blobs::known_blobs`].
#[async_trait]
pub trait Blobs: Send + Sync {
    /// Creates a blob with no part stored (complete at once when `size` is 0), in one
    /// transaction with the roster and quota checks. An id in use is
    /// [`StoreError::Invalid`]; so is `part_size` 0 or a part count beyond `u32`.
    async fn create_blob(&self, new: NewBlob) -> Result<CreateBlobOutcome, StoreError>;

    /// The blob, unless unknown or being deleted.
    async fn blob(&self, id: &BlobId) -> Result<Option<BlobRecord>, StoreError>;

    /// Its stored parts, ascending by index (empty for an unknown blob).
    async fn blob_parts(&self, id: &BlobId) -> Result<Vec<BlobPart>, StoreError>;

    /// Records a stored part. A part whose index is past the last or whose length is
    /// not the part's length is [`StoreError::Invalid`]. Recording the last missing part
    /// completes the blob at `now_ms`.
    async fn record_blob_part(
        &self,
        id: &BlobId,
        part: BlobPart,
        now_ms: u64,
    ) -> Result<PartOutcome, StoreError>;

    /// The blob if `device` may read it, else `None`: one of its readers, or a device
    /// (not revoked) of a reader's account, e.g. one linked later that received the
    /// message in its history.
    async fn readable_blob(
        &self,
        id: &BlobId,
        device: DeviceId,
    ) -> Result<Option<BlobRecord>, StoreError>;

    /// Records that `device` received the blob's last byte (the first time counts).
    /// Returns false when the blob is unknown, incomplete or not readable by `device`.
    async fn record_blob_fetch(
        &self,
        id: &BlobId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    /// The blob's readers, ordered by address (empty for an unknown blob).
    async fn blob_readers(&self, id: &BlobId) -> Result<Vec<BlobReader>, StoreError>;

    /// Bytes the account's unexpired blobs (not being deleted) hold: what its quota is
    /// measured against.
    async fn blob_usage(&self, account: &str, now_ms: u64) -> Result<u64, StoreError>;

    /// Puts the blob in the deleting state at once. Returns false when it is unknown or
    /// already being deleted.
    async fn begin_blob_deletion(&self, id: &BlobId, now_ms: u64) -> Result<bool, StoreError>;

    /// Puts every due blob (expired; incomplete past `abandoned_after_ms`; fetched past
    /// `grace_after_fetch_ms`) in the deleting state, and returns up to `limit` blobs in
    /// that state (these and earlier ones whose records were not purged yet), oldest
    /// deletion first.
    async fn sweep_blobs(&self, sweep: BlobSweep, limit: usize) -> Result<Vec<BlobId>, StoreError>;

    /// Removes the records (parts, readers, the blob) of blobs in the deleting state;
    /// other ids are left alone. Returns how many blobs were removed.
    async fn purge_blobs(&self, ids: &[BlobId]) -> Result<u64, StoreError>;

    /// Which of `ids` have a record, deleting ones included (for finding bytes whose
    /// record is gone).
    async fn known_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut b = [0u8; 32];
        b[0] = 0xab;
        b[31] = 0x01;
        let id = BlobId(b);
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00"));
        assert!(hex.ends_with("01"));
        assert_eq!(BlobId::from_hex(&hex), Some(id));
        assert_eq!(BlobId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(BlobId::from_hex(&hex[1..]), None);
        assert_eq!(BlobId::from_hex(&format!("g{}", &hex[1..])), None);
    }

    #[test]
    fn part_geometry() {
        assert_eq!(blob_part_count(0, 4), Some(0));
        assert_eq!(blob_part_count(4, 4), Some(1));
        assert_eq!(blob_part_count(5, 4), Some(2));
        assert_eq!(blob_part_count(5, 0), None);
        assert_eq!(blob_part_count(u64::MAX, 1), None);
        assert_eq!(blob_part_len(10, 4, 0), Some(4));
        assert_eq!(blob_part_len(10, 4, 2), Some(2));
        assert_eq!(blob_part_len(10, 4, 3), None);
        assert_eq!(blob_part_len(8, 4, 1), Some(4));
        assert_eq!(blob_part_len(0, 4, 0), None);
    }
}
