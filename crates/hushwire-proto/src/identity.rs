//! Handles and the exact byte strings that keys sign.
//!
//! Every signed payload starts with a distinct ASCII label so a signature made for one
//! purpose can never be replayed for another.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a handle is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    /// Fewer than 3 or more than 32 characters.
    #[error("a handle has 3 to 32 characters, got {0}")]
    Length(usize),
    /// A character outside `[a-z0-9_.]`.
    #[error("a handle may contain only a-z, 0-9, '_' and '.', found {0:?}")]
    Character(char),
}

/// Checks a handle: `[a-z0-9_.]`, 3 to 32 characters.
pub fn validate_handle(handle: &str) -> Result<(), HandleError> {
    let n = handle.chars().count();
    if !(3..=32).contains(&n) {
        return Err(HandleError::Length(n));
    }
    if let Some(c) = handle
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.'))
    {
        return Err(HandleError::Character(c));
    }
    Ok(())
}

/// Why a signature check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The public key is not 32 bytes or not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    BadKey,
    /// The signature is not 64 bytes.
    #[error("invalid signature encoding")]
    BadEncoding,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Mismatch,
}

/// Verifies an Ed25519 signature over `payload` (strict verification).
pub fn verify(public_key: &[u8], payload: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let key: [u8; 32] = public_key.try_into().map_err(|_| SignatureError::BadKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::BadKey)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| SignatureError::BadEncoding)?;
    let sig = Signature::from_bytes(&sig);
    key.verify_strict(payload, &sig)
        .map_err(|_| SignatureError::Mismatch)
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// What an account key signs to certify a device key.
pub fn device_cert_payload(handle: &str, device_key: &[u8], created_at_ms: u64) -> Vec<u8> {
    let mut out = b"hushwire-device-cert-v1".to_vec();
    push_field(&mut out, handle.as_bytes());
    push_field(&mut out, device_key);
    out.extend_from_slice(&created_at_ms.to_be_bytes());
    out
}

/// What an account key signs to publish a device list: the label, then the encoded
/// `DeviceList` bytes exactly as carried in `SignedDeviceList.list`.
pub fn device_list_payload(list: &[u8]) -> Vec<u8> {
    let mut out = b"hushwire-device-list-v1".to_vec();
    push_field(&mut out, list);
    out
}

/// What a device key signs to log in on a WebSocket.
pub fn ws_auth_payload(nonce: &[u8], handle: &str, device_id: u32) -> Vec<u8> {
    let mut out = b"hushwire-ws-auth-v1".to_vec();
    push_field(&mut out, nonce);
    push_field(&mut out, handle.as_bytes());
    out.extend_from_slice(&device_id.to_be_bytes());
    out
}

/// Name of the HTTP header that carries a signed request's credentials:
/// `{handle}.{device_id}.{unix_ms}.{signature as 128 hex digits}`.
pub const REQUEST_AUTH_HEADER: &str = "x-hushwire-auth";

/// How far a signed request's timestamp may be from the server's clock.
pub const REQUEST_AUTH_WINDOW_MS: u64 = 5 * 60 * 1000;

/// What a device key signs to authenticate one HTTPS API request.
pub fn request_auth_payload(
    method: &str,
    path_and_query: &str,
    unix_ms: u64,
    handle: &str,
    device_id: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut out = b"hushwire-request-v1".to_vec();
    push_field(&mut out, method.as_bytes());
    push_field(&mut out, path_and_query.as_bytes());
    out.extend_from_slice(&unix_ms.to_be_bytes());
    push_field(&mut out, handle.as_bytes());
    out.extend_from_slice(&device_id.to_be_bytes());
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// The parsed value of [`REQUEST_AUTH_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    /// The account's handle.
    pub handle: String,
    /// The device id within the account.
    pub device_id: u32,
    /// Client clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Ed25519 signature over [`request_auth_payload`].
    pub signature: [u8; 64],
}

impl RequestAuth {
    /// Formats the header value.
    pub fn to_header(&self) -> String {
        let sig: String = self.signature.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}.{}.{}.{}",
            self.handle, self.device_id, self.unix_ms, sig
        )
    }

    /// Parses the header value. Handles may contain '.', so fields are split from the right.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.rsplitn(4, '.');
        let sig_hex = parts.next()?;
        let unix_ms = parts.next()?.parse().ok()?;
        let device_id = parts.next()?.parse().ok()?;
        let handle = parts.next()?.to_string();
        if sig_hex.len() != 128 || validate_handle(&handle).is_err() {
            return None;
        }
        let mut signature = [0u8; 64];
        for (i, out) in signature.iter_mut().enumerate() {
            *out = u8::from_str_radix(sig_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self {
            handle,
            device_id,
            unix_ms,
            signature,
        })
    }
}

/// SHA-256 fingerprint of a certificate's SubjectPublicKeyInfo, as `sha256:<64 hex>`.
pub fn format_pin(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Parses `sha256:<64 hex>` into the 32-byte digest.
pub fn parse_pin(pin: &str) -> Option<[u8; 32]> {
    let hex = pin.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn handles() {
        assert!(validate_handle("alice").is_ok());
        assert!(validate_handle("a.b_c9").is_ok());
        assert_eq!(validate_handle("al"), Err(HandleError::Length(2)));
        assert_eq!(
            validate_handle(&"a".repeat(33)),
            Err(HandleError::Length(33))
        );
        assert_eq!(validate_handle("Alice"), Err(HandleError::Character('A')));
        assert_eq!(validate_handle("al ice"), Err(HandleError::Character(' ')));
    }

    #[test]
    fn request_auth_round_trip_and_verify() {
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        let payload = request_auth_payload("POST", "/v1/x", 5, "bob.b", 2, b"body");
        let auth = RequestAuth {
            handle: "bob.b".into(),
            device_id: 2,
            unix_ms: 5,
            signature: sk.sign(&payload).to_bytes(),
        };
        let parsed = RequestAuth::parse(&auth.to_header()).unwrap();
        assert_eq!(parsed, auth);
        let pk = sk.verifying_key().to_bytes();
        assert!(verify(&pk, &payload, &parsed.signature).is_ok());
        let other = request_auth_payload("POST", "/v1/x", 5, "bob.b", 2, b"bodz");
        assert_eq!(
            verify(&pk, &other, &parsed.signature),
            Err(SignatureError::Mismatch)
        );
        assert!(RequestAuth::parse("garbage").is_none());
    }

    #[test]
    fn pins() {
        let pin = format_pin(b"spki");
        assert_eq!(pin.len(), 7 + 64);
        assert!(parse_pin(&pin).is_some());
        assert!(parse_pin("sha256:zz").is_none());
    }
}
