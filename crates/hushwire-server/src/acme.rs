//! Certificates from an ACME CA (RFC 8555, through `instant-acme`) for public
//! deployments, validated by TLS-ALPN-01 (RFC 8737) on the server's own TLS port.
//!
//! - [`CertStore`] is the rustls certificate resolver: it serves the current
//!   certificate, and during an order the CA's validation handshakes (ALPN `acme-tls/1`
//!   only, SNI = the domain) get that domain's challenge certificate. Such connections
//!   are closed right after the handshake (see `serve_connection`).
//! - [`maintain`] runs for the server's lifetime: it orders a certificate when there is
//!   none (the server starts on its self-signed one meanwhile), then renews at two
//!   thirds of each certificate's lifetime (30 days before a 90-day certificate
//!   expires), retrying failures with backoff from 1 minute to 6 hours.
//! - Files in the cache directory (`{data_dir}/acme` by default): `account.json`
//!   (the ACME account key, mode 0600), `cert.pem`, `key.pem` (mode 0600).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::AcmeConfig;
use crate::tls::TlsError;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate files in the cache directory.
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const ACCOUNT_FILE: &str = "account.json";

/// Backoff after a failed order: first and last delay.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// Why an ACME order or the ACME files failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The ACME server answered with an error, or could not be reached.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// The CA does not offer TLS-ALPN-01 for a name.
    #[error("the CA offers no tls-alpn-01 challenge for {0}")]
    NoTlsAlpnChallenge(String),
    /// An authorization or the order ended in a state other than valid.
    #[error("ACME {what} is {status}")]
    Status {
        /// "authorization for NAME" or "order".
        what: String,
        /// The final status.
        status: String,
    },
    /// A cached or received file is unusable, or could not be written.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The account file does not parse.
    #[error("ACME account file {path}: {reason}")]
    Account {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A certificate this server serves and what the renewal schedule needs to know of it.
#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    /// Validity of an ACME certificate; `None` for the self-signed placeholder.
    validity: Option<(SystemTime, SystemTime)>,
}

/// The server's certificate resolver when ACME is on. See the module doc.
pub struct CertStore {
    current: RwLock<Current>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("validity", &self.validity())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store serving `key` (the self-signed placeholder when `validity` is `None`).
    pub fn new(key: Arc<CertifiedKey>, validity: Option<(SystemTime, SystemTime)>) -> Self {
        Self {
            current: RwLock::new(Current { key, validity }),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// The served ACME certificate's (not before, not after), if one is served.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .validity
    }

    fn install(&self, key: Arc<CertifiedKey>, validity: (SystemTime, SystemTime)) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current {
            key,
            validity: Some(validity),
        };
    }

    fn set_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), key);
    }

    fn clear_challenges(&self) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The certificate for a handshake: a challenge certificate for a TLS-ALPN-01
    /// validation handshake naming a domain with an open challenge (none otherwise),
    /// else the current certificate.
    fn select(&self, sni: Option<&str>, acme_alpn: bool) -> Option<Arc<CertifiedKey>> {
        if acme_alpn {
            let sni = sni?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&sni)
                .cloned();
        }
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()).key,
        ))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_alpn = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        self.select(hello.server_name(), acme_alpn)
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of
/// its lifetime.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_after.checked_sub(lifetime / 3).unwrap_or(not_before)
}

/// The delay after the `failures`-th consecutive failure (1-based): 1 minute doubling
/// up to 6 hours.
pub fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

/// `chain` with a rustls signing key for `key` (PKCS#8, SEC1 or PKCS#1), checked to match.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// The TLS-ALPN-01 certificate for `domain`: self-signed, with the critical
/// acmeIdentifier extension holding SHA-256 of the key authorization.
pub fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))?;
    // No `keys_match` here: webpki refuses to parse a certificate with the critical
    // acmeIdentifier extension, and the key pair was generated just above.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The leaf's validity and whether its names cover every one of `domains`.
fn inspect_leaf(
    leaf: &CertificateDer<'_>,
    domains: &[String],
) -> Option<((SystemTime, SystemTime), bool)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let to_time = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    let validity = cert.validity();
    let span = (to_time(validity.not_before)?, to_time(validity.not_after)?);
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covers = domains
        .iter()
        .all(|d| names.contains(&d.to_ascii_lowercase()));
    Some((span, covers))
}

/// A certificate's (not before, not after).
pub type Validity = (SystemTime, SystemTime);

/// The cached ACME certificate in `cache_dir`, if there is one that covers `domains` and
/// has not expired at `now`.
pub fn load_cached(
    cache_dir: &Path,
    domains: &[String],
    now: SystemTime,
) -> Result<Option<(Arc<CertifiedKey>, Validity)>, TlsError> {
    let (cert_path, key_path) = (cache_dir.join(CERT_FILE), cache_dir.join(KEY_FILE));
    if !cert_path.exists() || !key_path.exists() {
        return Ok(None);
    }
    let chain = crate::tls::read_certs(&cert_path)?;
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    let Some((validity, covers)) = inspect_leaf(leaf, domains) else {
        tracing::warn!(cert = %cert_path.display(), "cached ACME certificate does not parse; ordering a new one");
        return Ok(None);
    };
    if !covers {
        tracing::info!("the configured ACME domains changed; ordering a new certificate");
        return Ok(None);
    }
    if validity.1 <= now {
        tracing::info!("the cached ACME certificate expired; ordering a new one");
        return Ok(None);
    }
    let key = crate::tls::read_key(&key_path)?;
    Ok(Some((certified(chain, key)?, validity)))
}

/// The account file: the directory it belongs to and instant-acme's credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

async fn account(config: &AcmeConfig, cache_dir: &Path) -> Result<Account, AcmeError> {
    let builder = || match &config.directory_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = cache_dir.join(ACCOUNT_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        let file: AccountFile = serde_json::from_slice(&bytes).map_err(|e| AcmeError::Account {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.directory == config.directory {
            return Ok(builder()?.from_credentials(file.credentials).await?);
        }
        tracing::info!("the ACME directory changed; creating a new account");
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await?;
    let file = AccountFile {
        directory: config.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&file).map_err(|e| AcmeError::Account {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::create_dir_all(cache_dir).map_err(crate::tls::io_err(cache_dir))?;
    crate::tls::write_atomically(&path, &json, 0o600)?;
    tracing::info!(id = account.id(), "created an ACME account");
    Ok(account)
}

/// Clears the challenge certificates however an order ends.
struct ChallengeGuard<'a>(&'a CertStore);

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        self.0.clear_challenges();
    }
}

/// Orders a certificate for `config.domains`, answering TLS-ALPN-01 through `store`,
/// saves it in `cache_dir` and serves it. Returns its validity.
pub async fn obtain(
    config: &AcmeConfig,
    cache_dir: &Path,
    store: &CertStore,
) -> Result<(SystemTime, SystemTime), AcmeError> {
    let account = account(config, cache_dir).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let _guard = ChallengeGuard(store);
    {
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = result?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Status {
                        what: "an authorization".into(),
                        status: format!("{other:?}"),
                    });
                }
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoTlsAlpnChallenge(config.domains.join(", ")))?;
            let domain = match challenge.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other => return Err(AcmeError::NoTlsAlpnChallenge(format!("{other:?}"))),
            };
            let digest = challenge.key_authorization().digest();
            store.set_challenge(&domain, challenge_certificate(&domain, digest.as_ref())?);
            challenge.set_ready().await?;
        }
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(180));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Status {
            what: "the order".into(),
            status: format!("{status:?}"),
        });
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retries).await?;

    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(crate::tls::io_err(cache_dir))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(crate::tls::io_err(cache_dir))?
        .ok_or_else(|| TlsError::Pem {
            path: cache_dir.join(KEY_FILE),
            reason: "the generated key does not parse",
        })?;
    let leaf = chain.first().ok_or_else(|| TlsError::Pem {
        path: cache_dir.join(CERT_FILE),
        reason: "the CA sent no certificate",
    })?;
    let (validity, _) = inspect_leaf(leaf, &config.domains).ok_or_else(|| TlsError::Pem {
        path: cache_dir.join(CERT_FILE),
        reason: "the CA's certificate does not parse",
    })?;
    let certified = certified(chain, key)?;
    std::fs::create_dir_all(cache_dir).map_err(crate::tls::io_err(cache_dir))?;
    crate::tls::write_atomically(&cache_dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    crate::tls::write_atomically(&cache_dir.join(CERT_FILE), chain_pem.as_bytes(), 0o644)?;
    store.install(certified, validity);
    Ok(validity)
}

/// Keeps `store` serving a valid certificate until `shutdown`: orders one now if none
/// is served, then renews each at [`renewal_time`]; failures are retried after
/// [`retry_delay`].
pub async fn maintain(
    config: AcmeConfig,
    cache_dir: PathBuf,
    store: Arc<CertStore>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let now = SystemTime::now();
        let due = match store.validity() {
            Some((not_before, not_after)) => renewal_time(not_before, not_after),
            None => now,
        };
        let wait = if failures > 0 {
            retry_delay(failures)
        } else {
            due.duration_since(now).unwrap_or(Duration::ZERO)
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let result = tokio::select! {
            r = obtain(&config, &cache_dir, &store) => r,
            () = shutdown.cancelled() => return,
        };
        match result {
            Ok((_, not_after)) => {
                failures = 0;
                let expires = not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                tracing::info!(
                    domains = %config.domains.join(","),
                    expires_unix = expires,
                    "ACME certificate installed"
                );
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    error = %e,
                    retry_in_secs = retry_delay(failures).as_secs(),
                    "ACME order failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        // 90 days: 30 days before expiry.
        assert_eq!(renewal_time(start, start + 90 * DAY), start + 60 * DAY);
        // 6-day short-lived certificates: 2 days before expiry.
        assert_eq!(renewal_time(start, start + 6 * DAY), start + 4 * DAY);
        // Nonsense validity (end before start): renew at once.
        assert!(renewal_time(start, start - DAY) <= start);
    }

    #[test]
    fn retries_back_off_from_a_minute_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(5), Duration::from_secs(960));
        assert_eq!(retry_delay(9), Duration::from_secs(15_360));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    fn self_signed(names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn cached_certificate_is_used_only_if_valid_and_covering() {
        let dir = tempfile::tempdir().unwrap();
        let domains = vec![
            "chat.example.org".to_string(),
            "www.example.org".to_string(),
        ];
        let now = SystemTime::now();
        assert!(load_cached(dir.path(), &domains, now).unwrap().is_none());

        let (cert, key) = self_signed(&["chat.example.org", "www.example.org"], 90);
        std::fs::write(dir.path().join(CERT_FILE), &cert).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), &key).unwrap();
        let (_, (not_before, not_after)) = load_cached(dir.path(), &domains, now).unwrap().unwrap();
        assert!(not_before < now && now < not_after);
        assert!(renewal_time(not_before, not_after) > now);

        // A name was added to the configuration: order anew.
        let more = vec![
            "chat.example.org".to_string(),
            "new.example.org".to_string(),
        ];
        assert!(load_cached(dir.path(), &more, now).unwrap().is_none());
        // Expired.
        assert!(
            load_cached(dir.path(), &domains, now + 100 * DAY)
                .unwrap()
                .is_none()
        );
        // A broken key file is an error, not a silent fallback.
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        assert!(load_cached(dir.path(), &domains, now).is_err());
    }

    #[test]
    fn challenge_certificates_answer_only_acme_handshakes_for_their_domain() {
        let (cert, key) = self_signed(&["chat.example.org"], 90);
        let chain = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let current = certified(chain, key).unwrap();
        let store = CertStore::new(Arc::clone(&current), None);

        // No challenge open: an acme-tls/1 handshake gets no certificate at all.
        assert!(store.select(Some("chat.example.org"), true).is_none());
        let digest = [7u8; 32];
        let challenge = challenge_certificate("chat.example.org", &digest).unwrap();
        store.set_challenge("Chat.Example.org", Arc::clone(&challenge));

        let got = store.select(Some("chat.example.org"), true).unwrap();
        assert!(Arc::ptr_eq(&got, &challenge));
        assert!(store.select(Some("other.example.org"), true).is_none());
        assert!(store.select(None, true).is_none());
        // Ordinary handshakes keep getting the current certificate.
        let got = store.select(Some("chat.example.org"), false).unwrap();
        assert!(Arc::ptr_eq(&got, &current));

        // The challenge certificate carries the critical acmeIdentifier extension
        // (1.3.6.1.5.5.7.1.31) with the digest as an OCTET STRING.
        let (_, parsed) = x509_parser::parse_x509_certificate(challenge.cert[0].as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        let mut expected = vec![0x04, 32];
        expected.extend_from_slice(&digest);
        assert_eq!(ext.value, expected.as_slice());

        store.clear_challenges();
        assert!(store.select(Some("chat.example.org"), true).is_none());
    }
}
