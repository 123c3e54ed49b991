//! `hushwire passphrase change`: rewraps the profile's database key under a new
//! passphrase (the database itself is not rewritten).

use std::io::IsTerminal as _;
use std::path::Path;

use clap::Subcommand;
use hushwire_client::vault;
use hushwire_client::{Passphrase, VaultError};

#[derive(Debug, Subcommand)]
pub(crate) enum PassphraseCommand {
    /// Change the profile's passphrase: the current one from HUSHWIRE_PASSPHRASE, the
    /// new one from HUSHWIRE_NEW_PASSPHRASE; each is asked on the terminal when unset.
    Change,
}

pub(crate) fn run(dir: &Path, command: PassphraseCommand) -> anyhow::Result<()> {
    match command {
        PassphraseCommand::Change => change(dir),
    }
}

fn change(dir: &Path) -> anyhow::Result<()> {
    let terminal = std::io::stdin().is_terminal();
    let need = || VaultError::NeedPassphrase {
        dir: dir.to_path_buf(),
    };
    let old = match Passphrase::from_env(vault::PASSPHRASE_ENV) {
        Some(p) => p,
        None if terminal => vault::prompt(&format!(
            "Current passphrase for profile {}: ",
            dir.display()
        ))?,
        None => return Err(need().into()),
    };
    let new = match Passphrase::from_env(vault::NEW_PASSPHRASE_ENV) {
        Some(p) => p,
        None if terminal => vault::prompt_new(dir)?,
        None => {
            return Err(crate::user_error(
                "set HUSHWIRE_NEW_PASSPHRASE (or run in a terminal to be asked)",
            ));
        }
    };
    vault::change_passphrase(dir, &old, &new)?;
    crate::output::print_line(&format!("passphrase changed for profile {}", dir.display()))?;
    Ok(())
}
