//! `backlog`: draining an offline backlog to reconnecting devices.
//!
//! N devices register, connect and pair into N/2 two-device groups. The second device
//! of every pair then disconnects (a normal close, after acknowledging its Welcome), and
//! the first devices send M messages into their groups: every one is durably queued in
//! an offline device's mailbox. The fill is closed-loop (at most `--fill-window`
//! submits unanswered) since only its end state matters, and it is timed separately.
//!
//! Then all N/2 offline devices reconnect at once (`--connect-concurrency` handshakes
//! in flight) and the run waits until every queued message has reached its device.
//! Recipients acknowledge cumulatively with the session's ack policy, so the server
//! also deletes what it delivered, as it would for real clients. The drain time runs
//! from the first reconnect to the last delivery and includes the TLS handshakes and
//! logins: it is what a server sees when a region's devices come back online.
//!
//! Against a peer (`--target mqtt|xmpp`) the same shape runs over its protocol: the
//! receiving half logs in once and leaves (a persistent MQTT session subscribed QoS 1 to
//! its topic; an XMPP user whose messages go to ejabberd's offline storage), the
//! sending half sends the messages to them (closed loop on the server's acknowledgement:
//! PUBACK, or the XEP-0198 ack), then the receivers log in again all at once and the
//! run waits for every message, acknowledging each as the protocol asks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use tokio::time::Instant;

use crate::devices::{Cmd, Shared};
use crate::peer::{PeerCmd, PeerOpts, PeerSession};
use crate::procfs::{self, CpuUse, Mem, round1};
use crate::sched::Stamp;
use crate::session::{Session, SessionOpts, secs};

/// Most messages one run queues.
const MAX_MESSAGES: u64 = 10_000_000;

/// Arguments of the `backlog` mode.
#[derive(Debug, Args)]
pub struct BacklogArgs {
    /// Devices: half of them send the backlog, the other half drain it.
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    /// Messages queued for the offline half (spread evenly over its devices).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Most fill submits unanswered at once.
    #[arg(long, default_value_t = 4096)]
    pub fill_window: u64,
}

impl BacklogArgs {
    fn validate(&self) -> Result<usize> {
        if self.devices < 2 {
            bail!("--devices must be at least 2");
        }
        if self.messages == 0 || self.messages > MAX_MESSAGES {
            bail!("--messages must be 1..={MAX_MESSAGES}");
        }
        if self.fill_window == 0 {
            bail!("--fill-window must be positive");
        }
        Ok(self.devices - self.devices % 2)
    }

    /// Set-up, a fill at 2,000 msgs/s or more, and a drain at 10,000 msgs/s or more.
    fn budget(&self, devices: usize) -> Duration {
        Duration::from_secs(120 + self.messages / 2_000 + self.messages / 10_000)
            + Duration::from_millis(40 * devices as u64)
    }
}

/// What one backlog run measured.
pub struct BacklogReport {
    devices: usize,
    messages: u64,
    fill_s: f64,
    fill_server_cpu: Option<CpuUse>,
    /// First reconnect to the last authenticated connection.
    reconnect_s: f64,
    /// First reconnect to every reconnected device's `drained` (Hushwire only: the peers
    /// have no such signal).
    all_drained_s: Option<f64>,
    /// First reconnect to the last delivery.
    drain_s: f64,
    delivered: u64,
    duplicates: u64,
    acks: u64,
    /// Deliveries that were not this run's messages for that receiver (leftovers of an
    /// earlier run in a peer's persistent session or offline store).
    foreign: u64,
    drain_server_cpu: Option<CpuUse>,
    generator_cpu: Option<CpuUse>,
    mem_full: Option<Mem>,
    mem_after: Option<Mem>,
}

impl BacklogReport {
    fn drain_rate(&self) -> f64 {
        self.delivered as f64 / self.drain_s.max(1e-9)
    }

    fn lost(&self) -> u64 {
        self.messages.saturating_sub(self.delivered)
    }

    fn server_us_per_msg(&self) -> Option<f64> {
        let cpu = self.drain_server_cpu.as_ref()?;
        Some(cpu.percent / 100.0 * self.drain_s * 1e6 / self.delivered.max(1) as f64)
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let cpu = |c: &Option<CpuUse>| c.as_ref().map(CpuUse::to_json);
        let mem = |m: &Option<Mem>| m.map(Mem::to_json);
        serde_json::json!({
            "devices": self.devices,
            "reconnecting_devices": self.devices / 2,
            "messages": self.messages,
            "per_device": self.messages / (self.devices as u64 / 2).max(1),
            "fill_s": round1(self.fill_s),
            "fill_msgs_per_s": round1(self.messages as f64 / self.fill_s.max(1e-9)),
            "fill_server_cpu": cpu(&self.fill_server_cpu),
            "reconnect_s": round1(self.reconnect_s * 1000.0) / 1000.0,
            "all_drained_s": self.all_drained_s.map(|s| round1(s * 1000.0) / 1000.0),
            "drain_s": round1(self.drain_s * 1000.0) / 1000.0,
            "drain_msgs_per_s": round1(self.drain_rate()),
            "delivered": self.delivered,
            "lost": self.lost(),
            "duplicates": self.duplicates,
            "acks": self.acks,
            "foreign": self.foreign,
            "drain_server_cpu": cpu(&self.drain_server_cpu),
            "server_us_per_msg": self.server_us_per_msg().map(round1),
            "generator_cpu": cpu(&self.generator_cpu),
            "server_mem_full": mem(&self.mem_full),
            "server_mem_after": mem(&self.mem_after),
        })
    }

    /// For people.
    pub fn human(&self) -> String {
        let cpu = |c: &Option<CpuUse>| c.as_ref().map_or("n/a".into(), CpuUse::describe);
        let receivers = self.devices / 2;
        format!(
            "backlog: {} messages queued for {receivers} offline devices ({} each)\n\
             fill: {:.1} s ({:.0} msgs/s), server {}\n\
             drain: {} delivered in {:.3} s = {:.0} msgs/s (reconnects done at {:.3} s{}); \
             lost {}, duplicates {}, acks {}, foreign {}\n\
             server during the drain: {}{}\n\
             generator during the drain: {}\n\
             server RSS with the backlog queued {} MiB, after the drain {} MiB",
            self.messages,
            self.messages / receivers.max(1) as u64,
            self.fill_s,
            self.messages as f64 / self.fill_s.max(1e-9),
            cpu(&self.fill_server_cpu),
            self.delivered,
            self.drain_s,
            self.drain_rate(),
            self.reconnect_s,
            self.all_drained_s.map_or(String::new(), |s| format!(
                ", every device drained at {s:.3} s"
            )),
            self.lost(),
            self.duplicates,
            self.acks,
            self.foreign,
            cpu(&self.drain_server_cpu),
            self.server_us_per_msg()
                .map_or(String::new(), |us| format!(", {us:.1} µs per message")),
            cpu(&self.generator_cpu),
            self.mem_full.map_or("n/a".into(), |m| format!(
                "{:.1}",
                m.vm_rss_kib as f64 / 1024.0
            )),
            self.mem_after.map_or("n/a".into(), |m| format!(
                "{:.1}",
                m.vm_rss_kib as f64 / 1024.0
            )),
        )
    }
}

fn cpu_now(pid: Option<u32>) -> Option<procfs::CpuSample> {
    pid.and_then(|p| procfs::cpu_sample(p, true).ok())
}

fn cpu_since(a: Option<procfs::CpuSample>, pid: Option<u32>) -> Option<CpuUse> {
    match (a, cpu_now(pid)) {
        (Some(a), Some(b)) => Some(procfs::cpu_between(&a, &b)),
        _ => None,
    }
}

/// Runs the mode against Hushwire, or against `peer` (ejabberd or Mosquitto) when
/// given, and prints the report.
pub async fn run_mode(
    opts: &SessionOpts,
    peer: Option<&PeerOpts>,
    args: &BacklogArgs,
    json: bool,
    deadline_secs: Option<u64>,
) -> Result<()> {
    let devices = args.validate()?;
    let budget = args.budget(devices);
    let deadline = Instant::now() + deadline_secs.map_or(budget, Duration::from_secs);
    let once = async {
        match peer {
            Some(p) => peer_backlog_once(p, args, devices, deadline).await,
            None => backlog_once(opts, args, devices, deadline).await,
        }
    };
    let report = match tokio::time::timeout_at(deadline + Duration::from_secs(30), once).await {
        Ok(r) => r?,
        Err(_) => bail!("hard deadline reached"),
    };
    let target = peer.map_or("hushwire", |p| p.peer.name());
    if json {
        println!(
            "{}",
            serde_json::json!({"mode": "backlog", "target": target, "report": report.to_json()})
        );
    } else {
        println!("{}", report.human());
    }
    Ok(())
}

/// Receivers are the peer's users/clients `0..devices/2`, senders the next `devices/2`;
/// sender `r + j` writes to receiver `j`.
async fn peer_backlog_once(
    peer: &PeerOpts,
    args: &BacklogArgs,
    devices: usize,
    deadline: Instant,
) -> Result<BacklogReport> {
    let half = devices / 2;
    let first_sender = u32::try_from(half)?;
    let setup_deadline = (Instant::now() + crate::setup_budget(devices)).min(deadline);
    let nonce: u64 = rand::random();
    let shared = std::sync::Arc::new(Shared::new(
        nonce,
        peer.payload_bytes,
        1,
        Duration::ZERO,
        deadline,
    )?);
    // Every message counts as "in the window" for the delivery counters.
    shared.window_start_ns.store(0, Ordering::Relaxed);
    shared.window_end_ns.store(u64::MAX, Ordering::Relaxed);
    let c = &shared.c;

    // The receivers log in once (session, subscription or roster presence) and leave.
    let mut first = PeerSession::with_shared(peer, std::sync::Arc::clone(&shared), 0);
    let logged_in = first.connect_up_to(half, setup_deadline).await;
    first.finish().await;
    logged_in?;
    let leftovers = c.foreign.load(Ordering::Relaxed);
    eprintln!(
        "{half} receivers logged in and went offline ({leftovers} leftovers of earlier runs)"
    );

    let mut senders = PeerSession::with_shared(peer, std::sync::Arc::clone(&shared), first_sender);
    let report = async {
        senders.connect_up_to(half, setup_deadline).await?;
        if senders.conns.len() < half {
            bail!("not every sender logged in");
        }
        let t = Instant::now();
        let cpu0 = cpu_now(peer.server_pid);
        peer_fill(&shared, &senders, args, deadline).await?;
        let fill_s = secs(t);
        let fill_server_cpu = cpu_since(cpu0, peer.server_pid);
        fill_done(&shared, args.messages, fill_s)?;
        let mem_full = peer.server_pid.and_then(|p| procfs::mem(p).ok());

        // The drain: every receiver logs in again at once.
        let me = Some(std::process::id());
        eprintln!("drain: {half} receivers log in again");
        let cpu0 = cpu_now(peer.server_pid);
        let gen0 = cpu_now(me);
        let t0 = Instant::now();
        let t0_ns = shared.now_ns();
        let mut again = PeerSession::with_shared(peer, std::sync::Arc::clone(&shared), 0);
        let drained = async {
            again.connect_up_to(half, deadline).await?;
            let reconnect_s = secs(t0);
            // Bounded by the deadline; polls every 5 ms.
            while c.delivered.load(Ordering::Relaxed) < args.messages {
                if Instant::now() >= deadline {
                    bail!(
                        "drain timed out: {} of {} delivered",
                        c.delivered.load(Ordering::Relaxed),
                        args.messages
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(reconnect_s)
        }
        .await;
        let last_ns = c.last_delivery_ns.load(Ordering::Relaxed);
        let drain_s = last_ns.saturating_sub(t0_ns) as f64 / 1e9;
        let drain_server_cpu = cpu_since(cpu0, peer.server_pid);
        let generator_cpu = cpu_since(gen0, me);
        // Let the last acknowledgements reach the server before sampling its memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mem_after = peer.server_pid.and_then(|p| procfs::mem(p).ok());
        again.finish().await;
        let reconnect_s = drained?;
        let delivered = c.delivered.load(Ordering::Relaxed);
        let duplicates = c.duplicates.load(Ordering::Relaxed);
        Ok(BacklogReport {
            devices,
            messages: args.messages,
            fill_s,
            fill_server_cpu,
            reconnect_s,
            all_drained_s: None,
            drain_s,
            delivered,
            duplicates,
            // Both protocols acknowledge every message received (PUBACK; XEP-0198 counts
            // each stanza).
            acks: delivered + duplicates,
            foreign: c.foreign.load(Ordering::Relaxed) - leftovers,
            drain_server_cpu,
            generator_cpu,
            mem_full,
            mem_after,
        })
    }
    .await;
    senders.finish().await;
    report
}

/// Sends `args.messages` from the senders (sender `k mod r` to receiver `k mod r`) and
/// waits until the server has acknowledged every one.
async fn peer_fill(
    shared: &Shared,
    senders: &PeerSession,
    args: &BacklogArgs,
    deadline: Instant,
) -> Result<()> {
    let n = senders.conns.len();
    if n == 0 {
        bail!("no senders");
    }
    eprintln!(
        "fill: {} messages from {n} senders, at most {} unacknowledged",
        args.messages, args.fill_window
    );
    let answered = || Ok(shared.c.accepted.load(Ordering::Relaxed));
    let send = |msg_no: u64, stamp: Stamp| {
        let k = usize::try_from(msg_no % n as u64)?;
        let to = u32::try_from(k)?;
        match senders.conns.get(k) {
            Some(tx) if tx.send(PeerCmd::Send { to, stamp }).is_ok() => Ok(()),
            _ => bail!("a sending connection ended during the fill"),
        }
    };
    closed_loop(shared, args, deadline, answered, send).await
}

async fn backlog_once(
    opts: &SessionOpts,
    args: &BacklogArgs,
    devices: usize,
    deadline: Instant,
) -> Result<BacklogReport> {
    let setup_deadline = (Instant::now() + crate::setup_budget(devices)).min(deadline);
    let mut session = Session::start(opts, devices, devices, setup_deadline, deadline).await?;
    let report = async {
        session.setup_groups(setup_deadline).await?;
        let senders: Vec<usize> = (0..devices).step_by(2).collect();
        let receivers: Vec<usize> = (1..devices).step_by(2).collect();
        session.close(&receivers, setup_deadline).await?;
        eprintln!("{} receiving devices went offline", receivers.len());
        let (fill_s, fill_server_cpu) = fill(&session, &senders, args, deadline).await?;
        let mem_full = session.server_pid.and_then(|p| procfs::mem(p).ok());
        drain(&mut session, &receivers, args.messages, deadline)
            .await
            .map(|mut r| {
                r.fill_s = fill_s;
                r.fill_server_cpu = fill_server_cpu;
                r.mem_full = mem_full;
                r
            })
    }
    .await;
    session.finish().await?;
    report
}

/// Sends `args.messages` from `senders` round-robin and waits until every one is
/// answered. Returns the time it took and the server's CPU over it.
async fn fill(
    session: &Session,
    senders: &[usize],
    args: &BacklogArgs,
    deadline: Instant,
) -> Result<(f64, Option<CpuUse>)> {
    let shared = &session.shared;
    let c = &shared.c;
    let txs: Vec<_> = senders
        .iter()
        .filter_map(|&i| session.conns.get(i).map(|h| h.tx.clone()))
        .collect();
    if txs.is_empty() {
        bail!("no sending devices");
    }
    eprintln!(
        "fill: {} messages from {} devices, at most {} unanswered",
        args.messages,
        txs.len(),
        args.fill_window
    );
    let t = Instant::now();
    let cpu0 = cpu_now(session.server_pid);
    let answered = || {
        let rejected = c.rejected.load(Ordering::Relaxed);
        if rejected > 0 {
            bail!("{rejected} fill submits were refused");
        }
        Ok(c.accepted.load(Ordering::Relaxed))
    };
    let send = |msg_no: u64, stamp: Stamp| {
        let k = usize::try_from(msg_no % txs.len() as u64)?;
        match txs.get(k) {
            Some(tx) if tx.send(Cmd::Traffic(stamp)).is_ok() => Ok(()),
            _ => bail!("a sending connection ended during the fill"),
        }
    };
    closed_loop(shared, args, deadline, answered, send).await?;
    let fill_s = secs(t);
    let cpu = cpu_since(cpu0, session.server_pid);
    fill_done(shared, args.messages, fill_s)?;
    Ok((fill_s, cpu))
}

/// The fill's closed loop: hands message numbers `0..args.messages` to `send`, at most
/// `args.fill_window` of them unanswered, until `answered` reaches the count. Bounded by
/// the count (each turn sends or waits 2 ms) and by `deadline`; reports every 10 s.
async fn closed_loop(
    shared: &Shared,
    args: &BacklogArgs,
    deadline: Instant,
    answered: impl Fn() -> Result<u64>,
    send: impl Fn(u64, Stamp) -> Result<()>,
) -> Result<()> {
    let t = Instant::now();
    let mut sent = 0u64;
    let mut last_report = Instant::now();
    loop {
        let done = answered()?;
        if done >= args.messages {
            return Ok(());
        }
        let room = args.fill_window.saturating_sub(sent - done.min(sent));
        for _ in 0..room.min(args.messages - sent) {
            let stamp = Stamp {
                intended_ns: shared.now_ns(),
                msg_no: sent,
            };
            send(sent, stamp)?;
            shared.c.sent.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
        if Instant::now() >= deadline {
            bail!("fill timed out: {done} of {} answered", args.messages);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "fill: {done} answered after {:.0} s ({:.0}/s)",
                secs(t),
                done as f64 / secs(t).max(1e-3)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reports the fill's end; refuses a run where anything was delivered before the
/// receivers came back.
fn fill_done(shared: &Shared, messages: u64, fill_s: f64) -> Result<()> {
    eprintln!(
        "fill: {messages} queued in {fill_s:.1} s ({:.0} msgs/s)",
        messages as f64 / fill_s.max(1e-9)
    );
    if shared.c.delivered.load(Ordering::Relaxed) != 0 {
        bail!("messages reached the offline receivers before they came back");
    }
    Ok(())
}

/// Reconnects `receivers` at once and waits (bounded by `deadline`) until `messages`
/// have been delivered.
async fn drain(
    session: &mut Session,
    receivers: &[usize],
    messages: u64,
    deadline: Instant,
) -> Result<BacklogReport> {
    let shared = std::sync::Arc::clone(&session.shared);
    let c = &shared.c;
    let drained_before = c.drained.load(Ordering::Relaxed);
    let acks_before = c.acks.load(Ordering::Relaxed);
    let pid = session.server_pid;
    let me = Some(std::process::id());
    eprintln!("drain: {} devices reconnect", receivers.len());
    let cpu0 = cpu_now(pid);
    let gen0 = cpu_now(me);
    let t0 = Instant::now();
    let t0_ns = shared.now_ns();
    session.reconnect(receivers, deadline).await?;
    let reconnect_s = secs(t0);
    let want_drained = drained_before + receivers.len() as u64;
    let mut all_drained_s = None;
    // Bounded by the deadline; polls every 5 ms.
    while c.delivered.load(Ordering::Relaxed) < messages {
        if all_drained_s.is_none() && c.drained.load(Ordering::Relaxed) >= want_drained {
            all_drained_s = Some(secs(t0));
        }
        if Instant::now() >= deadline {
            bail!(
                "drain timed out: {} of {messages} delivered",
                c.delivered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_ns = c.last_delivery_ns.load(Ordering::Relaxed);
    let drain_s = last_ns.saturating_sub(t0_ns) as f64 / 1e9;
    let drain_server_cpu = cpu_since(cpu0, pid);
    let generator_cpu = cpu_since(gen0, me);
    // `drained` follows the last page; wait for it (bounded) so the figure is complete.
    while all_drained_s.is_none() {
        if c.drained.load(Ordering::Relaxed) >= want_drained {
            all_drained_s = Some(secs(t0));
        } else if Instant::now() >= deadline {
            bail!("not every reconnected device received `drained`");
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Let the last acks reach the server's store before sampling its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_after = pid.and_then(|p| procfs::mem(p).ok());
    Ok(BacklogReport {
        devices: receivers.len() * 2,
        messages,
        fill_s: 0.0,
        fill_server_cpu: None,
        reconnect_s,
        all_drained_s,
        drain_s,
        delivered: c.delivered.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        acks: c.acks.load(Ordering::Relaxed) - acks_before,
        foreign: c.foreign.load(Ordering::Relaxed),
        drain_server_cpu,
        generator_cpu,
        mem_full: None,
        mem_after,
    })
}
