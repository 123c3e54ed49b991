//! Device authentication: signed HTTPS requests and the WebSocket challenge.
//!
//! A signed request is accepted when its header parses, its timestamp is within
//! `REQUEST_AUTH_WINDOW_MS` of the server clock, the device exists and is not revoked,
//! the signature verifies under the device key, and the signature was not seen before.
//! Seen signatures are kept in a bounded [`ReplayCache`] until their timestamp leaves
//! the window (after which the window check alone refuses them).
//!
//! An unknown device, a revoked device and a bad signature get one and the same answer
//! ([`AUTH_FAILED`]): anyone may send a header naming any handle, and different answers
//! would tell them whether that account (or device) exists. They also cost the same: an
//! unknown or revoked device's signature is verified under a stand-in key and refused
//! anyway, so an answer's timing does not tell either (see [`check_device`]). The
//! precise reason goes to the log only.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use axum::http::HeaderMap;
use hushwire_proto::identity::{
    self, REQUEST_AUTH_HEADER, REQUEST_AUTH_WINDOW_MS, RequestAuth, validate_handle,
};
use hushwire_proto::wire::AuthResponse;
use hushwire_store::{DeviceAddr, DeviceRecord, Store};

use crate::error::{ApiError, Close};

/// Default bound on remembered signatures: at 10 000 entries per minute of window this
/// holds a sustained ~330 signed requests a second; beyond that requests are refused
/// (fail closed) instead of forgetting signatures that could then be replayed.
pub(crate) const REPLAY_CACHE_ENTRIES: usize = 100_000;

/// The one answer to credentials naming an unknown or revoked device, or signed by
/// another key.
pub(crate) const AUTH_FAILED: &str = "authentication failed";

/// The answer to refused credentials; `detail` (which must not reach the client) is
/// logged.
fn refused(addr: &DeviceAddr, detail: &'static str) -> ApiError {
    tracing::debug!(device = %addr, detail, "request authentication refused");
    ApiError::Unauthenticated(AUTH_FAILED)
}

/// A valid Ed25519 public key that is no device's: the base point's encoding. Its
/// secret (1) is public knowledge, so nothing is ever accepted under it: it is only
/// verified against, for the time that takes, and the answer is thrown away.
const STAND_IN_KEY: [u8; 32] = [
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
];

/// The device `device` if it exists, is not revoked and signed `payload`; otherwise
/// why not (for the log). Every refusal verifies one signature, so an unknown, a
/// revoked and a wrongly signing device take the same time to refuse.
fn check_device(
    device: Option<DeviceRecord>,
    payload: &[u8],
    signature: &[u8],
) -> Result<DeviceRecord, &'static str> {
    let key = match &device {
        Some(d) if !d.revoked => d.device_key.as_slice(),
        _ => STAND_IN_KEY.as_slice(),
    };
    let verified = identity::verify(key, payload, signature).is_ok();
    match device {
        None => Err("unknown device"),
        Some(d) if d.revoked => Err("device is revoked"),
        Some(_) if !verified => Err("bad signature"),
        Some(d) => Ok(d),
    }
}

/// Why a signature could not be recorded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplayError {
    /// Seen before.
    Replayed,
    /// The cache is full of unexpired entries.
    Full,
}

/// Signatures seen within the auth window.
pub(crate) struct ReplayCache {
    seen: Mutex<HashMap<[u8; 64], u64>>,
    max: usize,
}

impl ReplayCache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Records `signature`, valid until `expires_ms`; fails if it was seen before.
    pub(crate) fn insert(
        &self,
        signature: [u8; 64],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        // Entries are independent; a poisoned lock leaves a consistent map.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(exp) = seen.get(&signature)
            && *exp >= now_ms
        {
            return Err(ReplayError::Replayed);
        }
        if seen.len() >= self.max {
            seen.retain(|_, exp| *exp >= now_ms);
            if seen.len() >= self.max {
                return Err(ReplayError::Full);
            }
        }
        seen.insert(signature, expires_ms);
        Ok(())
    }
}

/// Authenticates a signed HTTPS request; returns the device.
pub(crate) async fn authenticate_request(
    store: &dyn Store,
    replay: &ReplayCache,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: u64,
) -> Result<DeviceRecord, ApiError> {
    let value = headers
        .get(REQUEST_AUTH_HEADER)
        .ok_or(ApiError::Unauthenticated("missing x-hushwire-auth header"))?;
    let auth =
        value
            .to_str()
            .ok()
            .and_then(RequestAuth::parse)
            .ok_or(ApiError::Unauthenticated(
                "malformed x-hushwire-auth header",
            ))?;
    if auth.unix_ms.abs_diff(now_ms) > REQUEST_AUTH_WINDOW_MS {
        return Err(ApiError::Unauthenticated(
            "request timestamp outside the allowed window",
        ));
    }
    let addr = DeviceAddr {
        handle: auth.handle.clone(),
        device_id: auth.device_id,
    };
    let device = store.device(&addr).await?;
    let payload = identity::request_auth_payload(
        method,
        path_and_query,
        auth.unix_ms,
        &auth.handle,
        auth.device_id,
        body,
    );
    let device =
        check_device(device, &payload, &auth.signature).map_err(|detail| refused(&addr, detail))?;
    let expires = auth.unix_ms.saturating_add(REQUEST_AUTH_WINDOW_MS);
    match replay.insert(auth.signature, expires, now_ms) {
        Ok(()) => {}
        Err(ReplayError::Replayed) => {
            return Err(ApiError::Unauthenticated("request replayed"));
        }
        Err(ReplayError::Full) => {
            tracing::warn!("replay cache full; refusing signed requests");
            return Err(ApiError::RateLimited);
        }
    }
    Ok(device)
}

/// Checks a WebSocket `auth` answer to `nonce`; returns the device or the close to send.
pub(crate) async fn authenticate_ws(
    store: &dyn Store,
    nonce: &[u8],
    auth: &AuthResponse,
) -> Result<DeviceRecord, Close> {
    if validate_handle(&auth.handle).is_err() {
        return Err(Close::new(
            Close::POLICY,
            "authentication failed: invalid handle",
        ));
    }
    let addr = DeviceAddr {
        handle: auth.handle.clone(),
        device_id: auth.device_id,
    };
    let refused = |detail: &'static str| {
        tracing::debug!(device = %addr, detail, "WebSocket authentication refused");
        Close::new(Close::POLICY, AUTH_FAILED)
    };
    let device = match store.device(&addr).await {
        Ok(d) => d,
        Err(e) => return Err(Close::internal(&e)),
    };
    let payload = identity::ws_auth_payload(nonce, &auth.handle, auth.device_id);
    check_device(device, &payload, &auth.signature).map_err(refused)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use ed25519_dalek::Signer;

    fn record(key: &ed25519_dalek::SigningKey, revoked: bool) -> DeviceRecord {
        DeviceRecord {
            id: hushwire_store::DeviceId(1),
            addr: DeviceAddr {
                handle: "alice".into(),
                device_id: 1,
            },
            device_key: key.verifying_key().to_bytes().to_vec(),
            cert_created_at_ms: 0,
            cert_signature: vec![],
            revoked,
        }
    }

    #[test]
    fn every_refusal_costs_a_full_signature_check() {
        // The stand-in is a key a signature is checked against in full: not one refused
        // up front as malformed or weak, which would answer faster.
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let signature = stranger.sign(b"payload").to_bytes();
        assert!(matches!(
            identity::verify(&STAND_IN_KEY, b"payload", &signature),
            Err(identity::SignatureError::Mismatch)
        ));

        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let good = key.sign(b"payload").to_bytes();
        assert_eq!(
            check_device(Some(record(&key, false)), b"payload", &good)
                .unwrap()
                .addr
                .device_id,
            1
        );
        assert_eq!(
            check_device(Some(record(&key, false)), b"payload", &signature).unwrap_err(),
            "bad signature"
        );
        assert_eq!(
            check_device(Some(record(&key, true)), b"payload", &good).unwrap_err(),
            "device is revoked"
        );
        assert_eq!(
            check_device(None, b"payload", &good).unwrap_err(),
            "unknown device"
        );
    }

    #[test]
    fn replay_cache_refuses_repeats_and_is_bounded() {
        let c = ReplayCache::new(2);
        assert_eq!(c.insert([1; 64], 100, 0), Ok(()));
        assert_eq!(c.insert([1; 64], 100, 50), Err(ReplayError::Replayed));
        assert_eq!(c.insert([2; 64], 100, 50), Ok(()));
        assert_eq!(c.insert([3; 64], 100, 50), Err(ReplayError::Full));
        // Once the first two expire there is room again.
        assert_eq!(c.insert([3; 64], 300, 101), Ok(()));
    }
}
