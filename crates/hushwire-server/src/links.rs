//! Link sessions (protocol.md, "Devices and linking"): the rendezvous through which an
//! existing device and a new one exchange the end-to-end encrypted link messages.
//!
//! An authenticated device opens a session (`POST /v1/links`) and shows its id in the
//! link code. Slots are then written once and read by either device without
//! authentication: the 128-bit id is the capability, and the bytes are sealed with keys
//! the server never sees. Reads long-poll: the store is re-read every
//! [`POLL_EVERY`] until the slot is written or the wait is over, so the two devices may
//! be connected to different nodes. Slot requests are rate-limited per client IP.
//! Expired sessions are unknown at once and purged by the server's purge task.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use hushwire_proto::limits::{MAX_LINK_SLOT_BYTES, MAX_LINK_SLOTS, MAX_LINK_TTL_SECS};
use hushwire_proto::link::valid_slot_name;
use hushwire_proto::wire;
use hushwire_store::{LinkId, LinkSlot, PutSlot};
use rand::RngCore;

use crate::api::{Proto, decode, decode_hex, signed};
use crate::error::ApiError;
use crate::{Server, conn_limit, now_ms};

// The store enforces the protocol's slot limit.
const _: () = assert!(hushwire_store::MAX_LINK_SLOTS == MAX_LINK_SLOTS);

/// Longest a slot read waits for the slot to be written.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting read looks at the store again.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(150);

fn link_id(hex: &str) -> Result<LinkId, ApiError> {
    decode_hex(hex)
        .and_then(|v| LinkId::try_from(v.as_slice()).ok())
        .ok_or_else(|| ApiError::BadRequest("a link id is 32 hex digits".into()))
}

fn slot_name(slot: &str) -> Result<(), ApiError> {
    if valid_slot_name(slot) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "a slot name is 1 to 16 characters a-z, 0-9".into(),
        ))
    }
}

fn rate_limit(server: &Server, peer: &SocketAddr) -> Result<(), ApiError> {
    if server
        .shared
        .link_limiter
        .check(conn_limit::client(peer.ip()), Instant::now())
    {
        Ok(())
    } else {
        Err(ApiError::RateLimited)
    }
}

/// `POST /v1/links`: opens a link session owned by the calling device.
#[tracing::instrument(skip_all)]
pub(crate) async fn create(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::LinkCreated>, ApiError> {
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::LinkCreate = decode(&bytes)?;
    if !(1..=MAX_LINK_TTL_SECS).contains(&req.ttl_secs) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_LINK_TTL_SECS}"
        )));
    }
    let mut id: LinkId = [0; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let expires_at_ms = now_ms().saturating_add(u64::from(req.ttl_secs) * 1000);
    server
        .shared
        .store
        .create_link(id, &device.addr, expires_at_ms)
        .await?;
    tracing::debug!(device = %device.addr, ttl = req.ttl_secs, "link session opened");
    Ok(Proto(wire::LinkCreated {
        link_id: Bytes::copy_from_slice(&id),
        expires_at_ms,
    }))
}

/// Longest a slot body may take to arrive.
const SLOT_BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads a slot body of at most [`MAX_LINK_SLOT_BYTES`], refusing a larger one as soon
/// as it shows (by its `content-length` or its bytes).
async fn read_slot_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::TooLarge(format!("a slot holds at most {MAX_LINK_SLOT_BYTES} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_LINK_SLOT_BYTES as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(64 * 1024, |n| {
        usize::try_from(n).unwrap_or(MAX_LINK_SLOT_BYTES)
    });
    let mut buf = bytes::BytesMut::with_capacity(capacity.min(MAX_LINK_SLOT_BYTES));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::BadRequest("cannot read the request body".into()))?;
        if buf.len() + chunk.len() > MAX_LINK_SLOT_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `PUT /v1/links/{id}/{slot}`: writes a slot once. The body is read only after the
/// rate limit and the path were checked, within the server's upload memory budget
/// (`media.upload_buffer_bytes`, shared with media parts).
#[tracing::instrument(skip_all)]
pub(crate) async fn put_slot(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, slot)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(), ApiError> {
    rate_limit(&server, &peer)?;
    let id = link_id(&id)?;
    slot_name(&slot)?;
    let shared = &server.shared;
    let budget = u32::try_from(MAX_LINK_SLOT_BYTES)
        .unwrap_or(u32::MAX)
        .min(u32::try_from(shared.config.media.upload_buffer_bytes).unwrap_or(u32::MAX));
    let _budget = std::sync::Arc::clone(&shared.upload_budget)
        .acquire_many_owned(budget)
        .await
        .map_err(|_| ApiError::Internal("upload budget closed".into()))?;
    let bytes = tokio::time::timeout(SLOT_BODY_TIMEOUT, read_slot_body(&headers, body))
        .await
        .map_err(|_| ApiError::BadRequest("the slot body arrived too slowly".into()))??;
    match shared
        .store
        .put_link_slot(id, &slot, bytes, now_ms())
        .await?
    {
        PutSlot::Stored => Ok(()),
        PutSlot::AlreadyWritten => Err(ApiError::Conflict("the slot was written already")),
        PutSlot::TooManySlots => Err(ApiError::LimitExceeded(format!(
            "a link session holds at most {MAX_LINK_SLOTS} slots"
        ))),
        PutSlot::UnknownOrExpired => Err(ApiError::NotFound("unknown or expired link session")),
    }
}

/// How long a read may wait, from its `wait_ms` query parameter (absent: 0).
fn wait_of(uri: &Uri) -> Result<Duration, ApiError> {
    let Some(value) = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait_ms="))
    else {
        return Ok(Duration::ZERO);
    };
    let ms: u64 = value
        .parse()
        .map_err(|_| ApiError::BadRequest("wait_ms must be a number".into()))?;
    Ok(Duration::from_millis(ms).min(MAX_WAIT))
}

/// `GET /v1/links/{id}/{slot}?wait_ms=N`: a slot's bytes, waiting for them up to
/// `min(N, 30000)` ms (then 204).
#[tracing::instrument(skip_all)]
pub(crate) async fn get_slot(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, slot)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, ApiError> {
    rate_limit(&server, &peer)?;
    let id = link_id(&id)?;
    slot_name(&slot)?;
    let wait = wait_of(&uri)?;
    let shared = &server.shared;
    let deadline = Instant::now() + wait;
    loop {
        match shared.store.link_slot(id, &slot, now_ms()).await? {
            LinkSlot::Bytes(data) => {
                let mut resp = (StatusCode::OK, Body::from(data)).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                return Ok(resp);
            }
            LinkSlot::UnknownOrExpired => {
                return Err(ApiError::NotFound("unknown or expired link session"));
            }
            LinkSlot::NotYet => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let pause = POLL_EVERY.min(deadline - now);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // Shutting down: answer "not yet" so the client asks again (elsewhere).
            () = shared.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// `DELETE /v1/links/{id}`: ends a session; only the device that opened it may.
#[tracing::instrument(skip_all)]
pub(crate) async fn delete(
    State(server): State<Server>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(), ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let id = link_id(&id)?;
    let store = &server.shared.store;
    // To anyone but its owner the session does not exist.
    match store.link_owner(id, now_ms()).await? {
        Some(owner) if owner == device.addr => {}
        _ => return Err(ApiError::NotFound("unknown or expired link session")),
    }
    store.delete_link(id).await?;
    tracing::debug!(device = %device.addr, "link session ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn wait_parameter() {
        let w = |q: &str| wait_of(&q.parse::<Uri>().unwrap());
        assert_eq!(w("/x").unwrap(), Duration::ZERO);
        assert_eq!(w("/x?wait_ms=250").unwrap(), Duration::from_millis(250));
        assert_eq!(w("/x?a=1&wait_ms=99999999").unwrap(), MAX_WAIT);
        assert!(w("/x?wait_ms=soon").is_err());
    }

    #[test]
    fn ids_and_slots() {
        assert_eq!(link_id(&"ab".repeat(16)).unwrap(), [0xab; 16]);
        assert!(link_id("abcd").is_err());
        assert!(link_id(&"zz".repeat(16)).is_err());
        assert!(slot_name("hello1").is_ok());
        assert!(slot_name("Hello").is_err());
    }
}
