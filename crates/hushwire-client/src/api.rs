//! The HTTPS API: protobuf bodies, signed requests, typed errors.
//!
//! A request is built as an [`ApiRequest`], signed synchronously with a [`Signer`]
//! (so no borrow of a key store is held across an `.await`), then sent with
//! [`ApiClient::call`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use ed25519_dalek::{Signer as _, SigningKey};
use hushwire_proto::codec::decode_bounded;
use hushwire_proto::identity::{REQUEST_AUTH_HEADER, RequestAuth, request_auth_payload};
use hushwire_proto::limits::{MAX_API_BODY_BYTES, MAX_API_RESPONSE_BYTES};
use hushwire_proto::wire::{self, ErrorCode};
use hushwire_proto::{PROTOBUF_CONTENT_TYPE, codec};
use prost::Message;
use reqwest::Method;

use crate::{ClientError, Endpoint};

/// Milliseconds since the Unix epoch by the local clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A timestamp for signing a request: the local clock, but strictly increasing within
/// the process. The server refuses a signature it has seen before, and two identical
/// requests signed in the same millisecond would otherwise have the same signature.
pub fn signing_time_ms() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = unix_ms();
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.saturating_add(1));
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Something that signs with a device key on behalf of `handle`/`device_id`.
pub trait Signer {
    /// The account's handle.
    fn handle(&self) -> &str;
    /// The device id within the account.
    fn device_id(&self) -> u32;
    /// Ed25519 signature by the device key.
    fn sign(&self, payload: &[u8]) -> Result<[u8; 64], ClientError>;
}

/// A [`Signer`] holding a raw device key: for tools (the load generator) that act as
/// devices without a profile. The key is zeroized on drop and never printed.
pub struct KeySigner {
    handle: String,
    device_id: u32,
    key: SigningKey,
}

impl KeySigner {
    /// Wraps a device key.
    pub fn new(handle: impl Into<String>, device_id: u32, key: SigningKey) -> Self {
        Self {
            handle: handle.into(),
            device_id,
            key,
        }
    }

    /// The device's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

impl fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySigner")
            .field("handle", &self.handle)
            .field("device_id", &self.device_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer for KeySigner {
    fn handle(&self) -> &str {
        &self.handle
    }
    fn device_id(&self) -> u32 {
        self.device_id
    }
    fn sign(&self, payload: &[u8]) -> Result<[u8; 64], ClientError> {
        Ok(self.key.sign(payload).to_bytes())
    }
}

/// One HTTPS API call, before or after signing.
#[derive(Clone)]
pub struct ApiRequest {
    method: Method,
    route: String,
    /// `Bytes`, so a retry (and a multi-MiB blob part) is never copied.
    body: Bytes,
    auth: Option<String>,
    content_type: &'static str,
    /// `Range: bytes=N-` (downloads; not covered by the signature).
    range_from: Option<u64>,
}

impl fmt::Debug for ApiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("route", &self.route)
            .field("body_len", &self.body.len())
            .field("signed", &self.auth.is_some())
            .finish()
    }
}

impl ApiRequest {
    /// A request with a protobuf body (or none for GET).
    pub fn new(method: Method, route: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            method,
            route: route.into(),
            body: Bytes::from(body),
            auth: None,
            content_type: PROTOBUF_CONTENT_TYPE,
            range_from: None,
        }
    }

    /// `POST /v1/blobs` (sign it).
    pub fn create_blob(req: &wire::CreateBlob) -> Self {
        Self::new(Method::POST, "/v1/blobs", codec::encode(req))
    }

    /// `PUT /v1/blobs/{id}/parts/{index}` with the part's raw bytes (sign it).
    pub fn put_blob_part(blob_id: &[u8], index: u32, part: Vec<u8>) -> Self {
        let mut req = Self::new(
            Method::PUT,
            format!("/v1/blobs/{}/parts/{index}", hex_id(blob_id)),
            part,
        );
        req.content_type = OCTET_STREAM;
        req
    }

    /// `GET /v1/blobs/{id}/status` (sign it).
    pub fn blob_status(blob_id: &[u8]) -> Self {
        Self::new(
            Method::GET,
            format!("/v1/blobs/{}/status", hex_id(blob_id)),
            Vec::new(),
        )
    }

    /// `GET /v1/blobs/{id}`, from byte `from` on (`Range: bytes=from-` when > 0; sign
    /// it); send it with [`ApiClient::open_stream`].
    pub fn download_blob(blob_id: &[u8], from: u64) -> Self {
        let mut req = Self::new(
            Method::GET,
            format!("/v1/blobs/{}", hex_id(blob_id)),
            Vec::new(),
        );
        req.range_from = (from > 0).then_some(from);
        req
    }

    /// `DELETE /v1/blobs/{id}` (sign it).
    pub fn delete_blob(blob_id: &[u8]) -> Self {
        Self::new(
            Method::DELETE,
            format!("/v1/blobs/{}", hex_id(blob_id)),
            Vec::new(),
        )
    }

    /// `POST /v1/devices` (sign it).
    pub fn add_device(req: &wire::AddDevice) -> Self {
        Self::new(Method::POST, "/v1/devices", codec::encode(req))
    }

    /// `POST /v1/devices/recover` (not signed: the certificate is the credential).
    pub fn recover_device(req: &wire::RecoverDevice) -> Self {
        Self::new(Method::POST, "/v1/devices/recover", codec::encode(req))
    }

    /// `PUT /v1/devices/list` (sign it).
    pub fn put_device_list(req: &wire::SignedDeviceList) -> Self {
        Self::new(Method::PUT, "/v1/devices/list", codec::encode(req))
    }

    /// `DELETE /v1/devices/{id}` (sign it).
    pub fn remove_device(device_id: u32) -> Self {
        Self::new(
            Method::DELETE,
            format!("/v1/devices/{device_id}"),
            Vec::new(),
        )
    }

    /// `POST /v1/links` (sign it).
    pub fn create_link(req: &wire::LinkCreate) -> Self {
        Self::new(Method::POST, "/v1/links", codec::encode(req))
    }

    /// `PUT /v1/links/{id}/{slot}` with raw bytes (not signed).
    pub fn put_link_slot(link_id: &[u8], slot: &str, body: Vec<u8>) -> Self {
        let mut req = Self::new(
            Method::PUT,
            format!("/v1/links/{}/{slot}", hex_id(link_id)),
            body,
        );
        req.content_type = OCTET_STREAM;
        req
    }

    /// `GET /v1/links/{id}/{slot}?wait_ms=N` (not signed); send it with
    /// [`ApiClient::open_stream`] (200 with the bytes, or 204 when not written yet).
    pub fn get_link_slot(link_id: &[u8], slot: &str, wait_ms: u64) -> Self {
        Self::new(
            Method::GET,
            format!("/v1/links/{}/{slot}?wait_ms={wait_ms}", hex_id(link_id)),
            Vec::new(),
        )
    }

    /// `DELETE /v1/links/{id}` (sign it).
    pub fn delete_link(link_id: &[u8]) -> Self {
        Self::new(
            Method::DELETE,
            format!("/v1/links/{}", hex_id(link_id)),
            Vec::new(),
        )
    }

    /// `POST /v1/register` (not signed).
    pub fn register(req: &wire::RegisterRequest) -> Self {
        Self::new(Method::POST, "/v1/register", codec::encode(req))
    }

    /// `GET /v1/accounts/{handle}` (sign it).
    pub fn account(handle: &str) -> Self {
        Self::new(Method::GET, format!("/v1/accounts/{handle}"), Vec::new())
    }

    /// `POST /v1/accounts`: several accounts at once (sign it).
    pub fn accounts(req: &wire::AccountsRequest) -> Self {
        Self::new(Method::POST, "/v1/accounts", codec::encode(req))
    }

    /// `PUT /v1/keypackages` (sign it).
    pub fn upload_key_packages(req: &wire::UploadKeyPackages) -> Self {
        Self::new(Method::PUT, "/v1/keypackages", codec::encode(req))
    }

    /// `POST /v1/keypackages/claim` (sign it).
    pub fn claim_key_packages(req: &wire::ClaimKeyPackages) -> Self {
        Self::new(Method::POST, "/v1/keypackages/claim", codec::encode(req))
    }

    /// `POST /v1/keypackages/claim-batch` (sign it).
    pub fn claim_key_packages_batch(req: &wire::ClaimKeyPackagesBatch) -> Self {
        Self::new(
            Method::POST,
            "/v1/keypackages/claim-batch",
            codec::encode(req),
        )
    }

    /// `POST /v1/reports`: block and report (sign it).
    pub fn report(req: &wire::ReportRequest) -> Self {
        Self::new(Method::POST, "/v1/reports", codec::encode(req))
    }

    /// `GET /v1/keypackages/count?ciphersuite=N` (sign it).
    pub fn key_package_count(ciphersuite: u16) -> Self {
        Self::new(
            Method::GET,
            format!("/v1/keypackages/count?ciphersuite={ciphersuite}"),
            Vec::new(),
        )
    }

    /// The route, relative to the base URL.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Adds the `x-hushwire-auth` header: the device key's signature over
    /// [`request_auth_payload`] for this method, path (prefix included), time and body.
    pub fn sign(
        mut self,
        endpoint: &Endpoint,
        signer: &dyn Signer,
        unix_ms: u64,
    ) -> Result<Self, ClientError> {
        let path_and_query = endpoint.path_and_query(&self.route);
        let payload = request_auth_payload(
            self.method.as_str(),
            &path_and_query,
            unix_ms,
            signer.handle(),
            signer.device_id(),
            &self.body,
        );
        let signature = signer.sign(&payload)?;
        let auth = RequestAuth {
            handle: signer.handle().to_string(),
            device_id: signer.device_id(),
            unix_ms,
            signature,
        };
        self.auth = Some(auth.to_header());
        Ok(self)
    }

    /// The signed header value, if signed.
    pub fn auth_header(&self) -> Option<&str> {
        self.auth.as_deref()
    }
}

/// Client for the HTTPS routes of one server: HTTP/1.1 over the endpoint's own
/// connections (so routes, proxies and relays apply), one kept-alive connection reused
/// while it lasts.
#[derive(Clone, Debug)]
pub struct ApiClient {
    endpoint: Endpoint,
    idle: Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

impl ApiClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<Self, ClientError> {
        Ok(Self {
            endpoint,
            idle: Arc::new(Mutex::new(None)),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut slot = self.idle.lock().ok()?;
        slot.take().filter(|s| !s.is_closed())
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if let Ok(mut slot) = self.idle.lock() {
            *slot = Some(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tls = self.endpoint.connect_tls().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.network_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a request and decodes the protobuf response, or the `ApiError`.
    pub async fn call<R: Message + Default>(&self, req: ApiRequest) -> Result<R, ClientError> {
        self.call_with_timeout(req, Duration::from_secs(20)).await
    }

    /// [`ApiClient::call`] allowing `answer_within` (after the connect timeout) for
    /// sending the request and reading the answer: large bodies (blob parts) need more.
    pub async fn call_with_timeout<R: Message + Default>(
        &self,
        req: ApiRequest,
        answer_within: Duration,
    ) -> Result<R, ClientError> {
        let limit = self.endpoint.connect_timeout() + answer_within;
        tokio::time::timeout(limit, self.call_inner(req))
            .await
            .map_err(|_| ClientError::Timeout("waiting for the server's answer".into()))?
    }

    /// Sends a request on a connection of its own and returns the successful response's
    /// body as a stream (a blob download: no size cap here, the caller bounds it), or the
    /// `ApiError`. The response head must arrive within the connect timeout + 20 s; the
    /// caller bounds each chunk's wait.
    pub async fn open_stream(&self, req: ApiRequest) -> Result<ByteStream, ClientError> {
        let limit = self.endpoint.connect_timeout() + Duration::from_secs(20);
        tokio::time::timeout(limit, self.open_stream_inner(req))
            .await
            .map_err(|_| ClientError::Timeout("waiting for the server's answer".into()))?
    }

    async fn open_stream_inner(&self, req: ApiRequest) -> Result<ByteStream, ClientError> {
        let url = self.endpoint.https_url(&req.route)?;
        let path = self.endpoint.path_and_query(&req.route);
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(path.as_str())
            .header(hyper::header::HOST, host_header(&url));
        if let Some(auth) = &req.auth {
            builder = builder.header(REQUEST_AUTH_HEADER, auth.as_str());
        }
        if let Some(from) = req.range_from {
            builder = builder.header(hyper::header::RANGE, format!("bytes={from}-"));
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| ClientError::Protocol(format!("building the request: {e}")))?;
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| self.network_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = Limited::new(resp.into_body(), MAX_API_BODY_BYTES);
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.endpoint.base_url(),
                    reason: format!("reading the response: {e}"),
                })?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let content_range_start = resp
            .headers()
            .get(hyper::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range_start);
        Ok(ByteStream {
            status: status.as_u16(),
            content_range_start,
            body: resp.into_body(),
            base_url: self.endpoint.base_url(),
            _sender: sender,
        })
    }

    async fn call_inner<R: Message + Default>(&self, req: ApiRequest) -> Result<R, ClientError> {
        let url = self.endpoint.https_url(&req.route)?;
        let path = self.endpoint.path_and_query(&req.route);
        let build = || {
            let mut builder = hyper::Request::builder()
                .method(req.method.clone())
                .uri(path.as_str())
                .header(hyper::header::HOST, host_header(&url));
            if !req.body.is_empty() || req.method != Method::GET {
                builder = builder.header(hyper::header::CONTENT_TYPE, req.content_type);
            }
            if let Some(auth) = &req.auth {
                builder = builder.header(REQUEST_AUTH_HEADER, auth.as_str());
            }
            builder
                .body(Full::new(req.body.clone()))
                .map_err(|e| ClientError::Protocol(format!("building the request: {e}")))
        };
        // A kept-alive connection may have been closed by the server meanwhile: if
        // sending on it fails before any answer, retry once on a fresh one.
        let resp = match self.take_idle() {
            Some(mut sender) => match sender.send_request(build()?).await {
                Ok(resp) => Some((resp, sender)),
                Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => None,
                Err(e) => return Err(self.network_error(&e)),
            },
            None => None,
        };
        let (resp, sender) = match resp {
            Some(r) => r,
            None => {
                let mut sender = self.connect().await?;
                let resp = sender
                    .send_request(build()?)
                    .await
                    .map_err(|e| self.network_error(&e))?;
                (resp, sender)
            }
        };
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_API_RESPONSE_BYTES);
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.endpoint.base_url(),
                reason: format!("reading the response: {e}"),
            })?
            .to_bytes();
        self.put_idle(sender);
        if status.is_success() {
            return decode_bounded::<R>(&bytes, MAX_API_RESPONSE_BYTES).map_err(|e| {
                ClientError::Protocol(format!("undecodable {} response: {e}", req.route))
            });
        }
        Err(api_error(status, &bytes))
    }

    fn network_error(&self, e: &hyper::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.endpoint.base_url(),
            reason: describe_chain(e),
        }
    }
}

/// An error response as [`ClientError::Api`].
fn api_error(status: hyper::StatusCode, bytes: &[u8]) -> ClientError {
    let (code, message) = match decode_bounded::<wire::ApiError>(bytes, MAX_API_BODY_BYTES) {
        Ok(err) => (
            ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified),
            err.message,
        ),
        Err(_) => (
            ErrorCode::Unspecified,
            status
                .canonical_reason()
                .unwrap_or("unexpected response")
                .to_string(),
        ),
    };
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

/// `Content-Type` of blob parts.
const OCTET_STREAM: &str = "application/octet-stream";

/// Blob ids in routes: lowercase hex.
fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first byte of `Content-Range: bytes START-END/TOTAL`.
fn parse_content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// A successful response's body, read chunk by chunk ([`ApiClient::open_stream`]).
pub struct ByteStream {
    status: u16,
    content_range_start: Option<u64>,
    body: hyper::body::Incoming,
    base_url: String,
    /// Keeps the connection's request side alive while the body is read.
    _sender: SendRequest<Full<Bytes>>,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("status", &self.status)
            .field("content_range_start", &self.content_range_start)
            .finish_non_exhaustive()
    }
}

impl ByteStream {
    /// The HTTP status (200, or 206 for a range).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// For a 206: where the range starts (`Content-Range`).
    pub fn content_range_start(&self) -> Option<u64> {
        self.content_range_start
    }

    /// The next chunk of the body; `None` at its end. A broken connection is
    /// [`ClientError::Unreachable`] (transient).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Some(Ok(data));
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        url: self.base_url.clone(),
                        reason: format!("reading the download: {}", describe_chain(&e)),
                    }));
                }
            }
        }
    }
}

/// The `Host` header for a URL (`host:port`, IPv6 in brackets).
fn host_header(url: &reqwest::Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// "a: b: c" from an error and its sources.
pub(crate) fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    let mut n = 0;
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
        n += 1;
        if n > 8 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hushwire_proto::identity::verify;

    #[test]
    fn signed_requests_cover_method_prefixed_path_time_and_body() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let signer = KeySigner::new("alice.b", 3, key);
        let endpoint = Endpoint::new(
            "https://127.0.0.1:8443/abc123/",
            Some(&format!("sha256:{}", "ab".repeat(32))),
        )
        .unwrap();
        let body = wire::ClaimKeyPackages {
            handle: "bob".into(),
            ciphersuite: 0x004F,
        };
        let req = ApiRequest::claim_key_packages(&body)
            .sign(&endpoint, &signer, 1_700_000_000_123)
            .unwrap();
        let auth = RequestAuth::parse(req.auth_header().unwrap()).unwrap();
        assert_eq!(auth.handle, "alice.b");
        assert_eq!(auth.device_id, 3);
        assert_eq!(auth.unix_ms, 1_700_000_000_123);
        let payload = request_auth_payload(
            "POST",
            "/abc123/v1/keypackages/claim",
            1_700_000_000_123,
            "alice.b",
            3,
            &codec::encode(&body),
        );
        verify(&signer.public_key(), &payload, &auth.signature).unwrap();
        // Any other path, body or time does not verify.
        let other = request_auth_payload(
            "POST",
            "/v1/keypackages/claim",
            1_700_000_000_123,
            "alice.b",
            3,
            &codec::encode(&body),
        );
        assert!(verify(&signer.public_key(), &other, &auth.signature).is_err());
        assert_eq!(
            endpoint
                .https_url("/v1/keypackages/count?ciphersuite=79")
                .unwrap()
                .as_str(),
            "https://127.0.0.1:8443/abc123/v1/keypackages/count?ciphersuite=79"
        );
        assert_eq!(
            endpoint.ws_url().unwrap().as_str(),
            "wss://127.0.0.1:8443/abc123/v1/ws"
        );
        assert!(!format!("{signer:?}").contains("07"));
    }

    #[test]
    fn endpoint_rejects_bad_urls() {
        for url in [
            "http://x:1",
            "https://",
            "not a url",
            "https://u:p@host/",
            "https://h/?q=1",
        ] {
            assert!(
                matches!(
                    Endpoint::new(url, None),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
        let ep = Endpoint::new("https://[::1]:9/", None).unwrap();
        assert_eq!(ep.ws_url().unwrap().as_str(), "wss://[::1]:9/v1/ws");
    }
}
