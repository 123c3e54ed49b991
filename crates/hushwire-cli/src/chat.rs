//! `hushwire chat`: the terminal app (crate `hushwire-tui`).

use std::path::Path;

pub(crate) async fn run(_dir: &Path) -> anyhow::Result<()> {
    Err(crate::user_error("hushwire chat is not available in this build yet"))
}
