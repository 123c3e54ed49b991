//! Reports ("block and report"): a user discloses some of their own decrypted messages to
//! the operator. `POST {base}/v1/reports` stores them ([`hushwire_store::Controls`]);
//! the operator lists and closes them with `hushwire admin reports`. The disclosed text
//! is never logged: only that a report was filed, by whom and about whom.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, Uri};
use hushwire_proto::identity::validate_handle;
use hushwire_proto::limits::{
    MAX_REPORT_MESSAGES, MAX_REPORT_REASON_BYTES, MAX_REPORT_TEXT_BYTES, MESSAGE_ID_BYTES,
};
use hushwire_proto::wire;
use hushwire_store::NewReport;
use prost::Message;

use crate::api::{Proto, decode, signed};
use crate::error::ApiError;
use crate::{Server, now_ms};

/// Checks a report's bounds.
fn check(req: &wire::ReportRequest) -> Result<(), ApiError> {
    if req.reason.len() > MAX_REPORT_REASON_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the reason is over {MAX_REPORT_REASON_BYTES} bytes"
        )));
    }
    if req.messages.len() > MAX_REPORT_MESSAGES {
        return Err(ApiError::BadRequest(format!(
            "a report carries at most {MAX_REPORT_MESSAGES} messages"
        )));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if m.message_id.len() != MESSAGE_ID_BYTES {
            return Err(ApiError::BadRequest(format!(
                "message {i}: the id must be {MESSAGE_ID_BYTES} bytes"
            )));
        }
        if m.text.len() > MAX_REPORT_TEXT_BYTES {
            return Err(ApiError::BadRequest(format!(
                "message {i}: the text is over {MAX_REPORT_TEXT_BYTES} bytes"
            )));
        }
        if m.from.len() > 64 || m.conversation.len() > 1024 {
            return Err(ApiError::BadRequest(format!(
                "message {i}: author or conversation too long"
            )));
        }
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(crate) async fn file_report(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Proto<wire::ReportFiled>, ApiError> {
    let (device, bytes) = signed(&server, &method, &uri, &headers, bytes).await?;
    let shared = &server.shared;
    if !shared
        .signal_limiter
        .check(device.id, std::time::Instant::now())
    {
        return Err(ApiError::RateLimited);
    }
    let req: wire::ReportRequest = decode(&bytes)?;
    validate_handle(&req.handle).map_err(|e| ApiError::InvalidHandle(e.to_string()))?;
    if req.handle == device.addr.handle {
        return Err(ApiError::BadRequest("you cannot report yourself".into()));
    }
    check(&req)?;
    if shared.store.account(&req.handle).await?.is_none() {
        return Err(ApiError::NotFound("unknown account"));
    }
    let evidence = wire::ReportRequest {
        handle: String::new(),
        reason: String::new(),
        messages: req.messages,
    }
    .encode_to_vec();
    let report_id = shared
        .store
        .file_report(NewReport {
            reporter: device.addr.handle.clone(),
            reported: req.handle.clone(),
            reason: req.reason,
            evidence,
            at_ms: now_ms(),
        })
        .await?;
    tracing::info!(report_id, reporter = %device.addr.handle, reported = %req.handle, "report filed");
    Ok(Proto(wire::ReportFiled { report_id }))
}

/// The messages of a stored report (its `evidence`).
pub fn evidence_messages(evidence: &[u8]) -> Vec<wire::ReportedMessage> {
    wire::ReportRequest::decode(evidence)
        .map(|r| r.messages)
        .unwrap_or_default()
}
