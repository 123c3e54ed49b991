//! Files: `send --file`, attachments in `receive` and `history` output, progress bars.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;

use base64::Engine as _;
use hushwire_client::{
    AttachmentInfo, Client, ClientError, Direction, MessageState, ProgressFn, SendFileOptions,
    StoredMessage, Transfer,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::commands::{NETWORK_TIMEOUT, open_client};
use crate::output::{human_time, message_json, print_line};
use crate::user_error;

/// Progress bars on stderr, one per transfer, when stderr is a terminal.
pub(crate) fn progress_bars() -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{prefix} {wide_msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    Some(Box::new(move |t: &Transfer| {
        if t.finished {
            if let Some(bar) = bars.remove(&t.id) {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = bars.entry(t.id.clone()).or_insert_with(|| {
            let bar = ProgressBar::new(t.total).with_style(style.clone());
            bar.set_prefix(match t.direction {
                Direction::Upload => "sending",
                Direction::Download => "receiving",
            });
            bar.set_message(hushwire_media::sanitize_file_name(&t.name));
            bar
        });
        bar.set_length(t.total);
        bar.set_position(t.done);
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `"attachment"` object: `path` (once saved), `name` (sanitized), `mime`, `size`,
/// `sha256` (of the plaintext), `voice`, image `width`/`height`/`thumbnail` (base64
/// JPEG); `error` instead of `path` when it could not be downloaded.
pub(crate) fn attachment_value(info: &AttachmentInfo) -> Value {
    let mut v = json!({
        "name": hushwire_media::sanitize_file_name(&info.file_name),
        "mime": info.mime,
        "size": info.size,
        "sha256": hex(&info.plaintext_sha256),
        "voice": info.voice,
    });
    if let Some(obj) = v.as_object_mut() {
        match (&info.path, &info.error) {
            (_, Some(error)) => {
                obj.insert("error".into(), json!(error));
            }
            (Some(path), None) => {
                obj.insert("path".into(), json!(path.display().to_string()));
            }
            (None, None) => {
                obj.insert("pending".into(), json!(true));
            }
        }
        if info.width > 0 && info.height > 0 {
            obj.insert("width".into(), json!(info.width));
            obj.insert("height".into(), json!(info.height));
        }
        if !info.thumbnail.is_empty() {
            obj.insert(
                "thumbnail".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&info.thumbnail)),
            );
        }
    }
    v
}

/// A message with its attachment, as JSON (the message's fields plus `"attachment"`).
pub(crate) fn attachment_message_json(m: &StoredMessage, info: &AttachmentInfo) -> String {
    let mut v: Value = serde_json::from_str(&message_json(m)).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        let mut a = attachment_value(info);
        if m.view_once
            && let Some(a) = a.as_object_mut()
        {
            // Not downloaded: it is fetched when opened (`view`).
            a.remove("pending");
        }
        obj.insert("attachment".into(), a);
    }
    v.to_string()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `[2026-11-27 10:00:00] bob: [voice note.ogg, 12.0 KiB, audio/ogg] caption -> PATH`
pub(crate) fn attachment_line(m: &StoredMessage, info: &AttachmentInfo) -> String {
    let kind = if info.voice { "voice note " } else { "" };
    let mut line = format!(
        "[{}] {}: [{kind}{}, {}, {}]",
        human_time(m.sent_at_ms),
        m.from,
        hushwire_media::sanitize_file_name(&info.file_name),
        human_size(info.size),
        info.mime
    );
    if !m.text.is_empty() {
        line.push(' ');
        line.push_str(&m.text);
    }
    match (&info.path, &info.error) {
        (_, Some(e)) => line.push_str(&format!("  (not saved: {e})")),
        (Some(p), None) => line.push_str(&format!(" -> {}", p.display())),
        (None, None) if m.view_once => {
            line.push_str(&format!("  (view once: hushwire view {})", m.id));
        }
        (None, None) => line.push_str("  (not downloaded)"),
    }
    line
}

/// Continues uploads an earlier command left unfinished; warns about those that fail.
pub(crate) async fn resume_uploads(client: &mut Client) -> anyhow::Result<()> {
    for (id, result) in client.resume_uploads().await? {
        match result {
            Ok(_) => tracing::info!(%id, "an unfinished upload completed"),
            Err(e @ ClientError::File { .. }) => {
                eprintln!("warning: an unfinished upload was dropped: {e}");
            }
            Err(e) => {
                eprintln!("warning: an unfinished upload is still pending: {e}");
            }
        }
    }
    Ok(())
}

/// `hushwire send HANDLE --file PATH [--caption TEXT] [--voice]`.
pub(crate) async fn send_file(
    dir: &Path,
    peer: &str,
    file: &Path,
    caption: String,
    voice: bool,
    view_once: bool,
    suite: Option<hushwire_e2e::Suite>,
) -> anyhow::Result<()> {
    let mut client = open_client(dir)?;
    let group = hushwire_e2e::group::is_group_name(peer);
    if group {
        if !client.has_conversation(peer)? {
            return Err(user_error(format!("no group {peer}")));
        }
    } else {
        hushwire_proto::identity::validate_handle(peer).map_err(ClientError::from)?;
    }
    if peer == client.identity()?.handle {
        return Err(user_error("you cannot send a file to yourself"));
    }
    if !group && !client.has_conversation(peer)? {
        // A first file to a handle: check it exists before uploading anything.
        client.fetch_account(peer).await?;
    }
    client.set_progress(progress_bars());
    client.set_defer_deliveries(true);
    resume_uploads(&mut client).await?;
    // A suite chosen for this send applies only if it starts the conversation.
    let restore = match suite {
        Some(s) if !client.has_conversation(peer)? => {
            let previous = client.profile().default_suite()?;
            client.profile_mut().set_default_suite(s)?;
            Some(previous)
        }
        _ => None,
    };
    let options = SendFileOptions {
        caption,
        voice,
        file_name: None,
        view_once,
    };
    let sent = client.send_file(peer, file, &options).await;
    if let Some(previous) = restore {
        client.profile_mut().set_default_suite(previous)?;
    }
    let id = match sent {
        Ok(id) => id,
        Err(e) if e.is_transient() => {
            let _ = client.close().await;
            eprintln!(
                "warning: the upload of {} was interrupted: {e}\n\
                 it continues with the next `hushwire send` or `hushwire sync`",
                file.display()
            );
            return Err(e.into());
        }
        Err(ClientError::E2e(hushwire_e2e::E2eError::Protocol(msg))) => {
            return Err(user_error(msg));
        }
        Err(e) => return Err(e.into()),
    };
    let flushed = client.flush_outbox(NETWORK_TIMEOUT, &mut |_| {}).await;
    let pending = client.profile().is_outbox_item_pending(&id)?;
    let state = client
        .profile()
        .timeline(peer)?
        .into_iter()
        .find_map(|item| match item {
            hushwire_e2e::TimelineItem::Attachment(m, _) if m.id == id => Some(m.state),
            _ => None,
        });
    let _ = client.close().await;
    print_line(&id)?;
    match flushed {
        Err(e) if pending => {
            eprintln!(
                "warning: message {id} is uploaded and queued but not sent: {e}\n\
                 it will be sent by the next `hushwire send` or `hushwire sync`"
            );
            Err(e.into())
        }
        _ if pending => Err(anyhow::anyhow!(
            "message {id} is still queued; run `hushwire sync` to retry"
        )),
        _ if state == Some(MessageState::Failed) => {
            Err(anyhow::anyhow!("the server rejected message {id}"))
        }
        _ => Ok(()),
    }
}
