//! TLS (rustls, aws-lc-rs; the settings of a common web server) and the certificate pin.
//!
//! With a configured certificate and key, those are used. Otherwise a self-signed
//! certificate for `localhost`, `127.0.0.1` and `::1` is generated on first start into
//! `{data_dir}/tls/{cert,key}.pem` (key mode 0600) and reused afterwards, so the pin
//! stays stable across restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hushwire_proto::identity::format_pin;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerConfig;

/// Why TLS material could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("TLS file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("TLS file {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// Only one of the two generated files exists.
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to generate a new certificate (clients pinning the old one will refuse the new one)"
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The key type cannot report its public key, so no pin can be computed.
    #[error("cannot compute the pin: the key type does not expose its public key")]
    NoPublicKey,
}

/// The server's TLS setup and the pin clients use.
#[derive(Clone)]
pub struct TlsMaterial {
    /// rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, as a
    /// common web server offers (see `hushwire_decoy::tls`).
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the certificate's SubjectPublicKeyInfo.
    pub pin: String,
    /// The certificate file in use.
    pub cert_path: PathBuf,
    /// With ACME on: the resolver whose certificate [`crate::acme::maintain`] replaces.
    pub acme: Option<Arc<crate::acme::CertStore>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("pin", &self.pin)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Installs aws-lc-rs as rustls' process-wide default provider. Idempotent: a provider
/// installed before (by us or the embedding binary) is kept.
pub fn install_default_provider() {
    // Err means a default is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads the configured certificate, or loads/creates the self-signed one. With ACME
/// on: the cached ACME certificate if it is still valid for the configured domains,
/// else the self-signed one until the first order completes.
pub fn load_or_create(config: &ServerConfig) -> Result<TlsMaterial, TlsError> {
    if config.acme.enabled() {
        return load_acme(config);
    }
    let (cert_path, key_path) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.data_dir.join("tls");
            let paths = (dir.join("cert.pem"), dir.join("key.pem"));
            ensure_self_signed(&dir, &paths.0, &paths.1)?;
            paths
        }
    };
    let chain = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    build(chain, key, cert_path)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
) -> Result<TlsMaterial, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signing_key = provider.key_provider.load_private_key(key)?;
    let spki = signing_key.public_key().ok_or(TlsError::NoPublicKey)?;
    let pin = format_pin(spki.as_ref());
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified.keys_match()?;
    let config = hushwire_decoy::tls::server_config(Arc::new(
        rustls::sign::SingleCertAndKey::from(certified),
    ))?;
    Ok(TlsMaterial {
        config: Arc::new(config),
        pin,
        cert_path,
        acme: None,
    })
}

fn load_acme(config: &ServerConfig) -> Result<TlsMaterial, TlsError> {
    let cache = config.acme_cache_dir();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (key, validity, cert_path) =
        match crate::acme::load_cached(&cache, &config.acme.domains, std::time::SystemTime::now())?
        {
            Some((key, validity)) => (key, Some(validity), cache.join("cert.pem")),
            None => {
                let dir = config.data_dir.join("tls");
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                ensure_self_signed(&dir, &cert, &key)?;
                let signing = provider.key_provider.load_private_key(read_key(&key)?)?;
                let certified = rustls::sign::CertifiedKey::new(read_certs(&cert)?, signing);
                certified.keys_match()?;
                (Arc::new(certified), None, cert)
            }
        };
    let spki = key.key.public_key().ok_or(TlsError::NoPublicKey)?;
    let pin = format_pin(spki.as_ref());
    let store = Arc::new(crate::acme::CertStore::new(key, validity));
    let mut tls = hushwire_decoy::tls::server_config(store.clone())?;
    // Validation handshakes offer only acme-tls/1; ordinary clients never offer it, so
    // they see nginx's h2/http1.1 exactly as before.
    tls.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
    Ok(TlsMaterial {
        config: Arc::new(tls),
        pin,
        cert_path,
        acme: Some(store),
    })
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ensure_self_signed(dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => {
            warn_if_key_readable(key);
            return Ok(());
        }
        (true, false) => {
            return Err(TlsError::Incomplete {
                present: cert.to_path_buf(),
                missing: key.to_path_buf(),
            });
        }
        // A key without a certificate is what an interrupted first start leaves (the key
        // is renamed into place first): nothing was ever served with it, so regenerate.
        (false, _) => {}
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (key_pair, certificate) = snakeoil_certificate(time::OffsetDateTime::now_utc())?;
    write_atomically(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert, certificate.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// A self-signed certificate shaped like the one a stock web server install makes
/// (Debian's `ssl-cert` "snakeoil"): subject and issuer are just `CN=localhost`, valid
/// for ten years from today, a fresh serial. rcgen's defaults (subject "rcgen self
/// signed cert", valid 1975–4096) would single the server out to a scanner. Clients
/// pin the key, not the dates, so the validity period never breaks them.
fn snakeoil_certificate(
    now: time::OffsetDateTime,
) -> Result<(rcgen::KeyPair, rcgen::Certificate), rcgen::Error> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    params.not_before = now;
    params.not_after = now + time::Duration::days(3650);
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] &= 0x7f; // a positive DER INTEGER
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((key, cert))
}

pub(crate) fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn warn_if_key_readable(key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(key)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(key = %key.display(), "TLS key file is readable by group or others");
        }
    }
    #[cfg(not(unix))]
    let _ = key;
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found",
        });
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io_err(path))?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no PRIVATE KEY block found",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_looks_like_a_stock_install() {
        let now = time::OffsetDateTime::now_utc();
        let (_, cert) = snakeoil_certificate(now).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        assert_eq!(parsed.subject().to_string(), "CN=localhost");
        assert_eq!(parsed.issuer().to_string(), "CN=localhost");
        let validity = parsed.validity();
        let from = validity.not_before.timestamp();
        let to = validity.not_after.timestamp();
        assert!((from - now.unix_timestamp()).abs() <= 1);
        assert_eq!(to - from, 3650 * 86_400);
        let (_, other) = snakeoil_certificate(now).unwrap();
        let (_, other) = x509_parser::parse_x509_certificate(other.der()).unwrap();
        assert_ne!(parsed.raw_serial(), other.raw_serial());
    }
}
