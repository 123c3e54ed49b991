//! The conversation commands every front end offers — reply, react, edit, delete,
//! disappearing timer, message requests, blocking, settings, view-once — each one store
//! change plus a flush, written once here so the terminal app, the web app and the
//! daemon cannot drift apart.

use std::path::PathBuf;
use std::time::Duration;

use hushwire_client::{ClientError, Event};
use hushwire_e2e::{DeleteScope, PresenceShare};

use crate::{NETWORK_TIMEOUT, Service, stopped};

/// One user action on the profile, sent with [`Service::command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Reply to message `id` with `text` (quotes it).
    Reply {
        /// The quoted message.
        id: String,
        /// The reply.
        text: String,
    },
    /// React to message `id`; an empty `emoji` takes the reaction back.
    React {
        /// The message.
        id: String,
        /// One emoji, or empty.
        emoji: String,
    },
    /// Replace the text of an own message.
    Edit {
        /// The message.
        id: String,
        /// Its new text.
        text: String,
    },
    /// Delete a message: an own one for everyone, someone else's on this device.
    Delete {
        /// The message.
        id: String,
    },
    /// Set a conversation's disappearing-messages timer (0: off).
    Timer {
        /// A handle or `#GROUP`.
        conversation: String,
        /// Milliseconds; 0 turns it off.
        timer_ms: u64,
    },
    /// Mark everything in a conversation read (sends read receipts unless off).
    MarkRead {
        /// A handle or `#GROUP`.
        conversation: String,
    },
    /// Accept a message request from `handle`.
    Accept {
        /// The sender.
        handle: String,
    },
    /// Block `handle`: their messages are dropped and the server stops queueing them.
    Block {
        /// The account.
        handle: String,
    },
    /// Take a block back.
    Unblock {
        /// The account.
        handle: String,
    },
    /// Turn read receipts on or off.
    ReadReceipts(bool),
    /// Who sees this account's presence and last seen.
    Presence(PresenceShare),
}

/// What a [`Command`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The new message's id (a reply).
    pub id: Option<String>,
    /// For a delete: for everyone, unsent, or on this device only.
    pub scope: Option<DeleteScope>,
    /// Messages or operations the flush reported as failed, with their reasons.
    pub failures: Vec<String>,
    /// Set when the flush could not reach the server: the change is stored and queued,
    /// and goes out with the next flush.
    pub pending: Option<String>,
}

/// A view-once message opened with [`Service::open_view_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewOnce {
    /// Who sent it.
    pub from: String,
    /// Its text (a caption, or the text of a view-once text message).
    pub text: String,
    /// The decrypted file, when it carried one. The caller shows it and then deletes it.
    pub path: Option<PathBuf>,
}

/// `5s`, `30m`, `1h`, `7d`, `2w`, `off` → milliseconds (0: off); checked against the
/// allowed range (5 s to 90 days).
pub fn parse_timer(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "off" || t == "0" {
        return Ok(0);
    }
    let bad = || format!("not a timer: {text:?} (e.g. 5s, 30m, 1h, 7d, 2w or off)");
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: u64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(per).ok_or_else(bad)?;
    hushwire_e2e::validate_timer(ms).map_err(|e| e.to_string())?;
    Ok(ms)
}

/// A timer as a user writes it: `off`, `5s`, `1h`, `7d`, `2w`.
pub fn timer_text(ms: u64) -> String {
    if ms == 0 {
        return "off".into();
    }
    // Weeks only past one ("7d" stays as the user wrote it; "14d" prints as "2w").
    if ms > 7 * 86_400_000 && ms.is_multiple_of(7 * 86_400_000) {
        return format!("{}w", ms / (7 * 86_400_000));
    }
    for (per, unit) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m")] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Service {
    /// Applies `command` to the profile and sends what it queued. Store errors (an
    /// unknown message, not the author, not an admin, ...) come back as errors and
    /// change nothing; an unreachable server does not fail it (see [`Outcome::pending`]).
    pub async fn command(&self, command: Command) -> Result<Outcome, ClientError> {
        let emitter = self.emitter();
        self.with(move |c| {
            Box::pin(async move {
                let now = unix_ms();
                let mut outcome = Outcome::default();
                let p = c.profile_mut();
                let queued = match command {
                    Command::Reply { id, text } => {
                        outcome.id = Some(p.queue_reply(&id, &text, now)?);
                        true
                    }
                    Command::React { id, emoji } => {
                        p.react(&id, &emoji, now)?;
                        true
                    }
                    Command::Edit { id, text } => {
                        p.edit(&id, &text, now)?;
                        true
                    }
                    Command::Delete { id } => {
                        let scope = p.delete_message(&id, now)?;
                        let queued = scope == DeleteScope::Everyone;
                        outcome.scope = Some(scope);
                        queued
                    }
                    Command::Timer {
                        conversation,
                        timer_ms,
                    } => {
                        p.set_timer(&conversation, timer_ms, now)?;
                        true
                    }
                    Command::MarkRead { conversation } => p.mark_read(&conversation, now)? > 0,
                    Command::Accept { handle } => {
                        p.accept(&handle, now)?;
                        true
                    }
                    Command::Block { handle } => {
                        p.block(&handle, now)?;
                        true
                    }
                    Command::Unblock { handle } => {
                        p.unblock(&handle)?;
                        true
                    }
                    Command::ReadReceipts(on) => {
                        p.set_read_receipts(on)?;
                        false
                    }
                    Command::Presence(share) => {
                        p.set_presence_share(share)?;
                        false
                    }
                };
                if queued {
                    let failures = &mut outcome.failures;
                    let result = c
                        .flush_outbox(NETWORK_TIMEOUT, &mut |e| {
                            if let Event::GroupOperationFailed { reason, .. }
                            | Event::SendFailed { reason, .. } = &e
                            {
                                failures.push(reason.clone());
                            }
                            emitter.emit(e);
                        })
                        .await;
                    outcome.pending = result.err().map(|e| e.to_string());
                }
                Ok(outcome)
            })
        })
        .await
        .map_err(stopped)?
    }

    /// The safety number with `handle`, from the account key fetched now (a key that
    /// changed since it was pinned is refused with [`ClientError::E2e`] until
    /// [`Service::trust`]). With `mark`, the contact is first marked verified with that
    /// key: the user compared the digits with the other person.
    pub async fn safety_number(
        &self,
        handle: &str,
        mark: bool,
    ) -> Result<hushwire_e2e::SafetyNumber, ClientError> {
        hushwire_proto::identity::validate_handle(handle)?;
        let handle = handle.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let account = tokio::time::timeout(NETWORK_TIMEOUT, c.fetch_account(&handle))
                    .await
                    .map_err(|_| ClientError::Timeout("fetching the account".into()))??;
                let p = c.profile_mut();
                p.learn_account(&account)?;
                if mark {
                    p.mark_verified(&handle, unix_ms())?;
                }
                Ok(p.safety_number(&handle)?)
            })
        })
        .await
        .map_err(stopped)?
    }

    /// Accepts `handle`'s changed account key (after [`Event::IdentityChanged`]): the
    /// key the server serves now is pinned, and sending to `handle` works again. The
    /// user should compare safety numbers first.
    pub async fn trust(&self, handle: &str) -> Result<(), ClientError> {
        hushwire_proto::identity::validate_handle(handle)?;
        let handle = handle.to_string();
        self.with(move |c| {
            Box::pin(async move {
                tokio::time::timeout(NETWORK_TIMEOUT, c.trust(&handle))
                    .await
                    .map_err(|_| ClientError::Timeout("fetching the account".into()))?
            })
        })
        .await
        .map_err(stopped)?
    }

    /// Opens received view-once message `id` once: its file (if any) is downloaded and
    /// decrypted into `dir`, the message is erased from this device and a viewed
    /// receipt goes out. The caller shows the file and deletes it afterwards.
    pub async fn open_view_once(
        &self,
        id: &str,
        dir: PathBuf,
        timeout: Duration,
    ) -> Result<ViewOnce, ClientError> {
        let id = id.to_string();
        let emitter = self.emitter();
        self.with(move |c| {
            Box::pin(async move {
                std::fs::create_dir_all(&dir).map_err(|source| ClientError::LocalIo {
                    context: format!("cannot create {}", dir.display()),
                    source,
                })?;
                let (message, path) = tokio::time::timeout(timeout, c.open_view_once(&id, &dir))
                    .await
                    .map_err(|_| ClientError::Timeout("opening a view-once message".into()))??;
                // The viewed receipt (best effort: it stays queued otherwise).
                let _ = c
                    .flush_outbox(NETWORK_TIMEOUT, &mut |e| emitter.emit(e))
                    .await;
                Ok(ViewOnce {
                    from: message.from,
                    text: message.text,
                    path,
                })
            })
        })
        .await
        .map_err(stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_parse_and_print_back() {
        for t in ["5s", "30m", "1h", "7d", "2w", "off", "90s"] {
            let ms = parse_timer(t).unwrap();
            assert_eq!(parse_timer(&timer_text(ms)).unwrap(), ms, "{t}");
        }
        assert_eq!(parse_timer("1h").unwrap(), 3_600_000);
        assert_eq!(parse_timer("OFF").unwrap(), 0);
        assert!(parse_timer("1y").is_err());
        assert!(parse_timer("h").is_err());
        assert!(parse_timer("1s").is_err(), "below the 5 s minimum");
        assert!(parse_timer("91d").is_err(), "above the 90 day maximum");
    }
}
