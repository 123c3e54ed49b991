//! `hushwire_tls::TlsStream` against rustls' own buffered client (`tokio-rustls`) over
//! loopback TCP: data both ways at every size, both TLS versions, tickets and
//! resumption, key updates, `close_notify`, truncation, garbage, and no buffers held
//! while idle.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

struct Pki {
    server: Arc<ServerConfig>,
    cert: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pki() -> Pki {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let cert = certified.cert.der().clone();
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    Pki {
        server: Arc::new(server),
        cert,
    }
}

fn client_config(pki: &Pki, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Listens on loopback and, in a task, runs `serve` on the first connection with the
/// server configuration. Returns the address and the task.
async fn serve_one<T, Fut>(
    pki: &Pki,
    serve: impl FnOnce(TcpStream, Arc<ServerConfig>) -> Fut + Send + 'static,
) -> (SocketAddr, JoinHandle<T>)
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::clone(&pki.server);
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(tcp, config).await
    });
    (addr, task)
}

/// A listener on loopback and a client connected to it over TLS; returns the server's
/// accepted stream and the client's.
async fn pair(
    pki: &Pki,
    client: Arc<ClientConfig>,
) -> (hushwire_tls::TlsStream<TcpStream>, ClientStream<TcpStream>) {
    let (addr, server) = serve_one(pki, |tcp, config| hushwire_tls::accept(config, tcp)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let server = server.await.unwrap().unwrap();
    (server, client)
}

/// One byte each way; the client thereby reads whatever the server sent after the
/// handshake (TLS 1.3 tickets).
async fn ping_pong(
    server: &mut hushwire_tls::TlsStream<TcpStream>,
    client: &mut ClientStream<TcpStream>,
) {
    client.write_all(b"x").await.unwrap();
    client.flush().await.unwrap();
    let mut one = [0u8; 1];
    server.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");
    server.write_all(b"y").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn round_trips(version: &'static SupportedProtocolVersion) {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, version)).await;
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(server.session().protocol_version(), Some(version.version));
    for len in [1, 100, 4095, 4096, 4097, 16_384, 16_385, 100_000, 1 << 20] {
        let up = pattern(len, 1);
        let down = pattern(len, 2);
        // Both directions at once: neither side may wait for the other to read.
        let write_up = async {
            client.write_all(&up).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0; len];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let echo = async {
            let mut got = vec![0; len];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&down).await.unwrap();
            server.flush().await.unwrap();
            got
        };
        let (client_got, server_got) = tokio::join!(write_up, echo);
        assert_eq!(server_got, up, "client to server, {len} bytes");
        assert_eq!(client_got, down, "server to client, {len} bytes");
        assert_eq!(
            server.buffered_capacity(),
            0,
            "buffers held after a {len}-byte exchange"
        );
    }
}

#[tokio::test]
async fn data_both_ways_tls13() {
    round_trips(&rustls::version::TLS13).await;
}

#[tokio::test]
async fn data_both_ways_tls12() {
    round_trips(&rustls::version::TLS12).await;
}

#[tokio::test]
async fn idle_connection_holds_no_buffers_while_waiting_to_read() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, &rustls::version::TLS13)).await;
    assert_eq!(server.buffered_capacity(), 0, "after the handshake");
    // The server waits for data that is not there yet: the pending read holds nothing.
    let mut buf = [0u8; 64];
    let waited =
        tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut buf)).await;
    assert!(waited.is_err(), "nothing was sent");
    assert_eq!(server.buffered_capacity(), 0, "while a read waits");
    // Data arrives and is read whole; nothing stays behind.
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(server.buffered_capacity(), 0, "after the read");
}

#[tokio::test]
async fn large_reads_into_small_buffers_keep_the_rest_in_order() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, &rustls::version::TLS13)).await;
    let up = pattern(50_000, 7);
    client.write_all(&up).await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut small = [0u8; 7];
    while got.len() < up.len() {
        let n = server.read(&mut small).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&small[..n]);
    }
    assert_eq!(got, up);
    assert_eq!(server.buffered_capacity(), 0);
}

#[tokio::test]
async fn tickets_are_sent_and_a_second_connection_resumes() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = client_config(&pki, version);
        let (mut server, mut c1) = pair(&pki, Arc::clone(&client)).await;
        assert_eq!(c1.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        // TLS 1.3 tickets arrive after the handshake: read them by exchanging data.
        ping_pong(&mut server, &mut c1).await;
        let (_server2, c2) = pair(&pki, client).await;
        assert_eq!(
            c2.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn key_updates_from_the_client_are_answered() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, &rustls::version::TLS13)).await;
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        let up = pattern(10_000, round);
        client.write_all(&up).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0; up.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, up, "after key update {round}");
        let down = pattern(10_000, round + 100);
        server.write_all(&down).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0; down.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, down, "reply after key update {round}");
    }
}

#[tokio::test]
async fn close_notify_both_ways() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, &rustls::version::TLS13)).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(
        got, b"last words",
        "data before close_notify, then a clean end"
    );
    server.write_all(b"goodbye").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"goodbye");
    assert!(
        server.write_all(b"more").await.is_err(),
        "closed for writing"
    );
}

#[tokio::test]
async fn tcp_close_without_close_notify_is_unexpected_eof() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, client_config(&pki, &rustls::version::TLS13)).await;
    // One exchange first, so the client has read the server's tickets: unread data would
    // turn its close into a reset.
    ping_pong(&mut server, &mut client).await;
    let (tcp, _) = client.into_inner();
    drop(tcp);
    let mut buf = [0u8; 16];
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn plaintext_http_instead_of_tls_fails_the_handshake_with_an_alert() {
    let pki = pki();
    let (addr, server) = serve_one(&pki, |tcp, config| async move {
        hushwire_tls::accept(config, tcp).await.map(|_| ())
    })
    .await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record: {answer:?}"
    );
}

#[tokio::test]
async fn a_corrupted_record_fails_the_stream() {
    let pki = pki();
    let (addr, server) = serve_one(&pki, |tcp, config| async move {
        let mut tls = hushwire_tls::accept(config, tcp).await.unwrap();
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    })
    .await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsConnector::from(client_config(&pki, &rustls::version::TLS13))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut tcp, _) = client.into_inner();
    // An application-data record whose ciphertext is garbage.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0xAB; 0x20]);
    tcp.write_all(&record).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

/// Forwards client bytes to the server one byte per write, so every record (and the
/// handshake) arrives in pieces.
#[tokio::test]
async fn records_arriving_one_byte_at_a_time_are_reassembled() {
    let pki = pki();
    let (addr, server) = serve_one(&pki, |tcp, config| async move {
        let mut tls = hushwire_tls::accept(config, tcp).await.unwrap();
        let mut got = vec![0; 3000];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(&got).await.unwrap();
        tls.flush().await.unwrap();
        (got, tls.buffered_capacity())
    })
    .await;
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    tokio::spawn(async move {
        let (inbound, _) = proxy.accept().await.unwrap();
        let outbound = TcpStream::connect(addr).await.unwrap();
        outbound.set_nodelay(true).unwrap();
        let (mut in_read, mut in_write) = inbound.into_split();
        let (mut out_read, mut out_write) = outbound.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut out_read, &mut in_write).await });
        let mut buf = [0u8; 4096];
        loop {
            let n = match in_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for byte in &buf[..n] {
                if out_write.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let tcp = TcpStream::connect(proxy_addr).await.unwrap();
    let mut client = TlsConnector::from(client_config(&pki, &rustls::version::TLS13))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let up = pattern(3000, 9);
    // Three records of 1,000 bytes.
    for chunk in up.chunks(1000) {
        client.write_all(chunk).await.unwrap();
        client.flush().await.unwrap();
    }
    let mut echoed = vec![0; 3000];
    client.read_exact(&mut echoed).await.unwrap();
    let (got, held) = server.await.unwrap();
    assert_eq!(got, up);
    assert_eq!(echoed, up);
    assert_eq!(held, 0);
}
