//! `admin reports`: the operator reads users' reports and closes them.

use std::path::PathBuf;

use anyhow::Context as _;
use hushwire_server::ServerConfig;
use hushwire_server::reports::evidence_messages;
use hushwire_store::Accounts as _;
use serde_json::json;

use crate::output::{human_time, print_line, rfc3339};
use crate::user_error;

/// Reports listed per call at most.
const PAGE: usize = 1000;

pub(crate) async fn reports(
    data: Option<PathBuf>,
    json: bool,
    close: Option<u64>,
) -> anyhow::Result<()> {
    let config = ServerConfig {
        data_dir: match data {
            Some(d) => d,
            None => crate::serve::default_data_dir()?,
        },
        ..ServerConfig::default()
    };
    let store = hushwire_server::open_sqlite(&config)
        .await
        .context("cannot open the server database")?;
    let result = run(&*store, json, close).await;
    store.shutdown().await;
    result
}

/// A 16-byte message id as the client shows it (8-4-4-4-12 lowercase hex).
fn uuid_text(id: &[u8]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

async fn run(
    store: &dyn hushwire_store::Store,
    json: bool,
    close: Option<u64>,
) -> anyhow::Result<()> {
    if let Some(id) = close {
        if !store.close_report(id).await? {
            return Err(user_error(format!("no open report {id}")));
        }
        eprintln!("report {id} closed (deleted)");
        return Ok(());
    }
    let mut after = 0;
    loop {
        let page = store.reports(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.id;
        let done = page.len() < PAGE;
        for r in page {
            let messages = evidence_messages(&r.report.evidence);
            if json {
                let messages: Vec<_> = messages
                    .iter()
                    .map(|m| {
                        json!({
                            "id": uuid_text(&m.message_id),
                            "from": m.from,
                            "conversation": m.conversation,
                            "sent_at": rfc3339(m.sent_at_ms),
                            "text": m.text,
                        })
                    })
                    .collect();
                print_line(
                    &json!({
                        "id": r.id,
                        "reporter": r.report.reporter,
                        "reported": r.report.reported,
                        "reason": r.report.reason,
                        "filed_at": rfc3339(r.report.at_ms),
                        "messages": messages,
                    })
                    .to_string(),
                )?;
            } else {
                print_line(&format!(
                    "report {} [{}] {} reports {}: {}",
                    r.id,
                    human_time(r.report.at_ms),
                    r.report.reporter,
                    r.report.reported,
                    if r.report.reason.is_empty() {
                        "(no reason given)"
                    } else {
                        &r.report.reason
                    }
                ))?;
                for m in &messages {
                    print_line(&format!(
                        "    [{}] {} in {}: {}",
                        human_time(m.sent_at_ms),
                        m.from,
                        m.conversation,
                        m.text
                    ))?;
                }
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// `admin reset-account HANDLE`: releases a handle whose owner lost every device.
pub(crate) async fn reset_account(
    data: Option<PathBuf>,
    store: Option<String>,
    handle: &str,
) -> anyhow::Result<()> {
    hushwire_proto::identity::validate_handle(handle)
        .map_err(|e| user_error(format!("handle: {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let found = match store {
        Some(url) => {
            let config = ServerConfig {
                store: Some(hushwire_server::StoreUrl(url)),
                ..ServerConfig::default()
            };
            if !config.store.as_ref().is_some_and(|u| u.is_postgres()) {
                return Err(user_error("--store must be a postgres:// URL"));
            }
            let store = hushwire_server::open_store(&config)
                .await
                .context("cannot open the store")?;
            store.reset_account(handle, now).await?
        }
        None => {
            let config = ServerConfig {
                data_dir: match data {
                    Some(d) => d,
                    None => crate::serve::default_data_dir()?,
                },
                ..ServerConfig::default()
            };
            let store = hushwire_server::open_sqlite(&config)
                .await
                .context("cannot open the server database")?;
            let found = store.reset_account(handle, now).await;
            store.shutdown().await;
            found?
        }
    };
    if !found {
        return Err(user_error(format!("no account {handle}")));
    }
    print_line(&format!(
        "{handle} released: its devices are revoked and the handle can be registered again; \
         the key directory publishes the release at its next epoch"
    ))
}
