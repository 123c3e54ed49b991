//! Test harness: a real server on 127.0.0.1:0 over the real SqliteStore, a TLS client
//! that accepts exactly the server's pinned key, signed HTTPS requests and a WebSocket
//! client speaking the protocol.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use hushwire_proto::identity::{self, REQUEST_AUTH_HEADER, RequestAuth};
use hushwire_proto::wire::{self, client_frame, server_frame};
use hushwire_proto::{codec, mls};
use hushwire_server::{RunningServer, ServerConfig, SqliteStore};
use prost::Message as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A timestamp for signing a request: the clock, but strictly increasing in this
/// process, as the real client signs (`hushwire_client::api::signing_time_ms`). Two
/// identical requests signed in the same millisecond would have the same signature,
/// which the server refuses as a replay.
pub fn signing_ms() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

// ------------------------------------------------------------------ server

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub pin: String,
    pub prefix: String,
    pub store: Arc<SqliteStore>,
    pub server: hushwire_server::Server,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), hushwire_server::ServerError>>>,
    _dir: Option<tempfile::TempDir>,
}

pub fn test_config(data_dir: &Path) -> ServerConfig {
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        ..ServerConfig::default()
    };
    c.rate_limits.registrations_per_ip_per_minute = 1000;
    c.shutdown_grace_secs = 10;
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let mut s = Self::start_config(config).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_config(config: ServerConfig) -> Self {
        let store = hushwire_server::open_sqlite(&config).await.unwrap();
        let running: RunningServer = hushwire_server::bind(config, store.clone()).await.unwrap();
        let prefix = running.path_prefix().to_owned();
        let (tx, rx) = oneshot::channel::<()>();
        let addr = running.local_addr();
        let url = running.url();
        let pin = running.pin().to_owned();
        let server = running.server().clone();
        let handle = tokio::spawn(running.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            url,
            pin,
            prefix,
            store,
            server,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: None,
        }
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(TIMEOUT, h)
                .await
                .expect("server did not stop")
                .unwrap()
                .unwrap();
        }
    }

    pub fn client(&self) -> Client {
        Client {
            addr: self.addr,
            prefix: self.prefix.clone(),
            tls: client_tls(&self.pin),
            source: None,
        }
    }
}

// ------------------------------------------------------------------ TLS pinning

/// Returns the DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_of(cert_der: &[u8]) -> Option<&[u8]> {
    /// (tag, whole TLV, content, rest)
    type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);
    fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        Some((tag, b.get(..end)?, b.get(hdr..end)?, b.get(end..)?))
    }
    let (_, _, cert, _) = tlv(cert_der)?;
    let (_, _, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serial, signature alg, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    Some(tlv(rest)?.1)
}

#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = spki_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        let got = identity::parse_pin(&identity::format_pin(spki)).unwrap();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn pin_verifier(pin: &str) -> Arc<PinVerifier> {
    Arc::new(PinVerifier {
        pin: identity::parse_pin(pin).expect("pin format"),
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    })
}

pub fn client_tls(pin: &str) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = pin_verifier(pin);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

// ------------------------------------------------------------------ identities

pub struct Identity {
    pub handle: String,
    pub account: SigningKey,
    pub device: SigningKey,
    pub device_id: u32,
}

impl Identity {
    pub fn new(handle: &str) -> Self {
        Identity {
            handle: handle.to_owned(),
            account: SigningKey::generate(&mut rand::rngs::OsRng),
            device: SigningKey::generate(&mut rand::rngs::OsRng),
            device_id: 0,
        }
    }

    pub fn register_request(&self, invite: &str) -> wire::RegisterRequest {
        let device_key = self.device.verifying_key().to_bytes();
        let created = now_ms();
        let payload = identity::device_cert_payload(&self.handle, &device_key, created);
        wire::RegisterRequest {
            handle: self.handle.clone(),
            account_key: Bytes::copy_from_slice(&self.account.verifying_key().to_bytes()),
            device: Some(wire::DeviceCertificate {
                device_key: Bytes::copy_from_slice(&device_key),
                created_at_ms: created,
                signature: Bytes::copy_from_slice(&self.account.sign(&payload).to_bytes()),
            }),
            invite: invite.to_owned(),
        }
    }

    pub fn auth_header(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        unix_ms: u64,
    ) -> String {
        let payload = identity::request_auth_payload(
            method,
            path_and_query,
            unix_ms,
            &self.handle,
            self.device_id,
            body,
        );
        RequestAuth {
            handle: self.handle.clone(),
            device_id: self.device_id,
            unix_ms,
            signature: self.device.sign(&payload).to_bytes(),
        }
        .to_header()
    }

    pub fn addr(&self) -> wire::DeviceAddress {
        wire::DeviceAddress {
            handle: self.handle.clone(),
            device_id: self.device_id,
        }
    }
}

// ------------------------------------------------------------------ HTTPS client

pub struct Client {
    pub addr: SocketAddr,
    pub prefix: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The local address HTTPS requests come from (another loopback address is
    /// another client IP to the server); `None`: the kernel's choice, 127.0.0.1.
    pub source: Option<std::net::IpAddr>,
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn error(&self) -> wire::ApiError {
        wire::ApiError::decode(self.body.clone()).expect("ApiError body")
    }
    pub fn decode<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.status, 200, "unexpected error {:?}", self.error());
        M::decode(self.body.clone()).unwrap()
    }
    /// Asserts status and error code.
    pub fn expect_error(&self, status: u16, code: wire::ErrorCode) -> wire::ApiError {
        assert_eq!(self.status, status, "body {:?}", self.body);
        let e = self.error();
        assert_eq!(e.code, code as i32, "{e:?}");
        e
    }
}

impl Client {
    /// `path` is relative to the base URL (the prefix is added).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Resp {
        let tcp = match self.source {
            None => TcpStream::connect(self.addr).await.unwrap(),
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(self.addr).await.unwrap()
            }
        };
        let tls = TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header("host", "localhost")
            .header("content-type", hushwire_proto::PROTOBUF_CONTENT_TYPE);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = sender
            .send_request(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), usize::MAX)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn signed(&self, who: &Identity, method: &str, path: &str, body: Vec<u8>) -> Resp {
        self.signed_with(who, method, path, body, &[]).await
    }

    /// A signed request with extra headers.
    pub async fn signed_with(
        &self,
        who: &Identity,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Resp {
        let full = format!("{}{}", self.prefix, path);
        let header = who.auth_header(method, &full, &body, signing_ms());
        let mut all = vec![(REQUEST_AUTH_HEADER, header)];
        all.extend(headers.iter().cloned());
        self.raw(method, path, body, &all).await
    }

    pub async fn register(&self, who: &mut Identity) -> Resp {
        self.register_with_invite(who, "").await
    }

    pub async fn register_with_invite(&self, who: &mut Identity, invite: &str) -> Resp {
        let body = who.register_request(invite).encode_to_vec();
        let resp = self.raw("POST", "/v1/register", body, &[]).await;
        if resp.status == 200 {
            who.device_id = wire::RegisterResponse::decode(resp.body.clone())
                .unwrap()
                .device_id;
        }
        resp
    }

    pub async fn new_user(&self, handle: &str) -> Identity {
        let mut id = Identity::new(handle);
        let r = self.register(&mut id).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        id
    }

    // -------------------------------------------------------------- WebSocket

    pub async fn ws_connect(&self) -> Ws {
        let url = format!("wss://{}{}/v1/ws", self.addr, self.prefix);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(Connector::Rustls(self.tls.clone())),
        )
        .await
        .unwrap();
        Ws { ws }
    }

    /// Connects with a tiny TCP receive buffer, so a client that does not read makes
    /// the server's writes block quickly.
    pub async fn ws_connect_small_buffer(&self) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let url = format!("wss://{}{}/v1/ws", self.addr, self.prefix);
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            stream,
            None,
            Some(Connector::Rustls(self.tls.clone())),
        )
        .await
        .unwrap();
        Ws { ws }
    }

    /// Logs in on an open socket; returns after `auth_ok`.
    pub async fn login_on(&self, mut ws: Ws, who: &Identity) -> Ws {
        let nonce = ws.challenge().await;
        ws.send_auth(who, &nonce).await;
        match ws.recv().await.body {
            Some(server_frame::Body::AuthOk(_)) => {}
            other => panic!("expected auth_ok, got {other:?}"),
        }
        ws
    }

    /// Connects and logs in; returns after `auth_ok`.
    pub async fn login(&self, who: &Identity) -> Ws {
        let mut ws = self.ws_connect().await;
        let nonce = ws.challenge().await;
        ws.send_auth(who, &nonce).await;
        match ws.recv().await.body {
            Some(server_frame::Body::AuthOk(_)) => {}
            other => panic!("expected auth_ok, got {other:?}"),
        }
        ws
    }
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn challenge(&mut self) -> Bytes {
        match self.recv().await.body {
            Some(server_frame::Body::Challenge(c)) => {
                assert_eq!(c.nonce.len(), 32);
                assert_eq!(c.protocol_version, 1);
                c.nonce
            }
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    pub async fn send_auth(&mut self, who: &Identity, nonce: &[u8]) {
        let payload = identity::ws_auth_payload(nonce, &who.handle, who.device_id);
        let sig = who.device.sign(&payload).to_bytes();
        self.send(
            7,
            client_frame::Body::Auth(wire::AuthResponse {
                handle: who.handle.clone(),
                device_id: who.device_id,
                signature: Bytes::copy_from_slice(&sig),
            }),
        )
        .await;
    }

    pub async fn send(&mut self, request_id: u64, body: client_frame::Body) {
        let frame = wire::ClientFrame {
            request_id,
            body: Some(body),
        };
        self.ws
            .send(Message::Binary(codec::encode(&frame).into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next protobuf frame (panics on close or timeout).
    pub async fn recv(&mut self) -> wire::ServerFrame {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("websocket error");
            match msg {
                Message::Binary(b) => return codec::decode_server_frame(&b).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame and returns (code, reason).
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (u16::from(code), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(Message::Binary(b))) => {
                    let f = codec::decode_server_frame(&b).unwrap();
                    panic!("expected close, got frame {f:?}");
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Reads `deliver` frames up to and including `drained`; returns the envelopes.
    pub async fn backlog(&mut self) -> (Vec<wire::Envelope>, u64) {
        let mut out = Vec::new();
        loop {
            match self.recv().await.body {
                Some(server_frame::Body::Deliver(e)) => out.push(e),
                Some(server_frame::Body::Drained(d)) => return (out, d.last_seq),
                other => panic!("expected deliver/drained, got {other:?}"),
            }
        }
    }

    pub async fn expect_deliver(&mut self) -> wire::Envelope {
        match self.recv().await.body {
            Some(server_frame::Body::Deliver(e)) => e,
            other => panic!("expected deliver, got {other:?}"),
        }
    }

    /// Submits and returns the result for this request id.
    pub async fn submit(
        &mut self,
        request_id: u64,
        submit: wire::Submit,
    ) -> wire::submit_result::Outcome {
        self.send(request_id, client_frame::Body::Submit(submit))
            .await;
        loop {
            let f = self.recv().await;
            if let Some(server_frame::Body::SubmitResult(r)) = f.body {
                assert_eq!(f.request_id, request_id);
                return r.outcome.expect("outcome");
            }
            // deliveries to this device may interleave; callers that care read them
            // before submitting.
        }
    }

    pub async fn ping(&mut self) {
        self.send(
            99,
            client_frame::Body::Ping(wire::Ping { client_time_ms: 5 }),
        )
        .await;
        match self.recv().await.body {
            Some(server_frame::Body::Pong(p)) => assert_eq!(p.client_time_ms, 5),
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ MLS helpers

pub fn message_id(n: u64) -> Bytes {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id[0] = 0x01;
    Bytes::copy_from_slice(&id)
}

pub fn app_message(group: &[u8], epoch: u64, id: u64, text: &[u8]) -> wire::Submit {
    wire::Submit {
        message_id: message_id(id),
        group_id: Bytes::copy_from_slice(group),
        mls_message: mls::synthetic_private_message(
            group,
            epoch,
            mls::ContentType::Application,
            text,
        )
        .into(),
        ..Default::default()
    }
}

pub fn commit(group: &[u8], epoch: u64, id: u64, roster: &[&Identity]) -> wire::Submit {
    wire::Submit {
        message_id: message_id(id),
        group_id: Bytes::copy_from_slice(group),
        mls_message: mls::synthetic_private_message(group, epoch, mls::ContentType::Commit, b"c")
            .into(),
        roster: roster.iter().map(|i| i.addr()).collect(),
        ..Default::default()
    }
}

/// A synthetic `MLSMessage(Welcome)`: version 1, wire format 3, ciphersuite 1.
pub fn welcome_bytes() -> Bytes {
    Bytes::from_static(&[0, 1, 0, 3, 0, 1, 0xde, 0xad])
}

/// A synthetic `MLSMessage(KeyPackage)` for `ciphersuite`, tagged with `tag`.
pub fn key_package(ciphersuite: u16, tag: u8) -> Bytes {
    let mut v = vec![0, 1, 0, 5, 0, 1];
    v.extend_from_slice(&ciphersuite.to_be_bytes());
    v.extend_from_slice(&[tag; 8]);
    Bytes::from(v)
}

pub fn accepted(o: wire::submit_result::Outcome) -> wire::Accepted {
    match o {
        wire::submit_result::Outcome::Accepted(a) => a,
        other => panic!("expected accepted, got {other:?}"),
    }
}
