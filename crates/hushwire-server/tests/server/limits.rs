//! Per-client-IP limits: the connection cap (`max_connections_per_ip`), past which one
//! address is closed before TLS, and the public directory's request budget; other
//! addresses are served meanwhile.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::Connector;

use crate::common::*;

/// A TCP connection to `to` from the loopback address `source` (all of 127.0.0.0/8 is
/// local on Linux, so each source address is a different client to the server).
async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// A TLS handshake from `source`; an error when the server closed the connection.
async fn tls_from(server: &TestServer, source: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, server.addr).await;
    let handshake = TlsConnector::from(client_tls(&server.pin))
        .connect(ServerName::try_from("localhost").unwrap(), tcp);
    tokio::time::timeout(TIMEOUT, handshake)
        .await
        .expect("TLS handshake neither completed nor failed")
}

/// Polls `check` every 20 ms until it holds, for at most [`TIMEOUT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn per_ip_cap_refuses_one_address_and_serves_the_others() {
    let mut server = TestServer::start_with(|c| {
        c.max_connections_per_ip = 3;
        c.connection_limit_exempt = vec![];
    })
    .await;
    let client = server.client();
    let alice = client.new_user("alice").await;
    // The registration's connection (from 127.0.0.1) must be gone before counting.
    eventually("registration connection closed", || {
        server.server.stats().connections == 0
    })
    .await;

    // Three connections from 127.0.0.1 fill its cap.
    let mut held = Vec::new();
    for i in 0..3 {
        let tls = tls_from(&server, "127.0.0.1").await;
        held.push(tls.unwrap_or_else(|e| panic!("connection {i} within the cap: {e}")));
    }
    assert_eq!(server.server.stats().connections, 3);
    assert_eq!(server.server.stats().refused_per_ip, 0);

    // The fourth is closed right after accept: no TLS handshake.
    let fourth = tls_from(&server, "127.0.0.1").await;
    assert!(
        fourth.is_err(),
        "a fourth connection from 127.0.0.1 got TLS"
    );
    assert_eq!(server.server.stats().refused_per_ip, 1);
    assert_eq!(server.server.stats().connections, 3);

    // Another address is unaffected: a real WebSocket login from 127.0.0.2.
    let tcp = tcp_from("127.0.0.2", server.addr).await;
    let url = format!("wss://{}{}/v1/ws", server.addr, server.prefix);
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        url,
        tcp,
        None,
        Some(Connector::Rustls(client.tls.clone())),
    )
    .await
    .unwrap();
    let mut ws = client.login_on(Ws { ws }, &alice).await;
    assert_eq!(ws.backlog().await, (vec![], 0));
    ws.ping().await;
    assert_eq!(server.server.stats().devices_online, 1);

    // Closing one of the three frees a place for 127.0.0.1 once the server notices.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let again = loop {
        match tls_from(&server, "127.0.0.1").await {
            Ok(tls) => break tls,
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "127.0.0.1 was not admitted again after closing a connection"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    held.push(again);
    assert!(
        tls_from(&server, "127.0.0.1").await.is_err(),
        "the cap holds again with three open"
    );

    drop(held);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn loopback_is_exempt_by_default() {
    let mut server = TestServer::start_with(|c| c.max_connections_per_ip = 1).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let tls = tls_from(&server, "127.0.0.1").await;
        held.push(tls.unwrap_or_else(|e| panic!("exempt connection {i}: {e}")));
    }
    assert_eq!(server.server.stats().refused_per_ip, 0);
    drop(held);
    server.stop().await;
}

/// A client of `server` whose requests come from `source`.
fn client_from(server: &TestServer, source: &str) -> Client {
    let mut c = server.client();
    c.source = Some(source.parse().unwrap());
    c
}

#[tokio::test]
async fn public_directory_requests_are_rate_limited_per_ip() {
    let server =
        TestServer::start_with(|c| c.rate_limits.directory_requests_per_ip_per_minute = 3).await;
    // Wait (from an address of its own, bounded) until the directory has loaded.
    let warm = client_from(&server, "127.0.0.3");
    let mut loaded = false;
    for _ in 0..100 {
        if warm.raw("GET", "/v1/directory", vec![], &[]).await.status == 200 {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the key directory did not load");

    let flood = client_from(&server, "127.0.0.1");
    for path in ["/v1/directory", "/v1/directory/roots", "/v1/directory"] {
        let r = flood.raw("GET", path, vec![], &[]).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
    flood
        .raw("GET", "/v1/directory", vec![], &[])
        .await
        .expect_error(429, hushwire_proto::wire::ErrorCode::RateLimited);
    // Another address is unaffected.
    let other = client_from(&server, "127.0.0.2");
    assert_eq!(
        other.raw("GET", "/v1/directory", vec![], &[]).await.status,
        200
    );
}
