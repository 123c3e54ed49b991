//! `hushwire device …` (link, list, remove, rename) and `hushwire link CODE`: several
//! devices per account (see `hushwire_client::Client::link_device`).

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use hushwire_client::{ClientOptions, Event};
use hushwire_e2e::DeviceListNews;
use serde_json::json;

use crate::commands::{NETWORK_TIMEOUT, open_client};
use crate::output::print_line;
use crate::user_error;

/// The `device` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// Link a new device to this account: prints `link-code: CODE` (and a QR code on a
    /// terminal). On the new device run `hushwire --profile DIR link CODE`. This device
    /// then certifies it, adds it to every conversation and sends it the history.
    Link {
        /// How long to wait for the new device, in seconds (at most 900).
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
        /// Link without asking (otherwise a terminal asks to approve the device's name).
        #[arg(long)]
        yes: bool,
    },
    /// This account's devices, as the signed device list names them.
    List {
        /// One JSON object per device: {"id","name","current","linked_at"}.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device: it is revoked on the server and removed from every conversation,
    /// so it reads nothing sent from now on.
    Remove {
        /// The device id (see `device list`).
        id: u32,
    },
    /// Rename a device (names are end-to-end encrypted for the account's devices).
    Rename {
        /// The device id.
        id: u32,
        /// The new name (1-64 bytes).
        name: String,
    },
}

pub(crate) async fn run(dir: &Path, command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Link { timeout, yes } => link(dir, timeout, yes).await,
        DeviceCommand::List { json } => list(dir, json).await,
        DeviceCommand::Remove { id } => remove(dir, id).await,
        DeviceCommand::Rename { id, name } => rename(dir, id, &name).await,
    }
}

fn print_news(news: &DeviceListNews, json: bool) -> anyhow::Result<()> {
    print_line(&news_line(news, json))
}

/// How a device-list change prints in `receive` and here.
pub(crate) fn news_line(news: &DeviceListNews, json: bool) -> String {
    let ids = |v: &[(u32, String)]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect()
    };
    if json {
        return json!({
            "type": "devices_changed",
            "version": news.version,
            "added": ids(&news.added),
            "removed": ids(&news.removed),
            "renamed": ids(&news.renamed),
        })
        .to_string();
    }
    let label = |(id, name): &(u32, String)| {
        if name.is_empty() {
            format!("device {id}")
        } else {
            format!("device {id} ({name})")
        }
    };
    let mut parts = Vec::new();
    parts.extend(
        news.added
            .iter()
            .map(|d| format!("{} was linked", label(d))),
    );
    parts.extend(
        news.removed
            .iter()
            .map(|d| format!("{} was removed", label(d))),
    );
    parts.extend(
        news.renamed
            .iter()
            .map(|(id, name)| format!("device {id} is now called {name}")),
    );
    format!("your devices changed: {}", parts.join(", "))
}

async fn link(dir: &Path, timeout: u64, yes: bool) -> anyhow::Result<()> {
    if timeout == 0 || timeout > u64::from(hushwire_proto::limits::MAX_LINK_TTL_SECS) {
        return Err(user_error("--timeout is 1 to 900 seconds"));
    }
    let mut client = open_client(dir)?;
    let mut on_code = |code: &hushwire_proto::link::LinkCode| {
        let text = code.encode();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "link-code: {text}");
        if out.is_terminal()
            && let Ok(qr) = qrcode::QrCode::new(text.as_bytes())
        {
            let rendered = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build();
            let _ = writeln!(out, "{rendered}");
            let _ = writeln!(
                out,
                "On the new device: hushwire --profile DIR link CODE (waiting {timeout} s)"
            );
        }
        let _ = out.flush();
    };
    let interactive = !yes && std::io::stdin().is_terminal();
    let mut approve = |name: &str| {
        if !interactive {
            return true;
        }
        eprint!("Link the device \"{name}\" to your account? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes")
    };
    let mut news = Vec::new();
    let mut on_event = |e: Event| {
        if let Event::DevicesChanged(n) = e {
            news.push(n);
        }
    };
    let report = client
        .link_device(
            Duration::from_secs(timeout),
            &mut on_code,
            &mut approve,
            &mut on_event,
        )
        .await;
    let _ = client.close().await;
    let report = report?;
    print_line(&format!(
        "linked: device {} ({}), added to {} conversation(s), {} message(s) of history sent \
         ({} bytes)",
        report.device_id,
        report.name,
        report.conversations,
        report.history.messages,
        report.bytes_sent
    ))?;
    Ok(())
}

/// `hushwire link CODE`: this (empty) profile becomes a new device of the account.
pub(crate) async fn join(
    dir: &Path,
    code: &str,
    name: Option<String>,
    timeout: u64,
) -> anyhow::Result<()> {
    let code = if code == "-" {
        let mut text = String::new();
        std::io::stdin().read_line(&mut text)?;
        text
    } else {
        code.to_string()
    };
    let name = name.unwrap_or_else(default_device_name);
    let mut on_event = |_e: Event| {};
    let joined = hushwire_client::join_by_link(
        dir,
        &code,
        &name,
        ClientOptions::default(),
        Duration::from_secs(timeout),
        &mut on_event,
    )
    .await?;
    print_line(&format!(
        "linked: {}/{} ({name}), {} conversation(s), {} message(s) of history",
        joined.identity.handle,
        joined.identity.device_id,
        joined.conversations,
        joined.history.messages
    ))?;
    Ok(())
}

/// The host name, else "new device".
pub(crate) fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().chars().take(64).collect::<String>())
        .filter(|s| !s.is_empty() && hushwire_e2e::validate_device_name(s).is_ok())
        .unwrap_or_else(|| "new device".to_string())
}

async fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    let devices = tokio::time::timeout(NETWORK_TIMEOUT, client.devices()).await;
    let _ = client.close().await;
    let devices = devices
        .map_err(|_| hushwire_client::ClientError::Timeout("reading the device list".into()))??;
    for d in devices {
        let line = if json {
            json!({
                "id": d.device_id,
                "name": d.name,
                "current": d.current,
                "linked_at": d.linked_at_ms,
            })
            .to_string()
        } else {
            format!(
                "{}{} {}  linked {}",
                if d.current { "* " } else { "  " },
                d.device_id,
                if d.name.is_empty() {
                    "(no name)"
                } else {
                    &d.name
                },
                crate::output::human_time(d.linked_at_ms)
            )
        };
        print_line(&line)?;
    }
    Ok(())
}

async fn remove(dir: &Path, id: u32) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    let mut news = Vec::new();
    let mut on_event = |e: Event| {
        if let Event::DevicesChanged(n) = e {
            news.push(n);
        }
    };
    let result = client
        .remove_device(id, NETWORK_TIMEOUT, &mut on_event)
        .await;
    let _ = client.close().await;
    let n = result?;
    for n in &news {
        print_news(n, false)?;
    }
    print_line(&format!("removed device {id} from {n} conversation(s)"))?;
    Ok(())
}

async fn rename(dir: &Path, id: u32, name: &str) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    let result = client.rename_device(id, name).await;
    let _ = client.close().await;
    result?;
    print_line(&format!("device {id} is now called {name}"))?;
    Ok(())
}
