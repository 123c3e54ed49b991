//! End-to-end encrypted backups (docs/backup-format.md): writing one from this profile,
//! now or on a schedule, and restoring one on a new install, which becomes a new device
//! of the account and rejoins its conversations.
//!
//! The backup holds the account key but no device key and no MLS state. A restore:
//! 1. imports the file into the empty profile in one transaction (a wrong key or a
//!    damaged file writes nothing; `hushwire_e2e::Profile::import_backup`);
//! 2. makes a device key, certifies it with the restored account key and registers it
//!    (`POST /v1/devices/recover`: no other device is needed), publishes the next
//!    device list and uploads key packages;
//! 3. waits up to `wait` for the account's other devices, if any is alive, to add it to
//!    the conversations ([`Client::add_missing_own_devices`] runs on them);
//! 4. rejoins the rest by itself: group chats by External Commit (the backup holds their
//!    recovery keys), 1:1 conversations by a new group with the peer's devices and all of
//!    this account's listed devices (the peer then sends on that group, which has the
//!    most listed devices).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hushwire_e2e::{
    BackupOptions, BackupScheduleRow, DeviceListEdit, Event, Identity, RestoreSummary,
};
use hushwire_proto::identity::device_cert_payload;
use hushwire_proto::wire::{self, ErrorCode};
use zeroize::Zeroizing;

use super::{Client, upload_initial_key_packages};
use crate::api::unix_ms;
use crate::register::INITIAL_KEY_PACKAGES;
use crate::{ApiClient, ApiRequest, ClientError, ClientOptions, Endpoint};

pub use hushwire_backup::{BackupReader, RecoveryKey};

/// Bound for one network step of a restore.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// File names of scheduled backups: `hushwire-backup-<unix ms>.hwbackup`.
const SCHEDULED_PREFIX: &str = "hushwire-backup-";
const SCHEDULED_SUFFIX: &str = ".hwbackup";

/// What a backup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// The file's size.
    pub bytes: u64,
    /// Conversations.
    pub conversations: u64,
    /// Messages.
    pub messages: u64,
    /// Pinned contacts.
    pub contacts: u64,
    /// Media files.
    pub media_files: u64,
}

/// Scheduled backups (run by `hushwire-service`, hence the daemon and the app).
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// Where the files go.
    pub dir: PathBuf,
    /// Interval.
    pub every_ms: u64,
    /// How many files to keep.
    pub keep: u32,
    /// Include media files.
    pub media: bool,
    /// The key every scheduled backup is written under.
    pub key: RecoveryKey,
    /// When the last one was written.
    pub last_ms: Option<u64>,
}

/// What [`restore_backup`] did.
#[derive(Debug)]
pub struct Restored {
    /// This device's new identity.
    pub identity: Identity,
    /// What the backup held.
    pub summary: RestoreSummary,
    /// Conversations the account's other devices added this device to.
    pub joined_by_devices: usize,
    /// Group chats rejoined by External Commit.
    pub rejoined: usize,
    /// 1:1 conversations started again with the peer.
    pub restarted: usize,
    /// Conversations not rejoined, with the reason.
    pub failed: Vec<String>,
}

impl Client {
    /// Writes an encrypted backup of this profile to `path` under `key`: to a temporary
    /// file beside it, synced, then renamed, so `path` is either the old file or the
    /// whole new one.
    pub fn write_backup(
        &self,
        path: &Path,
        key: &RecoveryKey,
        media: bool,
    ) -> Result<BackupStats, ClientError> {
        let name = path.file_name().ok_or_else(|| {
            ClientError::Protocol(format!("{} is not a file name", path.display()))
        })?;
        let mut temp_name = name.to_os_string();
        temp_name.push(".partial");
        let temp = path.with_file_name(temp_name);
        let result = (|| -> Result<RestoreSummary, ClientError> {
            let file = File::create(&temp).map_err(io("creating the backup file", &temp))?;
            let (out, summary) = self.profile.write_backup(
                BufWriter::new(file),
                key,
                &BackupOptions {
                    include_media: media,
                    now_ms: unix_ms(),
                },
            )?;
            let file = out
                .into_inner()
                .map_err(|e| io("writing the backup file", &temp)(e.into_error()))?;
            file.sync_all()
                .map_err(io("writing the backup file", &temp))?;
            std::fs::rename(&temp, path).map_err(io("renaming the backup file", path))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(d) = File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(summary)
        })();
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        Ok(BackupStats {
            bytes: std::fs::metadata(path)
                .map_err(io("reading the backup file", path))?
                .len(),
            conversations: summary.conversations,
            messages: summary.messages,
            contacts: summary.contacts,
            media_files: summary.media_files,
        })
    }

    /// The backup schedule, if one is set.
    pub fn backup_schedule(&self) -> Result<Option<BackupSchedule>, ClientError> {
        Ok(self.profile.backup_schedule()?.map(|row| BackupSchedule {
            dir: row.dir,
            every_ms: row.every_ms,
            keep: row.keep,
            media: row.media,
            key: RecoveryKey::from_bytes(*row.recovery_key),
            last_ms: row.last_ms,
        }))
    }

    /// Sets, or with `None` stops, scheduled backups.
    pub fn set_backup_schedule(
        &mut self,
        schedule: Option<BackupSchedule>,
    ) -> Result<(), ClientError> {
        let row = schedule.map(|s| BackupScheduleRow {
            dir: s.dir,
            every_ms: s.every_ms,
            keep: s.keep,
            media: s.media,
            recovery_key: Zeroizing::new(*s.key.expose()),
            last_ms: s.last_ms,
        });
        Ok(self.profile.set_backup_schedule(row.as_ref())?)
    }

    /// Writes the scheduled backup if one is due at `now_ms` (into the schedule's
    /// directory, deleting the oldest files past `keep`). Returns the new file.
    pub fn run_due_backup(&mut self, now_ms: u64) -> Result<Option<PathBuf>, ClientError> {
        let Some(s) = self.backup_schedule()? else {
            return Ok(None);
        };
        if s.last_ms
            .is_some_and(|last| now_ms < last.saturating_add(s.every_ms))
        {
            return Ok(None);
        }
        std::fs::create_dir_all(&s.dir).map_err(io("creating the backup directory", &s.dir))?;
        let path = s
            .dir
            .join(format!("{SCHEDULED_PREFIX}{now_ms:015}{SCHEDULED_SUFFIX}"));
        let stats = self.write_backup(&path, &s.key, s.media)?;
        self.profile.backup_done(now_ms)?;
        tracing::info!(bytes = stats.bytes, "scheduled backup written");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&s.dir)
            .map_err(io("listing the backup directory", &s.dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(SCHEDULED_PREFIX) && n.ends_with(SCHEDULED_SUFFIX)
                })
            })
            .collect();
        files.sort();
        let keep = usize::try_from(s.keep).unwrap_or(usize::MAX).max(1);
        if files.len() > keep {
            for old in &files[..files.len() - keep] {
                if let Err(e) = std::fs::remove_file(old) {
                    tracing::warn!(error = %e, "an old scheduled backup could not be deleted");
                }
            }
        }
        Ok(Some(path))
    }
}

/// Restores the backup `file` (under `key`) into the empty profile in `profile_dir`:
/// see the module documentation. `wait` is how long the account's other devices get to
/// add this one before it rejoins the rest by itself. A restore interrupted after the
/// import (say, the server was unreachable) resumes when run again with the same file.
pub async fn restore_backup(
    profile_dir: &Path,
    file: &Path,
    key: &RecoveryKey,
    name: &str,
    options: ClientOptions,
    wait: Duration,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Restored, ClientError> {
    hushwire_e2e::validate_device_name(name)?;
    let mut profile = crate::open_profile(profile_dir, &options.unlock)?;
    if let Some(identity) = profile.identity() {
        return Err(ClientError::AlreadyRegistered(identity.handle.clone()));
    }
    // The key is checked (and the header read) before anything is written.
    let input = File::open(file).map_err(io("opening the backup", file))?;
    let reader =
        BackupReader::new(BufReader::new(input), key).map_err(hushwire_e2e::E2eError::from)?;
    let summary = match profile.restored_account()? {
        // An earlier run imported it and stopped before registering: resume.
        Some(_) => {
            let conversations = profile.conversations()?;
            RestoreSummary {
                conversations: conversations.len() as u64,
                messages: conversations.iter().map(|c| c.message_count).sum(),
                ..RestoreSummary::default()
            }
        }
        None => profile.import_backup(reader, unix_ms())?,
    };
    let account = profile
        .restored_account()?
        .ok_or_else(|| ClientError::Protocol("the backup holds no account".into()))?;
    let server_url = account
        .server_url
        .clone()
        .ok_or_else(|| ClientError::Protocol("the backup names no server".into()))?;
    let endpoint = Endpoint::new(&server_url, account.pin.as_deref())?
        .with_connect_timeout(options.connect_timeout)
        .with_routes(crate::RouteBook::load(profile_dir)?);
    endpoint.probe().await?;
    let api = ApiClient::new(endpoint.clone())?;

    // A new device of the account, certified by the restored account key.
    let now = unix_ms();
    let device_key = profile.begin_link(now)?;
    let handle = account.secrets.handle.clone();
    let signature =
        account
            .secrets
            .account_secret
            .sign(&device_cert_payload(&handle, &device_key, now));
    let certificate = wire::DeviceCertificate {
        device_key: device_key.to_vec().into(),
        created_at_ms: now,
        signature: signature.to_vec().into(),
    };
    let request = wire::RecoverDevice {
        handle: handle.clone(),
        certificate: Some(certificate.clone()),
    };
    let added: wire::DeviceAdded = match api.call(ApiRequest::recover_device(&request)).await {
        Ok(a) => a,
        Err(ClientError::Api {
            code: ErrorCode::Unauthenticated,
            ..
        }) => {
            return Err(ClientError::Protocol(format!(
                "the server does not hold {handle} with this backup's account key \
                 (the account was reset or is on another server)"
            )));
        }
        Err(e) => return Err(e),
    };
    profile.complete_link(
        &account.secrets,
        added.device_id,
        &certificate,
        &endpoint.base_url(),
        endpoint.pin().as_deref(),
    )?;
    drop(account);
    profile.finish_restore()?;
    let mut client = Client::from_profile(profile, options)?;
    client.set_routes(endpoint.routes().clone())?;
    client.set_media_dir(profile_dir.join("media"));
    upload_initial_key_packages(&mut client, INITIAL_KEY_PACKAGES).await?;
    client
        .publish_device_list(DeviceListEdit::Add {
            device_id: added.device_id,
            device_key,
            name: name.to_string(),
            linked_at_ms: now,
        })
        .await?;
    client.emit(on_event);

    // The account's other devices, if alive, add this one; wait for them.
    let restored: Vec<String> = client
        .profile
        .restored_rejoins()?
        .into_iter()
        .map(|r| r.conversation)
        .collect();
    let deadline = Instant::now() + wait;
    let mut joined_by_devices = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        client
            .receive(left.min(Duration::from_secs(2)), STEP_TIMEOUT, on_event)
            .await?;
        let unjoined = unjoined_of(&client, &restored)?;
        for c in &restored {
            if !unjoined.iter().any(|u| u.conversation == *c)
                && client
                    .profile
                    .restored_rejoins()?
                    .iter()
                    .any(|r| r.conversation == *c)
            {
                client.profile.mark_rejoined(c)?;
                joined_by_devices += 1;
            }
        }
        if unjoined.is_empty() || Instant::now() >= deadline {
            break;
        }
    }

    // The rest by itself.
    let mut rejoined = 0;
    let mut restarted = 0;
    let mut failed = Vec::new();
    let suites: Vec<(String, hushwire_e2e::Suite)> = client
        .profile
        .conversations()?
        .into_iter()
        .map(|c| (c.name, c.suite))
        .collect();
    for u in unjoined_of(&client, &restored)? {
        let outcome = if u.group_chat {
            client
                .profile
                .group_rejoin(&u.conversation, unix_ms())
                .map_err(ClientError::from)
        } else {
            let suite = suites
                .iter()
                .find(|(n, _)| *n == u.conversation)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            client.start_conversation(&u.conversation, suite).await
        };
        match outcome {
            Ok(()) => {
                if u.group_chat {
                    rejoined += 1;
                } else {
                    restarted += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a restored conversation could not be rejoined");
                failed.push(format!("{} ({e})", u.conversation));
            }
        }
    }
    client.flush_outbox(STEP_TIMEOUT, on_event).await?;
    for c in &restored {
        if !unjoined_of(&client, std::slice::from_ref(c))?.is_empty() {
            continue;
        }
        client.profile.mark_rejoined(c)?;
    }
    // Whatever arrived meanwhile, and the acknowledgements.
    client
        .receive(Duration::ZERO, STEP_TIMEOUT, on_event)
        .await?;
    let identity = client.identity()?.clone();
    client.disconnect().await;
    Ok(Restored {
        identity,
        summary,
        joined_by_devices,
        rejoined,
        restarted,
        failed,
    })
}

/// A local file error about `path`.
fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClientError {
    let context = format!("{what} {}", path.display());
    move |source| ClientError::LocalIo { context, source }
}

/// The conversations among `names` that have no group on this device yet.
fn unjoined_of(
    client: &Client,
    names: &[String],
) -> Result<Vec<hushwire_e2e::Unjoined>, ClientError> {
    Ok(client
        .profile
        .unjoined_conversations()?
        .into_iter()
        .filter(|u| names.contains(&u.conversation))
        .collect())
}
