//! Key transparency routes and the publisher task (`hushwire-directory`).
//!
//! Public (rate-limited per IP, no account needed, so anyone can audit):
//! `GET /v1/directory`, `GET /v1/directory/roots?after=&limit=`,
//! `GET /v1/directory/audit/{epoch}`. Authenticated: `POST /v1/directory/lookup`
//! (any handles) and `GET /v1/directory/history` (the caller's own handle only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;
use hushwire_directory::server::{MAX_LOOKUPS, MAX_ROOTS};
use hushwire_directory::{DirectoryError, KeyDirectory};
use hushwire_proto::identity::validate_handle;
use hushwire_proto::wire;
use serde::Deserialize;

use crate::api::{Proto, decode, signed};
use crate::error::ApiError;
use crate::{Server, conn_limit};

/// Opens the key directory (retrying while the store is unreachable), then publishes
/// every `directory.publish_interval` until shutdown.
pub(crate) async fn run(server: Server) {
    let shared = &server.shared;
    let interval = shared.config.directory.publish_interval;
    let mut backoff = Duration::from_millis(500);
    let directory = loop {
        let opened = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            d = KeyDirectory::open(Arc::clone(&shared.store), interval) => d,
        };
        match opened {
            Ok(d) => break Arc::new(d),
            Err(e @ DirectoryError::Corrupt { .. }) => {
                // Never serve proofs from a log that does not replay; say so loudly.
                tracing::error!(error = %e, "the key directory cannot be served");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening the key directory failed; retrying");
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let latest = directory.latest();
    tracing::info!(epoch = latest.epoch, "key directory loaded");
    if shared.directory.set(Arc::clone(&directory)).is_err() {
        return;
    }
    let token = shared.shutdown.clone();
    directory
        .run_publisher(async move { token.cancelled().await })
        .await;
}

fn directory(server: &Server) -> Result<&Arc<KeyDirectory>, ApiError> {
    server
        .shared
        .directory
        .get()
        .ok_or(ApiError::Unavailable("the key directory is loading"))
}

fn public_limit(server: &Server, peer: &SocketAddr) -> Result<(), ApiError> {
    if server
        .shared
        .directory_limiter
        .check(conn_limit::client(peer.ip()), Instant::now())
    {
        Ok(())
    } else {
        Err(ApiError::RateLimited)
    }
}

fn internal(e: DirectoryError) -> ApiError {
    match e {
        DirectoryError::UnknownEpoch(_) => ApiError::NotFound("no such epoch"),
        DirectoryError::Rebuilding => ApiError::Unavailable("the key directory is being rebuilt"),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `GET /v1/directory`: the latest root the store holds (also one another node
/// published since this node last followed), so that clients and auditors moving
/// between nodes never see the directory go back.
#[tracing::instrument(skip_all)]
pub(crate) async fn latest(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Proto<wire::DirectoryRoot>, ApiError> {
    public_limit(&server, &peer)?;
    Ok(Proto(directory(&server)?.stored_latest().await))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /v1/directory/roots?after=N&limit=M`, as the store holds them (see `latest`).
#[tracing::instrument(skip_all)]
pub(crate) async fn roots(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<RootsQuery>,
) -> Result<Proto<wire::DirectoryRoots>, ApiError> {
    public_limit(&server, &peer)?;
    let limit = q.limit.unwrap_or(MAX_ROOTS).min(MAX_ROOTS);
    Ok(Proto(wire::DirectoryRoots {
        roots: directory(&server)?.stored_roots(q.after, limit).await,
    }))
}

/// `GET /v1/directory/audit/{epoch}`.
#[tracing::instrument(skip_all)]
pub(crate) async fn audit(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(epoch): Path<u64>,
) -> Result<Proto<wire::DirectoryAudit>, ApiError> {
    public_limit(&server, &peer)?;
    let proof = directory(&server)?.audit(epoch).await.map_err(internal)?;
    Ok(Proto(proof))
}

/// `POST /v1/directory/lookup` (signed).
#[tracing::instrument(skip_all)]
pub(crate) async fn lookup(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::DirectoryLookupResponse>, ApiError> {
    let (_device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::DirectoryLookupRequest = decode(&bytes)?;
    if req.handles.len() > MAX_LOOKUPS {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_LOOKUPS} handles per lookup"
        )));
    }
    for handle in &req.handles {
        validate_handle(handle).map_err(|e| ApiError::InvalidHandle(e.to_string()))?;
    }
    let answer = directory(&server)?
        .lookup(&req.handles)
        .await
        .map_err(internal)?;
    Ok(Proto(answer))
}

/// `GET /v1/directory/history` (signed): the caller's own handle.
#[tracing::instrument(skip_all)]
pub(crate) async fn history(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::DirectoryHistory>, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let answer = directory(&server)?
        .history(&device.addr.handle)
        .await
        .map_err(internal)?;
    Ok(Proto(answer))
}
