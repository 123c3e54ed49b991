//! `hushwire verify HANDLE [--mark] [--json]`: the safety number with a contact.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;

use serde_json::json;

use crate::commands::{NETWORK_TIMEOUT, open_client};
use crate::output::print_line;

pub(crate) async fn run(dir: &Path, handle: &str, mark: bool, json: bool) -> anyhow::Result<()> {
    hushwire_proto::identity::validate_handle(handle)
        .map_err(|e| crate::user_error(format!("handle: {e}")))?;
    let mut client = open_client(dir)?;
    // The contact's current account (its key is pinned on first use; a changed key is
    // refused with exit code 4).
    let account = tokio::time::timeout(NETWORK_TIMEOUT, client.fetch_account(handle)).await;
    client.disconnect().await;
    let account = account
        .map_err(|_| hushwire_client::ClientError::Timeout("fetching the account".into()))??;
    let profile = client.profile_mut();
    profile.learn_account(&account)?;
    if mark {
        profile.mark_verified(handle, hushwire_client::api::unix_ms())?;
    }
    let number = profile.safety_number(handle)?;
    if json {
        let hex: String = number
            .qr_payload
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        return print_line(
            &json!({
                "handle": handle,
                "safety_number": number.digits,
                "qr_payload": hex,
                "verified": number.verified,
            })
            .to_string(),
        );
    }
    let mut out = std::io::stdout().lock();
    let groups: Vec<&str> = number.digits.split(' ').collect();
    writeln!(out, "safety number with {handle}:")?;
    for row in groups.chunks(4) {
        writeln!(out, "  {}", row.join(" "))?;
    }
    if out.is_terminal()
        && let Ok(code) = qrcode::QrCode::new(&number.qr_payload)
    {
        let qr = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        writeln!(out, "{qr}")?;
    }
    writeln!(
        out,
        "{}",
        if number.verified {
            "verified"
        } else {
            "not verified: compare these digits with the other person, then run with --mark"
        }
    )?;
    Ok(())
}

/// `hushwire trust HANDLE`.
pub(crate) async fn trust(dir: &Path, handle: &str) -> anyhow::Result<()> {
    hushwire_proto::identity::validate_handle(handle)
        .map_err(|e| crate::user_error(format!("handle: {e}")))?;
    let mut client = open_client(dir)?;
    let result = tokio::time::timeout(NETWORK_TIMEOUT, client.trust(handle)).await;
    client.disconnect().await;
    result.map_err(|_| hushwire_client::ClientError::Timeout("fetching the account".into()))??;
    print_line(&format!(
        "trusted the current account key of {handle}; safety number: hushwire verify {handle}"
    ))
}
