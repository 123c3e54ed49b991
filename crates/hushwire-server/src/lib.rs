//! The Hushwire server: the HTTPS + WebSocket API in front of the MLS Delivery Service.
//!
//! The server never sees plaintext. It registers accounts and devices, stores and hands
//! out MLS KeyPackages, orders each group's messages (reading only the plaintext MLS
//! header), and delivers them to per-device mailboxes over one WebSocket per device.
//! Everything durable goes through [`hushwire_store::Store`]; the embedded backend is
//! `hushwire_store_sqlite` ([`open_embedded`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hushwire_server::ServerError> {
//! use hushwire_server::{ServerConfig, bind, open_embedded};
//! let config = ServerConfig::default();
//! let store = open_embedded(&config).await?;
//! let running = bind(config, store).await?;
//! println!("{} pin {}", running.url(), running.pin());
//! running.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`ServerConfig`], TOML-loadable, defaults documented per field, validated.
//! - [`tls`]: rustls (TLS 1.3, aws-lc-rs), the self-signed certificate and its pin.
//! - [`acme`]: certificates from an ACME CA (instant-acme, TLS-ALPN-01), renewal.
//! - this file: [`Server`] (shared state), [`bind`] / [`RunningServer::run`] (the TLS
//!   accept loop, connection limit, graceful shutdown), the retention task, invites.
//! - `conn_limit`: the per-client-IP cap on open connections (`max_connections_per_ip`).
//! - `api`: the HTTPS routes ([`app`]), protobuf bodies and body limits.
//! - `auth`: signed-request verification with a replay cache; WebSocket challenge check.
//! - `ws`: one WebSocket connection: challenge, auth, backlog, live pushes, submit, ack.
//! - `hub`: which device is connected where; bounded live-push queues.
//! - `cluster`: several nodes on one store: wake-ups and ephemeral signals from other
//!   nodes over the `hushwire_bus` (NATS), and the mailbox poller that backs it up.
//! - `devices`: adding and removing devices, the account's signed device list.
//! - `links`: link sessions (write-once slots, long-polled reads) for linking devices.
//! - `media`: the blob routes (create, upload parts, status, ranged download, delete)
//!   over the metadata store and a `hushwire_blobstore::BlobStore`, and the sweeper.
//! - `ratelimit`: keyed token buckets (registrations per IP, claims per device).
//! - [`error`]: every error type and the one mapping to HTTP statuses and close codes.
//!
//! # Shutdown
//! [`RunningServer::run`] returns after its `shutdown` future completes: it stops
//! accepting, asks HTTP connections to finish, closes every WebSocket with 1001, and
//! waits up to `shutdown_grace_secs` for all connection tasks. Store operations are
//! durable when they return, so nothing is left to flush once the tasks are done.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ConnectInfo;
use hushwire_store::{DeviceId, Store};
pub use hushwire_store_sqlite::{SqliteOptions, SqliteStore};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod acme;
mod api;
mod auth;
mod cluster;
pub mod config;
mod conn_limit;
mod devices;
mod directory;
pub mod error;
mod hub;
mod links;
mod media;
mod ratelimit;
pub mod reports;
pub mod tls;
mod ws;

pub use api::app;
pub use config::{
    AcmeConfig, BusConfig, ConfigError, DirectoryConfig, MediaConfig, RegistrationPolicy,
    ServerConfig, StoreUrl,
};
pub use error::{ApiError, ServerError};
pub use hushwire_blobstore::{BlobStore, ObjectBlobStore};
pub use tls::{TlsError, TlsMaterial};

/// Milliseconds since the Unix epoch by the server clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connections: AtomicU64,
    websockets: AtomicU64,
    /// Mailbox re-reads because a push queue overflowed.
    pub(crate) lag_refetches: AtomicU64,
    /// Mailbox re-reads because a push arrived ahead of the expected seq.
    pub(crate) gap_refetches: AtomicU64,
    /// Mailbox re-reads because another node (or the cluster poller) said so.
    pub(crate) wake_refetches: AtomicU64,
    /// Connections closed at accept: their address had `max_connections_per_ip` open.
    refused_per_ip: AtomicU64,
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Open TLS connections (HTTPS and WebSocket).
    pub connections: u64,
    /// Open WebSocket connections (authenticated or not).
    pub websockets: u64,
    /// Devices logged in on a WebSocket.
    pub devices_online: u64,
    /// Mailbox re-reads because a slow connection's push queue overflowed.
    pub lag_refetches: u64,
    /// Mailbox re-reads because a push arrived ahead of the expected seq.
    pub gap_refetches: u64,
    /// Mailbox re-reads because another node stored entries for the device (a bus
    /// wake) or the cluster poller found some.
    pub wake_refetches: u64,
    /// Connections closed right after accept because their client address already had
    /// `max_connections_per_ip` open.
    pub refused_per_ip: u64,
}

/// Decrements a gauge when dropped.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: ServerConfig,
    pub(crate) hub: hub::Hub,
    pub(crate) replay: auth::ReplayCache,
    pub(crate) register_limiter: ratelimit::RateLimiter<IpAddr>,
    pub(crate) claim_limiter: ratelimit::RateLimiter<DeviceId>,
    /// Ephemeral signals, block changes and retractions per device.
    pub(crate) signal_limiter: ratelimit::RateLimiter<DeviceId>,
    /// Message submits per device (`rate_limits.submits_per_device_per_minute`).
    pub(crate) submit_limiter: ratelimit::RateLimiter<DeviceId>,
    /// Unauthenticated link-slot requests per client IP.
    pub(crate) link_limiter: ratelimit::RateLimiter<IpAddr>,
    /// Public key-directory requests per client IP.
    pub(crate) directory_limiter: ratelimit::RateLimiter<IpAddr>,
    /// Open connections per client IP (`max_connections_per_ip`).
    pub(crate) conn_limit: conn_limit::ConnLimiter,
    /// Cancelled when the server shuts down; WebSockets close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection and WebSocket task, waited for on shutdown.
    pub(crate) tasks: TaskTracker,
    pub(crate) metrics: Metrics,
    /// The decoy website everyone without the path prefix sees.
    pub(crate) site: hushwire_decoy::DecoySite,
    /// Media blob bytes.
    pub(crate) blobs: Arc<dyn hushwire_blobstore::BlobStore>,
    /// Bytes of part bodies that may be held in memory at once (`media.upload_buffer_bytes`).
    pub(crate) upload_budget: Arc<Semaphore>,
    /// Notices to the other nodes (`bus.url`); a no-op on a single node.
    pub(crate) bus: hushwire_bus::Bus,
    /// The bus's connection task, taken and spawned by [`RunningServer::run`].
    pub(crate) bus_driver: std::sync::Mutex<Option<hushwire_bus::Driver>>,
    /// The key directory, once replayed from the store (opened by [`RunningServer::run`]).
    pub(crate) directory: tokio::sync::OnceCell<Arc<hushwire_directory::KeyDirectory>>,
}

/// The server's shared state: configuration, store, hub, limiters. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.shared.config.listen)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Keys tracked by each rate limiter at most.
const RATE_LIMIT_KEYS: usize = 100_000;

impl Server {
    /// Validates `config` and builds the state over `store`, with media blobs where
    /// `media.store` says: an S3 bucket, or by default the local filesystem in
    /// `{data_dir}/blobs/` (created).
    pub fn new(config: ServerConfig, store: Arc<dyn Store>) -> Result<Self, ServerError> {
        config.validate()?;
        let blobs = media::blob_store(&config.media, &config.data_dir)?;
        Self::with_blob_store(config, store, blobs)
    }

    /// Like [`Server::new`] with the given blob store.
    pub fn with_blob_store(
        config: ServerConfig,
        store: Arc<dyn Store>,
        blobs: Arc<dyn hushwire_blobstore::BlobStore>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let upload_budget = Arc::new(Semaphore::new(
            usize::try_from(config.media.upload_buffer_bytes).unwrap_or(usize::MAX),
        ));
        let rl = &config.rate_limits;
        let conn_limit = conn_limit::ConnLimiter::new(
            config.max_connections_per_ip,
            config.connection_limit_exempt_cidrs()?,
        );
        let (bus, bus_driver) = cluster::bus(&config.bus)?;
        let shared = Shared {
            store,
            hub: hub::Hub::default(),
            replay: auth::ReplayCache::new(auth::REPLAY_CACHE_ENTRIES),
            register_limiter: ratelimit::RateLimiter::new(
                rl.registrations_per_ip_per_minute,
                RATE_LIMIT_KEYS,
            ),
            claim_limiter: ratelimit::RateLimiter::new(
                rl.claims_per_device_per_minute,
                RATE_LIMIT_KEYS,
            ),
            signal_limiter: ratelimit::RateLimiter::new(
                rl.signals_per_device_per_minute,
                RATE_LIMIT_KEYS,
            ),
            submit_limiter: ratelimit::RateLimiter::new(
                rl.submits_per_device_per_minute,
                RATE_LIMIT_KEYS,
            ),
            link_limiter: ratelimit::RateLimiter::new(
                rl.link_requests_per_ip_per_minute,
                RATE_LIMIT_KEYS,
            ),
            directory_limiter: ratelimit::RateLimiter::new(
                rl.directory_requests_per_ip_per_minute,
                RATE_LIMIT_KEYS,
            ),
            conn_limit,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics: Metrics::default(),
            site: hushwire_decoy::DecoySite::new(config.site_path()),
            blobs,
            upload_budget,
            bus,
            bus_driver: std::sync::Mutex::new(bus_driver),
            directory: tokio::sync::OnceCell::new(),
            config,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Whether a request path is under the secret prefix (compared in constant time).
    pub(crate) fn in_prefix(&self, path: &str) -> bool {
        let prefix = self.shared.config.path_prefix.as_str();
        let Some(head) = path.as_bytes().get(..prefix.len()) else {
            return false;
        };
        let rest = &path.as_bytes()[prefix.len()..];
        let head = String::from_utf8_lossy(head);
        hushwire_decoy::secret::matches(&head, prefix) && (rest.is_empty() || rest[0] == b'/')
    }

    /// The cross-node bus's counters (all zero without `bus.url`); `ready` once NATS
    /// confirmed this node's subscriptions.
    pub fn bus_stats(&self) -> hushwire_bus::BusStats {
        self.shared.bus.stats()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let m = &self.shared.metrics;
        Stats {
            connections: m.connections.load(Ordering::Relaxed),
            websockets: m.websockets.load(Ordering::Relaxed),
            devices_online: self.shared.hub.len() as u64,
            lag_refetches: m.lag_refetches.load(Ordering::Relaxed),
            gap_refetches: m.gap_refetches.load(Ordering::Relaxed),
            wake_refetches: m.wake_refetches.load(Ordering::Relaxed),
            refused_per_ip: m.refused_per_ip.load(Ordering::Relaxed),
        }
    }
}

/// A bound listener with its TLS setup, ready to [`run`](RunningServer::run).
pub struct RunningServer {
    server: Server,
    listener: TcpListener,
    tls: TlsMaterial,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("url", &self.url())
            .field("pin", &self.tls.pin)
            .finish_non_exhaustive()
    }
}

/// Characters of a generated path prefix (6 bits each: 132 bits).
const PREFIX_CHARS: usize = 22;

/// The secret path prefix: the configured one, else the one kept in
/// `{data_dir}/path_prefix`, generated (mode 0600) on first start.
pub fn resolve_prefix(config: &ServerConfig) -> Result<String, ServerError> {
    if !config.path_prefix.is_empty() {
        return Ok(config.path_prefix.clone());
    }
    let path = config.prefix_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let prefix = text.trim().to_string();
            let mut check = config.clone();
            check.path_prefix = prefix.clone();
            if prefix.is_empty() || check.validate().is_err() {
                return Err(ServerError::io(
                    format!(
                        "{} holds no valid path prefix; remove it to generate a new one (users must then get the new URL)",
                        path.display()
                    ),
                    std::io::Error::from(std::io::ErrorKind::InvalidData),
                ));
            }
            Ok(prefix)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let prefix = format!("/{}", hushwire_decoy::secret::generate(PREFIX_CHARS));
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                ServerError::io(format!("cannot create {}", config.data_dir.display()), e)
            })?;
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let write = |opts: &std::fs::OpenOptions| -> std::io::Result<()> {
                use std::io::Write;
                let mut f = opts.open(&tmp)?;
                f.write_all(format!("{prefix}\n").as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write(&opts)
                .map_err(|e| ServerError::io(format!("cannot write {}", path.display()), e))?;
            tracing::info!("generated a secret path prefix");
            Ok(prefix)
        }
        Err(e) => Err(ServerError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// Validates the config, resolves the secret path prefix, prepares the decoy site,
/// loads or creates the TLS material and binds the listener (port 0 picks a free port).
/// Installs aws-lc-rs as rustls' default provider.
pub async fn bind(
    mut config: ServerConfig,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    tls::install_default_provider();
    config.validate()?;
    let (tls, config) = {
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            config.path_prefix = resolve_prefix(&config)?;
            let site = config.site_path();
            if config.site_dir.is_none() {
                hushwire_decoy::DecoySite::builtin_in(&site).map_err(|e| {
                    ServerError::io(
                        format!("cannot write the decoy site in {}", site.display()),
                        e,
                    )
                })?;
            } else if !site.is_dir() {
                return Err(ServerError::io(
                    format!("decoy site directory {}", site.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            Ok((tls::load_or_create(&config)?, config))
        })
        .await
        .map_err(|e| ServerError::io("TLS set-up task", std::io::Error::other(e)))??
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::io(format!("cannot listen on {}", config.listen), e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServerError::io("listener address", e))?;
    let server = Server::new(config, store)?;
    Ok(RunningServer {
        server,
        listener,
        tls,
        local_addr,
    })
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL clients use: `https://{addr}{prefix}`; with ACME, the first ACME
    /// domain instead of the address (and no port when it is 443).
    pub fn url(&self) -> String {
        let config = &self.server.shared.config;
        match config.acme.domains.first() {
            Some(domain) if self.local_addr.port() == 443 => {
                format!("https://{domain}{}", config.path_prefix)
            }
            Some(domain) => format!(
                "https://{domain}:{}{}",
                self.local_addr.port(),
                config.path_prefix
            ),
            None => format!("https://{}{}", self.local_addr, config.path_prefix),
        }
    }

    /// Whether the certificate comes from an ACME CA (clients then need no pin; the pin
    /// changes with every renewal).
    pub fn uses_acme(&self) -> bool {
        self.tls.acme.is_some()
    }

    /// The secret path prefix (part of [`url`](Self::url)).
    pub fn path_prefix(&self) -> &str {
        &self.server.shared.config.path_prefix
    }

    /// The certificate pin, `sha256:<hex>`.
    pub fn pin(&self) -> &str {
        &self.tls.pin
    }

    /// The shared state (for stats).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the crate doc).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let RunningServer {
            server,
            listener,
            tls,
            local_addr,
        } = self;
        let shared = &server.shared;
        let router = app(&server);
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        tracing::info!(addr = %local_addr, pin = %tls.pin, "hushwire server listening");

        shared.tasks.spawn(expiry_loop(server.clone()));
        shared.tasks.spawn(media::sweep_loop(server.clone()));
        shared.tasks.spawn(purge_loop(server.clone()));
        shared.tasks.spawn(directory::run(server.clone()));
        cluster::start(&server);
        if let Some(store) = &tls.acme {
            shared.tasks.spawn(acme::maintain(
                shared.config.acme.clone(),
                shared.config.acme_cache_dir(),
                Arc::clone(store),
                shared.shutdown.clone(),
            ));
        }

        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(10);
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // never closed; treat as shutdown
                },
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(10);
                    x
                }
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(ip_slot) = shared.conn_limit.admit(peer.ip()) else {
                // Closed before any TLS work: the cheapest answer to a flood. Debug
                // only, once per connection: a flood must not flood the log.
                shared
                    .metrics
                    .refused_per_ip
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection refused: max_connections_per_ip reached");
                drop(stream);
                drop(permit);
                continue;
            };
            let span = tracing::debug_span!("conn", %peer);
            shared.tasks.spawn(
                serve_connection(
                    server.clone(),
                    router.clone(),
                    Arc::clone(&tls.config),
                    stream,
                    peer,
                    permit,
                    ip_slot,
                )
                .instrument(span),
            );
        }

        tracing::info!("shutting down: closing connections");
        drop(listener);
        shared.shutdown.cancel();
        shared.tasks.close();
        let grace = shared.config.shutdown_grace();
        if tokio::time::timeout(grace, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tasks.len(),
                "connections still open after the shutdown grace period; abandoning them"
            );
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

/// One accepted TCP connection's slot: its connection-limit permit, its place in its
/// client address's count and in the `connections` gauge. Shared by the HTTP
/// connection and a WebSocket upgraded from it, so both count until the last of them
/// ends.
pub(crate) struct ConnSlot {
    server: Server,
    _permit: OwnedSemaphorePermit,
    _ip: conn_limit::IpSlot,
}

impl ConnSlot {
    fn new(server: Server, permit: OwnedSemaphorePermit, ip: conn_limit::IpSlot) -> Self {
        server
            .shared
            .metrics
            .connections
            .fetch_add(1, Ordering::Relaxed);
        Self {
            server,
            _permit: permit,
            _ip: ip,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.server
            .shared
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Request extension carrying the connection's [`ConnSlot`].
#[derive(Clone)]
pub(crate) struct ConnPermit {
    _slot: Arc<ConnSlot>,
}

async fn serve_connection(
    server: Server,
    router: Router,
    tls_config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    ip_slot: conn_limit::IpSlot,
) {
    let shared = &server.shared;
    let slot = Arc::new(ConnSlot::new(server.clone(), permit, ip_slot));
    let _ = stream.set_nodelay(true);
    // hushwire_tls: a TLS stream that frees its buffers while the connection is idle.
    let handshake = tokio::time::timeout(
        shared.config.handshake_timeout(),
        hushwire_tls::accept(tls_config, stream),
    );
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
        () = shared.shutdown.cancelled() => return,
    };
    if tls.alpn_protocol() == Some(acme::ACME_TLS_ALPN) {
        // A CA's TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 §3).
        return;
    }
    let h2 = hushwire_decoy::tls::negotiated_h2(tls.session());
    let permit = ConnPermit { _slot: slot };
    let service = {
        let server = server.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(permit.clone());
            let mut router = router.clone();
            let server = server.clone();
            async move {
                if server.in_prefix(req.uri().path()) {
                    tower::Service::call(&mut router, req).await
                } else {
                    Ok(decoy_response(&server, &req).await)
                }
            }
        })
    };
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
            }
            () = shared.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        return;
    }
    // HTTP/1.x: the decoy answers until a request for the prefix arrives; hyper takes
    // the connection from that request on.
    let timeouts = hushwire_decoy::http1::Timeouts::default();
    let outcome = tokio::select! {
        o = hushwire_decoy::http1::serve(tls, &shared.site, timeouts, |head| server.in_prefix(head.path())) => o,
        () = shared.shutdown.cancelled() => return,
    };
    let io = match outcome {
        hushwire_decoy::http1::Outcome::Closed => return,
        hushwire_decoy::http1::Outcome::Secret { io, .. } => io,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout())
        .max_buf_size(shared.config.limits.max_body_bytes.max(16 * 1024) + 16 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The decoy site's answer to a request outside the prefix (on a connection that
/// already made a prefixed request, or over HTTP/2).
async fn decoy_response<B>(server: &Server, req: &hyper::Request<B>) -> axum::response::Response {
    let info = hushwire_decoy::site::info_from_http(req);
    let resp = server.shared.site.respond(&info).await;
    let reason = resp.reason;
    let mut resp = resp.into_http().map(axum::body::Body::from);
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes()) {
        resp.extensions_mut().insert(reason);
    }
    resp
}

async fn expiry_loop(server: Server) {
    let shared = &server.shared;
    let interval = shared.config.expire_interval();
    loop {
        match shared.store.expire(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "retention: expired messages removed"),
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// How often queued copies of disappearing messages past their expiry are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often expired link sessions (and their slots) are deleted.
const LINK_PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// Deletes disappearing messages whose time is up ([`hushwire_store::Controls`]), every
/// [`PURGE_INTERVAL`], and expired link sessions every [`LINK_PURGE_INTERVAL`].
async fn purge_loop(server: Server) {
    let shared = &server.shared;
    let mut next_link_purge = std::time::Instant::now();
    loop {
        if std::time::Instant::now() >= next_link_purge {
            next_link_purge = std::time::Instant::now() + LINK_PURGE_INTERVAL;
            match shared.store.purge_expired_links(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sessions = n, "expired link sessions purged"),
                Err(e) => tracing::error!(error = %e, "purging expired link sessions failed"),
            }
        }
        match shared.store.purge_disappearing(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "disappearing messages purged"),
            Err(hushwire_store::StoreError::Unsupported(op)) => {
                tracing::warn!(op, "the store cannot purge disappearing messages promptly");
                return;
            }
            Err(e) => tracing::error!(error = %e, "purging disappearing messages failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Opens the store `config` names: PostgreSQL for a `postgres://` [`ServerConfig::store`]
/// (migrating its schema), else the embedded SQLite store ([`open_embedded`]).
pub async fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    match &config.store {
        Some(url) if url.is_postgres() => {
            let store = hushwire_store_postgres::PgStore::connect(
                url.as_str(),
                hushwire_store_postgres::PgOptions::default(),
            )
            .await?;
            tracing::info!(store = %url, "opened the PostgreSQL store");
            Ok(Arc::new(store))
        }
        Some(_) => Err(ConfigError::Invalid {
            field: "store",
            reason: "must be a postgres:// URL (leave it unset for the embedded database)".into(),
        }
        .into()),
        None => open_embedded(config).await,
    }
}

/// Opens the embedded SQLite store at `{data_dir}/hushwire.db` (creating the directory).
///
/// Dropping the last reference finishes queued writes and closes the database.
pub async fn open_embedded(config: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    Ok(open_sqlite(config).await?)
}

/// Like [`open_embedded`], keeping the concrete type so the caller can
/// [`shutdown`](SqliteStore::shutdown) it (which also checkpoints the WAL) after
/// [`RunningServer::run`] returns.
pub async fn open_sqlite(config: &ServerConfig) -> Result<Arc<SqliteStore>, ServerError> {
    let dir = config.data_dir.clone();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ServerError::io(format!("cannot create {}", dir.display()), e))?;
    let path = config.database_path();
    let opened = tokio::task::spawn_blocking({
        let path = path.clone();
        move || SqliteStore::open(&path, SqliteOptions::default())
    })
    .await
    .map_err(|e| ServerError::io("store open task", std::io::Error::other(e)))?;
    let store = opened.map_err(|e| ServerError::OpenStore {
        path,
        reason: e.to_string(),
    })?;
    Ok(Arc::new(store))
}

/// Alphabet of invite codes: lowercase letters and digits, easy to read out and type.
const INVITE_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// 20 symbols of 5 bits: 100 bits of entropy.
const INVITE_LEN: usize = 20;

/// Creates a single-use invite code valid for `ttl` (for `hushwire admin invite`).
pub async fn create_invite(store: &dyn Store, ttl: Duration) -> Result<String, ServerError> {
    use rand::Rng;
    let code: String = {
        let mut rng = rand::rngs::OsRng;
        (0..INVITE_LEN)
            .map(|_| char::from(INVITE_ALPHABET[rng.gen_range(0..INVITE_ALPHABET.len())]))
            .collect()
    };
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    store
        .create_invite(&code, now_ms().saturating_add(ttl_ms))
        .await?;
    Ok(code)
}
