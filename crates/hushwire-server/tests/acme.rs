//! ACME end to end against Pebble (Let's Encrypt's test CA, Debian package `pebble`),
//! all on 127.0.0.1: pebble-challtestsrv answers Pebble's DNS queries for
//! `chat.example.com` with 127.0.0.1, Pebble validates TLS-ALPN-01 against the Hushwire
//! server's own port, the server installs the issued certificate, keeps it in its data
//! directory, and serves it again after a restart without asking the CA.
//!
//! Needs `pebble` and `pebble-challtestsrv` on PATH (.ci/run installs them): the test
//! fails loudly without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hushwire_server::{AcmeConfig, ServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::oneshot;

const DOMAIN: &str = "chat.example.com";

/// A child process killed (by its pid) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: `apt-get install -y pebble` (.ci/run does it)"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, for Pebble's own HTTPS listener.
fn pebble_tls(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test ACME directory root");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("root.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble + its DNS, validating on `tls_port`. Returns the directory URL.
fn start_pebble(dir: &Path, tls_port: u16) -> (Vec<Proc>, String) {
    need("pebble");
    need("pebble-challtestsrv");
    pebble_tls(dir);
    let (listen, mgmt, dns, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let challtestsrv = Command::new("pebble-challtestsrv")
        .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
        .args(["-dns01", &format!("127.0.0.1:{dns}")])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let challtestsrv = Proc(challtestsrv);
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pebble = Proc(pebble);
    wait_for_port(listen, "pebble");
    wait_for_port(chall_mgmt, "pebble-challtestsrv");
    (
        vec![pebble, challtestsrv],
        format!("https://127.0.0.1:{listen}/dir"),
    )
}

struct Running {
    shutdown: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), hushwire_server::error::ServerError>>,
    store: Arc<hushwire_store_sqlite::SqliteStore>,
    url: String,
}

async fn start_server(config: ServerConfig) -> Running {
    let store = hushwire_server::open_sqlite(&config).await.unwrap();
    let running = hushwire_server::bind(config, store.clone()).await.unwrap();
    assert!(running.uses_acme());
    let url = running.url();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(running.run(async move {
        let _ = rx.await;
    }));
    Running {
        shutdown: tx,
        handle,
        store,
        url,
    }
}

async fn stop(r: Running) {
    let _ = r.shutdown.send(());
    tokio::time::timeout(Duration::from_secs(20), r.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    r.store.shutdown().await;
}

/// Accepts any certificate and keeps the chain it was shown.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<CertificateDer<'static>>>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.0.lock().unwrap() = chain;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The leaf the server shows an ordinary client (ALPN h2/http1.1, SNI = DOMAIN), and the
/// negotiated ALPN.
async fn served_leaf(addr: SocketAddr) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let recorder = Arc::new(Recorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = recorder.0.lock().unwrap()[0].clone();
    (leaf, alpn)
}

fn issuer_cn(leaf: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.issuer().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_pebble_via_tls_alpn_01_is_served_cached_and_reused() {
    hushwire_server::tls::install_default_provider();
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let (procs, directory) = start_pebble(root.path(), port);

    let data = root.path().join("server");
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: data.clone(),
        acme: AcmeConfig {
            domains: vec![DOMAIN.to_string()],
            contact: Some("mailto:ops@example.com".to_string()),
            directory,
            cache_dir: None,
            directory_root: Some(root.path().join("root.pem")),
        },
        ..ServerConfig::default()
    };
    let server = start_server(config.clone()).await;
    assert!(
        server.url.starts_with(&format!("https://{DOMAIN}:{port}/")),
        "{}",
        server.url
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Until the order completes the server shows its self-signed certificate.
    let (first, alpn) = served_leaf(addr).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    let cert_file = data.join("acme").join("cert.pem");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cert_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no certificate from Pebble within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Installed right after it is written.
    let mut leaf = served_leaf(addr).await.0;
    for _ in 0..50 {
        if leaf != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        leaf = served_leaf(addr).await.0;
    }
    assert_ne!(leaf, first, "the ACME certificate was not installed");
    assert!(issuer_cn(&leaf).contains("Pebble"), "{}", issuer_cn(&leaf));
    let cached = rustls_pemfile::certs(&mut std::fs::read(&cert_file).unwrap().as_slice())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(leaf, cached);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["key.pem", "account.json"] {
            let mode = std::fs::metadata(data.join("acme").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others");
        }
    }
    stop(server).await;

    // Restart with the CA gone: the cached certificate is served at once.
    drop(procs);
    let server = start_server(config).await;
    let (again, alpn) = served_leaf(addr).await;
    assert_eq!(again, cached);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    stop(server).await;
}

#[test]
fn acme_configuration_is_validated() {
    let ok = ServerConfig::from_toml(
        "[acme]\ndomains = [\"chat.example.org\"]\ncontact = \"mailto:ops@example.org\"\n",
    )
    .unwrap();
    assert!(ok.acme.enabled());
    assert_eq!(
        ok.acme.directory,
        hushwire_server::config::LETS_ENCRYPT_DIRECTORY
    );
    assert_eq!(
        ok.acme_cache_dir(),
        ok.data_dir.join("acme"),
        "default cache dir"
    );
    for (toml, field) in [
        ("[acme]\ndomains = [\"*.example.org\"]", "acme.domains"),
        ("[acme]\ndomains = [\"192.0.2.1\"]", "acme.domains"),
        ("[acme]\ndomains = [\"localhost\"]", "acme.domains"),
        (
            "[acme]\ndomains = [\"a.example.org\"]\ncontact = \"ops@example.org\"",
            "acme.contact",
        ),
        (
            "[acme]\ndomains = [\"a.example.org\"]\ndirectory = \"http://ca.example/dir\"",
            "acme.directory",
        ),
        (
            "[acme]\ndomains = [\"a.example.org\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"",
            "acme",
        ),
        ("[acme]\ndomain = [\"a.example.org\"]", ""),
    ] {
        let err = ServerConfig::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(field), "{toml}: {err}");
    }
}
