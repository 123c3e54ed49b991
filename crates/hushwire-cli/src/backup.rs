//! `hushwire backup …`: end-to-end encrypted backups the user holds (create, restore,
//! schedule), over `hushwire_client::backup`. The format is docs/backup-format.md.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use hushwire_client::backup::{BackupSchedule, RecoveryKey};
use hushwire_client::{ClientOptions, Event};
use serde_json::json;

use crate::commands::open_client;
use crate::output::print_line;
use crate::user_error;

/// The environment variable a recovery key is read from (scripts; else a prompt).
pub(crate) const RECOVERY_KEY_ENV: &str = "HUSHWIRE_RECOVERY_KEY";

/// The `backup` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Write an encrypted backup of this profile: the account key, contacts, every
    /// conversation's history and settings (media with --media). Prints
    /// `recovery-key: …` (64 characters, shown once: keep it apart from the file) unless
    /// HUSHWIRE_RECOVERY_KEY or a schedule's key is set.
    Create {
        /// The backup file (written to a temporary name, then renamed).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Include received and sent files (attachments) that are on this device.
        #[arg(long)]
        media: bool,
        /// One JSON object: {"file","recovery_key"?,"conversations","messages",...}.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into this (empty) profile: the key comes from
    /// HUSHWIRE_RECOVERY_KEY or a prompt. This install becomes a new device of the
    /// account and rejoins its conversations: through the account's other devices if
    /// they add it within --wait, else by itself (External Commit for group chats, a
    /// new group for 1:1 conversations). A wrong key or a damaged file writes nothing.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// This device's name, shown on the account's other devices.
        #[arg(long)]
        name: Option<String>,
        /// How long to wait for the account's other devices to add this one before
        /// rejoining by itself, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        wait: u64,
        /// One JSON object with what was restored and rejoined.
        #[arg(long)]
        json: bool,
    },
    /// Back up to DIR every --every (e.g. 1d) while `hushwire daemon` or `hushwire app`
    /// runs, keeping the --keep newest files. Prints `recovery-key: …` once, unless
    /// HUSHWIRE_RECOVERY_KEY is set; the key is kept in this (encrypted) profile so the
    /// scheduled backups need no one to type it. `--off` stops; no DIR shows the schedule.
    Schedule {
        /// The directory to write `hushwire-backup-*.hwbackup` files to.
        dir: Option<PathBuf>,
        /// Interval: 1h, 12h, 1d, 7d, ...
        #[arg(long, value_name = "INTERVAL", default_value = "1d")]
        every: String,
        /// How many backups to keep in DIR (older ones are deleted).
        #[arg(long, default_value_t = 7)]
        keep: u32,
        /// Include media files.
        #[arg(long)]
        media: bool,
        /// Stop scheduled backups (and forget their key).
        #[arg(long, conflicts_with = "dir")]
        off: bool,
    },
}

pub(crate) async fn run(dir: &Path, command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create { to, media, json } => create(dir, &to, media, json),
        BackupCommand::Restore {
            file,
            name,
            wait,
            json,
        } => restore(dir, &file, name, wait, json).await,
        BackupCommand::Schedule {
            dir: target,
            every,
            keep,
            media,
            off,
        } => schedule(dir, target, &every, keep, media, off),
    }
}

/// The key from HUSHWIRE_RECOVERY_KEY, if set (a malformed one is the user's error).
fn key_from_env() -> anyhow::Result<Option<RecoveryKey>> {
    match std::env::var(RECOVERY_KEY_ENV) {
        Ok(text) if !text.trim().is_empty() => RecoveryKey::parse(&text)
            .map(Some)
            .map_err(|e| user_error(format!("{RECOVERY_KEY_ENV}: {e}"))),
        _ => Ok(None),
    }
}

/// The key from HUSHWIRE_RECOVERY_KEY, else asked on the terminal.
fn key_for_restore() -> anyhow::Result<RecoveryKey> {
    if let Some(key) = key_from_env()? {
        return Ok(key);
    }
    if !std::io::stdin().is_terminal() {
        return Err(user_error(format!(
            "no recovery key: set {RECOVERY_KEY_ENV} or run on a terminal"
        )));
    }
    let text = hushwire_client::vault::prompt("recovery key: ")?;
    RecoveryKey::parse(text.expose()).map_err(|e| user_error(format!("recovery key: {e}")))
}

fn create(dir: &Path, to: &Path, media: bool, json: bool) -> anyhow::Result<()> {
    let client = open_client(dir)?;
    // The user's key, else the schedule's, else a new one shown once.
    let (key, shown) = match key_from_env()? {
        Some(k) => (k, false),
        None => match client.backup_schedule()? {
            Some(s) => (s.key, false),
            None => (RecoveryKey::generate(), true),
        },
    };
    let stats = client
        .write_backup(to, &key, media)
        .with_context(|| format!("cannot write the backup {}", to.display()))?;
    if json {
        let mut v = json!({
            "file": to.display().to_string(),
            "bytes": stats.bytes,
            "conversations": stats.conversations,
            "messages": stats.messages,
            "contacts": stats.contacts,
            "media_files": stats.media_files,
        });
        if shown {
            v["recovery_key"] = json!(key.display());
        }
        print_line(&v.to_string())?;
    } else {
        if shown {
            print_line(&format!("recovery-key: {}", key.display()))?;
            eprintln!(
                "Keep this key apart from the backup file: without it the backup cannot be read, \
                 and it is shown only now."
            );
        }
        print_line(&format!(
            "backup: {} ({} conversation(s), {} message(s), {} media file(s), {} bytes)",
            to.display(),
            stats.conversations,
            stats.messages,
            stats.media_files,
            stats.bytes
        ))?;
    }
    Ok(())
}

async fn restore(
    dir: &Path,
    file: &Path,
    name: Option<String>,
    wait: u64,
    json: bool,
) -> anyhow::Result<()> {
    let key = key_for_restore()?;
    let name = name.unwrap_or_else(crate::device::default_device_name);
    let mut on_event = |_e: Event| {};
    let restored = hushwire_client::backup::restore_backup(
        dir,
        file,
        &key,
        &name,
        ClientOptions::default(),
        Duration::from_secs(wait),
        &mut on_event,
    )
    .await?;
    if json {
        print_line(
            &json!({
                "handle": restored.identity.handle,
                "device_id": restored.identity.device_id,
                "conversations": restored.summary.conversations,
                "messages": restored.summary.messages,
                "contacts": restored.summary.contacts,
                "media_files": restored.summary.media_files,
                "joined_by_devices": restored.joined_by_devices,
                "rejoined": restored.rejoined,
                "restarted": restored.restarted,
                "failed": restored.failed,
            })
            .to_string(),
        )?;
    } else {
        print_line(&format!(
            "restored: {}/{} ({name}), {} conversation(s), {} message(s)",
            restored.identity.handle,
            restored.identity.device_id,
            restored.summary.conversations,
            restored.summary.messages
        ))?;
        print_line(&format!(
            "rejoined: {} by the account's other devices, {} by external commit, {} started again{}",
            restored.joined_by_devices,
            restored.rejoined,
            restored.restarted,
            if restored.failed.is_empty() {
                String::new()
            } else {
                format!("; not rejoined: {}", restored.failed.join(", "))
            }
        ))?;
    }
    Ok(())
}

fn schedule(
    dir: &Path,
    target: Option<PathBuf>,
    every: &str,
    keep: u32,
    media: bool,
    off: bool,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    if off {
        client.set_backup_schedule(None)?;
        print_line("backup-schedule: off")?;
        return Ok(());
    }
    let Some(target) = target else {
        match client.backup_schedule()? {
            Some(s) => print_line(&format!(
                "backup-schedule: {} every {}, keep {}{}, last {}",
                s.dir.display(),
                hushwire_service::timer_text(s.every_ms),
                s.keep,
                if s.media { ", with media" } else { "" },
                s.last_ms
                    .map(|ms| ms.to_string())
                    .unwrap_or_else(|| "never".into())
            ))?,
            None => print_line("backup-schedule: off")?,
        }
        return Ok(());
    };
    let every_ms = hushwire_service::parse_timer(every).map_err(user_error)?;
    if every_ms < 3_600_000 {
        return Err(user_error("--every must be at least 1h"));
    }
    if keep == 0 {
        return Err(user_error("--keep must be at least 1"));
    }
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let target = target.canonicalize()?;
    let (key, shown) = match key_from_env()? {
        Some(k) => (k, false),
        None => (RecoveryKey::generate(), true),
    };
    let display = key.display();
    client.set_backup_schedule(Some(BackupSchedule {
        dir: target.clone(),
        every_ms,
        keep,
        media,
        key,
        last_ms: None,
    }))?;
    if shown {
        print_line(&format!("recovery-key: {display}"))?;
    }
    print_line(&format!(
        "backup-schedule: {} every {}, keep {}; runs while `hushwire daemon` or `hushwire app` runs",
        target.display(),
        hushwire_service::timer_text(every_ms),
        keep
    ))?;
    Ok(())
}
