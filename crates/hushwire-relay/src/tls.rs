//! The relay's certificate (self-signed, kept in its data directory so the pin in
//! shared links stays valid) and its tunnel secret.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::RelayError;

pub(crate) struct Material {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) pin: [u8; 32],
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), RelayError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let io = |e| RelayError::io(format!("cannot write {}", path.display()), e);
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The tunnel secret in `{dir}/secret`, generated on first start.
pub(crate) fn load_or_create_secret(dir: &Path, chars: usize) -> Result<String, RelayError> {
    let path = dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if hushwire_decoy::secret::is_well_formed(s.trim(), 16) => Ok(s.trim().to_string()),
        Ok(_) => Err(RelayError::Config(format!(
            "{} does not hold a valid secret; remove it to generate a new one (old links stop working)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = hushwire_decoy::secret::generate(chars);
            write_private(&path, format!("{secret}\n").as_bytes())?;
            Ok(secret)
        }
        Err(e) => Err(RelayError::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Loads `{dir}/tls/{cert,key}.pem`, or makes a self-signed certificate for `host`.
pub(crate) fn load_or_create(dir: &Path, host: &str) -> Result<Material, RelayError> {
    let tls_dir = dir.join("tls");
    let cert_path = tls_dir.join("cert.pem");
    let key_path = tls_dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&tls_dir)
            .map_err(|e| RelayError::io(format!("cannot create {}", tls_dir.display()), e))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| RelayError::Tls(e.to_string()))?;
        // A plain subject, not rcgen's recognisable default.
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, host);
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().map_err(|e| RelayError::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| RelayError::Tls(e.to_string()))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| RelayError::io(format!("cannot read {}", p.display()), e))
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| RelayError::Tls(format!("{}: {e}", cert_path.display())))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| RelayError::Tls(format!("{}: {e}", key_path.display())))?
        .ok_or_else(|| RelayError::Tls(format!("{}: no private key", key_path.display())))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let spki = signing
        .public_key()
        .ok_or_else(|| RelayError::Tls("the key type does not expose its public key".into()))?;
    let pin =
        hushwire_proto::identity::parse_pin(&hushwire_proto::identity::format_pin(spki.as_ref()))
            .ok_or_else(|| RelayError::Tls("cannot compute the pin".into()))?;
    let certified = CertifiedKey::new(chain, signing);
    let config = hushwire_decoy::tls::server_config(Arc::new(
        rustls::sign::SingleCertAndKey::from(certified),
    ))
    .map_err(|e| RelayError::Tls(e.to_string()))?;
    Ok(Material {
        config: Arc::new(config),
        pin,
    })
}
