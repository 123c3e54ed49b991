//! Probe resistance: to anyone without the secret, the server and a volunteer relay
//! answer exactly like nginx serving the same directory — same status codes, same
//! header names in the same order — for the paths a scanner tries, malformed requests
//! and garbage; they negotiate the same TLS versions and ALPN protocols; and a relay
//! carries tunnels only to its configured upstream.
//!
//! Everything listens on 127.0.0.1. Needs Debian's nginx (.ci/run installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hushwire_tests::{TestServer, test_config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scanner does not verify certificates.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn scanner_tls(alpn: &[&[u8]], tls12_only: bool, sni: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni;
    Arc::new(config)
}

/// Status code and header names (in order) of the answer to `request`.
async fn probe(addr: &str, request: &[u8]) -> (u16, Vec<String>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(scanner_tls(&[b"http/1.1"], false, true))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let names = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect();
    (status, names)
}

/// ALPN chosen and whether a handshake with these settings works.
async fn handshake(addr: &str, tls12_only: bool, sni: bool) -> Option<Option<Vec<u8>>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(scanner_tls(&[b"h2", b"http/1.1"], tls12_only, sni))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

/// nginx runs as one process (`master_process off`), so killing it leaves no orphaned
/// worker behind.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(dir: &Path, site: &Path, cert: &Path, key: &Path) -> (Nginx, String) {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n include /etc/nginx/mime.types;\n default_type application/octet-stream;\n access_log off;\n server_tokens off;\n client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n server {{\n  listen 127.0.0.1:{port} ssl http2;\n  ssl_certificate {};\n  ssl_certificate_key {};\n  root {};\n }}\n}}\n",
            cert.display(),
            key.display(),
            site.display()
        ),
    )
    .unwrap();
    let nginx = Nginx(
        Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is missing: .ci/run installs it"),
    );
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return (nginx, addr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx did not start; see {d}/error.log");
}

fn site(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("index.html"), "<html><body>Notes</body></html>\n").unwrap();
    std::fs::write(dir.join("style.css"), "body{}\n").unwrap();
    std::fs::write(dir.join("robots.txt"), "User-agent: *\n").unwrap();
    std::fs::write(dir.join("docs/index.html"), "<html>docs</html>\n").unwrap();
}

const PROBES: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /robots.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET /.env HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /.git/config HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /wp-login.php HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /admin/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /v1/register HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "GET /sub HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /sub/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /docs/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /%zz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /a/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    "POST /api HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    "OPTIONS / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "DELETE /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "get / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    "garbage\r\n\r\n",
    "\x16\x03\x01\x00\x05hello\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_see_what_nginx_shows() {
    let root = tempfile::tempdir().unwrap();
    let site_dir = root.path().join("site");
    site(&site_dir);
    let mut config = test_config(&root.path().join("server"));
    config.site_dir = Some(site_dir.clone());
    let server = TestServer::start_with(config).await;
    let server_addr = server
        .url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let relay = hushwire_relay::bind(hushwire_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_host: "127.0.0.1".into(),
        upstream_port: server_addr.rsplit(':').next().unwrap().parse().unwrap(),
        data_dir: root.path().join("relay"),
        site_dir: Some(site_dir.clone()),
        public_host: "127.0.0.1".into(),
        limits: hushwire_relay::RelayLimits::default(),
    })
    .await
    .unwrap();
    let relay_addr = relay.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    let tls = server.data_dir.join("tls");
    let (_nginx, nginx_addr) = start_nginx(
        root.path(),
        &site_dir,
        &tls.join("cert.pem"),
        &tls.join("key.pem"),
    );

    for request in PROBES {
        let want = probe(&nginx_addr, request.as_bytes()).await;
        assert_ne!(want.0, 0, "nginx gave no answer to {request:?}");
        for (who, addr) in [("server", &server_addr), ("relay", &relay_addr)] {
            let got = probe(addr, request.as_bytes()).await;
            assert_eq!(got, want, "{who} answered {request:?} unlike nginx");
        }
    }
    // The same TLS: versions, ALPN (h2 preferred), no SNI.
    for (tls12_only, sni) in [(false, true), (true, true), (false, false)] {
        let want = handshake(&nginx_addr, tls12_only, sni).await;
        assert_eq!(
            want,
            Some(Some(b"h2".to_vec())),
            "nginx, tls12_only={tls12_only} sni={sni}"
        );
        assert_eq!(
            handshake(&server_addr, tls12_only, sni).await,
            want,
            "server"
        );
        assert_eq!(handshake(&relay_addr, tls12_only, sni).await, want, "relay");
    }
    let _ = stop.send(());
    relay_task.await.unwrap().unwrap();
    server.stop().await;
}

/// A relay's tunnel goes to its upstream and nowhere else, whatever the request names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_connects_only_to_its_upstream() {
    let root = tempfile::tempdir().unwrap();
    // The "upstream": a plain listener recording what arrives.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    // Something else the relay must never reach.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let relay = hushwire_relay::bind(hushwire_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_host: "127.0.0.1".into(),
        upstream_port,
        data_dir: root.path().join("relay"),
        site_dir: None,
        public_host: "127.0.0.1".into(),
        limits: hushwire_relay::RelayLimits::default(),
    })
    .await
    .unwrap();
    let link = relay.link();
    let addr = relay.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));

    // CONNECT and absolute-form requests get the website's own answers (nginx serves its
    // own page for an absolute URI), never a connection elsewhere.
    for request in [
        format!("CONNECT {elsewhere_addr} HTTP/1.1\r\nHost: {elsewhere_addr}\r\n\r\n"),
        format!("GET http://{elsewhere_addr}/ HTTP/1.1\r\nHost: {elsewhere_addr}\r\n\r\n"),
        format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "A".repeat(link.secret.len())
        ),
    ] {
        let (status, _) = probe(&addr, request.as_bytes()).await;
        assert!(
            [200, 400, 404, 405].contains(&status),
            "{request:?} -> {status}"
        );
    }
    // With the secret, naming another host in every header still lands upstream.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(scanner_tls(&[b"http/1.1"], false, true))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /{} HTTP/1.1\r\nHost: {elsewhere_addr}\r\nConnection: Upgrade\r\nUpgrade: {elsewhere_addr}\r\nX-Forwarded-Host: {elsewhere_addr}\r\n\r\nhello upstream",
            link.secret
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), upstream.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; 14];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"hello upstream");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), elsewhere.accept())
            .await
            .is_err(),
        "the relay connected elsewhere"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
