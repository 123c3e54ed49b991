//! Key directory (key transparency) values and signed roots.
//!
//! The server's auditable key directory maps each handle (the akd label is the handle's
//! UTF-8 bytes) to a [`DirectoryValue`]: the account key and the version and SHA-256 of
//! the account's signed device list, or [`DirectoryValue::Released`] after an operator
//! released the handle. Every published epoch's root hash is signed over
//! [`root_signing_payload`]. Clients compare the value a lookup proof proves with the
//! account the server served them ([`DirectoryValue::matches`]).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::wire;

/// The akd domain label (`akd::DomainLabel`) of Hushwire's directory.
pub const DOMAIN_LABEL: &[u8] = b"hushwire-kt-v1";

/// The label under which the server records each publication's time, so that every
/// epoch changes at least one entry. Never a valid handle.
pub const EPOCH_MARKER_LABEL: &[u8] = b"!epoch";

const VALUE_TAG: &[u8; 6] = b"hwkt1\0";
const RELEASED: &[u8] = b"hwkt1-released";
const ROOT_LABEL: &[u8] = b"hushwire-directory-root-v1\0";

/// What the directory holds for one handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryValue {
    /// A registered account.
    Account {
        /// Ed25519 account public key.
        account_key: [u8; 32],
        /// Version of the account's signed device list (0: none published).
        device_list_version: u64,
        /// SHA-256 of the signed device list's `list` bytes (zeros: none).
        device_list_hash: [u8; 32],
    },
    /// The operator released the handle (`hushwire admin reset-account`).
    Released,
}

/// A value that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed key directory value ({0} bytes)")]
pub struct BadValue(pub usize);

impl DirectoryValue {
    /// The value of an account as the server serves it: its key and signed device list
    /// (the list's version is read from its bytes).
    pub fn of_account(
        account_key: &[u8],
        device_list: Option<&wire::SignedDeviceList>,
    ) -> Result<Self, BadValue> {
        let account_key: [u8; 32] = account_key
            .try_into()
            .map_err(|_| BadValue(account_key.len()))?;
        let (device_list_version, device_list_hash) = match device_list {
            Some(signed) => {
                let list = <wire::DeviceList as prost::Message>::decode(&signed.list[..])
                    .map_err(|_| BadValue(signed.list.len()))?;
                (list.version, Sha256::digest(&signed.list).into())
            }
            None => (0, [0u8; 32]),
        };
        Ok(Self::Account {
            account_key,
            device_list_version,
            device_list_hash,
        })
    }

    /// The bytes stored in the directory.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Account {
                account_key,
                device_list_version,
                device_list_hash,
            } => {
                let mut out = Vec::with_capacity(6 + 32 + 8 + 32);
                out.extend_from_slice(VALUE_TAG);
                out.extend_from_slice(account_key);
                out.extend_from_slice(&device_list_version.to_be_bytes());
                out.extend_from_slice(device_list_hash);
                out
            }
            Self::Released => RELEASED.to_vec(),
        }
    }

    /// Parses [`DirectoryValue::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, BadValue> {
        if bytes == RELEASED {
            return Ok(Self::Released);
        }
        let bad = || BadValue(bytes.len());
        let rest = bytes.strip_prefix(VALUE_TAG.as_slice()).ok_or_else(bad)?;
        if rest.len() != 72 {
            return Err(bad());
        }
        let account_key: [u8; 32] = rest[..32].try_into().map_err(|_| bad())?;
        let version: [u8; 8] = rest[32..40].try_into().map_err(|_| bad())?;
        let device_list_hash: [u8; 32] = rest[40..].try_into().map_err(|_| bad())?;
        Ok(Self::Account {
            account_key,
            device_list_version: u64::from_be_bytes(version),
            device_list_hash,
        })
    }

    /// Whether the directory's value backs an account the server served: the account key
    /// must be the same, and so must the device list when the directory holds the same
    /// version (a newer list than the directory's is waiting for the next epoch; an older
    /// one is a stale answer and fails).
    pub fn matches(&self, served: &Self) -> Result<(), Mismatch> {
        match (self, served) {
            (
                Self::Account {
                    account_key: a,
                    device_list_version: va,
                    device_list_hash: ha,
                },
                Self::Account {
                    account_key: b,
                    device_list_version: vb,
                    device_list_hash: hb,
                },
            ) => {
                if a != b {
                    Err(Mismatch::AccountKey)
                } else if vb < va {
                    Err(Mismatch::OlderDeviceList {
                        directory: *va,
                        served: *vb,
                    })
                } else if vb == va && ha != hb {
                    Err(Mismatch::DeviceList)
                } else {
                    Ok(())
                }
            }
            (Self::Released, Self::Account { .. }) => Err(Mismatch::Released),
            (_, Self::Released) => Err(Mismatch::AccountKey),
        }
    }
}

/// How a directory value and a served account differ.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    /// The directory holds another account key.
    #[error("the key directory holds a different account key")]
    AccountKey,
    /// Same device-list version, different list.
    #[error("the key directory holds a different device list of the same version")]
    DeviceList,
    /// The server served an older device list than the directory holds.
    #[error("the server served device list v{served}, older than the directory's v{directory}")]
    OlderDeviceList {
        /// Version in the directory.
        directory: u64,
        /// Version served.
        served: u64,
    },
    /// The directory says the handle was released.
    #[error("the key directory says this handle was released")]
    Released,
}

/// The bytes an epoch root's signature covers.
pub fn root_signing_payload(epoch: u64, root_hash: &[u8], published_at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROOT_LABEL.len() + 8 + root_hash.len() + 8);
    out.extend_from_slice(ROOT_LABEL);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(root_hash);
    out.extend_from_slice(&published_at_ms.to_be_bytes());
    out
}

/// Why a root is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    /// A key or hash has the wrong length, or the key is no Ed25519 point.
    #[error("malformed directory root")]
    Malformed,
    /// The signature does not verify under the root's signing key.
    #[error("directory root signature does not verify")]
    BadSignature,
}

/// Checks the signature of a published root (epoch ≥ 1) under its `signing_key`. Whether
/// that key is the one the caller trusts is the caller's check.
pub fn verify_root(root: &wire::DirectoryRoot) -> Result<(), RootError> {
    if root.root_hash.len() != 32 || root.vrf_public_key.len() != 32 {
        return Err(RootError::Malformed);
    }
    let key: [u8; 32] = root.signing_key[..]
        .try_into()
        .map_err(|_| RootError::Malformed)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| RootError::Malformed)?;
    let signature = Signature::from_slice(&root.signature).map_err(|_| RootError::BadSignature)?;
    key.verify(
        &root_signing_payload(root.epoch, &root.root_hash, root.published_at_ms),
        &signature,
    )
    .map_err(|_| RootError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(version: u64, issued_at_ms: u64) -> DirectoryValue {
        let list = wire::DeviceList {
            handle: "alice".into(),
            version,
            issued_at_ms,
            devices: Vec::new(),
        };
        let signed = wire::SignedDeviceList {
            list: prost::Message::encode_to_vec(&list).into(),
            signature: vec![0; 64].into(),
        };
        DirectoryValue::of_account(&[7; 32], Some(&signed)).unwrap()
    }

    #[test]
    fn values_round_trip_and_reject_garbage() {
        for v in [account(3, 1), DirectoryValue::Released] {
            assert_eq!(DirectoryValue::decode(&v.encode()).unwrap(), v);
        }
        let none = DirectoryValue::of_account(&[1; 32], None).unwrap();
        assert!(matches!(
            none,
            DirectoryValue::Account {
                device_list_version: 0,
                device_list_hash,
                ..
            } if device_list_hash == [0; 32]
        ));
        assert!(DirectoryValue::decode(b"hwkt1\0short").is_err());
        assert!(DirectoryValue::decode(b"").is_err());
        assert_eq!(
            DirectoryValue::of_account(&[1; 31], None),
            Err(BadValue(31))
        );
    }

    #[test]
    fn matching_rules() {
        let dir = account(2, 2);
        assert_eq!(dir.matches(&account(2, 2)), Ok(()));
        // A newer list waits for the next epoch.
        assert_eq!(dir.matches(&account(3, 3)), Ok(()));
        assert_eq!(dir.matches(&account(2, 99)), Err(Mismatch::DeviceList));
        assert!(matches!(
            dir.matches(&account(1, 1)),
            Err(Mismatch::OlderDeviceList { .. })
        ));
        let other_key = DirectoryValue::of_account(&[8; 32], None).unwrap();
        assert_eq!(dir.matches(&other_key), Err(Mismatch::AccountKey));
        assert_eq!(
            DirectoryValue::Released.matches(&dir),
            Err(Mismatch::Released)
        );
    }

    #[test]
    fn root_signatures_verify() {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[5; 32]);
        let root_hash = vec![9u8; 32];
        let mut root = wire::DirectoryRoot {
            epoch: 4,
            root_hash: root_hash.clone().into(),
            published_at_ms: 1000,
            signature: key
                .sign(&root_signing_payload(4, &root_hash, 1000))
                .to_bytes()
                .to_vec()
                .into(),
            vrf_public_key: vec![1; 32].into(),
            signing_key: key.verifying_key().to_bytes().to_vec().into(),
            interval_ms: 60_000,
        };
        assert_eq!(verify_root(&root), Ok(()));
        root.epoch = 5;
        assert_eq!(verify_root(&root), Err(RootError::BadSignature));
        root.root_hash.truncate(31);
        assert_eq!(verify_root(&root), Err(RootError::Malformed));
    }
}
