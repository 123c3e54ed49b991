//! `hushwire daemon`: JSON-RPC 2.0 for bots and integrations, over one registered
//! profile's client ([`hushwire_service::Service`]: it receives live and reconnects by
//! itself). Every method is a thin call into the client library; no protocol or storage
//! logic lives here.
//!
//! # Usage
//!
//! ```text
//! hushwire daemon                          # stdio: one JSON object per line both ways
//! hushwire daemon --socket /run/me/hw.sock # unix socket, several clients, same lines
//! hushwire daemon --http 127.0.0.1:8080    # HTTP: POST /api/v1/rpc, GET /api/v1/events
//! hushwire daemon --http 0.0.0.0:8080      # not loopback: a bearer token is required
//! ```
//!
//! `--http` and `--socket` may be given together; with neither, the daemon speaks on
//! stdin/stdout and exits when stdin closes. SIGINT/SIGTERM stop it (the socket file is
//! removed).
//!
//! ```text
//! $ echo '{"jsonrpc":"2.0","id":1,"method":"send","params":{"to":"bob","text":"hi"}}' \
//!     | hushwire daemon
//! {"jsonrpc":"2.0","id":1,"result":{"id":"0193…","sent":true}}
//! $ curl -s localhost:8080/api/v1/rpc -d '{"jsonrpc":"2.0","id":1,"method":"listConversations"}'
//! $ curl -N localhost:8080/api/v1/events          # Server-Sent Events
//! $ curl -s localhost:8080/api/v1/check           # {"ok":true,"online":true}
//! ```
//!
//! ## Transports
//! - **stdio / unix socket**: each line is a request, a notification (no `id`: no
//!   answer) or a batch (an array, at most 100); a line is at most 1 MiB. Responses and
//!   `receive` notifications share the output, one per line. The socket file is created
//!   with mode `0600` (bound in a private directory, then renamed into place), a stale
//!   one is replaced, and it is removed on exit. Every socket connection gets the events.
//! - **HTTP** (`--http ADDR`, loopback by default): `POST /api/v1/rpc` takes a request or
//!   a batch (body at most 1 MiB; `204` for notifications only); `GET /api/v1/events` is a
//!   Server-Sent Events stream (`event: receive`, `id:` the event's `seq`, `data:` the
//!   notification object); a reconnecting client sends `Last-Event-ID` and resumes
//!   right after it; `GET /api/v1/check` answers `{"ok":true,"online":BOOL}`.
//! - **Token**: when `ADDR` is not a loopback address every request needs
//!   `Authorization: Bearer TOKEN` (`401` otherwise). The token is
//!   `HUSHWIRE_DAEMON_TOKEN` when set (then it is required on loopback too), else a random
//!   one printed once to stderr. Compared in constant time; never logged.
//!
//! ## Methods
//! Names follow signal-cli's daemon where they fit (its parameter names are accepted as
//! aliases: `recipient`, `message`, `attachment`, `quoteId`, `targetId`, `groupId`,
//! `addMembers`, `removeMembers`, `name`; `updateConfiguration` is `updateSettings`).
//!
//! | method | params | result |
//! |---|---|---|
//! | `send` | `to` (handle or `#GROUP`), `text`?, `file`? (path), `replyTo`? (message id), `viewOnce`? | `{"id","sent"}` |
//! | `listConversations` | – | `[{"conversation","group","lastMessageAt","messageCount","request","timer","timerMs"}]` |
//! | `history` | `conversation`, `limit`? (default 50, at most 1000) | the latest timeline entries, oldest first |
//! | `sendReaction` | `id`, `emoji` (or `remove: true`) | `{"sent"}` |
//! | `sendReceipt`, `markRead` | `conversation` | `{"read": n, "sent"}` (read receipts) |
//! | `editMessage` | `id` (an own text), `text` | `{"sent"}` |
//! | `remoteDelete` | `id` | `{"scope","sent"}`: `everyone` (own message), `unsent` (own, never sent), `me` (someone else's: this device only) |
//! | `setTimer` | `conversation`, `timer` (`5s`, `30m`, `1h`, `7d`, `2w` … 90 days, or `off`) | `{"conversation","timer","timerMs","sent"}` |
//! | `listRequests` | – | `[{"from","conversation","messages","firstAt","lastText"}]` (unanswered message requests) |
//! | `acceptRequest` | `handle` | `{"sent"}` |
//! | `block`, `unblock` | `handle` | `{"sent"}` |
//! | `listBlocked` | – | `["handle", …]` |
//! | `getSafetyNumber` | `handle`, `markVerified`? (the user compared the digits) | `{"handle","safetyNumber","qrPayload" (hex),"verified"}`; a changed account key is refused until `trustIdentity` |
//! | `trustIdentity` | `handle` | `{"trusted": true}`: accepts the contact's changed account key (after an `identity_changed` event) |
//! | `getSettings` | – | `{"readReceipts","presence"}` |
//! | `updateSettings` | `readReceipts`? (bool), `presence`? (`everyone`, `contacts`, `nobody`) | the settings after the change |
//! | `openViewOnce` | `id`, `dir`? (default `PROFILE/media/.view-once`) | `{"id","from","text","path"}` |
//! | `createGroup` | `title`, `members` | `{"conversation","sent"}` |
//! | `updateGroup` | `group`, `add`?, `remove`?, `promote`?, `demote`? (handle lists), `rename`? | `{"sent"}` |
//! | `quitGroup` | `group` | `{"sent"}` |
//! | `listGroups` | – | group details (members, admins, state) of every group chat |
//! | `getGroup` | `group` | one group's details |
//! | `listDevices` | – | `[{"deviceId","name","current","linkedAt"}]` |
//! | `sendTyping` | `conversation`, `stop`? | `{"sent"}` |
//! | `version` | – | `{"version"}` |
//!
//! `sent: false` means the server was unreachable: the message or operation is queued in
//! the profile's outbox and goes out with the next successful send (the live connection
//! retries); `sent` is `true` also when there was nothing to send (a delete on this
//! device only). A file path is resolved against the daemon's working directory.
//!
//! A reply (`send` with `replyTo`) goes to the quoted message's conversation (`to`, if
//! given, must name it); it carries no file. `viewOnce` sends a file or a text that the
//! receiver opens once: received view-once messages arrive with `"viewOnce":true` and
//! `"text":null`, and `openViewOnce` returns their text and, for a file, the path of the
//! decrypted copy (the caller deletes it when done); the message is then erased on
//! this device, a viewed receipt goes out, and opening it again is refused (`-32003`).
//! Only an own text can be edited; a group's timer only by its admins. A blocked
//! account's messages are dropped (and the server stops queueing them).
//!
//! Errors: `-32700` parse, `-32600` invalid request, `-32601` unknown method, `-32602`
//! bad params (a malformed message id or handle, an unknown timer or presence value),
//! `-32603` internal; application errors: `-32000` client error, `-32001` network
//! (queued), `-32002` not found (conversation, group, message id, message request, block),
//! `-32003` refused (not an admin, not the author, viewed already, invalid value),
//! `-32004` the client stopped, `-32005` a file could not be read, `-32006` rejected by
//! the server or the group (`data` lists what).
//!
//! ## Events
//! Every event of the service becomes
//! `{"jsonrpc":"2.0","method":"receive","params":{"seq":N,"type":…,…}}` (an SSE event
//! over HTTP). Types: `message`, `attachment` (with `attachment`: file name, type, size,
//! `path` once downloaded), `relayLink`, `conversationStarted`, `request`, `receipt`,
//! `reaction`, `edited` (`messageId`, `from`, the new `text`), `deleted` (`messageId`,
//! `from`: deleted for everyone by its author), `typing`, `presence`, `group`,
//! `groupOperationFailed`, `sent`, `sendFailed`, `undecryptable`, `devicesChanged`,
//! `timerChanged` (`by`, `timer`, `timerMs`), `identityChanged` (`handle`),
//! `connection` (`online`, `reason`). Messages carry `replyTo`, `viewOnce`,
//! `expiresAt` (a disappearing message) and `editedAt`; a `request` event precedes the
//! first message of someone who is not a contact yet.
//!
//! ## Durability
//! Events are appended to `daemon-events.sqlite` in the profile directory (WAL,
//! `synchronous=FULL`, one transaction per batch) *before* any consumer sees them, and
//! consumers read from that table. The *delivered* cursor records how far events were
//! written to a consumer: with no consumer attached they accumulate, and the next
//! consumer gets them in order, then live ones. Retention: 30 days and 100,000 events
//! (the oldest are deleted first).
//!
//! The client acknowledges a message to the server only after the profile stored it, so
//! the one window is between "the profile stored it" and "the queue appended its
//! event" (a daemon killed in between). It is closed by reconciliation at start, before
//! the client connects: every received message (text, file, relay link) in the profile
//! whose `FROM/ID` key the queue never saw is queued then, marked `"recovered":true`.
//! The queue keeps those keys (ids only, no content) so a message is queued once. On the
//! first start (no queue yet) what the profile holds counts as already reported.
//!
//! Delivery is **at least once**: an event written to a consumer just before the daemon
//! died may be sent again after a restart. Every notification carries `seq` (and
//! messages their `id`): consumers dedupe by `seq`. Recovered messages are only those the
//! queue never held, so each message is queued exactly once. Reactions, receipts and
//! other non-message events that fall into the window (or into the short gap between the
//! service starting and the daemon subscribing) are not recovered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hushwire_service::{Service, ServiceOptions};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

mod events;
mod http;
mod lines;
pub mod queue;
pub mod rpc;

pub use queue::{EventQueue, QUEUE_FILE, QueueError, RETENTION_EVENTS, RETENTION_MS};
pub use rpc::{METHODS, Methods, RpcError};

/// The environment variable holding the HTTP bearer token.
pub const TOKEN_ENV: &str = "HUSHWIRE_DAEMON_TOKEN";

/// Why the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The event queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The client service failed.
    #[error(transparent)]
    Service(#[from] hushwire_service::ServiceError),
    /// The profile could not be read.
    #[error("cannot read the profile: {0}")]
    Profile(#[source] hushwire_client::ClientError),
    /// Reading or writing a transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The unix socket could not be set up.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon listens on the socket path.
    #[error("{0} is in use by a running daemon")]
    SocketInUse(PathBuf),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The HTTP bearer token (zeroized on drop, never printed by `Debug`).
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// A random token: 32 bytes from the OS, hex.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *bytes);
        Self(Zeroizing::new(hex::encode(*bytes)))
    }

    /// The token's text (to print once or send).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The token an HTTP daemon on `addr` requires: `from_env` (when set and not empty)
/// anywhere; else a fresh random one when `addr` is not loopback (`true`: generated, to
/// be shown to the user once); else none.
pub fn http_token(addr: &SocketAddr, from_env: Option<String>) -> Option<(Token, bool)> {
    match from_env.filter(|t| !t.trim().is_empty()) {
        Some(t) => Some((Token::new(t.trim().to_string()), false)),
        None if !addr.ip().is_loopback() => Some((Token::generate(), true)),
        None => None,
    }
}

/// A running daemon core: the service, the durable queue and the pump between them.
pub struct Daemon {
    service: Service,
    queue: EventQueue,
    methods: Methods,
    pump: JoinHandle<Result<(), DaemonError>>,
    stop_pump: oneshot::Sender<()>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Opens the queue, queues what the profile stored but the queue missed (see the
    /// crate docs, "Durability"), starts the client service and the pump.
    pub async fn start(profile_dir: &Path, options: ServiceOptions) -> Result<Self, DaemonError> {
        // Before the client runs: nothing is stored meanwhile. The profile's key is
        // unlocked once (a passphrase is asked at most once) and encrypts the queue too.
        let dir = profile_dir.to_path_buf();
        let unlock = options.client.unlock.clone();
        let (queue, found, key) = tokio::task::spawn_blocking(move || {
            let key = hushwire_client::profile_key(&dir, &unlock).map_err(DaemonError::Profile)?;
            let profile = hushwire_e2e::Profile::open(&dir, &key)
                .map_err(|e| DaemonError::Profile(e.into()))?;
            if profile.identity().is_none() {
                return Err(DaemonError::Profile(
                    hushwire_client::ClientError::NotRegistered,
                ));
            }
            let queue = EventQueue::open(&dir, &key)?;
            let found =
                events::stored_messages(&profile).map_err(|e| DaemonError::Profile(e.into()))?;
            Ok((queue, found, key))
        })
        .await
        .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))??;
        let mut options = options;
        options.client.unlock = hushwire_client::Unlock::Key(key);
        let recovered = events::reconcile(found, &queue, queue.is_fresh()).await?;
        if recovered > 0 {
            tracing::info!(recovered, "queued messages the daemon had not reported");
        }
        let dir = profile_dir.to_path_buf();
        let (service, rx) =
            tokio::task::spawn_blocking(move || Service::start_subscribed(&dir, options))
                .await
                .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))??;
        let (stop_pump, stop_rx) = oneshot::channel();
        let pump = tokio::spawn(events::pump(service.clone(), queue.clone(), rx, stop_rx));
        Ok(Self {
            methods: Methods::new(service.clone()),
            service,
            queue,
            pump,
            stop_pump,
        })
    }

    /// The JSON-RPC methods.
    pub fn methods(&self) -> &Methods {
        &self.methods
    }

    /// The durable event queue.
    pub fn queue(&self) -> &EventQueue {
        &self.queue
    }

    /// The client service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Serves stdin/stdout until stdin closes.
    pub async fn serve_stdio(&self) -> Result<(), DaemonError> {
        let lines = lines::spawn_stdin()?;
        lines::serve(
            self.methods.clone(),
            self.queue.clone(),
            lines,
            tokio::io::stdout(),
        )
        .await
    }

    /// Serves one line-protocol peer over any byte stream (stdio and the socket use it).
    pub async fn serve_stream<R, W>(&self, reader: R, writer: W) -> Result<(), DaemonError>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let lines = lines::spawn_reader(tokio::io::BufReader::new(reader));
        lines::serve(self.methods.clone(), self.queue.clone(), lines, writer).await
    }

    /// Binds the unix socket at `path` (mode `0600`).
    pub fn bind_socket(&self, path: &Path) -> Result<SocketServer, DaemonError> {
        SocketServer::bind(path, self.methods.clone(), self.queue.clone())
    }

    /// The HTTP router (for serving on a listener of one's own).
    pub fn router(&self, token: Option<Token>) -> axum::Router {
        http::router(http::HttpState {
            methods: self.methods.clone(),
            queue: self.queue.clone(),
            service: self.service.clone(),
            token: token.map(Arc::new),
        })
    }

    /// Binds `addr` for HTTP; returns the bound address and the server future (ends
    /// when `shutdown` does).
    pub async fn bind_http(
        &self,
        addr: SocketAddr,
        token: Option<Token>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<
        (
            SocketAddr,
            impl std::future::Future<Output = Result<(), DaemonError>> + Send + 'static,
        ),
        DaemonError,
    > {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { addr, source })?;
        let local = listener.local_addr()?;
        let router = self.router(token);
        let fut = async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(DaemonError::Io)
        };
        Ok((local, fut))
    }

    /// Stops the client (after the current command) and queues the events still in
    /// flight.
    pub async fn shutdown(self) {
        self.service.clone().shutdown().await;
        let _ = self.stop_pump.send(());
        if let Ok(Err(e)) = self.pump.await {
            tracing::warn!(error = %e, "event pump failed");
        }
    }
}

/// A bound unix socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct SocketServer {
    listener: UnixListener,
    path: PathBuf,
    methods: Methods,
    queue: EventQueue,
}

impl SocketServer {
    fn bind(path: &Path, methods: Methods, queue: EventQueue) -> Result<Self, DaemonError> {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        let err = |source| DaemonError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        // Bind in a private directory, restrict the file, then move it into place: the
        // socket is never reachable with a wider mode.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let private = parent.join(format!(
            ".hushwire-daemon-{}",
            Token::generate().expose().get(..16).unwrap_or("tmp")
        ));
        std::fs::create_dir(&private).map_err(err)?;
        let result = (|| {
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
            let tmp = private.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = UnixListener::from_std(result.map_err(err)?).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            methods,
            queue,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients until the task is dropped; each is served on a task of its own.
    pub async fn run(&self) -> Result<(), DaemonError> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let (read, write) = stream.into_split();
            let lines = lines::spawn_reader(tokio::io::BufReader::new(read));
            let (methods, queue) = (self.methods.clone(), self.queue.clone());
            tokio::spawn(async move {
                if let Err(e) = lines::serve(methods, queue, lines, write).await {
                    tracing::debug!(error = %e, "socket client ended");
                }
            });
        }
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where [`run`] listens, reported once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listening {
    /// HTTP on this address.
    Http(SocketAddr),
    /// The unix socket at this path.
    Socket(PathBuf),
}

/// Called with each bound listener.
pub type OnListening = Box<dyn Fn(&Listening) + Send + Sync>;

/// What [`run`] serves.
#[derive(Default)]
pub struct DaemonOptions {
    /// HTTP on this address.
    pub http: Option<SocketAddr>,
    /// The HTTP token ([`http_token`]).
    pub token: Option<Token>,
    /// A unix socket at this path.
    pub socket: Option<PathBuf>,
    /// The client service's settings.
    pub service: ServiceOptions,
    /// Told where the daemon listens once bound.
    pub on_listening: Option<OnListening>,
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("http", &self.http)
            .field("token", &self.token)
            .field("socket", &self.socket)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the daemon for the profile in `profile_dir`: stdio when neither HTTP nor a socket
/// is asked for (until stdin closes), else those until `shutdown` resolves.
pub async fn run(
    profile_dir: &Path,
    mut options: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let service = std::mem::take(&mut options.service);
    let daemon = Daemon::start(profile_dir, service).await?;
    let result = if options.http.is_none() && options.socket.is_none() {
        tokio::select! {
            r = daemon.serve_stdio() => r,
            () = shutdown => Ok(()),
        }
    } else {
        serve_network(&daemon, options, shutdown).await
    };
    daemon.shutdown().await;
    result
}

async fn serve_network(
    daemon: &Daemon,
    options: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let DaemonOptions {
        http,
        token,
        socket,
        on_listening,
        ..
    } = options;
    let told = |l: Listening| {
        if let Some(f) = &on_listening {
            f(&l);
        }
    };
    let socket = socket.map(|p| daemon.bind_socket(&p)).transpose()?;
    if let Some(s) = &socket {
        told(Listening::Socket(s.path().to_path_buf()));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_fut = match http {
        Some(addr) => {
            let mut rx = stop_rx.clone();
            let (local, fut) = daemon
                .bind_http(addr, token, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await?;
            told(Listening::Http(local));
            Some(tokio::spawn(fut))
        }
        None => None,
    };
    let socket_fut = async {
        match &socket {
            Some(s) => s.run().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = shutdown => Ok(()),
        r = socket_fut => r,
    };
    let _ = stop_tx.send(true);
    if let Some(mut h) = http_fut {
        // Open event streams never end by themselves: give requests a moment, then stop.
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut h)
            .await
            .is_err()
        {
            h.abort();
        }
    }
    drop(socket);
    result
}
