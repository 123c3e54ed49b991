//! Media blobs (protocol.md, "Media"): create, upload parts, status, ranged download,
//! delete; and the sweeper that deletes blobs that are done with.
//!
//! Metadata (who may write and read a blob, which parts are stored, who fetched it, the
//! quota) is the store's ([`hushwire_store::Blobs`]); the bytes are the blob store's
//! ([`hushwire_blobstore::BlobStore`]). Bytes are written before their part is recorded,
//! write-once, so a recorded part always has its bytes; bytes without a record (a crash
//! in between, or a part that lost a race with a deletion) are removed by the handler
//! itself or by the sweeper's scan for orphans.
//!
//! Memory: a part body is read whole (the request signature covers its SHA-256), at
//! most `media.part_size` bytes, within a server-wide budget
//! (`media.upload_buffer_bytes`); downloads stream in chunks of
//! [`hushwire_blobstore::READ_CHUNK`] bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use hushwire_blobstore::{
    BlobStore, BlobStoreError, ObjectBlobStore, PutOutcome, S3Settings, read_blob,
};
use hushwire_proto::wire;
use hushwire_store::{
    BlobId, BlobPart, BlobRecord, BlobSweep, CreateBlobOutcome, DeviceRecord, NewBlob, PartOutcome,
};
use sha2::{Digest, Sha256};

use crate::api::{Proto, decode, signed};
use crate::error::ApiError;
use crate::{Server, auth, now_ms};

/// Blobs handed out per sweep step.
const SWEEP_BATCH: usize = 256;
/// Sweep steps per run at most (a run continues at the next interval).
const SWEEP_MAX_STEPS: usize = 1000;
/// Distinct blob ids checked together in the orphan scan.
const ORPHAN_BATCH: usize = 512;
/// How often the sweeper also looks for bytes whose record is gone.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a part body may take to arrive (it holds memory meanwhile): 4 MiB at
/// 16 KiB/s plus a minute.
const PART_BODY_TIMEOUT: Duration = Duration::from_secs(60 + 256);

/// The blob store `media` names: its S3 bucket (settings from the standard AWS
/// environment variables, overridden by `media.s3_credentials_file`), or the local
/// `{data_dir}/blobs/`. Nothing secret is logged.
pub(crate) fn blob_store(
    media: &crate::MediaConfig,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn BlobStore>, crate::ServerError> {
    let Some(url) = media.store.as_deref() else {
        return Ok(Arc::new(ObjectBlobStore::local(data_dir)?));
    };
    let mut settings = S3Settings::from_env(|k| std::env::var(k).ok());
    if let Some(file) = &media.s3_credentials_file {
        settings.apply_credentials_file(file, None)?;
    }
    let store = ObjectBlobStore::s3(url, &settings)?;
    tracing::info!(
        store = url,
        endpoint = settings.endpoint.as_deref().unwrap_or("(AWS)"),
        static_credentials = settings.credentials.is_some(),
        "media blobs in S3"
    );
    Ok(Arc::new(store))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn blob_id(hex: &str) -> Result<BlobId, ApiError> {
    BlobId::from_hex(hex)
        .ok_or_else(|| ApiError::BadRequest("blob id must be 64 hex digits".into()))
}

fn blob_error(e: BlobStoreError) -> ApiError {
    match e {
        BlobStoreError::StorageFull(detail) => {
            tracing::error!(%detail, "blob storage is full");
            ApiError::StorageFull
        }
        other => ApiError::Internal(format!("blob store: {other}")),
    }
}

/// The blob if it exists and belongs to the device's account; NOT_FOUND otherwise, so
/// other accounts learn nothing.
async fn owned_blob(
    server: &Server,
    device: &DeviceRecord,
    id: &BlobId,
) -> Result<BlobRecord, ApiError> {
    server
        .shared
        .store
        .blob(id)
        .await?
        .filter(|b| b.account() == device.addr.handle)
        .ok_or(ApiError::NotFound("unknown blob"))
}

async fn blob_status(server: &Server, blob: &BlobRecord) -> Result<wire::BlobStatus, ApiError> {
    let parts = server.shared.store.blob_parts(&blob.id).await?;
    let mut stored = parts.iter().map(|p| p.index).peekable();
    let mut missing = Vec::new();
    for index in 0..blob.part_count() {
        while stored.next_if(|s| *s < index).is_some() {}
        if stored.next_if_eq(&index).is_none() {
            missing.push(index);
        }
    }
    Ok(wire::BlobStatus {
        size: blob.size,
        part_size: blob.part_size,
        received_bytes: parts.iter().map(|p| u64::from(p.len)).sum(),
        missing_parts: missing,
        complete: blob.complete(),
    })
}

/// `POST /v1/blobs`: a new blob for a group the device is in.
#[tracing::instrument(skip_all)]
pub(crate) async fn create_blob(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::BlobCreated>, ApiError> {
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::CreateBlob = decode(&bytes)?;
    let media = &server.shared.config.media;
    if req.group_id.is_empty() || req.group_id.len() > hushwire_proto::limits::MAX_GROUP_ID_BYTES {
        return Err(ApiError::BadRequest(
            "group id must be 1 to 64 bytes".into(),
        ));
    }
    if req.size > media.max_blob_bytes {
        return Err(ApiError::TooLarge(format!(
            "blobs hold at most {} bytes on this server",
            media.max_blob_bytes
        )));
    }
    let id = {
        use rand::RngCore;
        let mut id = [0u8; hushwire_store::BLOB_ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut id);
        BlobId(id)
    };
    let now = now_ms();
    let outcome = server
        .shared
        .store
        .create_blob(NewBlob {
            id,
            uploader: device.id,
            group_id: req.group_id,
            size: req.size,
            part_size: media.part_size,
            quota_bytes: media.quota_bytes,
            now_ms: now,
            expires_at_ms: now.saturating_add(millis(media.retention)),
        })
        .await?;
    match outcome {
        CreateBlobOutcome::Created(blob) => {
            tracing::debug!(device = %device.addr, size = blob.size, "blob created");
            Ok(Proto(wire::BlobCreated {
                blob_id: Bytes::copy_from_slice(&blob.id.0),
                part_size: blob.part_size,
                expires_at_ms: blob.expires_at_ms,
            }))
        }
        CreateBlobOutcome::NotMember => Err(ApiError::NotFound("unknown group")),
        CreateBlobOutcome::QuotaExceeded { used, quota } => Err(ApiError::QuotaExceeded(format!(
            "the account's blobs hold {used} of its {quota} bytes; this one needs {}",
            req.size
        ))),
    }
}

/// Reads a request body of at most `limit` bytes.
async fn read_part_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("a part holds at most {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(64 * 1024, |n| usize::try_from(n).unwrap_or(limit));
    let mut buf = bytes::BytesMut::with_capacity(capacity.min(limit));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::BadRequest("cannot read the request body".into()))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The cheap half of request authentication: a well-formed header, a timestamp in the
/// window, a device that exists and is not revoked. The signature is checked later.
async fn precheck(server: &Server, headers: &HeaderMap) -> Result<(), ApiError> {
    use hushwire_proto::identity::{REQUEST_AUTH_HEADER, REQUEST_AUTH_WINDOW_MS, RequestAuth};
    let auth = headers
        .get(REQUEST_AUTH_HEADER)
        .ok_or(ApiError::Unauthenticated("missing x-hushwire-auth header"))?
        .to_str()
        .ok()
        .and_then(RequestAuth::parse)
        .ok_or(ApiError::Unauthenticated(
            "malformed x-hushwire-auth header",
        ))?;
    if auth.unix_ms.abs_diff(now_ms()) > REQUEST_AUTH_WINDOW_MS {
        return Err(ApiError::Unauthenticated(
            "request timestamp outside the allowed window",
        ));
    }
    let addr = hushwire_store::DeviceAddr {
        handle: auth.handle,
        device_id: auth.device_id,
    };
    // The same answer as `auth::authenticate_request` for either: it does not say
    // whether the device exists.
    match server.shared.store.device(&addr).await? {
        Some(d) if !d.revoked => Ok(()),
        Some(_) | None => Err(ApiError::Unauthenticated(auth::AUTH_FAILED)),
    }
}

/// SHA-256 of a stored part's bytes, read as a stream.
async fn stored_part_hash(
    server: &Server,
    id: &BlobId,
    index: u32,
) -> Result<([u8; 32], u64), ApiError> {
    let mut stream = server
        .shared
        .blobs
        .read_part(&id.0, index, 0)
        .await
        .map_err(blob_error)?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(blob_error)? {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hasher.finalize().into(), len))
}

/// `PUT /v1/blobs/{id}/parts/{index}`: stores one part (write-once; the same bytes
/// again are accepted).
#[tracing::instrument(skip_all)]
pub(crate) async fn upload_part(
    State(server): State<Server>,
    Path((id, index)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Proto<wire::BlobStatus>, ApiError> {
    let shared = &server.shared;
    let limit = shared.config.media.part_size;
    // The signature can only be checked once the body is in, but a request that does
    // not even name a current device gets no memory.
    precheck(&server, &headers).await?;
    // Hold the part's worth of the memory budget while its body is in memory, for a
    // bounded time.
    let _budget = std::sync::Arc::clone(&shared.upload_budget)
        .acquire_many_owned(limit)
        .await
        .map_err(|_| ApiError::Internal("upload budget closed".into()))?;
    let body = tokio::time::timeout(
        PART_BODY_TIMEOUT,
        read_part_body(&headers, body, limit as usize),
    )
    .await
    .map_err(|_| ApiError::BadRequest("the part body arrived too slowly".into()))??;
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let device = auth::authenticate_request(
        shared.store.as_ref(),
        &shared.replay,
        method.as_str(),
        path_and_query,
        &headers,
        &body,
        now_ms(),
    )
    .await?;
    let id = blob_id(&id)?;
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::BadRequest("part index must be a number".into()))?;
    let blob = owned_blob(&server, &device, &id).await?;
    let expected = blob.part_len(index).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "part {index} does not exist: the blob has {} parts",
            blob.part_count()
        ))
    })?;
    let got = body.len() as u64;
    if got > u64::from(expected) {
        return Err(ApiError::TooLarge(format!(
            "part {index} holds {expected} bytes, not {got}"
        )));
    }
    if got < u64::from(expected) {
        return Err(ApiError::BadRequest(format!(
            "part {index} holds {expected} bytes, not {got}"
        )));
    }
    let part = BlobPart {
        index,
        len: expected,
        sha256: Sha256::digest(&body).into(),
    };
    let conflict = || {
        ApiError::BadRequest(format!(
            "part {index} is stored already with different bytes"
        ))
    };
    // Recorded already: nothing to write.
    let recorded = shared.store.blob_parts(&id).await?;
    if let Some(p) = recorded.iter().find(|p| p.index == index) {
        return if p.sha256 == part.sha256 {
            Ok(Proto(blob_status(&server, &blob).await?))
        } else {
            Err(conflict())
        };
    }
    let written = shared
        .blobs
        .put_part(&id.0, index, body)
        .await
        .map_err(blob_error)?;
    if written == PutOutcome::Exists {
        // Bytes without a record: an earlier attempt stored them but did not get to
        // record them (or is recording them now). The same bytes complete it.
        let (hash, len) = stored_part_hash(&server, &id, index).await?;
        if hash != part.sha256 || len != u64::from(expected) {
            return Err(conflict());
        }
    }
    match shared.store.record_blob_part(&id, part, now_ms()).await? {
        PartOutcome::Stored(blob) | PartOutcome::AlreadyStored(blob) => {
            Ok(Proto(blob_status(&server, &blob).await?))
        }
        PartOutcome::Conflict => Err(conflict()),
        PartOutcome::UnknownBlob => {
            // Deleted meanwhile: take back what this request wrote.
            if written == PutOutcome::Created
                && let Err(e) = shared.blobs.delete_part(&id.0, index).await
            {
                tracing::warn!(error = %e, "could not delete a part of a deleted blob");
            }
            Err(ApiError::NotFound("unknown blob"))
        }
    }
}

/// `GET /v1/blobs/{id}/status`.
#[tracing::instrument(skip_all)]
pub(crate) async fn status(
    State(server): State<Server>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::BlobStatus>, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let id = blob_id(&id)?;
    let blob = owned_blob(&server, &device, &id).await?;
    Ok(Proto(blob_status(&server, &blob).await?))
}

/// The requested byte range `[start, end)` of a blob of `size` bytes: `None` for the
/// whole blob (no usable Range header: it is ignored, as HTTP allows), or an error when
/// it starts at or past the end.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (first.trim(), last.trim()) {
        ("", "") => return Ok(None),
        // Suffix: the last N bytes.
        ("", n) => match n.parse::<u64>() {
            Ok(0) => return Err(ApiError::RangeNotSatisfiable(size)),
            Ok(n) => (size.saturating_sub(n), size),
            Err(_) => return Ok(None),
        },
        (s, "") => match s.parse::<u64>() {
            Ok(s) => (s, size),
            Err(_) => return Ok(None),
        },
        (s, e) => match (s.parse::<u64>(), e.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => (s, e.saturating_add(1).min(size)),
            _ => return Ok(None),
        },
    };
    if start >= size {
        // An empty blob has no byte to give; "bytes=0-" of it is answered in full.
        if start == 0 && first.trim() == "0" {
            return Ok(None);
        }
        return Err(ApiError::RangeNotSatisfiable(size));
    }
    if start == 0 && end == size {
        return Ok(None);
    }
    Ok(Some((start, end)))
}

/// `GET /v1/blobs/{id}`: the ciphertext, streamed; `Range` resumes (206).
#[tracing::instrument(skip_all)]
pub(crate) async fn download(
    State(server): State<Server>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let id = blob_id(&id)?;
    let shared = &server.shared;
    let blob = shared
        .store
        .readable_blob(&id, device.id)
        .await?
        .filter(|b| b.complete() && b.expires_at_ms > now_ms())
        .ok_or(ApiError::NotFound("unknown blob"))?;
    let range = requested_range(&headers, blob.size)?;
    let (start, end) = range.unwrap_or((0, blob.size));
    let stream = read_blob(
        std::sync::Arc::clone(&shared.blobs),
        id.0,
        blob.size,
        blob.part_size,
        start,
    );
    // Only what was asked for (a bounded range stops early). The connection sends
    // exactly Content-Length bytes and does not poll further, so the fetch is recorded
    // as the chunk holding the blob's last byte goes out, not at the stream's end.
    let reaches_end = end == blob.size;
    let store = std::sync::Arc::clone(&shared.store);
    let reader = device.id;
    let record = move || {
        let store = std::sync::Arc::clone(&store);
        async move {
            if let Err(e) = store.record_blob_fetch(&id, reader, now_ms()).await {
                tracing::warn!(error = %e, "recording a blob fetch failed");
            }
        }
    };
    if end == start && reaches_end {
        // An empty blob: nothing to stream.
        record().await;
    }
    let trimmed = stream.scan(end - start, move |left, item| {
        let out = match item {
            Ok(mut chunk) if *left > 0 => {
                if chunk.len() as u64 > *left {
                    chunk.truncate(usize::try_from(*left).unwrap_or(0));
                }
                *left -= chunk.len() as u64;
                Some((Ok(chunk), *left == 0 && reaches_end))
            }
            Ok(_) => None,
            Err(e) => Some((Err(e), false)),
        };
        let record = record.clone();
        async move {
            match out {
                Some((chunk, true)) => {
                    record().await;
                    Some(chunk)
                }
                Some((chunk, false)) => Some(chunk),
                None => None,
            }
        }
    });
    let body = Body::from_stream(trimmed.map_err(|e| {
        tracing::warn!(error = %e, "blob download failed midway");
        std::io::Error::other(e.to_string())
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{}/{}", end - 1, blob.size);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    tracing::debug!(device = %device.addr, start, end, "blob download");
    Ok(resp)
}

/// `DELETE /v1/blobs/{id}`: deletes a blob of the device's account at once.
#[tracing::instrument(skip_all)]
pub(crate) async fn delete_blob(
    State(server): State<Server>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let id = blob_id(&id)?;
    owned_blob(&server, &device, &id).await?;
    let shared = &server.shared;
    if !shared.store.begin_blob_deletion(&id, now_ms()).await? {
        return Err(ApiError::NotFound("unknown blob"));
    }
    // From here the blob is gone for every client and its quota released; if the bytes
    // cannot be deleted now, the sweeper retries.
    match shared.blobs.delete_blob(&id.0).await {
        Ok(()) => {
            shared.store.purge_blobs(&[id]).await?;
        }
        Err(e) => tracing::warn!(error = %e, "blob bytes not deleted yet; the sweeper retries"),
    }
    tracing::debug!(device = %device.addr, "blob deleted");
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(hushwire_proto::PROTOBUF_CONTENT_TYPE),
        )],
    )
        .into_response())
}

// --- the sweeper -------------------------------------------------------------------------

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SweepReport {
    /// Blobs deleted (bytes and records).
    pub(crate) deleted: u64,
    /// Blobs whose bytes could not be deleted (left for the next sweep).
    pub(crate) failed: u64,
}

/// Deletes every due blob: bytes first, then the records. Bounded in steps.
pub(crate) async fn sweep_once(server: &Server) -> Result<SweepReport, hushwire_store::StoreError> {
    let shared = &server.shared;
    let media = &shared.config.media;
    let mut report = SweepReport::default();
    for _ in 0..SWEEP_MAX_STEPS {
        let rules = BlobSweep {
            now_ms: now_ms(),
            grace_after_fetch_ms: millis(media.grace_after_fetch),
            abandoned_after_ms: millis(media.abandoned_upload_after),
        };
        let due = shared.store.sweep_blobs(rules, SWEEP_BATCH).await?;
        let mut gone = Vec::with_capacity(due.len());
        for id in &due {
            match shared.blobs.delete_blob(&id.0).await {
                Ok(()) => gone.push(*id),
                Err(e) => {
                    tracing::warn!(error = %e, blob = %id, "deleting blob bytes failed");
                    report.failed += 1;
                }
            }
        }
        report.deleted += shared.store.purge_blobs(&gone).await?;
        // Done, or stuck on failures: the next run tries again.
        if due.len() < SWEEP_BATCH || gone.len() < due.len() {
            break;
        }
    }
    Ok(report)
}

/// Deletes stored parts whose blob has no record (crash leftovers). Returns how many
/// blobs' bytes were deleted.
pub(crate) async fn remove_orphans(server: &Server) -> Result<u64, ApiError> {
    let shared = &server.shared;
    let mut listing = shared.blobs.list_parts();
    let mut batch: Vec<BlobId> = Vec::with_capacity(ORPHAN_BATCH);
    let mut removed = 0u64;
    let mut finished = false;
    while !finished {
        match listing.try_next().await.map_err(blob_error)? {
            Some(part) => {
                let id = BlobId(part.blob);
                if !batch.contains(&id) {
                    batch.push(id);
                }
            }
            None => finished = true,
        }
        if batch.len() >= ORPHAN_BATCH || (finished && !batch.is_empty()) {
            let known = shared.store.known_blobs(&batch).await?;
            for id in batch.drain(..).filter(|id| !known.contains(id)) {
                shared.blobs.delete_blob(&id.0).await.map_err(blob_error)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The sweeper task: a sweep every `media.sweep_interval`, an orphan scan at start and
/// then daily; stops on shutdown.
pub(crate) async fn sweep_loop(server: Server) {
    let shared = &server.shared;
    let interval = shared.config.media.sweep_interval;
    let mut next_orphan_scan = Instant::now();
    loop {
        match sweep_once(&server).await {
            Ok(SweepReport {
                deleted: 0,
                failed: 0,
            }) => {}
            Ok(r) => tracing::info!(deleted = r.deleted, failed = r.failed, "media sweep"),
            Err(e) => tracing::error!(error = %e, "media sweep failed"),
        }
        if Instant::now() >= next_orphan_scan {
            match remove_orphans(&server).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(blobs = n, "removed blob bytes without a record"),
                Err(e) => tracing::error!(error = %e, "orphan scan failed"),
            }
            next_orphan_scan = Instant::now() + ORPHAN_SCAN_EVERY;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, u64> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested_range(&h, size).map_err(|e| match e {
            ApiError::RangeNotSatisfiable(n) => n,
            _ => u64::MAX,
        })
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=10-", 100), Ok(Some((10, 100))));
        assert_eq!(range("bytes=0-", 100), Ok(None));
        assert_eq!(range("bytes=10-19", 100), Ok(Some((10, 20))));
        assert_eq!(range("bytes=90-200", 100), Ok(Some((90, 100))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(range("bytes=100-", 100), Err(100));
        assert_eq!(range("bytes=150-", 100), Err(100));
        assert_eq!(range("bytes=-0", 100), Err(100));
        // Ignored (answered in full): other units, several ranges, nonsense.
        assert_eq!(range("items=1-", 100), Ok(None));
        assert_eq!(range("bytes=1-2,5-6", 100), Ok(None));
        assert_eq!(range("bytes=x-", 100), Ok(None));
        assert_eq!(range("bytes=5-2", 100), Ok(None));
        // An empty blob: bytes=0- is the whole (empty) blob.
        assert_eq!(range("bytes=0-", 0), Ok(None));
        assert_eq!(range("bytes=1-", 0), Err(0));
    }
}
