//! Every error of the crate, and the one place where errors become what a client sees.
//!
//! - [`ServerError`]: start-up and run failures, for the binary.
//! - [`ApiError`]: an HTTPS API failure. Its [`IntoResponse`] impl is the only mapping to
//!   an HTTP status and an `ApiError` protobuf body (protocol.md's table).
//! - [`Close`]: why a WebSocket is closed (code + short reason).
//! - [`submit_rejection`]: a store failure during `submit` as a `rejected{Error}`.
//!
//! Internal details (database messages, I/O errors) go to the log, never to a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hushwire_proto::PROTOBUF_CONTENT_TYPE;
use hushwire_proto::wire::{self, ErrorCode};
use hushwire_store::StoreError;

use crate::config::ConfigError;
use crate::tls::TlsError;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The media blob store could not be opened.
    #[error("blob store: {0}")]
    BlobStore(#[from] hushwire_blobstore::BlobStoreError),
    /// The embedded database could not be opened.
    #[error("cannot open the embedded store at {path}: {reason}")]
    OpenStore {
        /// The database file.
        path: std::path::PathBuf,
        /// The backend's message.
        reason: String,
    },
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// An HTTPS API failure. Messages are fixed, client-safe strings; [`ApiError::Internal`]
/// carries a detail that is logged and replaced by "internal error" on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed body, parameter or header.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The handle breaks the handle rules.
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    /// Missing or invalid request signature.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Authenticated but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Registration needs a valid invite code.
    #[error("invite required: {0}")]
    InviteRequired(&'static str),
    /// No such resource.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The handle's devices have no key package for the ciphersuite.
    #[error("no key packages")]
    NoKeyPackages,
    /// The handle is registered already.
    #[error("handle taken")]
    HandleTaken,
    /// Body or item over a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Too many requests.
    #[error("rate limited")]
    RateLimited,
    /// The account's media quota is used up.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The server has no room to store data now (disk full).
    #[error("{STORAGE_FULL_MESSAGE}")]
    StorageFull,
    /// A write-once or versioned resource was written already (a link slot, a device
    /// list version), or a device key is in use.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A count limit of the server is reached (devices per account, slots per link
    /// session).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A Range starting at or past the end of a blob of this many bytes.
    #[error("range not satisfiable: the blob holds {0} bytes")]
    RangeNotSatisfiable(u64),
    /// Not ready yet (for example the key directory is still loading); retry later.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// A server-side failure; the detail is for the log only.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::InvalidHandle(_) => ErrorCode::InvalidHandle,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::InviteRequired(_) => ErrorCode::InviteRequired,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NoKeyPackages => ErrorCode::NoKeyPackages,
            Self::HandleTaken => ErrorCode::HandleTaken,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::StorageFull => ErrorCode::StorageFull,
            Self::RangeNotSatisfiable(_) => ErrorCode::RangeNotSatisfiable,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status, per protocol.md.
    pub fn status(&self) -> StatusCode {
        match self.code() {
            ErrorCode::BadRequest | ErrorCode::InvalidHandle => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::InviteRequired => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::NoKeyPackages => StatusCode::NOT_FOUND,
            ErrorCode::HandleTaken | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::LimitExceeded => StatusCode::FORBIDDEN,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::QuotaExceeded => StatusCode::FORBIDDEN,
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::HandleTaken => Self::HandleTaken,
            StoreError::InviteInvalid => {
                Self::InviteRequired("invite code is invalid, used or expired")
            }
            StoreError::UnknownDevice(_) => Self::NotFound("unknown device"),
            StoreError::Invalid(_) => Self::BadRequest("rejected by the store".to_owned()),
            StoreError::StorageFull(_) => Self::StorageFull,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error in API request"),
            Self::StorageFull => tracing::error!("storage full: an API request was refused"),
            other => {
                tracing::debug!(status = status.as_u16(), error = %other, "API request refused")
            }
        }
        let body = prost::Message::encode_to_vec(&wire::ApiError {
            code: self.code() as i32,
            message: self.public_message(),
        });
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
        );
        if let Self::RangeNotSatisfiable(size) = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}

/// Why the server closes a WebSocket. Codes per protocol.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Short, client-safe reason (at most 123 bytes on the wire).
    pub reason: String,
}

impl Close {
    /// 1000: normal closure.
    pub const NORMAL: u16 = 1000;
    /// 1001: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: malformed frame.
    pub const PROTOCOL: u16 = 1002;
    /// 1003: text frame.
    pub const UNSUPPORTED: u16 = 1003;
    /// 1008: authentication failed / policy.
    pub const POLICY: u16 = 1008;
    /// 1009: frame too large.
    pub const TOO_BIG: u16 = 1009;
    /// 1011: internal error.
    pub const INTERNAL: u16 = 1011;
    /// 4000: another connection of the same device logged in.
    pub const REPLACED: u16 = 4000;

    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        // A close frame's payload is at most 125 bytes, 2 of them the code.
        if reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self { code, reason }
    }

    /// 1011 with a generic reason; `detail` is logged.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error on WebSocket");
        Self::new(Self::INTERNAL, "internal error")
    }
}

/// A wire `Error` for `rejected{..}` and `error` frames.
pub fn wire_error(code: ErrorCode, message: impl Into<String>) -> wire::Error {
    wire::Error {
        code: code as i32,
        message: message.into(),
    }
}

/// What a client is told when the server's storage is full.
pub const STORAGE_FULL_MESSAGE: &str = "storage full: the server cannot store this now";

/// Maps a store failure during `submit` to the `rejected{Error}` the client sees.
pub fn submit_rejection(err: &StoreError) -> wire::Error {
    match err {
        StoreError::UnknownDevice(addr) => {
            // The address came from the client's own roster; echoing it is safe.
            wire_error(ErrorCode::NotFound, format!("unknown device {addr}"))
        }
        StoreError::Invalid(detail) => {
            tracing::debug!(%detail, "store refused a submission");
            wire_error(ErrorCode::BadRequest, "rejected by the store")
        }
        StoreError::StorageFull(detail) => {
            // The store warned already; the client keeps the message and retries.
            tracing::debug!(%detail, "submission refused: storage full");
            wire_error(ErrorCode::StorageFull, STORAGE_FULL_MESSAGE)
        }
        other => {
            tracing::error!(detail = %other, "store failed during submit");
            wire_error(ErrorCode::Internal, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_protocol_table() {
        let cases = [
            (ApiError::BadRequest(String::new()), 400),
            (ApiError::InvalidHandle(String::new()), 400),
            (ApiError::Unauthenticated("x"), 401),
            (ApiError::Forbidden("x"), 403),
            (ApiError::InviteRequired("x"), 403),
            (ApiError::NotFound("x"), 404),
            (ApiError::NoKeyPackages, 404),
            (ApiError::HandleTaken, 409),
            (ApiError::TooLarge(String::new()), 413),
            (ApiError::RateLimited, 429),
            (ApiError::QuotaExceeded(String::new()), 403),
            (ApiError::StorageFull, 507),
            (ApiError::RangeNotSatisfiable(5), 416),
            (ApiError::Conflict("x"), 409),
            (ApiError::LimitExceeded(String::new()), 403),
            (ApiError::Internal("db on fire".into()), 500),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
        }
        assert_eq!(
            ApiError::Internal("db on fire".into()).public_message(),
            "internal error"
        );
        assert_eq!(
            ApiError::from(StoreError::Backend("sqlite: disk I/O".into())).public_message(),
            "internal error"
        );
    }

    #[test]
    fn a_full_store_is_storage_full_not_internal() {
        let full = || StoreError::StorageFull("COMMIT: database or disk is full".into());
        let api = ApiError::from(full());
        assert_eq!(
            (api.code(), api.status().as_u16()),
            (ErrorCode::StorageFull, 507)
        );
        let rejected = submit_rejection(&full());
        assert_eq!(rejected.code(), ErrorCode::StorageFull);
        assert_eq!(rejected.message, STORAGE_FULL_MESSAGE);
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let c = Close::new(1002, "é".repeat(100));
        assert!(c.reason.len() <= 123);
        assert!(c.reason.chars().all(|ch| ch == 'é'));
    }
}
