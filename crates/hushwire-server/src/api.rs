//! The HTTPS API (protocol.md, "HTTPS API"): routes, protobuf bodies, size limits.
//!
//! Handlers return `Result<_, ApiError>`; [`ApiError`]'s `IntoResponse` is the only place
//! that turns failures into statuses and bodies.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use hushwire_proto::identity::{self, SignatureError, validate_handle};
use hushwire_proto::limits::MAX_KEY_PACKAGES_PER_UPLOAD;
use hushwire_proto::mls::{self, MlsHeader};
use hushwire_proto::{PROTOBUF_CONTENT_TYPE, codec, wire};
use hushwire_store::{DeviceRecord, NewAccount, NewKeyPackage};
use prost::Message;

use crate::config::RegistrationPolicy;
use crate::error::ApiError;
use crate::{
    ConnPermit, Server, auth, conn_limit, devices, directory, links, media, now_ms, reports, ws,
};

/// The router for every route of protocol.md, under the configured path prefix.
pub fn app(server: &Server) -> Router {
    let p = server.shared.config.path_prefix.as_str();
    // Leave room above the API limit so an oversized body is refused by our own check
    // with a precise message rather than by the transport.
    let body_limit = server.shared.config.limits.max_body_bytes;
    Router::new()
        .route(&format!("{p}/v1/register"), post(register))
        .route(&format!("{p}/v1/accounts/{{handle}}"), get(account))
        .route(&format!("{p}/v1/accounts"), post(accounts_batch))
        .route(&format!("{p}/v1/keypackages"), put(upload_key_packages))
        .route(
            &format!("{p}/v1/keypackages/claim"),
            post(claim_key_packages),
        )
        .route(
            &format!("{p}/v1/keypackages/claim-batch"),
            post(claim_key_packages_batch),
        )
        .route(&format!("{p}/v1/keypackages/count"), get(key_package_count))
        .route(&format!("{p}/v1/groups/{{group_id}}/info"), get(group_info))
        .route(&format!("{p}/v1/ws"), get(websocket))
        .route(&format!("{p}/v1/blobs"), post(media::create_blob))
        .route(
            &format!("{p}/v1/blobs/{{id}}"),
            get(media::download).delete(media::delete_blob),
        )
        .route(&format!("{p}/v1/blobs/{{id}}/status"), get(media::status))
        .route(&format!("{p}/v1/reports"), post(reports::file_report))
        .route(&format!("{p}/v1/devices"), post(devices::add_device))
        .route(
            &format!("{p}/v1/devices/recover"),
            post(devices::recover_device),
        )
        .route(
            &format!("{p}/v1/devices/list"),
            put(devices::put_device_list),
        )
        .route(
            &format!("{p}/v1/devices/{{device_id}}"),
            delete(devices::remove_device),
        )
        .route(&format!("{p}/v1/links"), post(links::create))
        .route(&format!("{p}/v1/links/{{id}}"), delete(links::delete))
        .route(
            &format!("{p}/v1/links/{{id}}/{{slot}}"),
            // A slot may be larger than an API body: the handler reads it with its own
            // limit (`limits::MAX_LINK_SLOT_BYTES`).
            put(links::put_slot).get(links::get_slot),
        )
        .route(
            &format!("{p}/v1/blobs/{{id}}/parts/{{index}}"),
            put(media::upload_part),
        )
        .route(&format!("{p}/v1/directory"), get(directory::latest))
        .route(&format!("{p}/v1/directory/roots"), get(directory::roots))
        .route(
            &format!("{p}/v1/directory/audit/{{epoch}}"),
            get(directory::audit),
        )
        .route(&format!("{p}/v1/directory/lookup"), post(directory::lookup))
        .route(
            &format!("{p}/v1/directory/history"),
            get(directory::history),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(server.clone())
}

/// A protobuf response body.
pub(crate) struct Proto<M>(pub(crate) M);

impl<M: Message> IntoResponse for Proto<M> {
    fn into_response(self) -> Response {
        let mut resp = (StatusCode::OK, self.0.encode_to_vec()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
        );
        resp
    }
}

pub(crate) fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body exceeds the limit".to_owned())
        } else {
            ApiError::BadRequest("cannot read the request body".to_owned())
        }
    })
}

pub(crate) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    codec::decode_bounded(bytes, usize::MAX)
        .map_err(|e| ApiError::BadRequest(format!("malformed body: {e}")))
}

/// Reads the body and authenticates the signed request.
pub(crate) async fn signed(
    server: &Server,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(DeviceRecord, Bytes), ApiError> {
    let bytes = body(bytes)?;
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let shared = &server.shared;
    let device = auth::authenticate_request(
        shared.store.as_ref(),
        &shared.replay,
        method.as_str(),
        path_and_query,
        headers,
        &bytes,
        now_ms(),
    )
    .await?;
    Ok((device, bytes))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

#[tracing::instrument(skip_all, fields(peer = %peer.ip()))]
async fn register(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::RegisterResponse>, ApiError> {
    let shared = &server.shared;
    if !shared
        .register_limiter
        .check(conn_limit::client(peer.ip()), std::time::Instant::now())
    {
        return Err(ApiError::RateLimited);
    }
    let req: wire::RegisterRequest = decode(&body(bytes)?)?;
    validate_handle(&req.handle).map_err(|e| ApiError::InvalidHandle(e.to_string()))?;
    if req.account_key.len() != 32 {
        return Err(ApiError::BadRequest("account_key must be 32 bytes".into()));
    }
    let cert = req
        .device
        .ok_or_else(|| ApiError::BadRequest("missing device certificate".into()))?;
    // Checking the device key against a dummy signature tells an invalid point
    // (BadKey, checked first) from a valid key (Mismatch).
    if cert.device_key.len() != 32
        || identity::verify(&cert.device_key, b"", &[0u8; 64]) == Err(SignatureError::BadKey)
    {
        return Err(ApiError::BadRequest(
            "device_key must be a 32-byte Ed25519 public key".into(),
        ));
    }
    let payload = identity::device_cert_payload(&req.handle, &cert.device_key, cert.created_at_ms);
    match identity::verify(&req.account_key, &payload, &cert.signature) {
        Ok(()) => {}
        Err(SignatureError::BadKey) => {
            return Err(ApiError::BadRequest(
                "account_key is not a valid Ed25519 public key".into(),
            ));
        }
        Err(_) => {
            return Err(ApiError::BadRequest(
                "device certificate signature does not verify under the account key".into(),
            ));
        }
    }
    let invite = match shared.config.registration {
        RegistrationPolicy::Open => None,
        RegistrationPolicy::Invite if req.invite.is_empty() => {
            return Err(ApiError::InviteRequired(
                "this server requires an invite code",
            ));
        }
        RegistrationPolicy::Invite => Some(req.invite),
    };
    let record = shared
        .store
        .create_account(NewAccount {
            handle: req.handle,
            account_key: req.account_key.to_vec(),
            device_key: cert.device_key.to_vec(),
            cert_created_at_ms: cert.created_at_ms,
            cert_signature: cert.signature.to_vec(),
            invite,
            now_ms: now_ms(),
        })
        .await?;
    tracing::info!(device = %record.addr, "account registered");
    Ok(Proto(wire::RegisterResponse {
        device_id: record.addr.device_id,
    }))
}

#[tracing::instrument(skip_all)]
fn account_info(record: hushwire_store::AccountRecord) -> wire::AccountInfo {
    wire::AccountInfo {
        handle: record.handle,
        account_key: record.account_key.into(),
        devices: record
            .devices
            .into_iter()
            .map(|d| wire::DeviceInfo {
                revoked: d.revoked,
                device_id: d.addr.device_id,
                certificate: Some(wire::DeviceCertificate {
                    device_key: d.device_key.into(),
                    created_at_ms: d.cert_created_at_ms,
                    signature: d.cert_signature.into(),
                }),
            })
            .collect(),
        device_list: record.device_list.and_then(|l| {
            wire::SignedDeviceList::decode(l.data)
                .inspect_err(|_| tracing::error!("a stored device list does not decode"))
                .ok()
        }),
    }
}

/// Several accounts in one request; unknown handles are left out.
#[tracing::instrument(skip_all)]
async fn accounts_batch(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::AccountsResponse>, ApiError> {
    use hushwire_proto::limits::MAX_CLAIM_BATCH;
    let (_, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::AccountsRequest = decode(&bytes)?;
    if req.handles.is_empty() || req.handles.len() > MAX_CLAIM_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch asks for 1 to {MAX_CLAIM_BATCH} accounts"
        )));
    }
    let mut accounts = Vec::with_capacity(req.handles.len());
    for handle in &req.handles {
        validate_handle(handle).map_err(|e| ApiError::InvalidHandle(format!("{handle:?}: {e}")))?;
        if let Some(record) = server.shared.store.account(handle).await? {
            accounts.push(account_info(record));
        }
    }
    Ok(Proto(wire::AccountsResponse { accounts }))
}

async fn account(
    State(server): State<Server>,
    Path(handle): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::AccountInfo>, ApiError> {
    signed(&server, &method, &uri, &headers, bytes).await?;
    validate_handle(&handle).map_err(|e| ApiError::InvalidHandle(e.to_string()))?;
    let record = server
        .shared
        .store
        .account(&handle)
        .await?
        .ok_or(ApiError::NotFound("unknown account"))?;
    Ok(Proto(account_info(record)))
}

#[tracing::instrument(skip_all)]
async fn upload_key_packages(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::UploadKeyPackagesResponse>, ApiError> {
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::UploadKeyPackages = decode(&bytes)?;
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::TooLarge(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    let mut packages = Vec::with_capacity(req.key_packages.len());
    for (i, kp) in req.key_packages.into_iter().enumerate() {
        let ciphersuite = match mls::parse_header(&kp.key_package) {
            Ok(MlsHeader::KeyPackage { ciphersuite }) => ciphersuite,
            Ok(_) => {
                return Err(ApiError::BadRequest(format!(
                    "key package {i} is not an MLSMessage(KeyPackage)"
                )));
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!("key package {i}: {e}")));
            }
        };
        packages.push(NewKeyPackage {
            ciphersuite,
            data: kp.key_package,
            last_resort: kp.last_resort,
        });
    }
    let stored = server
        .shared
        .store
        .add_key_packages(device.id, packages)
        .await?;
    tracing::debug!(device = %device.addr, stored, "key packages uploaded");
    Ok(Proto(wire::UploadKeyPackagesResponse { stored }))
}

fn ciphersuite(value: u32) -> Result<u16, ApiError> {
    u16::try_from(value).map_err(|_| ApiError::BadRequest("ciphersuite must fit in 16 bits".into()))
}

#[tracing::instrument(skip_all)]
async fn claim_key_packages(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::ClaimedKeyPackages>, ApiError> {
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let shared = &server.shared;
    if !shared
        .claim_limiter
        .check(device.id, std::time::Instant::now())
    {
        return Err(ApiError::RateLimited);
    }
    let req: wire::ClaimKeyPackages = decode(&bytes)?;
    validate_handle(&req.handle).map_err(|e| ApiError::InvalidHandle(e.to_string()))?;
    let suite = ciphersuite(req.ciphersuite)?;
    let claimed = shared.store.claim_key_packages(&req.handle, suite).await?;
    if claimed.is_empty() {
        return Err(match shared.store.account(&req.handle).await? {
            None => ApiError::NotFound("unknown account"),
            Some(_) => ApiError::NoKeyPackages,
        });
    }
    Ok(Proto(wire::ClaimedKeyPackages {
        key_packages: claimed
            .into_iter()
            .map(|c| wire::ClaimedKeyPackage {
                device_id: c.device_id,
                key_package: c.data,
            })
            .collect(),
    }))
}

/// Claims for several handles (a new group's members): one rate-limit claim per started
/// [`CLAIM_BATCH_HANDLES_PER_CLAIM`](hushwire_proto::limits::CLAIM_BATCH_HANDLES_PER_CLAIM)
/// handles, all taken before anything is claimed.
#[tracing::instrument(skip_all)]
async fn claim_key_packages_batch(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::ClaimedKeyPackagesBatch>, ApiError> {
    use hushwire_proto::limits::{CLAIM_BATCH_HANDLES_PER_CLAIM, MAX_CLAIM_BATCH};
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let shared = &server.shared;
    let req: wire::ClaimKeyPackagesBatch = decode(&bytes)?;
    if req.handles.is_empty() || req.handles.len() > MAX_CLAIM_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch claims for 1 to {MAX_CLAIM_BATCH} handles"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for h in &req.handles {
        validate_handle(h).map_err(|e| ApiError::InvalidHandle(format!("{h:?}: {e}")))?;
        if !seen.insert(h.as_str()) {
            return Err(ApiError::BadRequest(format!("{h:?} appears twice")));
        }
    }
    let suite = ciphersuite(req.ciphersuite)?;
    let cost = req.handles.len().div_ceil(CLAIM_BATCH_HANDLES_PER_CLAIM);
    let now = std::time::Instant::now();
    for _ in 0..cost {
        if !shared.claim_limiter.check(device.id, now) {
            return Err(ApiError::RateLimited);
        }
    }
    let mut claimed = Vec::with_capacity(req.handles.len());
    for handle in req.handles {
        let packages = shared.store.claim_key_packages(&handle, suite).await?;
        let unknown_account = packages.is_empty() && shared.store.account(&handle).await?.is_none();
        claimed.push(wire::ClaimedForHandle {
            handle,
            unknown_account,
            key_packages: packages
                .into_iter()
                .map(|c| wire::ClaimedKeyPackage {
                    device_id: c.device_id,
                    key_package: c.data,
                })
                .collect(),
        });
    }
    Ok(Proto(wire::ClaimedKeyPackagesBatch { claimed }))
}

#[tracing::instrument(skip_all)]
async fn key_package_count(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::KeyPackageCount>, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let value = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ciphersuite="))
        .ok_or_else(|| ApiError::BadRequest("missing query parameter ciphersuite".into()))?;
    let suite = value
        .parse::<u32>()
        .map_err(|_| ApiError::BadRequest("ciphersuite must be a number".into()))
        .and_then(ciphersuite)?;
    let stock = server
        .shared
        .store
        .key_package_stock(device.id, suite)
        .await?;
    Ok(Proto(wire::KeyPackageCount {
        available: stock.available,
        has_last_resort: stock.has_last_resort,
    }))
}

async fn websocket(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    permit: Option<axum::Extension<ConnPermit>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|_| ApiError::BadRequest("expected a WebSocket upgrade request".into()))?;
    let limits = &server.shared.config.limits;
    let tasks = server.shared.tasks.clone();
    let permit = permit.map(|axum::Extension(p)| p);
    // Frames arrive padded up to their size bucket: a frame within the limit may be
    // padded up to the limit's bucket.
    let frame_limit = codec::frame_bucket(limits.max_frame_bytes).unwrap_or(limits.max_frame_bytes);
    Ok(upgrade
        .read_buffer_size(ws::READ_BUFFER)
        .write_buffer_size(ws::WRITE_BUFFER)
        .max_write_buffer_size(frame_limit + ws::WRITE_BUFFER + ws::WRITE_SLACK)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            // axum spawns this future itself; the tracker token makes shutdown wait for it.
            let token = tasks.token();
            let socket = Box::new(socket);
            async move {
                let _token = token;
                let _permit = permit;
                ws::serve(server, socket, peer).await;
            }
        }))
}

/// `GET /v1/groups/{group_id hex}/info`: the latest GroupInfo of a group, for an External
/// Commit rejoin. Only a device of an account with a device in the group's roster may
/// read it (a member's device whose state broke, or a new device of a member restored
/// from a backup); to anyone else the group does not exist (404), so its id reveals
/// nothing.
async fn group_info(
    State(server): State<Server>,
    Path(group_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::GroupInfoResponse>, ApiError> {
    let (device, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let group_id = decode_hex(&group_id)
        .filter(|g| !g.is_empty() && g.len() <= hushwire_proto::limits::MAX_GROUP_ID_BYTES)
        .ok_or_else(|| ApiError::BadRequest("group id must be 1 to 64 bytes of hex".into()))?;
    let store = &server.shared.store;
    let group = store
        .group(&group_id)
        .await?
        .filter(|g| g.roster.iter().any(|a| a.handle == device.addr.handle))
        .ok_or(ApiError::NotFound("unknown group"))?;
    let info = store
        .group_info(&group_id)
        .await?
        .ok_or(ApiError::NotFound(
            "no GroupInfo was published for this group",
        ))?;
    tracing::debug!(
        epoch = group.epoch,
        info_epoch = info.epoch,
        "GroupInfo served"
    );
    Ok(Proto(wire::GroupInfoResponse {
        epoch: info.epoch,
        group_info: info.data,
    }))
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}
