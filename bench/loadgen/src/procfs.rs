//! CPU and memory of a process (the server, or the generator itself) from `/proc`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime from the text of a `/proc/.../stat` file.
fn stat_ticks(text: &str) -> Option<u64> {
    // The command name may contain spaces and ')': fields start after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A CPU-time sample of a process and its threads.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    ticks: u64,
    /// (tid, thread name, ticks)
    threads: Vec<(u64, String, u64)>,
}

/// Reads the process's CPU time, and each thread's if `threads`.
pub fn cpu_sample(pid: u32, threads: bool) -> Result<CpuSample> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = stat_ticks(&text).with_context(|| format!("parsing {path}"))?;
    let mut list = Vec::new();
    if threads {
        let dir = format!("/proc/{pid}/task");
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("reading {dir}"))?
            .flatten()
            .take(100_000)
        {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            let base = entry.path();
            let (Ok(stat), Ok(comm)) = (
                std::fs::read_to_string(base.join("stat")),
                std::fs::read_to_string(base.join("comm")),
            ) else {
                continue; // the thread ended meanwhile
            };
            if let Some(t) = stat_ticks(&stat) {
                list.push((tid, comm.trim().to_string(), t));
            }
        }
    }
    Ok(CpuSample {
        at: Instant::now(),
        ticks,
        threads: list,
    })
}

/// CPU use between two samples, in percent of one core.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// The whole process.
    pub percent: f64,
    /// Per thread name (threads of the same name summed): (name, threads, percent).
    pub threads: Vec<(String, usize, f64)>,
}

impl CpuUse {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "percent": round1(self.percent),
            "threads": self.threads.iter().map(|(name, n, pct)| serde_json::json!({
                "name": name, "count": n, "percent": round1(*pct),
            })).collect::<Vec<_>>(),
        })
    }

    /// One line: `85.0% (tokio-runtime-w x2 60.1%, hushwire-sqlite 24.9%)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .threads
            .iter()
            .filter(|t| t.2 >= 0.5)
            .map(|(name, n, pct)| {
                if *n > 1 {
                    format!("{name} x{n} {pct:.1}%")
                } else {
                    format!("{name} {pct:.1}%")
                }
            })
            .collect();
        if parts.is_empty() {
            format!("{:.1}%", self.percent)
        } else {
            format!("{:.1}% ({})", self.percent, parts.join(", "))
        }
    }
}

/// CPU use from `a` to `b`.
pub fn cpu_between(a: &CpuSample, b: &CpuSample) -> CpuUse {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
    let tck = clk_tck() as f64;
    let pct = |ticks: u64| ticks as f64 / tck / secs * 100.0;
    let before: BTreeMap<u64, u64> = a.threads.iter().map(|(tid, _, t)| (*tid, *t)).collect();
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (tid, name, t) in &b.threads {
        let d = t.saturating_sub(before.get(tid).copied().unwrap_or(0));
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += d;
    }
    let mut threads: Vec<(String, usize, f64)> = by_name
        .into_iter()
        .map(|(name, (n, d))| (name, n, pct(d)))
        .collect();
    threads.sort_by(|x, y| y.2.total_cmp(&x.2));
    CpuUse {
        percent: pct(b.ticks.saturating_sub(a.ticks)),
        threads,
    }
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size.
    pub vm_rss_kib: u64,
    /// Anonymous resident memory (heap, stacks): RSS without file mappings.
    pub rss_anon_kib: u64,
    /// Peak RSS.
    pub vm_hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl Mem {
    /// As JSON.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "vm_rss_kib": self.vm_rss_kib,
            "rss_anon_kib": self.rss_anon_kib,
            "vm_hwm_kib": self.vm_hwm_kib,
            "threads": self.threads,
        })
    }
}

/// Reads `/proc/PID/status`.
pub fn mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "VmRSS:" => m.vm_rss_kib = v,
            "RssAnon:" => m.rss_anon_kib = v,
            "VmHWM:" => m.vm_hwm_kib = v,
            "Threads:" => m.threads = v,
            _ => {}
        }
    }
    if m.vm_rss_kib == 0 {
        anyhow::bail!("no VmRSS in {path}");
    }
    Ok(m)
}

/// Kernel memory of all TCP sockets (`/proc/net/sockstat` "TCP: … mem N", pages), machine-wide.
pub fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "mem")?;
    words.get(i + 1)?.parse().ok()
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Rounds to one decimal for reports.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let text = "1234 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 3 0";
        assert_eq!(stat_ticks(text), Some(333));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let a = cpu_sample(me, true).unwrap();
        assert!(!a.threads.is_empty());
        let m = mem(me).unwrap();
        assert!(m.vm_rss_kib > 0);
    }
}
