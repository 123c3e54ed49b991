//! HTTP/1.x in front of a secret: every request that is not for the secret gets the
//! decoy site's answer; the first one that is hands the connection over.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{DecoySite, RequestInfo, Rewind};

/// Largest request head read (nginx: `large_client_header_buffers 4 8k`).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// Largest request body read and discarded on a decoy request; a larger one closes the
/// connection after the answer.
const MAX_DISCARD_BYTES: u64 = 1024 * 1024;

/// Timeouts of the decoy's HTTP/1.x handling (nginx's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request head to arrive once it started (`client_header_timeout` 60 s).
    pub header: Duration,
    /// An idle keep-alive connection is closed after this (`keepalive_timeout` 75 s).
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Method as sent.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Header names (as sent) and values (lossy UTF-8).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// What the decoy site needs of this request.
    pub fn info(&self) -> RequestInfo {
        RequestInfo {
            method: self.method.clone(),
            target: self.target.clone(),
            http10: self.version_minor == 0,
            http2: false,
            host: self.header("host").map(str::to_string),
            connection: self.header("connection").map(str::to_ascii_lowercase),
            if_none_match: self.header("if-none-match").map(str::to_string),
            if_modified_since: self.header("if-modified-since").map(str::to_string),
        }
    }
}

/// How [`serve`] ended.
#[derive(Debug)]
pub enum Outcome<IO> {
    /// The connection is done (closed by the peer, timed out, or answered and closed).
    Closed,
    /// A request for the secret: `io` replays it from its first byte; its head is
    /// `head_len` bytes long.
    Secret {
        /// The request's head.
        head: Head,
        /// Its length in bytes at the front of `io`.
        head_len: usize,
        /// The connection, rewound to the start of that request.
        io: Rewind<IO>,
    },
}

enum Parsed {
    Head(Head, usize),
    Partial,
    Invalid,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                version_minor: req.version.unwrap_or(1),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Parsed::Head(head, len)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// Answers requests on `io` from `site` until one satisfies `is_secret`, which is then
/// handed back with the connection. Malformed requests get nginx's 400 and a close.
pub async fn serve<IO, F>(
    mut io: IO,
    site: &DecoySite,
    timeouts: Timeouts,
    mut is_secret: F,
) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Head) -> bool,
{
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Read one request head. Its deadline runs from its first byte, as nginx's
        // `client_header_timeout`: a client trickling a byte now and then (slowloris)
        // is closed when it runs out, not kept while each read beats the timeout.
        let mut head_deadline = None;
        let (head, head_len) = loop {
            match parse(&buf) {
                Parsed::Head(head, len) => break (head, len),
                Parsed::Invalid => {
                    let _ = io.write_all(&site.bad_request().to_http1()).await;
                    let _ = io.shutdown().await;
                    return Outcome::Closed;
                }
                Parsed::Partial if buf.len() >= MAX_HEAD_BYTES => {
                    let _ = io.write_all(&site.bad_request().to_http1()).await;
                    let _ = io.shutdown().await;
                    return Outcome::Closed;
                }
                Parsed::Partial => {}
            }
            let deadline = if buf.is_empty() {
                tokio::time::Instant::now() + timeouts.keepalive
            } else {
                *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.header)
            };
            match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Outcome::Closed,
                Ok(Ok(_)) => {}
            }
        };
        if is_secret(&head) {
            return Outcome::Secret {
                head,
                head_len,
                // Copy: the read buffer's allocation must not live as long as the
                // connection (memory per idle connection matters at scale).
                io: Rewind::new(bytes::Bytes::copy_from_slice(&buf), io),
            };
        }
        buf.advance(head_len);
        let mut close = false;
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            close = true;
        } else if let Some(len) = head.header("content-length") {
            match len.trim().parse::<u64>() {
                Ok(n) if n <= MAX_DISCARD_BYTES => {
                    if !discard(&mut io, &mut buf, n, timeouts.header).await {
                        return Outcome::Closed;
                    }
                }
                Ok(_) => close = true,
                Err(_) => {
                    let _ = io.write_all(&site.bad_request().to_http1()).await;
                    let _ = io.shutdown().await;
                    return Outcome::Closed;
                }
            }
        }
        let mut response = site.respond(&head.info()).await;
        if close && !response.close {
            response.close = true;
            for h in &mut response.headers {
                if h.0 == "Connection" {
                    h.1 = "close".to_string();
                }
            }
        }
        if io.write_all(&response.to_http1()).await.is_err() || io.flush().await.is_err() {
            return Outcome::Closed;
        }
        if response.close {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// Reads and drops `n` body bytes (some may be in `buf` already).
async fn discard<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    n: u64,
    timeout: std::time::Duration,
) -> bool {
    let mut left = n;
    let have = (buf.len() as u64).min(left);
    buf.advance(usize::try_from(have).unwrap_or(0));
    left -= have;
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let want = usize::try_from(left)
            .unwrap_or(chunk.len())
            .min(chunk.len());
        match tokio::time::timeout(timeout, io.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(got)) => left -= got as u64,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decoy_until_secret_then_hand_over() {
        let dir = tempfile::tempdir().unwrap();
        let site = DecoySite::builtin_in(dir.path()).unwrap();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            serve(server, &site, Timeouts::default(), |h| {
                h.path() == "/s3cret/x"
            })
            .await
        });
        client
            .write_all(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /s3cret/x HTTP/1.1\r\nHost: a\r\n\r\nrest")
            .await
            .unwrap();
        let mut got = vec![0u8; 4096];
        let n = client.read(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]).to_string();
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\nServer: nginx\r\n"),
            "{text}"
        );
        match task.await.unwrap() {
            Outcome::Secret { head, head_len, io } => {
                assert_eq!(head.method, "GET");
                assert!(io.prefix().starts_with(b"GET /s3cret/x"));
                assert_eq!(&io.prefix()[head_len..], b"rest");
            }
            Outcome::Closed => panic!("expected the secret request"),
        }
    }

    fn short() -> Timeouts {
        Timeouts {
            header: Duration::from_millis(300),
            keepalive: Duration::from_millis(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_closed_at_the_header_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let site = DecoySite::builtin_in(dir.path()).unwrap();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve(server, &site, short(), |_| true).await });
        // One byte every 100 ms: each read beats the 300 ms timeout, the head never ends.
        let started = tokio::time::Instant::now();
        let trickle = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
        for b in trickle {
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if task.is_finished() {
                break;
            }
        }
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(600),
            "closed after {took:?} (virtual time), not at the head's deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_keepalive_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let site = DecoySite::builtin_in(dir.path()).unwrap();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve(server, &site, short(), |_| false).await });
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 64 * 1024];
        let n = client.read(&mut got).await.unwrap();
        assert!(got[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Then nothing: the connection ends by itself.
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
    }

    #[tokio::test]
    async fn garbage_gets_400_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let site = DecoySite::builtin_in(dir.path()).unwrap();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task =
            tokio::spawn(async move { serve(server, &site, Timeouts::default(), |_| true).await });
        client
            .write_all(b"\x16\x03\x01garbage\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
    }
}
