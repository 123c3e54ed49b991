//! JSON-RPC 2.0: requests, batches, errors, and the methods (thin calls into the client
//! library through the service).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hushwire_client::{Client, ClientError, Event, SendFileOptions, StoredMessage};
use hushwire_e2e::{DeleteScope, E2eError, GroupDetails, PresenceShare};
use hushwire_jsonrpc::{Entry, Parsed};
use hushwire_service::{Command, Emitter, Outcome, Service, parse_timer, timer_text};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::events::timeline_json;

/// Bound for the network part of one method (sending the outbox, a typing frame).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);
/// `history` returns at most this many entries.
const MAX_HISTORY: usize = 1000;
/// `history`'s default `limit`.
const DEFAULT_HISTORY: usize = 50;
/// Bound for `openViewOnce` (downloading the file included).
const VIEW_ONCE_TIMEOUT: Duration = Duration::from_secs(600);

pub use hushwire_jsonrpc::{MAX_BATCH, RpcError, code, error_response};

fn from_e2e(e: E2eError) -> RpcError {
    match e {
        E2eError::UnknownConversation(c) => {
            RpcError::new(code::NOT_FOUND, format!("no conversation {c}"))
        }
        E2eError::NotAuthorized(m) | E2eError::Protocol(m) => RpcError::new(code::REFUSED, m),
        E2eError::NeedAccount(_) | E2eError::NeedAccounts(_) | E2eError::NoKeyPackages(_) => {
            RpcError::new(code::CLIENT, e.to_string())
        }
        other => RpcError::new(code::CLIENT, other.to_string()),
    }
}

fn from_client(e: ClientError) -> RpcError {
    if e.is_network() {
        return RpcError::new(code::NETWORK, e.to_string());
    }
    match e {
        ClientError::E2e(e) => from_e2e(e),
        ClientError::InvalidHandle(h) => RpcError::new(code::INVALID_PARAMS, h.to_string()),
        ClientError::UnknownHandle(h) => RpcError::new(code::NOT_FOUND, format!("no account {h}")),
        e @ (ClientError::File { .. } | ClientError::LocalIo { .. }) => {
            RpcError::new(code::FILE, e.to_string())
        }
        other => RpcError::new(code::CLIENT, other.to_string()),
    }
}

fn stopped(e: hushwire_service::ServiceError) -> RpcError {
    RpcError::new(code::STOPPED, e.to_string())
}

fn params<T: DeserializeOwned>(p: Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p };
    serde_json::from_value(p).map_err(|e| RpcError::new(code::INVALID_PARAMS, e.to_string()))
}

fn is_group(name: &str) -> Result<(), RpcError> {
    if hushwire_e2e::group::is_group_name(name) {
        Ok(())
    } else {
        Err(RpcError::new(
            code::INVALID_PARAMS,
            format!("{name:?} is not a group; group names start with '#'"),
        ))
    }
}

/// Checks the form of a handle (`[a-z0-9_.]`, 3 to 32 characters, as
/// `hushwire_proto::identity::validate_handle`; the profile checks again) so that a
/// malformed one is reported as invalid params.
fn check_handle(what: &str, handle: &str) -> Result<(), RpcError> {
    let n = handle.chars().count();
    let bad = if !(3..=32).contains(&n) {
        Some(format!("a handle has 3 to 32 characters, got {n}"))
    } else {
        handle
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.'))
            .map(|c| format!("a handle may contain only a-z, 0-9, '_' and '.', found {c:?}"))
    };
    match bad {
        Some(why) => Err(RpcError::new(
            code::INVALID_PARAMS,
            format!("{what}: {handle:?} is not a handle ({why})"),
        )),
        None => Ok(()),
    }
}

/// Checks the form of a message id.
fn check_message_id(id: &str) -> Result<(), RpcError> {
    hushwire_e2e::parse_message_id(id).map(|_| ()).map_err(|_| {
        RpcError::new(
            code::INVALID_PARAMS,
            format!("id: not a message id: {id:?}"),
        )
    })
}

/// `everyone`, `unsent`, `me`.
fn scope_name(s: DeleteScope) -> &'static str {
    match s {
        DeleteScope::Everyone => "everyone",
        DeleteScope::Unsent => "unsent",
        DeleteScope::ForMe => "me",
    }
}

fn presence_from(name: &str) -> Result<PresenceShare, RpcError> {
    match name {
        "everyone" => Ok(PresenceShare::Everyone),
        "contacts" => Ok(PresenceShare::Contacts),
        "nobody" => Ok(PresenceShare::Nobody),
        other => Err(RpcError::new(
            code::INVALID_PARAMS,
            format!("presence: {other:?} is not one of \"everyone\", \"contacts\", \"nobody\""),
        )),
    }
}

/// What the methods reported while sending: failures to return as an error.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<Value>>>);

impl Failures {
    fn record(&self, e: &Event) {
        let f = match e {
            Event::GroupOperationFailed {
                conversation,
                reason,
            } => json!({"conversation": conversation, "reason": reason}),
            Event::SendFailed { id, reason } => json!({"id": id, "reason": reason}),
            _ => return,
        };
        if let Ok(mut v) = self.0.lock() {
            v.push(f);
        }
    }

    fn take(&self) -> Vec<Value> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Sends the outbox, reporting its events to every consumer. `Ok(false)`: the server
/// is unreachable and what was queued stays queued.
async fn flush(c: &mut Client, emitter: &Emitter, failures: &Failures) -> Result<bool, RpcError> {
    let result = c
        .flush_outbox(NETWORK_TIMEOUT, &mut |e| {
            failures.record(&e);
            emitter.emit(e);
        })
        .await;
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.is_network() => Ok(false),
        Err(e) => Err(from_client(e)),
    }
}

/// A command's outcome: its failures as an error, else whether it went out.
fn outcome_sent(o: &Outcome) -> Result<bool, RpcError> {
    rejected(
        o.failures
            .iter()
            .map(|reason| json!({"reason": reason}))
            .collect(),
    )?;
    Ok(o.pending.is_none())
}

fn rejected(failures: Vec<Value>) -> Result<(), RpcError> {
    if failures.is_empty() {
        return Ok(());
    }
    Err(RpcError {
        code: code::REJECTED,
        message: "rejected".into(),
        data: Some(Value::Array(failures)),
    })
}

fn details_json(d: &GroupDetails) -> Value {
    json!({
        "conversation": d.conversation,
        "title": d.title,
        "description": d.description,
        "suite": match d.suite {
            hushwire_e2e::Suite::XWing => "xwing",
            hushwire_e2e::Suite::Classic => "classic",
        },
        "epoch": d.epoch,
        "state": d.state,
        "leaving": d.leaving,
        "adminsOnly": d.admins_only,
        "members": d.members.iter().map(|m| json!({
            "handle": m.handle,
            "admin": m.admin,
            "devices": m.devices,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendParams {
    #[serde(alias = "recipient")]
    to: Option<String>,
    #[serde(alias = "message")]
    text: Option<String>,
    #[serde(alias = "attachment")]
    file: Option<PathBuf>,
    #[serde(alias = "quoteId")]
    reply_to: Option<String>,
    #[serde(default)]
    view_once: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EditParams {
    #[serde(alias = "targetId", alias = "messageId", alias = "editId")]
    id: String,
    #[serde(alias = "message")]
    text: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageParams {
    #[serde(alias = "targetId", alias = "messageId")]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimerParams {
    #[serde(alias = "recipient", alias = "group")]
    conversation: String,
    timer: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HandleParams {
    #[serde(alias = "recipient")]
    handle: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SafetyParams {
    #[serde(alias = "recipient")]
    handle: String,
    /// The user compared the digits with the other person.
    #[serde(default)]
    mark_verified: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettingsParams {
    read_receipts: Option<bool>,
    presence: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ViewOnceParams {
    #[serde(alias = "targetId", alias = "messageId")]
    id: String,
    dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConversationParams {
    #[serde(alias = "recipient", alias = "group")]
    conversation: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HistoryParams {
    #[serde(alias = "recipient", alias = "group")]
    conversation: String,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReactionParams {
    #[serde(alias = "targetId", alias = "messageId")]
    id: String,
    #[serde(default)]
    emoji: String,
    #[serde(default)]
    remove: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateGroupParams {
    #[serde(alias = "name")]
    title: String,
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateGroupParams {
    #[serde(alias = "groupId", alias = "conversation")]
    group: String,
    #[serde(default, alias = "addMembers")]
    add: Vec<String>,
    #[serde(default, alias = "removeMembers")]
    remove: Vec<String>,
    #[serde(default, alias = "admin", alias = "addAdmins")]
    promote: Vec<String>,
    #[serde(default, alias = "removeAdmins")]
    demote: Vec<String>,
    #[serde(alias = "name", alias = "title")]
    rename: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TypingParams {
    #[serde(alias = "recipient", alias = "group")]
    conversation: String,
    #[serde(default)]
    stop: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupParams {
    #[serde(alias = "groupId", alias = "conversation")]
    group: String,
}

/// The methods, over one service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Methods {
    service: Service,
}

/// Every method name, for the docs and `-32601`.
pub const METHODS: &[&str] = &[
    "send",
    "listConversations",
    "history",
    "sendReaction",
    "sendReceipt",
    "markRead",
    "createGroup",
    "updateGroup",
    "quitGroup",
    "listGroups",
    "getGroup",
    "listDevices",
    "sendTyping",
    "editMessage",
    "remoteDelete",
    "setTimer",
    "listRequests",
    "acceptRequest",
    "block",
    "unblock",
    "listBlocked",
    "getSafetyNumber",
    "trustIdentity",
    "getSettings",
    "updateSettings",
    "openViewOnce",
    "version",
];

impl Methods {
    /// Methods over `service`.
    pub fn new(service: Service) -> Self {
        Self { service }
    }

    /// Handles one line/body: a request, a notification or a batch. `None`: nothing to
    /// answer (notifications only).
    pub async fn handle_text(&self, text: &str) -> Option<Value> {
        match hushwire_jsonrpc::parse(text) {
            Parsed::Refused(answer) => Some(answer),
            Parsed::One(entry) => self.handle_one(entry).await,
            Parsed::Batch(entries) => {
                let mut out = Vec::new();
                for entry in entries {
                    if let Some(r) = self.handle_one(entry).await {
                        out.push(r);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
        }
    }

    async fn handle_one(&self, entry: Entry) -> Option<Value> {
        let request = match entry {
            Entry::Invalid(answer) => return Some(answer),
            Entry::Call(request) => request,
        };
        let result = self.call(&request.method, request.params).await;
        // A notification gets no answer.
        let id = request.id?;
        Some(match result {
            Ok(v) => hushwire_jsonrpc::success(id, v),
            Err(e) => error_response(id, &e),
        })
    }

    /// Calls one method.
    pub async fn call(&self, method: &str, p: Value) -> Result<Value, RpcError> {
        match method {
            "version" => Ok(json!({"version": env!("CARGO_PKG_VERSION")})),
            "send" => self.send(params(p)?).await,
            "listConversations" => self.list_conversations().await,
            "history" => self.history(params(p)?).await,
            "sendReaction" => self.reaction(params(p)?).await,
            "sendReceipt" | "markRead" => self.mark_read(params(p)?).await,
            "createGroup" => self.create_group(params(p)?).await,
            "updateGroup" => self.update_group(params(p)?).await,
            "quitGroup" => self.quit_group(params(p)?).await,
            "listGroups" => self.list_groups().await,
            "getGroup" => self.get_group(params(p)?).await,
            "listDevices" => self.list_devices().await,
            "sendTyping" => self.typing(params(p)?).await,
            "editMessage" => self.edit(params(p)?).await,
            "remoteDelete" => self.delete(params(p)?).await,
            "setTimer" => self.set_timer(params(p)?).await,
            "listRequests" => self.list_requests().await,
            "acceptRequest" => self.accept(params(p)?).await,
            "block" => self.block(params(p)?, true).await,
            "unblock" => self.block(params(p)?, false).await,
            "listBlocked" => self.list_blocked().await,
            "getSafetyNumber" => self.safety_number(params(p)?).await,
            "trustIdentity" => self.trust(params(p)?).await,
            "getSettings" => self.settings().await,
            "updateSettings" | "updateConfiguration" => self.update_settings(params(p)?).await,
            "openViewOnce" => self.open_view_once(params(p)?).await,
            other => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("no method {other:?}"),
            )),
        }
    }

    /// Applies `command` through the service (the code every front shares).
    async fn command(&self, command: Command) -> Result<Outcome, RpcError> {
        self.service.command(command).await.map_err(from_client)
    }

    /// The message `id` on this device: malformed → invalid params, unknown → not found.
    async fn find_message(&self, id: &str) -> Result<StoredMessage, RpcError> {
        check_message_id(id)?;
        let id = id.to_string();
        self.service
            .with(move |c| {
                Box::pin(async move {
                    c.profile().find_message(&id).map_err(|e| match e {
                        // No message with this id here (or several senders used it).
                        E2eError::Protocol(m) => RpcError::new(code::NOT_FOUND, m),
                        other => from_e2e(other),
                    })
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn send(&self, p: SendParams) -> Result<Value, RpcError> {
        if p.text.is_none() && p.file.is_none() {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "send needs text or file",
            ));
        }
        if let Some(target) = p.reply_to {
            if p.file.is_some() {
                return Err(RpcError::new(
                    code::INVALID_PARAMS,
                    "a file cannot be sent as a reply",
                ));
            }
            if p.view_once {
                return Err(RpcError::new(
                    code::INVALID_PARAMS,
                    "a reply cannot be view-once",
                ));
            }
            let m = self.find_message(&target).await?;
            if let Some(to) = &p.to
                && *to != m.conversation
            {
                return Err(RpcError::new(
                    code::INVALID_PARAMS,
                    format!(
                        "replyTo: message {target} is in {}, not in {to}",
                        m.conversation
                    ),
                ));
            }
            let o = self
                .command(Command::Reply {
                    id: target,
                    text: p.text.unwrap_or_default(),
                })
                .await?;
            let sent = outcome_sent(&o)?;
            return Ok(json!({"id": o.id, "sent": sent}));
        }
        let Some(to) = p.to else {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "send needs to (or replyTo)",
            ));
        };
        let group = hushwire_e2e::group::is_group_name(&to);
        if p.view_once && p.file.is_none() && !group {
            check_handle("to", &to)?;
        }
        let emitter = self.service.emitter();
        let failures = Failures::default();
        let f = failures.clone();
        let (id, sent) = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    let text = p.text.unwrap_or_default();
                    let id = match &p.file {
                        Some(path) => {
                            let options = SendFileOptions {
                                caption: text,
                                view_once: p.view_once,
                                ..SendFileOptions::default()
                            };
                            c.send_file(&to, path, &options)
                                .await
                                .map_err(from_client)?
                        }
                        None if p.view_once => c
                            .profile_mut()
                            .queue_text_with(
                                &to,
                                &text,
                                None,
                                true,
                                hushwire_client::api::unix_ms(),
                            )
                            .map_err(from_e2e)?,
                        None => c.queue_text(&to, &text).map_err(from_client)?,
                    };
                    let sent = flush(c, &emitter, &f).await?;
                    Ok((id, sent))
                })
            })
            .await
            .map_err(stopped)??;
        rejected(failures.take())?;
        Ok(json!({"id": id, "sent": sent}))
    }

    async fn list_conversations(&self) -> Result<Value, RpcError> {
        self.service
            .with(|c| {
                Box::pin(async move {
                    let list = c.profile().conversations().map_err(from_e2e)?;
                    Ok(Value::Array(
                        list.iter()
                            .map(|s| {
                                json!({
                                    "conversation": s.name,
                                    "group": hushwire_e2e::group::is_group_name(&s.name),
                                    "lastMessageAt": s.last_message_at_ms,
                                    "messageCount": s.message_count,
                                    "request": s.request,
                                    "timer": timer_text(s.expire_timer_ms),
                                    "timerMs": s.expire_timer_ms,
                                })
                            })
                            .collect(),
                    ))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn history(&self, p: HistoryParams) -> Result<Value, RpcError> {
        let limit = p.limit.unwrap_or(DEFAULT_HISTORY).min(MAX_HISTORY);
        self.service
            .with(move |c| {
                Box::pin(async move {
                    if !c
                        .profile()
                        .conversations()
                        .map_err(from_e2e)?
                        .iter()
                        .any(|s| s.name == p.conversation)
                    {
                        return Err(RpcError::new(
                            code::NOT_FOUND,
                            format!("no conversation {}", p.conversation),
                        ));
                    }
                    let items = c.profile().timeline(&p.conversation).map_err(from_e2e)?;
                    let skip = items.len().saturating_sub(limit);
                    Ok(Value::Array(
                        items.iter().skip(skip).map(timeline_json).collect(),
                    ))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn reaction(&self, p: ReactionParams) -> Result<Value, RpcError> {
        let emoji = if p.remove { String::new() } else { p.emoji };
        if emoji.is_empty() && !p.remove {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "sendReaction needs emoji (or remove: true)",
            ));
        }
        if !emoji.is_empty() {
            hushwire_e2e::validate_reaction(&emoji)
                .map_err(|e| RpcError::new(code::INVALID_PARAMS, format!("emoji: {e}")))?;
        }
        self.find_message(&p.id).await?;
        let o = self.command(Command::React { id: p.id, emoji }).await?;
        Ok(json!({"sent": outcome_sent(&o)?}))
    }

    async fn mark_read(&self, p: ConversationParams) -> Result<Value, RpcError> {
        let emitter = self.service.emitter();
        let failures = Failures::default();
        let f = failures.clone();
        let (n, sent) = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    let n = c
                        .profile_mut()
                        .mark_read(&p.conversation, hushwire_client::api::unix_ms())
                        .map_err(from_e2e)?;
                    Ok((n, flush(c, &emitter, &f).await?))
                })
            })
            .await
            .map_err(stopped)??;
        rejected(failures.take())?;
        Ok(json!({"read": n, "sent": sent}))
    }

    async fn create_group(&self, p: CreateGroupParams) -> Result<Value, RpcError> {
        let emitter = self.service.emitter();
        let failures = Failures::default();
        let f = failures.clone();
        let (name, sent) = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    let me = c.identity().map_err(from_client)?.handle.clone();
                    let mut handles: Vec<String> = Vec::new();
                    for h in p.members.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
                        if h != me && !handles.iter().any(|x| x == h) {
                            handles.push(h.to_string());
                        }
                    }
                    if handles.is_empty() {
                        return Err(RpcError::new(
                            code::INVALID_PARAMS,
                            "a group needs at least one other member",
                        ));
                    }
                    let name = c
                        .create_group(&p.title, &handles, None)
                        .map_err(from_client)?;
                    Ok((name, flush(c, &emitter, &f).await?))
                })
            })
            .await
            .map_err(stopped)??;
        rejected(failures.take())?;
        Ok(json!({"conversation": name, "sent": sent}))
    }

    async fn update_group(&self, p: UpdateGroupParams) -> Result<Value, RpcError> {
        is_group(&p.group)?;
        if p.add.is_empty()
            && p.remove.is_empty()
            && p.promote.is_empty()
            && p.demote.is_empty()
            && p.rename.is_none()
        {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "updateGroup needs add, remove, promote, demote or rename",
            ));
        }
        let emitter = self.service.emitter();
        let failures = Failures::default();
        let f = failures.clone();
        let sent = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    let now = hushwire_client::api::unix_ms();
                    let g = &p.group;
                    let prof = c.profile_mut();
                    if !p.add.is_empty() {
                        prof.group_add(g, &p.add, now).map_err(from_e2e)?;
                    }
                    if !p.remove.is_empty() {
                        prof.group_remove(g, &p.remove, now).map_err(from_e2e)?;
                    }
                    for h in &p.promote {
                        prof.group_set_admin(g, h, true, now).map_err(from_e2e)?;
                    }
                    for h in &p.demote {
                        prof.group_set_admin(g, h, false, now).map_err(from_e2e)?;
                    }
                    if let Some(title) = &p.rename {
                        prof.group_rename(g, title, now).map_err(from_e2e)?;
                    }
                    flush(c, &emitter, &f).await
                })
            })
            .await
            .map_err(stopped)??;
        rejected(failures.take())?;
        Ok(json!({"sent": sent}))
    }

    async fn quit_group(&self, p: GroupParams) -> Result<Value, RpcError> {
        is_group(&p.group)?;
        let emitter = self.service.emitter();
        let failures = Failures::default();
        let f = failures.clone();
        let sent = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    c.profile_mut()
                        .group_leave(&p.group, hushwire_client::api::unix_ms())
                        .map_err(from_e2e)?;
                    flush(c, &emitter, &f).await
                })
            })
            .await
            .map_err(stopped)??;
        rejected(failures.take())?;
        Ok(json!({"sent": sent}))
    }

    async fn list_groups(&self) -> Result<Value, RpcError> {
        self.service
            .with(|c| {
                Box::pin(async move {
                    let mut out = Vec::new();
                    for s in c.profile().conversations().map_err(from_e2e)? {
                        if hushwire_e2e::group::is_group_name(&s.name) {
                            out.push(details_json(
                                &c.group_details(&s.name).map_err(from_client)?,
                            ));
                        }
                    }
                    Ok(Value::Array(out))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn get_group(&self, p: GroupParams) -> Result<Value, RpcError> {
        is_group(&p.group)?;
        self.service
            .with(move |c| {
                Box::pin(async move {
                    Ok(details_json(
                        &c.group_details(&p.group).map_err(from_client)?,
                    ))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn list_devices(&self) -> Result<Value, RpcError> {
        self.service
            .with(|c| {
                Box::pin(async move {
                    let list = c.devices().await.map_err(from_client)?;
                    Ok(Value::Array(
                        list.iter()
                            .map(|d| {
                                json!({
                                    "deviceId": d.device_id,
                                    "name": d.name,
                                    "current": d.current,
                                    "linkedAt": d.linked_at_ms,
                                })
                            })
                            .collect(),
                    ))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn typing(&self, p: TypingParams) -> Result<Value, RpcError> {
        let sent = self
            .service
            .with(move |c| {
                Box::pin(async move {
                    c.send_typing(&p.conversation, !p.stop, NETWORK_TIMEOUT)
                        .await
                        .map_err(from_client)
                })
            })
            .await
            .map_err(stopped)??;
        Ok(json!({"sent": sent}))
    }

    async fn edit(&self, p: EditParams) -> Result<Value, RpcError> {
        if p.text.is_empty() {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "editMessage needs the new text",
            ));
        }
        self.find_message(&p.id).await?;
        let o = self
            .command(Command::Edit {
                id: p.id,
                text: p.text,
            })
            .await?;
        Ok(json!({"sent": outcome_sent(&o)?}))
    }

    async fn delete(&self, p: MessageParams) -> Result<Value, RpcError> {
        self.find_message(&p.id).await?;
        let o = self.command(Command::Delete { id: p.id }).await?;
        let sent = outcome_sent(&o)?;
        Ok(json!({"scope": o.scope.map(scope_name), "sent": sent}))
    }

    async fn set_timer(&self, p: TimerParams) -> Result<Value, RpcError> {
        let timer_ms = parse_timer(&p.timer)
            .map_err(|e| RpcError::new(code::INVALID_PARAMS, format!("timer: {e}")))?;
        let o = self
            .command(Command::Timer {
                conversation: p.conversation.clone(),
                timer_ms,
            })
            .await?;
        let sent = outcome_sent(&o)?;
        Ok(json!({
            "conversation": p.conversation,
            "timer": timer_text(timer_ms),
            "timerMs": timer_ms,
            "sent": sent,
        }))
    }

    async fn list_requests(&self) -> Result<Value, RpcError> {
        self.service
            .with(|c| {
                Box::pin(async move {
                    let list = c.profile().requests().map_err(from_e2e)?;
                    Ok(Value::Array(
                        list.iter()
                            .map(|r| {
                                json!({
                                    "from": r.from,
                                    "conversation": r.from,
                                    "messages": r.messages,
                                    "firstAt": r.first_at_ms,
                                    "lastText": r.last_text,
                                })
                            })
                            .collect(),
                    ))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn accept(&self, p: HandleParams) -> Result<Value, RpcError> {
        check_handle("handle", &p.handle)?;
        let handle = p.handle.clone();
        let request = self
            .service
            .with(move |c| Box::pin(async move { c.profile().is_request(&handle) }))
            .await
            .map_err(stopped)?
            .map_err(from_e2e)?;
        if !request {
            return Err(RpcError::new(
                code::NOT_FOUND,
                format!("no message request from {}", p.handle),
            ));
        }
        let o = self.command(Command::Accept { handle: p.handle }).await?;
        Ok(json!({"sent": outcome_sent(&o)?}))
    }

    async fn blocked(&self) -> Result<Vec<String>, RpcError> {
        self.service
            .with(|c| Box::pin(async move { c.profile().blocked() }))
            .await
            .map_err(stopped)?
            .map_err(from_e2e)
    }

    async fn block(&self, p: HandleParams, block: bool) -> Result<Value, RpcError> {
        check_handle("handle", &p.handle)?;
        let command = if block {
            Command::Block { handle: p.handle }
        } else {
            if !self.blocked().await?.contains(&p.handle) {
                return Err(RpcError::new(
                    code::NOT_FOUND,
                    format!("{} is not blocked", p.handle),
                ));
            }
            Command::Unblock { handle: p.handle }
        };
        let o = self.command(command).await?;
        Ok(json!({"sent": outcome_sent(&o)?}))
    }

    async fn list_blocked(&self) -> Result<Value, RpcError> {
        Ok(json!(self.blocked().await?))
    }

    async fn safety_number(&self, p: SafetyParams) -> Result<Value, RpcError> {
        check_handle("handle", &p.handle)?;
        let number = self
            .service
            .safety_number(&p.handle, p.mark_verified)
            .await
            .map_err(from_client)?;
        let qr: String = number
            .qr_payload
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(json!({
            "handle": p.handle,
            "safetyNumber": number.digits,
            "qrPayload": qr,
            "verified": number.verified,
        }))
    }

    async fn trust(&self, p: HandleParams) -> Result<Value, RpcError> {
        check_handle("handle", &p.handle)?;
        self.service.trust(&p.handle).await.map_err(from_client)?;
        Ok(json!({"trusted": true}))
    }

    async fn settings(&self) -> Result<Value, RpcError> {
        self.service
            .with(|c| {
                Box::pin(async move {
                    let p = c.profile();
                    Ok(json!({
                        "readReceipts": p.read_receipts().map_err(from_e2e)?,
                        "presence": p.presence_share().map_err(from_e2e)?.as_str(),
                    }))
                })
            })
            .await
            .map_err(stopped)?
    }

    async fn update_settings(&self, p: SettingsParams) -> Result<Value, RpcError> {
        if p.read_receipts.is_none() && p.presence.is_none() {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "updateSettings needs readReceipts or presence",
            ));
        }
        // Every value is checked before anything changes.
        let share = p.presence.as_deref().map(presence_from).transpose()?;
        if let Some(on) = p.read_receipts {
            self.command(Command::ReadReceipts(on)).await?;
        }
        if let Some(share) = share {
            self.command(Command::Presence(share)).await?;
        }
        self.settings().await
    }

    async fn open_view_once(&self, p: ViewOnceParams) -> Result<Value, RpcError> {
        let m = self.find_message(&p.id).await?;
        if m.outgoing {
            return Err(RpcError::new(
                code::REFUSED,
                "your own view-once messages cannot be opened",
            ));
        }
        if !m.view_once {
            return Err(RpcError::new(
                code::REFUSED,
                format!("message {} is not view-once", p.id),
            ));
        }
        let dir = p
            .dir
            .unwrap_or_else(|| self.service.profile_dir().join("media").join(".view-once"));
        let opened = self
            .service
            .open_view_once(&p.id, dir, VIEW_ONCE_TIMEOUT)
            .await
            .map_err(from_client)?;
        Ok(json!({
            "id": p.id,
            "from": opened.from,
            "text": opened.text,
            "path": opened.path.map(|p| p.display().to_string()),
        }))
    }
}

/// A `receive` notification for one queued event.
pub fn notification(event: &Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "receive", "params": event})
}
