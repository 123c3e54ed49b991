//! `hushwire daemon`: JSON-RPC 2.0 (crate `hushwire-daemon`).

use std::path::{Path, PathBuf};

pub(crate) async fn run(
    _dir: &Path,
    _http: Option<std::net::SocketAddr>,
    _socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    Err(crate::user_error("hushwire daemon is not available in this build yet"))
}
