//! Sizes every peer enforces. Servers may configure lower values, never higher.

/// Largest WebSocket frame (one protobuf `ClientFrame`/`ServerFrame`) accepted.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest single MLS message inside a frame.
pub const MAX_MLS_MESSAGE_BYTES: usize = 512 * 1024;
/// Largest HTTPS API request body, and largest error body.
pub const MAX_API_BODY_BYTES: usize = 256 * 1024;
/// Largest successful HTTPS API response a client accepts: a stored GroupInfo (which
/// carries the ratchet tree of a large group) can be as large as a frame.
pub const MAX_API_RESPONSE_BYTES: usize = MAX_FRAME_BYTES + 64 * 1024;
/// Most key packages in one upload.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
/// Most devices in a commit roster.
pub const MAX_ROSTER: usize = 8 * 1024;
/// Group ids are 1..=MAX_GROUP_ID_BYTES long.
pub const MAX_GROUP_ID_BYTES: usize = 64;
/// Message ids are exactly this long (a UUID).
pub const MESSAGE_ID_BYTES: usize = 16;

/// Most handles in one `ClaimKeyPackagesBatch`.
pub const MAX_CLAIM_BATCH: usize = 1024;

/// A `ClaimKeyPackagesBatch` costs one claim of the rate limit per this many handles
/// (started).
pub const CLAIM_BATCH_HANDLES_PER_CLAIM: usize = 32;

/// Largest attachment (plaintext) a client sends. Servers configure their own blob
/// limit (on ciphertext size), which may be lower.
pub const MAX_ATTACHMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Largest part of a blob upload (one HTTPS request body). Servers choose the part
/// size of each blob at creation, at most this.
pub const MAX_BLOB_PART_BYTES: usize = 8 * 1024 * 1024;
/// Blob ids are exactly this long.
pub const BLOB_ID_BYTES: usize = 32;

/// Largest MLS message of an `Ephemeral` frame (typing, presence).
pub const MAX_EPHEMERAL_BYTES: usize = 4 * 1024;
/// Most message ids one `Receipt` names.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Shortest disappearing-messages timer (5 s).
pub const MIN_EXPIRE_TIMER_MS: u64 = 5_000;
/// Longest disappearing-messages timer (90 days).
pub const MAX_EXPIRE_TIMER_MS: u64 = 90 * 24 * 3600 * 1000;
/// Longest reaction (an emoji, possibly a ZWJ sequence), in bytes.
pub const MAX_REACTION_BYTES: usize = 64;
/// Most messages one report (`ReportRequest`) discloses.
pub const MAX_REPORT_MESSAGES: usize = 20;
/// Longest reason of a report, in bytes.
pub const MAX_REPORT_REASON_BYTES: usize = 1024;
/// Longest text of one reported message, in bytes (the longest text message).
pub const MAX_REPORT_TEXT_BYTES: usize = 64 * 1024;

/// Largest body of one link-session slot (`PUT /v1/links/{id}/{slot}`), in bytes.
pub const MAX_LINK_SLOT_BYTES: usize = 4 * 1024 * 1024;
/// Most slots one link session may hold.
pub const MAX_LINK_SLOTS: usize = 256;
/// Longest a link session may live, in seconds.
pub const MAX_LINK_TTL_SECS: u32 = 900;
/// Default most non-revoked devices per account (the server's
/// `limits.max_devices_per_account`).
pub const DEFAULT_MAX_DEVICES_PER_ACCOUNT: usize = 8;
/// Most devices a signed device list may name.
pub const MAX_LISTED_DEVICES: usize = 64;
/// Longest link-session slot name.
pub const MAX_LINK_SLOT_NAME: usize = 16;
