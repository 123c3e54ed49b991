//! Idle mode: server RSS per idle authenticated connection, at several connection counts.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
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
            "  slope (least squares incl. baseline): VmRSS {} B/conn, RssAnon {} B/conn; load average {:?}",
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
async fn wait_idle(pid: u32, min: Duration) -> Result<()> {
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
    let result = async {
        let pid = session
            .server_pid
            .context("idle mode needs the server's pid (start it here, or pass --server-pid)")?;
        let baseline = point(pid, 0, settle).await?;
        let mut points = Vec::new();
        for &n in &steps {
            session.connect_up_to(n, deadline).await?;
            points.push(point(pid, n, settle).await?);
        }
        let fit = |f: fn(&Mem) -> u64| {
            let pts: Vec<(f64, f64)> = std::iter::once(&baseline)
                .chain(&points)
                .map(|p| (p.connections as f64, f(&p.mem) as f64 * 1024.0))
                .collect();
            linear_fit(&pts).map(|(_, b)| b)
        };
        Ok(IdleReport {
            slope_rss_bytes: fit(|m| m.vm_rss_kib),
            slope_anon_bytes: fit(|m| m.rss_anon_kib),
            baseline,
            points,
            loadavg,
        })
    }
    .await;
    session.finish().await?;
    result
}
