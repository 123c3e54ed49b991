//! Source addresses of the generator's connections.
//!
//! One source address and one server address give at most about 28,000 concurrent
//! connections (the ephemeral port range). With `--source-addrs N`, connection `i`
//! (device or peer user `i`) is opened from `127.0.0.(1 + i mod N)`, so N addresses
//! give N times as many. Set once at start-up; unset means one address, chosen by the
//! system.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

static SOURCE_ADDRS: OnceLock<u8> = OnceLock::new();

/// Uses `n` (1..=254) loopback source addresses from now on; only the first call counts.
pub fn set_source_addrs(n: u8) {
    let _ = SOURCE_ADDRS.set(n.max(1));
}

/// The source address of connection `i`: `None` (the system's choice) with one address.
pub fn source_ip(i: usize) -> Option<IpAddr> {
    source_ip_of(SOURCE_ADDRS.get().copied().unwrap_or(1), i)
}

fn source_ip_of(n: u8, i: usize) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    // Fits: i mod n < n <= 254, so 1 + it <= 254.
    let host = 1 + (i % usize::from(n)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

/// A TCP connection to `addr` from connection `i`'s source address.
pub async fn connect(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let Some(local) = source_ip(i) else {
        return TcpStream::connect(addr).await;
    };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_cycle_over_the_source_addresses() {
        assert_eq!(source_ip_of(1, 7), None);
        let ips: Vec<_> = (0..5).map(|i| source_ip_of(3, i).unwrap()).collect();
        let want = [
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.1",
            "127.0.0.2",
        ];
        assert_eq!(ips, want.map(|s| s.parse::<IpAddr>().unwrap()));
        assert_eq!(source_ip_of(254, 253).unwrap().to_string(), "127.0.0.254");
    }
}
