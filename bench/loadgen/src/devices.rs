//! Devices: registration, one task per authenticated WebSocket, two-device groups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::{Signer as _, SigningKey};
use hdrhistogram::Histogram;
use hushwire_client::{ApiClient, ApiRequest, ClientError, Connection, Endpoint, KeySigner};
use hushwire_proto::identity::device_cert_payload;
use hushwire_proto::mls::{ContentType, synthetic_private_message};
use hushwire_proto::wire::{self, ClientFrame, client_frame, server_frame, submit_result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::mls::{self, MlsMember};
use crate::sched::{self, Stamp};

/// Request ids of the set-up commits have this bit set; traffic uses `intended_ns + 1`.
const SETUP_BIT: u64 = 1 << 63;
/// Commands a connection task writes per flush at most.
const MAX_COALESCE: usize = 64;
/// Errors printed per kind before going quiet.
const MAX_LOGGED_ERRORS: u64 = 5;

/// One registered device (one account each).
pub struct Device {
    /// The account's handle.
    pub handle: String,
    /// The device key as a signer.
    pub signer: Arc<KeySigner>,
}

impl Device {
    fn address(&self) -> wire::DeviceAddress {
        wire::DeviceAddress {
            handle: self.handle.clone(),
            device_id: hushwire_client::Signer::device_id(self.signer.as_ref()),
        }
    }
}

/// Latency histograms, in microseconds.
pub struct Hists {
    /// Delivery time at the recipient minus intended send time.
    pub delivery: Histogram<u64>,
    /// `submit_result: accepted` at the sender minus intended send time.
    pub accept: Histogram<u64>,
    /// Actual write of the submit minus intended send time (generator lag).
    pub send_lag: Histogram<u64>,
}

impl Hists {
    fn new() -> Result<Self> {
        // 1 µs .. 10 min, 3 significant digits.
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3);
        Ok(Self {
            delivery: h()?,
            accept: h()?,
            send_lag: h()?,
        })
    }
}

/// Counters updated by the connection tasks.
#[derive(Default)]
pub struct Counters {
    /// Connections that received `drained` (their backlog is empty).
    pub drained: AtomicU64,
    /// Connections that ended with an error.
    pub conn_errors: AtomicU64,
    /// Set-up commits accepted / refused.
    pub setup_accepted: AtomicU64,
    pub setup_rejected: AtomicU64,
    /// Welcome envelopes received (the set-up commit's Welcome reaching the second device).
    pub welcome_deliveries: AtomicU64,
    /// Traffic: submits handed to the connection tasks (by the scheduler).
    pub sent: AtomicU64,
    /// Traffic: submits whose intended time falls in the measurement window.
    pub sent_in_window: AtomicU64,
    /// Traffic: submits written to the socket.
    pub written: AtomicU64,
    /// Traffic: `accepted` results (`duplicates` among them).
    pub accepted: AtomicU64,
    pub accepted_duplicate: AtomicU64,
    /// Traffic: results other than `accepted`.
    pub rejected: AtomicU64,
    /// Traffic: stamped application messages received.
    pub delivered: AtomicU64,
    /// ... of which received inside the measurement window.
    pub delivered_in_window: AtomicU64,
    /// Envelopes with a seq not above the previous one (redelivery).
    pub duplicates: AtomicU64,
    /// Envelopes that are neither stamped traffic nor the set-up commit.
    pub foreign: AtomicU64,
    /// Ack frames sent.
    pub acks: AtomicU64,
    /// Connections closed on request (close handshake done or timed out).
    pub closed: AtomicU64,
    /// Latest receipt of a stamped application message, ns since `base` (0: none yet).
    pub last_delivery_ns: AtomicU64,
    /// `--real-mls`: delivered application messages that did not decrypt.
    pub mls_errors: AtomicU64,
}

/// `--real-mls`: every device's MLS state and every pair's set-up messages.
pub struct RealMls {
    /// Device `i`'s state (kept here, so a reconnected device goes on with it).
    pub members: Vec<Arc<Mutex<MlsMember>>>,
    /// Pair `p`'s group-creating commit and the Welcome for its second device.
    pub setup: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RealMls {
    /// Creates the groups of `devices.len() / 2` pairs in memory.
    pub fn create(devices: &[Device], prefix: &str) -> Result<Self> {
        let pairs = devices.len() / 2;
        let mut members = Vec::with_capacity(2 * pairs);
        let mut setup = Vec::with_capacity(pairs);
        for (p, two) in devices.chunks_exact(2).enumerate() {
            let [a, b] = two else {
                bail!("pair {p} has no devices")
            };
            let pair = mls::pair(&group_id(prefix, p), &a.handle, &b.handle)
                .with_context(|| format!("creating the MLS group of pair {p}"))?;
            members.push(Arc::new(Mutex::new(pair.a)));
            members.push(Arc::new(Mutex::new(pair.b)));
            setup.push((pair.commit, pair.welcome));
        }
        Ok(Self { members, setup })
    }
}

/// State shared by the scheduler and every connection task.
pub struct Shared {
    /// Time zero of every `*_ns` value.
    pub base: Instant,
    /// Distinguishes this run's message ids.
    pub run_nonce: u64,
    /// Bytes of synthetic ciphertext per message.
    pub payload_bytes: usize,
    /// Ack after this many unacknowledged envelopes...
    pub ack_every: u64,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// Connection tasks end by themselves at this instant (hard deadline).
    pub deadline: Instant,
    /// Measurement window `[start, end)` in ns since `base` (empty until traffic starts).
    pub window_start_ns: AtomicU64,
    pub window_end_ns: AtomicU64,
    /// Counters.
    pub c: Counters,
    /// Histograms.
    pub hists: Mutex<Hists>,
    /// `--real-mls`: the devices' MLS states (`None`: synthetic ciphertext).
    pub mls: Option<RealMls>,
}

impl Shared {
    /// New state; `deadline` bounds every connection task.
    pub fn new(
        run_nonce: u64,
        payload_bytes: usize,
        ack_every: u64,
        ack_delay: Duration,
        deadline: Instant,
    ) -> Result<Self> {
        Ok(Self {
            base: Instant::now(),
            run_nonce,
            payload_bytes,
            ack_every: ack_every.max(1),
            ack_delay,
            deadline,
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(0),
            c: Counters::default(),
            hists: Mutex::new(Hists::new()?),
            mls: None,
        })
    }

    /// Nanoseconds since `base`.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `t_ns` lies in the measurement window.
    pub fn in_window(&self, t_ns: u64) -> bool {
        t_ns >= self.window_start_ns.load(Ordering::Relaxed)
            && t_ns < self.window_end_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn record(
        &self,
        which: fn(&mut Hists) -> &mut Histogram<u64>,
        since_ns: u64,
        now_ns: u64,
    ) {
        let us = now_ns.saturating_sub(since_ns) / 1000;
        if let Ok(mut h) = self.hists.lock() {
            which(&mut h).saturating_record(us.max(1));
        }
    }

    pub(crate) fn log_error(&self, count: &AtomicU64, what: impl std::fmt::Display) {
        if count.fetch_add(1, Ordering::Relaxed) < MAX_LOGGED_ERRORS {
            eprintln!("warning: {what}");
        }
    }
}

/// A 16-byte message id: the run nonce and a per-run number.
fn message_id(run_nonce: u64, n: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&run_nonce.to_be_bytes());
    id.extend_from_slice(&n.to_be_bytes());
    id
}

/// The group of pair `p` (devices `2p` and `2p+1`).
pub fn group_id(prefix: &str, pair: usize) -> Vec<u8> {
    format!("{prefix}.g{pair}").into_bytes()
}

/// Registers `n` devices `{prefix}.{i}`, at most `concurrency` at a time.
pub async fn register_all(
    endpoint: &Endpoint,
    prefix: &str,
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> Result<Vec<Device>> {
    let api = ApiClient::new(endpoint.clone()).context("building the HTTPS client")?;
    let mut out: Vec<Option<Device>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    // Each iteration spawns up to `concurrency` and joins one: at most 2n iterations.
    while done < n {
        while next < n && set.len() < concurrency.max(1) {
            let api = api.clone();
            let handle = format!("{prefix}.{next}");
            let i = next;
            set.spawn(async move { (i, register_one(&api, handle).await) });
            next += 1;
        }
        let joined = tokio::time::timeout_at(deadline, set.join_next())
            .await
            .map_err(|_| anyhow!("registration timed out after {done} of {n} devices"))?;
        let Some(joined) = joined else { break };
        let (i, device) = joined.context("registration task failed")?;
        let device = device.with_context(|| format!("registering device {i}"))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(device);
        }
        done += 1;
    }
    out.into_iter()
        .enumerate()
        .map(|(i, d)| d.ok_or_else(|| anyhow!("device {i} was not registered")))
        .collect()
}

async fn register_one(api: &ApiClient, handle: String) -> Result<Device> {
    let mut rng = rand::rngs::OsRng;
    let account = SigningKey::generate(&mut rng);
    let device = SigningKey::generate(&mut rng);
    let device_key = device.verifying_key().to_bytes();
    let created_at_ms = hushwire_client::api::unix_ms();
    let cert = account.sign(&device_cert_payload(&handle, &device_key, created_at_ms));
    let request = wire::RegisterRequest {
        handle: handle.clone(),
        account_key: account.verifying_key().to_bytes().to_vec().into(),
        device: Some(wire::DeviceCertificate {
            device_key: device_key.to_vec().into(),
            created_at_ms,
            signature: cert.to_bytes().to_vec().into(),
        }),
        invite: String::new(),
    };
    let response: wire::RegisterResponse = api.call(ApiRequest::register(&request)).await?;
    Ok(Device {
        signer: Arc::new(KeySigner::new(handle.clone(), response.device_id, device)),
        handle,
    })
}

/// What a connection task is told to do.
pub enum Cmd {
    /// Send this (set-up) frame as is.
    Frame(Box<ClientFrame>),
    /// Build and send a traffic message to the device's group.
    Traffic(Stamp),
    /// Acknowledge what is pending, close normally and end.
    Close,
}

/// The generator's end of one device connection.
pub struct ConnHandle {
    /// Commands to the task. Unbounded: the scheduler never waits (open loop); the run's
    /// message count bounds the queue.
    pub tx: mpsc::UnboundedSender<Cmd>,
}

/// What [`connect_all`] needs besides the range.
pub struct ConnectCtx<'a> {
    /// The server.
    pub endpoint: &'a Endpoint,
    /// Other nodes of the deployment: device `i` connects to node `i % (1 + len)`.
    pub others: &'a [Endpoint],
    /// Every registered device.
    pub devices: &'a [Device],
    /// Group-id prefix of the run.
    pub prefix: &'a str,
    /// Handshakes in flight.
    pub concurrency: usize,
    /// State for the connection tasks.
    pub shared: &'a Arc<Shared>,
}

/// Opens and authenticates one connection per device in `indices` (at most
/// `concurrency` handshakes at a time) and starts its task in `tasks`; the handles come
/// back in the order of `indices`. Device `i` belongs to group `i / 2`. Tasks end on
/// [`Cmd::Close`] or at the shared deadline.
pub async fn connect_all(
    ctx: &ConnectCtx<'_>,
    indices: &[usize],
    tasks: &mut JoinSet<Result<()>>,
    deadline: Instant,
) -> Result<Vec<ConnHandle>> {
    let ConnectCtx {
        endpoint,
        others,
        devices,
        prefix,
        concurrency,
        shared,
    } = *ctx;
    let mut out: Vec<Option<ConnHandle>> = indices.iter().map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    let n = indices.len();
    while done < n {
        while let Some(&i) = indices.get(next)
            && set.len() < concurrency.max(1)
        {
            let node = i % (1 + others.len());
            let endpoint = match node.checked_sub(1).and_then(|k| others.get(k)) {
                Some(other) => other.clone(),
                None => endpoint.clone(),
            }
            .with_local_ip(crate::source::source_ip(i));
            let slot = next;
            let signer = devices
                .get(i)
                .map(|d| Arc::clone(&d.signer))
                .context("device index out of range")?;
            set.spawn(async move {
                let conn = Connection::connect_with_signer(&endpoint, &signer).await;
                (slot, i, conn)
            });
            next += 1;
        }
        let joined = tokio::time::timeout_at(deadline, set.join_next())
            .await
            .map_err(|_| anyhow!("connecting timed out after {done} of {n} connections"))?;
        let Some(joined) = joined else { break };
        let (slot, i, conn) = joined.context("connect task failed")?;
        let conn = conn.with_context(|| format!("connecting device {i}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mls = shared
            .mls
            .as_ref()
            .map(|m| {
                m.members
                    .get(i)
                    .cloned()
                    .context("no MLS state for the device")
            })
            .transpose()?;
        let task = ConnTask {
            conn,
            rx,
            shared: Arc::clone(shared),
            group_id: group_id(prefix, i / 2),
            mls,
        };
        tasks.spawn(task.run());
        if let Some(slot) = out.get_mut(slot) {
            *slot = Some(ConnHandle { tx });
        }
        done += 1;
    }
    out.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| anyhow!("connection {i} was not opened")))
        .collect()
}

/// A syntactically valid `MLSMessage(Welcome)` header (version 1, wire format 3,
/// ciphersuite 1) with opaque content: the server reads only the header.
fn synthetic_welcome() -> Vec<u8> {
    let mut w = vec![0, 1, 0, 3, 0, 1];
    w.extend_from_slice(&[0x5a; 32]);
    w
}

/// Creates the two-device groups: device `2p` commits at epoch 0 with roster
/// `[2p, 2p+1]` and a Welcome for `2p+1` (the commit itself goes to the old roster,
/// which is just the sender); waits until every commit is accepted and every Welcome
/// delivered.
pub async fn setup_groups(
    conns: &[ConnHandle],
    devices: &[Device],
    prefix: &str,
    shared: &Shared,
    deadline: Instant,
) -> Result<()> {
    let pairs = conns.len() / 2;
    for p in 0..pairs {
        let (Some(a), Some(b), Some(conn)) =
            (devices.get(2 * p), devices.get(2 * p + 1), conns.get(2 * p))
        else {
            bail!("pair {p} has no devices");
        };
        let gid = group_id(prefix, p);
        let (mls, welcome) = match &shared.mls {
            Some(real) => real
                .setup
                .get(p)
                .cloned()
                .context("no MLS set-up for the pair")?,
            None => (
                synthetic_private_message(&gid, 0, ContentType::Commit, &[0x5a; 32]),
                synthetic_welcome(),
            ),
        };
        let frame = ClientFrame {
            request_id: SETUP_BIT | p as u64,
            body: Some(client_frame::Body::Submit(wire::Submit {
                message_id: message_id(shared.run_nonce, SETUP_BIT | p as u64).into(),
                group_id: gid.into(),
                mls_message: mls.into(),
                roster: vec![a.address(), b.address()],
                welcomes: vec![wire::WelcomeOut {
                    welcome: welcome.into(),
                    recipients: vec![b.address()],
                }],
                group_info: Default::default(),
                expire_after_ms: 0,
                past_epoch: false,
            })),
        };
        conn.tx
            .send(Cmd::Frame(Box::new(frame)))
            .map_err(|_| anyhow!("connection of device {} ended", 2 * p))?;
    }
    let c = &shared.c;
    let want = pairs as u64;
    // Bounded by the deadline; polls every 20 ms.
    loop {
        let done =
            c.setup_accepted.load(Ordering::Relaxed) + c.setup_rejected.load(Ordering::Relaxed);
        if c.setup_rejected.load(Ordering::Relaxed) > 0 {
            bail!(
                "{} set-up commits were refused",
                c.setup_rejected.load(Ordering::Relaxed)
            );
        }
        if done >= want && c.welcome_deliveries.load(Ordering::Relaxed) >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "group set-up timed out: {done} of {want} commits answered, {} delivered",
                c.welcome_deliveries.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One device's connection: sends what it is told, receives, records and acknowledges.
struct ConnTask {
    conn: Connection,
    rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    group_id: Vec<u8>,
    /// `--real-mls`: this device's MLS state.
    mls: Option<Arc<Mutex<MlsMember>>>,
}

impl ConnTask {
    /// Runs until [`Cmd::Close`], the command channel closes, the connection fails, or the
    /// shared deadline passes.
    async fn run(mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        match self.run_inner().await {
            Ok(true) => {
                // Bounded: close waits at most 2 s for the server's reply.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.close()).await;
                shared.c.closed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                shared.log_error(
                    &shared.c.conn_errors,
                    format_args!("connection ended: {e:#}"),
                );
                Err(e)
            }
        }
    }

    /// Returns whether a normal close was asked for.
    async fn run_inner(&mut self) -> Result<bool> {
        let shared = Arc::clone(&self.shared);
        let mut last_seq = 0u64;
        let mut acked = 0u64;
        let mut ack_armed = false;
        let deadline = tokio::time::sleep_until(shared.deadline);
        tokio::pin!(deadline);
        let ack_timer = tokio::time::sleep_until(shared.deadline);
        tokio::pin!(ack_timer);
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => return Ok(false),
                cmd = self.rx.recv() => {
                    // This command and those already queued behind it (bounded) leave
                    // in one flush: fewer writes and wake-ups per message.
                    let mut cmd = cmd;
                    for _ in 0..MAX_COALESCE {
                        match cmd {
                            Some(Cmd::Traffic(stamp)) => self.feed_traffic(stamp).await?,
                            Some(Cmd::Frame(frame)) => {
                                self.conn.feed(&frame).await.map_err(describe_client_error)?;
                            }
                            Some(Cmd::Close) | None => {
                                if last_seq > acked {
                                    self.ack(last_seq).await?;
                                }
                                self.conn.flush().await.map_err(describe_client_error)?;
                                return Ok(true);
                            }
                        }
                        match self.rx.try_recv() {
                            Ok(next) => cmd = Some(next),
                            Err(_) => break,
                        }
                    }
                    self.conn.flush().await.map_err(describe_client_error)?;
                }
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    if last_seq > acked {
                        self.ack(last_seq).await?;
                        acked = last_seq;
                    }
                }
                frame = self.conn.recv() => {
                    let frame = frame.map_err(describe_client_error)?;
                    if let Some(seq) = self.received(frame) {
                        if seq <= last_seq {
                            shared.c.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            last_seq = seq;
                        }
                        if last_seq - acked >= shared.ack_every {
                            self.ack(last_seq).await?;
                            acked = last_seq;
                            ack_armed = false;
                        } else if !ack_armed && last_seq > acked {
                            ack_timer.as_mut().reset(Instant::now() + shared.ack_delay);
                            ack_armed = true;
                        }
                    }
                }
            }
        }
    }

    async fn ack(&mut self, up_to_seq: u64) -> Result<()> {
        self.feed_ack(up_to_seq).await?;
        self.conn.flush().await.map_err(describe_client_error)
    }

    /// Queues a cumulative ack; the caller flushes.
    async fn feed_ack(&mut self, up_to_seq: u64) -> Result<()> {
        self.shared.c.acks.fetch_add(1, Ordering::Relaxed);
        let frame = ClientFrame {
            request_id: 0,
            body: Some(client_frame::Body::Ack(wire::Ack { up_to_seq })),
        };
        self.conn.feed(&frame).await.map_err(describe_client_error)
    }

    /// Queues a traffic submit; the caller flushes.
    async fn feed_traffic(&mut self, stamp: Stamp) -> Result<()> {
        let shared = &self.shared;
        let ct = sched::ciphertext(shared.payload_bytes, stamp);
        let mls = match &self.mls {
            Some(member) => member
                .lock()
                .map_err(|_| anyhow!("MLS state lock poisoned"))?
                .encrypt(&ct)?,
            None => synthetic_private_message(&self.group_id, 1, ContentType::Application, &ct),
        };
        let frame = ClientFrame {
            request_id: stamp.intended_ns + 1,
            body: Some(client_frame::Body::Submit(wire::Submit {
                message_id: message_id(shared.run_nonce, stamp.msg_no).into(),
                group_id: self.group_id.clone().into(),
                mls_message: mls.into(),
                ..Default::default()
            })),
        };
        let now = shared.now_ns();
        if shared.in_window(stamp.intended_ns) {
            shared.record(|h| &mut h.send_lag, stamp.intended_ns, now);
        }
        self.conn
            .feed(&frame)
            .await
            .map_err(describe_client_error)?;
        shared.c.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Handles a frame; returns the envelope seq for deliveries.
    fn received(&mut self, frame: wire::ServerFrame) -> Option<u64> {
        let shared = &self.shared;
        let c = &shared.c;
        match frame.body? {
            server_frame::Body::Deliver(env) => {
                let kind = wire::EnvelopeKind::try_from(env.kind);
                let plaintext = match (&self.mls, kind) {
                    (Some(member), Ok(wire::EnvelopeKind::Application)) => {
                        let opened = member
                            .lock()
                            .map_err(|_| anyhow!("MLS state lock poisoned"))
                            .and_then(|mut m| m.decrypt(&env.payload));
                        match opened {
                            Ok(p) => Some(p),
                            Err(e) => {
                                shared.log_error(&c.mls_errors, format_args!("{e:#}"));
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let stamp = match (&self.mls, &plaintext) {
                    (Some(_), Some(p)) => sched::read_stamp(p),
                    (Some(_), None) => None,
                    (None, _) => sched::read_stamp(&env.payload),
                };
                let now = shared.now_ns();
                match (kind, stamp) {
                    (Ok(wire::EnvelopeKind::Application), Some(stamp)) => {
                        c.delivered.fetch_add(1, Ordering::Relaxed);
                        c.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                        if shared.in_window(now) {
                            c.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                        }
                        if shared.in_window(stamp.intended_ns) {
                            shared.record(|h| &mut h.delivery, stamp.intended_ns, now);
                        }
                    }
                    (Ok(wire::EnvelopeKind::Welcome), _) => {
                        c.welcome_deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(env.seq)
            }
            server_frame::Body::SubmitResult(result) => {
                let id = frame.request_id;
                let accepted = match &result.outcome {
                    Some(submit_result::Outcome::Accepted(a)) => Some(a.duplicate),
                    _ => None,
                };
                if id & SETUP_BIT != 0 {
                    if accepted.is_some() {
                        c.setup_accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.log_error(
                            &c.setup_rejected,
                            format_args!("set-up commit refused: {:?}", result.outcome),
                        );
                    }
                    return None;
                }
                match accepted {
                    Some(duplicate) => {
                        c.accepted.fetch_add(1, Ordering::Relaxed);
                        if duplicate {
                            c.accepted_duplicate.fetch_add(1, Ordering::Relaxed);
                        }
                        let intended = id.saturating_sub(1);
                        if shared.in_window(intended) {
                            shared.record(|h| &mut h.accept, intended, shared.now_ns());
                        }
                    }
                    None => shared.log_error(
                        &c.rejected,
                        format_args!("submit refused: {:?}", result.outcome),
                    ),
                }
                None
            }
            server_frame::Body::Drained(_) => {
                c.drained.fetch_add(1, Ordering::Relaxed);
                None
            }
            server_frame::Body::Error(e) => {
                shared.log_error(&c.conn_errors, format_args!("server error frame: {e:?}"));
                None
            }
            _ => None,
        }
    }
}

fn describe_client_error(e: ClientError) -> anyhow::Error {
    anyhow!("{e}")
}
