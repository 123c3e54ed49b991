//! The sync engine: a [`Profile`] plus the connection to its server.
//!
//! - [`Client::flush_outbox`] drives [`Profile::next_action`] until the outbox is idle:
//!   `NeedPeer` → fetch the account and claim key packages, `Submit` → send it on the
//!   WebSocket and feed the `submit_result` back, `AwaitIncoming` → keep receiving.
//! - [`Client::receive`] flushes the outbox, processes every pending envelope, waits for
//!   live pushes, and acknowledges cumulatively — only what the profile has stored.
//! - Transient failures (unreachable, dropped connection, 5xx/429) reconnect with
//!   exponential backoff and jitter while the call's deadline allows. Retrying is safe:
//!   a `Submit` keeps its message id (the server answers a re-submission with
//!   `duplicate = true`), and the profile skips envelopes it has already stored.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use hushwire_e2e::{Action, E2eError, Event, Identity, Profile, Suite};
use hushwire_proto::limits::{MAX_API_BODY_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD};
use hushwire_proto::wire::{self, ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame};
use rand::Rng;
use tokio::time::Instant;

use crate::api::{Signer, signing_time_ms, unix_ms};
use crate::connection::frame_name;
use crate::{ApiClient, ApiRequest, ClientError, Connection, Endpoint};

pub mod backup;
mod devices;
mod directory;
mod features;
mod group;
mod media;

pub use devices::{Joined, LinkReport, LinkRequest, PendingLink, join_by_link};

pub use features::PRESENCE_WAIT;
pub use media::{Direction, ProgressFn, SendFileOptions, Transfer};

/// Both suites every device keeps key packages for.
pub const SUITES: [Suite; 2] = [Suite::XWing, Suite::Classic];

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP + TLS + WebSocket handshake timeout.
    pub connect_timeout: Duration,
    /// Consecutive failed attempts of one step before giving up (the deadline also ends
    /// retrying).
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt (with jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    /// Largest backoff delay.
    pub max_backoff: Duration,
    /// Top up one-time key packages to this many per suite...
    pub key_package_target: u32,
    /// ...when fewer than this many are left on the server.
    pub key_package_low_water: u32,
    /// Acknowledge after this many stored envelopes even if more are coming.
    pub ack_batch: usize,
    /// Send a keep-alive ping after this long without traffic while waiting.
    pub keepalive: Duration,
    /// How the profile's database key is unlocked (and protected, for a new profile).
    pub unlock: hushwire_vault::Unlock,
}

impl ClientOptions {
    /// These options with the profile unlocked by `passphrase` (scripts and tests; front
    /// ends usually keep [`Unlock::Auto`](hushwire_vault::Unlock::Auto)).
    pub fn with_passphrase(mut self, passphrase: &str) -> Self {
        self.unlock = hushwire_vault::Unlock::passphrase(passphrase);
        self
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            key_package_target: 20,
            key_package_low_water: 5,
            ack_batch: 64,
            keepalive: Duration::from_secs(25),
            unlock: hushwire_vault::Unlock::Auto,
        }
    }
}

/// What one [`Client::receive`] or [`Client::sync`] did.
#[derive(Debug, Default)]
pub struct ReceiveReport {
    /// Envelopes newly processed and stored.
    pub stored: u64,
    /// The highest seq acknowledged to the server.
    pub acked_up_to: u64,
    /// Outbox items still pending afterwards.
    pub outbox_left: usize,
    /// Why the outbox could not be flushed, if it could not (receiving went on anyway).
    pub outbox_error: Option<ClientError>,
    /// The periodic check of this account's own key directory entry
    /// ([`Client::check_directory`]) failed: [`ClientError::KeyTransparency`] when the
    /// server published a key for this account that it did not create. Receiving went
    /// on; the check runs again on every receive until it passes.
    pub directory_error: Option<ClientError>,
}

/// A [`Signer`] backed by a profile's device key.
pub struct ProfileSigner<'a> {
    profile: &'a Profile,
    identity: &'a Identity,
}

impl<'a> ProfileSigner<'a> {
    /// Fails with [`ClientError::NotRegistered`] before registration completed.
    pub fn new(profile: &'a Profile) -> Result<Self, ClientError> {
        let identity = profile.identity().ok_or(ClientError::NotRegistered)?;
        Ok(Self { profile, identity })
    }
}

impl Signer for ProfileSigner<'_> {
    fn handle(&self) -> &str {
        &self.identity.handle
    }
    fn device_id(&self) -> u32 {
        self.identity.device_id
    }
    fn sign(&self, payload: &[u8]) -> Result<[u8; 64], ClientError> {
        Ok(self.profile.sign(payload)?)
    }
}

/// The live WebSocket and its acknowledgement state.
struct Live {
    conn: Connection,
    /// The server sent `drained` on this connection.
    drained: bool,
    /// Highest seq the profile has durably stored (or had stored before).
    stored_up_to: u64,
    /// Highest seq acknowledged on this connection.
    acked_up_to: u64,
    /// Stored but not yet acknowledged envelopes.
    unacked: usize,
    /// A delivery was left unprocessed (deferred mode): nothing later on this
    /// connection may be processed, or the skipped one would be lost.
    deferred: bool,
    /// A frame was taken off this connection and its processing did not finish (the
    /// caller's future was dropped mid-way, e.g. a live wait cancelled for a command
    /// while fetching a new member's account for a commit). The server does not send it
    /// again on this connection, so the next call reconnects: what is unacknowledged is
    /// delivered again, and the profile skips what it already stored.
    interrupted: bool,
    last_traffic: Instant,
    /// This silence's keep-alive interval: `keepalive` jittered by ±30%, drawn again
    /// after every ping so heartbeats have no fixed period an observer could match.
    keepalive_due: Duration,
}

/// `keepalive` scaled by a random factor in [0.7, 1.3].
fn jittered(keepalive: Duration) -> Duration {
    keepalive.mul_f64(rand::thread_rng().gen_range(0.7..=1.3))
}

/// What one incoming frame turned out to be.
enum Incoming {
    Envelope,
    Drained,
    SubmitResult(u64, wire::SubmitResult),
    /// The answer to an ephemeral signal, a block or a retraction.
    Done(u64, wire::Done),
    Other,
}

/// A registered profile and its server connection: the sync engine.
pub struct Client {
    profile: Profile,
    api: ApiClient,
    endpoint: Endpoint,
    options: ClientOptions,
    live: Option<Live>,
    next_request_id: u64,
    events: VecDeque<Event>,
    stored_this_session: u64,
    key_packages_checked: bool,
    defer_deliveries: bool,
    media: media::MediaState,
    /// Sending receipts while waiting failed (not for a network reason): wait until the
    /// end of `receive` to try again.
    receipts_stuck: bool,
    /// When this session last re-read the account's device list (changes made by other
    /// devices that no commit announces, e.g. a rename, show up within
    /// `OWN_DEVICES_EVERY`).
    own_devices_checked: Option<Instant>,
    /// Contacts whose account (and key directory entry) was fetched this session before
    /// sending to them.
    peers_checked: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "identity",
                &self.profile.identity().map(|i| (&i.handle, i.device_id)),
            )
            .field("server", &self.endpoint.base_url())
            .field("connected", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

/// Outbox errors that also end a `receive`: the network is down, the server's key is
/// wrong, or a contact's identity changed (the user must decide).
fn stops_receiving(e: &ClientError) -> bool {
    e.is_network()
        || matches!(
            e,
            ClientError::PinMismatch { .. }
                | ClientError::UntrustedCertificate(_)
                | ClientError::E2e(E2eError::IdentityChanged { .. })
        )
}

/// How often a long-running session re-reads its account's device list.
const OWN_DEVICES_EVERY: Duration = Duration::from_secs(300);

fn deadline_after(d: Duration) -> Instant {
    Instant::now() + d
}

impl Client {
    /// Opens the profile in `dir`; it must be registered. Connections use the
    /// profile's routes (`routes.json`, see [`RouteBook`](crate::RouteBook)).
    pub fn open(dir: &Path, options: ClientOptions) -> Result<Self, ClientError> {
        let routes = crate::RouteBook::load(dir)?;
        let profile = crate::open_profile(dir, &options.unlock)?;
        let mut client = Self::from_profile(profile, options)?;
        client.set_routes(routes)?;
        client.set_media_dir(dir.join("media"));
        Ok(client)
    }

    /// Sends every later connection over `routes` (direct, relays, proxy).
    pub fn set_routes(&mut self, routes: crate::RouteBook) -> Result<(), ClientError> {
        self.live = None;
        self.endpoint = self.endpoint.clone().with_routes(routes);
        self.api = ApiClient::new(self.endpoint.clone())?;
        Ok(())
    }

    /// Wraps an open, registered profile, connecting to the server it registered with.
    pub fn from_profile(profile: Profile, options: ClientOptions) -> Result<Self, ClientError> {
        let identity = profile.identity().ok_or(ClientError::NotRegistered)?;
        let endpoint = Endpoint::new(&identity.server_url, identity.pin.as_deref())?
            .with_connect_timeout(options.connect_timeout);
        let api = ApiClient::new(endpoint.clone())?;
        Ok(Self {
            profile,
            api,
            endpoint,
            options,
            live: None,
            next_request_id: 1,
            events: VecDeque::new(),
            stored_this_session: 0,
            key_packages_checked: false,
            peers_checked: std::collections::HashSet::new(),
            defer_deliveries: false,
            media: media::MediaState::default(),
            receipts_stuck: false,
            own_devices_checked: None,
        })
    }

    /// The profile (history, conversations...).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The profile, mutably (for local-only operations).
    pub fn profile_mut(&mut self) -> &mut Profile {
        &mut self.profile
    }

    /// The registered identity.
    pub fn identity(&self) -> Result<&Identity, ClientError> {
        self.profile.identity().ok_or(ClientError::NotRegistered)
    }

    /// The server endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stores `text` for `peer` in the history and the outbox (no network). Returns the
    /// message id, which stays the same across every retry.
    pub fn queue_text(&mut self, peer: &str, text: &str) -> Result<String, ClientError> {
        if !hushwire_e2e::group::is_group_name(peer) {
            hushwire_proto::identity::validate_handle(peer)?;
        }
        Ok(self.profile.queue_text(peer, text, unix_ms())?)
    }

    /// Stores a volunteer relay's `link` for `peer` (a contact or a group chat) in the
    /// history and the outbox, like a text: it goes out end-to-end encrypted with the next
    /// flush. The receiver sees an [`Event::RelayLink`](hushwire_e2e::Event::RelayLink)
    /// and adds it only if its user accepts ([`crate::RouteBook::add_relay`]).
    pub fn queue_relay_link(&mut self, peer: &str, link: &str) -> Result<String, ClientError> {
        if !hushwire_e2e::group::is_group_name(peer) {
            hushwire_proto::identity::validate_handle(peer)?;
        }
        Ok(self.profile.queue_relay_link(peer, link, unix_ms())?)
    }

    /// With `defer`, incoming deliveries that arrive while sending are left on the server
    /// (neither stored nor acknowledged) for the next `receive`, unless the outbox needs
    /// them to make progress. This is what a one-shot `send` wants, so that a later
    /// `receive` shows those messages.
    pub fn set_defer_deliveries(&mut self, defer: bool) {
        self.defer_deliveries = defer;
    }

    /// Whether a conversation with `peer` exists locally.
    pub fn has_conversation(&self, peer: &str) -> Result<bool, ClientError> {
        Ok(self.profile.conversations()?.iter().any(|c| c.name == peer))
    }

    /// Fetches an account (signed `GET /v1/accounts/{handle}`); 404 is
    /// [`ClientError::UnknownHandle`].
    /// The account is checked against the server's key directory first
    /// ([`ClientError::KeyTransparency`] when the directory contradicts it).
    pub async fn fetch_account(&self, handle: &str) -> Result<wire::AccountInfo, ClientError> {
        let req = self.signed(ApiRequest::account(handle))?;
        let account = match self.api.call::<wire::AccountInfo>(req).await {
            Err(ClientError::Api {
                status: 404,
                code: ErrorCode::NotFound | ErrorCode::Unspecified,
                ..
            }) => return Err(ClientError::UnknownHandle(handle.to_string())),
            other => other?,
        };
        self.verify_accounts(std::slice::from_ref(&account)).await?;
        Ok(account)
    }

    fn signed(&self, req: ApiRequest) -> Result<ApiRequest, ClientError> {
        let signer = ProfileSigner::new(&self.profile)?;
        req.sign(&self.endpoint, &signer, signing_time_ms())
    }

    // ------------------------------------------------------------------ connection

    async fn connect(&mut self) -> Result<(), ClientError> {
        let pending = Connection::open(&self.endpoint).await?;
        let auth = {
            let signer = ProfileSigner::new(&self.profile)?;
            pending.auth_response(&signer)?
        };
        let conn = pending
            .authenticate(auth, self.options.connect_timeout)
            .await?;
        let stored_up_to = self.profile.last_received_seq()?;
        tracing::debug!(server = %self.endpoint.base_url(), "connected");
        self.live = Some(Live {
            conn,
            drained: false,
            stored_up_to,
            acked_up_to: 0,
            unacked: 0,
            deferred: false,
            interrupted: false,
            last_traffic: Instant::now(),
            keepalive_due: jittered(self.options.keepalive),
        });
        Ok(())
    }

    async fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if self.live.as_ref().is_some_and(|l| l.interrupted) {
            tracing::debug!("a frame's processing was interrupted; reconnecting");
            self.drop_connection();
        }
        if self.live.is_none() {
            self.connect().await?;
        }
        Ok(())
    }

    /// Acknowledges what is stored and closes the WebSocket normally; the next call
    /// reconnects.
    pub async fn disconnect(&mut self) {
        if self.flush_ack().await.is_ok()
            && let Some(live) = self.live.take()
        {
            live.conn.close().await;
        }
        self.live = None;
    }

    fn drop_connection(&mut self) {
        // Dropping the stream closes the TCP connection; unacknowledged entries are
        // delivered again next time.
        self.live = None;
    }

    /// Acknowledges everything stored, if anything is unacknowledged.
    async fn flush_ack(&mut self) -> Result<(), ClientError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        if live.stored_up_to > live.acked_up_to {
            let up_to = live.stored_up_to;
            live.conn
                .send(&ClientFrame {
                    request_id: 0,
                    body: Some(client_frame::Body::Ack(wire::Ack { up_to_seq: up_to })),
                })
                .await?;
            live.acked_up_to = up_to;
            live.unacked = 0;
            tracing::debug!(up_to, "acknowledged");
        }
        Ok(())
    }

    /// The next frame, or `None` at `until`. Pending acks are sent before blocking, and
    /// a keep-alive ping after a long silence.
    async fn next_frame(&mut self, until: Instant) -> Result<Option<ServerFrame>, ClientError> {
        loop {
            let keepalive = self.options.keepalive;
            let live = self
                .live
                .as_mut()
                .ok_or_else(|| ClientError::Protocol("not connected".into()))?;
            let has_unacked = live.stored_up_to > live.acked_up_to;
            let ping_at = live.last_traffic + live.keepalive_due;
            // Wait briefly for a frame already on its way, so acks batch up; then ack
            // and wait for real.
            let slice_end = if has_unacked {
                (Instant::now() + Duration::from_millis(15)).min(until)
            } else {
                until.min(ping_at)
            };
            match tokio::time::timeout_at(slice_end, live.conn.recv()).await {
                Ok(frame) => {
                    live.last_traffic = Instant::now();
                    return frame.map(Some);
                }
                Err(_) => {
                    if has_unacked {
                        self.flush_ack().await?;
                    } else if Instant::now() >= until {
                        return Ok(None);
                    } else if Instant::now() >= ping_at {
                        live.conn
                            .send(&ClientFrame {
                                request_id: 0,
                                body: Some(client_frame::Body::Ping(wire::Ping {
                                    client_time_ms: unix_ms(),
                                })),
                            })
                            .await?;
                        live.last_traffic = Instant::now();
                        live.keepalive_due = jittered(keepalive);
                    }
                    if Instant::now() >= until {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Handles one frame: envelopes are stored through the profile.
    async fn dispatch(&mut self, frame: ServerFrame) -> Result<Incoming, ClientError> {
        // Until this returns (an error too), the frame is nowhere else: see
        // `Live::interrupted`.
        if let Some(live) = self.live.as_mut() {
            live.interrupted = true;
        }
        let result = self.dispatch_frame(frame).await;
        if let Some(live) = self.live.as_mut() {
            live.interrupted = false;
        }
        result
    }

    async fn dispatch_frame(&mut self, frame: ServerFrame) -> Result<Incoming, ClientError> {
        match frame.body {
            Some(server_frame::Body::Deliver(envelope)) => {
                self.store_envelope(&envelope).await?;
                Ok(Incoming::Envelope)
            }
            Some(server_frame::Body::Drained(d)) => {
                if let Some(live) = self.live.as_mut() {
                    live.drained = true;
                }
                tracing::debug!(last_seq = d.last_seq, "mailbox drained");
                self.flush_ack().await?;
                Ok(Incoming::Drained)
            }
            Some(server_frame::Body::SubmitResult(result)) => {
                Ok(Incoming::SubmitResult(frame.request_id, result))
            }
            Some(server_frame::Body::Pong(_)) => Ok(Incoming::Other),
            Some(server_frame::Body::Ephemeral(signal)) => {
                self.on_ephemeral(signal).await?;
                Ok(Incoming::Other)
            }
            Some(server_frame::Body::Done(done)) => Ok(Incoming::Done(frame.request_id, done)),
            Some(server_frame::Body::Error(e)) => Err(ClientError::Protocol(format!(
                "server error frame ({:?}): {}",
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                e.message
            ))),
            other => Err(ClientError::Protocol(format!(
                "unexpected {} frame",
                frame_name(other.as_ref())
            ))),
        }
    }

    /// Stores one envelope (fetching unknown accounts as needed), then counts it for the
    /// next acknowledgement.
    async fn store_envelope(&mut self, envelope: &wire::Envelope) -> Result<(), ClientError> {
        if let Some(live) = self.live.as_mut()
            && (self.defer_deliveries || live.deferred)
        {
            // Not stored, not acknowledged: the server delivers it again next time.
            live.deferred = true;
            return Ok(());
        }
        let already = self
            .live
            .as_ref()
            .is_some_and(|l| envelope.seq <= l.stored_up_to);
        if !already {
            // Each account is fetched at most once per envelope: asking again for one
            // already given means fetching does not help.
            let mut fetched = std::collections::HashSet::new();
            let stored = loop {
                let needed = match self.profile.receive(envelope, unix_ms()) {
                    Ok(events) => {
                        self.stored_this_session += 1;
                        break events;
                    }
                    Err(E2eError::NeedAccount(handle)) => vec![handle],
                    Err(E2eError::NeedAccounts(handles)) => handles,
                    Err(e) => return Err(e.into()),
                };
                if needed.iter().any(|h| fetched.contains(h)) {
                    return Err(ClientError::Protocol(format!(
                        "the server's account for {needed:?} does not authenticate the message"
                    )));
                }
                let fetched_accounts = if let [handle] = needed.as_slice() {
                    self.fetch_account(handle).await.map(|a| vec![a])
                } else {
                    self.fetch_accounts(&needed).await
                };
                let accounts = match fetched_accounts {
                    // The directory contradicts the sender's account: nothing of it is
                    // used; the mailbox moves on.
                    Err(ClientError::KeyTransparency { handle, reason }) => {
                        break self.profile.skip_envelope(
                            envelope,
                            Some(handle.clone()),
                            &format!("from {handle}: key transparency check failed: {reason}"),
                            unix_ms(),
                        )?;
                    }
                    other => other?,
                };
                let mut changed = None;
                for account in &accounts {
                    match self.profile.learn_account(account) {
                        Ok(()) => {}
                        Err(E2eError::IdentityChanged { handle }) => changed = Some(handle),
                        Err(e) => return Err(e.into()),
                    }
                }
                if let Some(handle) = changed {
                    // Not the key pinned for this contact: nothing of it is accepted until
                    // the user trusts it; the mailbox moves on.
                    self.events.push_back(Event::IdentityChanged {
                        handle: handle.clone(),
                    });
                    break self.profile.skip_envelope(
                        envelope,
                        Some(handle.clone()),
                        &format!(
                            "from {handle}, whose account key changed: compare safety numbers                              (hushwire verify {handle}), then hushwire trust {handle}"
                        ),
                        unix_ms(),
                    )?;
                }
                fetched.extend(needed);
            };
            // Attachments are downloaded here when auto-download is on.
            self.deliver_events(stored).await?;
        }
        let batch = self.options.ack_batch;
        let full = match self.live.as_mut() {
            Some(live) => {
                live.stored_up_to = live.stored_up_to.max(envelope.seq);
                live.unacked += 1;
                live.unacked >= batch
            }
            None => false,
        };
        if full {
            self.flush_ack().await?;
        }
        Ok(())
    }

    fn emit(&mut self, on_event: &mut (dyn FnMut(Event) + Send)) {
        while let Some(e) = self.events.pop_front() {
            on_event(e);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.options.max_backoff);
        // "Equal jitter": half fixed, half random, so retries of many clients spread out.
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(0);
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
    }

    /// After a failed step: whether to retry (after sleeping) or give up.
    async fn should_retry(
        &mut self,
        err: &ClientError,
        attempt: &mut u32,
        deadline: Instant,
    ) -> bool {
        self.retry_within(err, attempt, deadline, Some(self.options.max_attempts))
            .await
    }

    /// [`Client::should_retry`] with an attempt limit, or none: the live wait of
    /// `receive` keeps reconnecting until its end (a server restart or a failover that
    /// outlasts a few attempts must not end it), backing off up to `max_backoff`.
    async fn retry_within(
        &mut self,
        err: &ClientError,
        attempt: &mut u32,
        deadline: Instant,
        max_attempts: Option<u32>,
    ) -> bool {
        self.drop_connection();
        if !err.is_transient() {
            return false;
        }
        *attempt += 1;
        if max_attempts.is_some_and(|max| *attempt >= max) {
            return false;
        }
        let delay = self.backoff(*attempt - 1);
        if Instant::now() + delay >= deadline {
            return false;
        }
        tracing::info!(error = %err, attempt = *attempt, ?delay, "retrying");
        tokio::time::sleep(delay).await;
        true
    }

    // ------------------------------------------------------------------ outbox

    /// Sends every outbox item, within `timeout`. Events (sent confirmations, messages
    /// received meanwhile) go to `on_event`. On error the unsent items stay queued with
    /// their ids.
    pub async fn flush_outbox(
        &mut self,
        timeout: Duration,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let deadline = deadline_after(timeout);
        self.profile.sweep_expired(unix_ms())?;
        self.check_peers().await?;
        let mut attempt = 0;
        loop {
            let step = self.outbox_step(deadline).await;
            self.emit(on_event);
            match step {
                Ok(true) => return Ok(()),
                Ok(false) => attempt = 0,
                Err(e) => {
                    if !self.should_retry(&e, &mut attempt, deadline).await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Before the first send to a contact in this session, fetches its account (checked
    /// against the key directory) and feeds it to the profile: a changed account key
    /// (say, the handle was released and registered again) stops sending with
    /// [`E2eError::IdentityChanged`] until the user trusts it, instead of going on in a
    /// conversation with devices that are gone.
    async fn check_peers(&mut self) -> Result<(), ClientError> {
        let peers: Vec<String> = self
            .profile
            .outbox_peers()?
            .into_iter()
            .filter(|p| !self.peers_checked.contains(p))
            .collect();
        for peer in peers {
            let account = match self.fetch_account(&peer).await {
                // New conversations fail their texts when they start.
                Err(ClientError::UnknownHandle(_)) => continue,
                other => other?,
            };
            match self.profile.learn_account(&account) {
                Ok(()) => {}
                Err(E2eError::IdentityChanged { handle }) => {
                    self.events.push_back(Event::IdentityChanged {
                        handle: handle.clone(),
                    });
                    return Err(E2eError::IdentityChanged { handle }.into());
                }
                Err(e) => return Err(e.into()),
            }
            self.peers_checked.insert(peer);
        }
        Ok(())
    }

    /// The server has no account `handle`: the texts queued for it can never go out.
    /// They are marked failed and leave the outbox (so the items behind them are not
    /// blocked), and the caller gets [`ClientError::UnknownHandle`].
    fn fail_start(&mut self, handle: String) -> ClientError {
        match self
            .profile
            .fail_conversation_start(&handle, "no account has this handle")
        {
            Ok(events) => self.events.extend(events),
            Err(e) => return e.into(),
        }
        ClientError::UnknownHandle(handle)
    }

    /// One action of the outbox. `Ok(true)` once idle.
    async fn outbox_step(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout("sending the outbox".into()));
        }
        // Blocks, retractions and blob deletions go first (features.rs).
        if self.server_request_step(deadline).await? {
            return Ok(false);
        }
        match self.profile.next_action(unix_ms())? {
            Action::Idle => Ok(true),
            Action::NeedPeer { handle, suite } => {
                self.start_conversation(&handle, suite).await?;
                Ok(false)
            }
            Action::Submit(submit) => {
                self.ensure_connected().await?;
                let result = self.submit(&submit, deadline).await?;
                let events = self
                    .profile
                    .submit_result(&submit.message_id, &result, unix_ms())?;
                self.events.extend(events);
                Ok(false)
            }
            Action::NeedMembers {
                conversation,
                handles,
                suite,
            } => {
                self.provide_members(&conversation, &handles, suite).await?;
                Ok(false)
            }
            Action::NeedGroupInfo {
                conversation,
                group_id,
            } => {
                self.provide_group_info(&conversation, &group_id).await?;
                Ok(false)
            }
            Action::AwaitIncoming => {
                // Progress needs incoming commits: process deliveries from now on, on a
                // connection that has skipped none.
                self.defer_deliveries = false;
                if self.live.as_ref().is_some_and(|l| l.deferred) {
                    self.drop_connection();
                }
                self.ensure_connected().await?;
                match self.next_frame(deadline).await? {
                    Some(frame) => {
                        self.dispatch(frame).await?;
                        Ok(false)
                    }
                    None => Err(ClientError::Timeout(
                        "the outbox waits for a commit from another member".into(),
                    )),
                }
            }
        }
    }

    /// Starts a 1:1 conversation with `handle`: fetches its account, claims a key
    /// package per device and lets the profile create the group (its creating commit
    /// goes to the head of the outbox). An unknown handle fails its queued texts.
    pub(crate) async fn start_conversation(
        &mut self,
        handle: &str,
        suite: Suite,
    ) -> Result<(), ClientError> {
        let handle = handle.to_string();
        let account = match self.fetch_account(&handle).await {
            Err(ClientError::UnknownHandle(h)) => return Err(self.fail_start(h)),
            other => other?,
        };
        let claim = wire::ClaimKeyPackages {
            handle: handle.clone(),
            ciphersuite: u32::from(suite.code()),
        };
        let req = self.signed(ApiRequest::claim_key_packages(&claim))?;
        let claimed = match self.api.call::<wire::ClaimedKeyPackages>(req).await {
            Err(ClientError::Api {
                code: ErrorCode::NoKeyPackages,
                ..
            }) => {
                return Err(E2eError::NoKeyPackages(handle).into());
            }
            Err(ClientError::Api {
                status: 404,
                code: ErrorCode::NotFound,
                ..
            }) => return Err(self.fail_start(handle)),
            other => other?,
        };
        // This account's other devices join the conversation too (multi-device).
        let own = self.own_key_packages(suite).await?;
        self.profile.provide_peer_with_own_devices(
            &account,
            &claimed.key_packages,
            &own,
            unix_ms(),
        )?;
        Ok(())
    }

    /// One key package of each of this account's other devices for `suite` (none when
    /// this is its only device); our own account is learned first.
    async fn own_key_packages(
        &mut self,
        suite: Suite,
    ) -> Result<Vec<wire::ClaimedKeyPackage>, ClientError> {
        let me = self.identity()?.clone();
        let account = self.fetch_account(&me.handle).await?;
        self.profile.learn_account(&account)?;
        let others = account
            .devices
            .iter()
            .any(|d| d.device_id != me.device_id && !d.revoked);
        if !others {
            return Ok(Vec::new());
        }
        let claim = wire::ClaimKeyPackages {
            handle: me.handle.clone(),
            ciphersuite: u32::from(suite.code()),
        };
        let req = self.signed(ApiRequest::claim_key_packages(&claim))?;
        match self.api.call::<wire::ClaimedKeyPackages>(req).await {
            Ok(c) => Ok(c
                .key_packages
                .into_iter()
                .filter(|k| k.device_id != me.device_id)
                .collect()),
            Err(ClientError::Api {
                code: ErrorCode::NoKeyPackages | ErrorCode::NotFound,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Sends a `Submit` and waits for its result, storing deliveries meanwhile.
    async fn submit(
        &mut self,
        submit: &wire::Submit,
        deadline: Instant,
    ) -> Result<wire::SubmitResult, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("not connected".into()))?;
        live.conn
            .send(&ClientFrame {
                request_id,
                body: Some(client_frame::Body::Submit(submit.clone())),
            })
            .await?;
        loop {
            let Some(frame) = self.next_frame(deadline).await? else {
                return Err(ClientError::Timeout(
                    "waiting for the server to accept".into(),
                ));
            };
            match self.dispatch(frame).await? {
                Incoming::SubmitResult(id, result) if id == request_id => {
                    // A full disk or a rate limit on the server is no verdict on the
                    // message: it stays at the head of the outbox (same message id) for
                    // a later retry.
                    if let Some(wire::submit_result::Outcome::Rejected(e)) = &result.outcome {
                        match e.code() {
                            ErrorCode::StorageFull => {
                                return Err(ClientError::StorageFull(e.message.clone()));
                            }
                            ErrorCode::RateLimited => {
                                return Err(ClientError::RateLimited(e.message.clone()));
                            }
                            _ => {}
                        }
                    }
                    return Ok(result);
                }
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------------ receiving

    /// Flushes the outbox, stores every pending envelope, then keeps receiving live pushes
    /// for `wait`. Every stored envelope is acknowledged before returning. `timeout` bounds
    /// the connection work before the wait.
    pub async fn receive(
        &mut self,
        wait: Duration,
        timeout: Duration,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<ReceiveReport, ClientError> {
        let mut report = ReceiveReport::default();
        self.stored_this_session = 0;
        self.defer_deliveries = false;
        self.receipts_stuck = false;
        // Disappearing messages whose time is up are deleted first.
        self.profile.sweep_expired(unix_ms())?;
        // Attachments left pending by an earlier run (interrupted, offline) first.
        self.download_pending().await?;
        self.emit(on_event);
        if self.live.is_some() {
            // `drained` is only meaningful right after login: start on a fresh connection
            // so that everything the server holds now is fetched before returning.
            let _ = self.flush_ack().await;
            self.drop_connection();
        }
        // A failing outbox (say, an unknown peer at its head) must not stop receiving.
        if let Err(e) = self.flush_outbox(timeout, on_event).await {
            if stops_receiving(&e) {
                return Err(e);
            }
            tracing::warn!(error = %e, "outbox not sent");
            report.outbox_error = Some(e);
        }
        let deadline = deadline_after(timeout);
        self.drain(deadline, on_event).await?;
        // Everything the server holds is processed: a group still waiting for an epoch no
        // commit will bring is stuck (its state fell behind or broke) and rejoins.
        let rejoining = !self.rejoin_stuck_groups()?.is_empty();
        if self.profile.outbox_len()? > 0 && (rejoining || report.outbox_error.is_none()) {
            // Processing may have queued something (e.g. after a stale epoch).
            if let Err(e) = self.flush_outbox(timeout, on_event).await {
                if stops_receiving(&e) {
                    return Err(e);
                }
                report.outbox_error = Some(e);
            }
        }
        if !self.key_packages_checked {
            self.key_packages_checked = true;
            if let Err(e) = self.top_up_key_packages().await {
                tracing::warn!(error = %e, "key package top-up failed");
            }
        }
        if self.own_directory_check_due()?
            && let Err(e) = self.check_directory().await
        {
            tracing::warn!(error = %e, "key directory check failed");
            report.directory_error = Some(e);
        }
        let until = deadline_after(wait);
        if !wait.is_zero() {
            // Online for the wait: tell the contacts the setting allows (and ask theirs).
            if let Err(e) = self.announce_presence(true, timeout).await {
                tracing::warn!(error = %e, "presence not announced");
            }
            self.emit(on_event);
        }
        let mut attempt = 0;
        loop {
            let step = self.wait_step(until).await;
            self.emit(on_event);
            match step {
                Ok(true) => break,
                Ok(false) => attempt = 0,
                Err(e) => {
                    if !self.retry_within(&e, &mut attempt, until, None).await {
                        if Instant::now() >= until && e.is_transient() {
                            break;
                        }
                        // Still unreachable as the wait ends, or a lasting error.
                        return Err(e);
                    }
                }
            }
        }
        if !wait.is_zero() {
            if let Err(e) = self.announce_presence(false, timeout).await {
                tracing::warn!(error = %e, "going offline not announced");
            }
            self.emit(on_event);
        }
        if self.profile.outbox_len()? > 0 && report.outbox_error.is_none() {
            // Receipts queued during the wait.
            if let Err(e) = self.flush_outbox(timeout, on_event).await {
                report.outbox_error = Some(e);
            }
        }
        self.flush_ack().await?;
        // A commit added or removed another device of this account, or this session has
        // not looked yet: show what changed in the account's device list.
        let changed = self.profile.own_devices_changed()?;
        if changed
            || self
                .own_devices_checked
                .is_none_or(|t| t.elapsed() >= OWN_DEVICES_EVERY)
        {
            self.own_devices_checked = Some(Instant::now());
            match self.refresh_own_devices().await {
                Ok(_) => self.emit(on_event),
                Err(e) => tracing::warn!(error = %e, "own device list not re-read"),
            }
            // A device of this account restored from a backup waits for us to add it.
            match self.add_missing_own_devices().await {
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = self.flush_outbox(timeout, on_event).await {
                        report.outbox_error.get_or_insert(e);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "new devices of this account not added"),
            }
        }
        report.stored = self.stored_this_session;
        report.acked_up_to = self.live.as_ref().map(|l| l.acked_up_to).unwrap_or(0);
        report.outbox_left = self.profile.outbox_len()?;
        Ok(report)
    }

    /// Connects if needed and processes frames until the mailbox is drained.
    async fn drain(
        &mut self,
        deadline: Instant,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            let step = self.drain_step(deadline).await;
            self.emit(on_event);
            match step {
                Ok(true) => return Ok(()),
                Ok(false) => attempt = 0,
                Err(e) => {
                    if !self.should_retry(&e, &mut attempt, deadline).await {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn drain_step(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        self.ensure_connected().await?;
        if self.live.as_ref().is_some_and(|l| l.drained) {
            return Ok(true);
        }
        match self.next_frame(deadline).await? {
            Some(frame) => {
                self.dispatch(frame).await?;
                Ok(false)
            }
            None => Err(ClientError::Timeout("fetching the mailbox".into())),
        }
    }

    /// One frame of the live wait. `Ok(true)` when the wait is over.
    async fn wait_step(&mut self, until: Instant) -> Result<bool, ClientError> {
        if Instant::now() >= until {
            return Ok(true);
        }
        self.ensure_connected().await?;
        match self.next_frame(until).await? {
            Some(frame) => {
                let queued = self.profile.outbox_len()?;
                self.dispatch(frame).await?;
                if !self.receipts_stuck && self.profile.outbox_len()? > queued {
                    // A delivered receipt for what just arrived (features.rs).
                    let deadline = (Instant::now() + self.options.connect_timeout).max(until);
                    let flushed = async {
                        while !self.outbox_step(deadline).await? {}
                        Ok::<(), ClientError>(())
                    }
                    .await;
                    if let Err(e) = flushed {
                        if e.is_network() {
                            return Err(e);
                        }
                        // Not retried for every frame; the end of `receive` tries again.
                        tracing::warn!(error = %e, "outbox not sent while waiting");
                        self.receipts_stuck = true;
                    }
                }
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Flushes the outbox and stores everything pending, without waiting for more.
    pub async fn sync(
        &mut self,
        timeout: Duration,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<ReceiveReport, ClientError> {
        self.receive(Duration::ZERO, timeout, on_event).await
    }

    /// Acknowledges what is stored and closes the WebSocket normally.
    pub async fn close(mut self) -> Profile {
        self.disconnect().await;
        self.profile
    }

    // ------------------------------------------------------------------ key packages

    /// Checks the server's count of this device's key packages for both suites and
    /// uploads fresh ones when fewer than the low-water mark are left, and a last-resort
    /// one when missing.
    pub async fn top_up_key_packages(&mut self) -> Result<u32, ClientError> {
        let mut uploaded = 0;
        for suite in SUITES {
            let req = self.signed(ApiRequest::key_package_count(suite.code()))?;
            let count: wire::KeyPackageCount = self.api.call(req).await?;
            let mut uploads = Vec::new();
            if count.available < self.options.key_package_low_water {
                let n = self
                    .options
                    .key_package_target
                    .saturating_sub(count.available);
                let n = usize::try_from(n).unwrap_or(0);
                for kp in self.profile.key_packages(suite, n, false)? {
                    uploads.push(wire::KeyPackageUpload {
                        key_package: kp.into(),
                        last_resort: false,
                    });
                }
            }
            if !count.has_last_resort {
                for kp in self.profile.key_packages(suite, 1, true)? {
                    uploads.push(wire::KeyPackageUpload {
                        key_package: kp.into(),
                        last_resort: true,
                    });
                }
            }
            uploaded += self.upload_key_packages(uploads).await?;
        }
        Ok(uploaded)
    }

    /// Uploads key packages in bodies within the protocol's limits.
    async fn upload_key_packages(
        &mut self,
        uploads: Vec<wire::KeyPackageUpload>,
    ) -> Result<u32, ClientError> {
        let mut stored = 0;
        let mut batch: Vec<wire::KeyPackageUpload> = Vec::new();
        let mut batch_bytes = 0;
        let budget = MAX_API_BODY_BYTES / 2;
        let mut it = uploads.into_iter().peekable();
        while let Some(kp) = it.next() {
            batch_bytes += kp.key_package.len() + 8;
            batch.push(kp);
            let next_len = it.peek().map(|k| k.key_package.len() + 8).unwrap_or(0);
            if it.peek().is_none()
                || batch.len() >= MAX_KEY_PACKAGES_PER_UPLOAD
                || batch_bytes + next_len > budget
            {
                let body = wire::UploadKeyPackages {
                    key_packages: std::mem::take(&mut batch),
                };
                batch_bytes = 0;
                let req = self.signed(ApiRequest::upload_key_packages(&body))?;
                let resp: wire::UploadKeyPackagesResponse = self.api.call(req).await?;
                stored += resp.stored;
            }
        }
        Ok(stored)
    }
}

/// Makes `one_time` + 1 last-resort key packages per suite and uploads them.
pub(crate) async fn upload_initial_key_packages(
    client: &mut Client,
    one_time: usize,
) -> Result<u32, ClientError> {
    let mut uploads = Vec::new();
    for suite in SUITES {
        for kp in client.profile.key_packages(suite, one_time, false)? {
            uploads.push(wire::KeyPackageUpload {
                key_package: kp.into(),
                last_resort: false,
            });
        }
        for kp in client.profile.key_packages(suite, 1, true)? {
            uploads.push(wire::KeyPackageUpload {
                key_package: kp.into(),
                last_resort: true,
            });
        }
    }
    client.upload_key_packages(uploads).await
}
