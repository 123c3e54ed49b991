//! `hushwire-loadgen`: load generator for the Hushwire server (the MLS Delivery Service).
//!
//! It starts `hushwire serve` as a separate process (optionally pinned with `taskset`)
//! or targets a running server, registers N devices (one account each), opens N
//! authenticated WebSockets and pairs them into N/2 two-device groups. Traffic is
//! synthetic: valid MLS `PrivateMessage` framing around ~100 B of opaque "ciphertext"
//! that carries the intended send time, since the server reads only the MLS header.
//!
//! Modes:
//! - `run`: open-loop constant-rate traffic, latency from the intended send time
//!   (no coordinated omission), throughput in a measurement window after a warm-up.
//! - `idle`: server RSS per idle authenticated connection at several counts, with a fit.
//! - `fanout`: one group of N devices; per-recipient and fan-out completion times of
//!   paced messages, server CPU per message at several group sizes.
//! - `max`: searches the highest offered rate the server sustains (delivered ≈
//!   offered, nothing lost, p99 bounded), one fresh server per probe.
//! - `--target xmpp|mqtt`: `run`, `max` and `idle` against ejabberd (XMPP) or Mosquitto
//!   (MQTT 3.1.1, QoS 1, persistent sessions) started by `bench/peers/`, for the
//!   side-by-side comparison (`bench/compare.sh`).
//! - `--real-mls`: every message is encrypted by its sender and decrypted by its
//!   recipient with OpenMLS in the generator (the default sends pre-encrypted synthetic
//!   envelopes, so that the server is what is measured).
//! - `backlog`: 1M messages queued for offline devices, then drained to them as they
//!   all reconnect; drain rate from the first reconnect to the last delivery.
//! - `media`: attachment throughput (end-to-end vs the same bytes without end-to-end
//!   encryption) and client/server peak RSS while moving a large file.
//!
//! # Layout
//! - `sched`: the pure parts (schedule, payload stamp, line fit), unit-tested.
//! - `procfs`: CPU and memory from `/proc`.
//! - `server`: the `hushwire serve` child process.
//! - `devices`: registration, connection tasks, group set-up, counters, histograms.
//! - `session`: server + devices + connections of one run.
//! - `traffic`: the scheduler and the traffic report.
//! - `idle`: idle mode.
//! - `fanout`: fan-out mode (its own connection tasks, per-message records).
//! - `backlog`: backlog mode (fill while half the devices are offline, then drain).
//! - `mls`: real OpenMLS groups for `--real-mls`.
//! - `peer`: the XMPP and MQTT clients and their sessions (same schedule and report).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::time::Instant;

mod backlog;
mod devices;
mod fanout;
mod fleet;
mod idle;
mod media;
mod mls;
mod peer;
mod procfs;
mod sched;
mod server;
mod session;
mod source;
mod traffic;

use peer::{Peer, PeerOpts};
use server::ServerOpts;
use session::{Session, SessionOpts};
use traffic::{TrafficParams, TrafficReport};

/// Load generator for the Hushwire server.
#[derive(Debug, Parser)]
#[command(name = "hushwire-loadgen", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// `hushwire serve` (started here unless --url is given).
    Hushwire,
    /// ejabberd over XMPP (plain TCP, SASL PLAIN), started by bench/peers/ejabberd.sh.
    Xmpp,
    /// Mosquitto over MQTT 3.1.1 (QoS 1, persistent sessions), bench/peers/mosquitto.sh.
    Mqtt,
}

#[derive(Debug, Args)]
struct Common {
    /// The server under test (`run`, `max` and `idle` work against every target).
    #[arg(long, global = true, value_enum, default_value_t = Target::Hushwire)]
    target: Target,
    /// The peer's address, 127.0.0.x only (default: 127.0.0.1:15222 for xmpp,
    /// 127.0.0.1:11883 for mqtt).
    #[arg(long, global = true, value_name = "IP:PORT")]
    peer_addr: Option<String>,
    /// XMPP domain of the users.
    #[arg(long, global = true, default_value = "bench.local")]
    xmpp_domain: String,
    /// XMPP users are `PREFIX<n>` (registered beforehand, n from --xmpp-first-user).
    #[arg(long, global = true, default_value = "user")]
    xmpp_user_prefix: String,
    /// Their passwords are `PREFIX<n>`.
    #[arg(long, global = true, default_value = "pass")]
    xmpp_password_prefix: String,
    /// The first user number.
    #[arg(long, global = true, default_value_t = 1)]
    xmpp_first_user: u32,
    /// Do not enable XEP-0198 stream management (acks) even when the server offers it.
    #[arg(long, global = true)]
    xmpp_no_sm: bool,
    /// MQTT client ids are `PREFIX-<i>` and topics `PREFIX/<i>`.
    #[arg(long, global = true, default_value = "hwlg")]
    mqtt_client_prefix: String,
    /// The `hushwire` binary to start.
    #[arg(long, global = true, default_value = "target/release/hushwire")]
    server_bin: PathBuf,
    /// Pin the started server with `taskset -c CPU` (e.g. 1).
    #[arg(long, global = true, value_name = "CPU")]
    server_cpu: Option<String>,
    /// Pin this generator (all its threads) with `taskset -a -cp CPU` (e.g. 0).
    #[arg(long, global = true, value_name = "CPU")]
    generator_cpu: Option<String>,
    /// Target a running server instead of starting one (base URL it printed).
    #[arg(long, global = true, requires = "pin")]
    url: Option<String>,
    /// The running server's pin (`sha256:…`).
    #[arg(long, global = true)]
    pin: Option<String>,
    /// Another node of the same deployment as --url (same certificate and path prefix);
    /// repeatable. Devices are spread round-robin over --url and these, so the two
    /// devices of a pair are always on different nodes (cross-node delivery).
    #[arg(long = "also-url", global = true, requires = "url", value_name = "URL")]
    also_url: Vec<String>,
    /// The running server's pid, for its CPU and memory figures.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Parent directory of the started server's temporary data directory.
    #[arg(long, global = true, value_name = "DIR")]
    data_parent: Option<PathBuf>,
    /// Keep the started server's data directory and log.
    #[arg(long, global = true)]
    keep_data: bool,
    /// Generator runtime threads (1: a single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Registrations in flight.
    #[arg(long, global = true, default_value_t = 64)]
    register_concurrency: usize,
    /// Open connection i from 127.0.0.(1 + i mod N): one source address gives at most
    /// about 28,000 connections to one server address (the ephemeral port range).
    /// Needs a loopback target.
    #[arg(long, global = true, default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    source_addrs: u8,
    /// WebSocket handshakes in flight.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// Synthetic ciphertext bytes per message (the stamp needs 20).
    #[arg(long, global = true, default_value_t = 100)]
    payload_bytes: usize,
    /// A recipient acknowledges after this many envelopes...
    #[arg(long, global = true, default_value_t = 64)]
    ack_every: u64,
    /// ...or this many ms after the first unacknowledged one.
    #[arg(long, global = true, default_value_t = 100)]
    ack_delay_ms: u64,
    /// Encrypt every message with OpenMLS at its sender and decrypt it at its recipient,
    /// in the generator (Hushwire only; default: pre-encrypted synthetic envelopes, so
    /// that the server is what is measured).
    #[arg(long, global = true)]
    real_mls: bool,
    /// RNG seed for group and direction choice.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Hard deadline for the whole invocation, seconds (default: derived from the mode).
    #[arg(long, global = true)]
    deadline_secs: Option<u64>,
    /// Print the final report as one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Constant-rate open-loop traffic; reports throughput, latency, server CPU and RSS.
    Run(RunArgs),
    /// Server RSS per idle authenticated connection at several connection counts.
    Idle(IdleArgs),
    /// Search the highest sustained rate (fresh server per probe).
    Max(MaxArgs),
    /// Idle connections over several running nodes (--url, --also-url), one generator
    /// process per node: past the 20,000 open files one process may hold (Hushwire only;
    /// bench/pg-cluster.sh pg N idle).
    FleetIdle(fleet::FleetIdleArgs),
    /// A fleet-idle child: registers devices against --url and connects them as told on
    /// stdin.
    #[command(hide = true)]
    Hold(fleet::HoldArgs),
    /// Fan-out of one group message to N connected devices (one group of all of them).
    Fanout(fanout::FanoutArgs),
    /// Offline backlog: queue messages for offline devices, then time their drain as the
    /// devices all reconnect (every target: persistent MQTT sessions, XMPP offline
    /// storage).
    Backlog(backlog::BacklogArgs),
    /// Attachments: end-to-end send+receive throughput of a large file against the same
    /// bytes moved without end-to-end encryption; client and server peak RSS.
    Media(media::MediaArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Connected devices (paired into devices/2 groups).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Offered messages per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Warm-up before the measurement window, seconds.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Longest wait for outstanding deliveries after the last send, seconds.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Connection counts to measure at (comma-separated; at most ~19,000 per process).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    steps: Vec<usize>,
    /// Seconds to wait after each step before checking for idleness.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
}

#[derive(Debug, Args)]
struct MaxArgs {
    /// Connected devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// First rate probed.
    #[arg(long, default_value_t = 5_000)]
    start_rate: u64,
    /// Highest rate probed.
    #[arg(long, default_value_t = 200_000)]
    max_rate: u64,
    /// Factor between probes until the first failure (then bisection).
    #[arg(long, default_value_t = 1.5)]
    growth: f64,
    /// Stop when the bracket is narrower than this fraction of the passing rate.
    #[arg(long, default_value_t = 0.05)]
    precision: f64,
    /// Most probes.
    #[arg(long, default_value_t = 10)]
    max_probes: usize,
    /// A probe passes if delivered/s ≥ this fraction of offered...
    #[arg(long, default_value_t = 0.99)]
    min_ratio: f64,
    /// ...nothing is lost or refused, and delivery p99 ≤ this many ms.
    #[arg(long, default_value_t = 100.0)]
    max_p99_ms: f64,
    /// Warm-up per probe, seconds.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Measurement window per probe, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Drain per probe, seconds.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
}

fn session_opts(c: &Common) -> SessionOpts {
    SessionOpts {
        server: ServerOpts {
            bin: c.server_bin.clone(),
            cpu: c.server_cpu.clone(),
            data_parent: c.data_parent.clone(),
            max_connections: 30_000,
            keep_data: c.keep_data,
        },
        url: c.url.clone(),
        also_urls: c.also_url.clone(),
        pin: c.pin.clone(),
        server_pid: c.server_pid,
        register_concurrency: c.register_concurrency,
        connect_concurrency: c.connect_concurrency,
        payload_bytes: c.payload_bytes,
        ack_every: c.ack_every,
        ack_delay: Duration::from_millis(c.ack_delay_ms),
        real_mls: c.real_mls,
    }
}

/// The peer to drive, `None` for Hushwire.
fn peer_opts(c: &Common) -> Result<Option<PeerOpts>> {
    let addr = |default: &str| peer::loopback_addr(c.peer_addr.as_deref().unwrap_or(default));
    let peer = match c.target {
        Target::Hushwire => return Ok(None),
        Target::Xmpp => Peer::Xmpp(std::sync::Arc::new(peer::xmpp::XmppOpts {
            addr: addr("127.0.0.1:15222")?,
            domain: c.xmpp_domain.clone(),
            user_prefix: c.xmpp_user_prefix.clone(),
            password_prefix: c.xmpp_password_prefix.clone(),
            first_user: c.xmpp_first_user,
            stream_management: !c.xmpp_no_sm,
        })),
        Target::Mqtt => Peer::Mqtt(std::sync::Arc::new(peer::mqtt::MqttOpts {
            addr: addr("127.0.0.1:11883")?,
            client_prefix: c.mqtt_client_prefix.clone(),
        })),
    };
    Ok(Some(PeerOpts {
        peer,
        server_pid: c.server_pid,
        connect_concurrency: c.connect_concurrency,
        payload_bytes: c.payload_bytes,
    }))
}

/// The target's name in reports.
fn target_name(peer: Option<&PeerOpts>) -> &'static str {
    peer.map_or("hushwire", |p| p.peer.name())
}

/// Time to register, connect and pair `devices` on a slow, busy machine.
fn setup_budget(devices: usize) -> Duration {
    Duration::from_secs(90) + Duration::from_millis(20 * devices as u64)
}

fn even(devices: usize) -> Result<usize> {
    if devices < 2 {
        bail!("--devices must be at least 2");
    }
    Ok(devices - devices % 2)
}

/// One session with one traffic run, against Hushwire or the peer.
async fn traffic_once(
    opts: &SessionOpts,
    peer: Option<&PeerOpts>,
    devices: usize,
    params: &TrafficParams,
    deadline: Instant,
) -> Result<TrafficReport> {
    let setup_deadline = (Instant::now() + setup_budget(devices)).min(deadline);
    if let Some(peer) = peer {
        return peer::traffic_once(peer, devices, params, setup_deadline, deadline).await;
    }
    let session = Session::start(opts, devices, devices, setup_deadline, deadline).await?;
    let report = async {
        session.setup_groups(setup_deadline).await?;
        traffic::run_traffic(&session, params).await
    }
    .await;
    session.finish().await?;
    report
}

/// Prints a mode's final report: one JSON object, or the human-readable text.
fn print_report(json: bool, mode: &str, target: &str, report: serde_json::Value, human: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({"mode": mode, "target": target, "report": report})
        );
    } else {
        println!("{human}");
    }
}

/// Runs `f`, giving up 30 s after `deadline` (every phase has its own, earlier bound).
async fn within<T>(deadline: Instant, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout_at(deadline + Duration::from_secs(30), f).await {
        Ok(r) => r,
        Err(_) => bail!("hard deadline reached"),
    }
}

fn run_secs(warmup: u64, duration: u64, drain: u64) -> Duration {
    Duration::from_secs(warmup + duration + drain + 60)
}

async fn run(cli: Cli) -> Result<()> {
    let c = &cli.common;
    let opts = session_opts(c);
    let peer = peer_opts(c)?;
    let peer = peer.as_ref();
    let target = target_name(peer);
    if peer.is_some() && c.real_mls {
        bail!("--real-mls runs against hushwire only");
    }
    if c.source_addrs > 1 {
        for url in c.url.iter().chain(&c.also_url) {
            let rest = url.strip_prefix("https://").unwrap_or(url);
            let host = rest.split(['/', ':']).next().unwrap_or_default();
            if !host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
            {
                bail!("--source-addrs needs a 127.0.0.x server, not {host}");
            }
        }
        source::set_source_addrs(c.source_addrs);
    }
    if peer.is_some()
        && matches!(
            cli.mode,
            Mode::Fanout(_) | Mode::Media(_) | Mode::FleetIdle(_) | Mode::Hold(_)
        )
    {
        bail!("fanout, media and fleet-idle run against hushwire only");
    }
    match &cli.mode {
        Mode::Run(a) => {
            let devices = even(a.devices)?;
            let budget =
                setup_budget(devices) + run_secs(a.warmup_secs, a.duration_secs, a.drain_secs);
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            let params = TrafficParams {
                rate: a.rate,
                warmup: Duration::from_secs(a.warmup_secs),
                measure: Duration::from_secs(a.duration_secs.max(1)),
                drain: Duration::from_secs(a.drain_secs),
                seed: c.seed,
            };
            let report = within(
                deadline,
                traffic_once(&opts, peer, devices, &params, deadline),
            )
            .await?;
            print_report(c.json, "run", target, report.to_json(), &report.human());
        }
        Mode::Idle(a) => {
            let max = a.steps.iter().copied().max().unwrap_or(0);
            if max == 0 {
                bail!("--steps needs at least one positive count");
            }
            let budget = setup_budget(max) * 2 + Duration::from_secs(60 * a.steps.len() as u64);
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            let settle = Duration::from_secs(a.settle_secs);
            let report = match peer {
                Some(p) => within(deadline, peer::run_idle(p, &a.steps, settle, deadline)).await?,
                None => within(deadline, idle::run_idle(&opts, &a.steps, settle, deadline)).await?,
            };
            print_report(c.json, "idle", target, report.to_json(), &report.human());
        }
        Mode::FleetIdle(a) => {
            let (Some(url), Some(pin)) = (&c.url, &c.pin) else {
                bail!("fleet-idle needs running nodes: --url, --pin and --also-url");
            };
            let max = a.steps.iter().copied().max().unwrap_or(0);
            let per_node = fleet::split_even(max, 1 + c.also_url.len());
            let most = per_node.first().copied().unwrap_or(0);
            let budget =
                setup_budget(most) * 2 + Duration::from_secs(240 + 90 * a.steps.len() as u64);
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            let urls: Vec<String> = std::iter::once(url.clone())
                .chain(c.also_url.iter().cloned())
                .collect();
            let flags = fleet::ChildFlags {
                pin: pin.clone(),
                source_addrs: c.source_addrs,
                register_concurrency: c.register_concurrency,
                connect_concurrency: c.connect_concurrency,
            };
            let report =
                within(deadline, fleet::run_fleet_idle(&urls, &flags, a, deadline)).await?;
            print_report(
                c.json,
                "fleet_idle",
                target,
                report.to_json(),
                &report.human(),
            );
        }
        Mode::Hold(a) => {
            if c.url.is_none() || !c.also_url.is_empty() {
                bail!("hold: one running node (--url, --pin)");
            }
            let budget = setup_budget(a.devices) * 2;
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            within(deadline, fleet::run_hold(&opts, a, deadline)).await?;
        }
        Mode::Fanout(a) => {
            fanout::run_mode(&opts, a, c.seed, c.json, c.deadline_secs).await?;
        }
        Mode::Backlog(a) => {
            backlog::run_mode(&opts, peer, a, c.json, c.deadline_secs).await?;
        }
        Mode::Media(a) => {
            let budget = Duration::from_secs(3600);
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            within(deadline, media::run_mode(&opts.server, a, c.json)).await?;
        }
        Mode::Max(a) => {
            let devices = even(a.devices)?;
            let per_probe =
                setup_budget(devices) + run_secs(a.warmup_secs, a.duration_secs, a.drain_secs);
            let budget = per_probe * u32::try_from(a.max_probes).unwrap_or(u32::MAX);
            let deadline = Instant::now() + c.deadline_secs.map_or(budget, Duration::from_secs);
            within(deadline, max_search(c, &opts, peer, a, devices, deadline)).await?;
        }
    }
    Ok(())
}

async fn max_search(
    c: &Common,
    opts: &SessionOpts,
    peer: Option<&PeerOpts>,
    a: &MaxArgs,
    devices: usize,
    deadline: Instant,
) -> Result<()> {
    let mut lo: Option<TrafficReport> = None;
    let mut hi: Option<u64> = None;
    let mut rate = a.start_rate.max(1);
    let mut probes = Vec::new();
    // At most `max_probes` probes.
    for i in 0..a.max_probes.max(1) {
        if Instant::now() >= deadline {
            eprintln!("deadline reached; stopping the search");
            break;
        }
        let params = TrafficParams {
            rate,
            warmup: Duration::from_secs(a.warmup_secs),
            measure: Duration::from_secs(a.duration_secs.max(1)),
            drain: Duration::from_secs(a.drain_secs),
            seed: c.seed.wrapping_add(i as u64),
        };
        eprintln!("probe {}: {rate} msgs/s", i + 1);
        let report = traffic_once(opts, peer, devices, &params, deadline).await?;
        let pass = report.sustained(a.min_ratio, a.max_p99_ms);
        eprintln!(
            "probe {}: {rate} msgs/s offered, {:.0} delivered/s, lost {}, p99 {:.2} ms, server CPU {} => {}",
            i + 1,
            report.delivered_per_s,
            report.lost,
            report.delivery.p99,
            report
                .server_cpu
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0}%", c.percent)),
            if pass { "sustained" } else { "NOT sustained" }
        );
        probes.push((rate, pass, report.clone()));
        if pass {
            lo = Some(report);
        } else {
            hi = Some(rate);
        }
        let lo_rate = lo.as_ref().map_or(0, |r| r.rate);
        rate = match hi {
            None => ((rate as f64 * a.growth).round() as u64).min(a.max_rate),
            Some(h) => (lo_rate + h) / 2,
        };
        let narrow =
            hi.is_some_and(|h| (h - lo_rate) as f64 <= a.precision * lo_rate.max(1) as f64);
        let at_top = hi.is_none() && lo_rate >= a.max_rate;
        if narrow || at_top || rate == 0 {
            break;
        }
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "max",
                "target": target_name(peer),
                "criteria": {"min_ratio": a.min_ratio, "max_p99_ms": a.max_p99_ms},
                "sustained_rate": lo.as_ref().map(|r| r.rate),
                "first_failing_rate": hi,
                "best": lo.as_ref().map(TrafficReport::to_json),
                "probes": probes.iter().map(|(r, pass, rep)| serde_json::json!({
                    "rate": r, "sustained": pass, "report": rep.to_json(),
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "criteria: delivered >= {:.0}% of offered in the window, nothing lost or refused, p99 <= {} ms",
            a.min_ratio * 100.0,
            a.max_p99_ms
        );
        for (r, pass, rep) in &probes {
            println!(
                "  {r:>7} msgs/s offered: {:>8.0} delivered/s, lost {:>6}, p50 {:>8.2} ms, p99 {:>9.2} ms, server CPU {:>5} {}",
                rep.delivered_per_s,
                rep.lost,
                rep.delivery.p50,
                rep.delivery.p99,
                rep.server_cpu
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.0}%", c.percent)),
                if *pass { "ok" } else { "FAIL" }
            );
        }
        match &lo {
            Some(best) => {
                println!(
                    "sustained maximum: {} msgs/s (first failing probe: {})",
                    best.rate,
                    hi.map_or("none".into(), |h| h.to_string())
                );
                println!("{}", best.human());
            }
            None => println!("no probe was sustained; lower --start-rate"),
        }
    }
    Ok(())
}

/// Pins every thread of this process to `cpu` (before the runtime starts its threads).
fn pin_self(cpu: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .arg("-a")
        .arg("-cp")
        .arg(cpu)
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset -a -cp {cpu} failed: {status}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        if let Some(cpu) = &cli.common.generator_cpu {
            pin_self(cpu)?;
        }
        let runtime = if cli.common.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cli.common.threads)
                .enable_all()
                .build()
        }
        .context("starting the async runtime")?;
        let result = runtime.block_on(run(cli));
        // Connection tasks still running past a failure are dropped here.
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
