//! Where the server is and how to reach it: base URL, TLS setup and the dialer.
//!
//! Every connection (HTTPS API and WebSocket) is made from an [`Endpoint`]. The dialer
//! is the one place that opens TCP streams, so SOCKS5 or HTTP CONNECT proxies can be
//! added later as [`Dialer`] variants without touching the protocol code.

use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::ClientError;
use crate::tls::{TlsSetup, parse_pin, pin_to_string};

/// How TCP connections to the server are opened.
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
    dialer: Dialer,
    connect_timeout: Duration,
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
            dialer: Dialer::Direct,
            connect_timeout: Duration::from_secs(10),
        })
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

    /// Opens a TCP connection through the dialer, with TCP_NODELAY.
    pub async fn dial(&self) -> Result<TcpStream, ClientError> {
        match self.dialer {
            Dialer::Direct => {
                let fut = TcpStream::connect((self.host.as_str(), self.port));
                let stream = tokio::time::timeout(self.connect_timeout, fut)
                    .await
                    .map_err(|_| self.unreachable("connection timed out"))?
                    .map_err(|e| self.unreachable(e))?;
                stream.set_nodelay(true).map_err(|e| self.unreachable(e))?;
                Ok(stream)
            }
        }
    }

    /// Opens a TLS 1.3 connection to the server, enforcing the pin.
    pub async fn connect_tls(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let tcp = self.dial().await?;
        let connector = TlsConnector::from(self.tls.config());
        let fut = connector.connect(self.server_name.clone(), tcp);
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Err(_) => Err(self.unreachable("TLS handshake timed out")),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                let fallback = self.unreachable(format!("TLS handshake failed: {e}"));
                Err(self.tls.classify(&e, fallback))
            }
        }
    }

    /// Checks that the server is reachable and presents the expected key.
    pub async fn probe(&self) -> Result<(), ClientError> {
        let stream = self.connect_tls().await?;
        drop(stream);
        Ok(())
    }
}
