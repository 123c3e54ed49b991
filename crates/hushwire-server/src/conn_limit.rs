//! The per-client-IP cap on open connections (`max_connections_per_ip`).
//!
//! One address flooding connections must not take all `max_connections` slots from
//! everyone else. The accept loop asks [`ConnLimiter::admit`] for each accepted TCP
//! connection; past the cap the stream is closed at once, before any TLS work. The
//! [`IpSlot`] it hands out lives in the connection's `ConnSlot` next to the global
//! permit and gives the place back on drop.
//!
//! The table holds one entry per address with open connections and drops an entry
//! when its count reaches zero, so it never holds more entries than there are open
//! connections (itself bounded by `max_connections`). Addresses in
//! `connection_limit_exempt` (CIDR prefixes) are not counted. Peers are counted as
//! the [`client`] their address belongs to: an IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`,
//! what a dual-stack socket reports) as its IPv4 address, and an IPv6 peer as its /64,
//! the smallest network an ISP hands a home or a phone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// An address prefix such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

impl Cidr {
    /// Parses `addr/len` or a bare address (a single host). Host bits below the prefix
    /// are ignored (`10.1.2.3/8` is `10.0.0.0/8`). An IPv4-mapped IPv6 prefix of at
    /// least 96 bits becomes the IPv4 prefix, since peers are compared as IPv4; a
    /// shorter IPv6 prefix matches IPv6 peers only.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(match addr {
            IpAddr::V4(a) => Self::V4 {
                net: u32::from(a) & mask32(len),
                len,
            },
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Self::V4 {
                    net: u32::from(v4) & mask32(len - 96),
                    len: len - 96,
                },
                _ => Self::V6 {
                    net: u128::from(a) & mask128(len),
                    len,
                },
            },
        })
    }

    /// Whether `ip` (already [`canonical`]) is inside the prefix.
    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Self::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask32(len) == net,
            (Self::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask128(len) == net,
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// `ip`, with an IPv4-mapped IPv6 address turned into its IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The prefix length an IPv6 client is counted by in per-IP limits.
pub(crate) const IPV6_CLIENT_PREFIX: u8 = 64;

/// The client `ip` counts as in per-IP limits (connections, registrations, link and
/// directory requests): an IPv4 address is its own client; an IPv6 address counts as
/// its /64 ([`IPV6_CLIENT_PREFIX`]). A home or a phone gets at least a /64 and picks
/// any address in it at will (privacy addresses rotate by design), so counting single
/// IPv6 addresses would give whoever holds one 2^64 budgets.
pub(crate) fn client(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(IPV6_CLIENT_PREFIX)).into()),
        v4 => v4,
    }
}

struct Inner {
    per_ip: usize,
    exempt: Vec<Cidr>,
    /// Open connections per client; only clients with at least one.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Counts open connections per client IP.
pub(crate) struct ConnLimiter {
    inner: Arc<Inner>,
}

/// A connection's place in its address's count; given back on drop.
pub(crate) struct IpSlot {
    /// `None` for an exempt address (not counted).
    counted: Option<(Arc<Inner>, IpAddr)>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((inner, ip)) = self.counted.take() else {
            return;
        };
        // Counts are updated in single statements under the lock, so a poisoned lock
        // (a panic elsewhere while holding it) still holds consistent counts.
        let mut open = inner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut e) = open.entry(ip) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

impl ConnLimiter {
    /// At most `per_ip` (at least 1) open connections per address outside `exempt`.
    pub(crate) fn new(per_ip: usize, exempt: Vec<Cidr>) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_ip: per_ip.max(1),
                exempt,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when its [`client`] already has
    /// `per_ip` connections open.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        if self.inner.exempt.iter().any(|c| c.contains(canonical(ip))) {
            return Some(IpSlot { counted: None });
        }
        let ip = client(ip);
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.inner.per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counted: Some((Arc::clone(&self.inner), ip)),
        })
    }

    /// Addresses with open (counted) connections.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(per_ip: usize, exempt: &[&str]) -> ConnLimiter {
        let exempt = exempt.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        ConnLimiter::new(per_ip, exempt)
    }

    #[test]
    fn conn_limit_admits_up_to_the_cap_and_drop_frees() {
        let l = limiter(3, &[]);
        let a = ip("198.51.100.7");
        let slots: Vec<_> = (0..3).map(|_| l.admit(a).unwrap()).collect();
        assert!(l.admit(a).is_none(), "fourth connection from one address");
        let other = l.admit(ip("198.51.100.8"));
        assert!(other.is_some(), "other addresses are unaffected");
        assert_eq!(l.tracked(), 2);
        drop(other);
        assert_eq!(l.tracked(), 1, "an address is forgotten at zero");
        let mut slots = slots;
        slots.pop();
        let again = l.admit(a).unwrap();
        assert!(l.admit(a).is_none());
        drop(again);
        drop(slots);
        assert_eq!(
            l.tracked(),
            0,
            "the table empties when every connection closed"
        );
        assert!(l.admit(a).is_some());
    }

    #[test]
    fn conn_limit_exempt_prefixes_are_not_counted() {
        let l = limiter(
            1,
            &["127.0.0.0/8", "::1/128", "10.1.2.3/16", "2001:db8::/32"],
        );
        for peer in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "10.1.200.4",
            "2001:db8:1::5",
        ] {
            let held: Vec<_> = (0..5).map(|_| l.admit(ip(peer)).unwrap()).collect();
            assert_eq!(held.len(), 5, "{peer} is exempt");
        }
        assert_eq!(l.tracked(), 0);
        let _one = l.admit(ip("10.2.0.1")).unwrap();
        assert!(l.admit(ip("10.2.0.1")).is_none(), "outside 10.1.0.0/16");
        let _v6 = l.admit(ip("::2")).unwrap();
        assert!(l.admit(ip("::2")).is_none(), "::1/128 covers ::1 only");
    }

    #[test]
    fn conn_limit_v4_mapped_v6_counts_as_v4() {
        let l = limiter(2, &["127.0.0.0/8"]);
        let _a = l.admit(ip("203.0.113.5")).unwrap();
        let _b = l.admit(ip("::ffff:203.0.113.5")).unwrap();
        assert!(l.admit(ip("203.0.113.5")).is_none());
        assert!(l.admit(ip("::ffff:203.0.113.5")).is_none());
        assert_eq!(l.tracked(), 1);
        // A mapped loopback peer is exempt like 127.0.0.1.
        let held: Vec<_> = (0..4)
            .map(|_| l.admit(ip("::ffff:127.0.0.1")).unwrap())
            .collect();
        assert_eq!(held.len(), 4);
        // A mapped prefix in the list matches the IPv4 peers it covers.
        let l = limiter(1, &["::ffff:192.0.2.0/120"]);
        let _x = l.admit(ip("192.0.2.9")).unwrap();
        assert!(l.admit(ip("192.0.2.9")).is_some());
        let _y = l.admit(ip("192.0.3.9")).unwrap();
        assert!(l.admit(ip("192.0.3.9")).is_none());
    }

    #[test]
    fn conn_limit_counts_an_ipv6_client_by_its_64() {
        let l = limiter(2, &["::1/128"]);
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = l.admit(ip("2001:db8:1:2:ffff:ffff:ffff:9")).unwrap();
        assert!(
            l.admit(ip("2001:db8:1:2:abcd::77")).is_none(),
            "a fresh address in the same /64 is the same client"
        );
        let _c = l.admit(ip("2001:db8:1:3::1")).unwrap();
        assert!(
            l.admit(ip("2001:db8:1:3::2")).is_some(),
            "the next /64 is another"
        );
        assert_eq!(l.tracked(), 2);
        // Exemption still goes by the whole address: ::1 is exempt, ::2 beside it is not.
        let held: Vec<_> = (0..4).map(|_| l.admit(ip("::1")).unwrap()).collect();
        assert_eq!(held.len(), 4);
        let _d = l.admit(ip("::2")).unwrap();
        let _e = l.admit(ip("::3")).unwrap();
        assert!(l.admit(ip("::4")).is_none());

        assert_eq!(client(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(client(ip("198.51.100.7")), ip("198.51.100.7"));
    }

    #[test]
    fn conn_limit_parses_cidrs() {
        assert_eq!(
            Cidr::parse("10.1.2.3/8").unwrap(),
            Cidr::V4 {
                net: 0x0a00_0000,
                len: 8
            }
        );
        assert_eq!(
            Cidr::parse("192.0.2.1").unwrap(),
            Cidr::V4 {
                net: 0xc000_0201,
                len: 32
            }
        );
        assert_eq!(
            Cidr::parse("0.0.0.0/0").unwrap(),
            Cidr::V4 { net: 0, len: 0 }
        );
        assert_eq!(Cidr::parse("::/0").unwrap(), Cidr::V6 { net: 0, len: 0 });
        assert_eq!(
            Cidr::parse("::1/128").unwrap(),
            Cidr::V6 { net: 1, len: 128 }
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Cidr::parse("::ffff:10.1.2.3/104").unwrap(),
            Cidr::V4 {
                net: 0x0a00_0000,
                len: 8
            }
        );
        assert!(matches!(
            Cidr::parse("::ffff:0:0/50").unwrap(),
            Cidr::V6 { len: 50, .. }
        ));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
    }
}
