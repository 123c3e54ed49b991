//! Ways in: how a profile reaches its server when the direct route is blocked.
//!
//! A [`RouteBook`] is kept in `{profile}/routes.json`. It holds an ordered set of
//! [`Route`]s — the direct route, then the deployment's other servers (nodes sharing
//! the certificate, the secret path and the store, given at registration), then
//! volunteer relays in the order they were added — and an optional [`ProxyUrl`] (SOCKS5 with remote DNS, or HTTP CONNECT) that every
//! route's TCP connection goes through. It also remembers which route worked last and
//! when the direct route last failed, so the next connection starts with what worked
//! and tries the direct route again only after [`RouteBook::retry_direct_after`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hushwire_proto::relay_link::RelayLink;
use serde::{Deserialize, Serialize};

use crate::ClientError;
use crate::api::unix_ms;

/// The file a profile keeps its routes in.
pub const ROUTES_FILE: &str = "routes.json";

/// How often the direct route is tried again after it failed, by default.
pub const DEFAULT_RETRY_DIRECT: Duration = Duration::from_secs(600);

/// A proxy every connection goes through.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// SOCKS5 or HTTP CONNECT.
    pub kind: ProxyKind,
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
}

/// The proxy protocols spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `socks5h://`: SOCKS5 with the server's name resolved by the proxy (no DNS leak).
    /// `socks5://` is accepted and treated the same way.
    Socks5h,
    /// `http://`: an HTTP proxy's CONNECT method (the name is resolved by the proxy).
    HttpConnect,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Socks5h => "socks5h",
            ProxyKind::HttpConnect => "http",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl ProxyUrl {
    /// Parses `socks5h://HOST:PORT`, `socks5://HOST:PORT` or `http://HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::InvalidProxy {
            proxy: text.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
        let kind = match url.scheme() {
            "socks5h" | "socks5" => ProxyKind::Socks5h,
            "http" => ProxyKind::HttpConnect,
            _ => return Err(bad("the scheme must be socks5h, socks5 or http")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("proxy credentials are not supported"));
        }
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
            return Err(bad("a proxy URL has no path or query"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad("missing host")),
        };
        let port = url.port().ok_or_else(|| bad("missing port"))?;
        Ok(Self { kind, host, port })
    }
}

/// Another server (node) of the profile's deployment: same certificate (pin), same
/// secret path, same store; only the address differs. Shown as `HOST:PORT` only (the
/// URL's path is a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerNode {
    /// The URL as given (`https://host[:port]/prefix`).
    pub url: String,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Debug for ServerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerNode({})", self.address())
    }
}

impl ServerNode {
    /// Parses `https://host[:port][/prefix]` (no credentials, query or fragment).
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: text.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad("the scheme must be https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a server URL has no query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("a server URL carries no credentials"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad("missing host")),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        Ok(Self {
            url: url.as_str().trim_end_matches('/').to_string(),
            host,
            port,
        })
    }

    /// The URL's path (the deployment's secret prefix), without a trailing `/`.
    pub fn path(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default()
    }

    /// `HOST:PORT` (IPv6 in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One way to reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A TCP connection to the server's own address (through the proxy, if one is set).
    Direct,
    /// A TCP connection to another server of the deployment (through the proxy, if one
    /// is set).
    Server(ServerNode),
    /// A tunnel through a volunteer relay; TLS to the server runs inside it, end to end.
    Relay(RelayLink),
}

impl Route {
    /// A short name for lists and logs (no secret): `direct` or `relay HOST:PORT`.
    pub fn label(&self) -> String {
        match self {
            Self::Direct => "direct".to_string(),
            Self::Server(node) => format!("server {}", node.address()),
            Self::Relay(link) => format!("relay {}", link.address()),
        }
    }

    fn key(&self) -> String {
        match self {
            Self::Direct => "direct".to_string(),
            Self::Server(node) => format!("server:{}", node.address()),
            Self::Relay(link) => format!("relay:{}", link.address()),
        }
    }
}

/// What `routes.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RoutesFile {
    /// `socks5h://…` or `http://…`.
    proxy: Option<String>,
    /// Relay links, in order of preference.
    relays: Vec<String>,
    /// The deployment's other server URLs (the profile's own is the direct route), in
    /// order. Omitted when empty, so single-server files stay readable by older clients.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    servers: Vec<String>,
    /// `true` to never connect directly (neither to the server nor to its other nodes).
    no_direct: bool,
    /// The key of the route that worked last (`direct`, `relay:HOST:PORT`).
    last_good: Option<String>,
    /// When the direct route last failed (ms since the Unix epoch).
    direct_failed_at_ms: Option<u64>,
    /// Seconds after a failure of the direct route before it is tried first again.
    retry_direct_secs: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    last_good: Option<String>,
    direct_failed_at_ms: Option<u64>,
}

/// A profile's ways in, and what it learned about them. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RouteBook {
    inner: Arc<BookInner>,
}

struct BookInner {
    proxy: Option<ProxyUrl>,
    routes: Vec<Route>,
    /// The other servers' URLs as saved (kept when `no_direct` leaves them unused).
    servers: Vec<String>,
    retry_direct_after: Duration,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl fmt::Debug for RouteBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteBook")
            .field("proxy", &self.inner.proxy)
            .field(
                "routes",
                &self
                    .inner
                    .routes
                    .iter()
                    .map(Route::label)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for RouteBook {
    fn default() -> Self {
        Self::new(None, vec![Route::Direct], DEFAULT_RETRY_DIRECT)
    }
}

impl RouteBook {
    /// A book in memory (not saved): `routes` in order, all through `proxy` if given.
    pub fn new(proxy: Option<ProxyUrl>, routes: Vec<Route>, retry_direct_after: Duration) -> Self {
        Self {
            inner: Arc::new(BookInner {
                servers: routes
                    .iter()
                    .filter_map(|r| match r {
                        Route::Server(node) => Some(node.url.clone()),
                        _ => None,
                    })
                    .collect(),
                proxy,
                routes,
                retry_direct_after,
                path: None,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The book of the profile in `dir` (`routes.json`); direct only if there is none.
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let path = dir.join(ROUTES_FILE);
        let file: RoutesFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ClientError::Routes {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RoutesFile::default(),
            Err(e) => {
                return Err(ClientError::Routes {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let proxy = file.proxy.as_deref().map(ProxyUrl::parse).transpose()?;
        let mut routes = Vec::new();
        if !file.no_direct {
            routes.push(Route::Direct);
            for url in &file.servers {
                let node = ServerNode::parse(url).map_err(|e| ClientError::Routes {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                routes.push(Route::Server(node));
            }
        }
        for link in &file.relays {
            let link = RelayLink::parse(link).map_err(|e| ClientError::Routes {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            routes.push(Route::Relay(link));
        }
        Ok(Self {
            inner: Arc::new(BookInner {
                proxy,
                routes,
                servers: file.servers,
                retry_direct_after: file
                    .retry_direct_secs
                    .map_or(DEFAULT_RETRY_DIRECT, Duration::from_secs),
                path: Some(path),
                state: Mutex::new(State {
                    last_good: file.last_good,
                    direct_failed_at_ms: file.direct_failed_at_ms,
                }),
            }),
        })
    }

    /// Changes the profile's saved routes (`edit` gets the proxy and the relay list)
    /// and writes them back atomically. What was learned is kept.
    pub fn edit(
        dir: &Path,
        edit: impl FnOnce(&mut Option<ProxyUrl>, &mut Vec<RelayLink>, &mut bool),
    ) -> Result<Self, ClientError> {
        let current = Self::load(dir)?;
        let mut proxy = current.inner.proxy.clone();
        let mut relays: Vec<RelayLink> = current.relays().cloned().collect();
        let mut direct = current.inner.routes.contains(&Route::Direct);
        edit(&mut proxy, &mut relays, &mut direct);
        let state = current.snapshot();
        let file = RoutesFile {
            proxy: proxy.as_ref().map(ToString::to_string),
            relays: relays.iter().map(ToString::to_string).collect(),
            servers: current.inner.servers.clone(),
            no_direct: !direct,
            last_good: state.last_good,
            direct_failed_at_ms: state.direct_failed_at_ms,
            retry_direct_secs: Some(current.inner.retry_direct_after.as_secs()),
        };
        write_file(&dir.join(ROUTES_FILE), &file)?;
        Self::load(dir)
    }

    /// Sets the deployment's other servers (tried after the profile's own server, in
    /// this order) and saves the book. What was learned is kept.
    pub fn set_servers(dir: &Path, servers: &[ServerNode]) -> Result<Self, ClientError> {
        let current = Self::load(dir)?;
        let state = current.snapshot();
        let file = RoutesFile {
            proxy: current.inner.proxy.as_ref().map(ToString::to_string),
            relays: current.relays().map(ToString::to_string).collect(),
            servers: servers.iter().map(|s| s.url.clone()).collect(),
            no_direct: !current.inner.routes.contains(&Route::Direct),
            last_good: state.last_good,
            direct_failed_at_ms: state.direct_failed_at_ms,
            retry_direct_secs: Some(current.inner.retry_direct_after.as_secs()),
        };
        write_file(&dir.join(ROUTES_FILE), &file)?;
        Self::load(dir)
    }

    /// The deployment's other servers among the routes.
    pub fn servers(&self) -> impl Iterator<Item = &ServerNode> {
        self.inner.routes.iter().filter_map(|r| match r {
            Route::Server(node) => Some(node),
            _ => None,
        })
    }

    /// Adds `link` to the profile's relays (after the direct route and the relays
    /// already there; a link for the same HOST:PORT is replaced in place of the old one
    /// at the end) and saves the book.
    pub fn add_relay(dir: &Path, link: RelayLink) -> Result<Self, ClientError> {
        Self::edit(dir, |_, list, _| {
            list.retain(|l| l.address() != link.address());
            list.push(link);
        })
    }

    /// The proxy, if any.
    pub fn proxy(&self) -> Option<&ProxyUrl> {
        self.inner.proxy.as_ref()
    }

    /// The routes, in configured order.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// The relay links among the routes.
    pub fn relays(&self) -> impl Iterator<Item = &RelayLink> {
        self.inner.routes.iter().filter_map(|r| match r {
            Route::Relay(link) => Some(link),
            Route::Direct | Route::Server(_) => None,
        })
    }

    /// How long after a failure the direct route is tried first again.
    pub fn retry_direct_after(&self) -> Duration {
        self.inner.retry_direct_after
    }

    /// The route that worked last, if known.
    pub fn last_good(&self) -> Option<Route> {
        let key = self.snapshot().last_good?;
        self.inner.routes.iter().find(|r| r.key() == key).cloned()
    }

    fn snapshot(&self) -> State {
        match self.inner.state.lock() {
            Ok(s) => State {
                last_good: s.last_good.clone(),
                direct_failed_at_ms: s.direct_failed_at_ms,
            },
            Err(_) => State::default(),
        }
    }

    /// The order to try routes in now: the one that worked last first — unless it is
    /// not the direct route and the direct route's retry time has come, then direct
    /// first — then the others in configured order.
    pub fn attempt_order(&self) -> Vec<Route> {
        let state = self.snapshot();
        let routes = &self.inner.routes;
        let mut order: Vec<Route> = Vec::with_capacity(routes.len());
        let direct_due = state.direct_failed_at_ms.is_none_or(|t| {
            unix_ms().saturating_sub(t)
                >= u64::try_from(self.inner.retry_direct_after.as_millis()).unwrap_or(u64::MAX)
        });
        if direct_due && routes.contains(&Route::Direct) {
            order.push(Route::Direct);
        }
        if let Some(good) = state
            .last_good
            .and_then(|k| routes.iter().find(|r| r.key() == k))
            && !order.contains(good)
        {
            order.push(good.clone());
        }
        for r in routes {
            if !order.contains(r) {
                order.push(r.clone());
            }
        }
        order
    }

    /// Records that `route` connected.
    pub(crate) fn record_success(&self, route: &Route) {
        let changed = match self.inner.state.lock() {
            Ok(mut s) => {
                let key = Some(route.key());
                let mut changed = s.last_good != key;
                s.last_good = key;
                if *route == Route::Direct && s.direct_failed_at_ms.is_some() {
                    s.direct_failed_at_ms = None;
                    changed = true;
                }
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.save();
        }
    }

    /// Records that `route` failed.
    pub(crate) fn record_failure(&self, route: &Route) {
        if *route != Route::Direct {
            return;
        }
        if let Ok(mut s) = self.inner.state.lock() {
            s.direct_failed_at_ms = Some(unix_ms());
        }
        self.save();
    }

    /// Writes what was learned back to `routes.json` (best effort: a read-only profile
    /// still connects, it only forgets).
    fn save(&self) {
        let Some(path) = &self.inner.path else {
            return;
        };
        let state = self.snapshot();
        let file = RoutesFile {
            proxy: self.inner.proxy.as_ref().map(ToString::to_string),
            relays: self.relays().map(ToString::to_string).collect(),
            servers: self.inner.servers.clone(),
            no_direct: !self.inner.routes.contains(&Route::Direct),
            last_good: state.last_good,
            direct_failed_at_ms: state.direct_failed_at_ms,
            retry_direct_secs: Some(self.inner.retry_direct_after.as_secs()),
        };
        if let Err(e) = write_file(path, &file) {
            tracing::warn!(error = %e, "cannot save what was learned about routes");
        }
    }
}

fn write_file(path: &Path, file: &RoutesFile) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Routes {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let json = serde_json::to_vec_pretty(file).map_err(|e| ClientError::Routes {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // Relay secrets are in here.
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    {
        use std::io::Write;
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(port: u16) -> RelayLink {
        RelayLink {
            host: "198.18.0.9".into(),
            port,
            secret: "AbCdEfGhIjKlMnOpQrStUv".into(),
            pin: [1; 32],
        }
    }

    #[test]
    fn proxies_parse() {
        let p = ProxyUrl::parse("socks5h://127.0.0.1:9050").unwrap();
        assert_eq!((p.kind, p.port), (ProxyKind::Socks5h, 9050));
        assert_eq!(p.to_string(), "socks5h://127.0.0.1:9050");
        let p = ProxyUrl::parse("http://proxy.example:3128/").unwrap();
        assert_eq!(p.kind, ProxyKind::HttpConnect);
        for bad in ["ftp://x:1", "socks5h://x", "http://u:p@x:1", "http://x:1/p"] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_remembers_what_worked_and_retries_direct_later() {
        let dir = tempfile::tempdir().unwrap();
        RouteBook::edit(dir.path(), |_, relays, _| {
            relays.push(link(1));
            relays.push(link(2));
        })
        .unwrap();
        let book = RouteBook::load(dir.path()).unwrap();
        let r1 = Route::Relay(link(1));
        let r2 = Route::Relay(link(2));
        assert_eq!(
            book.attempt_order(),
            [Route::Direct, r1.clone(), r2.clone()]
        );
        book.record_failure(&Route::Direct);
        book.record_success(&r2);
        // Saved: a new process starts with relay 2 and keeps direct for later.
        let book = RouteBook::load(dir.path()).unwrap();
        assert_eq!(book.last_good(), Some(r2.clone()));
        assert_eq!(
            book.attempt_order(),
            [r2.clone(), Route::Direct, r1.clone()]
        );
        // Once the retry time has come, direct goes first again.
        let mut file: RoutesFile =
            serde_json::from_slice(&std::fs::read(dir.path().join(ROUTES_FILE)).unwrap()).unwrap();
        file.retry_direct_secs = Some(0);
        write_file(&dir.path().join(ROUTES_FILE), &file).unwrap();
        let book = RouteBook::load(dir.path()).unwrap();
        assert_eq!(book.attempt_order(), [Route::Direct, r2, r1]);
        // The secret is in the file, not in Debug output.
        assert!(!format!("{book:?}").contains("AbCd"));
    }

    #[test]
    fn other_servers_are_kept_ordered_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        // A single-server profile's file (as older versions wrote it) still loads.
        std::fs::write(
            dir.path().join(ROUTES_FILE),
            r#"{"proxy":null,"relays":[],"no_direct":false,"last_good":"direct"}"#,
        )
        .unwrap();
        let book = RouteBook::load(dir.path()).unwrap();
        assert_eq!(book.routes(), [Route::Direct]);
        assert_eq!(book.servers().count(), 0);

        let b = ServerNode::parse("https://node-b.example:8443/SeCrEt").unwrap();
        let c = ServerNode::parse("https://[::1]/SeCrEt/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.path()),
            ("node-b.example", 8443, "/SeCrEt".into())
        );
        assert_eq!(
            (c.address(), c.path()),
            ("[::1]:443".to_string(), "/SeCrEt".into())
        );
        for bad in ["http://x/p", "https://u:p@x/p", "https://x/p?q=1", "nope"] {
            assert!(ServerNode::parse(bad).is_err(), "{bad}");
        }
        RouteBook::set_servers(dir.path(), &[b.clone(), c.clone()]).unwrap();
        RouteBook::edit(dir.path(), |_, relays, _| relays.push(link(1))).unwrap();
        let book = RouteBook::load(dir.path()).unwrap();
        let (rb, rc, r1) = (
            Route::Server(b.clone()),
            Route::Server(c.clone()),
            Route::Relay(link(1)),
        );
        // Direct, then the other servers, then relays; editing relays kept the servers.
        assert_eq!(
            book.routes(),
            [Route::Direct, rb.clone(), rc.clone(), r1.clone()]
        );
        assert_eq!(rb.label(), "server node-b.example:8443");
        // The secret path is in the file, not in labels or Debug output.
        assert!(!format!("{book:?} {}", rc.label()).contains("SeCrEt"));
        // The profile's server is down, node c answers: next time c goes first.
        book.record_failure(&Route::Direct);
        book.record_success(&rc);
        let book = RouteBook::load(dir.path()).unwrap();
        assert_eq!(book.last_good(), Some(rc.clone()));
        assert_eq!(book.attempt_order(), [rc, Route::Direct, rb, r1]);
        // With no other server the key is left out, as in older files.
        RouteBook::set_servers(dir.path(), &[]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(ROUTES_FILE)).unwrap();
        assert!(!text.contains("servers"), "{text}");
    }
}
