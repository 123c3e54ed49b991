//! `hushwire app`: the local web app (crate `hushwire-webapp`).

use std::path::Path;

pub(crate) async fn run(
    _dir: &Path,
    _listen: Option<std::net::SocketAddr>,
    _no_open: bool,
) -> anyhow::Result<()> {
    Err(crate::user_error("hushwire app is not available in this build yet"))
}
