//! Conversation controls: per-account block lists, retraction of still-queued messages
//! (delete for everyone), the prompt purge of disappearing messages, and the audience of
//! ephemeral signals (typing, presence). See docs/protocol.md, "Conversation features".

use async_trait::async_trait;

use crate::{DeviceId, StoreError};

/// Who an ephemeral signal of a device in a group goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAudience {
    /// The group's other non-revoked devices whose account has not blocked the sender's
    /// account, ordered. The caller relays only to those connected.
    Devices(Vec<DeviceId>),
    /// The sender is not in the group's roster.
    NotMember,
    /// No such group.
    UnknownGroup,
}

/// A user's report of an account to the server's operator ([`Controls::file_report`]).
#[derive(Clone, PartialEq, Eq)]
pub struct NewReport {
    /// The reporting account's handle.
    pub reporter: String,
    /// The reported account's handle.
    pub reported: String,
    /// Why, in the reporter's words.
    pub reason: String,
    /// The messages the reporter chose to disclose, encoded by the server (opaque here).
    /// Plaintext the user handed over: never log it.
    pub evidence: Vec<u8>,
    /// When it was filed.
    pub at_ms: u64,
}

/// A report as stored, waiting for the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportRecord {
    /// Its number, increasing in filing order.
    pub id: u64,
    /// The report.
    pub report: NewReport,
}

impl std::fmt::Debug for NewReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewReport")
            .field("reporter", &self.reporter)
            .field("reported", &self.reported)
            .field("reason_len", &self.reason.len())
            .field("evidence_len", &self.evidence.len())
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

impl std::fmt::Debug for ReportRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportRecord")
            .field("id", &self.id)
            .field("report", &self.report)
            .finish()
    }
}

/// Blocking, retraction, disappearing messages, reports and the ephemeral audience.
///
/// Rules every backend implements:
/// - A block is a pair (blocker account, blocked account), nothing else. While it holds,
///   [`Delivery::submit`](crate::Delivery::submit) creates no mailbox entry of an
///   application message or a Welcome from any device of the blocked account for the
///   blocker's devices (commits and proposals still go, so groups stay consistent), and
///   [`Controls::relay_audience`] leaves the blocker's devices out.
/// - A submission with [`Submission::disappearing`](crate::Submission::disappearing) is
///   deleted (body and every mailbox entry still queued) by the first
///   [`Controls::purge_disappearing`] after its `expires_at_ms`, and the backend does what
///   it can to wipe it from its files (the embedded backend zeroes deleted content and
///   truncates its write-ahead log).
#[async_trait]
pub trait Controls: Send + Sync {
    /// Records that account `blocker` blocks `handle` (`blocked`), or no longer does.
    /// Returns whether anything changed. Blocking oneself is [`StoreError::Invalid`].
    async fn set_block(
        &self,
        blocker: &str,
        handle: &str,
        blocked: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let _ = (blocker, handle, blocked, now_ms);
        Err(StoreError::Unsupported("set_block"))
    }

    /// The handles `blocker` blocks, sorted.
    async fn blocked_by(&self, blocker: &str) -> Result<Vec<String>, StoreError> {
        let _ = blocker;
        Err(StoreError::Unsupported("blocked_by"))
    }

    /// Delete for everyone: removes the mailbox entries still queued of the application
    /// message `message_id` that a device of `sender`'s account submitted to `group_id`,
    /// and its body. Returns the number of entries removed (0 when there is no such
    /// message, it was another account's, or every copy was fetched and acknowledged).
    /// The idempotency record stays, so a re-submission is still a duplicate.
    async fn retract(
        &self,
        sender: DeviceId,
        group_id: &[u8],
        message_id: [u8; 16],
    ) -> Result<u64, StoreError> {
        let _ = (sender, group_id, message_id);
        Err(StoreError::Unsupported("retract"))
    }

    /// The devices an ephemeral signal of `sender` in `group_id` goes to.
    async fn relay_audience(
        &self,
        sender: DeviceId,
        group_id: &[u8],
    ) -> Result<RelayAudience, StoreError> {
        let _ = (sender, group_id);
        Err(StoreError::Unsupported("relay_audience"))
    }

    /// Deletes every disappearing submission whose `expires_at_ms` is before `now_ms`:
    /// its body and the mailbox entries still queued. Meant to run often (every second):
    /// it looks only at disappearing submissions. Returns the mailbox entries and bodies
    /// removed.
    async fn purge_disappearing(&self, now_ms: u64) -> Result<u64, StoreError> {
        let _ = now_ms;
        Err(StoreError::Unsupported("purge_disappearing"))
    }

    /// Stores a report for the operator; returns its id (increasing).
    async fn file_report(&self, report: NewReport) -> Result<u64, StoreError> {
        let _ = report;
        Err(StoreError::Unsupported("file_report"))
    }

    /// Open reports with an id above `after_id`, oldest first, at most `limit`.
    async fn reports(&self, after_id: u64, limit: usize) -> Result<Vec<ReportRecord>, StoreError> {
        let _ = (after_id, limit);
        Err(StoreError::Unsupported("reports"))
    }

    /// The operator dealt with report `id`: it is deleted. Returns whether it existed.
    async fn close_report(&self, id: u64) -> Result<bool, StoreError> {
        let _ = id;
        Err(StoreError::Unsupported("close_report"))
    }
}
