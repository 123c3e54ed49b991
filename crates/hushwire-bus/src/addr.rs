//! Bus URLs: parsing, credentials taken out, redacted display.
//!
//! A bus URL is one or more NATS server URLs separated by commas, e.g.
//! `nats://10.0.0.5:4222,nats://10.0.0.6:4222`; `tls://` requires TLS. Credentials may
//! be written into the URL (`nats://user:password@host` or `nats://token@host`): they are
//! taken out before the addresses reach the NATS client (so they appear in none of its
//! logs), kept zeroized-on-drop, and never shown: [`BusUrl`]'s `Debug` and
//! [`BusUrl::redacted`] print scheme, host and port only.

use std::fmt;

use percent_encoding::percent_decode_str;
use url::Url;
use zeroize::Zeroizing;

/// Why a bus URL or subject prefix cannot be used. Never contains a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The URL does not parse or is not a NATS URL.
    #[error("invalid bus URL: {0}")]
    InvalidUrl(String),
    /// The subject prefix is not one or more NATS subject tokens.
    #[error(
        "invalid bus subject prefix {0:?}: use 1-64 characters of A-Z, a-z, 0-9, '-', '_' in dot-separated tokens"
    )]
    InvalidPrefix(String),
}

/// Credentials from the URL.
pub(crate) enum Credentials {
    /// `user:password@`.
    UserPassword(Zeroizing<String>, Zeroizing<String>),
    /// `token@`.
    Token(Zeroizing<String>),
}

/// A parsed bus URL: server addresses without credentials, and the credentials.
pub struct BusUrl {
    pub(crate) servers: Vec<Url>,
    pub(crate) credentials: Option<Credentials>,
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusUrl")
            .field("servers", &self.redacted())
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn decode(part: &str) -> Result<Zeroizing<String>, BusError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| Zeroizing::new(s.into_owned()))
        .map_err(|_| BusError::InvalidUrl("credentials are not UTF-8".into()))
}

impl BusUrl {
    /// Parses `nats://[user:password@|token@]host[:port][,…]`. The error never repeats
    /// the input (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, BusError> {
        let mut servers = Vec::new();
        let mut credentials = None;
        for (i, part) in text.split(',').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                return Err(BusError::InvalidUrl(format!("address {} is empty", i + 1)));
            }
            let mut url = Url::parse(part).map_err(|e| {
                BusError::InvalidUrl(format!("address {} does not parse: {e}", i + 1))
            })?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return Err(BusError::InvalidUrl(format!(
                    "address {}: the scheme must be nats:// or tls://",
                    i + 1
                )));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(BusError::InvalidUrl(format!(
                    "address {} has no host",
                    i + 1
                )));
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some()
            {
                return Err(BusError::InvalidUrl(format!(
                    "address {}: only scheme, credentials, host and port are allowed",
                    i + 1
                )));
            }
            if !url.username().is_empty() || url.password().is_some() {
                let found = match url.password() {
                    Some(p) => Credentials::UserPassword(decode(url.username())?, decode(p)?),
                    None => Credentials::Token(decode(url.username())?),
                };
                if credentials.is_none() {
                    credentials = Some(found);
                }
                // Infallible for a URL with a host (checked above).
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            if url.port().is_none() {
                let _ = url.set_port(Some(4222));
            }
            servers.push(url);
        }
        Ok(Self {
            servers,
            credentials,
        })
    }

    /// The server addresses without credentials, e.g. `nats://10.0.0.5:4222`, for logs.
    pub fn redacted(&self) -> String {
        self.servers
            .iter()
            .map(|u| {
                let host = u.host_str().unwrap_or("?");
                match u.port() {
                    Some(p) => format!("{}://{host}:{p}", u.scheme()),
                    None => format!("{}://{host}", u.scheme()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Checks a subject prefix: dot-separated tokens of `A-Z a-z 0-9 - _`, 1-64 characters
/// (no wildcards, no empty tokens).
pub fn validate_prefix(prefix: &str) -> Result<(), BusError> {
    let ok = (1..=64).contains(&prefix.len())
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidPrefix(prefix.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_credentials_out_and_redacts() {
        let u = BusUrl::parse("nats://ops:s3cr%40t@10.0.0.5:4333, tls://nats.internal").unwrap();
        assert_eq!(
            u.redacted(),
            "nats://10.0.0.5:4333,tls://nats.internal:4222"
        );
        match &u.credentials {
            Some(Credentials::UserPassword(user, pass)) => {
                assert_eq!(user.as_str(), "ops");
                assert_eq!(pass.as_str(), "s3cr@t");
            }
            _ => panic!("expected user and password"),
        }
        for s in &u.servers {
            assert!(s.username().is_empty() && s.password().is_none());
        }
        let debug = format!("{u:?}");
        assert!(!debug.contains("s3cr") && !debug.contains("ops"), "{debug}");
        let t = BusUrl::parse("nats://tok3n@127.0.0.1").unwrap();
        assert!(matches!(&t.credentials, Some(Credentials::Token(t)) if t.as_str() == "tok3n"));
        assert_eq!(t.redacted(), "nats://127.0.0.1:4222");
    }

    #[test]
    fn refuses_bad_urls_without_echoing_them() {
        for bad in [
            "",
            "http://h:1",
            "nats://",
            "nats://h:1/path",
            "nats://h:1,",
            "nats://user:hunter2@h:1?x=1",
            "hunter2",
        ] {
            let e = BusUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn prefixes() {
        for good in ["hushwire", "hw.prod-1", "a_b.c"] {
            validate_prefix(good).unwrap();
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", &"x".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
