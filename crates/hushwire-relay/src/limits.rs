//! Per-client-IP limits on tunnels. A client is an IPv4 address or an IPv6 /64 (see
//! [`client`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The relay's limits. Defaults suit a small volunteer relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Tunnels one client IP may have open at once. Default: 16.
    pub tunnels_per_ip: u32,
    /// Tunnels one client IP may open per minute. Default: 60.
    pub opens_per_ip_per_minute: u32,
    /// Tunnels open at once, all clients together. Default: 2000.
    pub max_tunnels: u32,
    /// A tunnel with no traffic either way for this long is closed. Default: 10 min.
    pub idle_timeout: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            tunnels_per_ip: 16,
            opens_per_ip_per_minute: 60,
            max_tunnels: 2000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    /// Token bucket for openings.
    tokens: f64,
    refilled: Instant,
}

/// Most IPs tracked; idle entries are dropped beyond it.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Inner {
    limits: RelayLimits,
    open_total: u32,
    ips: HashMap<IpAddr, Entry>,
}

/// Counts tunnels per IP.
#[derive(Debug, Clone)]
pub(crate) struct PerIp {
    inner: Arc<Mutex<Inner>>,
}

/// A tunnel's place in the counts; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    inner: Arc<Mutex<Inner>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.open_total = inner.open_total.saturating_sub(1);
            if let Some(e) = inner.ips.get_mut(&self.ip) {
                e.open = e.open.saturating_sub(1);
            }
        }
    }
}

/// The client `ip` counts as: an IPv4 address (an IPv4-mapped IPv6 one included) is its
/// own; an IPv6 address counts as its /64. A home or a phone gets at least a /64 and may
/// use any address in it, so per-address limits would give it 2^64 budgets.
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
        v4 => v4,
    }
}

impl PerIp {
    pub(crate) fn new(limits: RelayLimits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                limits,
                open_total: 0,
                ips: HashMap::new(),
            })),
        }
    }

    /// A slot for a new tunnel from `ip`, or `None` when a limit says no.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let ip = client(ip);
        let mut inner = self.inner.lock().ok()?;
        let limits = inner.limits;
        if inner.open_total >= limits.max_tunnels {
            return None;
        }
        if inner.ips.len() >= MAX_TRACKED {
            inner.ips.retain(|_, e| e.open > 0);
        }
        let now = Instant::now();
        let burst = f64::from(limits.opens_per_ip_per_minute.max(1));
        let entry = inner.ips.entry(ip).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * burst / 60.0).min(burst);
        entry.refilled = now;
        if entry.open >= limits.tunnels_per_ip || entry.tokens < 1.0 {
            return None;
        }
        entry.tokens -= 1.0;
        entry.open += 1;
        inner.open_total += 1;
        Some(Slot {
            inner: Arc::clone(&self.inner),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_concurrent_and_rate() {
        let per = PerIp::new(RelayLimits {
            tunnels_per_ip: 2,
            opens_per_ip_per_minute: 3,
            max_tunnels: 10,
            idle_timeout: Duration::from_secs(1),
        });
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let s1 = per.admit(a).unwrap();
        let _s2 = per.admit(a).unwrap();
        assert!(per.admit(a).is_none(), "third concurrent tunnel");
        assert!(per.admit(b).is_some(), "other clients are unaffected");
        drop(s1);
        let _s3 = per.admit(a).unwrap();
        drop(_s3);
        assert!(per.admit(a).is_none(), "fourth opening within the minute");
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let per = PerIp::new(RelayLimits {
            tunnels_per_ip: 2,
            ..RelayLimits::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = per.admit(ip("2001:db8:5:6::1")).unwrap();
        let _b = per.admit(ip("2001:db8:5:6:ffff::2")).unwrap();
        assert!(
            per.admit(ip("2001:db8:5:6:1234::3")).is_none(),
            "another address of the same /64"
        );
        assert!(per.admit(ip("2001:db8:5:7::1")).is_some(), "the next /64");
        let _c = per.admit(ip("::ffff:198.18.0.9")).unwrap();
        let _d = per.admit(ip("198.18.0.9")).unwrap();
        assert!(
            per.admit(ip("198.18.0.9")).is_none(),
            "a mapped address is its IPv4 address"
        );
    }
}
