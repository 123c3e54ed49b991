//! The one error type of the client library.

use hushwire_e2e::E2eError;
use hushwire_proto::identity::HandleError;
use hushwire_proto::wire::ErrorCode;

/// Everything that can go wrong between a front end and the server.
///
/// Front ends map these to exit codes or UI states; [`ClientError::is_transient`] says
/// whether retrying later may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The handle is not of the form `[a-z0-9_.]{3,32}`.
    #[error("invalid handle: {0}")]
    InvalidHandle(#[from] HandleError),
    /// The server URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy URL cannot be used.
    #[error("invalid proxy {proxy:?}: {reason}")]
    InvalidProxy {
        /// The proxy as given.
        proxy: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The profile's routes file cannot be read or written.
    #[error("routes file {path}: {reason}")]
    Routes {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// The pin is not `sha256:<64 hex>`.
    #[error("invalid pin {0:?}: expected sha256:<64 hex digits>")]
    InvalidPin(String),
    /// No connection could be made (DNS, TCP, TLS alert, timeout).
    #[error("server {url} is unreachable: {reason}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server presented a key other than the pinned one.
    #[error(
        "the server's TLS key does not match the pin: expected {expected}, the server presented {got}"
    )]
    PinMismatch {
        /// The pin the profile or the command line asked for.
        expected: String,
        /// The pin of the key the server presented.
        got: String,
    },
    /// Without a pin, the server's certificate does not verify against the Web PKI roots.
    #[error("the server's TLS certificate is not trusted ({0}); pass its pin with --pin sha256:…")]
    UntrustedCertificate(String),
    /// The handle is registered already.
    #[error("handle {0:?} is taken")]
    HandleTaken(String),
    /// The server's registration policy needs an invite code, and none or a bad one was given.
    #[error("the server requires a valid invite code: {0}")]
    InviteRequired(String),
    /// No account has this handle.
    #[error("no account is registered as {0:?}")]
    UnknownHandle(String),
    /// The profile has no identity yet.
    #[error("this profile is not registered; run `hushwire register` first")]
    NotRegistered,
    /// The profile holds an identity already.
    #[error("this profile is registered already as {0:?}")]
    AlreadyRegistered(String),
    /// The server answered an API call with an error.
    #[error("server refused the request ({code:?}, HTTP {status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Protocol error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server refused to store a message because its storage is full. Nothing was
    /// lost: the message stays queued, and sending again later may succeed.
    #[error("the server's storage is full; try again later")]
    StorageFull(String),
    /// The server refused a message because this device sends too fast. Nothing was
    /// lost: the message stays queued and is sent again after a pause.
    #[error("sending too fast; the server asks to slow down")]
    RateLimited(String),
    /// The server broke the protocol (undecodable frame, unexpected frame, bad response).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The WebSocket was closed.
    #[error("connection closed by the server (code {code}): {reason}")]
    Closed {
        /// WebSocket close code (1006 when the connection dropped without a close frame).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Linking a device failed: a wrong, expired or used link code, the other device
    /// declined or failed, or the account has the most devices allowed.
    #[error("link: {0}")]
    Link(String),
    /// The server's key directory contradicts an account it served (a substituted or
    /// unpublished key, a device list it did not publish), a proof does not verify, or
    /// the server published a key for this account that it did not create. Nothing of
    /// the account was used.
    #[error("key transparency check failed for {handle:?}: {reason}")]
    KeyTransparency {
        /// The handle concerned ("" for the directory as a whole).
        handle: String,
        /// What failed.
        reason: String,
    },
    /// The operation did not finish before its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The end-to-end layer (local store, MLS state) failed.
    #[error(transparent)]
    E2e(#[from] E2eError),
    /// The profile's key could not be unlocked (wrong passphrase, no passphrase, key
    /// file damaged).
    #[error(transparent)]
    Vault(#[from] hushwire_vault::VaultError),
    /// A file to send cannot be sent: missing, unreadable, not a regular file, too
    /// large, or changed while it was being uploaded.
    #[error("cannot send {path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// An attachment could not be downloaded or opened: it failed verification
    /// (tampered, truncated, the wrong file), is malformed, or is gone from the server.
    /// Retrying does not help.
    #[error("attachment: {0}")]
    Attachment(String),
    /// Reading or writing a local file failed (disk full, permissions).
    #[error("{context}: {source}")]
    LocalIo {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether trying again later (a reconnect) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Timeout(_)
            | Self::StorageFull(_)
            | Self::RateLimited(_) => true,
            // 1000 normal closure mid-session, 1001 going away, 1006 dropped, 1011 internal,
            // 1012/1013 restart/try again later.
            Self::Closed { code, .. } => matches!(code, 1000 | 1001 | 1006 | 1011 | 1012 | 1013),
            Self::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the server could not be reached, dropped us or cannot take the request now
    /// (exit code 3 in the CLI).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Timeout(_)
                | Self::Closed { .. }
                | Self::StorageFull(_)
                | Self::RateLimited(_)
        ) || matches!(self, Self::Api { status, .. } if *status >= 500)
    }
}
