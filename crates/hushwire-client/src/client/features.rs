//! Conversation features in the sync engine: the requests to the server that are not
//! messages (block, retract, blob deletion), ephemeral signals (typing, presence) both
//! ways, and the delivered/read receipts the profile queues while receiving.
//!
//! The profile decides everything (`hushwire_e2e::Profile`, its `features` module); this
//! module only moves frames:
//! - requests queued by the profile go out before the outbox, each answered by `done`
//!   (a refused one is dropped with a warning, a failed one retried);
//! - an ephemeral signal is processed only once the mailbox is drained on this
//!   connection, and never while deliveries are deferred, so it never overtakes the
//!   stored messages sent before it;
//! - a contact who asks for our presence and may see it is answered at once.

use std::time::Duration;

use hushwire_e2e::{E2eError, EphemeralOut, PresenceInfo, ServerRequest};
use hushwire_proto::limits::MAX_REPORT_MESSAGES;
use hushwire_proto::wire::{self, ClientFrame, ErrorCode, client_frame};
use tokio::time::Instant;

use super::{Client, Incoming};
use crate::api::unix_ms;
use crate::{ApiRequest, ClientError};

/// How long [`Client::request_presence`] waits for an answer by default.
pub const PRESENCE_WAIT: Duration = Duration::from_secs(5);

/// The message id `id` (8-4-4-4-12 hex) as bytes.
fn id_bytes(id: &str) -> Vec<u8> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl Client {
    /// Block and report: sends the operator a report about `handle` with the last
    /// `messages` (at most [`MAX_REPORT_MESSAGES`]) messages `handle` sent in your 1:1
    /// chat — the only plaintext that ever reaches the server, disclosed by this explicit
    /// act — then blocks `handle` (queued for the server like `block`). Returns the
    /// report's number.
    pub async fn report(
        &mut self,
        handle: &str,
        reason: &str,
        messages: usize,
    ) -> Result<u64, ClientError> {
        hushwire_proto::identity::validate_handle(handle)?;
        let mut theirs: Vec<_> = if self.has_conversation(handle)? {
            self.profile
                .history(handle)?
                .into_iter()
                .filter(|m| !m.outgoing && m.from == handle && !m.text.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        let keep = messages.min(MAX_REPORT_MESSAGES);
        let theirs = theirs.split_off(theirs.len().saturating_sub(keep));
        let req = wire::ReportRequest {
            handle: handle.to_string(),
            reason: reason.to_string(),
            messages: theirs
                .into_iter()
                .map(|m| wire::ReportedMessage {
                    message_id: id_bytes(&m.id).into(),
                    sent_at_ms: m.sent_at_ms,
                    from: m.from,
                    text: m.text,
                    conversation: m.conversation,
                })
                .collect(),
        };
        let signed = self.signed(ApiRequest::report(&req))?;
        let filed: wire::ReportFiled = self.api.call(signed).await?;
        self.profile.block(handle, unix_ms())?;
        Ok(filed.report_id)
    }
    /// Sends the oldest request the profile queued for the server, if any; `Ok(true)`
    /// when one was handled (sent and answered, or dropped).
    pub(super) async fn server_request_step(
        &mut self,
        deadline: Instant,
    ) -> Result<bool, ClientError> {
        let Some((n, req)) = self.profile.next_server_request()? else {
            return Ok(false);
        };
        let body = match &req {
            ServerRequest::Block { handle, blocked } => client_frame::Body::Block(wire::SetBlock {
                handle: handle.clone(),
                blocked: *blocked,
            }),
            ServerRequest::Retract {
                group_id,
                message_id,
            } => client_frame::Body::Retract(wire::Retract {
                group_id: group_id.clone().into(),
                message_id: message_id.clone().into(),
            }),
            ServerRequest::DeleteBlob { blob_id } => {
                let req = self.signed(ApiRequest::delete_blob(blob_id))?;
                match self.api.call::<wire::Done>(req).await {
                    // The body is empty. A blob the server no longer has is gone too.
                    Ok(_)
                    | Err(ClientError::Api {
                        status: 404 | 403, ..
                    }) => {}
                    Err(e) => return Err(e),
                }
                self.profile.server_request_done(n)?;
                return Ok(true);
            }
        };
        let done = self.request(body, deadline).await?;
        match done.error {
            None => self.profile.server_request_done(n)?,
            Some(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                if matches!(code, ErrorCode::RateLimited | ErrorCode::Internal) {
                    return Err(ClientError::Protocol(format!(
                        "the server could not take a request now ({code:?}): {}",
                        e.message
                    )));
                }
                tracing::warn!(?code, reason = %e.message, "the server refused a request; dropped");
                self.profile.server_request_done(n)?;
            }
        }
        Ok(true)
    }

    /// Sends a frame that the server answers with `done` and waits for that answer,
    /// processing what arrives meanwhile.
    pub(super) async fn request(
        &mut self,
        body: client_frame::Body,
        deadline: Instant,
    ) -> Result<wire::Done, ClientError> {
        self.ensure_connected().await?;
        let request_id = self.send_request(body).await?;
        loop {
            let Some(frame) = self.next_frame(deadline).await? else {
                return Err(ClientError::Timeout(
                    "waiting for the server's answer".into(),
                ));
            };
            if let Incoming::Done(id, done) = self.dispatch(frame).await?
                && id == request_id
            {
                return Ok(done);
            }
        }
    }

    /// Sends a frame with a fresh request id, without waiting.
    async fn send_request(&mut self, body: client_frame::Body) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("not connected".into()))?;
        live.conn
            .send(&ClientFrame {
                request_id,
                body: Some(body),
            })
            .await?;
        Ok(request_id)
    }

    fn ephemeral_frame(out: EphemeralOut) -> client_frame::Body {
        client_frame::Body::Ephemeral(wire::Ephemeral {
            group_id: out.group_id.into(),
            mls_message: out.mls_message.into(),
        })
    }

    /// An ephemeral signal the server relayed: processed once the mailbox is drained
    /// (else dropped: it would overtake stored messages), and a presence question from
    /// someone who may see ours is answered.
    pub(super) async fn on_ephemeral(
        &mut self,
        delivery: wire::EphemeralDelivery,
    ) -> Result<(), ClientError> {
        let ready =
            self.live.as_ref().is_some_and(|l| l.drained && !l.deferred) && !self.defer_deliveries;
        if !ready {
            return Ok(());
        }
        let got = self.profile.receive_ephemeral(&delivery, unix_ms())?;
        self.events.extend(got.events);
        if let Some(conversation) = got.reply_presence_in
            && let Some(out) =
                self.profile
                    .ephemeral_presence(&conversation, true, false, unix_ms())?
        {
            // Fire and forget: its `done` is read (and ignored) with the next frames.
            self.send_request(Self::ephemeral_frame(out)).await?;
        }
        Ok(())
    }

    /// Tells the members of `conversation` that this user started (`true`) or stopped
    /// typing. Nothing is sent in a message request or without a group yet.
    pub async fn send_typing(
        &mut self,
        conversation: &str,
        typing: bool,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        let Some(out) = self
            .profile
            .ephemeral_typing(conversation, typing, unix_ms())?
        else {
            return Ok(false);
        };
        let done = self
            .request(Self::ephemeral_frame(out), Instant::now() + timeout)
            .await?;
        check_done(done)?;
        Ok(true)
    }

    /// Announces this device's presence (online, or offline with the last-seen time) to
    /// every conversation its setting allows; online also asks the others for theirs.
    /// Returns how many conversations it went to.
    pub async fn announce_presence(
        &mut self,
        online: bool,
        timeout: Duration,
    ) -> Result<usize, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        for conversation in self.profile.presence_targets()? {
            let Some(out) =
                self.profile
                    .ephemeral_presence(&conversation, online, online, unix_ms())?
            else {
                continue;
            };
            check_done(self.request(Self::ephemeral_frame(out), deadline).await?)?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Asks the contact `handle` for their presence (sharing ours, which the setting
    /// must allow: who hides from a contact cannot see theirs) and waits up to `wait`
    /// for the answer. Returns what is known then: the answer, or what they last shared.
    /// Messages waiting on the server are received first (signals must not overtake
    /// them); their events go to `on_event`.
    pub async fn request_presence(
        &mut self,
        handle: &str,
        wait: Duration,
        timeout: Duration,
        on_event: &mut (dyn FnMut(hushwire_e2e::Event) + Send),
    ) -> Result<Option<PresenceInfo>, ClientError> {
        if !self.profile.shares_presence_with(handle)? {
            return Err(E2eError::NotAuthorized(format!(
                "your presence setting hides you from {handle}, so you cannot see theirs"
            ))
            .into());
        }
        // Stored messages first: a signal must not overtake them.
        let deadline = Instant::now() + timeout;
        self.defer_deliveries = false;
        self.drain(deadline, on_event).await?;
        let asked_at = unix_ms();
        let Some(out) = self
            .profile
            .ephemeral_presence(handle, true, true, asked_at)?
        else {
            return Ok(self.profile.presence_of(handle)?);
        };
        check_done(self.request(Self::ephemeral_frame(out), deadline).await?)?;
        let until = Instant::now() + wait;
        loop {
            if self
                .profile
                .presence_of(handle)?
                .is_some_and(|p| p.updated_at_ms >= asked_at)
            {
                break;
            }
            match self.next_frame(until).await? {
                Some(frame) => {
                    self.dispatch(frame).await?;
                    self.emit(on_event);
                }
                None => break,
            }
        }
        self.flush_ack().await?;
        self.emit(on_event);
        Ok(self.profile.presence_of(handle)?)
    }
}

fn check_done(done: wire::Done) -> Result<(), ClientError> {
    match done.error {
        None => Ok(()),
        Some(e) => Err(ClientError::Protocol(format!(
            "the server refused a signal ({:?}): {}",
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            e.message
        ))),
    }
}
