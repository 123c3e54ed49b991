//! Secret key material: the account and device Ed25519 keys.
//!
//! Secrets live in [`SecretKey`], which zeroizes on drop and whose `Debug` is redacted.

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte Ed25519 secret key (seed). Zeroized on drop; `Debug` shows no key bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        Self(*sk.as_bytes())
    }

    /// Wraps stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The raw seed, for storing it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.0).verifying_key().to_bytes()
    }

    /// Ed25519 signature over `payload`.
    pub fn sign(&self, payload: &[u8]) -> [u8; 64] {
        SigningKey::from_bytes(&self.0).sign(payload).to_bytes()
    }

    /// The OpenMLS signer for this key (the device key is the MLS signature key).
    pub(crate) fn mls_signer(&self) -> SignatureKeyPair {
        SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            self.0.to_vec(),
            self.public().to_vec(),
        )
    }
}

/// The profile's two secret keys.
#[derive(Clone)]
pub struct IdentityKeys {
    /// Certifies device keys.
    pub account: SecretKey,
    /// Signs MLS messages, WebSocket logins and API requests.
    pub device: SecretKey,
}

impl std::fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("account", &self.account)
            .field("device", &self.device)
            .finish()
    }
}

/// The 32-byte key the profile database is encrypted with (SQLCipher raw key). Zeroized
/// on drop; `Debug` shows no key bytes. Kept wrapped in the profile's key file (see the
/// `hushwire-vault` crate), never stored in the clear.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StoreKey([u8; 32]);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

impl StoreKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self(bytes)
    }

    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Wraps stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The raw key, for wrapping it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// SQLCipher's raw-key literal `x'<64 hex>'` (no PBKDF2 on top), zeroized on drop.
    pub(crate) fn sqlcipher_literal(&self) -> zeroize::Zeroizing<String> {
        let mut s = zeroize::Zeroizing::new(String::with_capacity(67));
        s.push_str("x'");
        for b in self.0 {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s.push('\'');
        s
    }
}
