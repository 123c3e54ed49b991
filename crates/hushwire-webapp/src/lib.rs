//! `hushwire app`: the Hushwire chat app in your browser, served by the local native
//! client on 127.0.0.1.
//!
//! # Usage
//!
//! ```text
//! hushwire --profile ~/.hushwire/alice app                 # opens the browser
//! hushwire app --listen 127.0.0.1:8765 --no-open          # just print the URL
//! http://127.0.0.1:8765/?token=5f0c…                       # (printed on stdout)
//! ```
//!
//! The process keeps the profile's client running (live receiving through
//! [`hushwire_service::Service`]) and serves a hand-written HTML/CSS/JS app embedded in
//! the binary: no npm, no CDN, nothing fetched from anywhere else. The browser only
//! renders data and sends commands; every key stays in this process, so no JavaScript
//! ever touches one. What it offers: the conversation list (unread counts, previews),
//! chat view with bubbles, ticks (queued, sent, delivered, read), replies with quotes,
//! reactions (click a message's smiley), a message menu (hover `⋯` or right-click:
//! reply, react, edit an own text, delete: for everyone when it is one's own, for me
//! otherwise, after a confirmation), the disappearing-messages timer in the chat header
//! (off, 5 minutes to 90 days; a note in the chat and a clock on timed messages),
//! view-once files (a switch next to the file button; received ones open once in a
//! full-window overlay, then show "Opened"), message requests (a banner with Accept,
//! Block and Delete instead of the compose box), blocked accounts (a banner, and a list
//! with Unblock in the settings), image previews (thumbnails from the
//! attachment, full pictures from the profile's `media` directory), drag-and-drop and a
//! file button with upload progress, the typing indicator, group management (create,
//! add, remove, rename, leave), device linking (a QR code rendered server-side as SVG plus
//! the code text), settings (read receipts, presence, theme), light and dark themes, and
//! a layout that adapts to narrow windows. Live updates arrive over a WebSocket.
//!
//! # Security
//!
//! - It listens on loopback only (`--listen` with any other address is refused).
//! - A fresh random token (32 bytes, hex) is in the printed URL. The first request with
//!   `?token=` sets it as a cookie (`HttpOnly; SameSite=Strict; Path=/`, named after the
//!   port) and redirects to `/` without the token in the address bar. Every request and
//!   the WebSocket must carry the cookie (or the token as `Authorization: Bearer` or
//!   `?token=`), compared in constant time; otherwise: 401.
//! - `Host` must be `127.0.0.1:PORT` or `localhost:PORT` (against DNS rebinding), and
//!   `Origin`, when present, this app's origin; it is required on the WebSocket and on
//!   every POST (cross-site requests get 403, as do `Sec-Fetch-Site: cross-site` ones).
//! - Every response carries a strict Content-Security-Policy (`default-src 'none';
//!   script-src 'self'; ...`, no inline script or style), `X-Content-Type-Options:
//!   nosniff` and `Referrer-Policy: no-referrer`. Served media files are sandboxed.
//!
//! # HTTP API (used by the embedded app)
//!
//! `GET /api/state`, `GET /api/timeline?c=NAME`, `GET /api/media?c=&id=`,
//! `GET /api/thumb?c=&id=`, `GET /api/devices`, `POST /api/send`, `/api/react`,
//! `/api/read`, `/api/typing`, `/api/upload?to=&name=[&view_once=true]` (the raw file
//! as the body, streamed to the profile's `media/outbox` directory, then
//! `Client::send_file`), `/api/groups`, `/api/group`, `/api/settings`, `/api/link`;
//! `GET /ws` (JSON events). The conversation commands go through
//! [`hushwire_service::Service::command`]: `POST /api/edit {id, text}`,
//! `/api/delete {id}` (answers the scope: `everyone`, `unsent` or `me`),
//! `/api/timer {conversation, timer}` (`off`, `5m`, `1h`, ... `90d`),
//! `/api/contact {handle, action}` (`accept`, `decline`, `block`, `unblock`).
//! `POST /api/view-once {conversation, id}` opens a received view-once message once
//! ([`hushwire_service::Service::open_view_once`] into `media/.view-once/`, read into
//! memory and deleted at once): the file's bytes (`Cache-Control: no-store`; sender,
//! caption and name percent-encoded in `X-Hushwire-From`, `-Text`, `-Name`) or, for a
//! text, JSON; a second open gets 409. Malformed bodies get a 4xx with a JSON `error`.

mod api;
mod assets;
mod events;
pub mod security;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hushwire_service::Service;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};

pub use security::Token;

/// Why the web app could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebAppError {
    /// `--listen` named an address that is not loopback.
    #[error(
        "the web app listens on loopback only (127.0.0.1 or ::1); {0} is not a loopback address"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No browser could be started.
    #[error("cannot open a browser: {0}")]
    Browser(String),
}

/// A running web app.
#[derive(Debug)]
pub struct WebApp {
    addr: SocketAddr,
    token: Token,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebApp {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The access token (a secret: never log it).
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The URL to open: `http://127.0.0.1:PORT/?token=TOKEN` (a secret: print it for the
    /// user, never log it).
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token.expose())
    }

    /// Runs until the server stops (it does not by itself).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    /// Stops serving (open WebSockets are closed).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// Refuses anything but a loopback address; `None` is 127.0.0.1 with a free port.
pub fn listen_addr(listen: Option<SocketAddr>) -> Result<SocketAddr, WebAppError> {
    match listen {
        None => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
        Some(a) if a.ip().is_loopback() => Ok(a),
        Some(a) => Err(WebAppError::NotLoopback(a)),
    }
}

/// Starts serving the app for `service`'s profile on `listen` (loopback only; default
/// 127.0.0.1 with a free port).
pub async fn start(service: Service, listen: Option<SocketAddr>) -> Result<WebApp, WebAppError> {
    let addr = listen_addr(listen)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebAppError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| WebAppError::Bind { addr, source })?;
    let token = Token::generate();
    let (app_events, _) = broadcast::channel(256);
    let state = api::AppState(Arc::new(api::Inner::new(
        service,
        token.clone(),
        addr.port(),
        app_events,
    )));
    api::spawn_background(state.clone());
    let router = api::router(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the web app server stopped");
        }
    });
    Ok(WebApp {
        addr,
        token,
        stop: Some(stop_tx),
        task,
    })
}

/// Opens `url` in the user's browser: `$BROWSER` if set, else `xdg-open` (`open` on
/// macOS). The child is not waited for.
pub fn open_browser(url: &str) -> Result<(), WebAppError> {
    let program = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => b,
        _ if cfg!(target_os = "macos") => "open".to_string(),
        _ => "xdg-open".to_string(),
    };
    std::process::Command::new(&program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| WebAppError::Browser(format!("{program}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        assert_eq!(
            listen_addr(None).unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert!(listen_addr(Some("127.0.0.1:8000".parse().unwrap())).is_ok());
        assert!(listen_addr(Some("[::1]:8000".parse().unwrap())).is_ok());
        let err = listen_addr(Some("0.0.0.0:8000".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("loopback only"), "{err}");
        assert!(listen_addr(Some("192.168.1.2:8000".parse().unwrap())).is_err());
    }
}
