//! Open-loop constant-rate traffic over the two-device groups, and its report.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::devices::{Cmd, Shared};
use crate::procfs::{self, CpuUse, Mem, round1};
use crate::sched::{Schedule, Stamp};
use crate::session::Session;

/// One traffic run.
#[derive(Debug, Clone, Copy)]
pub struct TrafficParams {
    /// Offered messages per second.
    pub rate: u64,
    /// Traffic before the measurement window.
    pub warmup: Duration,
    /// The measurement window.
    pub measure: Duration,
    /// Longest wait after the last send for outstanding deliveries.
    pub drain: Duration,
    /// RNG seed (groups and directions).
    pub seed: u64,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    /// Samples.
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Self {
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

/// What a traffic run measured.
#[derive(Debug, Clone, Default)]
pub struct TrafficReport {
    /// `hushwire`, `xmpp` or `mqtt`.
    pub target: &'static str,
    /// Messages were encrypted and decrypted with OpenMLS in the generator.
    pub real_mls: bool,
    /// Delivered messages that did not decrypt (`real_mls`).
    pub mls_errors: u64,
    pub devices: usize,
    pub groups: usize,
    pub rate: u64,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub payload_bytes: usize,
    pub ack_every: u64,
    pub ack_delay_ms: u64,
    /// Whole run.
    pub sent: u64,
    pub written: u64,
    pub accepted: u64,
    pub accepted_duplicate: u64,
    pub rejected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub acks: u64,
    pub conn_errors: u64,
    pub drain_s: f64,
    pub drained: bool,
    /// Measurement window.
    pub sent_in_window: u64,
    pub delivered_in_window: u64,
    pub delivered_per_s: f64,
    pub delivery: Lat,
    pub accept: Lat,
    pub send_lag: Lat,
    pub server_cpu: Option<CpuUse>,
    pub generator_cpu: Option<CpuUse>,
    pub server_mem: Option<Mem>,
    pub loadavg_before: Option<f64>,
    pub loadavg_after: Option<f64>,
}

impl TrafficReport {
    /// Whether the server kept up: delivered ≥ `min_ratio` × offered in the window, nothing
    /// lost or refused, p99 ≤ `max_p99_ms`.
    pub fn sustained(&self, min_ratio: f64, max_p99_ms: f64) -> bool {
        self.delivered_per_s >= min_ratio * self.rate as f64
            && self.lost == 0
            && self.rejected == 0
            && self.conn_errors == 0
            && self.mls_errors == 0
            && self.delivery.p99 <= max_p99_ms
    }

    /// Server CPU time per message delivered in the window, in µs.
    pub fn server_us_per_msg(&self) -> Option<f64> {
        let cpu = self.server_cpu.as_ref()?;
        (self.delivered_per_s > 0.0).then(|| cpu.percent / 100.0 * 1e6 / self.delivered_per_s)
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "real_mls": self.real_mls,
            "mls_errors": self.mls_errors,
            "server_cpu_us_per_msg": self.server_us_per_msg().map(round1),
            "devices": self.devices,
            "groups": self.groups,
            "offered_rate": self.rate,
            "warmup_s": self.warmup_s,
            "measure_s": self.measure_s,
            "payload_bytes": self.payload_bytes,
            "ack_every": self.ack_every,
            "ack_delay_ms": self.ack_delay_ms,
            "sent": self.sent,
            "written": self.written,
            "accepted": self.accepted,
            "accepted_duplicate": self.accepted_duplicate,
            "rejected": self.rejected,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicate_deliveries": self.duplicates,
            "foreign_deliveries": self.foreign,
            "acks": self.acks,
            "connection_errors": self.conn_errors,
            "drain_s": round1(self.drain_s),
            "drained": self.drained,
            "window": {
                "sent": self.sent_in_window,
                "delivered": self.delivered_in_window,
                "delivered_per_s": round1(self.delivered_per_s),
            },
            "delivery_latency": self.delivery.to_json(),
            "accept_latency": self.accept.to_json(),
            "generator_send_lag": self.send_lag.to_json(),
            "server_cpu": self.server_cpu.as_ref().map(CpuUse::to_json),
            "generator_cpu": self.generator_cpu.as_ref().map(CpuUse::to_json),
            "server_mem": self.server_mem.map(Mem::to_json),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
        })
    }

    /// Human-readable, several lines.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.target != "hushwire" {
            let _ = writeln!(
                s,
                "{}: {} connections, each message to a random other one, offered {} msgs/s ({} B payload), warm-up {:.0} s, window {:.0} s",
                self.target,
                self.devices,
                self.rate,
                self.payload_bytes,
                self.warmup_s,
                self.measure_s
            );
        } else {
            let _ = writeln!(
                s,
                "{} devices in {} groups, offered {} msgs/s ({} B {}), warm-up {:.0} s, window {:.0} s, ack every {} or {} ms",
                self.devices,
                self.groups,
                self.rate,
                self.payload_bytes,
                if self.real_mls {
                    "plaintext, MLS-encrypted and decrypted in the generator"
                } else {
                    "synthetic ciphertext"
                },
                self.warmup_s,
                self.measure_s,
                self.ack_every,
                self.ack_delay_ms
            );
        }
        let _ = writeln!(
            s,
            "  window:    sent {}, delivered {} => {:.0} delivered msgs/s",
            self.sent_in_window, self.delivered_in_window, self.delivered_per_s
        );
        let _ = writeln!(
            s,
            "  whole run: sent {}, accepted {}, refused {}, delivered {}, lost {} (after {:.1} s drain{}), duplicates {}, acks {}, connection errors {}{}",
            self.sent,
            self.accepted,
            self.rejected,
            self.delivered,
            self.lost,
            self.drain_s,
            if self.drained { "" } else { ", incomplete" },
            self.duplicates,
            self.acks,
            self.conn_errors,
            if self.real_mls {
                format!(", did not decrypt {}", self.mls_errors)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  delivery latency (intended send -> received): {}",
            self.delivery.line()
        );
        let _ = writeln!(
            s,
            "  accept latency   (intended send -> accepted): {}",
            self.accept.line()
        );
        let _ = writeln!(
            s,
            "  generator lag    (intended send -> written):  {}",
            self.send_lag.line()
        );
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(s, "  server CPU (window): {}", c.describe());
            if let Some(us) = self.server_us_per_msg() {
                let _ = writeln!(s, "  server CPU per delivered message: {us:.1} µs");
            }
        }
        if let Some(m) = &self.server_mem {
            let _ = writeln!(
                s,
                "  server memory: VmRSS {:.1} MiB, RssAnon {:.1} MiB, peak {:.1} MiB, {} threads",
                m.vm_rss_kib as f64 / 1024.0,
                m.rss_anon_kib as f64 / 1024.0,
                m.vm_hwm_kib as f64 / 1024.0,
                m.threads
            );
        }
        if let Some(c) = &self.generator_cpu {
            let _ = writeln!(s, "  generator CPU (window): {}", c.describe());
        }
        let _ = write!(
            s,
            "  load average: {:?} before, {:?} after",
            self.loadavg_before, self.loadavg_after
        );
        s
    }
}

type WindowSample = (Option<CpuUse>, Option<CpuUse>, Option<Mem>);

/// Samples server and generator CPU over `[w0, w1)` and the server's memory at `w1`.
async fn sample_window(shared: Arc<Shared>, w0: u64, w1: u64, pid: Option<u32>) -> WindowSample {
    let me = std::process::id();
    tokio::time::sleep_until(shared.base + Duration::from_nanos(w0)).await;
    let s0 = pid.and_then(|p| procfs::cpu_sample(p, true).ok());
    let g0 = procfs::cpu_sample(me, true).ok();
    tokio::time::sleep_until(shared.base + Duration::from_nanos(w1)).await;
    let s1 = pid.and_then(|p| procfs::cpu_sample(p, true).ok());
    let g1 = procfs::cpu_sample(me, true).ok();
    let mem = pid.and_then(|p| procfs::mem(p).ok());
    let between = |a: Option<procfs::CpuSample>, b: Option<procfs::CpuSample>| match (a, b) {
        (Some(a), Some(b)) => Some(procfs::cpu_between(&a, &b)),
        _ => None,
    };
    (between(s0, s1), between(g0, g1), mem)
}

/// Least time between two scheduler wake-ups: at high rates it sends small batches
/// instead of waking once per message.
const MIN_BATCH_INTERVAL: Duration = Duration::from_micros(200);

/// Hands every scheduled message to the connection `pick` chooses as it becomes due.
/// Returns how many could not be handed over (their connection had ended). Bounded by
/// the schedule's length and by `hard_stop`.
fn schedule_loop<C>(
    shared: &Shared,
    schedule: &Schedule,
    senders: &[mpsc::UnboundedSender<C>],
    mut pick: impl FnMut(&mut StdRng, Stamp) -> (usize, C),
    seed: u64,
    hard_stop: std::time::Instant,
) -> u64 {
    let c = &shared.c;
    let base = shared.base.into_std();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    let mut dead = 0u64;
    while next < schedule.total() {
        let woke = std::time::Instant::now();
        let end = schedule.due_end(shared.now_ns());
        for k in next..end {
            let stamp = Stamp {
                intended_ns: schedule.intended_ns(k),
                msg_no: k,
            };
            c.sent.fetch_add(1, Ordering::Relaxed);
            if shared.in_window(stamp.intended_ns) {
                c.sent_in_window.fetch_add(1, Ordering::Relaxed);
            }
            let (to, cmd) = pick(&mut rng, stamp);
            let sent = senders.get(to).is_some_and(|tx| tx.send(cmd).is_ok());
            if !sent {
                dead += 1;
            }
        }
        next = end;
        if next >= schedule.total() {
            break;
        }
        let now = std::time::Instant::now();
        if now >= hard_stop {
            eprintln!("warning: the scheduler fell too far behind; stopping early");
            break;
        }
        let due = base + Duration::from_nanos(schedule.intended_ns(next));
        let wake = due.max(woke + MIN_BATCH_INTERVAL);
        if wake > now {
            std::thread::sleep(wake - now);
        }
    }
    dead
}

/// Runs the schedule over the session's groups, drains, and reports.
pub async fn run_traffic(session: &Session, p: &TrafficParams) -> Result<TrafficReport> {
    let groups = session.conns.len() / 2;
    if groups == 0 {
        bail!("traffic needs at least two connected devices");
    }
    let senders: Vec<_> = session.conns.iter().map(|c| c.tx.clone()).collect();
    // A random group, a random direction.
    let pick = move |rng: &mut StdRng, stamp: Stamp| {
        let pair = rng.gen_range(0..groups);
        let side = rng.gen_range(0..2usize);
        (2 * pair + side, Cmd::Traffic(stamp))
    };
    run_open_loop(
        &session.shared,
        senders,
        session.server_pid,
        p,
        groups,
        pick,
    )
    .await
}

/// Runs the open-loop schedule over `senders` (one per connection; `pick` chooses the
/// sending connection and its command for every message), drains, and reports.
/// `groups` is reported as is (conversations among the connections).
pub async fn run_open_loop<C: Send + 'static>(
    shared: &Arc<Shared>,
    senders: Vec<mpsc::UnboundedSender<C>>,
    server_pid: Option<u32>,
    p: &TrafficParams,
    groups: usize,
    pick: impl FnMut(&mut StdRng, Stamp) -> (usize, C) + Send + 'static,
) -> Result<TrafficReport> {
    let devices = senders.len();
    if devices < 2 {
        bail!("traffic needs at least two connections");
    }
    let c = &shared.c;
    let base_sent = c.sent.load(Ordering::Relaxed);
    if base_sent != 0 {
        bail!("one traffic run per session");
    }
    let loadavg_before = procfs::loadavg();
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let start_ns = shared.now_ns() + ns(Duration::from_millis(100));
    let w0 = start_ns + ns(p.warmup);
    let w1 = w0 + ns(p.measure);
    shared.window_start_ns.store(w0, Ordering::Relaxed);
    shared.window_end_ns.store(w1, Ordering::Relaxed);
    let schedule = Schedule::new(start_ns, p.rate, ns(p.warmup + p.measure));
    let sampler = tokio::spawn(sample_window(Arc::clone(shared), w0, w1, server_pid));

    eprintln!(
        "traffic: {} msgs/s for {:.0} s ({} messages), window after {:.0} s",
        p.rate,
        (p.warmup + p.measure).as_secs_f64(),
        schedule.total(),
        p.warmup.as_secs_f64()
    );
    // The scheduler runs on its own OS thread: std::thread::sleep wakes within tens of
    // µs, where the runtime's timer has 1 ms granularity (which would add up to 1 ms of
    // generator lag to every figure).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let sched_shared = Arc::clone(shared);
    let hard_stop = std::time::Instant::now() + p.warmup + p.measure + Duration::from_secs(30);
    let seed = p.seed;
    std::thread::Builder::new()
        .name("lg-scheduler".into())
        .spawn(move || {
            let dead = schedule_loop(&sched_shared, &schedule, &senders, pick, seed, hard_stop);
            let _ = done_tx.send(dead);
        })
        .context("starting the scheduler thread")?;
    let dead_conns = done_rx.await.unwrap_or(0);
    if dead_conns > 0 {
        eprintln!("warning: {dead_conns} messages were not sent: their connection had ended");
    }

    // Drain: wait for every submit's result and every delivery (bounded).
    let t_drain = Instant::now();
    let drain_until = t_drain + p.drain;
    let sent = c.sent.load(Ordering::Relaxed);
    let drained = loop {
        let answered = c.accepted.load(Ordering::Relaxed) + c.rejected.load(Ordering::Relaxed);
        let delivered = c.delivered.load(Ordering::Relaxed);
        if answered >= sent && delivered >= c.accepted.load(Ordering::Relaxed) {
            break true;
        }
        if Instant::now() >= drain_until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drain_s = t_drain.elapsed().as_secs_f64();
    let (server_cpu, generator_cpu, server_mem) = sampler.await.unwrap_or((None, None, None));

    let (delivery, accept, send_lag) = match shared.hists.lock() {
        Ok(h) => (
            Lat::of(&h.delivery),
            Lat::of(&h.accept),
            Lat::of(&h.send_lag),
        ),
        Err(_) => bail!("histogram lock poisoned"),
    };
    let delivered = c.delivered.load(Ordering::Relaxed);
    let delivered_in_window = c.delivered_in_window.load(Ordering::Relaxed);
    Ok(TrafficReport {
        target: "hushwire",
        real_mls: shared.mls.is_some(),
        mls_errors: c.mls_errors.load(Ordering::Relaxed),
        devices,
        groups,
        rate: p.rate,
        warmup_s: p.warmup.as_secs_f64(),
        measure_s: p.measure.as_secs_f64(),
        payload_bytes: shared.payload_bytes,
        ack_every: shared.ack_every,
        ack_delay_ms: u64::try_from(shared.ack_delay.as_millis()).unwrap_or(u64::MAX),
        sent,
        written: c.written.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        accepted_duplicate: c.accepted_duplicate.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        delivered,
        lost: sent.saturating_sub(delivered),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        foreign: c.foreign.load(Ordering::Relaxed),
        acks: c.acks.load(Ordering::Relaxed),
        conn_errors: c.conn_errors.load(Ordering::Relaxed),
        drain_s,
        drained,
        sent_in_window: c.sent_in_window.load(Ordering::Relaxed),
        delivered_in_window,
        delivered_per_s: delivered_in_window as f64 / p.measure.as_secs_f64().max(1e-3),
        delivery,
        accept,
        send_lag,
        server_cpu,
        generator_cpu,
        server_mem,
        loadavg_before,
        loadavg_after: procfs::loadavg(),
    })
}
