//! The peers Hushwire is compared against: ejabberd over XMPP and Mosquitto over MQTT.
//!
//! The same scenarios run against every target: the open-loop schedule, the stamp
//! (intended send time and message number, here as text at the end of a 100-character
//! payload), the histograms, the counters and the report are those of the Hushwire runs
//! (`traffic::run_open_loop`). What differs is the connection: one plain TCP connection
//! per user (TCP_NODELAY), logged in to the peer, sending each message to a random
//! *other* online connection.
//!
//! The peer server is started by `bench/peers/*.sh` (not by this process); pass its pid
//! with `--server-pid` for CPU and memory figures.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::devices::Shared;
use crate::idle::{self, IdleReport};
use crate::procfs;
use crate::sched::{self, Stamp};
use crate::session::secs;
use crate::traffic::{self, TrafficParams, TrafficReport};

pub mod mqtt;
pub mod xmpp;

/// What a peer connection task is told to do.
#[derive(Debug)]
pub enum PeerCmd {
    /// Send message `stamp` to connection `to`.
    Send {
        /// Recipient connection index.
        to: u32,
        /// Intended time and number.
        stamp: Stamp,
    },
    /// Close the session normally and end.
    Close,
}

/// Which peer, and how to reach it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// ejabberd.
    Xmpp(Arc<xmpp::XmppOpts>),
    /// Mosquitto.
    Mqtt(Arc<mqtt::MqttOpts>),
}

impl Peer {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Xmpp(_) => "xmpp",
            Peer::Mqtt(_) => "mqtt",
        }
    }
}

/// Refuses anything but a 127.0.0.0/8 address: the peers run on loopback only.
pub fn loopback_addr(s: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = s
        .parse()
        .with_context(|| format!("{s} is not an IP:port address"))?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 127 => Ok(addr),
        _ => bail!("{addr} is not a 127.0.0.x address (the benchmark runs on loopback only)"),
    }
}

/// Counts a message as accepted by the server (MQTT PUBACK, XEP-0198 ack, or written
/// when nothing acknowledges).
pub(crate) fn on_accepted(shared: &Shared, intended_ns: u64) {
    shared.c.accepted.fetch_add(1, Ordering::Relaxed);
    if shared.in_window(intended_ns) {
        shared.record(|h| &mut h.accept, intended_ns, shared.now_ns());
    }
}

/// Counts a message as handed to the socket (generator lag).
pub(crate) fn on_written(shared: &Shared, intended_ns: u64) {
    shared.c.written.fetch_add(1, Ordering::Relaxed);
    if shared.in_window(intended_ns) {
        shared.record(|h| &mut h.send_lag, intended_ns, shared.now_ns());
    }
}

/// Deliveries at one connection: latency, duplicates, strays.
pub(crate) struct Delivery {
    me: u32,
    seen: HashSet<u64>,
}

impl Delivery {
    pub(crate) fn new(me: u32) -> Self {
        Self {
            me,
            seen: HashSet::new(),
        }
    }

    /// Something that is not this run's traffic for this connection.
    pub(crate) fn foreign(&self, shared: &Shared) {
        shared.c.foreign.fetch_add(1, Ordering::Relaxed);
    }

    /// A received payload: counted once per message number; repeats are duplicates,
    /// payloads of another run or recipient are foreign.
    pub(crate) fn record(&mut self, shared: &Shared, payload: &[u8]) {
        let now = shared.now_ns();
        let c = &shared.c;
        match sched::read_text_stamp(payload) {
            Some(t) if t.nonce == shared.run_nonce && t.to == self.me => {
                if !self.seen.insert(t.stamp.msg_no) {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                c.delivered.fetch_add(1, Ordering::Relaxed);
                c.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                if shared.in_window(now) {
                    c.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                }
                if shared.in_window(t.stamp.intended_ns) {
                    shared.record(|h| &mut h.delivery, t.stamp.intended_ns, now);
                }
            }
            _ => self.foreign(shared),
        }
    }
}

/// How peer connections are made.
#[derive(Debug, Clone)]
pub struct PeerOpts {
    /// The peer.
    pub peer: Peer,
    /// The peer server's pid (CPU and memory figures).
    pub server_pid: Option<u32>,
    /// Logins in flight.
    pub connect_concurrency: usize,
    /// Payload characters per message.
    pub payload_bytes: usize,
}

/// Connected peer clients.
pub struct PeerSession {
    /// One sender per connection.
    pub conns: Vec<mpsc::UnboundedSender<PeerCmd>>,
    /// Connection tasks.
    pub tasks: JoinSet<Result<()>>,
    /// Counters and histograms shared with the tasks.
    pub shared: Arc<Shared>,
    opts: PeerOpts,
    /// Connection `k` of this session is the peer's user or client `first_index + k`.
    first_index: u32,
}

impl PeerSession {
    /// An empty session; connection tasks end by themselves at `task_deadline`.
    pub fn new(opts: &PeerOpts, task_deadline: Instant) -> Result<Self> {
        let nonce: u64 = rand::random();
        // ack_every / ack_delay do not apply to the peers (they acknowledge per protocol).
        let shared = Arc::new(Shared::new(
            nonce,
            opts.payload_bytes,
            1,
            Duration::ZERO,
            task_deadline,
        )?);
        Ok(Self::with_shared(opts, shared, 0))
    }

    /// An empty session whose connection `k` is the peer's user or client
    /// `first_index + k`, counting into `shared` (several sessions can share one run's
    /// nonce and counters: the backlog's receivers log in twice).
    pub fn with_shared(opts: &PeerOpts, shared: Arc<Shared>, first_index: u32) -> Self {
        Self {
            conns: Vec::new(),
            tasks: JoinSet::new(),
            shared,
            opts: opts.clone(),
            first_index,
        }
    }

    /// Logs in connections until `n` are up (at most `connect_concurrency` at a time).
    pub async fn connect_up_to(&mut self, n: usize, deadline: Instant) -> Result<()> {
        let t = Instant::now();
        let from = self.conns.len();
        if n <= from {
            return Ok(());
        }
        let first = self.first_index;
        let index = move |k: usize| {
            u32::try_from(k)
                .ok()
                .and_then(|k| k.checked_add(first))
                .context("too many connections")
        };
        let total = index(n)?;
        let mut set: JoinSet<(u32, Result<PeerConn>)> = JoinSet::new();
        let mut slots: Vec<Option<PeerConn>> = (from..n).map(|_| None).collect();
        let mut next = index(from)?;
        let mut done = 0usize;
        // Each iteration joins one login: at most (n - from) iterations plus spawns.
        while done < n - from {
            while next < total && set.len() < self.opts.connect_concurrency.max(1) {
                let (peer, shared, i) = (self.opts.peer.clone(), Arc::clone(&self.shared), next);
                set.spawn(async move { (i, PeerConn::connect(&peer, i, shared, deadline).await) });
                next += 1;
            }
            let joined = tokio::time::timeout_at(deadline, set.join_next())
                .await
                .map_err(|_| anyhow!("logging in timed out after {done} of {}", n - from))?;
            let Some(joined) = joined else { break };
            let (i, conn) = joined.context("login task failed")?;
            let conn = conn.with_context(|| format!("logging in connection {i}"))?;
            if let Some(slot) = slots.get_mut((i - first) as usize - from) {
                *slot = Some(conn);
            }
            done += 1;
        }
        let mut with_acks = 0usize;
        for (k, conn) in slots.into_iter().enumerate() {
            let conn = conn.ok_or_else(|| anyhow!("connection {} was not opened", from + k))?;
            if conn.acknowledged() {
                with_acks += 1;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let me = index(from + k)?;
            let shared = Arc::clone(&self.shared);
            self.tasks.spawn(async move {
                let r = conn.run(me, rx).await;
                if let Err(e) = &r {
                    shared.log_error(&shared.c.conn_errors, format_args!("{e:#}"));
                }
                r
            });
            self.conns.push(tx);
        }
        eprintln!(
            "{}: logged in connections {}..{} in {:.1} s ({:.0}/s); server acks on {with_acks} of them",
            self.opts.peer.name(),
            index(from)?,
            total,
            secs(t),
            (n - from) as f64 / secs(t).max(1e-3)
        );
        Ok(())
    }

    /// Closes every connection (bounded wait).
    pub async fn finish(mut self) {
        for c in &self.conns {
            let _ = c.send(PeerCmd::Close);
        }
        let until = Instant::now() + Duration::from_secs(15);
        // At most one join per task, bounded by `until`.
        while let Ok(Some(_)) = tokio::time::timeout_at(until, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }
}

/// A logged-in connection of either protocol.
enum PeerConn {
    Xmpp(Box<xmpp::XmppConn>, Arc<xmpp::XmppOpts>),
    Mqtt(Box<mqtt::MqttConn>, Arc<mqtt::MqttOpts>),
}

impl PeerConn {
    async fn connect(peer: &Peer, i: u32, shared: Arc<Shared>, until: Instant) -> Result<Self> {
        Ok(match peer {
            Peer::Xmpp(o) => PeerConn::Xmpp(
                Box::new(xmpp::XmppConn::connect(o, i, shared, until).await?),
                Arc::clone(o),
            ),
            Peer::Mqtt(o) => PeerConn::Mqtt(
                Box::new(mqtt::MqttConn::connect(o, i, shared, until).await?),
                Arc::clone(o),
            ),
        })
    }

    /// Whether the server acknowledges this connection's messages (MQTT QoS 1 always;
    /// XMPP with stream management).
    fn acknowledged(&self) -> bool {
        match self {
            PeerConn::Xmpp(c, _) => c.stream_management(),
            PeerConn::Mqtt(..) => true,
        }
    }

    async fn run(self, me: u32, rx: mpsc::UnboundedReceiver<PeerCmd>) -> Result<()> {
        let r = match self {
            PeerConn::Xmpp(c, o) => c.run(me, o, rx).await,
            PeerConn::Mqtt(c, o) => c.run(me, o, rx).await,
        };
        r.map_err(|e| anyhow!("connection {me}: {e:#}"))
    }
}

/// One traffic run against the peer: log in `devices` connections, run the schedule
/// (each message from a random connection to a random other one), close.
pub async fn traffic_once(
    opts: &PeerOpts,
    devices: usize,
    p: &TrafficParams,
    setup_deadline: Instant,
    deadline: Instant,
) -> Result<TrafficReport> {
    let mut session = PeerSession::new(opts, deadline)?;
    let report = async {
        session.connect_up_to(devices, setup_deadline).await?;
        let n = session.conns.len();
        let senders = session.conns.clone();
        let pick = move |rng: &mut StdRng, stamp: Stamp| {
            let from = rng.gen_range(0..n);
            let mut to = rng.gen_range(0..n - 1);
            if to >= from {
                to += 1;
            }
            let to = u32::try_from(to).unwrap_or(u32::MAX);
            (from, PeerCmd::Send { to, stamp })
        };
        let mut report =
            traffic::run_open_loop(&session.shared, senders, opts.server_pid, p, n, pick).await?;
        report.target = opts.peer.name();
        Ok(report)
    }
    .await;
    session.finish().await;
    report
}

/// Idle memory of the peer server: its RSS before any connection and after each step
/// (connections logged in and quiet), with a least-squares slope.
pub async fn run_idle(
    opts: &PeerOpts,
    steps: &[usize],
    settle: Duration,
    deadline: Instant,
) -> Result<IdleReport> {
    let mut steps = steps.to_vec();
    steps.sort_unstable();
    steps.dedup();
    let pid = opts
        .server_pid
        .context("idle mode against a peer needs --server-pid")?;
    let loadavg = procfs::loadavg();
    let mut session = PeerSession::new(opts, deadline)?;
    let result = async {
        let baseline = idle::point(pid, 0, settle).await?;
        let mut points = Vec::new();
        for &n in &steps {
            session.connect_up_to(n, deadline).await?;
            points.push(idle::point(pid, n, settle).await?);
        }
        Ok(IdleReport::fit(baseline, points, loadavg))
    }
    .await;
    session.finish().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::TextStamp;

    #[test]
    fn only_loopback_targets() {
        assert!(loopback_addr("127.0.0.1:15222").is_ok());
        assert!(loopback_addr("127.0.0.9:1").is_ok());
        assert!(loopback_addr("10.0.0.1:15222").is_err());
        assert!(loopback_addr("[::1]:15222").is_err());
        assert!(loopback_addr("localhost:15222").is_err());
    }

    #[test]
    fn deliveries_are_counted_once_and_strays_apart() {
        let far = Instant::now() + Duration::from_secs(60);
        let shared = Shared::new(42, 100, 1, Duration::ZERO, far).unwrap();
        shared.window_start_ns.store(0, Ordering::Relaxed);
        shared.window_end_ns.store(u64::MAX, Ordering::Relaxed);
        let mut d = Delivery::new(3);
        let mk = |nonce, to, msg_no| {
            sched::text_payload(
                100,
                TextStamp {
                    nonce,
                    to,
                    stamp: Stamp {
                        intended_ns: 0,
                        msg_no,
                    },
                },
            )
        };
        d.record(&shared, mk(42, 3, 1).as_bytes());
        d.record(&shared, mk(42, 3, 2).as_bytes());
        d.record(&shared, mk(42, 3, 1).as_bytes()); // QoS 1 redelivery
        d.record(&shared, mk(41, 3, 5).as_bytes()); // an earlier run
        d.record(&shared, mk(42, 4, 6).as_bytes()); // someone else's
        d.record(&shared, b"hello");
        let c = &shared.c;
        assert_eq!(c.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(c.delivered_in_window.load(Ordering::Relaxed), 2);
        assert_eq!(c.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(c.foreign.load(Ordering::Relaxed), 3);
        assert_eq!(shared.hists.lock().unwrap().delivery.len(), 2);
        assert!(c.last_delivery_ns.load(Ordering::Relaxed) > 0);
    }

    /// A session that starts at index 5 logs in as clients 5 and 6 (the backlog's
    /// senders follow its receivers), and its close ends each MQTT session with
    /// DISCONNECT (the persistent session stays on the broker).
    #[tokio::test]
    async fn a_session_from_an_offset_uses_those_client_ids() {
        use rumqttc::mqttbytes::QoS;
        use rumqttc::mqttbytes::v4::{
            ConnAck, ConnectReturnCode, Packet, SubAck, SubscribeReasonCode,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = tokio::spawn(async move {
            let mut clients = Vec::new();
            let mut socks = Vec::new();
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = bytes::BytesMut::new();
                let mut out = bytes::BytesMut::new();
                // CONNECT, then SUBSCRIBE: at most a few reads each.
                for _ in 0..2 {
                    let p = loop {
                        if let Some(p) = mqtt::decode(&mut buf).unwrap() {
                            break p;
                        }
                        assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
                    };
                    match p {
                        Packet::Connect(c) => {
                            clients.push(c.client_id.clone());
                            let ack = ConnAck::new(ConnectReturnCode::Success, false);
                            mqtt::encode(&Packet::ConnAck(ack), &mut out).unwrap();
                        }
                        Packet::Subscribe(s) => {
                            let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
                            mqtt::encode(&Packet::SubAck(SubAck::new(s.pkid, codes)), &mut out)
                                .unwrap();
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    sock.write_all(&out).await.unwrap();
                    out.clear();
                }
                socks.push((sock, buf));
            }
            let mut ends = Vec::new();
            for (mut sock, mut buf) in socks {
                let p = loop {
                    if let Some(p) = mqtt::decode(&mut buf).unwrap() {
                        break p;
                    }
                    assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
                };
                ends.push(p);
            }
            clients.sort();
            (clients, ends)
        });

        let opts = PeerOpts {
            peer: Peer::Mqtt(Arc::new(mqtt::MqttOpts {
                addr,
                client_prefix: "hwlg".into(),
            })),
            server_pid: None,
            connect_concurrency: 1,
            payload_bytes: 100,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let shared = Arc::new(Shared::new(1, 100, 1, Duration::ZERO, deadline).unwrap());
        let mut session = PeerSession::with_shared(&opts, shared, 5);
        session.connect_up_to(2, deadline).await.unwrap();
        assert_eq!(session.conns.len(), 2);
        session.finish().await;
        let (clients, ends) = broker.await.unwrap();
        assert_eq!(clients, ["hwlg-5", "hwlg-6"]);
        assert_eq!(ends, [Packet::Disconnect, Packet::Disconnect]);
    }
}
