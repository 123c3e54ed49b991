//! The raw WebSocket connection: connect, authenticate, send and receive frames.
//!
//! This layer knows the frame flow of `docs/protocol.md` (challenge, auth, auth_ok)
//! but nothing about MLS or profiles, so the load generator can open many device
//! connections with [`KeySigner`]s.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hushwire_proto::codec::{self, decode_server_frame};
use hushwire_proto::identity::ws_auth_payload;
use hushwire_proto::limits::MAX_FRAME_BYTES;
use hushwire_proto::wire::{self, ClientFrame, ServerFrame, client_frame, server_frame};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::api::{KeySigner, Signer};
use crate::endpoint::Transport;
use crate::{ClientError, Endpoint};

type Ws = WebSocketStream<TlsStream<Transport>>;

/// A WebSocket configuration sized for our frames: a frame is at most
/// [`MAX_FRAME_BYTES`], and buffers stay small so thousands of connections fit.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES + 1024))
        .max_frame_size(Some(MAX_FRAME_BYTES + 1024))
        // tungstenite zero-fills this much before every read (and reads decrypted bytes
        // from rustls, not from the socket): 16 KiB cost more than the frames did.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_FRAME_BYTES + 1024 + WRITE_BUFFER + 1024)
}

/// Bytes of fed frames queued before they are written without a flush
/// ([`Connection::feed`]). `send` always flushes, so it writes at once.
const WRITE_BUFFER: usize = 4 * 1024;

/// A connection that received its challenge and awaits [`PendingConnection::authenticate`].
pub struct PendingConnection {
    ws: Ws,
    challenge: wire::AuthChallenge,
    endpoint: Endpoint,
}

impl std::fmt::Debug for PendingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConnection")
            .field("endpoint", &self.endpoint.base_url())
            .finish_non_exhaustive()
    }
}

impl PendingConnection {
    /// The server's challenge.
    pub fn challenge(&self) -> &wire::AuthChallenge {
        &self.challenge
    }

    /// Builds the auth response for this challenge with a signer (a quick sync call).
    pub fn auth_response(&self, signer: &dyn Signer) -> Result<wire::AuthResponse, ClientError> {
        let payload = ws_auth_payload(&self.challenge.nonce, signer.handle(), signer.device_id());
        Ok(wire::AuthResponse {
            handle: signer.handle().to_string(),
            device_id: signer.device_id(),
            signature: signer.sign(&payload)?.to_vec().into(),
        })
    }

    /// Sends the auth response and waits for `auth_ok`.
    pub async fn authenticate(
        self,
        auth: wire::AuthResponse,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let mut conn = Connection {
            ws: self.ws,
            endpoint: self.endpoint,
            server_time_ms: self.challenge.server_time_ms,
        };
        conn.send(&ClientFrame {
            request_id: 0,
            body: Some(client_frame::Body::Auth(auth)),
        })
        .await?;
        let frame = tokio::time::timeout(timeout, conn.recv())
            .await
            .map_err(|_| ClientError::Timeout("waiting for auth_ok".into()))??;
        match frame.body {
            Some(server_frame::Body::AuthOk(ok)) => {
                conn.server_time_ms = ok.server_time_ms;
                Ok(conn)
            }
            Some(server_frame::Body::Error(e)) => Err(ClientError::Protocol(format!(
                "authentication refused ({:?}): {}",
                wire::ErrorCode::try_from(e.code).unwrap_or(wire::ErrorCode::Unspecified),
                e.message
            ))),
            other => Err(ClientError::Protocol(format!(
                "expected auth_ok, got {}",
                frame_name(other.as_ref())
            ))),
        }
    }
}

/// An authenticated WebSocket connection to the server.
pub struct Connection {
    ws: Ws,
    endpoint: Endpoint,
    server_time_ms: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint.base_url())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens TLS + WebSocket to `{base}/v1/ws` and reads the challenge.
    pub async fn open(endpoint: &Endpoint) -> Result<PendingConnection, ClientError> {
        let tls = endpoint.connect_tls().await?;
        let url = endpoint.ws_url()?;
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Protocol(format!("WebSocket request: {e}")))?;
        let handshake =
            tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config()));
        let (ws, _resp) = tokio::time::timeout(endpoint.connect_timeout(), handshake)
            .await
            .map_err(|_| ClientError::Unreachable {
                url: endpoint.base_url(),
                reason: "WebSocket handshake timed out".into(),
            })?
            .map_err(|e| map_ws_error(endpoint, e))?;
        let mut conn = Connection {
            ws,
            endpoint: endpoint.clone(),
            server_time_ms: 0,
        };
        let frame = tokio::time::timeout(endpoint.connect_timeout(), conn.recv())
            .await
            .map_err(|_| ClientError::Timeout("waiting for the auth challenge".into()))??;
        match frame.body {
            Some(server_frame::Body::Challenge(challenge)) => Ok(PendingConnection {
                ws: conn.ws,
                challenge,
                endpoint: conn.endpoint,
            }),
            other => Err(ClientError::Protocol(format!(
                "expected a challenge, got {}",
                frame_name(other.as_ref())
            ))),
        }
    }

    /// Opens and authenticates with a raw device key (load generator, tests).
    pub async fn connect_with_signer(
        endpoint: &Endpoint,
        signer: &KeySigner,
    ) -> Result<Connection, ClientError> {
        let pending = Self::open(endpoint).await?;
        let auth = pending.auth_response(signer)?;
        pending.authenticate(auth, endpoint.connect_timeout()).await
    }

    /// The server clock at auth time (ms since the Unix epoch).
    pub fn server_time_ms(&self) -> u64 {
        self.server_time_ms
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = codec::encode_padded(frame);
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| map_ws_error(&self.endpoint, e))
    }

    /// Queues one frame without flushing it: frames fed together leave in one write at
    /// the next [`Connection::flush`] (or [`Connection::send`]), or once
    /// `WRITE_BUFFER` bytes are queued.
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = codec::encode_padded(frame);
        self.ws
            .feed(Message::Binary(bytes.into()))
            .await
            .map_err(|e| map_ws_error(&self.endpoint, e))
    }

    /// Writes out every frame fed so far.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.ws
            .flush()
            .await
            .map_err(|e| map_ws_error(&self.endpoint, e))
    }

    /// Receives the next frame; WebSocket pings are answered by the library.
    /// A close becomes [`ClientError::Closed`].
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        recv_from(&mut self.ws, &self.endpoint).await
    }

    /// Splits into a sending and a receiving half, for tools that send and receive
    /// concurrently (the load generator).
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        let (sink, stream) = self.ws.split();
        (
            FrameSender {
                sink,
                endpoint: self.endpoint.clone(),
            },
            FrameReceiver {
                stream,
                endpoint: self.endpoint,
            },
        )
    }

    /// Closes the connection normally (code 1000), waiting briefly for the server's reply.
    pub async fn close(mut self) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        if self.ws.close(Some(frame)).await.is_ok() {
            let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
    }
}

/// The sending half of a split [`Connection`].
pub struct FrameSender {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    endpoint: Endpoint,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameSender")
    }
}

impl FrameSender {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = codec::encode_padded(frame);
        self.sink
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| map_ws_error(&self.endpoint, e))
    }

    /// Sends a normal close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.sink
            .send(Message::Close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                },
            )))
            .await
            .map_err(|e| map_ws_error(&self.endpoint, e))
    }
}

/// The receiving half of a split [`Connection`].
pub struct FrameReceiver {
    stream: futures_util::stream::SplitStream<Ws>,
    endpoint: Endpoint,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameReceiver")
    }
}

impl FrameReceiver {
    /// Receives the next frame (see [`Connection::recv`]). WebSocket pings are answered
    /// when the sending half next sends or flushes.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        recv_from(&mut self.stream, &self.endpoint).await
    }
}

/// The next binary frame from a WebSocket stream, decoded.
async fn recv_from<S>(stream: &mut S, endpoint: &Endpoint) -> Result<ServerFrame, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = match stream.next().await {
            None => {
                return Err(ClientError::Closed {
                    code: 1006,
                    reason: "connection dropped".into(),
                });
            }
            Some(msg) => msg.map_err(|e| map_ws_error(endpoint, e))?,
        };
        match msg {
            Message::Binary(bytes) => {
                return decode_server_frame(&bytes)
                    .map_err(|e| ClientError::Protocol(format!("undecodable server frame: {e}")));
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(ClientError::Closed { code, reason });
            }
            Message::Text(_) => {
                return Err(ClientError::Protocol("text frame from server".into()));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Short name of a frame body for error messages.
pub(crate) fn frame_name(body: Option<&server_frame::Body>) -> &'static str {
    match body {
        None => "an empty frame",
        Some(server_frame::Body::Challenge(_)) => "challenge",
        Some(server_frame::Body::AuthOk(_)) => "auth_ok",
        Some(server_frame::Body::SubmitResult(_)) => "submit_result",
        Some(server_frame::Body::Deliver(_)) => "deliver",
        Some(server_frame::Body::Pong(_)) => "pong",
        Some(server_frame::Body::Error(_)) => "error",
        Some(server_frame::Body::Drained(_)) => "drained",
        Some(server_frame::Body::Ephemeral(_)) => "ephemeral",
        Some(server_frame::Body::Done(_)) => "done",
    }
}

fn map_ws_error(endpoint: &Endpoint, e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => ClientError::Closed {
            code: 1006,
            reason: "connection closed".into(),
        },
        E::Io(io) => ClientError::Unreachable {
            url: endpoint.base_url(),
            reason: io.to_string(),
        },
        E::Http(resp) => ClientError::Api {
            status: resp.status().as_u16(),
            code: wire::ErrorCode::Unspecified,
            message: format!("WebSocket upgrade refused with HTTP {}", resp.status()),
        },
        E::Capacity(c) => ClientError::Protocol(format!("frame too large: {c}")),
        E::Protocol(p) => ClientError::Closed {
            code: 1006,
            reason: format!("WebSocket protocol error: {p}"),
        },
        other => ClientError::Protocol(format!("WebSocket: {other}")),
    }
}
