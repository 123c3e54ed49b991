//! `hushwire app`: the local web app (crate `hushwire-webapp`).

use std::io::Write;
use std::path::Path;

use hushwire_service::{Service, ServiceOptions};

pub(crate) async fn run(
    dir: &Path,
    listen: Option<std::net::SocketAddr>,
    no_open: bool,
) -> anyhow::Result<()> {
    // Refuse a non-loopback address before opening anything.
    if let Err(e) = hushwire_webapp::listen_addr(listen) {
        return Err(crate::user_error(e.to_string()));
    }
    // The profile must be registered (a clear error otherwise).
    drop(crate::commands::open_registered(dir)?);
    let service = Service::start(dir, ServiceOptions::default())?;
    let app = hushwire_webapp::start(service.clone(), listen)
        .await
        .map_err(|e| crate::user_error(e.to_string()))?;
    let url = app.url();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{url}")?;
        out.flush()?;
    }
    eprintln!(
        "Hushwire is running on {}; press Ctrl-C to stop.",
        app.addr()
    );
    if !no_open && let Err(e) = hushwire_webapp::open_browser(&url) {
        eprintln!("warning: {e}; open the address above yourself");
    }
    tokio::select! {
        () = app.wait() => {}
        r = tokio::signal::ctrl_c() => { r?; }
    }
    service.shutdown().await;
    Ok(())
}
