//! An account's devices (protocol.md, "Devices and linking"): adding one under a
//! certificate of the account key, publishing the account's signed device list, and
//! removing (revoking) a device, which also closes its connections.
//!
//! The server checks what it can (signatures under the account key, that every listed
//! device exists with that key, that versions grow) but contacts verify the list
//! themselves: the server cannot add a device to it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, Uri};
use hushwire_proto::identity::{self, SignatureError, validate_handle};
use hushwire_proto::limits::MAX_LISTED_DEVICES;
use hushwire_proto::wire;
use hushwire_store::{AddDevice, DeviceAddr, DeviceRecord, NewDevice};

use crate::api::{Proto, body, decode, signed};
use crate::auth::AUTH_FAILED;
use crate::conn_limit;
use crate::error::ApiError;
use crate::{Server, now_ms};

/// Whether `key` is a 32-byte Ed25519 public key (a valid point).
pub(crate) fn valid_device_key(key: &[u8]) -> bool {
    // Checking the key against a dummy signature tells an invalid point (BadKey,
    // checked first) from a valid key (Mismatch).
    key.len() == 32 && identity::verify(key, b"", &[0u8; 64]) != Err(SignatureError::BadKey)
}

/// `POST /v1/devices`: adds a device to the caller's account.
#[tracing::instrument(skip_all)]
pub(crate) async fn add_device(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::DeviceAdded>, ApiError> {
    let (caller, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let req: wire::AddDevice = decode(&bytes)?;
    let cert = req
        .certificate
        .ok_or_else(|| ApiError::BadRequest("missing device certificate".into()))?;
    if !valid_device_key(&cert.device_key) {
        return Err(ApiError::BadRequest(
            "device_key must be a 32-byte Ed25519 public key".into(),
        ));
    }
    let store = &server.shared.store;
    let handle = &caller.addr.handle;
    let account = store
        .account(handle)
        .await?
        .ok_or(ApiError::Unauthenticated("unknown account"))?;
    let payload = identity::device_cert_payload(handle, &cert.device_key, cert.created_at_ms);
    if identity::verify(&account.account_key, &payload, &cert.signature).is_err() {
        return Err(ApiError::BadRequest(
            "device certificate signature does not verify under the account key".into(),
        ));
    }
    // One store transaction checks the key (revoked devices count: a removed device's
    // key never comes back) and the number of devices, and adds the device.
    let max = server.shared.config.limits.max_devices_per_account;
    let new = NewDevice {
        device_key: cert.device_key.to_vec(),
        cert_created_at_ms: cert.created_at_ms,
        cert_signature: cert.signature.to_vec(),
    };
    let added = match store.add_device_within(handle, new, max).await? {
        AddDevice::Added(d) => d,
        AddDevice::KeyInUse => {
            return Err(ApiError::Conflict(
                "the device key is in use by a device of the account",
            ));
        }
        AddDevice::TooManyDevices => {
            return Err(ApiError::LimitExceeded(format!(
                "an account has at most {max} devices; remove one first"
            )));
        }
        AddDevice::UnknownAccount => return Err(ApiError::Unauthenticated("unknown account")),
    };
    tracing::info!(by = %caller.addr, device = %added.addr, "device added");
    Ok(Proto(wire::DeviceAdded {
        device_id: added.addr.device_id,
    }))
}

/// How far a recovery certificate's `created_at_ms` may be from the server's clock.
pub(crate) const RECOVERY_CERT_WINDOW_MS: u64 = 10 * 60 * 1000;

/// `POST /v1/devices/recover`: adds a device to an account on the strength of a fresh
/// certificate signed by the account key alone, for a restore from an end-to-end
/// encrypted backup when every device of the account may be lost. An unknown handle, a
/// certificate that does not verify and a stale one get one answer, so the route tells
/// an outsider nothing about which handles exist; it is rate-limited per IP like
/// registration. A replayed request names a key already in use (CONFLICT).
#[tracing::instrument(skip_all)]
pub(crate) async fn recover_device(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::DeviceAdded>, ApiError> {
    let shared = &server.shared;
    if !shared
        .register_limiter
        .check(conn_limit::client(peer.ip()), std::time::Instant::now())
    {
        return Err(ApiError::RateLimited);
    }
    let req: wire::RecoverDevice = decode(&body(bytes)?)?;
    let cert = req
        .certificate
        .ok_or_else(|| ApiError::BadRequest("missing device certificate".into()))?;
    if !valid_device_key(&cert.device_key) {
        return Err(ApiError::BadRequest(
            "device_key must be a 32-byte Ed25519 public key".into(),
        ));
    }
    let refused = |detail: &'static str| {
        tracing::debug!(detail, "device recovery refused");
        ApiError::Unauthenticated(AUTH_FAILED)
    };
    if validate_handle(&req.handle).is_err() {
        return Err(refused("malformed handle"));
    }
    let store = &shared.store;
    let Some(account) = store.account(&req.handle).await? else {
        return Err(refused("unknown account"));
    };
    let payload = identity::device_cert_payload(&req.handle, &cert.device_key, cert.created_at_ms);
    if identity::verify(&account.account_key, &payload, &cert.signature).is_err() {
        return Err(refused("certificate does not verify under the account key"));
    }
    if now_ms().abs_diff(cert.created_at_ms) > RECOVERY_CERT_WINDOW_MS {
        return Err(refused("stale certificate"));
    }
    let max = shared.config.limits.max_devices_per_account;
    let new = NewDevice {
        device_key: cert.device_key.to_vec(),
        cert_created_at_ms: cert.created_at_ms,
        cert_signature: cert.signature.to_vec(),
    };
    let added = match store.add_device_within(&req.handle, new, max).await? {
        AddDevice::Added(d) => d,
        AddDevice::KeyInUse => {
            return Err(ApiError::Conflict(
                "the device key is in use by a device of the account",
            ));
        }
        AddDevice::TooManyDevices => {
            return Err(ApiError::LimitExceeded(format!(
                "an account has at most {max} devices; remove one first"
            )));
        }
        AddDevice::UnknownAccount => return Err(refused("unknown account")),
    };
    tracing::info!(device = %added.addr, "device recovered with the account key");
    Ok(Proto(wire::DeviceAdded {
        device_id: added.addr.device_id,
    }))
}

/// `PUT /v1/devices/list`: stores the account's signed device list.
#[tracing::instrument(skip_all)]
pub(crate) async fn put_device_list(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(), ApiError> {
    let (caller, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let signed_list: wire::SignedDeviceList = decode(&bytes)?;
    let list: wire::DeviceList = decode(&signed_list.list)?;
    let store = &server.shared.store;
    let account = store
        .account(&caller.addr.handle)
        .await?
        .ok_or(ApiError::Unauthenticated("unknown account"))?;
    let payload = identity::device_list_payload(&signed_list.list);
    if identity::verify(&account.account_key, &payload, &signed_list.signature).is_err() {
        return Err(ApiError::BadRequest(
            "device list signature does not verify under the account key".into(),
        ));
    }
    check_list(&list, &caller, &account.devices)?;
    // The stored bytes are the body as received: contacts verify them themselves.
    if !store
        .set_device_list(&caller.addr.handle, list.version, bytes)
        .await?
    {
        return Err(ApiError::Conflict(
            "the stored device list has this version or a newer one",
        ));
    }
    tracing::info!(by = %caller.addr, version = list.version, devices = list.devices.len(), "device list published");
    Ok(())
}

/// The server's checks of a device list (the signature aside).
fn check_list(
    list: &wire::DeviceList,
    caller: &DeviceRecord,
    devices: &[DeviceRecord],
) -> Result<(), ApiError> {
    if list.handle != caller.addr.handle {
        return Err(ApiError::BadRequest(
            "the device list names another account".into(),
        ));
    }
    if list.version == 0 {
        return Err(ApiError::BadRequest(
            "device list versions start at 1".into(),
        ));
    }
    if list.devices.len() > MAX_LISTED_DEVICES {
        return Err(ApiError::BadRequest(format!(
            "a device list names at most {MAX_LISTED_DEVICES} devices"
        )));
    }
    let mut previous: Option<u32> = None;
    for listed in &list.devices {
        if previous.is_some_and(|p| p >= listed.device_id) {
            return Err(ApiError::BadRequest(
                "listed devices must be in ascending order without duplicates".into(),
            ));
        }
        previous = Some(listed.device_id);
        let known = devices
            .iter()
            .find(|d| d.addr.device_id == listed.device_id)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("device {} does not exist", listed.device_id))
            })?;
        if known.revoked {
            return Err(ApiError::BadRequest(format!(
                "device {} was removed",
                listed.device_id
            )));
        }
        if known.device_key != listed.device_key.as_ref() {
            return Err(ApiError::BadRequest(format!(
                "device {} has another key",
                listed.device_id
            )));
        }
    }
    Ok(())
}

/// `DELETE /v1/devices/{device_id}`: revokes a device of the caller's account (the
/// caller itself included) and closes its connections.
#[tracing::instrument(skip_all)]
pub(crate) async fn remove_device(
    State(server): State<Server>,
    Path(device_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(), ApiError> {
    let (caller, _) = signed(&server, &method, &uri, &headers, bytes).await?;
    let device_id: u32 = device_id
        .parse()
        .map_err(|_| ApiError::BadRequest("device id must be a number".into()))?;
    let shared = &server.shared;
    let addr = DeviceAddr {
        handle: caller.addr.handle.clone(),
        device_id,
    };
    let target = shared
        .store
        .device(&addr)
        .await?
        .filter(|d| !d.revoked)
        .ok_or(ApiError::NotFound("unknown or removed device"))?;
    if !shared.store.revoke_device(&addr).await? {
        return Err(ApiError::NotFound("unknown or removed device"));
    }
    // Its connection on this node closes now; on other nodes the cluster poller closes
    // it within `bus.poll_interval`.
    let closed = shared.hub.remove(&[target.id]);
    tracing::info!(by = %caller.addr, device = %addr, closed, at = now_ms(), "device removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hushwire_store::DeviceId;

    fn record(n: u32, key: u8, revoked: bool) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId(u64::from(n) + 100),
            addr: DeviceAddr {
                handle: "alice".into(),
                device_id: n,
            },
            device_key: vec![key; 32],
            cert_created_at_ms: 1,
            cert_signature: vec![0; 64],
            revoked,
        }
    }

    fn listed(n: u32, key: u8) -> wire::ListedDevice {
        wire::ListedDevice {
            device_id: n,
            device_key: vec![key; 32].into(),
            linked_at_ms: 1,
            sealed_name: Default::default(),
        }
    }

    fn list(devices: Vec<wire::ListedDevice>) -> wire::DeviceList {
        wire::DeviceList {
            handle: "alice".into(),
            version: 1,
            issued_at_ms: 1,
            devices,
        }
    }

    #[test]
    fn list_checks() {
        let devices = [record(1, 1, false), record(2, 2, false), record(3, 3, true)];
        let caller = &devices[0];
        let ok = |l: &wire::DeviceList| check_list(l, caller, &devices).is_ok();
        assert!(ok(&list(vec![listed(1, 1), listed(2, 2)])));
        // Leaving a device out is allowed (it is being removed).
        assert!(ok(&list(vec![listed(2, 2)])));
        assert!(!ok(&list(vec![listed(2, 2), listed(1, 1)])), "order");
        assert!(!ok(&list(vec![listed(1, 1), listed(1, 1)])), "duplicate");
        assert!(!ok(&list(vec![listed(1, 1), listed(3, 3)])), "revoked");
        assert!(!ok(&list(vec![listed(1, 1), listed(4, 4)])), "unknown");
        assert!(!ok(&list(vec![listed(1, 9)])), "another key");
        let mut other = list(vec![listed(1, 1)]);
        other.handle = "bob".into();
        assert!(!ok(&other), "foreign handle");
        let mut zero = list(vec![listed(1, 1)]);
        zero.version = 0;
        assert!(!ok(&zero), "version 0");
    }

    #[test]
    fn device_keys() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(valid_device_key(key.as_bytes()));
        assert!(!valid_device_key(&[1; 31]));
    }
}
