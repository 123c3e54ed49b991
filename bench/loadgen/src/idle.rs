//! Idle mode: server RSS per idle authenticated connection, at several connection counts.
//!
//! The baseline is taken once the key directory has published the registered accounts:
//! a publication holds memory per account (the in-memory tree), which would otherwise
//! land in whichever step it happened to run during (the server publishes every 30 s).
//! The bytes per connection are the least-squares slope over the connected steps.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hushwire_client::{ApiClient, ApiRequest, Endpoint, Method};
use hushwire_proto::wire;
use tokio::time::Instant;

use crate::procfs::{self, Mem};
use crate::sched::linear_fit;
use crate::session::{Session, SessionOpts};

/// One measurement point.
#[derive(Debug, Clone, Copy)]
pub struct IdlePoint {
    /// Connected devices.
    pub connections: usize,
    /// Server memory once idle.
    pub mem: Mem,
    /// Machine-wide kernel TCP memory (pages), both ends of every loopback connection.
    pub tcp_mem_pages: Option<u64>,
}

/// What idle mode measured.
#[derive(Debug, Clone)]
pub struct IdleReport {
    /// Before any WebSocket (devices registered, HTTP connections closed).
    pub baseline: IdlePoint,
    /// After each step.
    pub points: Vec<IdlePoint>,
    /// Least-squares slope of VmRSS over connections, bytes per connection.
    pub slope_rss_bytes: Option<f64>,
    /// Same for RssAnon.
    pub slope_anon_bytes: Option<f64>,
    /// Load average at the start.
    pub loadavg: Option<f64>,
}

fn kib_per_conn(p: &IdlePoint, base: &IdlePoint, f: fn(&Mem) -> u64) -> f64 {
    let d = f(&p.mem) as f64 - f(&base.mem) as f64;
    d * 1024.0 / p.connections.max(1) as f64
}

impl IdleReport {
    /// The report with its slopes: least squares over the connected steps only. The
    /// first connections reuse heap freed before the baseline (Hushwire: by the key
    /// directory's publication), so a fit through the baseline would understate what a
    /// connection costs. With a single step, the baseline is needed.
    pub(crate) fn fit(baseline: IdlePoint, points: Vec<IdlePoint>, loadavg: Option<f64>) -> Self {
        let slope = |f: fn(&Mem) -> u64| {
            let pts: Vec<(f64, f64)> = (points.len() < 2)
                .then_some(&baseline)
                .into_iter()
                .chain(&points)
                .map(|p| (p.connections as f64, f(&p.mem) as f64 * 1024.0))
                .collect();
            linear_fit(&pts).map(|(_, b)| b)
        };
        Self {
            slope_rss_bytes: slope(|m| m.vm_rss_kib),
            slope_anon_bytes: slope(|m| m.rss_anon_kib),
            baseline,
            points,
            loadavg,
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let base = &self.baseline;
        serde_json::json!({
            "baseline": {
                "mem": base.mem.to_json(),
                "tcp_mem_pages": base.tcp_mem_pages,
            },
            "points": self.points.iter().map(|p| serde_json::json!({
                "connections": p.connections,
                "mem": p.mem.to_json(),
                "tcp_mem_pages": p.tcp_mem_pages,
                "rss_bytes_per_conn": kib_per_conn(p, base, |m| m.vm_rss_kib).round(),
                "anon_bytes_per_conn": kib_per_conn(p, base, |m| m.rss_anon_kib).round(),
            })).collect::<Vec<_>>(),
            "slope_rss_bytes_per_conn": self.slope_rss_bytes.map(f64::round),
            "slope_anon_bytes_per_conn": self.slope_anon_bytes.map(f64::round),
            "loadavg": self.loadavg,
        })
    }

    /// Human-readable.
    pub fn human(&self) -> String {
        let base = &self.baseline;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "idle connections: server VmRSS {:.1} MiB (RssAnon {:.1} MiB) before any connection",
            base.mem.vm_rss_kib as f64 / 1024.0,
            base.mem.rss_anon_kib as f64 / 1024.0
        );
        let _ = writeln!(
            s,
            "  {:>11} {:>12} {:>12} {:>14} {:>14} {:>12}",
            "connections", "VmRSS MiB", "RssAnon MiB", "RSS B/conn", "anon B/conn", "kernel TCP"
        );
        for p in &self.points {
            let tcp = match (p.tcp_mem_pages, base.tcp_mem_pages) {
                (Some(a), Some(b)) => format!("{:+} pages", a as i64 - b as i64),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "  {:>11} {:>12.1} {:>12.1} {:>14.0} {:>14.0} {:>12}",
                p.connections,
                p.mem.vm_rss_kib as f64 / 1024.0,
                p.mem.rss_anon_kib as f64 / 1024.0,
                kib_per_conn(p, base, |m| m.vm_rss_kib),
                kib_per_conn(p, base, |m| m.rss_anon_kib),
                tcp
            );
        }
        let _ = write!(
            s,
            "  slope (least squares over the connected steps): VmRSS {} B/conn, RssAnon {} B/conn; load average {:?}",
            self.slope_rss_bytes
                .map_or("-".into(), |b| format!("{b:.0}")),
            self.slope_anon_bytes
                .map_or("-".into(), |b| format!("{b:.0}")),
            self.loadavg
        );
        s
    }
}

/// Waits at least `min` and then until the server used under 2% CPU over one second
/// (at most 30 more seconds).
pub(crate) async fn wait_idle(pid: u32, min: Duration) -> Result<()> {
    tokio::time::sleep(min).await;
    for _ in 0..30 {
        let a = procfs::cpu_sample(pid, false)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = procfs::cpu_sample(pid, false)?;
        if procfs::cpu_between(&a, &b).percent < 2.0 {
            return Ok(());
        }
    }
    eprintln!("warning: the server did not become idle within 30 s");
    Ok(())
}

/// Unix time in ms.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits (bounded: one publish interval plus 60 s, and `deadline`) until the server's key
/// directory has published an epoch at or after `since_ms`. Returns the epoch.
async fn wait_directory_published(
    endpoint: &Endpoint,
    since_ms: u64,
    deadline: Instant,
) -> Result<u64> {
    let api = ApiClient::new(endpoint.clone()).context("building the HTTPS client")?;
    let directory = || ApiRequest::new(Method::GET, "/v1/directory", Vec::new());
    let first: wire::DirectoryRoot = api.call(directory()).await.context("GET /v1/directory")?;
    let until =
        (Instant::now() + Duration::from_millis(first.interval_ms) + Duration::from_secs(60))
            .min(deadline);
    let mut root = first;
    // Bounded by `until`; polls every 500 ms.
    while root.published_at_ms < since_ms {
        if Instant::now() >= until {
            bail!(
                "the key directory published nothing after registration (latest epoch {}, \
                 interval {} ms)",
                root.epoch,
                root.interval_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        root = api.call(directory()).await.context("GET /v1/directory")?;
    }
    Ok(root.epoch)
}

pub(crate) async fn point(pid: u32, connections: usize, settle: Duration) -> Result<IdlePoint> {
    wait_idle(pid, settle).await?;
    let p = IdlePoint {
        connections,
        mem: procfs::mem(pid)?,
        tcp_mem_pages: procfs::tcp_mem_pages(),
    };
    eprintln!(
        "{connections} connections: server VmRSS {} KiB, RssAnon {} KiB",
        p.mem.vm_rss_kib, p.mem.rss_anon_kib
    );
    Ok(p)
}

/// Registers `max(steps)` devices, then connects them step by step, measuring the
/// server's memory once idle before the first connection and after each step.
pub async fn run_idle(
    opts: &SessionOpts,
    steps: &[usize],
    settle: Duration,
    deadline: Instant,
) -> Result<IdleReport> {
    let mut steps = steps.to_vec();
    steps.sort_unstable();
    steps.dedup();
    let max = steps.last().copied().unwrap_or(0);
    let loadavg = procfs::loadavg();
    let mut session = Session::start(opts, max, 0, deadline, deadline).await?;
    let registered_ms = unix_ms();
    let result = async {
        let pid = session
            .server_pid
            .context("idle mode needs the server's pid (start it here, or pass --server-pid)")?;
        let t = Instant::now();
        let epoch = wait_directory_published(&session.endpoint, registered_ms, deadline).await?;
        eprintln!(
            "key directory epoch {epoch} holds the registered accounts (waited {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let baseline = point(pid, 0, settle).await?;
        let mut points = Vec::new();
        for &n in &steps {
            session.connect_up_to(n, deadline).await?;
            points.push(point(pid, n, settle).await?);
        }
        Ok(IdleReport::fit(baseline, points, loadavg))
    }
    .await;
    session.finish().await?;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at(connections: usize, rss_kib: u64) -> IdlePoint {
        IdlePoint {
            connections,
            mem: Mem {
                vm_rss_kib: rss_kib,
                rss_anon_kib: rss_kib / 2,
                ..Mem::default()
            },
            tcp_mem_pages: None,
        }
    }

    #[test]
    fn the_slope_ignores_the_baseline_once_there_are_two_steps() {
        // 7 KiB per connection from step to step; the first step reused freed heap.
        let r = IdleReport::fit(
            at(0, 100_000),
            vec![at(5_000, 110_000), at(10_000, 145_000), at(15_000, 180_000)],
            None,
        );
        assert_eq!(r.slope_rss_bytes.unwrap().round(), 7_168.0);
        assert_eq!(r.slope_anon_bytes.unwrap().round(), 3_584.0);
        // One step: the baseline is the other point.
        let r = IdleReport::fit(at(0, 100_000), vec![at(10_000, 170_000)], None);
        assert_eq!(r.slope_rss_bytes.unwrap().round(), 7_168.0);
    }
}
