//! `hushwire serve` and `hushwire admin invite`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hushwire_server::{RegistrationPolicy, ServerConfig};

use crate::{Registration, user_error};

/// The flags of `serve`.
pub(crate) struct ServeArgs {
    pub listen: Option<std::net::SocketAddr>,
    pub data: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub registration: Option<Registration>,
    pub site: Option<PathBuf>,
    pub acme_domains: Vec<String>,
    pub acme_contact: Option<String>,
    pub acme_directory: Option<String>,
    /// NATS URL of the cross-node bus (`--bus`, env `HUSHWIRE_BUS`).
    pub bus: Option<String>,
    /// Where media blobs live (`--media s3://…`, env `HUSHWIRE_MEDIA_STORE`).
    pub media: Option<String>,
    /// PostgreSQL store URL (`--store postgres://…`, env `HUSHWIRE_STORE`).
    pub store: Option<String>,
}

/// The user data directory of the server (`…/hushwire-server`).
pub(crate) fn default_data_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("", "", "hushwire-server")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| user_error("no home directory found; pass --data DIR"))
}

/// Defaults < config file < environment (`HUSHWIRE_MEDIA_*`) < flags.
fn build_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::default();
    let mut file_sets_data_dir = false;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| user_error(format!("cannot read {}: {e}", path.display())))?;
        config = ServerConfig::from_toml(&text)
            .map_err(|e| user_error(format!("{}: {e}", path.display())))?;
        file_sets_data_dir = text
            .parse::<toml::Table>()
            .map(|t| t.contains_key("data_dir"))
            .unwrap_or(false);
    }
    // The environment overrides the file (`HUSHWIRE_MEDIA_*`); flags override both.
    config
        .media
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| user_error(format!("environment: {e}")))?;
    if let Some(data) = &args.data {
        config.data_dir = data.clone();
    } else if !file_sets_data_dir {
        config.data_dir = default_data_dir()?;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    }
    if let Some(site) = &args.site {
        config.site_dir = Some(site.clone());
    }
    if !args.acme_domains.is_empty() {
        config.acme.domains = args.acme_domains.clone();
        // ACME replaces a certificate named in the config file.
        config.tls.cert = None;
        config.tls.key = None;
    }
    if let Some(contact) = &args.acme_contact {
        config.acme.contact = Some(contact.clone());
    }
    if let Some(directory) = &args.acme_directory {
        config.acme.directory = directory.clone();
    }
    if (args.acme_contact.is_some() || args.acme_directory.is_some()) && !config.acme.enabled() {
        return Err(user_error(
            "--acme-contact and --acme-directory need --acme-domain (or [acme] domains)",
        ));
    }
    if let Some(bus) = &args.bus {
        // Empty (e.g. `HUSHWIRE_BUS=`) turns a bus from the config file off.
        config.bus.url = Some(bus.clone()).filter(|b| !b.trim().is_empty());
    }
    if let Some(media) = &args.media {
        // Empty (`HUSHWIRE_MEDIA_STORE=`) means the local data directory.
        config.media.store = Some(media.trim().to_owned()).filter(|m| !m.is_empty());
    }
    if let Some(store) = &args.store {
        // Empty (`HUSHWIRE_STORE=`) means the embedded database.
        config.store = Some(store.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(Into::into);
    }
    if let Some(r) = args.registration {
        config.registration = match r {
            Registration::Open => RegistrationPolicy::Open,
            Registration::Invite => RegistrationPolicy::Invite,
        };
    }
    config
        .validate()
        .map_err(|e| user_error(format!("invalid configuration: {e}")))?;
    Ok(config)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (not
/// when first polled), so a signal right after, say, the URL was printed is not lost to
/// the default action (being killed).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Some(mut term), Some(mut int)) = handlers {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    // The embedded database is kept by its type so it can be shut down (checkpointed)
    // at the end; PostgreSQL needs nothing of the kind.
    let sqlite = match config.store {
        None => Some(
            hushwire_server::open_sqlite(&config)
                .await
                .context("cannot open the server database")?,
        ),
        Some(_) => None,
    };
    let store: std::sync::Arc<dyn hushwire_store::Store> = match &sqlite {
        Some(s) => s.clone(),
        None => hushwire_server::open_store(&config)
            .await
            .context("cannot open the PostgreSQL store")?,
    };
    let running = hushwire_server::bind(config.clone(), store.clone())
        .await
        .context("cannot start the server")?;
    // Listening for SIGINT/SIGTERM before saying we are up.
    let shutdown = shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "url: {}", running.url())?;
        if running.uses_acme() {
            writeln!(
                out,
                "certificate: ACME ({}) from {}; clients need no --pin",
                config.acme.domains.join(", "),
                config.acme.directory
            )?;
        } else {
            writeln!(out, "pin: {}", running.pin())?;
        }
        out.flush()?;
    }
    tracing::info!(data_dir = %config.data_dir.display(), "serving");
    let result = running.run(shutdown).await;
    if let Some(s) = sqlite {
        s.shutdown().await;
    }
    result.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn admin_invite(data: Option<PathBuf>, ttl_hours: u64) -> anyhow::Result<()> {
    if ttl_hours == 0 {
        return Err(user_error("--ttl-hours must be at least 1"));
    }
    let config = ServerConfig {
        data_dir: match data {
            Some(d) => d,
            None => default_data_dir()?,
        },
        ..ServerConfig::default()
    };
    let store = hushwire_server::open_sqlite(&config)
        .await
        .context("cannot open the server database")?;
    let ttl = Duration::from_secs(ttl_hours.saturating_mul(3600));
    let code = hushwire_server::create_invite(&*store, ttl).await;
    store.shutdown().await;
    let code = code.context("cannot create the invite")?;
    crate::output::print_line(&code)?;
    Ok(())
}
