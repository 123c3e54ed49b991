//! Relay links: `hushwire-relay://HOST:PORT?s=SECRET&pin=HEX`.
//!
//! A volunteer relay prints one; users pass it on (in person, or inside an end-to-end
//! encrypted message). It names where the relay listens, the secret that opens a tunnel
//! (without it the relay is just a website), and the SHA-256 pin of the relay's TLS key.

use std::fmt;

use crate::identity::parse_pin;

/// The URL scheme of relay links.
pub const SCHEME: &str = "hushwire-relay://";

/// A parsed relay link.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelayLink {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The tunnel secret: 16-128 characters of `A-Z a-z 0-9 - _`.
    pub secret: String,
    /// SHA-256 of the relay certificate's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
}

/// Why a relay link does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relay link: {0}")]
pub struct RelayLinkError(pub &'static str);

impl fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret opens the relay: never print it in logs.
        f.debug_struct("RelayLink")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl fmt::Display for RelayLink {
    /// The shareable link, secret included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{SCHEME}{host}:{}?s={}&pin=", self.port, self.secret)?;
        for b in self.pin {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn secret_ok(s: &str) -> bool {
    (16..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RelayLink {
    /// `host:port`, with IPv6 hosts in brackets: what the link is known by in lists.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses a link.
    pub fn parse(link: &str) -> Result<Self, RelayLinkError> {
        let rest = link
            .trim()
            .strip_prefix(SCHEME)
            .ok_or(RelayLinkError("it must start with hushwire-relay://"))?;
        let (authority, query) = rest
            .split_once('?')
            .ok_or(RelayLinkError("missing ?s=SECRET&pin=HEX"))?;
        let authority = authority.trim_end_matches('/');
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or(RelayLinkError("an IPv6 host needs [ADDR]:PORT"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or(RelayLinkError("missing :PORT"))?
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(RelayLinkError("bad host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(RelayLinkError("bad port"))?;
        let (mut secret, mut pin) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("s", v)) => secret = Some(v),
                Some(("pin", v)) => pin = Some(v),
                _ => return Err(RelayLinkError("unknown query parameter")),
            }
        }
        let secret = secret.ok_or(RelayLinkError("missing s=SECRET"))?;
        if !secret_ok(secret) {
            return Err(RelayLinkError(
                "the secret must be 16-128 characters of A-Z a-z 0-9 - _",
            ));
        }
        let pin = pin.ok_or(RelayLinkError("missing pin=HEX"))?;
        let pin = parse_pin(&format!(
            "sha256:{}",
            pin.strip_prefix("sha256:")
                .unwrap_or(pin)
                .to_ascii_lowercase()
        ))
        .ok_or(RelayLinkError("the pin must be 64 hex digits"))?;
        Ok(Self {
            host: host.to_string(),
            port,
            secret: secret.to_string(),
            pin,
        })
    }
}

impl std::str::FromStr for RelayLink {
    type Err = RelayLinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let link = RelayLink {
            host: "relay.example.org".into(),
            port: 443,
            secret: "AbCdEfGhIjKlMnOpQrStUv".into(),
            pin: [0xab; 32],
        };
        let text = link.to_string();
        assert_eq!(RelayLink::parse(&text).unwrap(), link);
        assert!(!format!("{link:?}").contains("AbCd"));
        let v6 = RelayLink {
            host: "2001:db8::1".into(),
            ..link.clone()
        };
        assert_eq!(RelayLink::parse(&v6.to_string()).unwrap(), v6);
        for bad in [
            "https://x:1?s=AbCdEfGhIjKlMnOpQrStUv&pin=00",
            "hushwire-relay://x?s=AbCdEfGhIjKlMnOpQrStUv",
            "hushwire-relay://x:0?s=AbCdEfGhIjKlMnOpQrStUv&pin=ab",
            "hushwire-relay://x:1?s=short&pin=abab",
            "hushwire-relay://x y:1?s=AbCdEfGhIjKlMnOpQrStUv&pin=ab",
        ] {
            assert!(RelayLink::parse(bad).is_err(), "{bad}");
        }
    }
}
