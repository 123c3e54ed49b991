//! Slow and silent clients (slowloris): each is closed after its timeout while other
//! users are served. The trickled request head is covered where it is read
//! (hushwire-decoy's `a_trickled_head_is_closed_at_the_header_deadline`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Reads until the server closes; `None` if it has not within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<usize> {
    let mut seen = 0usize;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen += n,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn silent_and_stalled_handshakes_are_closed_while_others_are_served() {
    let server = TestServer::start_with(|c| c.handshake_timeout_secs = 1).await;
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Starts a TLS handshake and stalls: a ClientHello record header promising 512
    // bytes, then only part of it.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();

    // Meanwhile another user registers, logs in and is served.
    let c = server.client();
    let alice = c.new_user("alice").await;
    let mut ws = c.login(&alice).await;
    assert_eq!(ws.backlog().await.0.len(), 0);

    for (what, conn) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let seen = closed_within(conn, Duration::from_secs(10)).await;
        assert_eq!(
            seen,
            Some(0),
            "the {what} connection was not closed (without an answer) after the timeout"
        );
    }
    // alice's connection outlived the timeout and still works.
    ws.ping().await;
}
