//! Link codes: what an existing device shows (as text and as a QR code) and a new device
//! types or scans to join the account.
//!
//! A code is `hwlink1:` followed by the unpadded base64url of a
//! [`crate::wire::LinkCodePayload`]: the deployment's server URLs, the
//! TLS pin, the link session id and a 32-byte secret. The secret never reaches the
//! server; both devices derive the link channel's keys from it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;

use crate::wire::LinkCodePayload;

/// Text prefix of every link code (also the format version).
pub const LINK_CODE_PREFIX: &str = "hwlink1:";
/// Link session id length.
pub const LINK_ID_BYTES: usize = 16;
/// Link secret length.
pub const LINK_SECRET_BYTES: usize = 32;
/// Longest link code accepted, in characters.
pub const MAX_LINK_CODE_CHARS: usize = 2048;
/// Most server URLs a code carries.
pub const MAX_LINK_SERVERS: usize = 8;

/// Why a link code is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkCodeError {
    /// Does not start with [`LINK_CODE_PREFIX`].
    #[error("not a Hushwire link code (it starts with {LINK_CODE_PREFIX})")]
    Prefix,
    /// Longer than [`MAX_LINK_CODE_CHARS`].
    #[error("link code too long")]
    TooLong,
    /// Not base64url, or not a payload.
    #[error("damaged link code: {0}")]
    Damaged(&'static str),
}

/// A decoded link code.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    /// The deployment's server base URLs (at least one).
    pub servers: Vec<String>,
    /// SHA-256 of the server's public key, when the deployment is pinned.
    pub pin: Option<[u8; 32]>,
    /// The link session id.
    pub link_id: [u8; LINK_ID_BYTES],
    /// The channel secret.
    pub secret: [u8; LINK_SECRET_BYTES],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCode")
            .field("servers", &self.servers)
            .field("pin", &self.pin.is_some())
            .field("link_id", &"<redacted>")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl LinkCode {
    /// The code as text.
    pub fn encode(&self) -> String {
        let payload = LinkCodePayload {
            servers: self.servers.clone(),
            pin: self.pin.map(|p| p.to_vec()).unwrap_or_default().into(),
            link_id: self.link_id.to_vec().into(),
            secret: self.secret.to_vec().into(),
        };
        format!(
            "{LINK_CODE_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(payload.encode_to_vec())
        )
    }

    /// Parses a code as typed or scanned (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Self, LinkCodeError> {
        let text = text.trim();
        if text.len() > MAX_LINK_CODE_CHARS {
            return Err(LinkCodeError::TooLong);
        }
        let body = text
            .strip_prefix(LINK_CODE_PREFIX)
            .ok_or(LinkCodeError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| LinkCodeError::Damaged("not base64url"))?;
        let payload = LinkCodePayload::decode(bytes.as_slice())
            .map_err(|_| LinkCodeError::Damaged("not a link payload"))?;
        if payload.servers.is_empty() || payload.servers.len() > MAX_LINK_SERVERS {
            return Err(LinkCodeError::Damaged("no or too many server URLs"));
        }
        if payload
            .servers
            .iter()
            .any(|s| !(s.starts_with("https://") || s.starts_with("http://")))
        {
            return Err(LinkCodeError::Damaged("a server URL is not http(s)"));
        }
        let pin = match payload.pin.len() {
            0 => None,
            32 => payload.pin.as_ref().try_into().ok(),
            _ => return Err(LinkCodeError::Damaged("pin is not 32 bytes")),
        };
        let link_id = payload
            .link_id
            .as_ref()
            .try_into()
            .map_err(|_| LinkCodeError::Damaged("link id is not 16 bytes"))?;
        let secret = payload
            .secret
            .as_ref()
            .try_into()
            .map_err(|_| LinkCodeError::Damaged("secret is not 32 bytes"))?;
        Ok(Self {
            servers: payload.servers,
            pin,
            link_id,
            secret,
        })
    }
}

/// Whether `slot` is a valid link-session slot name: `[a-z0-9]{1,16}`.
pub fn valid_slot_name(slot: &str) -> bool {
    (1..=crate::limits::MAX_LINK_SLOT_NAME).contains(&slot.len())
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LinkCode {
        LinkCode {
            servers: vec![
                "https://127.0.0.1:8443".into(),
                "https://a.example/x".into(),
            ],
            pin: Some([7; 32]),
            link_id: [1; 16],
            secret: [9; 32],
        }
    }

    #[test]
    fn round_trips_and_tolerates_whitespace() {
        let code = sample();
        let text = code.encode();
        assert!(text.starts_with(LINK_CODE_PREFIX));
        assert_eq!(LinkCode::decode(&format!("  {text}\n")).unwrap(), code);
        let unpinned = LinkCode {
            pin: None,
            ..sample()
        };
        assert_eq!(LinkCode::decode(&unpinned.encode()).unwrap(), unpinned);
    }

    #[test]
    fn damaged_codes_are_refused_precisely() {
        let text = sample().encode();
        assert_eq!(LinkCode::decode("hello"), Err(LinkCodeError::Prefix));
        assert!(matches!(
            LinkCode::decode(&text[..text.len() - 10]),
            Err(LinkCodeError::Damaged(_))
        ));
        assert!(matches!(
            LinkCode::decode(&format!("{text}!")),
            Err(LinkCodeError::Damaged("not base64url"))
        ));
        let long = format!("{LINK_CODE_PREFIX}{}", "A".repeat(MAX_LINK_CODE_CHARS));
        assert_eq!(LinkCode::decode(&long), Err(LinkCodeError::TooLong));
        let bad = LinkCode {
            servers: vec!["ftp://x".into()],
            ..sample()
        };
        assert!(LinkCode::decode(&bad.encode()).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let dbg = format!("{:?}", sample());
        assert!(!dbg.contains("9, 9"));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn slot_names() {
        assert!(valid_slot_name("hello"));
        assert!(valid_slot_name("h12"));
        assert!(!valid_slot_name(""));
        assert!(!valid_slot_name("Hello"));
        assert!(!valid_slot_name("a/b"));
        assert!(!valid_slot_name(&"a".repeat(17)));
    }
}
