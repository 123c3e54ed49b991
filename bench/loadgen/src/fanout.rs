//! `fanout`: the server's fan-out of one group message to N connected devices.
//!
//! One fresh server per group size. N devices (one account each) register and connect;
//! device 0 creates ONE group holding all of them (a synthetic epoch-0 commit with the
//! whole roster and one synthetic Welcome addressed to the other N−1 devices, which the
//! run waits to see delivered). Then M messages (after a few warm-up ones) are sent from
//! random members at a fixed pace, so that fan-outs normally do not overlap. For every
//! message the run keeps, per recipient, the time from the sender's write of the submit
//! to that device's receipt of the envelope, and the time until the LAST of the N−1
//! recipients had it (the fan-out completion time). Recipients acknowledge cumulatively
//! with the session's ack policy, as in the other modes.
//!
//! Server CPU is sampled from `/proc/PID/stat` over exactly the measured messages'
//! schedule, and once over an idle second before them; the per-message cost at several
//! group sizes is fitted to `fixed + per_recipient × (N − 1)`.
//!
//! The connection tasks are this module's own (they record per message, which the 1:1
//! traffic tasks do not); the server process and the registrations are the session's.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use hushwire_client::{ClientError, Connection, Signer as _};
use hushwire_proto::mls::{ContentType, synthetic_private_message};
use hushwire_proto::wire::{self, ClientFrame, client_frame, server_frame, submit_result};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::procfs::{self, CpuUse, Mem, round1};
use crate::sched::{self, Stamp};
use crate::session::{Session, SessionOpts, secs};

/// The server's default `limits.max_group_members` (the bench config keeps it).
pub const MAX_GROUP_DEVICES: usize = 1024;
/// Most messages per size (bounds the run and its per-message table).
const MAX_MESSAGES: u64 = 100_000;
/// Request id of the group-creating commit; message `k` uses `k + 1`.
const SETUP_REQUEST: u64 = u64::MAX;
/// Errors printed per kind before going quiet.
const MAX_LOGGED_ERRORS: u64 = 5;
const NS_PER_S: u64 = 1_000_000_000;

/// Arguments of the `fanout` mode.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Group sizes in devices (comma-separated, 2..=1024); each gets a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub devices: Vec<usize>,
    /// Measured messages per group size.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Messages sent before them and left out of every figure.
    #[arg(long, default_value_t = 10)]
    pub warmup_messages: u64,
    /// Messages per second, paced (1..=1000): slow enough that fan-outs do not overlap.
    #[arg(long, default_value_t = 10)]
    pub rate: u64,
    /// Longest wait for outstanding deliveries after the last send, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

impl FanoutArgs {
    /// Checks the bounds; returns the sizes.
    fn validate(&self) -> Result<Vec<usize>> {
        if self.devices.is_empty() {
            bail!("--devices needs at least one group size");
        }
        for &n in &self.devices {
            if !(2..=MAX_GROUP_DEVICES).contains(&n) {
                bail!(
                    "--devices {n}: a group size must be 2 to {MAX_GROUP_DEVICES} (the server's default limits.max_group_members)"
                );
            }
        }
        if !(1..=MAX_MESSAGES).contains(&self.messages) {
            bail!("--messages must be 1 to {MAX_MESSAGES}");
        }
        if self.warmup_messages > MAX_MESSAGES {
            bail!("--warmup-messages must be at most {MAX_MESSAGES}");
        }
        if !(1..=1000).contains(&self.rate) {
            bail!("--rate must be 1 to 1000 messages per second");
        }
        Ok(self.devices.clone())
    }

    /// Wall time one size may take: set-up on a slow, busy machine, the schedule, the
    /// drain, and a minute for the idle sample, closing and stopping the server.
    fn budget(&self, devices: usize) -> Duration {
        let total = self.messages + self.warmup_messages;
        Duration::from_secs(90 + 60 + self.drain_secs + total.div_ceil(self.rate))
            + Duration::from_millis(30 * devices as u64)
    }
}

/// Runs the mode: every size in turn, then the report (JSON on stdout with `json`).
pub async fn run_mode(
    opts: &SessionOpts,
    args: &FanoutArgs,
    seed: u64,
    json: bool,
    deadline_secs: Option<u64>,
) -> Result<()> {
    let sizes = args.validate()?;
    let budget: Duration = sizes.iter().map(|&n| args.budget(n)).sum();
    let deadline = Instant::now() + deadline_secs.map_or(budget, Duration::from_secs);
    let mut reports = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        if Instant::now() >= deadline {
            bail!("deadline reached before the group of {n}");
        }
        eprintln!("fan-out: group of {n} devices");
        let size_deadline = (Instant::now() + args.budget(n)).min(deadline);
        let fut = fanout_once(opts, args, n, seed.wrapping_add(i as u64), size_deadline);
        let report =
            match tokio::time::timeout_at(size_deadline + Duration::from_secs(30), fut).await {
                Ok(r) => r?,
                Err(_) => bail!("hard deadline reached in the group of {n}"),
            };
        if !json {
            println!("{}", report.human());
        }
        reports.push(report);
    }
    let model = cost_model(&reports);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "fanout",
                "runs": reports.iter().map(FanoutReport::to_json).collect::<Vec<_>>(),
                "server_cost_model": model.map(CostModel::to_json),
            })
        );
    } else if reports.len() > 1 {
        println!("{}", summary_table(&reports, model));
    }
    Ok(())
}

/// One group size on a fresh server.
async fn fanout_once(
    opts: &SessionOpts,
    args: &FanoutArgs,
    n: usize,
    seed: u64,
    deadline: Instant,
) -> Result<FanoutReport> {
    let setup_deadline =
        (Instant::now() + Duration::from_secs(90) + Duration::from_millis(30 * n as u64))
            .min(deadline);
    // Registration and the server come from the session; the connections are ours.
    let session = Session::start(opts, n, 0, setup_deadline, deadline).await?;
    let total = args.warmup_messages + args.messages;
    let fan = Arc::new(Fan::new(
        opts,
        &session,
        total,
        args.warmup_messages,
        deadline,
    )?);
    let mut tasks = JoinSet::new();
    let result = async {
        let conns = connect(
            &session,
            &fan,
            &mut tasks,
            opts.connect_concurrency,
            setup_deadline,
        )
        .await?;
        let group_create_s = create_group(&session, &fan, &conns, setup_deadline).await?;
        let report = measure(&session, &fan, &conns, args, seed, group_create_s).await;
        close(&conns, &mut tasks).await;
        report
    }
    .await;
    tasks.abort_all();
    session.finish().await?;
    result
}

/// Per-message observations, filled by the connection tasks.
struct Slot {
    /// When the sender started writing the submit (ns since `base`; `UNSET` before).
    written_ns: AtomicU64,
    /// When the sender read `accepted`.
    accepted_ns: AtomicU64,
    /// Recipients that received it (each at most once).
    received: AtomicU64,
    /// First and last receipt.
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

const UNSET: u64 = u64::MAX;

impl Slot {
    fn new() -> Self {
        Self {
            written_ns: AtomicU64::new(UNSET),
            accepted_ns: AtomicU64::new(UNSET),
            received: AtomicU64::new(0),
            first_ns: AtomicU64::new(UNSET),
            last_ns: AtomicU64::new(0),
        }
    }

    fn observation(&self) -> MsgObs {
        let opt = |v: u64| (v != UNSET).then_some(v);
        MsgObs {
            written_ns: opt(self.written_ns.load(Ordering::Relaxed)),
            received: self.received.load(Ordering::Relaxed),
            first_ns: self.first_ns.load(Ordering::Relaxed),
            last_ns: self.last_ns.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct FanCounters {
    drained: AtomicU64,
    setup_accepted: AtomicU64,
    setup_rejected: AtomicU64,
    welcomes: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    acks: AtomicU64,
    conn_errors: AtomicU64,
}

/// Histograms in µs (1 µs .. 10 min, 3 significant digits), measured messages only.
struct FanHists {
    /// Sender's write → this recipient's receipt, one sample per (message, recipient).
    recipient: Histogram<u64>,
    /// Sender's write → `accepted` at the sender.
    accept: Histogram<u64>,
    /// Intended send time → sender's write (generator lag).
    send_lag: Histogram<u64>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")
}

/// State shared by the run and every connection task.
struct Fan {
    base: Instant,
    run_nonce: u64,
    group_id: Vec<u8>,
    payload_bytes: usize,
    ack_every: u64,
    ack_delay: Duration,
    /// Connection tasks end by themselves at this instant.
    deadline: Instant,
    /// Messages `0..warmup` are left out of every figure.
    warmup: u64,
    slots: Vec<Slot>,
    c: FanCounters,
    hists: Mutex<FanHists>,
}

impl Fan {
    fn new(
        opts: &SessionOpts,
        session: &Session,
        total: u64,
        warmup: u64,
        deadline: Instant,
    ) -> Result<Self> {
        Ok(Self {
            base: Instant::now(),
            run_nonce: rand::random(),
            group_id: format!("{}.fanout", session.prefix).into_bytes(),
            payload_bytes: opts.payload_bytes,
            ack_every: opts.ack_every.max(1),
            ack_delay: opts.ack_delay,
            deadline,
            warmup,
            slots: (0..total).map(|_| Slot::new()).collect(),
            c: FanCounters::default(),
            hists: Mutex::new(FanHists {
                recipient: histogram()?,
                accept: histogram()?,
                send_lag: histogram()?,
            }),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn measured(&self, k: u64) -> bool {
        k >= self.warmup
    }

    fn slot(&self, k: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(k).ok()?)
    }

    fn record(&self, which: fn(&mut FanHists) -> &mut Histogram<u64>, from_ns: u64, to_ns: u64) {
        let us = to_ns.saturating_sub(from_ns) / 1000;
        if let Ok(mut h) = self.hists.lock() {
            which(&mut h).saturating_record(us.max(1));
        }
    }

    fn log_error(&self, count: &AtomicU64, what: impl std::fmt::Display) {
        if count.fetch_add(1, Ordering::Relaxed) < MAX_LOGGED_ERRORS {
            eprintln!("warning: {what}");
        }
    }

    /// A 16-byte message id: the run nonce and a number.
    fn message_id(&self, n: u64) -> Vec<u8> {
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&self.run_nonce.to_be_bytes());
        id.extend_from_slice(&n.to_be_bytes());
        id
    }
}

/// What a connection task is told to do.
enum FanCmd {
    /// Send this frame as is (the group-creating commit).
    Frame(Box<ClientFrame>),
    /// Send message `k` (intended at `intended_ns`) to the group.
    Send { k: u64, intended_ns: u64 },
    /// Acknowledge what is pending, close normally and end.
    Close,
}

/// The generator's end of one connection. Unbounded: the pacing loop never waits, and
/// the run's message count bounds every queue.
struct FanConn {
    tx: mpsc::UnboundedSender<FanCmd>,
}

/// Opens and authenticates one connection per registered device (at most `concurrency`
/// handshakes at a time), starts its task, and waits until each one received `drained`.
async fn connect(
    session: &Session,
    fan: &Arc<Fan>,
    tasks: &mut JoinSet<()>,
    concurrency: usize,
    deadline: Instant,
) -> Result<Vec<FanConn>> {
    let t = Instant::now();
    let n = session.devices.len();
    let mut out: Vec<Option<FanConn>> = (0..n).map(|_| None).collect();
    let mut pending = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    // Each iteration starts up to `concurrency` handshakes and joins one: at most 2n.
    while done < n {
        while next < n && pending.len() < concurrency.max(1) {
            let signer = session
                .devices
                .get(next)
                .map(|d| Arc::clone(&d.signer))
                .context("device index out of range")?;
            let (endpoint, i) = (session.endpoint.clone(), next);
            pending.spawn(
                async move { (i, Connection::connect_with_signer(&endpoint, &signer).await) },
            );
            next += 1;
        }
        let joined = tokio::time::timeout_at(deadline, pending.join_next())
            .await
            .map_err(|_| anyhow!("connecting timed out after {done} of {n} connections"))?;
        let Some(joined) = joined else { break };
        let (i, conn) = joined.context("connect task failed")?;
        let conn = conn
            .map_err(describe)
            .with_context(|| format!("connecting device {i}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(
            ConnTask {
                conn,
                rx,
                fan: Arc::clone(fan),
            }
            .run(),
        );
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(FanConn { tx });
        }
        done += 1;
    }
    // Bounded by the deadline.
    while fan.c.drained.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() >= deadline {
            bail!(
                "only {} of {n} connections finished their backlog",
                fan.c.drained.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "connected {n} devices in {:.1} s ({:.0}/s)",
        secs(t),
        n as f64 / secs(t).max(1e-3)
    );
    out.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| anyhow!("connection {i} was not opened")))
        .collect()
}

fn address(device: &crate::devices::Device) -> wire::DeviceAddress {
    wire::DeviceAddress {
        handle: device.handle.clone(),
        device_id: device.signer.device_id(),
    }
}

/// A syntactically valid `MLSMessage(Welcome)` header (version 1, wire format 3,
/// ciphersuite 1) with opaque content: the server reads only the header.
fn synthetic_welcome() -> Vec<u8> {
    let mut w = vec![0, 1, 0, 3, 0, 1];
    w.extend_from_slice(&[0x5a; 32]);
    w
}

/// Device 0 commits at epoch 0 with every device in the roster and one Welcome for all
/// the others (the commit itself goes to the old roster, just the sender). Waits until
/// it is accepted and every Welcome delivered; returns the seconds that took.
async fn create_group(
    session: &Session,
    fan: &Fan,
    conns: &[FanConn],
    deadline: Instant,
) -> Result<f64> {
    let t = Instant::now();
    let roster: Vec<_> = session.devices.iter().map(address).collect();
    let others: Vec<_> = roster.iter().skip(1).cloned().collect();
    let want = others.len() as u64;
    let mls = synthetic_private_message(&fan.group_id, 0, ContentType::Commit, &[0x5a; 32]);
    let frame = ClientFrame {
        request_id: SETUP_REQUEST,
        body: Some(client_frame::Body::Submit(wire::Submit {
            message_id: fan.message_id(SETUP_REQUEST).into(),
            group_id: fan.group_id.clone().into(),
            mls_message: mls.into(),
            roster,
            welcomes: vec![wire::WelcomeOut {
                welcome: synthetic_welcome().into(),
                recipients: others,
            }],
            group_info: Default::default(),
            expire_after_ms: 0,
            past_epoch: false,
        })),
    };
    conns
        .first()
        .context("no connections")?
        .tx
        .send(FanCmd::Frame(Box::new(frame)))
        .map_err(|_| anyhow!("the connection of device 0 ended"))?;
    let c = &fan.c;
    // Bounded by the deadline; polls every 10 ms.
    loop {
        if c.setup_rejected.load(Ordering::Relaxed) > 0 {
            bail!("the group-creating commit was refused (see the warning above)");
        }
        let welcomes = c.welcomes.load(Ordering::Relaxed);
        if c.setup_accepted.load(Ordering::Relaxed) > 0 && welcomes >= want {
            break;
        }
        if Instant::now() >= deadline {
            bail!("group creation timed out: {welcomes} of {want} Welcomes delivered");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = secs(t);
    eprintln!(
        "created one group of {} devices ({want} Welcomes delivered) in {took:.2} s",
        conns.len()
    );
    Ok(took)
}

/// CPU use of a process over a sample.
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// From `/proc/PID/stat` and its threads' (10 ms ticks), per thread name.
    ticks: Option<CpuUse>,
    /// The threads' run time summed from `/proc/PID/task/*/schedstat` (ns resolution;
    /// a thread that exits inside the sample loses its share).
    run_ns: Option<u64>,
    /// Length of the sample, seconds.
    secs: f64,
}

impl Cpu {
    /// Percent of one core: from the run time if known, else from the ticks.
    fn percent(&self) -> Option<f64> {
        match self.run_ns {
            Some(ns) if self.secs > 0.0 => Some(ns as f64 / 1e9 / self.secs * 100.0),
            _ => self.ticks.as_ref().map(|c| c.percent),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "percent": self.percent().map(|p| (p * 100.0).round() / 100.0),
            "run_ns": self.run_ns,
            "secs": (self.secs * 1000.0).round() / 1000.0,
            "ticks": self.ticks.as_ref().map(CpuUse::to_json),
        })
    }

    fn describe(&self) -> String {
        let pct = self.percent().map_or("-".into(), |p| format!("{p:.2}%"));
        match &self.ticks {
            Some(t) => format!("{pct} of a core (ticks: {})", t.describe()),
            None => pct,
        }
    }
}

/// The run time of a process's threads, in ns: the first field of each
/// `/proc/PID/task/TID/schedstat`, summed.
fn run_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0u64;
    for entry in dir.flatten().take(100_000) {
        // A thread that ended meanwhile is skipped.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = parse_schedstat(&text)
        {
            sum = sum.saturating_add(ns);
        }
    }
    Some(sum)
}

/// The run time (ns) from the text of a `schedstat` file: `run_ns wait_ns slices`.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

struct CpuProbe {
    at: std::time::Instant,
    ticks: Option<procfs::CpuSample>,
    run_ns: Option<u64>,
}

impl CpuProbe {
    fn take(pid: u32) -> Self {
        Self {
            at: std::time::Instant::now(),
            ticks: procfs::cpu_sample(pid, true).ok(),
            run_ns: run_ns(pid),
        }
    }

    fn until(self, end: Self) -> Cpu {
        let ticks = match (&self.ticks, &end.ticks) {
            (Some(a), Some(b)) => Some(procfs::cpu_between(a, b)),
            _ => None,
        };
        let run_ns = match (self.run_ns, end.run_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Cpu {
            ticks,
            run_ns,
            secs: end.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

/// Samples server and generator CPU between the two instants and the server's memory at
/// the end.
async fn sample_cpu(
    base: Instant,
    from_ns: u64,
    to_ns: u64,
    server_pid: Option<u32>,
) -> (Option<Cpu>, Cpu, Option<Mem>) {
    let me = std::process::id();
    tokio::time::sleep_until(base + Duration::from_nanos(from_ns)).await;
    let s0 = server_pid.map(CpuProbe::take);
    let g0 = CpuProbe::take(me);
    tokio::time::sleep_until(base + Duration::from_nanos(to_ns)).await;
    let s1 = server_pid.map(CpuProbe::take);
    let g1 = CpuProbe::take(me);
    let mem = server_pid.and_then(|p| procfs::mem(p).ok());
    let server = match (s0, s1) {
        (Some(a), Some(b)) => Some(a.until(b)),
        _ => None,
    };
    (server, g0.until(g1), mem)
}

/// When message `k` is due: `start + k / rate`.
fn intended_ns(start_ns: u64, rate: u64, k: u64) -> u64 {
    let offset = u128::from(k) * u128::from(NS_PER_S) / u128::from(rate.max(1));
    start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Idle sample, paced sends, drain; the report.
async fn measure(
    session: &Session,
    fan: &Arc<Fan>,
    conns: &[FanConn],
    args: &FanoutArgs,
    seed: u64,
    group_create_s: f64,
) -> Result<FanoutReport> {
    let n = conns.len();
    let recipients = (n - 1) as u64;
    let total = fan.slots.len() as u64;
    // Let the Welcome acks settle, then one idle second for the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_from = fan.now_ns();
    let (server_idle, _, _) = sample_cpu(
        fan.base,
        idle_from,
        idle_from + NS_PER_S,
        session.server_pid,
    )
    .await;

    let loadavg_before = procfs::loadavg();
    let start_ns = fan.now_ns() + 100_000_000;
    let w0 = intended_ns(start_ns, args.rate, args.warmup_messages);
    let w1 = intended_ns(start_ns, args.rate, total);
    let sampler = tokio::spawn(sample_cpu(fan.base, w0, w1, session.server_pid));
    eprintln!(
        "sending {total} messages ({} warm-up) at {}/s from random members",
        args.warmup_messages, args.rate
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dead = 0u64;
    // Bounded by `total` and by the connection tasks' deadline.
    for k in 0..total {
        let intended = intended_ns(start_ns, args.rate, k);
        let due = fan.base + Duration::from_nanos(intended);
        if due >= fan.deadline {
            bail!("the run's deadline falls inside the schedule");
        }
        tokio::time::sleep_until(due).await;
        let sender = rng.gen_range(0..n);
        fan.c.sent.fetch_add(1, Ordering::Relaxed);
        let ok = conns.get(sender).is_some_and(|c| {
            c.tx.send(FanCmd::Send {
                k,
                intended_ns: intended,
            })
            .is_ok()
        });
        if !ok {
            dead += 1;
        }
    }
    if dead > 0 {
        eprintln!("warning: {dead} messages were not sent: their connection had ended");
    }

    // Drain: every submit answered and every accepted message at all its recipients.
    let t_drain = Instant::now();
    let drain_until = (t_drain + Duration::from_secs(args.drain_secs)).min(fan.deadline);
    let c = &fan.c;
    let drained = loop {
        let answered = c.accepted.load(Ordering::Relaxed) + c.rejected.load(Ordering::Relaxed);
        let expected = c.accepted.load(Ordering::Relaxed) * recipients;
        if answered >= total - dead && c.deliveries.load(Ordering::Relaxed) >= expected {
            break true;
        }
        if Instant::now() >= drain_until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drain_s = secs(t_drain);
    let (server_cpu, generator_cpu, server_mem) = sampler.await.unwrap_or_default();

    let measured: Vec<MsgObs> = fan
        .slots
        .iter()
        .skip(usize::try_from(args.warmup_messages).unwrap_or(usize::MAX))
        .map(Slot::observation)
        .collect();
    let fanout = summarize(&measured, recipients)?;
    let (recipient, accept, send_lag) = match fan.hists.lock() {
        Ok(h) => (
            Pct::of(&h.recipient),
            Pct::of(&h.accept),
            Pct::of(&h.send_lag),
        ),
        Err(_) => bail!("histogram lock poisoned"),
    };
    Ok(FanoutReport {
        devices: n,
        recipients,
        messages: args.messages,
        warmup_messages: args.warmup_messages,
        rate: args.rate,
        payload_bytes: fan.payload_bytes,
        ack_every: fan.ack_every,
        ack_delay_ms: u64::try_from(fan.ack_delay.as_millis()).unwrap_or(u64::MAX),
        group_create_s,
        sent: c.sent.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        deliveries: c.deliveries.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        foreign: c.foreign.load(Ordering::Relaxed),
        acks: c.acks.load(Ordering::Relaxed),
        conn_errors: c.conn_errors.load(Ordering::Relaxed),
        drain_s,
        drained,
        fanout,
        recipient,
        accept,
        send_lag,
        server_cpu,
        server_idle,
        generator_cpu,
        server_mem,
        loadavg_before,
        loadavg_after: procfs::loadavg(),
    })
}

/// Tells every task to ack and close, and waits for them (bounded).
async fn close(conns: &[FanConn], tasks: &mut JoinSet<()>) {
    for c in conns {
        let _ = c.tx.send(FanCmd::Close);
    }
    let until = Instant::now() + Duration::from_secs(15);
    // At most one join per task, bounded by `until`.
    while let Ok(Some(_)) = tokio::time::timeout_at(until, tasks.join_next()).await {}
}

fn describe(e: ClientError) -> anyhow::Error {
    anyhow!("{e}")
}

/// One device's connection: sends what it is told, receives, records, acknowledges.
struct ConnTask {
    conn: Connection,
    rx: mpsc::UnboundedReceiver<FanCmd>,
    fan: Arc<Fan>,
}

impl ConnTask {
    async fn run(mut self) {
        let fan = Arc::clone(&self.fan);
        match self.run_inner().await {
            Ok(true) => {
                // Bounded: close waits at most 2 s for the server's reply.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.close()).await;
            }
            Ok(false) => {}
            Err(e) => fan.log_error(&fan.c.conn_errors, format_args!("connection ended: {e:#}")),
        }
    }

    /// Runs until [`FanCmd::Close`], the channel closes, the connection fails or the
    /// deadline passes; returns whether a normal close was asked for.
    async fn run_inner(&mut self) -> Result<bool> {
        let fan = Arc::clone(&self.fan);
        let (mut last_seq, mut acked, mut ack_armed) = (0u64, 0u64, false);
        let deadline = tokio::time::sleep_until(fan.deadline);
        tokio::pin!(deadline);
        let ack_timer = tokio::time::sleep_until(fan.deadline);
        tokio::pin!(ack_timer);
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => return Ok(false),
                cmd = self.rx.recv() => match cmd {
                    Some(FanCmd::Frame(frame)) => self.conn.send(&frame).await.map_err(describe)?,
                    Some(FanCmd::Send { k, intended_ns }) => self.send(k, intended_ns).await?,
                    Some(FanCmd::Close) | None => {
                        if last_seq > acked {
                            self.ack(last_seq).await?;
                        }
                        return Ok(true);
                    }
                },
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    if last_seq > acked {
                        self.ack(last_seq).await?;
                        acked = last_seq;
                    }
                }
                frame = self.conn.recv() => {
                    let frame = frame.map_err(describe)?;
                    if let Some(seq) = self.received(frame, last_seq) {
                        last_seq = seq;
                        if last_seq - acked >= fan.ack_every {
                            self.ack(last_seq).await?;
                            acked = last_seq;
                            ack_armed = false;
                        } else if !ack_armed {
                            ack_timer.as_mut().reset(Instant::now() + fan.ack_delay);
                            ack_armed = true;
                        }
                    }
                }
            }
        }
    }

    async fn ack(&mut self, up_to_seq: u64) -> Result<()> {
        self.fan.c.acks.fetch_add(1, Ordering::Relaxed);
        let frame = ClientFrame {
            request_id: 0,
            body: Some(client_frame::Body::Ack(wire::Ack { up_to_seq })),
        };
        self.conn.send(&frame).await.map_err(describe)
    }

    /// Sends message `k` to the group, stamped with its intended time and number.
    async fn send(&mut self, k: u64, intended_ns: u64) -> Result<()> {
        let fan = &self.fan;
        let ct = sched::ciphertext(
            fan.payload_bytes,
            Stamp {
                intended_ns,
                msg_no: k,
            },
        );
        let mls = synthetic_private_message(&fan.group_id, 1, ContentType::Application, &ct);
        let frame = ClientFrame {
            request_id: k + 1,
            body: Some(client_frame::Body::Submit(wire::Submit {
                message_id: fan.message_id(k).into(),
                group_id: fan.group_id.clone().into(),
                mls_message: mls.into(),
                ..Default::default()
            })),
        };
        let slot = fan.slot(k).context("message number out of range")?;
        // Stored before the write, so no receipt can see it unset.
        let now = fan.now_ns();
        slot.written_ns.store(now, Ordering::Relaxed);
        if fan.measured(k) {
            fan.record(|h| &mut h.send_lag, intended_ns, now);
        }
        self.conn.send(&frame).await.map_err(describe)
    }

    /// Handles a frame; returns the envelope's seq for a new delivery (above `last_seq`).
    fn received(&mut self, frame: wire::ServerFrame, last_seq: u64) -> Option<u64> {
        let fan = &self.fan;
        let c = &fan.c;
        match frame.body? {
            server_frame::Body::Deliver(env) => {
                let now = fan.now_ns();
                if env.seq <= last_seq {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let kind = wire::EnvelopeKind::try_from(env.kind);
                let stamp = sched::read_stamp(&env.payload);
                match (kind, stamp.and_then(|s| fan.slot(s.msg_no).map(|x| (s, x)))) {
                    (Ok(wire::EnvelopeKind::Application), Some((stamp, slot))) => {
                        c.deliveries.fetch_add(1, Ordering::Relaxed);
                        slot.received.fetch_add(1, Ordering::Relaxed);
                        slot.first_ns.fetch_min(now, Ordering::Relaxed);
                        slot.last_ns.fetch_max(now, Ordering::Relaxed);
                        let written = slot.written_ns.load(Ordering::Relaxed);
                        if fan.measured(stamp.msg_no) && written != UNSET {
                            fan.record(|h| &mut h.recipient, written, now);
                        }
                    }
                    (Ok(wire::EnvelopeKind::Welcome), _) => {
                        c.welcomes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(env.seq)
            }
            server_frame::Body::SubmitResult(result) => {
                let accepted = matches!(result.outcome, Some(submit_result::Outcome::Accepted(_)));
                let id = frame.request_id;
                if id == SETUP_REQUEST {
                    if accepted {
                        c.setup_accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        fan.log_error(
                            &c.setup_rejected,
                            format_args!("group-creating commit refused: {:?}", result.outcome),
                        );
                    }
                    return None;
                }
                let k = id.saturating_sub(1);
                if !accepted {
                    fan.log_error(
                        &c.rejected,
                        format_args!("message {k} refused: {:?}", result.outcome),
                    );
                    return None;
                }
                c.accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = fan.slot(k) {
                    let now = fan.now_ns();
                    slot.accepted_ns.store(now, Ordering::Relaxed);
                    let written = slot.written_ns.load(Ordering::Relaxed);
                    if fan.measured(k) && written != UNSET {
                        fan.record(|h| &mut h.accept, written, now);
                    }
                }
                None
            }
            server_frame::Body::Drained(_) => {
                c.drained.fetch_add(1, Ordering::Relaxed);
                None
            }
            server_frame::Body::Error(e) => {
                fan.log_error(&c.conn_errors, format_args!("server error frame: {e:?}"));
                None
            }
            _ => None,
        }
    }
}

// ---- The pure parts: per-message summary, percentiles, cost model ----

/// What was seen of one measured message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsgObs {
    /// When the sender wrote it (`None`: never sent).
    written_ns: Option<u64>,
    /// How many recipients got it.
    received: u64,
    /// First and last receipt (meaningful when `received > 0`).
    first_ns: u64,
    last_ns: u64,
}

/// Fan-out figures over the measured messages.
#[derive(Debug, Clone, Default)]
struct FanoutSummary {
    /// Write → last of the N−1 recipients, one sample per complete message.
    completion: Pct,
    /// Write → first recipient.
    first: Pct,
    /// Messages that reached every recipient.
    complete: u64,
    /// Sent messages that some recipient never got.
    incomplete: u64,
    /// Messages never written.
    unsent: u64,
    /// Deliveries missing from the incomplete messages.
    missing_deliveries: u64,
}

/// Completion time (write → last receipt) of every message that reached all
/// `recipients`, first-receipt time of every message that reached any, and what is
/// missing.
fn summarize(msgs: &[MsgObs], recipients: u64) -> Result<FanoutSummary> {
    let mut completion = histogram()?;
    let mut first = histogram()?;
    let mut s = FanoutSummary::default();
    let us = |from: u64, to: u64| (to.saturating_sub(from) / 1000).max(1);
    for m in msgs {
        let Some(w) = m.written_ns else {
            s.unsent += 1;
            continue;
        };
        if m.received > 0 {
            first.saturating_record(us(w, m.first_ns));
        }
        if m.received >= recipients {
            s.complete += 1;
            completion.saturating_record(us(w, m.last_ns));
        } else {
            s.incomplete += 1;
            s.missing_deliveries += recipients - m.received;
        }
    }
    s.completion = Pct::of(&completion);
    s.first = Pct::of(&first);
    Ok(s)
}

/// Percentiles of a µs histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pct {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Pct {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    fn to_json(self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "count": self.count, "p50_ms": r(self.p50), "p90_ms": r(self.p90),
            "p99_ms": r(self.p99), "p99_9_ms": r(self.p999), "max_ms": r(self.max),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// Server CPU per message as `fixed + per_recipient × recipients`, fitted over sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CostModel {
    fixed_us: f64,
    per_recipient_us: f64,
}

impl CostModel {
    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "fixed_us_per_message": round1(self.fixed_us),
            "us_per_recipient": (self.per_recipient_us * 100.0).round() / 100.0,
        })
    }
}

/// Least-squares fit of server µs per message against recipients, over the runs that
/// have a CPU figure; `None` with fewer than two distinct sizes.
fn cost_model(reports: &[FanoutReport]) -> Option<CostModel> {
    let points: Vec<(f64, f64)> = reports
        .iter()
        .filter_map(|r| Some((r.recipients as f64, r.server_us_per_msg()?)))
        .collect();
    let (a, b) = sched::linear_fit(&points)?;
    Some(CostModel {
        fixed_us: a,
        per_recipient_us: b,
    })
}

/// What one group size measured.
#[derive(Debug, Clone)]
struct FanoutReport {
    devices: usize,
    recipients: u64,
    messages: u64,
    warmup_messages: u64,
    rate: u64,
    payload_bytes: usize,
    ack_every: u64,
    ack_delay_ms: u64,
    group_create_s: f64,
    sent: u64,
    accepted: u64,
    rejected: u64,
    deliveries: u64,
    duplicates: u64,
    foreign: u64,
    acks: u64,
    conn_errors: u64,
    drain_s: f64,
    drained: bool,
    fanout: FanoutSummary,
    recipient: Pct,
    accept: Pct,
    send_lag: Pct,
    server_cpu: Option<Cpu>,
    server_idle: Option<Cpu>,
    generator_cpu: Cpu,
    server_mem: Option<Mem>,
    loadavg_before: Option<f64>,
    loadavg_after: Option<f64>,
}

impl FanoutReport {
    /// Server CPU time per measured message (its whole fan-out and the acks), µs.
    fn server_us_per_msg(&self) -> Option<f64> {
        per_msg_us(self.server_cpu.as_ref()?.percent()?, self.rate)
    }

    /// The same, less the idle server's CPU.
    fn server_net_us_per_msg(&self) -> Option<f64> {
        let idle = self.server_idle.as_ref()?.percent()?;
        per_msg_us(self.server_cpu.as_ref()?.percent()? - idle, self.rate)
    }

    fn generator_us_per_delivery(&self) -> Option<f64> {
        let per_msg = per_msg_us(self.generator_cpu.percent()?, self.rate)?;
        Some(per_msg / self.recipients.max(1) as f64)
    }

    fn to_json(&self) -> serde_json::Value {
        let per_recipient = |x: Option<f64>| x.map(|v| round1(v / self.recipients.max(1) as f64));
        serde_json::json!({
            "devices": self.devices,
            "recipients_per_message": self.recipients,
            "messages": self.messages,
            "warmup_messages": self.warmup_messages,
            "rate": self.rate,
            "payload_bytes": self.payload_bytes,
            "ack_every": self.ack_every,
            "ack_delay_ms": self.ack_delay_ms,
            "group_create_s": round1(self.group_create_s * 100.0) / 100.0,
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "deliveries": self.deliveries,
            "complete_messages": self.fanout.complete,
            "incomplete_messages": self.fanout.incomplete,
            "unsent_messages": self.fanout.unsent,
            "missing_deliveries": self.fanout.missing_deliveries,
            "duplicate_deliveries": self.duplicates,
            "foreign_deliveries": self.foreign,
            "acks": self.acks,
            "connection_errors": self.conn_errors,
            "drain_s": round1(self.drain_s),
            "drained": self.drained,
            "messages_per_s": self.rate,
            "deliveries_per_s": self.rate * self.recipients,
            "recipient_latency": self.recipient.to_json(),
            "fanout_completion": self.fanout.completion.to_json(),
            "first_recipient": self.fanout.first.to_json(),
            "accept_latency": self.accept.to_json(),
            "generator_send_lag": self.send_lag.to_json(),
            "server_cpu_us_per_message": self.server_us_per_msg().map(round1),
            "server_cpu_us_per_delivery": per_recipient(self.server_us_per_msg()),
            "server_net_cpu_us_per_message": self.server_net_us_per_msg().map(round1),
            "generator_cpu_us_per_delivery": self.generator_us_per_delivery().map(round1),
            "server_cpu": self.server_cpu.as_ref().map(Cpu::to_json),
            "server_idle_cpu": self.server_idle.as_ref().map(Cpu::to_json),
            "generator_cpu": self.generator_cpu.to_json(),
            "server_mem": self.server_mem.map(Mem::to_json),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
        })
    }

    fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fan-out: {} devices in one group ({} recipients per message), {} messages at {}/s (+{} warm-up), {} B ciphertext, ack every {} or {} ms",
            self.devices,
            self.recipients,
            self.messages,
            self.rate,
            self.warmup_messages,
            self.payload_bytes,
            self.ack_every,
            self.ack_delay_ms
        );
        let _ = writeln!(
            s,
            "  group created (commit accepted, {} Welcomes delivered) in {:.2} s",
            self.recipients, self.group_create_s
        );
        let _ = writeln!(
            s,
            "  sent {}, accepted {}, refused {}; deliveries {}, messages complete {}, incomplete {} ({} deliveries missing, after {:.1} s drain{}), duplicates {}, acks {}, connection errors {}",
            self.sent,
            self.accepted,
            self.rejected,
            self.deliveries,
            self.fanout.complete,
            self.fanout.incomplete,
            self.fanout.missing_deliveries,
            self.drain_s,
            if self.drained { "" } else { ", incomplete" },
            self.duplicates,
            self.acks,
            self.conn_errors
        );
        let _ = writeln!(
            s,
            "  per recipient      (write -> that device received): {}",
            self.recipient.line()
        );
        let _ = writeln!(
            s,
            "  fan-out completion (write -> last recipient):        {}",
            self.fanout.completion.line()
        );
        let _ = writeln!(
            s,
            "  first recipient    (write -> first recipient):       {}",
            self.fanout.first.line()
        );
        let _ = writeln!(
            s,
            "  accept             (write -> accepted at sender):    {}",
            self.accept.line()
        );
        let _ = writeln!(
            s,
            "  generator lag      (intended -> write):              {}",
            self.send_lag.line()
        );
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(s, "  server CPU (measured messages): {}", c.describe());
        }
        if let Some(c) = &self.server_idle {
            let _ = writeln!(s, "  server CPU idle, before:        {}", c.describe());
        }
        if let Some(us) = self.server_us_per_msg() {
            let _ = writeln!(
                s,
                "  server CPU per message: {us:.0} µs ({:.1} µs per recipient; {} µs net of idle)",
                us / self.recipients.max(1) as f64,
                self.server_net_us_per_msg()
                    .map_or("-".into(), |v| format!("{v:.0}"))
            );
        }
        if let Some(m) = &self.server_mem {
            let _ = writeln!(
                s,
                "  server memory: VmRSS {:.1} MiB, peak {:.1} MiB",
                m.vm_rss_kib as f64 / 1024.0,
                m.vm_hwm_kib as f64 / 1024.0
            );
        }
        {
            let c = &self.generator_cpu;
            let _ = writeln!(
                s,
                "  generator CPU: {} ({} µs per delivery)",
                c.describe(),
                self.generator_us_per_delivery()
                    .map_or("-".into(), |v| format!("{v:.1}"))
            );
        }
        let _ = write!(
            s,
            "  load average: {:?} before, {:?} after",
            self.loadavg_before, self.loadavg_after
        );
        s
    }
}

/// µs of CPU per message from a CPU percentage at `rate` messages per second.
fn per_msg_us(percent: f64, rate: u64) -> Option<f64> {
    (rate > 0).then(|| percent / 100.0 * 1e6 / rate as f64)
}

fn summary_table(reports: &[FanoutReport], model: Option<CostModel>) -> String {
    let mut s = String::from(
        "devices | per-recipient p50 / p99 | completion p50 / p99 / max | server µs/msg (per recipient)\n",
    );
    for r in reports {
        let us = r.server_us_per_msg();
        let _ = writeln!(
            s,
            "{:>7} | {:>7.2} / {:>7.2} ms | {:>7.2} / {:>7.2} / {:>7.2} ms | {} ({})",
            r.devices,
            r.recipient.p50,
            r.recipient.p99,
            r.fanout.completion.p50,
            r.fanout.completion.p99,
            r.fanout.completion.max,
            us.map_or("-".into(), |v| format!("{v:.0}")),
            us.map_or("-".into(), |v| format!(
                "{:.1}",
                v / r.recipients.max(1) as f64
            )),
        );
    }
    match model {
        Some(m) => {
            let _ = write!(
                s,
                "server CPU per message ≈ {:.0} µs + {:.2} µs × recipients (least squares)",
                m.fixed_us, m.per_recipient_us
            );
        }
        None => s.push_str("no cost model (needs CPU figures at two sizes)"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(written: Option<u64>, received: u64, first: u64, last: u64) -> MsgObs {
        MsgObs {
            written_ns: written,
            received,
            first_ns: first,
            last_ns: last,
        }
    }

    #[test]
    fn completion_is_the_last_receipt_of_complete_messages() {
        let ms = 1_000_000;
        let msgs = [
            obs(Some(0), 3, 2 * ms, 5 * ms),
            obs(Some(100 * ms), 3, 101 * ms, 110 * ms),
            // Two of three recipients: incomplete, but its first receipt counts.
            obs(Some(200 * ms), 2, 203 * ms, 204 * ms),
            obs(None, 0, UNSET, 0),
        ];
        let s = summarize(&msgs, 3).unwrap();
        assert_eq!((s.complete, s.incomplete, s.unsent), (2, 1, 1));
        assert_eq!(s.missing_deliveries, 1);
        assert_eq!(s.completion.count, 2);
        assert!((s.completion.p50 - 5.0).abs() < 0.01, "{:?}", s.completion);
        assert!((s.completion.max - 10.0).abs() < 0.01, "{:?}", s.completion);
        assert_eq!(s.first.count, 3);
        assert!((s.first.max - 3.0).abs() < 0.01, "{:?}", s.first);
    }

    #[test]
    fn nothing_received_gives_empty_figures() {
        let s = summarize(&[obs(Some(0), 0, UNSET, 0)], 999).unwrap();
        assert_eq!(s.incomplete, 1);
        assert_eq!(s.missing_deliveries, 999);
        assert_eq!(s.completion, Pct::default());
        assert_eq!(s.first.count, 0);
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = histogram().unwrap();
        for us in 1..=1000 {
            h.record(us * 100).unwrap();
        }
        let p = Pct::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn schedule_is_paced_and_cpu_converts_per_message() {
        assert_eq!(intended_ns(5, 10, 0), 5);
        assert_eq!(intended_ns(5, 10, 3), 5 + 300_000_000);
        assert_eq!(intended_ns(0, 3, 1), 333_333_333);
        // 50% of a core at 10 messages/s is 50 ms per message.
        assert_eq!(per_msg_us(50.0, 10), Some(50_000.0));
        assert_eq!(per_msg_us(50.0, 0), None);
        assert_eq!(
            parse_schedstat("364614353 38314105 54\n"),
            Some(364_614_353)
        );
        assert_eq!(parse_schedstat(""), None);
        let cpu = Cpu {
            ticks: None,
            run_ns: Some(500_000_000),
            secs: 2.0,
        };
        assert_eq!(cpu.percent(), Some(25.0));
        assert_eq!(Cpu::default().percent(), None);
    }

    fn report(devices: usize, cpu_percent: f64) -> FanoutReport {
        FanoutReport {
            devices,
            recipients: devices as u64 - 1,
            messages: 200,
            warmup_messages: 10,
            rate: 10,
            payload_bytes: 100,
            ack_every: 64,
            ack_delay_ms: 100,
            group_create_s: 0.1,
            sent: 210,
            accepted: 210,
            rejected: 0,
            deliveries: 0,
            duplicates: 0,
            foreign: 0,
            acks: 0,
            conn_errors: 0,
            drain_s: 0.0,
            drained: true,
            fanout: FanoutSummary::default(),
            recipient: Pct::default(),
            accept: Pct::default(),
            send_lag: Pct::default(),
            server_cpu: Some(Cpu {
                ticks: None,
                run_ns: Some((cpu_percent / 100.0 * 2e10) as u64),
                secs: 20.0,
            }),
            server_idle: None,
            generator_cpu: Cpu::default(),
            server_mem: None,
            loadavg_before: None,
            loadavg_after: None,
        }
    }

    #[test]
    fn cost_model_separates_fixed_and_per_recipient_cost() {
        // 100 µs + 10 µs per recipient, at 10 messages/s: percent = µs × 10 / 1e4.
        let pct = |recipients: f64| (100.0 + 10.0 * recipients) * 10.0 / 1e4;
        let reports = [
            report(10, pct(9.0)),
            report(100, pct(99.0)),
            report(1000, pct(999.0)),
        ];
        let m = cost_model(&reports).unwrap();
        assert!((m.fixed_us - 100.0).abs() < 1e-3, "{m:?}");
        assert!((m.per_recipient_us - 10.0).abs() < 1e-6, "{m:?}");
        assert!(cost_model(&reports[..1]).is_none());
        assert!(summary_table(&reports, Some(m)).contains("100 µs + 10.00 µs"));
    }

    #[test]
    fn arguments_are_bounded() {
        let args = |devices: Vec<usize>, messages: u64, rate: u64| FanoutArgs {
            devices,
            messages,
            warmup_messages: 10,
            rate,
            drain_secs: 10,
        };
        assert!(args(vec![10, 100, 1000], 200, 10).validate().is_ok());
        assert!(args(vec![1], 200, 10).validate().is_err());
        assert!(
            args(vec![MAX_GROUP_DEVICES + 1], 200, 10)
                .validate()
                .is_err()
        );
        assert!(args(vec![], 200, 10).validate().is_err());
        assert!(args(vec![10], 0, 10).validate().is_err());
        assert!(args(vec![10], 200, 0).validate().is_err());
    }
}
