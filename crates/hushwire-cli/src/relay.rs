//! `hushwire relay …`: run a volunteer relay, and manage a profile's ways in (relay
//! links, proxy).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hushwire_client::{ClientError, Endpoint, ProxyUrl, Route, RouteBook, StoredMessage};
use hushwire_proto::relay_link::RelayLink;
use hushwire_relay::{RelayConfig, RelayLimits};

use crate::user_error;

/// `hushwire relay` without a subcommand runs a relay.
#[derive(Debug, Args)]
pub(crate) struct RelayRunArgs {
    /// Address to listen on, e.g. 0.0.0.0:443.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The Hushwire server to relay to: its URL as `serve` printed it (only host and
    /// port are used; the relay never needs the secret path).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The server's key pin, checked once at start.
    #[arg(long, value_name = "sha256:HEX")]
    pub upstream_pin: Option<String>,
    /// Host name or address clients reach this relay at (goes into the link).
    /// Default: the --listen address, unless it is a wildcard.
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// Data directory (certificate, secret, default site). Default: the user data
    /// directory, e.g. ~/.local/share/hushwire-relay.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Directory of the website the relay shows everyone without the secret.
    #[arg(long, value_name = "DIR")]
    pub site: Option<PathBuf>,
    /// Tunnels one client IP may have open at once.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().tunnels_per_ip)]
    pub tunnels_per_ip: u32,
    /// Tunnels one client IP may open per minute.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().opens_per_ip_per_minute)]
    pub opens_per_minute: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Add a relay link to this profile's ways in (after the direct route).
    Add {
        /// `hushwire-relay://HOST:PORT?s=…&pin=…`
        link: String,
    },
    /// List this profile's ways in, in the order they are tried.
    List {
        /// Print whole links (with their secrets) instead of addresses.
        #[arg(long)]
        links: bool,
    },
    /// Remove a relay by its link or HOST:PORT.
    Remove {
        /// The link or HOST:PORT.
        relay: String,
    },
    /// Send a relay link to a contact (or a group), end-to-end encrypted, so links
    /// spread through trust rather than public lists. Without LINK, shares every relay
    /// of this profile. Prints each message id.
    Share {
        /// The contact's handle, or a group as `#TITLE`.
        handle: String,
        /// `hushwire-relay://…` (default: this profile's relays).
        link: Option<String>,
    },
    /// Add a relay link a contact shared (the id `receive` printed) to this profile's
    /// ways in. Shared links are never added without this.
    AddShared {
        /// The message id of the shared link.
        id: String,
    },
}

/// `[2026-11-27 10:00:00] alice shared a relay: relay.example.org:443 (to use it:
/// hushwire relay add-shared ID)`. The secret stays off the human line.
pub(crate) fn shared_link_line(m: &StoredMessage) -> String {
    let address = RelayLink::parse(&m.text)
        .map(|l| l.address())
        .unwrap_or_else(|_| "(invalid link)".into());
    let hint = if m.outgoing {
        String::new()
    } else {
        format!(" (to use it: hushwire relay add-shared {})", m.id)
    };
    format!(
        "[{}] {} shared a relay: {address}{hint}",
        crate::output::human_time(m.sent_at_ms),
        m.from
    )
}

/// `{"type":"relay_link","id":…,"conversation":…,"from":…,"sent_at":…,"relay":"HOST:PORT",
/// "link":…}`
pub(crate) fn shared_link_json(m: &StoredMessage) -> String {
    let address = RelayLink::parse(&m.text).map(|l| l.address()).ok();
    serde_json::json!({
        "type": "relay_link",
        "id": m.id,
        "conversation": m.conversation,
        "from": m.from,
        "sent_at": crate::output::rfc3339(m.sent_at_ms),
        "relay": address,
        "link": m.text,
    })
    .to_string()
}

/// `relay share HANDLE [LINK]`: queue the link(s), flush, print the ids.
async fn share(dir: &Path, peer: &str, link: Option<&str>) -> anyhow::Result<()> {
    let links: Vec<RelayLink> = match link {
        Some(l) => vec![parse_link(l)?],
        None => RouteBook::load(dir)?.relays().cloned().collect(),
    };
    if links.is_empty() {
        return Err(user_error(
            "this profile has no relays to share; pass a LINK (hushwire-relay://…)",
        ));
    }
    let mut client = crate::commands::open_client(dir)?;
    let group = hushwire_e2e::group::is_group_name(peer);
    if group {
        if !client.has_conversation(peer)? {
            return Err(user_error(format!("no group {peer}")));
        }
    } else {
        hushwire_proto::identity::validate_handle(peer).map_err(ClientError::from)?;
        if peer == client.identity()?.handle {
            return Err(user_error("you cannot share a relay with yourself"));
        }
        // A typo must not sit at the head of the outbox; unreachable: queue anyway.
        if !client.has_conversation(peer)? {
            match client.fetch_account(peer).await {
                Ok(_) => {}
                Err(e @ ClientError::UnknownHandle(_)) => return Err(e.into()),
                Err(e) if e.is_network() => {
                    tracing::info!(error = %e, "cannot check the recipient now; queueing");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut ids = Vec::new();
    for link in &links {
        let id = client
            .queue_relay_link(peer, &link.to_string())
            .map_err(|e| match e {
                ClientError::E2e(hushwire_e2e::E2eError::Protocol(msg)) => user_error(msg),
                other => other.into(),
            })?;
        ids.push(id);
    }
    client.set_defer_deliveries(true);
    let flushed = client
        .flush_outbox(crate::commands::NETWORK_TIMEOUT, &mut |_| {})
        .await;
    let mut pending = Vec::new();
    for id in &ids {
        if client.profile().is_outbox_item_pending(id)? {
            pending.push(id.clone());
        }
    }
    let _ = client.close().await;
    for id in &ids {
        crate::output::print_line(id)?;
    }
    match flushed {
        Err(e) if !pending.is_empty() => {
            eprintln!(
                "warning: {} queued but not sent: {e}\n\
                 it will be sent by the next `hushwire send` or `hushwire sync`",
                pending.join(", ")
            );
            Err(e.into())
        }
        _ if !pending.is_empty() => Err(anyhow::anyhow!(
            "{} still queued; run `hushwire sync` to retry",
            pending.join(", ")
        )),
        _ => Ok(()),
    }
}

/// `relay add-shared ID`: the user accepts a shared link into the routes.
fn add_shared(dir: &Path, id: &str) -> anyhow::Result<()> {
    let profile = crate::commands::open_registered(dir)?;
    let shared = profile
        .shared_relay_link(id)?
        .ok_or_else(|| user_error(format!("no shared relay link with id {id}")))?;
    drop(profile);
    let link = parse_link(&shared.text)?;
    let address = link.address();
    RouteBook::add_relay(dir, link)?;
    crate::output::print_line(&format!(
        "added relay {address} (shared by {})",
        shared.from
    ))?;
    Ok(())
}

fn parse_link(text: &str) -> anyhow::Result<RelayLink> {
    RelayLink::parse(text).map_err(|e| user_error(e.to_string()))
}

/// Stores `--proxy`/`HUSHWIRE_PROXY` (`none` clears it) and `--relay` links in the
/// profile before a command connects.
pub(crate) fn apply_route_flags(
    dir: &Path,
    proxy: Option<&str>,
    relays: &[String],
) -> anyhow::Result<()> {
    if proxy.is_none() && relays.is_empty() {
        return Ok(());
    }
    let proxy = match proxy {
        None => None,
        Some("none") | Some("") => Some(None),
        Some(p) => Some(Some(ProxyUrl::parse(p)?)),
    };
    let links = relays
        .iter()
        .map(|l| parse_link(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    RouteBook::edit(dir, |p, list, _| {
        if let Some(new) = proxy {
            *p = new;
        }
        for link in links {
            list.retain(|l| l.address() != link.address());
            list.push(link);
        }
    })?;
    Ok(())
}

pub(crate) async fn manage(dir: &Path, command: RelayCommand) -> anyhow::Result<()> {
    match command {
        RelayCommand::Add { link } => {
            let link = parse_link(&link)?;
            let address = link.address();
            RouteBook::add_relay(dir, link)?;
            crate::output::print_line(&format!("added relay {address}"))?;
        }
        RelayCommand::Share { handle, link } => share(dir, &handle, link.as_deref()).await?,
        RelayCommand::AddShared { id } => add_shared(dir, &id)?,
        RelayCommand::List { links } => {
            let book = RouteBook::load(dir)?;
            let last = book.last_good();
            if let Some(p) = book.proxy() {
                crate::output::print_line(&format!("proxy {p} (every route goes through it)"))?;
            }
            for route in book.attempt_order() {
                let mark = if Some(&route) == last.as_ref() {
                    "  (worked last)"
                } else {
                    ""
                };
                let text = match (&route, links) {
                    (Route::Relay(link), true) => format!("relay {link}"),
                    _ => route.label(),
                };
                crate::output::print_line(&format!("{text}{mark}"))?;
            }
        }
        RelayCommand::Remove { relay } => {
            let address = match RelayLink::parse(&relay) {
                Ok(link) => link.address(),
                Err(_) => relay.clone(),
            };
            let mut found = false;
            RouteBook::edit(dir, |_, list, _| {
                let before = list.len();
                list.retain(|l| l.address() != address);
                found = list.len() != before;
            })?;
            if !found {
                return Err(user_error(format!("no relay {address} in this profile")));
            }
            crate::output::print_line(&format!("removed relay {address}"))?;
        }
    }
    Ok(())
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("", "", "hushwire-relay")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| user_error("no home directory found; pass --data DIR"))
}

/// Runs a relay until SIGINT/SIGTERM. Prints `link: hushwire-relay://…` (and a QR code
/// on a terminal).
pub(crate) async fn run(args: RelayRunArgs) -> anyhow::Result<()> {
    let listen = args.listen.ok_or_else(|| {
        user_error("`hushwire relay` needs --listen ADDR (or a subcommand: add, list, remove)")
    })?;
    let upstream = args
        .upstream
        .ok_or_else(|| user_error("`hushwire relay` needs --upstream URL"))?;
    let pin = args
        .upstream_pin
        .ok_or_else(|| user_error("`hushwire relay` needs --upstream-pin sha256:…"))?;
    // The server's key, checked now, so a typo does not silently relay elsewhere.
    let endpoint = Endpoint::new(&upstream, Some(&pin))?;
    let url = url::Url::parse(&upstream).map_err(|e| user_error(format!("--upstream: {e}")))?;
    let upstream_host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(user_error("--upstream has no host")),
    };
    let upstream_port = url.port_or_known_default().unwrap_or(443);
    match endpoint.probe().await {
        Ok(()) => {}
        Err(e @ (ClientError::PinMismatch { .. } | ClientError::UntrustedCertificate(_))) => {
            return Err(user_error(format!(
                "the upstream is not the server you named: {e}"
            )));
        }
        Err(e) => eprintln!("warning: the upstream is not reachable now ({e}); relaying anyway"),
    }
    let public_host = match args.public_host {
        Some(h) => h,
        None if listen.ip().is_unspecified() => {
            return Err(user_error(
                "listening on a wildcard address: pass --public-host HOST for the link",
            ));
        }
        None => listen.ip().to_string(),
    };
    let config = RelayConfig {
        listen,
        upstream_host,
        upstream_port,
        data_dir: match args.data {
            Some(d) => d,
            None => default_data_dir()?,
        },
        site_dir: args.site,
        public_host,
        limits: RelayLimits {
            tunnels_per_ip: args.tunnels_per_ip,
            opens_per_ip_per_minute: args.opens_per_minute,
            ..RelayLimits::default()
        },
    };
    let running = hushwire_relay::bind(config)
        .await
        .context("cannot start the relay")?;
    let link = running.link().to_string();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "link: {link}")?;
        if out.is_terminal()
            && let Ok(code) = qrcode::QrCode::new(link.as_bytes())
        {
            let qr = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build();
            writeln!(out, "{qr}")?;
        }
        out.flush()?;
    }
    running
        .run(crate::serve::shutdown_signal())
        .await
        .context("relay failed")?;
    Ok(())
}
