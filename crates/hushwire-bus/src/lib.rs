//! The cross-node bus: lets `hushwire serve` nodes that share one store tell each other
//! that a mailbox changed, and relay ephemeral signals (typing, presence).
//!
//! # What it carries, and what it does not
//! The store (PostgreSQL when there are several nodes) is the only system of record.
//! The bus carries two kinds of *notices* over NATS core pub/sub (no JetStream, so any
//! nats-server 2.x works):
//!
//! - **wake** on `{prefix}.wake`: "these devices have new mailbox entries". A node that
//!   stored a message publishes the recipient device ids that are *not* connected to it,
//!   all of them in one notice (a fan-out to 1,000 devices is one 8 KB publish, split
//!   only past [`MAX_DEVICES_PER_NOTICE`] ids). A node holding one of those devices makes
//!   its connection re-read the mailbox from the store, exactly as when its live-push
//!   queue overflowed. A wake holds no message content: losing one delays delivery,
//!   never loses it.
//! - **ephemeral** on `{prefix}.eph`: an ephemeral signal for devices not connected to
//!   the sending node, as the server's opaque bytes (MLS ciphertext plus routing fields).
//!   Signals are never stored anywhere, so a lost one is simply gone, as on one node
//!   when a queue is full.
//!
//! Every node subscribes to both subjects (two subscriptions per node, none per
//! connection) with `no_echo`, so it does not hear its own notices, and drops the ids of
//! devices it does not hold. The wire format is in [`codec`]; anything malformed is
//! dropped.
//!
//! # Failure
//! Publishing never waits: [`Bus::wake`] and [`Bus::ephemeral`] put the encoded notice
//! into a bounded queue (dropped and counted when full) that the [`Driver`] task
//! publishes while NATS is connected and discards while it is not. The NATS client
//! connects and reconnects in the background (with back-off), and the driver logs the
//! loss of the connection once and its return once, never a credential (see
//! [`BusUrl`]). Because notices can be lost, the server re-checks its connected devices'
//! mailboxes at a bounded interval whenever a bus is configured (the poller lives in the
//! server, which knows the connections); with NATS down, delivery continues at that
//! pace and nothing is lost.
//!
//! # Single node
//! [`Bus::local`] is the default: no NATS, no queue, no task; `is_clustered()` is false
//! and the server skips all bus work, so one node runs exactly as without this crate.
//!
//! # Trust
//! Nodes trust what arrives on the subjects: run NATS on a private network with
//! authentication (`nats://user:password@host`), since any client that can publish
//! there can wake devices (harmless: a mailbox re-read) or inject ephemeral signals.

#![deny(missing_docs)]

mod addr;
pub mod codec;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

pub use addr::{BusError, BusUrl, validate_prefix};
pub use codec::{MAX_DEVICES_PER_NOTICE, MAX_SIGNAL_BYTES};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "hushwire";
/// Notices queued for publishing at most; more are dropped (and counted).
pub const OUTBOX: usize = 1024;
/// Messages the NATS client buffers per subscription before it drops (slow consumer).
const SUBSCRIPTION_CAPACITY: usize = 4096;
/// Commands the NATS client buffers towards its connection.
const CLIENT_CAPACITY: usize = 512;
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Receives notices from other nodes. Called on the driver task: must not block.
pub trait Handler: Send + Sync + 'static {
    /// These devices have new mailbox entries.
    fn wake(&self, devices: &[u64]);
    /// An ephemeral signal (opaque bytes from another node) for these devices.
    fn ephemeral(&self, devices: &[u64], signal: Bytes);
}

/// Counters of a clustered bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Connected to NATS with both subscriptions confirmed by the server.
    pub ready: bool,
    /// Notices published.
    pub published: u64,
    /// Notices dropped: queue full, NATS down, or a publish failed.
    pub dropped: u64,
    /// Notices received and handed to the [`Handler`].
    pub received: u64,
    /// Received messages refused as malformed.
    pub malformed: u64,
}

#[derive(Default)]
struct State {
    connected: AtomicBool,
    subscribed: AtomicBool,
    /// A loss (or a failed first connection) was logged; the next connection is logged.
    lost_logged: AtomicBool,
    published: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
}

impl State {
    fn stats(&self) -> BusStats {
        BusStats {
            ready: self.connected.load(Ordering::Acquire)
                && self.subscribed.load(Ordering::Acquire),
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
        }
    }

    /// Connection events from the NATS client: state, and one log line per change.
    fn on_event(&self, event: &Event, servers: &str) {
        match event {
            Event::Connected => {
                self.connected.store(true, Ordering::Release);
                if self.lost_logged.swap(false, Ordering::AcqRel) {
                    tracing::warn!(servers, "bus: NATS connection restored");
                } else {
                    tracing::info!(servers, "bus: connected to NATS");
                }
            }
            Event::Disconnected => {
                self.connected.store(false, Ordering::Release);
                if !self.lost_logged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        servers,
                        "bus: lost the NATS connection; reconnecting in the background, \
                         delivery continues by mailbox polling"
                    );
                }
            }
            Event::ClientError(e) => {
                if !self.connected.load(Ordering::Acquire)
                    && !self.lost_logged.swap(true, Ordering::AcqRel)
                {
                    tracing::warn!(
                        servers,
                        error = %e,
                        "bus: cannot reach NATS; retrying in the background, \
                         delivery continues by mailbox polling"
                    );
                } else {
                    tracing::debug!(error = %e, "bus: NATS client error");
                }
            }
            Event::ServerError(e) => tracing::warn!(error = %e, "bus: NATS server error"),
            Event::SlowConsumer(_) => {
                tracing::debug!("bus: notices dropped by the NATS client (slow consumer)");
            }
            Event::LameDuckMode | Event::Draining | Event::Closed => {
                tracing::info!(event = %event, "bus: NATS connection");
            }
        }
    }
}

/// An encoded notice waiting to be published.
struct Outgoing {
    ephemeral: bool,
    payload: Bytes,
}

/// The publishing side, cheap to clone. [`Bus::local`] does nothing.
#[derive(Clone)]
pub struct Bus {
    nats: Option<Arc<Sender>>,
}

struct Sender {
    tx: mpsc::Sender<Outgoing>,
    state: Arc<State>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("clustered", &self.is_clustered())
            .finish()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::local()
    }
}

impl Bus {
    /// One node, no NATS: every method is a no-op.
    pub fn local() -> Self {
        Self { nats: None }
    }

    /// A NATS bus at `url` (see [`BusUrl`]) under the subject `prefix`. Returns at once:
    /// nothing connects until the returned [`Driver`] runs; notices published before
    /// that wait in the queue.
    pub fn nats(url: &str, prefix: &str) -> Result<(Self, Driver), BusError> {
        let url = BusUrl::parse(url)?;
        validate_prefix(prefix)?;
        let (tx, rx) = mpsc::channel(OUTBOX);
        let state = Arc::new(State::default());
        let bus = Self {
            nats: Some(Arc::new(Sender {
                tx,
                state: Arc::clone(&state),
            })),
        };
        let driver = Driver {
            url,
            prefix: prefix.to_string(),
            rx,
            state,
        };
        Ok((bus, driver))
    }

    /// Whether notices go anywhere (false for [`Bus::local`]).
    pub fn is_clustered(&self) -> bool {
        self.nats.is_some()
    }

    /// Counters (all zero, not ready, for [`Bus::local`]).
    pub fn stats(&self) -> BusStats {
        self.nats
            .as_ref()
            .map(|s| s.state.stats())
            .unwrap_or_default()
    }

    /// Tells the other nodes that `devices` have new mailbox entries: one notice per
    /// [`MAX_DEVICES_PER_NOTICE`] ids. Never waits.
    pub fn wake(&self, devices: &[u64]) {
        let Some(sender) = &self.nats else { return };
        for chunk in devices.chunks(MAX_DEVICES_PER_NOTICE) {
            sender.queue(false, codec::encode(chunk, &[]));
        }
    }

    /// Relays an ephemeral signal (opaque bytes, at most [`MAX_SIGNAL_BYTES`]) to
    /// `devices` on the other nodes. Never waits; a signal too large is dropped.
    pub fn ephemeral(&self, devices: &[u64], signal: &[u8]) {
        let Some(sender) = &self.nats else { return };
        if signal.is_empty() || signal.len() > MAX_SIGNAL_BYTES {
            sender.state.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for chunk in devices.chunks(MAX_DEVICES_PER_NOTICE) {
            sender.queue(true, codec::encode(chunk, signal));
        }
    }
}

impl Sender {
    fn queue(&self, ephemeral: bool, payload: Bytes) {
        if self.tx.try_send(Outgoing { ephemeral, payload }).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The task side of a NATS bus: connects, publishes the queue, hands received notices
/// to a [`Handler`]. Run it once with [`Driver::run`].
pub struct Driver {
    url: BusUrl,
    prefix: String,
    rx: mpsc::Receiver<Outgoing>,
    state: Arc<State>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Runs until `shutdown` completes (or the NATS client gives up, which it does not
    /// with the options used here). NATS being unreachable is not an error: the client
    /// keeps retrying in the background and notices are dropped meanwhile.
    pub async fn run(self, handler: impl Handler, shutdown: impl Future<Output = ()>) {
        // The NATS client builds its rustls config from the process default provider;
        // make it aws-lc-rs, as the server's (idempotent: keeps one already installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let Driver {
            url,
            prefix,
            mut rx,
            state,
        } = self;
        let servers = url.redacted();
        let mut options = ConnectOptions::new()
            .name("hushwire-node")
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // The first attempt at once, then 200 ms doubling up to the maximum.
                if attempts <= 1 {
                    return Duration::ZERO;
                }
                let ms = 100u64.saturating_mul(1 << attempts.min(7));
                Duration::from_millis(ms).min(MAX_RECONNECT_DELAY)
            })
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .client_capacity(CLIENT_CAPACITY)
            .event_callback({
                let state = Arc::clone(&state);
                let servers = servers.clone();
                move |event| {
                    state.on_event(&event, &servers);
                    std::future::ready(())
                }
            });
        match &url.credentials {
            Some(addr::Credentials::UserPassword(u, p)) => {
                options = options.user_and_password(u.to_string(), p.to_string());
            }
            Some(addr::Credentials::Token(t)) => options = options.token(t.to_string()),
            None => {}
        }
        if url.servers.iter().any(|u| u.scheme() == "tls") {
            options = options.require_tls(true);
        }
        let mut addrs = Vec::with_capacity(url.servers.len());
        for u in &url.servers {
            match ServerAddr::from_url(u.clone()) {
                Ok(a) => addrs.push(a),
                Err(e) => {
                    tracing::error!(servers, error = %e, "bus: unusable NATS address; the bus is off");
                    return;
                }
            }
        }
        let client = match options.connect(addrs).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(servers, error = %e, "bus: cannot start the NATS client; the bus is off");
                return;
            }
        };
        let wake_subject = Subject::from(format!("{prefix}.wake"));
        let eph_subject = Subject::from(format!("{prefix}.eph"));
        let subs = async {
            let w = client.subscribe(wake_subject.clone()).await?;
            let e = client.subscribe(eph_subject.clone()).await?;
            Ok::<_, async_nats::SubscribeError>((w, e))
        };
        let (mut wakes, mut signals) = match subs.await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "bus: cannot subscribe; the bus is off");
                return;
            }
        };
        // The server has the subscriptions once a flush (PING/PONG) returns; until the
        // first connection this waits in the background.
        let mut confirmed = Box::pin(client.flush());
        let mut confirming = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = &mut confirmed, if confirming => {
                    confirming = false;
                    match r {
                        Ok(()) => state.subscribed.store(true, Ordering::Release),
                        Err(e) => tracing::debug!(error = %e, "bus: flush failed"),
                    }
                }
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    let connected = client.connection_state() == async_nats::connection::State::Connected;
                    if !connected {
                        // Stale by the time NATS is back; polling covers it.
                        state.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let subject = if out.ephemeral { eph_subject.clone() } else { wake_subject.clone() };
                    match client.publish(subject, out.payload).await {
                        Ok(()) => state.published.fetch_add(1, Ordering::Relaxed),
                        Err(_) => state.dropped.fetch_add(1, Ordering::Relaxed),
                    };
                }
                msg = wakes.next() => {
                    let Some(msg) = msg else { break };
                    match codec::decode_wake(&msg.payload) {
                        Ok(devices) => {
                            state.received.fetch_add(1, Ordering::Relaxed);
                            handler.wake(&devices);
                        }
                        Err(e) => {
                            state.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "bus: dropped a malformed wake notice");
                        }
                    }
                }
                msg = signals.next() => {
                    let Some(msg) = msg else { break };
                    match codec::decode_ephemeral(&msg.payload) {
                        Ok((devices, signal)) => {
                            state.received.fetch_add(1, Ordering::Relaxed);
                            handler.ephemeral(&devices, signal);
                        }
                        Err(e) => {
                            state.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "bus: dropped a malformed ephemeral notice");
                        }
                    }
                }
            }
        }
        state.connected.store(false, Ordering::Release);
        state.subscribed.store(false, Ordering::Release);
        drop(confirmed);
        if client.connection_state() == async_nats::connection::State::Connected {
            // Hand what was published to the server before the client goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        }
        tracing::debug!("bus: stopped");
    }
}
