//! TLS 1.3 client configuration with key pinning.
//!
//! With a pin, the verifier accepts exactly the certificate whose SubjectPublicKeyInfo
//! hashes (SHA-256) to the pin, whatever its name, dates and chain, and still checks the
//! handshake signature against that key. Without a pin it verifies against the Web PKI
//! roots (`webpki-roots`). Both use the aws-lc-rs provider.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::ClientError;

/// Formats a SHA-256 SPKI digest as `sha256:<64 hex>`.
pub fn pin_to_string(digest: &[u8; 32]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Parses a pin given by a user (`sha256:<64 hex>`, hex case-insensitive).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], ClientError> {
    hushwire_proto::identity::parse_pin(&pin.trim().to_ascii_lowercase())
        .ok_or_else(|| ClientError::InvalidPin(pin.to_string()))
}

/// The error the pinned verifier hands to rustls when the key differs.
#[derive(Debug)]
struct PinMismatchError {
    expected: [u8; 32],
    got: [u8; 32],
}

impl fmt::Display for PinMismatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pin mismatch: expected {}, got {}",
            pin_to_string(&self.expected),
            pin_to_string(&self.got)
        )
    }
}

impl StdError for PinMismatchError {}

enum Mode {
    Pinned([u8; 32]),
    WebPki(Arc<WebPkiServerVerifier>),
}

/// A [`ServerCertVerifier`] that enforces a pin, or falls back to the Web PKI.
pub(crate) struct HushwireVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
    /// The key digest of the last refused certificate, so that callers can report a
    /// precise [`ClientError::PinMismatch`] whatever layers wrapped the rustls error.
    last_mismatch: Mutex<Option<[u8; 32]>>,
}

impl fmt::Debug for HushwireVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Pinned(pin) => write!(f, "HushwireVerifier(pinned {})", pin_to_string(pin)),
            Mode::WebPki(_) => f.write_str("HushwireVerifier(webpki roots)"),
        }
    }
}

impl HushwireVerifier {
    fn spki_digest(end_entity: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let spki = parsed.subject_public_key_info();
        Ok(Sha256::digest(spki.as_ref()).into())
    }
}

impl ServerCertVerifier for HushwireVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.mode {
            Mode::Pinned(expected) => {
                let got = Self::spki_digest(end_entity)?;
                if &got == expected {
                    Ok(ServerCertVerified::assertion())
                } else {
                    if let Ok(mut slot) = self.last_mismatch.lock() {
                        *slot = Some(got);
                    }
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(PinMismatchError {
                            expected: *expected,
                            got,
                        })),
                    )))
                }
            }
            Mode::WebPki(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config only offers TLS 1.3; verify properly anyway should that ever change.
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A ready TLS client configuration and its verifier.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    verifier: Arc<HushwireVerifier>,
}

impl TlsSetup {
    /// Builds a TLS 1.3-only configuration: pinned when `pin` is given, else Web PKI.
    pub fn new(pin: Option<[u8; 32]>) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mode = match pin {
            Some(pin) => Mode::Pinned(pin),
            None => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ClientError::Protocol(format!("TLS roots: {e}")))?;
                Mode::WebPki(inner)
            }
        };
        let verifier = Arc::new(HushwireVerifier {
            mode,
            provider: provider.clone(),
            last_mismatch: Mutex::new(None),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Protocol(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            verifier,
        })
    }

    /// The rustls configuration (no ALPN set; HTTP/1.1 on every connection).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The pin this setup enforces, if any.
    pub fn pin(&self) -> Option<[u8; 32]> {
        match self.verifier.mode {
            Mode::Pinned(pin) => Some(pin),
            Mode::WebPki(_) => None,
        }
    }

    /// Turns a failed connection attempt into the precise error: a pin mismatch, an
    /// untrusted certificate, or `fallback`.
    pub(crate) fn classify(
        &self,
        err: &(dyn StdError + 'static),
        fallback: ClientError,
    ) -> ClientError {
        if let Some(got) = self
            .verifier
            .last_mismatch
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            && let Mode::Pinned(expected) = self.verifier.mode
        {
            return ClientError::PinMismatch {
                expected: pin_to_string(&expected),
                got: pin_to_string(&got),
            };
        }
        if let Some(rustls::Error::InvalidCertificate(cert_err)) = find_rustls_error(err) {
            return ClientError::UntrustedCertificate(format!("{cert_err:?}"));
        }
        fallback
    }
}

/// Walks an error's source chain, looking inside `io::Error`s too (whose `source()`
/// skips the wrapped error itself), for a `rustls::Error`.
fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            if let Some(found) = find_rustls_error(inner) {
                return Some(found);
            }
        }
        depth += 1;
        if depth > 16 {
            break;
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;
    use crate::{ApiClient, ApiRequest, Endpoint};
    use hushwire_proto::wire;

    const OTHER_PIN: &str =
        "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn pins_parse_and_format() {
        let pin = parse_pin(OTHER_PIN).unwrap();
        assert_eq!(pin_to_string(&pin), OTHER_PIN);
        assert_eq!(
            parse_pin(&OTHER_PIN.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            pin
        );
        assert!(matches!(
            parse_pin("sha256:12"),
            Err(ClientError::InvalidPin(_))
        ));
        assert!(matches!(
            parse_pin("md5:00"),
            Err(ClientError::InvalidPin(_))
        ));
    }

    #[tokio::test]
    async fn right_pin_is_accepted() {
        let server = test_support::start(404, Vec::new()).await;
        let endpoint = Endpoint::new(&server.url, Some(&server.pin)).unwrap();
        endpoint.probe().await.unwrap();
    }

    #[tokio::test]
    async fn wrong_pin_is_refused_naming_both_pins() {
        let server = test_support::start(404, Vec::new()).await;
        let endpoint = Endpoint::new(&server.url, Some(OTHER_PIN)).unwrap();
        match endpoint.probe().await {
            Err(ClientError::PinMismatch { expected, got }) => {
                assert_eq!(expected, OTHER_PIN);
                assert_eq!(got, server.pin);
            }
            other => panic!("expected PinMismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_pin_uses_web_pki_and_refuses_a_self_signed_key() {
        let server = test_support::start(404, Vec::new()).await;
        let endpoint = Endpoint::new(&server.url, None).unwrap();
        match endpoint.probe().await {
            Err(ClientError::UntrustedCertificate(_)) => {}
            other => panic!("expected UntrustedCertificate, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn https_api_honours_the_pin() {
        let body = hushwire_proto::codec::encode(&wire::ApiError {
            code: wire::ErrorCode::NotFound as i32,
            message: "no such account".into(),
        });
        let server = test_support::start(404, body).await;

        let api = ApiClient::new(Endpoint::new(&server.url, Some(&server.pin)).unwrap()).unwrap();
        match api
            .call::<wire::AccountInfo>(ApiRequest::account("bob"))
            .await
        {
            Err(ClientError::Api {
                status: 404,
                code: wire::ErrorCode::NotFound,
                message,
            }) => {
                assert_eq!(message, "no such account");
            }
            other => panic!("expected the server's ApiError, got {other:?}"),
        }

        let api = ApiClient::new(Endpoint::new(&server.url, Some(OTHER_PIN)).unwrap()).unwrap();
        match api
            .call::<wire::AccountInfo>(ApiRequest::account("bob"))
            .await
        {
            Err(ClientError::PinMismatch { got, .. }) => assert_eq!(got, server.pin),
            other => panic!("expected PinMismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_as_such() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        drop(listener);
        let endpoint = Endpoint::new(&url, Some(OTHER_PIN)).unwrap();
        let err = endpoint.probe().await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.is_transient() && err.is_network());
    }
}
