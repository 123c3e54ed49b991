//! Fleet idle mode: idle connections beyond what one process can hold.
//!
//! Every process on this machine is capped at 20,000 open files, server and generator
//! alike, so 50,000 or 100,000 connections need several server nodes (one deployment on
//! PostgreSQL + NATS, `bench/pg-cluster.sh pg N idle`) and several generator processes.
//! This parent starts one `hold` child per node (the same binary). Each child registers
//! its share of the devices against its node and connects them when told to, over a
//! line protocol on its stdin and stdout:
//!
//! - child: `registered <devices> <unix ms>`, once every device is registered;
//! - parent: `connect <n>`; child: `connected <n>` once `n` of its devices are online;
//! - parent closes stdin: the child closes its connections and exits.
//!
//! The figures are the nodes' memory summed, and the least-squares slope over the
//! connected steps, as in the one-process idle mode.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hushwire_client::{ApiClient, ApiRequest, Endpoint, Method};
use hushwire_proto::wire;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::idle::{IdlePoint, IdleReport, unix_ms, wait_idle};
use crate::procfs::{self, Mem};
use crate::session::{Session, SessionOpts};

/// The most connections one process holds here: 20,000 open files, less its own.
pub const MAX_PER_PROCESS: usize = 19_000;

/// `fleet-idle` arguments.
#[derive(Debug, Args)]
pub struct FleetIdleArgs {
    /// Connected devices in total at each step, spread evenly over the nodes.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    pub steps: Vec<usize>,
    /// The pids of the nodes, in the order of --url and then each --also-url.
    #[arg(long, value_delimiter = ',', required = true)]
    pub node_pids: Vec<u32>,
    /// Seconds to let the nodes settle before each measurement.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
}

/// `hold` arguments (the child; not for direct use).
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Devices to register against --url.
    #[arg(long)]
    pub devices: usize,
}

/// What the child needs from the parent's command line.
#[derive(Debug, Clone)]
pub struct ChildFlags {
    /// The deployment's pin.
    pub pin: String,
    /// `--source-addrs`.
    pub source_addrs: u8,
    /// `--register-concurrency`.
    pub register_concurrency: usize,
    /// `--connect-concurrency`.
    pub connect_concurrency: usize,
}

/// What fleet idle mode measured.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// The nodes' memory summed, and the slope.
    pub total: IdleReport,
    /// Per node: the baseline, then each step.
    pub per_node: Vec<Vec<Mem>>,
    /// Devices per node at each step.
    pub split: Vec<Vec<usize>>,
}

impl FleetReport {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.per_node.len(),
            "total": self.total.to_json(),
            "per_node": self.per_node.iter().zip(&self.split).map(|(mems, split)| {
                serde_json::json!({
                    "baseline": mems.first().map(|m| m.to_json()),
                    "steps": mems.iter().skip(1).zip(split).map(|(m, n)| serde_json::json!({
                        "connections": n,
                        "mem": m.to_json(),
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// Human-readable.
    pub fn human(&self) -> String {
        format!(
            "{} nodes, memory summed over them\n{}",
            self.per_node.len(),
            self.total.human()
        )
    }
}

/// `total` split over `parts` as evenly as possible, the first ones taking the rest.
pub fn split_even(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// One `hold` child.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    node: usize,
}

impl Holder {
    fn spawn(
        node: usize,
        url: &str,
        flags: &ChildFlags,
        devices: usize,
        deadline: Instant,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this generator's binary")?;
        let secs = deadline.saturating_duration_since(Instant::now()).as_secs();
        let mut cmd = Command::new(exe);
        cmd.arg("--url")
            .arg(url)
            .arg("--pin")
            .arg(&flags.pin)
            .arg("--source-addrs")
            .arg(flags.source_addrs.to_string())
            .arg("--register-concurrency")
            .arg(flags.register_concurrency.to_string())
            .arg("--connect-concurrency")
            .arg(flags.connect_concurrency.to_string())
            .arg("--deadline-secs")
            .arg(secs.max(1).to_string())
            .arg("hold")
            .arg("--devices")
            .arg(devices.to_string());
        Self::start(cmd, node)
    }

    /// Starts `cmd` with piped stdin and stdout (stderr goes to ours).
    fn start(mut cmd: Command, node: usize) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a hold child")?;
        let stdin = child.stdin.take().context("the child's stdin")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            node,
        })
    }

    /// The child's next line, split into words, by `deadline`.
    async fn expect(&mut self, word: &str, deadline: Instant) -> Result<Vec<String>> {
        let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
            .await
            .with_context(|| format!("node {}: no `{word}` from its generator", self.node))?
            .context("reading a hold child's output")?
            .with_context(|| format!("node {}: its generator exited", self.node))?;
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if words.first().map(String::as_str) != Some(word) {
            bail!("node {}: expected `{word}`, got `{line}`", self.node);
        }
        Ok(words)
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the child's stdin is closed")?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Closes stdin and waits (bounded) for the child to exit.
    async fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("node {}: its generator exited with {status}", self.node);
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("node {}: its generator did not exit", self.node)
            }
        }
    }
}

async fn directory_root(api: &ApiClient) -> Result<wire::DirectoryRoot> {
    api.call(ApiRequest::new(Method::GET, "/v1/directory", Vec::new()))
        .await
        .context("GET /v1/directory")
}

/// A publish interval above this means no publication within a run: nothing to wait for.
const NO_PUBLICATION_MS: u64 = 600_000;

/// Waits until every node serves the same key-directory epoch, published after
/// `since_ms`, and no further epoch follows within one publish interval (at most 50,000
/// accounts go into one epoch, so 100,000 registrations take two). Nodes show the
/// store's newest epoch at once; the quiet interval is what lets every node apply it
/// (each follows at its own round, once per interval). Bounded by `deadline`.
async fn wait_directory_settled(
    endpoints: &[Endpoint],
    since_ms: u64,
    deadline: Instant,
) -> Result<u64> {
    let apis = endpoints
        .iter()
        .map(|e| ApiClient::new(e.clone()).context("building the HTTPS client"))
        .collect::<Result<Vec<_>>>()?;
    if let Some(api) = apis.first() {
        let root = directory_root(api).await?;
        if root.interval_ms > NO_PUBLICATION_MS {
            eprintln!(
                "fleet: the key directory publishes every {} s: none expected during the run",
                root.interval_ms / 1000
            );
            return Ok(root.epoch);
        }
    }
    let mut settled: Option<(u64, Instant)> = None;
    // Bounded by `deadline`; polls every second.
    loop {
        let mut roots = Vec::with_capacity(apis.len());
        for (node, api) in apis.iter().enumerate() {
            // A node answers only between publications: publishing (or rebuilding after
            // another node won the epoch) holds its tree. Not yet settled, then.
            match directory_root(api).await {
                Ok(root) => roots.push(root),
                Err(e) => eprintln!("fleet: node {node}: {e:#}; asking again"),
            }
        }
        let epoch = roots.first().map_or(0, |r| r.epoch);
        let interval = Duration::from_millis(roots.first().map_or(0, |r| r.interval_ms));
        let same = roots.len() == apis.len()
            && roots
                .iter()
                .all(|r| r.epoch == epoch && r.published_at_ms >= since_ms);
        settled = match settled {
            Some((e, t)) if same && e == epoch => {
                if t.elapsed() > interval + Duration::from_secs(5) {
                    return Ok(epoch);
                }
                Some((e, t))
            }
            _ if same => Some((epoch, Instant::now())),
            _ => None,
        };
        if Instant::now() >= deadline {
            let epochs: Vec<u64> = roots.iter().map(|r| r.epoch).collect();
            bail!("the nodes' key directories did not settle (epochs {epochs:?})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sums the nodes' memory (threads too).
fn sum(mems: &[Mem]) -> Mem {
    mems.iter().fold(Mem::default(), |a, m| Mem {
        vm_rss_kib: a.vm_rss_kib + m.vm_rss_kib,
        rss_anon_kib: a.rss_anon_kib + m.rss_anon_kib,
        vm_hwm_kib: a.vm_hwm_kib + m.vm_hwm_kib,
        threads: a.threads + m.threads,
    })
}

/// Lets every node settle, then reads their memory.
async fn measure(pids: &[u32], settle: Duration) -> Result<Vec<Mem>> {
    tokio::time::sleep(settle).await;
    for &pid in pids {
        wait_idle(pid, Duration::ZERO).await?;
    }
    pids.iter().map(|&pid| procfs::mem(pid)).collect()
}

/// The parent: one `hold` child per node, the steps in order, the memory of every node.
pub async fn run_fleet_idle(
    urls: &[String],
    flags: &ChildFlags,
    args: &FleetIdleArgs,
    deadline: Instant,
) -> Result<FleetReport> {
    if urls.len() != args.node_pids.len() {
        bail!(
            "{} node URLs but {} --node-pids",
            urls.len(),
            args.node_pids.len()
        );
    }
    let mut steps = args.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    steps.retain(|&s| s > 0);
    let Some(&max) = steps.last() else {
        bail!("--steps needs at least one positive count");
    };
    let nodes = urls.len();
    let most = split_even(max, nodes).first().copied().unwrap_or(0);
    if most > MAX_PER_PROCESS {
        bail!(
            "{max} connections over {nodes} nodes is {most} per node and per generator process; \
             at most {MAX_PER_PROCESS} fit under this machine's open-file cap: add nodes"
        );
    }
    let endpoints = urls
        .iter()
        .map(|u| {
            Endpoint::new(u, Some(&flags.pin))
                .map(|e| e.with_connect_timeout(Duration::from_secs(30)))
                .context("node URL or pin")
        })
        .collect::<Result<Vec<_>>>()?;
    let loadavg = procfs::loadavg();
    let t = Instant::now();
    let mut holders = Vec::with_capacity(nodes);
    for (node, (url, devices)) in urls.iter().zip(split_even(max, nodes)).enumerate() {
        holders.push(Holder::spawn(node, url, flags, devices, deadline)?);
    }
    let result = async {
        let mut registered_ms = 0;
        for h in &mut holders {
            let words = h.expect("registered", deadline).await?;
            let ms: u64 = words
                .get(2)
                .and_then(|w| w.parse().ok())
                .context("a `registered` line without its time")?;
            registered_ms = registered_ms.max(ms);
        }
        eprintln!(
            "fleet: {max} devices registered over {nodes} nodes in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let epoch = wait_directory_settled(&endpoints, registered_ms, deadline).await?;
        eprintln!(
            "fleet: every node serves key directory epoch {epoch} (waited {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let settle = Duration::from_secs(args.settle_secs);
        let mut per_node: Vec<Vec<Mem>> = vec![Vec::new(); nodes];
        let base = measure(&args.node_pids, settle).await?;
        let baseline = IdlePoint {
            connections: 0,
            mem: sum(&base),
            tcp_mem_pages: procfs::tcp_mem_pages(),
        };
        for (v, m) in per_node.iter_mut().zip(base) {
            v.push(m);
        }
        let mut split = vec![Vec::new(); nodes];
        let mut points = Vec::new();
        for &step in &steps {
            let t = Instant::now();
            let shares = split_even(step, nodes);
            for (h, n) in holders.iter_mut().zip(&shares) {
                h.send(&format!("connect {n}")).await?;
            }
            for h in &mut holders {
                h.expect("connected", deadline).await?;
            }
            eprintln!(
                "fleet: {step} connected in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            let mems = measure(&args.node_pids, settle).await?;
            let p = IdlePoint {
                connections: step,
                mem: sum(&mems),
                tcp_mem_pages: procfs::tcp_mem_pages(),
            };
            eprintln!(
                "fleet: {step} connections: nodes' VmRSS {} KiB in total",
                p.mem.vm_rss_kib
            );
            points.push(p);
            for ((v, m), (s, n)) in per_node
                .iter_mut()
                .zip(mems)
                .zip(split.iter_mut().zip(shares))
            {
                v.push(m);
                s.push(n);
            }
        }
        Ok(FleetReport {
            total: IdleReport::fit(baseline, points, loadavg),
            per_node,
            split,
        })
    }
    .await;
    for h in holders {
        if let Err(e) = h.finish().await {
            eprintln!("warning: {e:#}");
        }
    }
    result
}

/// The child: registers `devices` against `opts.url`, then connects as told on stdin.
pub async fn run_hold(opts: &SessionOpts, args: &HoldArgs, deadline: Instant) -> Result<()> {
    let mut session = Session::start(opts, args.devices, 0, deadline, deadline).await?;
    let result = async {
        println!("registered {} {}", args.devices, unix_ms());
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // One command per line until EOF, bounded by the deadline.
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(line) => line.context("reading stdin")?,
                Err(_) => bail!("hold: deadline reached"),
            };
            let Some(line) = line else {
                return Ok(());
            };
            let n = line
                .strip_prefix("connect ")
                .and_then(|n| n.trim().parse::<usize>().ok())
                .with_context(|| format!("hold: unknown command `{line}`"))?;
            session.connect_up_to(n, deadline).await?;
            println!("connected {}", session.conns.len());
        }
    }
    .await;
    session.finish().await?;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn steps_split_evenly_over_the_nodes() {
        assert_eq!(
            split_even(100_000, 6),
            vec![16_667, 16_667, 16_667, 16_667, 16_666, 16_666]
        );
        assert_eq!(split_even(10, 3), vec![4, 3, 3]);
        assert_eq!(split_even(5, 1), vec![5]);
        assert_eq!(split_even(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split_even(7, 0), vec![7]);
    }

    fn sh(script: &str) -> Holder {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        Holder::start(cmd, 2).unwrap()
    }

    #[tokio::test]
    async fn the_parent_drives_a_child_through_the_line_protocol() {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Answers each `connect N` with `connected N`; exits 0 at EOF.
        let mut h = sh("echo registered 4 1700000000000; \
             while read cmd n; do echo \"connected $n\"; done");
        let w = h.expect("registered", deadline).await.unwrap();
        assert_eq!(w, ["registered", "4", "1700000000000"]);
        for n in [1, 4] {
            h.send(&format!("connect {n}")).await.unwrap();
            let w = h.expect("connected", deadline).await.unwrap();
            assert_eq!(w, ["connected".to_string(), n.to_string()]);
        }
        h.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_child_that_says_something_else_or_fails_is_an_error() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut h = sh("echo oops; exit 3");
        let e = h.expect("registered", deadline).await.unwrap_err();
        assert_eq!(e.to_string(), "node 2: expected `registered`, got `oops`");
        let e = h.expect("registered", deadline).await.unwrap_err();
        assert_eq!(e.to_string(), "node 2: its generator exited");
        let e = h.finish().await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("node 2: its generator exited with"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_silent_child_times_out() {
        let mut h = sh("read never; exit 0");
        let soon = Instant::now() + Duration::from_millis(200);
        let e = h.expect("connected", soon).await.unwrap_err();
        assert_eq!(e.to_string(), "node 2: no `connected` from its generator");
        // Closing stdin ends `read`, and the child exits 0.
        h.finish().await.unwrap();
    }

    #[test]
    fn memory_sums_over_the_nodes() {
        let m = |k| Mem {
            vm_rss_kib: k,
            rss_anon_kib: k / 2,
            vm_hwm_kib: k * 2,
            threads: 3,
        };
        let s = sum(&[m(100), m(50)]);
        assert_eq!(
            (s.vm_rss_kib, s.rss_anon_kib, s.vm_hwm_kib, s.threads),
            (150, 75, 300, 6)
        );
    }
}
