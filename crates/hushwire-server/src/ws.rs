//! One device's WebSocket (protocol.md, "WebSocket").
//!
//! challenge → auth → `auth_ok` → backlog (paged mailbox fetch) → `drained` → live
//! pushes, submits, acks and pings until either side closes.
//!
//! **Ordering.** `delivered` is the highest seq sent on this connection. A pushed
//! envelope with seq `delivered + 1` is sent directly; an older one was already sent
//! (from the backlog or a re-fetch) and is dropped; a newer one means something is
//! missing (a push still in flight, or dropped by a full queue), so the mailbox is
//! re-read from `delivered`. Every push comes from a submit that has returned, so the
//! store holds everything up to it: the connection never skips or reorders an entry.
//! The device is registered in the hub *before* the backlog is read, so no entry can
//! fall between the two.
//!
//! **Ephemeral signals, blocks, retractions** (protocol.md, "Conversation features"):
//! an `ephemeral` frame is relayed through the hub to the connected devices of the
//! group's roster ([`hushwire_store::Controls::relay_audience`]) and stored nowhere;
//! `block` and `retract` change the store. All three are rate-limited per device and
//! answered with `done`; a bad one gets an error in `done`, the connection stays open.
//!
//! **Other nodes** (`cluster`): a submit's recipients not connected here are announced
//! on the bus in one wake notice (nothing is published when all are here, or without a
//! bus); a wake from another node, or the poller, sets the connection's *woken* flag,
//! handled like *lagged*: the mailbox is re-read from `delivered`. Ephemeral signals for
//! devices not connected here go to the bus as encoded `EphemeralDelivery` bytes.
//!
//! **Writes.** Frames are fed to the socket and flushed once per wake-up, together with
//! the pushes already queued for the device (`flush_with_queued`).
//!
//! **Memory.** An idle connection holds the socket (a 272-byte tungstenite read
//! buffer, a write buffer sized by what it last sent), its hub entry (flags and an
//! empty queue, see `hub`), the TLS session (`hushwire_tls`: keys and state, no
//! buffers while idle) and this task's future. A future is as large as its largest
//! await point, so everything but the idle wait — the login, each event's handling,
//! the flush, the close — runs in a boxed future that exists only while it runs: the
//! idle task is about 0.8 KB instead of 2.9. Of the device record only the id and
//! address are kept. About 7 KB per idle connection in all (BENCHMARKS.md, "Idle
//! connection memory").

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use hushwire_proto::codec::{self, DecodeError};
use hushwire_proto::identity::validate_handle;
use hushwire_proto::limits::{
    MAX_EPHEMERAL_BYTES, MAX_GROUP_ID_BYTES, MAX_ROSTER, MESSAGE_ID_BYTES,
};
use hushwire_proto::mls::{self, ContentType, MlsHeader};
use hushwire_proto::wire::{self, ErrorCode, client_frame, server_frame, submit_result};
use hushwire_store::{
    DeviceAddr, DeviceId, DeviceRecord, Envelope, EnvelopeKind, RelayAudience, Submission,
    SubmitKind, SubmitOutcome, WelcomeOut,
};
use rand::RngCore;

use crate::config::Limits;
use crate::error::{Close, submit_rejection, wire_error};
use crate::hub::{PUSH_QUEUE, Push, Registration, Signals};
use crate::{GaugeGuard, Server, auth, now_ms};

/// tungstenite's read buffer per connection, which every idle connection keeps: one
/// frame of the smallest size bucket (256 bytes) and its header. Larger frames are read
/// in steps of this size into a buffer reserved for the frame; the steps copy from the
/// TLS stream's decrypted record, not from the socket.
pub(crate) const READ_BUFFER: usize = 272;
/// Room for frame headers above the largest frame in tungstenite's write buffer.
pub(crate) const WRITE_SLACK: usize = 1024;
/// Bytes of frames tungstenite collects before it writes them out on its own: frames
/// fed together (a submit result and the pushes queued meanwhile) leave in one flush,
/// so one TLS record and one write. The buffer grows only while frames are fed.
pub(crate) const WRITE_BUFFER: usize = 4 * 1024;
/// Mailbox entries read per store call.
const FETCH_PAGE: usize = 64;
/// How long the server waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How a session ended.
enum End {
    /// Send this close frame.
    Close(Close),
    /// The peer closed or the transport failed: nothing more can be sent.
    Gone,
}

impl From<Close> for End {
    fn from(c: Close) -> Self {
        Self::Close(c)
    }
}

/// Serves one upgraded WebSocket until it ends.
///
/// No tracing span wraps the session: entering one on every poll of every connection
/// showed up in profiles. The few events name the peer instead.
///
/// The socket comes boxed: an async fn keeps its arguments beside its locals for its
/// whole life, so a 368-byte `WebSocket` passed by value is stored twice in every idle
/// connection's task (three times counting the caller's capture); a box is 8 bytes.
pub(crate) async fn serve(server: Server, mut socket: Box<WebSocket>, peer: SocketAddr) {
    let _gauge = GaugeGuard::new(&server.shared.metrics.websockets);
    let peer = peer.ip();
    tracing::debug!(%peer, "WebSocket opened");
    let end = session(&server, &mut socket, peer).await;
    match end {
        End::Close(close) => {
            tracing::debug!(%peer, code = close.code, reason = %close.reason, "closing WebSocket");
            let linger = close.code != Close::TOO_BIG;
            Box::pin(finish(&mut socket, close, linger)).await;
        }
        End::Gone => tracing::debug!(%peer, "WebSocket closed by peer"),
    }
}

/// Sends the close frame, then (unless the reader is unusable) waits briefly for the
/// peer's close so our frame is not lost to a TCP reset.
async fn finish(socket: &mut WebSocket, close: Close, linger: bool) {
    let frame = CloseFrame {
        code: close.code,
        reason: close.reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() || !linger {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn session(server: &Server, socket: &mut WebSocket, peer: IpAddr) -> End {
    let shared = &server.shared;
    // Boxed: the login's state is freed once it is done, so it does not enlarge every
    // idle connection's task.
    // Only the id and address are kept: the keys and certificate were for the login.
    let DeviceRecord { id, addr, .. } = match Box::pin(login(server, socket, peer)).await {
        Ok(device) => device,
        Err(end) => return end,
    };

    let mut registration = shared.hub.register(id);
    let _unregister = Unregister {
        server,
        device: id,
        conn_id: registration.conn_id,
    };
    // A removal that came between the login check and the registration found no
    // connection to close: look again now that the hub knows this one.
    match shared.store.revoked_devices(&[id]).await {
        Ok(revoked) if revoked.is_empty() => {}
        Ok(_) => return device_removed(),
        Err(e) => return Close::internal(&e).into(),
    }
    let mut conn = Connection {
        server,
        device: id,
        addr,
        delivered: 0,
        signals: Arc::clone(&registration.signals),
        unflushed: false,
    };
    conn.run(socket, &mut registration).await
}

/// Sends the challenge and authenticates the device's answer.
async fn login(server: &Server, socket: &mut WebSocket, peer: IpAddr) -> Result<DeviceRecord, End> {
    let shared = &server.shared;
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = server_frame::Body::Challenge(wire::AuthChallenge {
        nonce: Bytes::copy_from_slice(&nonce),
        server_time_ms: now_ms(),
        protocol_version: hushwire_proto::PROTOCOL_VERSION,
    });
    send(socket, 0, challenge).await?;
    let first = tokio::select! {
        r = tokio::time::timeout(shared.config.auth_timeout(), next_frame(socket)) => match r {
            Ok(r) => r,
            Err(_) => return Err(Close::new(Close::POLICY, "authentication timed out").into()),
        },
        () = shared.shutdown.cancelled() => return Err(going_away()),
    };
    let frame = first?;
    let Some(client_frame::Body::Auth(auth)) = frame.body else {
        return Err(Close::new(Close::POLICY, "expected an auth frame first").into());
    };
    let device = match auth::authenticate_ws(shared.store.as_ref(), &nonce, &auth).await {
        Ok(d) => d,
        Err(close) => {
            tracing::info!(%peer, reason = %close.reason, "WebSocket authentication refused");
            return Err(close.into());
        }
    };
    tracing::debug!(%peer, device = %device.addr, "device logged in");
    let ok = server_frame::Body::AuthOk(wire::AuthOk {
        server_time_ms: now_ms(),
    });
    send(socket, frame.request_id, ok).await?;
    Ok(device)
}

/// Removes the hub entry when the session ends, however it ends.
struct Unregister<'a> {
    server: &'a Server,
    device: DeviceId,
    conn_id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.server.shared.hub.unregister(self.device, self.conn_id);
    }
}

fn device_removed() -> End {
    Close::new(Close::POLICY, "device removed").into()
}

fn going_away() -> End {
    Close::new(Close::GOING_AWAY, "server shutting down").into()
}

/// What woke an idle connection.
enum Event {
    Notified,
    Push(Arc<Push>),
    /// Boxed: a 200-byte frame held across the handler's await would be reserved in
    /// every idle task.
    Frame(Box<wire::ClientFrame>),
}

/// An authenticated connection.
struct Connection<'a> {
    server: &'a Server,
    device: DeviceId,
    addr: DeviceAddr,
    /// Highest mailbox seq sent on this connection (0: none yet).
    delivered: u64,
    /// The hub's signals for this connection (`delivered` is mirrored there for the
    /// cluster poller).
    signals: Arc<Signals>,
    /// Frames were fed to the socket since its last flush.
    unflushed: bool,
}

impl Connection<'_> {
    async fn run(&mut self, socket: &mut WebSocket, reg: &mut Registration) -> End {
        let shutdown = self.server.shared.shutdown.clone();
        let backlog = tokio::select! {
            r = Box::pin(self.catch_up(socket)) => r,
            () = shutdown.cancelled() => return going_away(),
        };
        if let Err(end) = backlog {
            return end;
        }
        let drained = server_frame::Body::Drained(wire::Drained {
            last_seq: self.delivered,
        });
        if let Err(end) = Box::pin(send(socket, 0, drained)).await {
            return end;
        }
        loop {
            if reg.signals.removed.load(Ordering::Acquire) {
                return device_removed();
            }
            if reg.signals.replaced.load(Ordering::Acquire) {
                return Close::new(
                    Close::REPLACED,
                    "replaced by a newer connection of this device",
                )
                .into();
            }
            let lagged = reg.signals.lagged.swap(false, Ordering::AcqRel);
            let woken = reg.signals.woken.swap(false, Ordering::AcqRel);
            if lagged || woken {
                let metrics = &self.server.shared.metrics;
                if lagged {
                    metrics.lag_refetches.fetch_add(1, Ordering::Relaxed);
                } else {
                    metrics.wake_refetches.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(end) = Box::pin(self.catch_up(socket)).await {
                    return end;
                }
            }
            // A push queued meanwhile first. Otherwise wait: a push, a flag or a frame.
            // The wait holds only three small futures; the work an event starts runs
            // in a boxed future, so it does not enlarge the idle task.
            let event = match reg.try_recv() {
                Some(push) => Event::Push(push),
                None => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return going_away(),
                    // A push or a flag: both are looked at on the next turn.
                    () = reg.signals.notify.notified() => Event::Notified,
                    frame = next_frame(socket) => match frame {
                        Ok(frame) => Event::Frame(Box::new(frame)),
                        Err(end) => return end,
                    },
                },
            };
            let step = match event {
                Event::Notified => Ok(()),
                Event::Push(push) => Box::pin(self.pushed(socket, push)).await,
                Event::Frame(frame) => Box::pin(self.handle(socket, *frame)).await,
            };
            if let Err(end) = step {
                return end;
            }
            // Whatever else is already queued for this device leaves with it, in one
            // flush (one TLS record and one write where it fits).
            if let Err(end) = Box::pin(self.flush_with_queued(socket, reg)).await {
                return end;
            }
        }
    }

    /// Feeds the pushes already queued (at most one queue's worth), then flushes
    /// everything fed since the last flush.
    async fn flush_with_queued(
        &mut self,
        socket: &mut WebSocket,
        reg: &mut Registration,
    ) -> Result<(), End> {
        if self.unflushed {
            for _ in 0..PUSH_QUEUE {
                match reg.try_recv() {
                    Some(push) => self.pushed(socket, push).await?,
                    None => break,
                }
            }
            self.flush(socket).await?;
        }
        Ok(())
    }

    /// Flushes what was fed since the last flush, if anything.
    async fn flush(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        if self.unflushed {
            self.unflushed = false;
            socket.flush().await.map_err(|_| End::Gone)?;
        }
        Ok(())
    }

    /// Queues a frame on the socket without flushing it (see `flush_with_queued`).
    async fn feed(
        &mut self,
        socket: &mut WebSocket,
        request_id: u64,
        body: server_frame::Body,
    ) -> Result<(), End> {
        self.unflushed = true;
        socket
            .feed(Message::Binary(encode(request_id, body)))
            .await
            .map_err(|_| End::Gone)
    }

    /// A live push from the hub.
    async fn pushed(&mut self, socket: &mut WebSocket, push: Arc<Push>) -> Result<(), End> {
        let envelope = match &*push {
            Push::Envelope(e) => e,
            Push::Ephemeral(signal) => {
                let body = server_frame::Body::Ephemeral(wire::EphemeralDelivery::clone(signal));
                return self.feed(socket, 0, body).await;
            }
        };
        if envelope.seq <= self.delivered {
            return Ok(());
        }
        if envelope.seq == self.delivered + 1 {
            self.feed(socket, 0, deliver(envelope)).await?;
            self.set_delivered(envelope.seq);
            return Ok(());
        }
        self.server
            .shared
            .metrics
            .gap_refetches
            .fetch_add(1, Ordering::Relaxed);
        Box::pin(self.catch_up(socket)).await
    }

    fn set_delivered(&mut self, seq: u64) {
        self.delivered = seq;
        self.signals.delivered.store(seq, Ordering::Release);
    }

    /// Sends every mailbox entry after `delivered`, in seq order.
    async fn catch_up(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let store = &self.server.shared.store;
        loop {
            let page = store
                .fetch(self.device, self.delivered, FETCH_PAGE)
                .await
                .map_err(|e| End::Close(Close::internal(&e)))?;
            let full = page.len() >= FETCH_PAGE;
            for envelope in page {
                if envelope.seq <= self.delivered {
                    continue; // defensive: the store returns seq > after only
                }
                // Fed, not flushed: a page leaves in a few large TLS records and writes
                // (tungstenite writes out whenever WRITE_BUFFER fills).
                self.feed(socket, 0, deliver(&envelope)).await?;
                self.set_delivered(envelope.seq);
            }
            self.flush(socket).await?;
            if !full {
                return Ok(());
            }
        }
    }

    async fn handle(
        &mut self,
        socket: &mut WebSocket,
        frame: wire::ClientFrame,
    ) -> Result<(), End> {
        let request_id = frame.request_id;
        match frame.body {
            Some(client_frame::Body::Submit(submit)) => {
                Box::pin(self.submit(socket, request_id, submit)).await
            }
            Some(client_frame::Body::Ack(ack)) => {
                // A client cannot have stored what it was not sent on this connection.
                let up_to = ack.up_to_seq.min(self.delivered);
                if up_to > 0 {
                    // A hint: queued for the next group commit, not awaited. A lost ack
                    // only means a redelivery, which the client skips by seq.
                    self.server
                        .shared
                        .store
                        .ack_hint(self.device, up_to)
                        .await
                        .map_err(|e| End::Close(Close::internal(&e)))?;
                }
                Ok(())
            }
            Some(client_frame::Body::Ephemeral(e)) => {
                let done = Box::pin(self.ephemeral(e)).await;
                self.feed(socket, request_id, server_frame::Body::Done(done))
                    .await
            }
            Some(client_frame::Body::Block(b)) => {
                let done = Box::pin(self.block(b)).await;
                self.feed(socket, request_id, server_frame::Body::Done(done))
                    .await
            }
            Some(client_frame::Body::Retract(r)) => {
                let done = Box::pin(self.retract(r)).await;
                self.feed(socket, request_id, server_frame::Body::Done(done))
                    .await
            }
            Some(client_frame::Body::Ping(ping)) => {
                let pong = server_frame::Body::Pong(wire::Pong {
                    client_time_ms: ping.client_time_ms,
                    server_time_ms: now_ms(),
                });
                send(socket, request_id, pong).await
            }
            Some(client_frame::Body::Auth(_)) => Err(Close::new(
                Close::PROTOCOL,
                "unexpected auth frame: already authenticated",
            )
            .into()),
            // decode_client_frame refuses frames without a body.
            None => Err(Close::new(Close::PROTOCOL, "frame without a body").into()),
        }
    }

    async fn submit(
        &mut self,
        socket: &mut WebSocket,
        request_id: u64,
        submit: wire::Submit,
    ) -> Result<(), End> {
        let shared = &self.server.shared;
        // Checked first, so a flood costs no validation and no store work. A client
        // keeps a refused message queued and submits it again (same message id) later.
        let within_rate = shared
            .submit_limiter
            .check(self.device, std::time::Instant::now());
        let validated = if within_rate {
            validate_submit(submit, &self.addr, &shared.config.limits)
        } else {
            Err(wire_error(
                ErrorCode::RateLimited,
                "too many messages; slow down",
            ))
        };
        let outcome = match validated {
            Err(error) => submit_result::Outcome::Rejected(error),
            Ok(parsed) => {
                let now = now_ms();
                let retention = shared.config.retention_ms();
                // A disappearing message goes at its expiry, never later than retention.
                let keep = match parsed.expire_after_ms {
                    0 => retention,
                    ms => ms.min(retention),
                };
                let submission = Submission {
                    sender: self.device,
                    message_id: parsed.message_id,
                    group_id: parsed.group_id,
                    epoch: parsed.epoch,
                    kind: parsed.kind,
                    payload: parsed.payload,
                    now_ms: now,
                    expires_at_ms: now.saturating_add(keep),
                    disappearing: parsed.expire_after_ms != 0,
                    past_epoch_ok: parsed.past_epoch,
                };
                match shared.store.submit(submission).await {
                    Ok(SubmitOutcome::Accepted(accepted)) => {
                        // Durable now. Push first: a slow submitter's socket must not
                        // delay the recipients. Those connected elsewhere (or nowhere)
                        // are woken through the bus, all in one notice; without a bus
                        // `remote` never allocates.
                        let clustered = shared.bus.is_clustered();
                        let mut remote = Vec::new();
                        for delivered in accepted.deliveries {
                            let device = delivered.device;
                            if !shared.hub.push(device, delivered.envelope) && clustered {
                                remote.push(device.0);
                            }
                        }
                        if !remote.is_empty() {
                            shared.bus.wake(&remote);
                        }
                        submit_result::Outcome::Accepted(wire::Accepted {
                            group_seq: accepted.group_seq,
                            epoch: accepted.epoch,
                            duplicate: accepted.duplicate,
                        })
                    }
                    Ok(SubmitOutcome::StaleEpoch { current_epoch }) => {
                        submit_result::Outcome::StaleEpoch(wire::StaleEpoch { current_epoch })
                    }
                    Ok(SubmitOutcome::NotMember) => submit_result::Outcome::Rejected(wire_error(
                        ErrorCode::NotMember,
                        "sender is not a member of the group",
                    )),
                    Ok(SubmitOutcome::UnknownGroup) => submit_result::Outcome::Rejected(
                        wire_error(ErrorCode::UnknownGroup, "unknown group"),
                    ),
                    Err(e) => submit_result::Outcome::Rejected(submit_rejection(&e)),
                }
            }
        };
        let result = server_frame::Body::SubmitResult(wire::SubmitResult {
            outcome: Some(outcome),
        });
        self.feed(socket, request_id, result).await
    }
}

impl Connection<'_> {
    /// Takes a token of the device's signal budget, or says why not.
    fn signal_budget(&self) -> Result<(), wire::Error> {
        if self
            .server
            .shared
            .signal_limiter
            .check(self.device, std::time::Instant::now())
        {
            Ok(())
        } else {
            Err(wire_error(
                ErrorCode::RateLimited,
                "too many signals; slow down",
            ))
        }
    }

    /// Relays an ephemeral signal to the group's connected devices.
    async fn ephemeral(&mut self, e: wire::Ephemeral) -> wire::Done {
        let result = async {
            let group_id = validate_ephemeral(&e)?;
            self.signal_budget()?;
            let shared = &self.server.shared;
            let audience = shared
                .store
                .relay_audience(self.device, &group_id)
                .await
                .map_err(|e| submit_rejection(&e))?;
            let devices = match audience {
                RelayAudience::Devices(d) => d,
                RelayAudience::NotMember => {
                    return Err(wire_error(
                        ErrorCode::NotMember,
                        "sender is not a member of the group",
                    ));
                }
                RelayAudience::UnknownGroup => {
                    return Err(wire_error(ErrorCode::UnknownGroup, "unknown group"));
                }
            };
            let signal = Arc::new(wire::EphemeralDelivery {
                group_id,
                sender: Some(wire::DeviceAddress {
                    handle: self.addr.handle.clone(),
                    device_id: self.addr.device_id,
                }),
                mls_message: e.mls_message,
                server_time_ms: now_ms(),
            });
            // How many took it is not told to the sender: that would say who is online.
            if shared.bus.is_clustered() {
                let mut absent = Vec::new();
                shared
                    .hub
                    .push_ephemeral(&devices, Arc::clone(&signal), Some(&mut absent));
                if !absent.is_empty() {
                    let ids: Vec<u64> = absent.iter().map(|d| d.0).collect();
                    shared
                        .bus
                        .ephemeral(&ids, &prost::Message::encode_to_vec(&*signal));
                }
            } else {
                shared.hub.push_ephemeral(&devices, signal, None);
            }
            Ok(())
        }
        .await;
        done(result)
    }

    /// Blocks or unblocks an account for this device's account.
    async fn block(&mut self, b: wire::SetBlock) -> wire::Done {
        let result = async {
            if validate_handle(&b.handle).is_err() {
                return Err(wire_error(ErrorCode::InvalidHandle, "invalid handle"));
            }
            if b.handle == self.addr.handle {
                return Err(bad("an account cannot block itself"));
            }
            self.signal_budget()?;
            self.server
                .shared
                .store
                .set_block(&self.addr.handle, &b.handle, b.blocked, now_ms())
                .await
                .map_err(|e| submit_rejection(&e))?;
            Ok(())
        }
        .await;
        done(result)
    }

    /// Removes the still-queued copies of one of this account's messages.
    async fn retract(&mut self, r: wire::Retract) -> wire::Done {
        let result = async {
            let message_id: [u8; MESSAGE_ID_BYTES] = r
                .message_id
                .as_ref()
                .try_into()
                .map_err(|_| bad(format!("message_id must be {MESSAGE_ID_BYTES} bytes")))?;
            if r.group_id.is_empty() || r.group_id.len() > MAX_GROUP_ID_BYTES {
                return Err(bad(format!(
                    "group_id must be 1 to {MAX_GROUP_ID_BYTES} bytes"
                )));
            }
            self.signal_budget()?;
            let removed = self
                .server
                .shared
                .store
                .retract(self.device, &r.group_id, message_id)
                .await
                .map_err(|e| submit_rejection(&e))?;
            tracing::debug!(removed, "queued copies retracted");
            Ok(())
        }
        .await;
        done(result)
    }
}

fn done(result: Result<(), wire::Error>) -> wire::Done {
    wire::Done {
        error: result.err(),
    }
}

/// Checks an `Ephemeral` frame: an application message of the group it names, small.
fn validate_ephemeral(e: &wire::Ephemeral) -> Result<Bytes, wire::Error> {
    if e.group_id.is_empty() || e.group_id.len() > MAX_GROUP_ID_BYTES {
        return Err(bad(format!(
            "group_id must be 1 to {MAX_GROUP_ID_BYTES} bytes"
        )));
    }
    if e.mls_message.len() > MAX_EPHEMERAL_BYTES {
        return Err(wire_error(
            ErrorCode::TooLarge,
            format!("an ephemeral message is at most {MAX_EPHEMERAL_BYTES} bytes"),
        ));
    }
    match mls::parse_header(&e.mls_message) {
        Ok(MlsHeader::Framed(h)) if h.content_type == ContentType::Application => {
            if h.group_id != e.group_id {
                return Err(bad("group_id does not match the MLS header"));
            }
        }
        Ok(_) => return Err(bad("an ephemeral message must be an application message")),
        Err(e) => return Err(bad(format!("mls_message: {e}"))),
    }
    Ok(e.group_id.clone())
}

fn deliver(e: &Envelope) -> server_frame::Body {
    let kind = match e.kind {
        EnvelopeKind::Application => wire::EnvelopeKind::Application,
        EnvelopeKind::Proposal => wire::EnvelopeKind::Proposal,
        EnvelopeKind::Commit => wire::EnvelopeKind::Commit,
        EnvelopeKind::Welcome => wire::EnvelopeKind::Welcome,
    };
    server_frame::Body::Deliver(wire::Envelope {
        seq: e.seq,
        message_id: Bytes::copy_from_slice(&e.message_id),
        group_id: e.group_id.clone(),
        group_seq: e.group_seq,
        kind: kind as i32,
        sender: Some(wire::DeviceAddress {
            handle: e.sender.handle.clone(),
            device_id: e.sender.device_id,
        }),
        server_time_ms: e.server_time_ms,
        payload: e.payload.clone(),
    })
}

fn encode(request_id: u64, body: server_frame::Body) -> Bytes {
    let frame = wire::ServerFrame {
        request_id,
        body: Some(body),
    };
    Bytes::from(codec::encode_padded(&frame))
}

/// Sends one frame and flushes it.
async fn send(
    socket: &mut WebSocket,
    request_id: u64,
    body: server_frame::Body,
) -> Result<(), End> {
    socket
        .send(Message::Binary(encode(request_id, body)))
        .await
        .map_err(|_| End::Gone)
}

/// The next protobuf frame, skipping control frames.
async fn next_frame(socket: &mut WebSocket) -> Result<wire::ClientFrame, End> {
    loop {
        let msg = match socket.recv().await {
            None => return Err(End::Gone),
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(transport_error(e)),
        };
        match msg {
            Message::Binary(bytes) => {
                return codec::decode_client_frame(&bytes).map_err(|e| {
                    End::Close(match e {
                        DecodeError::TooLarge { limit, .. } => {
                            Close::new(Close::TOO_BIG, format!("frame exceeds {limit} bytes"))
                        }
                        DecodeError::Malformed(_) => {
                            Close::new(Close::PROTOCOL, "malformed frame: not a ClientFrame")
                        }
                        DecodeError::Missing(field) => {
                            Close::new(Close::PROTOCOL, format!("malformed frame: missing {field}"))
                        }
                    })
                });
            }
            Message::Text(_) => {
                return Err(Close::new(Close::UNSUPPORTED, "text frames are not supported").into());
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return Err(End::Gone),
        }
    }
}

fn transport_error(err: axum::Error) -> End {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { max_size, .. })) => {
            Close::new(Close::TOO_BIG, format!("frame exceeds {max_size} bytes")).into()
        }
        Some(WsError::Capacity(_)) => Close::new(Close::TOO_BIG, "frame too large").into(),
        Some(WsError::Protocol(p)) => {
            Close::new(Close::PROTOCOL, format!("WebSocket protocol error: {p}")).into()
        }
        Some(WsError::Utf8(_)) => Close::new(Close::PROTOCOL, "invalid UTF-8").into(),
        _ => End::Gone,
    }
}

/// A submit that passed the checks the server can make without the store.
#[derive(Debug)]
struct ParsedSubmit {
    expire_after_ms: u64,
    past_epoch: bool,
    message_id: [u8; 16],
    group_id: Bytes,
    epoch: u64,
    kind: SubmitKind,
    payload: Bytes,
}

fn bad(msg: impl Into<String>) -> wire::Error {
    wire_error(ErrorCode::BadRequest, msg)
}

fn addresses(list: Vec<wire::DeviceAddress>, what: &str) -> Result<Vec<DeviceAddr>, wire::Error> {
    if list.len() > MAX_ROSTER {
        return Err(wire_error(
            ErrorCode::LimitExceeded,
            format!("{what} has more than {MAX_ROSTER} devices"),
        ));
    }
    let mut seen = HashSet::with_capacity(list.len());
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        if validate_handle(&a.handle).is_err() || a.device_id == 0 {
            return Err(bad(format!("{what}: invalid device address")));
        }
        let addr = DeviceAddr {
            handle: a.handle,
            device_id: a.device_id,
        };
        if !seen.insert(addr.clone()) {
            return Err(bad(format!("{what}: duplicate device {addr}")));
        }
        out.push(addr);
    }
    Ok(out)
}

/// Checks a `Submit` against the protocol: ids, sizes, the MLS header, and what a commit
/// must (and other messages must not) carry.
fn validate_submit(
    submit: wire::Submit,
    sender: &DeviceAddr,
    limits: &Limits,
) -> Result<ParsedSubmit, wire::Error> {
    let message_id: [u8; MESSAGE_ID_BYTES] = submit
        .message_id
        .as_ref()
        .try_into()
        .map_err(|_| bad(format!("message_id must be {MESSAGE_ID_BYTES} bytes")))?;
    if submit.group_id.is_empty() || submit.group_id.len() > MAX_GROUP_ID_BYTES {
        return Err(bad(format!(
            "group_id must be 1 to {MAX_GROUP_ID_BYTES} bytes"
        )));
    }
    if submit.mls_message.len() > limits.max_message_bytes {
        return Err(wire_error(
            ErrorCode::TooLarge,
            format!("mls_message exceeds {} bytes", limits.max_message_bytes),
        ));
    }
    let header = match mls::parse_header(&submit.mls_message) {
        Ok(MlsHeader::Framed(h)) => h,
        Ok(_) => return Err(bad("mls_message must be a PublicMessage or PrivateMessage")),
        Err(e) => return Err(bad(format!("mls_message: {e}"))),
    };
    if header.group_id != submit.group_id {
        return Err(bad("group_id does not match the MLS header"));
    }
    let carries_commit_data =
        !submit.roster.is_empty() || !submit.welcomes.is_empty() || !submit.group_info.is_empty();
    let kind = match header.content_type {
        ContentType::Application | ContentType::Proposal if carries_commit_data => {
            return Err(bad("roster, welcomes and group_info are only for commits"));
        }
        ContentType::Application => {
            if submit.mls_message.len() > limits.max_group_message_bytes {
                return Err(wire_error(
                    ErrorCode::TooLarge,
                    format!(
                        "application message exceeds {} bytes",
                        limits.max_group_message_bytes
                    ),
                ));
            }
            SubmitKind::Application
        }
        ContentType::Proposal => SubmitKind::Proposal,
        ContentType::Commit => {
            let roster = addresses(submit.roster, "roster")?;
            if !roster.contains(sender) {
                return Err(bad("a commit's roster must include the sender"));
            }
            let members: HashSet<&str> = roster.iter().map(|a| a.handle.as_str()).collect();
            if members.len() > limits.max_group_members {
                return Err(wire_error(
                    ErrorCode::LimitExceeded,
                    format!("a group has at most {} members", limits.max_group_members),
                ));
            }
            if submit.welcomes.len() > MAX_ROSTER {
                return Err(wire_error(ErrorCode::LimitExceeded, "too many welcomes"));
            }
            let mut welcomes = Vec::with_capacity(submit.welcomes.len());
            for (i, w) in submit.welcomes.into_iter().enumerate() {
                match mls::parse_header(&w.welcome) {
                    Ok(MlsHeader::Welcome { .. }) => {}
                    Ok(_) => return Err(bad(format!("welcome {i} is not an MLSMessage(Welcome)"))),
                    Err(e) => return Err(bad(format!("welcome {i}: {e}"))),
                }
                let recipients = addresses(w.recipients, "welcome recipients")?;
                if recipients.is_empty() {
                    return Err(bad(format!("welcome {i} has no recipients")));
                }
                welcomes.push(WelcomeOut {
                    payload: w.welcome,
                    recipients,
                });
            }
            let group_info = if submit.group_info.is_empty() {
                None
            } else if submit.group_info.starts_with(mls::SEALED_GROUP_INFO_MAGIC) {
                // Sealed by the members (group chats): opaque to the server.
                if submit.group_info.len() < mls::SEALED_GROUP_INFO_MIN_BYTES {
                    return Err(bad("sealed group_info is truncated"));
                }
                Some(submit.group_info)
            } else {
                match mls::parse_header(&submit.group_info) {
                    Ok(MlsHeader::GroupInfo { group_id, .. }) if group_id == submit.group_id => {}
                    Ok(MlsHeader::GroupInfo { .. }) => {
                        return Err(bad("group_info is for another group"));
                    }
                    Ok(_) => return Err(bad("group_info is not an MLSMessage(GroupInfo)")),
                    Err(e) => return Err(bad(format!("group_info: {e}"))),
                }
                Some(submit.group_info)
            };
            SubmitKind::Commit {
                roster,
                welcomes,
                group_info,
            }
        }
    };
    Ok(ParsedSubmit {
        expire_after_ms: submit.expire_after_ms,
        past_epoch: submit.past_epoch,
        message_id,
        group_id: submit.group_id,
        epoch: header.epoch,
        kind,
        payload: submit.mls_message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> DeviceAddr {
        DeviceAddr {
            handle: "alice".into(),
            device_id: 1,
        }
    }

    fn submit(ct: ContentType) -> wire::Submit {
        wire::Submit {
            message_id: vec![1; 16].into(),
            group_id: b"g1".to_vec().into(),
            mls_message: mls::synthetic_private_message(b"g1", 3, ct, b"ct").into(),
            ..Default::default()
        }
    }

    fn err(s: wire::Submit) -> (i32, String) {
        let e = validate_submit(s, &me(), &Limits::default()).unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn accepts_application_and_commit() {
        let p =
            validate_submit(submit(ContentType::Application), &me(), &Limits::default()).unwrap();
        assert!(matches!(p.kind, SubmitKind::Application));
        assert_eq!(p.epoch, 3);
        let mut c = submit(ContentType::Commit);
        c.roster = vec![wire::DeviceAddress {
            handle: "alice".into(),
            device_id: 1,
        }];
        let p = validate_submit(c, &me(), &Limits::default()).unwrap();
        assert!(matches!(p.kind, SubmitKind::Commit { .. }));
    }

    #[test]
    fn enforces_the_group_message_size_and_member_limits() {
        let limits = Limits {
            max_group_message_bytes: 1024,
            max_group_members: 3,
            ..Limits::default()
        };
        // A chat message over max_group_message_bytes: TOO_LARGE; a commit of the same
        // size is bounded by max_message_bytes only.
        let big = |ct| {
            let mut s = submit(ct);
            s.mls_message = mls::synthetic_private_message(b"g1", 3, ct, &[7; 2048]).into();
            s
        };
        let e = validate_submit(big(ContentType::Application), &me(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge as i32);
        assert!(e.message.contains("1024"), "{}", e.message);
        let mut commit = big(ContentType::Commit);
        commit.roster = vec![wire::DeviceAddress {
            handle: "alice".into(),
            device_id: 1,
        }];
        assert!(validate_submit(commit, &me(), &limits).is_ok());

        // A roster of 4 handles (one with two devices) over max_group_members 3:
        // LIMIT_EXCEEDED; 3 handles with 4 devices pass (members are handles).
        let roster = |handles: &[(&str, u32)]| {
            let mut c = submit(ContentType::Commit);
            c.roster = handles
                .iter()
                .map(|(h, d)| wire::DeviceAddress {
                    handle: (*h).into(),
                    device_id: *d,
                })
                .collect();
            c
        };
        let four = roster(&[
            ("alice", 1),
            ("alice", 2),
            ("bob", 1),
            ("carol", 1),
            ("dave", 1),
        ]);
        let e = validate_submit(four, &me(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded as i32);
        let three = roster(&[("alice", 1), ("alice", 2), ("bob", 1), ("carol", 1)]);
        assert!(validate_submit(three, &me(), &limits).is_ok());
    }

    #[test]
    fn refuses_bad_submits() {
        let bad_req = ErrorCode::BadRequest as i32;
        let mut s = submit(ContentType::Application);
        s.message_id = vec![1; 15].into();
        assert_eq!(err(s).0, bad_req);

        let mut s = submit(ContentType::Application);
        s.group_id = b"other".to_vec().into();
        assert!(err(s).1.contains("does not match"));

        let mut s = submit(ContentType::Application);
        s.mls_message = vec![0, 1, 0, 9].into();
        assert!(err(s).1.contains("wire format"));

        let mut s = submit(ContentType::Application);
        s.roster = vec![wire::DeviceAddress {
            handle: "alice".into(),
            device_id: 1,
        }];
        assert!(err(s).1.contains("only for commits"));

        let s = submit(ContentType::Commit);
        assert!(err(s).1.contains("include the sender"));

        let mut s = submit(ContentType::Commit);
        s.roster = vec![wire::DeviceAddress {
            handle: "alice".into(),
            device_id: 1,
        }];
        s.welcomes = vec![wire::WelcomeOut {
            welcome: mls::synthetic_private_message(b"g1", 0, ContentType::Commit, b"").into(),
            recipients: vec![],
        }];
        assert!(err(s).1.contains("not an MLSMessage(Welcome)"));

        let mut s = submit(ContentType::Application);
        s.mls_message = vec![0; Limits::default().max_message_bytes + 1].into();
        assert_eq!(err(s).0, ErrorCode::TooLarge as i32);
    }
}
