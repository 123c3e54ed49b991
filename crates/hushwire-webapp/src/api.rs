//! The routes: the gate (token, `Host`, `Origin`), the embedded assets, the JSON API
//! over the client service and the WebSocket of live events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hushwire_client::api::unix_ms;
use hushwire_client::{Client, ClientError, SendFileOptions, Transfer};
use hushwire_e2e::group::is_group_name;
use hushwire_e2e::{
    E2eError, Event, GroupEvent, MessageState, PresenceShare, ReceiptStatus, StoredMessage,
    TimelineItem,
};
use hushwire_service::{Service, ServiceError, ServiceEvent};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, oneshot};
use zeroize::Zeroizing;

use crate::security::{self, Refusal, Token};
use crate::{assets, events};

/// Bound for one network operation run for the browser.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a link session started from the browser waits for the new device.
const LINK_TIMEOUT: Duration = Duration::from_secs(180);
/// The largest file the browser may hand over (the client library applies its own
/// limits on top).
const MAX_UPLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The JSON bodies of commands.
const MAX_JSON_BYTES: usize = 256 * 1024;
/// Where uploaded files are kept (they are the attachment's local copy), under the
/// profile's `media` directory.
const OUTBOX_DIR: &str = "outbox";

pub(crate) struct Inner {
    service: Service,
    token: Token,
    port: u16,
    unread: Mutex<HashMap<String, u64>>,
    app_events: broadcast::Sender<Value>,
    linking: AtomicBool,
}

impl Inner {
    pub(crate) fn new(
        service: Service,
        token: Token,
        port: u16,
        app_events: broadcast::Sender<Value>,
    ) -> Self {
        Self {
            service,
            token,
            port,
            unread: Mutex::new(HashMap::new()),
            app_events,
            linking: AtomicBool::new(false),
        }
    }

    fn media_dir(&self) -> PathBuf {
        self.service.profile_dir().join("media")
    }

    fn unread_snapshot(&self) -> HashMap<String, u64> {
        self.unread.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn clear_unread(&self, conversation: &str) {
        if let Ok(mut m) = self.unread.lock() {
            m.remove(conversation);
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState(pub(crate) Arc<Inner>);

/// Why an API call failed (the JSON `{"error": ...}` the browser shows).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the file is larger than {MAX_UPLOAD_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Local(#[from] E2eError),
    #[error("the client service stopped")]
    Stopped(#[from] ServiceError),
    #[error("cannot store the file: {0}")]
    Io(#[from] std::io::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) | ApiError::Local(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Client(e) if !e.is_transient() => StatusCode::BAD_REQUEST,
            ApiError::Client(_) => StatusCode::BAD_GATEWAY,
            ApiError::Stopped(_) | ApiError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/favicon.svg", get(assets::icon))
        .route("/api/state", get(api_state))
        .route("/api/timeline", get(api_timeline))
        .route("/api/media", get(api_media))
        .route("/api/thumb", get(api_thumb))
        .route("/api/devices", get(api_devices))
        .route("/api/send", post(api_send))
        .route("/api/react", post(api_react))
        .route("/api/read", post(api_read))
        .route("/api/typing", post(api_typing))
        .route("/api/upload", post(api_upload))
        .route("/api/groups", post(api_create_group))
        .route("/api/group", post(api_group_op))
        .route("/api/settings", post(api_settings))
        .route("/api/link", post(api_link))
        .route("/ws", get(ws))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Every request passes here first: see [`security::check`].
async fn gate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let websocket = path == "/ws";
    let query = req.uri().query().map(str::to_string);
    let checked = security::check(
        req.method(),
        req.headers(),
        query.as_deref(),
        websocket,
        &st.0.token,
        st.0.port,
    );
    let mut response = match checked {
        Err(refusal) => refused(refusal),
        Ok(()) => {
            let first_visit = req.method() == Method::GET
                && path == "/"
                && query.as_deref().and_then(security::query_token).is_some();
            if first_visit {
                // Keep the token out of the address bar and history: a cookie from now on.
                let mut r = StatusCode::SEE_OTHER.into_response();
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&security::set_cookie(&st.0.token, st.0.port))
                {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            } else {
                next.run(req).await
            }
        }
    };
    security::add_headers(response.headers_mut(), path == "/api/media");
    response
}

fn refused(refusal: Refusal) -> Response {
    let (status, text) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Hushwire: open the address that `hushwire app` printed (it carries the access token).\n",
        ),
        Refusal::BadHost => (
            StatusCode::FORBIDDEN,
            "Hushwire: this app answers only to 127.0.0.1 and localhost.\n",
        ),
        Refusal::BadOrigin => (
            StatusCode::FORBIDDEN,
            "Hushwire: requests from other sites are refused.\n",
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Counts unread messages per conversation while the app runs and forwards transfer
/// progress to the browser.
pub(crate) fn spawn_background(state: AppState) {
    let mut events = state.0.service.subscribe();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ServiceEvent::Client(Event::Message(m) | Event::Attachment(m, _)))
                    if !m.outgoing =>
                {
                    if let Ok(mut unread) = st.0.unread.lock() {
                        *unread.entry(m.conversation).or_insert(0) += 1;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let progress = state.0.app_events.clone();
    let service = state.0.service.clone();
    tokio::spawn(async move {
        let _ = service
            .with(move |c| {
                Box::pin(async move {
                    c.set_progress(Some(Box::new(move |t: &Transfer| {
                        let _ = progress.send(json!({
                            "type": "transfer",
                            "id": t.id,
                            "upload": matches!(t.direction, hushwire_client::Direction::Upload),
                            "done": t.done,
                            "total": t.total,
                        }));
                    })));
                })
            })
            .await;
    });
}

// ------------------------------------------------------------------ reading

async fn api_state(State(st): State<AppState>) -> ApiResult {
    let unread = st.0.unread_snapshot();
    let online = *st.0.service.online().borrow();
    let v =
        st.0.service
            .with(move |c| Box::pin(async move { build_state(c, &unread, online) }))
            .await??;
    Ok(axum::Json(v))
}

fn build_state(
    c: &mut Client,
    unread: &HashMap<String, u64>,
    online: bool,
) -> Result<Value, ApiError> {
    let me = c.identity()?.handle.clone();
    let p = c.profile();
    // The profile's count (not yet marked read: it survives a restart), or this
    // session's when it is ahead.
    let stored: HashMap<String, u64> = p.unread_counts()?.into_iter().collect();
    let mut conversations = Vec::new();
    for s in p.conversations()? {
        let group = is_group_name(&s.name);
        let title = if group {
            p.group_details(&s.name)
                .map(|d| d.title)
                .unwrap_or_else(|_| s.name.clone())
        } else {
            s.name.clone()
        };
        let preview = p
            .timeline(&s.name)?
            .last()
            .map(|item| preview_of(item, &me));
        conversations.push(json!({
            "name": s.name,
            "title": title,
            "group": group,
            "request": s.request,
            "unread": unread
                .get(&s.name)
                .copied()
                .unwrap_or(0)
                .max(stored.get(&s.name).copied().unwrap_or(0)),
            "last_at": s.last_message_at_ms,
            "preview": preview,
        }));
    }
    Ok(json!({
        "me": me,
        "online": online,
        "settings": {
            "read_receipts": p.read_receipts()?,
            "presence": p.presence_share()?.as_str(),
        },
        "conversations": conversations,
    }))
}

fn preview_of(item: &TimelineItem, me: &str) -> Value {
    match item {
        TimelineItem::Message(m) | TimelineItem::RelayLink(m) => json!({
            "from": m.from, "outgoing": m.outgoing,
            "text": if m.view_once { "View-once message".to_string() } else { m.text.clone() },
        }),
        TimelineItem::Attachment(m, a) => {
            let label = if a.mime.starts_with("image/") {
                "📷 Photo".to_string()
            } else {
                format!("📎 {}", a.file_name)
            };
            let text = if m.text.is_empty() {
                label
            } else {
                format!("{label} · {}", m.text)
            };
            json!({"from": m.from, "outgoing": m.outgoing, "text": text})
        }
        TimelineItem::Group(g) => {
            json!({"from": g.by, "outgoing": g.by == me, "text": group_line(g)})
        }
    }
}

fn group_line(g: &GroupEvent) -> String {
    let who = g.handles.join(", ");
    match g.kind.as_str() {
        "added" => format!("{} added {who}", g.by),
        "removed" => format!("{} removed {who}", g.by),
        "left" => format!("{} left", if who.is_empty() { &g.by } else { &who }),
        "renamed" => format!(
            "{} renamed the group to “{}”",
            g.by,
            g.title.clone().unwrap_or_default()
        ),
        "promoted" => format!("{} made {who} an admin", g.by),
        "demoted" => format!("{} removed {who} as admin", g.by),
        "reset" => format!("{} reset the group", g.by),
        other => format!("group {other} ({})", g.by),
    }
}

#[derive(Deserialize)]
struct ConversationQuery {
    c: String,
}

async fn api_timeline(State(st): State<AppState>, Query(q): Query<ConversationQuery>) -> ApiResult {
    let v =
        st.0.service
            .with(move |c| Box::pin(async move { build_timeline(c, &q.c) }))
            .await??;
    Ok(axum::Json(v))
}

fn build_timeline(c: &mut Client, conversation: &str) -> Result<Value, ApiError> {
    let me = c.identity()?.handle.clone();
    let p = c.profile();
    // A 1:1 chat opened before its first message has an empty timeline; a group chat
    // exists from its creation.
    if is_group_name(conversation) && !p.conversations()?.iter().any(|s| s.name == conversation) {
        return Err(ApiError::NotFound);
    }
    let items = p.timeline(conversation)?;
    let reactions = p.reactions(conversation)?;
    let receipts = p.receipts(conversation)?;
    let group = is_group_name(conversation);
    let details = if group {
        p.group_details(conversation).ok()
    } else {
        None
    };
    let mut quoted: HashMap<&str, (&str, String)> = HashMap::new();
    for item in &items {
        match item {
            TimelineItem::Message(m) => {
                quoted.insert(&m.id, (&m.from, m.text.clone()));
            }
            TimelineItem::Attachment(m, a) => {
                quoted.insert(&m.id, (&m.from, format!("📎 {}", a.file_name)));
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let v = match item {
            TimelineItem::Group(g) => json!({
                "kind": "event", "at": g.at_ms, "text": group_line(g),
            }),
            TimelineItem::Message(m) | TimelineItem::RelayLink(m) => {
                let mut v = message_json(m, &me, &reactions, &receipts, &quoted);
                if matches!(item, TimelineItem::RelayLink(_)) {
                    v["kind"] = json!("link");
                }
                v
            }
            TimelineItem::Attachment(m, a) => {
                let mut v = message_json(m, &me, &reactions, &receipts, &quoted);
                v["kind"] = json!("attachment");
                v["attachment"] = json!({
                    "name": a.file_name,
                    "mime": a.mime,
                    "size": a.size,
                    "width": a.width,
                    "height": a.height,
                    "thumb": !a.thumbnail.is_empty(),
                    "ready": a.path.as_deref().is_some_and(Path::exists),
                    "image": a.mime.starts_with("image/"),
                    "error": a.error,
                });
                v
            }
        };
        out.push(v);
    }
    let details = details.map(|d| {
        let admin_me = d.members.iter().any(|m| m.handle == me && m.admin);
        json!({
            "title": d.title,
            "members": d.members.iter().map(|m| json!({"handle": m.handle, "admin": m.admin})).collect::<Vec<_>>(),
            "admin": admin_me,
            "leaving": d.leaving,
        })
    });
    Ok(json!({
        "name": conversation,
        "group": group,
        "me": me,
        "details": details,
        "request": p.is_request(conversation)?,
        "items": out,
    }))
}

fn message_json(
    m: &StoredMessage,
    me: &str,
    reactions: &HashMap<String, Vec<hushwire_e2e::Reaction>>,
    receipts: &HashMap<String, Vec<hushwire_e2e::Receipt>>,
    quoted: &HashMap<&str, (&str, String)>,
) -> Value {
    let state = match m.state {
        MessageState::Queued => "queued",
        MessageState::Failed => "failed",
        MessageState::Received => "received",
        MessageState::Sent => {
            let best = receipts
                .get(&m.id)
                .and_then(|r| r.iter().map(|r| r.status).max());
            match best {
                Some(ReceiptStatus::Read | ReceiptStatus::Viewed) => "read",
                Some(ReceiptStatus::Delivered) => "delivered",
                None => "sent",
            }
        }
    };
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for r in reactions.get(&m.id).map(Vec::as_slice).unwrap_or_default() {
        if r.emoji.is_empty() {
            continue;
        }
        match grouped.iter_mut().find(|(e, _)| *e == r.emoji) {
            Some((_, from)) => from.push(r.from.clone()),
            None => grouped.push((r.emoji.clone(), vec![r.from.clone()])),
        }
    }
    let reactions: Vec<Value> = grouped
        .into_iter()
        .map(|(emoji, from)| json!({"emoji": emoji, "mine": from.iter().any(|f| f == me), "from": from}))
        .collect();
    let reply = m.reply_to.as_ref().map(|id| match quoted.get(id.as_str()) {
        Some((from, text)) => json!({"id": id, "from": from, "text": text}),
        None => json!({"id": id, "from": null, "text": null}),
    });
    json!({
        "kind": "message",
        "id": m.id,
        "from": m.from,
        "outgoing": m.outgoing,
        "at": m.sent_at_ms,
        "text": m.text,
        "view_once": m.view_once,
        "edited": m.edited_at_ms.is_some(),
        "state": state,
        "reply": reply,
        "reactions": reactions,
    })
}

#[derive(Deserialize)]
struct MediaQuery {
    c: String,
    id: String,
}

async fn find_attachment(
    st: &AppState,
    q: MediaQuery,
) -> Result<hushwire_e2e::AttachmentInfo, ApiError> {
    st.0.service
        .with(move |c| {
            Box::pin(async move {
                let found = c
                    .profile()
                    .timeline(&q.c)?
                    .into_iter()
                    .find_map(|i| match i {
                        TimelineItem::Attachment(m, a) if m.id == q.id && !m.view_once => Some(a),
                        _ => None,
                    });
                found.ok_or(ApiError::NotFound)
            })
        })
        .await?
}

/// Types shown inline; anything else is offered as a download.
fn inline_mime(mime: &str) -> Option<&'static str> {
    Some(match mime {
        "image/png" => "image/png",
        "image/jpeg" => "image/jpeg",
        "image/gif" => "image/gif",
        "image/webp" => "image/webp",
        "video/mp4" => "video/mp4",
        "audio/ogg" => "audio/ogg",
        "audio/mpeg" => "audio/mpeg",
        _ => return None,
    })
}

async fn api_media(
    State(st): State<AppState>,
    Query(q): Query<MediaQuery>,
) -> Result<Response, ApiError> {
    let media_dir = st.0.media_dir();
    let info = find_attachment(&st, q).await?;
    let path = info.path.ok_or(ApiError::NotFound)?;
    // Only files under the profile's media directory (received files, files sent from
    // this app), never an arbitrary path.
    let root = tokio::fs::canonicalize(&media_dir)
        .await
        .map_err(|_| ApiError::NotFound)?;
    let file = tokio::fs::canonicalize(&path)
        .await
        .map_err(|_| ApiError::NotFound)?;
    if !file.starts_with(&root) {
        return Err(ApiError::NotFound);
    }
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|_| ApiError::NotFound)?;
    let name = safe_file_name(&info.file_name);
    let (mime, disposition) = match inline_mime(&info.mime) {
        Some(m) => (m, format!("inline; filename=\"{name}\"")),
        None => (
            "application/octet-stream",
            format!("attachment; filename=\"{name}\""),
        ),
    };
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(r)
}

async fn api_thumb(
    State(st): State<AppState>,
    Query(q): Query<MediaQuery>,
) -> Result<Response, ApiError> {
    let info = find_attachment(&st, q).await?;
    if info.thumbnail.is_empty() {
        return Err(ApiError::NotFound);
    }
    let mut r = Response::new(Body::from(info.thumbnail));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(r)
}

async fn api_devices(State(st): State<AppState>) -> ApiResult {
    let devices = st
        .0
        .service
        .with(|c| Box::pin(async move { tokio::time::timeout(NETWORK_TIMEOUT, c.devices()).await }))
        .await?
        .map_err(|_| ApiError::Conflict("the server did not answer".into()))??;
    let list: Vec<Value> = devices
        .iter()
        .map(|d| json!({"id": d.device_id, "name": d.name, "current": d.current, "linked_at": d.linked_at_ms}))
        .collect();
    Ok(axum::Json(json!({"devices": list})))
}

// ------------------------------------------------------------------ commands

/// Flushes the outbox, forwarding events to subscribers, and collects the failures of
/// what was just queued.
async fn flush(
    c: &mut Client,
    emitter: &hushwire_service::Emitter,
) -> (Vec<String>, Option<String>) {
    let mut failures = Vec::new();
    let result = c
        .flush_outbox(NETWORK_TIMEOUT, &mut |e| {
            match &e {
                Event::GroupOperationFailed { reason, .. } | Event::SendFailed { reason, .. } => {
                    failures.push(reason.clone());
                }
                _ => {}
            }
            emitter.emit(e);
        })
        .await;
    (failures, result.err().map(|e| e.to_string()))
}

#[derive(Deserialize)]
struct SendRequest {
    to: String,
    text: String,
    reply_to: Option<String>,
}

async fn api_send(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<SendRequest>,
) -> ApiResult {
    if req.text.trim().is_empty() {
        return Err(ApiError::BadRequest("the message is empty".into()));
    }
    let emitter = st.0.service.emitter();
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let id = match req.reply_to.as_deref().filter(|r| !r.is_empty()) {
                        Some(r) => c.profile_mut().queue_reply(r, &req.text, unix_ms())?,
                        None => c.queue_text(&req.to, &req.text)?,
                    };
                    let (failures, pending) = flush(c, &emitter).await;
                    Ok::<_, ApiError>(json!({"id": id, "failures": failures, "pending": pending}))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
struct ReactRequest {
    id: String,
    emoji: String,
}

async fn api_react(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<ReactRequest>,
) -> ApiResult {
    if !req.emoji.is_empty() {
        hushwire_e2e::validate_reaction(&req.emoji).map_err(ApiError::BadRequest)?;
    }
    let emitter = st.0.service.emitter();
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    c.profile_mut().react(&req.id, &req.emoji, unix_ms())?;
                    let (failures, pending) = flush(c, &emitter).await;
                    Ok::<_, ApiError>(json!({"failures": failures, "pending": pending}))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
struct ReadRequest {
    conversation: String,
}

async fn api_read(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<ReadRequest>,
) -> ApiResult {
    st.0.clear_unread(&req.conversation);
    let emitter = st.0.service.emitter();
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let n = c.profile_mut().mark_read(&req.conversation, unix_ms())?;
                    if n > 0 {
                        let _ = flush(c, &emitter).await;
                    }
                    Ok::<_, ApiError>(json!({"read": n}))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
struct TypingRequest {
    conversation: String,
    typing: bool,
}

async fn api_typing(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<TypingRequest>,
) -> ApiResult {
    let sent =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    c.send_typing(&req.conversation, req.typing, Duration::from_secs(10))
                        .await
                        .unwrap_or(false)
                })
            })
            .await?;
    Ok(axum::Json(json!({"sent": sent})))
}

#[derive(Deserialize)]
struct UploadQuery {
    to: String,
    name: String,
    #[serde(default)]
    caption: String,
}

/// A file name safe to create in a directory of our own: no separators, no leading dot,
/// printable, bounded.
pub(crate) fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '/' | '\\' | ':' | '"' | '<' | '>' | '|' | '?' | '*' => '_',
            c => c,
        })
        .take(120)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".to_string()
    } else {
        cleaned
    }
}

async fn api_upload(
    State(st): State<AppState>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult {
    let mut rnd = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut rnd);
    let dir = st.0.media_dir().join(OUTBOX_DIR).join(hex::encode(rnd));
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join(safe_file_name(&q.name));
    match receive_file(&path, body).await {
        Ok(()) => {}
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
    }
    let emitter = st.0.service.emitter();
    let to = q.to.clone();
    let file = path.clone();
    let sent = st
        .0
        .service
        .with(move |c| {
            Box::pin(async move {
                if !is_group_name(&to) && !c.has_conversation(&to)? {
                    c.fetch_account(&to).await?;
                }
                let options = SendFileOptions {
                    caption: q.caption,
                    voice: false,
                    file_name: Some(safe_file_name(&q.name)),
                    view_once: false,
                };
                let id = c.send_file(&to, &file, &options).await?;
                let (failures, pending) = flush(c, &emitter).await;
                Ok::<_, ClientError>(json!({"id": id, "failures": failures, "pending": pending}))
            })
        })
        .await?;
    match sent {
        Ok(v) => Ok(axum::Json(v)),
        Err(e) => {
            // An interrupted upload resumes later from this file; anything else dropped it.
            if !e.is_transient() {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
            Err(e.into())
        }
    }
}

/// Streams the request body to `path`.
async fn receive_file(path: &Path, body: Body) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
        total = total.saturating_add(chunk.len() as u64);
        if total > MAX_UPLOAD_BYTES {
            return Err(ApiError::TooLarge);
        }
        file.write_all(&chunk).await?;
    }
    if total == 0 {
        return Err(ApiError::BadRequest("the file is empty".into()));
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

#[derive(Deserialize)]
struct CreateGroupRequest {
    title: String,
    members: Vec<String>,
}

fn clean_handles(handles: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for h in handles
        .iter()
        .map(|h| h.trim().trim_start_matches('@'))
        .filter(|h| !h.is_empty())
    {
        hushwire_proto::identity::validate_handle(h)
            .map_err(|e| ApiError::BadRequest(format!("{h:?}: {e}")))?;
        if !out.iter().any(|x| x == h) {
            out.push(h.to_string());
        }
    }
    Ok(out)
}

async fn api_create_group(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<CreateGroupRequest>,
) -> ApiResult {
    let members = clean_handles(&req.members)?;
    let emitter = st.0.service.emitter();
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let me = c.identity()?.handle.clone();
                    let members: Vec<String> = members.into_iter().filter(|h| *h != me).collect();
                    if members.is_empty() {
                        return Err(ApiError::BadRequest(
                            "a group needs at least one other member".into(),
                        ));
                    }
                    let name =
                        c.profile_mut()
                            .create_group(&req.title, &members, None, unix_ms())?;
                    let (failures, pending) = flush(c, &emitter).await;
                    Ok(json!({"name": name, "failures": failures, "pending": pending}))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
struct GroupOpRequest {
    group: String,
    op: String,
    #[serde(default)]
    handles: Vec<String>,
    #[serde(default)]
    title: String,
}

async fn api_group_op(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<GroupOpRequest>,
) -> ApiResult {
    if !is_group_name(&req.group) {
        return Err(ApiError::BadRequest(format!(
            "{} is not a group",
            req.group
        )));
    }
    let handles = clean_handles(&req.handles)?;
    if matches!(req.op.as_str(), "add" | "remove") && handles.is_empty() {
        return Err(ApiError::BadRequest("name at least one member".into()));
    }
    let emitter = st.0.service.emitter();
    let v = st
        .0
        .service
        .with(move |c| {
            Box::pin(async move {
                let now = unix_ms();
                let p = c.profile_mut();
                match req.op.as_str() {
                    "add" => p.group_add(&req.group, &handles, now)?,
                    "remove" => p.group_remove(&req.group, &handles, now)?,
                    "leave" => p.group_leave(&req.group, now)?,
                    "rename" => p.group_rename(&req.group, &req.title, now)?,
                    "promote" | "demote" => {
                        for h in &handles {
                            p.group_set_admin(&req.group, h, req.op == "promote", now)?;
                        }
                    }
                    other => {
                        return Err(ApiError::BadRequest(format!("unknown operation {other:?}")));
                    }
                }
                let (failures, pending) = flush(c, &emitter).await;
                Ok(json!({"failures": failures, "pending": pending}))
            })
        })
        .await??;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
struct SettingsRequest {
    read_receipts: Option<bool>,
    presence: Option<String>,
}

async fn api_settings(
    State(st): State<AppState>,
    axum::Json(req): axum::Json<SettingsRequest>,
) -> ApiResult {
    let share = match req.presence.as_deref() {
        None => None,
        Some("everyone") => Some(PresenceShare::Everyone),
        Some("contacts") => Some(PresenceShare::Contacts),
        Some("nobody") => Some(PresenceShare::Nobody),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown presence setting {other:?}"
            )));
        }
    };
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let p = c.profile_mut();
                    if let Some(on) = req.read_receipts {
                        p.set_read_receipts(on)?;
                    }
                    if let Some(share) = share {
                        p.set_presence_share(share)?;
                    }
                    Ok::<_, ApiError>(json!({
                        "read_receipts": p.read_receipts()?,
                        "presence": p.presence_share()?.as_str(),
                    }))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

/// The QR code of `text` as an SVG document.
pub(crate) fn qr_svg(text: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("cannot make a QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .dark_color(qrcode::render::svg::Color("#111111"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

/// Starts linking a new device: returns the link code (and its QR) at once; the
/// outcome arrives later as a `link` event on the WebSocket. While the session waits
/// for the new device (up to three minutes) other commands wait too.
async fn api_link(State(st): State<AppState>) -> ApiResult {
    if st.0.linking.swap(true, Ordering::SeqCst) {
        return Err(ApiError::Conflict(
            "a device link is already waiting".into(),
        ));
    }
    let (code_tx, code_rx) = oneshot::channel::<Zeroizing<String>>();
    let state = st.clone();
    tokio::spawn(async move {
        let emitter = state.0.service.emitter();
        let result = state
            .0
            .service
            .with(move |c| {
                Box::pin(async move {
                    let mut code_tx = Some(code_tx);
                    let mut on_code = move |code: &hushwire_proto::link::LinkCode| {
                        if let Some(tx) = code_tx.take() {
                            let _ = tx.send(Zeroizing::new(code.encode()));
                        }
                    };
                    // The user started this from the app and holds the code: the new
                    // device that presents it is the one they are linking.
                    let mut approve = |_: &str| true;
                    let r = c
                        .link_device(LINK_TIMEOUT, &mut on_code, &mut approve, &mut |e| {
                            emitter.emit(e)
                        })
                        .await;
                    match r {
                        Ok(report) => json!({
                            "type": "link", "ok": true, "device": report.device_id,
                            "name": report.name, "conversations": report.conversations,
                        }),
                        Err(e) => json!({"type": "link", "ok": false, "error": e.to_string()}),
                    }
                })
            })
            .await
            .unwrap_or_else(|e| json!({"type": "link", "ok": false, "error": e.to_string()}));
        state.0.linking.store(false, Ordering::SeqCst);
        let _ = state.0.app_events.send(result);
    });
    let code = tokio::time::timeout(NETWORK_TIMEOUT, code_rx)
        .await
        .map_err(|_| ApiError::Conflict("the server did not open a link session".into()))?
        .map_err(|_| ApiError::Conflict("the link session could not be opened".into()))?;
    let svg = qr_svg(&code)?;
    Ok(axum::Json(json!({
        "code": code.as_str(),
        "svg": svg,
        "timeout_secs": LINK_TIMEOUT.as_secs(),
    })))
}

// ------------------------------------------------------------------ live events

async fn ws(State(st): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| ws_session(st, socket))
}

async fn ws_session(st: AppState, mut socket: WebSocket) {
    let mut events = st.0.service.subscribe();
    let mut app = st.0.app_events.subscribe();
    let hello = json!({"type": "hello", "online": *st.0.service.online().borrow()});
    if socket
        .send(WsMessage::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let out = tokio::select! {
            e = events.recv() => match e {
                Ok(e) => events::to_json(&e),
                Err(broadcast::error::RecvError::Lagged(_)) => json!({"type": "resync"}),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = app.recv() => match e {
                Ok(v) => v,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = socket.recv() => match m {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(_)) => continue,
            },
        };
        if socket
            .send(WsMessage::Text(out.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_file_name("photo.png"), "photo.png");
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(""), "file");
        assert_eq!(safe_file_name("a\u{0}b\nc"), "abc");
        assert!(safe_file_name(&"x".repeat(500)).len() <= 120);
    }

    #[test]
    fn qr_codes_are_svg() {
        let svg = qr_svg("hushwire-link:abc").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("#111111"));
        assert!(!svg.contains("<script"));
    }
}
