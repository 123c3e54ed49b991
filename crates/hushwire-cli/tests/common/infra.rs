//! What the multi-process tests on PostgreSQL and NATS share: the skip rule for unset
//! service URLs, free ports, unique names and database URLs.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgreSQL and NATS URLs, or `None` (with a visible message) when either
/// variable is unset: the only case such a test may skip.
pub fn env_or_skip(test: &str) -> Option<(String, String)> {
    let pg = std::env::var("HUSHWIRE_TEST_POSTGRES_URL").ok();
    let nats = std::env::var("HUSHWIRE_TEST_NATS_URL").ok();
    match (pg, nats) {
        (Some(pg), Some(nats)) if !pg.is_empty() && !nats.is_empty() => Some((pg, nats)),
        (pg, _) => {
            let var = if pg.as_deref().is_none_or(str::is_empty) {
                "HUSHWIRE_TEST_POSTGRES_URL"
            } else {
                "HUSHWIRE_TEST_NATS_URL"
            };
            eprintln!("skipped: {var} unset ({test})");
            None
        }
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A name unique to this process and call: `{prefix}{pid}_{nanos}_{n}`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap();
    format!("{scheme}://{authority}/{db}{query}")
}
