//! Measures a relay on loopback: throughput and round-trip latency of a tunnel against
//! a direct TCP connection to the same upstream (an echo server), and memory per open
//! tunnel. `cargo run --release -p hushwire-relay --example relay_bench`.
//! Bounded: fixed byte counts, round trips and tunnel counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 256 * 1024 * 1024;
const ROUND_TRIPS: usize = 2000;
const TUNNELS: usize = 500;

#[derive(Debug)]
struct Pinned(Arc<rustls::crypto::CryptoProvider>);
impl ServerCertVerifier for Pinned {
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
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn tunnel(addr: &str, secret: &str) -> impl AsyncRead + AsyncWrite + Unpin {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /{secret} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tls
}

async fn measure<S: AsyncRead + AsyncWrite + Unpin>(name: &str, mut s: S) {
    let mut buf = [0u8; 1];
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
    }
    let rtt = started.elapsed() / ROUND_TRIPS as u32;
    let chunk = vec![7u8; 64 * 1024];
    let (mut r, mut w) = tokio::io::split(s);
    let started = Instant::now();
    let writer = async {
        let mut sent = 0;
        while sent < BULK {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    };
    let reader = async {
        let mut got = 0;
        let mut rb = vec![0u8; 64 * 1024];
        while got < BULK {
            got += r.read(&mut rb).await.unwrap();
        }
    };
    tokio::join!(writer, reader);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: round trip {rtt:?}, echo throughput {:.0} MB/s each way",
        BULK as f64 / secs / 1e6
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let relay = hushwire_relay::bind(hushwire_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_host: "127.0.0.1".into(),
        upstream_port: echo_port,
        data_dir: dir.path().to_path_buf(),
        site_dir: None,
        public_host: "127.0.0.1".into(),
        limits: hushwire_relay::RelayLimits {
            tunnels_per_ip: 10_000,
            opens_per_ip_per_minute: 100_000,
            ..Default::default()
        },
    })
    .await
    .unwrap();
    let link = relay.link();
    let addr = relay.local_addr().to_string();
    let handle = relay.handle();
    tokio::spawn(relay.run(std::future::pending()));

    let direct = TcpStream::connect(("127.0.0.1", echo_port)).await.unwrap();
    direct.set_nodelay(true).unwrap();
    measure("direct TCP", direct).await;
    measure(
        "through the relay (TLS to the relay)",
        tunnel(&addr, &link.secret).await,
    )
    .await;

    // Memory per idle tunnel (relay and client ends live in this process: the figure
    // counts the relay's side plus our client TLS state; see BENCHMARKS.md).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut open = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        let mut t = tunnel(&addr, &link.secret).await;
        t.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await.unwrap();
        open.push(t);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib();
    println!(
        "{TUNNELS} idle tunnels: RSS +{} KiB = {:.1} KiB per tunnel (relay side + client side + echo), stats {:?}",
        after - before,
        (after - before) as f64 / TUNNELS as f64,
        handle.stats()
    );
}
