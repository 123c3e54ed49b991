//! A volunteer relay for Hushwire: anyone outside a block runs one so that people
//! inside can reach the server.
//!
//! To everyone else the relay is an ordinary HTTPS website (the `hushwire-decoy` site:
//! nginx's answers, TLS 1.2/1.3, ALPN h2 and http/1.1). A client that presents the
//! relay's secret — `GET /{secret}` with an `Upgrade` header, inside TLS to the relay —
//! gets `101` and from then on a raw byte pipe to the **one** upstream the relay was
//! configured with. The client runs its own TLS to the server through that pipe, so the
//! relay sees neither plaintext nor the server's secret path, and cannot be used to
//! reach anything else: a tunnel has no destination field. Any HTTPS traffic of the
//! client (API calls, the WebSocket, later media uploads) goes through it the same way.
//!
//! Limits per client IP: concurrent tunnels and tunnel openings per minute; a relay-wide
//! tunnel cap; idle tunnels close.
//!
//! # Layout
//! - this file: [`RelayConfig`], [`bind`] / [`RunningRelay::run`] (accept loop,
//!   graceful shutdown), the tunnel itself.
//! - `limits`: per-IP accounting.
//! - `tls`: the relay's self-signed certificate (kept in its data directory) and pin.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hushwire_decoy::DecoySite;
use hushwire_decoy::http1::{self, Outcome};
use hushwire_proto::relay_link::RelayLink;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod limits;
mod tls;

pub use limits::RelayLimits;

/// Characters of a generated tunnel secret (132 bits).
const SECRET_CHARS: usize = 22;

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS material cannot be made or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The configuration is unusable.
    #[error("invalid relay configuration: {0}")]
    Config(String),
}

impl RelayError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Everything a relay is told.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The one server tunnels go to: host (name or IP) and port.
    pub upstream_host: String,
    /// The upstream's port.
    pub upstream_port: u16,
    /// Directory for the relay's certificate, key, secret and default site.
    pub data_dir: PathBuf,
    /// The decoy site (default `{data_dir}/site` with a built-in page).
    pub site_dir: Option<PathBuf>,
    /// Host name or address users reach the relay at (for the link and certificate).
    pub public_host: String,
    /// Limits.
    pub limits: RelayLimits,
}

/// Live counters.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Tunnels open now.
    pub tunnels_open: u64,
    /// Tunnels opened since start.
    pub tunnels_total: u64,
    /// Tunnel requests refused by a limit.
    pub refused: u64,
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
}

struct Shared {
    config: RelayConfig,
    secret: String,
    site: DecoySite,
    limits: limits::PerIp,
    counters: Counters,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A bound relay, ready to [`run`](RunningRelay::run).
pub struct RunningRelay {
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pin: [u8; 32],
    local_addr: SocketAddr,
}

impl std::fmt::Debug for RunningRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRelay")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A handle for counters and shutdown while the relay runs.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl RelayHandle {
    /// Current counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        RelayStats {
            tunnels_open: c.open.load(Ordering::Relaxed),
            tunnels_total: c.total.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// Loads or creates the relay's certificate, secret and site, and binds the listener.
pub async fn bind(config: RelayConfig) -> Result<RunningRelay, RelayError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if config.upstream_host.is_empty() || config.upstream_port == 0 {
        return Err(RelayError::Config(
            "the upstream needs a host and a port".into(),
        ));
    }
    let (material, secret, site) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> Result<_, RelayError> {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                RelayError::io(format!("cannot create {}", config.data_dir.display()), e)
            })?;
            let material = tls::load_or_create(&config.data_dir, &config.public_host)?;
            let secret = tls::load_or_create_secret(&config.data_dir, SECRET_CHARS)?;
            let site = match &config.site_dir {
                Some(dir) if dir.is_dir() => DecoySite::new(dir),
                Some(dir) => {
                    return Err(RelayError::Config(format!(
                        "site directory {} does not exist",
                        dir.display()
                    )));
                }
                None => DecoySite::builtin_in(&config.data_dir.join("site"))
                    .map_err(|e| RelayError::io("cannot write the decoy site", e))?,
            };
            Ok((material, secret, site))
        })
        .await
        .map_err(|e| RelayError::io("set-up task", std::io::Error::other(e)))??
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| RelayError::io(format!("cannot listen on {}", config.listen), e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| RelayError::io("listener address", e))?;
    let shared = Arc::new(Shared {
        limits: limits::PerIp::new(config.limits),
        config,
        secret,
        site,
        counters: Counters::default(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    Ok(RunningRelay {
        shared,
        listener,
        acceptor: TlsAcceptor::from(material.config),
        pin: material.pin,
        local_addr,
    })
}

impl RunningRelay {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The SHA-256 pin of the relay's key.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The shareable link: the configured public host and the bound port.
    pub fn link(&self) -> RelayLink {
        RelayLink {
            host: self.shared.config.public_host.clone(),
            port: self.local_addr.port(),
            secret: self.shared.secret.clone(),
            pin: self.pin,
        }
    }

    /// Counters and the like, usable while [`run`](Self::run) is going.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until `shutdown` completes; then stops accepting and closes tunnels.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let RunningRelay {
            shared,
            listener,
            acceptor,
            ..
        } = self;
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared2 = Arc::clone(&shared);
            let acceptor = acceptor.clone();
            shared
                .tasks
                .spawn(async move { serve_connection(shared2, acceptor, stream, peer).await });
        }
        drop(listener);
        shared.shutdown.cancel();
        shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tasks.wait()).await;
        Ok(())
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let tls = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
        () = shared.shutdown.cancelled() => return,
    };
    if hushwire_decoy::tls::negotiated_h2(tls.get_ref().1) {
        // Tunnels are HTTP/1.1 upgrades; over HTTP/2 the relay is only the website.
        serve_h2_decoy(&shared, tls).await;
        return;
    }
    let secret = shared.secret.clone();
    let outcome = tokio::select! {
        o = http1::serve(tls, &shared.site, http1::Timeouts::default(), |head| {
            head.path().strip_prefix('/').is_some_and(|p| hushwire_decoy::secret::matches(p, &secret))
        }) => o,
        () = shared.shutdown.cancelled() => return,
    };
    let Outcome::Secret {
        head,
        head_len,
        mut io,
    } = outcome
    else {
        return;
    };
    let upgrade =
        head.method == "GET" && head.header("upgrade").is_some_and(|v| !v.trim().is_empty());
    if !upgrade {
        // The secret path without an upgrade: answer like any unknown path.
        // (The site has no such file: a 404, as for any path.) The connection closes
        // after it, which nginx also does at times.
        let resp = shared.site.respond(&head.info()).await;
        let _ = io.write_all(&resp.to_http1()).await;
        let _ = io.shutdown().await;
        return;
    }
    let ip = peer.ip();
    let Some(_slot) = shared.limits.admit(ip) else {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = io.write_all(&unavailable()).await;
        let _ = io.shutdown().await;
        return;
    };
    let upstream = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((
            shared.config.upstream_host.as_str(),
            shared.config.upstream_port,
        )),
    )
    .await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        _ => {
            tracing::warn!("cannot reach the upstream server");
            let _ = io.write_all(&bad_gateway()).await;
            let _ = io.shutdown().await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    io.consume(head_len);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nDate: {}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if io.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    shared.counters.total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%ip, "tunnel open");
    let idle = shared.config.limits.idle_timeout;
    let result = tokio::select! {
        r = pipe(&mut io, &mut upstream, idle) => r,
        () = shared.shutdown.cancelled() => (0, 0),
    };
    shared
        .counters
        .bytes_up
        .fetch_add(result.0, Ordering::Relaxed);
    shared
        .counters
        .bytes_down
        .fetch_add(result.1, Ordering::Relaxed);
    shared.counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Copies both ways until either side closes or nothing moves for `idle`.
/// Returns (client → upstream, upstream → client) byte counts.
async fn pipe<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut up, mut down) = (0u64, 0u64);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = tokio::time::timeout(idle, ar.read(&mut abuf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    if bw.write_all(&abuf[..n]).await.is_err() { break; }
                    up += n as u64;
                }
            },
            r = tokio::time::timeout(idle, br.read(&mut bbuf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    if aw.write_all(&bbuf[..n]).await.is_err() { break; }
                    down += n as u64;
                }
            },
        }
    }
    let _ = aw.shutdown().await;
    let _ = bw.shutdown().await;
    (up, down)
}

fn page(status: u16, reason: &str, close: bool) -> Vec<u8> {
    let body = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// nginx's answer when `limit_req`/`limit_conn` refuse (503).
fn unavailable() -> Vec<u8> {
    page(503, "Service Temporarily Unavailable", true)
}

/// nginx's answer when the upstream is down (502).
fn bad_gateway() -> Vec<u8> {
    page(502, "Bad Gateway", true)
}

/// HTTP/2 connections see only the website.
async fn serve_h2_decoy<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    shared: &Shared,
    io: IO,
) {
    let site = shared.site.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let site = site.clone();
        async move {
            let info = hushwire_decoy::site::info_from_http(&req);
            let resp = site.respond(&info).await.into_http();
            Ok::<_, std::convert::Infallible>(resp.map(http_body_util::Full::new))
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
