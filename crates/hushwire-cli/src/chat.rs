//! `hushwire chat`: the terminal app (crate `hushwire-tui`).

use std::path::Path;

pub(crate) async fn run(dir: &Path) -> anyhow::Result<()> {
    hushwire_tui::run(dir).await?;
    Ok(())
}
