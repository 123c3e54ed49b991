//! Where the server is and how to reach it: base URL, TLS setup, routes and dialing.
//!
//! Every connection (HTTPS API and WebSocket) is made by [`Endpoint::connect_tls`]: it
//! tries the profile's routes ([`RouteBook`]) in order — the one that worked last
//! first — each within [`Endpoint::attempt_timeout`], opening TCP directly (to the
//! server, or to another server of its deployment) or through a SOCKS5 / HTTP CONNECT
//! proxy (the server's name is resolved by the proxy), or a tunnel through a volunteer
//! relay. A deployment's servers share the certificate (one pin) and the secret path,
//! so requests are the same whichever node answers. TLS to the server, pinned, always runs end to end
//! over whatever transport the route gave: a relay or proxy sees only ciphertext.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use hushwire_proto::relay_link::RelayLink;

use crate::ClientError;
use crate::routes::{ProxyKind, ProxyUrl, Route, RouteBook};
use crate::tls::{TlsSetup, parse_pin, pin_to_string};

/// A byte stream a route provides: TCP, or a tunnel through a proxy or relay.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What TLS to the server runs over.
pub type Transport = Box<dyn Io>;

/// How long one route may take before the next is tried, when there are several.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// Largest proxy or relay response head read.
const MAX_HANDSHAKE_HEAD: usize = 8 * 1024;

/// How TCP connections are opened (kept for callers of the first API; routes and
/// proxies are configured with [`Endpoint::with_routes`]).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Dialer {
    /// A direct TCP connection (TCP_NODELAY set).
    #[default]
    Direct,
}

/// The server a client talks to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: Url,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsSetup,
    routes: RouteBook,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    local_ip: Option<IpAddr>,
}

impl Endpoint {
    /// Parses `server_url` (`https://host[:port][/prefix]`) and `pin` (`sha256:<64 hex>`).
    pub fn new(server_url: &str, pin: Option<&str>) -> Result<Self, ClientError> {
        let pin = pin.map(parse_pin).transpose()?;
        Self::with_pin_digest(server_url, pin)
    }

    /// Like [`Endpoint::new`] with an already parsed pin.
    pub fn with_pin_digest(server_url: &str, pin: Option<[u8; 32]>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: server_url.to_string(),
            reason: reason.to_string(),
        };
        let mut base = Url::parse(server_url.trim()).map_err(|e| bad(&e.to_string()))?;
        if base.scheme() != "https" {
            return Err(bad("the scheme must be https"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("a server URL has no query or fragment"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad("a server URL carries no credentials"));
        }
        let (host, name) = match base.host() {
            Some(url::Host::Domain(d)) => (d.to_string(), d.to_string()),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), ip.to_string()),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), ip.to_string()),
            None => return Err(bad("missing host")),
        };
        let port = base.port_or_known_default().unwrap_or(443);
        let server_name = ServerName::try_from(name).map_err(|e| bad(&e.to_string()))?;
        // Normalise the prefix to no trailing slash.
        let path = base.path().trim_end_matches('/').to_string();
        base.set_path(&path);
        Ok(Self {
            base,
            host,
            port,
            server_name,
            tls: TlsSetup::new(pin)?,
            routes: RouteBook::default(),
            connect_timeout: Duration::from_secs(10),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            local_ip: None,
        })
    }

    /// Uses these routes (and their proxy) for every connection.
    pub fn with_routes(mut self, routes: RouteBook) -> Self {
        self.routes = routes;
        self
    }

    /// The routes in use.
    pub fn routes(&self) -> &RouteBook {
        &self.routes
    }

    /// Sets how long one route may take before the next is tried.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long one route may take before the next is tried (when there are several).
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// Sets how long a TCP + TLS connection may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens every TCP connection (to the server, a proxy or a relay) from this local
    /// address, on a port the system picks: for a multi-homed machine, or a load
    /// generator spreading its connections over several loopback addresses. Only
    /// destinations of the same IP family are dialled then.
    pub fn with_local_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.local_ip = ip;
        self
    }

    /// The local address TCP connections are opened from, if one is set.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// The pin as `sha256:<64 hex>`, if the endpoint is pinned.
    pub fn pin(&self) -> Option<String> {
        self.tls.pin().map(|p| pin_to_string(&p))
    }

    /// The TLS setup shared by every connection to this endpoint.
    pub fn tls(&self) -> &TlsSetup {
        &self.tls
    }

    /// The path prefix of the base URL (`""` or `/abc`).
    fn prefix(&self) -> &str {
        self.base.path().trim_end_matches('/')
    }

    /// The path and query a route has on the server (prefix included): what request
    /// signatures cover.
    pub fn path_and_query(&self, route: &str) -> String {
        format!("{}{}", self.prefix(), route)
    }

    /// The full `https://` URL of a route such as `/v1/register`.
    pub fn https_url(&self, route: &str) -> Result<Url, ClientError> {
        self.url_with_scheme("https", route)
    }

    /// The full `wss://` URL of the WebSocket route.
    pub fn ws_url(&self) -> Result<Url, ClientError> {
        self.url_with_scheme("wss", "/v1/ws")
    }

    fn url_with_scheme(&self, scheme: &str, route: &str) -> Result<Url, ClientError> {
        let authority = match self.base.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        };
        let s = format!("{scheme}://{authority}{}", self.path_and_query(route));
        Url::parse(&s).map_err(|e| ClientError::InvalidUrl {
            url: s,
            reason: e.to_string(),
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: self.base_url(),
            reason: reason.to_string(),
        }
    }

    /// Opens a TCP connection to `host:port`, directly or through the proxy.
    async fn tcp(&self, host: &str, port: u16) -> Result<Transport, String> {
        match self.routes.proxy() {
            None => {
                let stream = dial(host, port, self.local_ip).await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Some(proxy) => proxy_connect(proxy, host, port, self.local_ip).await,
        }
    }

    /// The transport of one route.
    async fn transport(&self, route: &Route) -> Result<Transport, String> {
        match route {
            Route::Direct => self.tcp(&self.host, self.port).await,
            Route::Server(node) => self.tcp(&node.host, node.port).await,
            Route::Relay(link) => {
                let tcp = self.tcp(&link.host, link.port).await?;
                relay_tunnel(link, tcp).await
            }
        }
    }

    /// TLS to the server over one route.
    async fn connect_via(&self, route: &Route) -> Result<TlsStream<Transport>, ClientError> {
        let transport = self
            .transport(route)
            .await
            .map_err(|e| self.unreachable(format!("{}: {e}", route.label())))?;
        let connector = TlsConnector::from(self.tls.config());
        // Another node is named by its own host (SNI, and the name a public CA's
        // certificate is checked against); a pin is checked the same either way.
        let name = match route {
            Route::Server(node) => ServerName::try_from(node.host.clone())
                .map_err(|e| self.unreachable(format!("{}: {e}", route.label())))?,
            Route::Direct | Route::Relay(_) => self.server_name.clone(),
        };
        match connector.connect(name, transport).await {
            Ok(stream) => Ok(stream),
            Err(e) => {
                let fallback =
                    self.unreachable(format!("{}: TLS handshake failed: {e}", route.label()));
                Err(self.tls.classify(&e, fallback))
            }
        }
    }

    /// Opens a TLS 1.3 connection to the server, enforcing the pin, over the first
    /// route that works (see the module doc). Blocking shows as resets, timeouts or a
    /// broken handshake on a route; the next one is tried at once, and what worked is
    /// remembered in the profile's routes.
    pub async fn connect_tls(&self) -> Result<TlsStream<Transport>, ClientError> {
        let order = self.routes.attempt_order();
        let per_attempt = if order.len() > 1 {
            self.attempt_timeout.min(self.connect_timeout)
        } else {
            self.connect_timeout
        };
        let mut failures: Vec<ClientError> = Vec::new();
        for route in &order {
            let attempt = tokio::time::timeout(per_attempt, self.connect_via(route)).await;
            let err = match attempt {
                Ok(Ok(stream)) => {
                    if !failures.is_empty() {
                        tracing::info!(route = %route.label(), "connected over a fallback route");
                    }
                    self.routes.record_success(route);
                    return Ok(stream);
                }
                Ok(Err(e)) => e,
                Err(_) => self.unreachable(format!("{}: timed out", route.label())),
            };
            tracing::info!(route = %route.label(), error = %err, "route failed");
            self.routes.record_failure(route);
            failures.push(err);
        }
        // A wrong key is a security matter: report it rather than "unreachable".
        if let Some(pos) = failures.iter().position(|e| {
            matches!(
                e,
                ClientError::PinMismatch { .. } | ClientError::UntrustedCertificate(_)
            )
        }) {
            return Err(failures.swap_remove(pos));
        }
        if failures.len() == 1
            && let Some(e) = failures.pop()
        {
            return Err(e);
        }
        let reasons: Vec<String> = failures
            .iter()
            .map(|e| match e {
                ClientError::Unreachable { reason, .. } => reason.clone(),
                other => other.to_string(),
            })
            .collect();
        Err(self.unreachable(format!("every route failed: {}", reasons.join("; "))))
    }

    /// Checks that the server is reachable and presents the expected key.
    pub async fn probe(&self) -> Result<(), ClientError> {
        let stream = self.connect_tls().await?;
        drop(stream);
        Ok(())
    }
}

/// Reads a response head (up to the blank line) byte by byte, so nothing after it is
/// consumed.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HANDSHAKE_HEAD {
            return Err("response head too large".into());
        }
        let n = stream.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of a response head.
fn status_of(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A TCP connection to `host:port`, from `local` (any port) if set: the first of the
/// host's addresses (of `local`'s family) that answers.
async fn dial(host: &str, port: u16, local: Option<IpAddr>) -> Result<TcpStream, String> {
    let Some(local) = local else {
        return TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string());
    };
    let mut last = None;
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?;
    for addr in addrs.filter(|a| a.is_ipv4() == local.is_ipv4()) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|e| format!("binding to {local}: {e}"))?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| format!("{host} has no address of the family of {local}")))
}

/// A TCP connection to `host:port` through `proxy` (reached from `local` if set); the
/// proxy resolves the name.
async fn proxy_connect(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    local: Option<IpAddr>,
) -> Result<Transport, String> {
    let via = |e: &dyn std::fmt::Display| format!("proxy {proxy}: {e}");
    match proxy.kind {
        ProxyKind::Socks5h => {
            let tcp = dial(&proxy.host, proxy.port, local)
                .await
                .map_err(|e| via(&e))?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, (host, port))
                .await
                .map_err(|e| via(&e))?;
            Ok(Box::new(stream))
        }
        ProxyKind::HttpConnect => {
            let mut stream = dial(&proxy.host, proxy.port, local)
                .await
                .map_err(|e| via(&e))?;
            let _ = stream.set_nodelay(true);
            let target = authority(host, port);
            let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| via(&e))?;
            let head = read_head(&mut stream).await.map_err(|e| via(&e))?;
            match status_of(&head) {
                Some(200) => Ok(Box::new(stream)),
                Some(code) => Err(via(&format!("CONNECT refused with HTTP {code}"))),
                None => Err(via(&"not an HTTP proxy")),
            }
        }
    }
}

/// Opens the relay's tunnel over `tcp`: TLS to the relay (its pin), then an upgrade
/// request on the secret path. From the `101` on, the stream is a byte pipe to the
/// relay's upstream server.
async fn relay_tunnel(link: &RelayLink, tcp: Transport) -> Result<Transport, String> {
    let relay = |e: &dyn std::fmt::Display| format!("relay {}: {e}", link.address());
    let setup = TlsSetup::new(Some(link.pin)).map_err(|e| relay(&e))?;
    let name = ServerName::try_from(link.host.clone()).map_err(|e| relay(&e))?;
    let mut tls = TlsConnector::from(setup.config())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let fallback = ClientError::Unreachable {
                url: link.address(),
                reason: format!("TLS handshake failed: {e}"),
            };
            relay(&setup.classify(&e, fallback))
        })?;
    let key = {
        use base64::Engine as _;
        let nonce: [u8; 16] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(nonce)
    };
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        link.secret,
        authority(&link.host, link.port)
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| relay(&e))?;
    let head = read_head(&mut tls).await.map_err(|e| relay(&e))?;
    match status_of(&head) {
        Some(101) => Ok(Box::new(tls)),
        Some(429) => Err(relay(&"the relay's rate limit for this address is reached")),
        Some(code) => Err(relay(&format!(
            "refused the tunnel with HTTP {code} (wrong secret, or not a Hushwire relay)"
        ))),
        None => Err(relay(&"not an HTTP server")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::net::Ipv6Addr;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn dial_opens_the_connection_from_the_local_address_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for local in ["127.0.0.2", "127.0.0.3"] {
            let local: IpAddr = local.parse().unwrap();
            let stream = dial("127.0.0.1", port, Some(local)).await.unwrap();
            assert_eq!(stream.local_addr().unwrap().ip(), local);
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), local);
        }
        // Unset: the system picks the source address.
        let stream = dial("127.0.0.1", port, None).await.unwrap();
        assert_eq!(stream.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn dial_refuses_a_destination_of_another_family() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = dial("127.0.0.1", port, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)))
            .await
            .unwrap_err();
        assert!(err.contains("no address of the family of ::1"), "{err}");
    }
}
