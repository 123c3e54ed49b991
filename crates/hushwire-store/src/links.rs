//! Link sessions: the rendezvous through which an existing device and a new one exchange
//! the (end-to-end encrypted) messages that link the new device to the account.
//!
//! A session is a 16-byte id (the capability: whoever knows it may read and write), the
//! device that opened it and an expiry. It holds up to [`MAX_LINK_SLOTS`] named,
//! write-once slots of opaque bytes. The store never interprets names or bytes; the
//! server checks them. Sessions live in the store (not in one node's memory) so that
//! the two devices may talk to different nodes of one deployment.

use async_trait::async_trait;
use bytes::Bytes;

use crate::{DeviceAddr, StoreError};

/// A link session id.
pub type LinkId = [u8; 16];

/// Most slots one link session holds (`hushwire_proto::limits::MAX_LINK_SLOTS`).
pub const MAX_LINK_SLOTS: usize = 256;

/// Outcome of [`Links::put_link_slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutSlot {
    /// The bytes are stored.
    Stored,
    /// The slot holds bytes already (the first write stays).
    AlreadyWritten,
    /// The session holds [`MAX_LINK_SLOTS`] slots already.
    TooManySlots,
    /// No such session, or it has expired.
    UnknownOrExpired,
}

/// Outcome of [`Links::link_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSlot {
    /// The slot's bytes.
    Bytes(Bytes),
    /// The session exists but nothing was written to the slot yet.
    NotYet,
    /// No such session, or it has expired.
    UnknownOrExpired,
}

/// Link sessions.
///
/// Rules every backend implements: a session is live while `now_ms < expires_at_ms`;
/// an expired session behaves as unknown everywhere (before and after it is purged).
/// Slots are write-once; deleting a session deletes its slots.
#[async_trait]
pub trait Links: Send + Sync {
    /// Opens a session owned by `owner`. An id in use (even by an expired session not
    /// purged yet) is [`StoreError::Invalid`].
    async fn create_link(
        &self,
        id: LinkId,
        owner: &DeviceAddr,
        expires_at_ms: u64,
    ) -> Result<(), StoreError>;

    /// Writes `data` into slot `slot` of live session `id`, once.
    async fn put_link_slot(
        &self,
        id: LinkId,
        slot: &str,
        data: Bytes,
        now_ms: u64,
    ) -> Result<PutSlot, StoreError>;

    /// Reads slot `slot` of live session `id`.
    async fn link_slot(&self, id: LinkId, slot: &str, now_ms: u64) -> Result<LinkSlot, StoreError>;

    /// The device that opened live session `id`.
    async fn link_owner(&self, id: LinkId, now_ms: u64) -> Result<Option<DeviceAddr>, StoreError>;

    /// Ends session `id` (live or expired) and deletes its slots. Returns whether it
    /// existed.
    async fn delete_link(&self, id: LinkId) -> Result<bool, StoreError>;

    /// Deletes every session with `expires_at_ms <= now_ms` and its slots. Returns the
    /// number of sessions removed.
    async fn purge_expired_links(&self, now_ms: u64) -> Result<u64, StoreError>;
}
