//! Camouflage for Hushwire's public edges (the server and volunteer relays): to anyone
//! without the secret, they are an ordinary HTTPS website served by nginx.
//!
//! A censor finds servers by probing addresses: it connects, sends requests a scanner
//! would send (or garbage) and compares the answers with what known software says.
//! This crate answers such probes exactly as nginx 1.22 with `server_tokens off` does
//! when it serves a static directory: the same status codes and reason phrases, the same
//! headers in the same order and letter case, the same error pages, the same treatment
//! of malformed requests (400 and close), directories (301 to the slash, 403 without an
//! index) and methods other than GET/HEAD (405). The tests in `tests/e2e` compare it
//! against a real nginx serving the same directory.
//!
//! # Layout
//! - [`site`]: [`DecoySite`] — the static directory and the response to one request
//!   ([`DecoyResponse`]), independent of any transport.
//! - [`http1`]: [`http1::serve`] — reads HTTP/1.x requests off a connection, answers
//!   every one that is not for the secret with the decoy site, and hands the connection
//!   (with the bytes already read, see [`Rewind`]) to the caller at the first request
//!   that is.
//! - [`tls`]: [`tls::server_config`] — rustls settings of a common web server (TLS 1.2
//!   and 1.3, ALPN `h2` and `http/1.1`).
//! - [`secret`]: random URL-safe secrets and constant-time comparison.

pub mod http1;
mod rewind;
pub mod secret;
pub mod site;
pub mod tls;

pub use rewind::Rewind;
pub use site::{DecoyResponse, DecoySite, RequestInfo};
