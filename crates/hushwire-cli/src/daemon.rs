//! `hushwire daemon`: JSON-RPC 2.0 (crate `hushwire-daemon`; its docs list the
//! transports, methods and events).

use std::path::{Path, PathBuf};

pub(crate) async fn run(
    dir: &Path,
    http: Option<std::net::SocketAddr>,
    socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    let token = match http {
        Some(addr) => {
            let from_env = std::env::var(hushwire_daemon::TOKEN_ENV).ok();
            match hushwire_daemon::http_token(&addr, from_env) {
                Some((token, generated)) => {
                    if generated {
                        // Shown once, to the user who started the daemon; never logged.
                        eprintln!("daemon token: {}", token.expose());
                    }
                    Some(token)
                }
                None => None,
            }
        }
        None => None,
    };
    let options = hushwire_daemon::DaemonOptions {
        http,
        token,
        socket,
        service: hushwire_service::ServiceOptions::default(),
        on_listening: Some(Box::new(|l| match l {
            hushwire_daemon::Listening::Http(addr) => {
                eprintln!("listening: http://{addr}/api/v1/rpc");
            }
            hushwire_daemon::Listening::Socket(path) => {
                eprintln!("listening: {}", path.display());
            }
        })),
    };
    hushwire_daemon::run(dir, options, hushwire_daemon::terminate_signal()).await?;
    Ok(())
}
