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
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hushwire_client::api::unix_ms;
use hushwire_client::{Client, ClientError, SendFileOptions, Transfer};
use hushwire_e2e::group::is_group_name;
use hushwire_e2e::{
    DeleteScope, E2eError, Event, GroupEvent, MessageState, PresenceShare, ReceiptStatus,
    StoredMessage, TimelineItem,
};
use hushwire_service::{Command, Outcome, Service, ServiceError, ServiceEvent};
use rand::RngCore;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
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
/// Where an opened view-once file is decrypted for the moment it takes to read it into
/// memory, under the profile's `media` directory.
const VIEW_ONCE_DIR: &str = ".view-once";
/// The largest view-once file handed to the browser (it is held in memory once).
const MAX_VIEW_ONCE_BYTES: u64 = 256 * 1024 * 1024;
/// The longest message id accepted (ids are UUIDs).
const MAX_ID_LEN: usize = 64;

/// A view-once message opened in this session: the store erases it, so the timeline
/// shows "Opened" from this record.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    conversation: String,
    from: String,
    at: u64,
}

pub(crate) struct Inner {
    service: Service,
    token: Token,
    port: u16,
    unread: Mutex<HashMap<String, u64>>,
    app_events: broadcast::Sender<Value>,
    linking: AtomicBool,
    opened: Mutex<HashMap<String, Opened>>,
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
            opened: Mutex::new(HashMap::new()),
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

    fn opened_snapshot(&self) -> HashMap<String, Opened> {
        self.opened.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn was_opened(&self, id: &str) -> bool {
        self.opened.lock().is_ok_and(|m| m.contains_key(id))
    }

    fn mark_opened(&self, id: &str, opened: Opened) {
        if let Ok(mut m) = self.opened.lock() {
            m.insert(id.to_string(), opened);
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
    #[error("{1}")]
    Rejected(StatusCode, String),
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
            ApiError::Rejected(status, _) => *status,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Client(e) if !e.is_transient() => StatusCode::BAD_REQUEST,
            ApiError::Client(_) => StatusCode::BAD_GATEWAY,
            ApiError::Stopped(_) | ApiError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// A JSON request body whose rejections (malformed JSON, a missing field, the wrong
/// content type) come back as JSON errors like every other failure.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => {
                let status = rejection.status();
                let status = if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err(ApiError::Rejected(status, rejection.body_text()))
            }
        }
    }
}

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
        .route("/api/edit", post(api_edit))
        .route("/api/delete", post(api_delete))
        .route("/api/timer", post(api_timer))
        .route("/api/view-once", post(api_view_once))
        .route("/api/contact", post(api_contact))
        .route("/api/safety", post(api_safety))
        .route("/api/trust", post(api_trust))
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
    // A view-once file left behind by a crash is not kept.
    let leftovers = state.0.media_dir().join(VIEW_ONCE_DIR);
    tokio::spawn(async move {
        let _ = tokio::fs::remove_dir_all(leftovers).await;
    });
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
    let blocked = p.blocked()?;
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
            "blocked": !group && blocked.contains(&s.name),
            "timer_ms": p.timer(&s.name).unwrap_or(0),
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
            "blocked": blocked,
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
        TimelineItem::Attachment(m, a) if m.view_once => {
            let label = if a.mime.starts_with("image/") {
                "View-once photo"
            } else {
                "View-once file"
            };
            json!({"from": m.from, "outgoing": m.outgoing, "text": label})
        }
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
    let opened = st.0.opened_snapshot();
    let v =
        st.0.service
            .with(move |c| Box::pin(async move { build_timeline(c, &q.c, &opened) }))
            .await??;
    Ok(axum::Json(v))
}

fn build_timeline(
    c: &mut Client,
    conversation: &str,
    opened: &HashMap<String, Opened>,
) -> Result<Value, ApiError> {
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
            TimelineItem::Attachment(m, _) if m.view_once => {
                quoted.insert(&m.id, (&m.from, "View-once message".to_string()));
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
                if m.view_once && (m.viewed || opened.contains_key(&m.id)) {
                    v["opened"] = json!(true);
                }
                v
            }
            TimelineItem::Attachment(m, a) if m.view_once => {
                // Nothing of a view-once file's content (no name, no thumbnail): only
                // whether it is a picture.
                let mut v = message_json(m, &me, &reactions, &receipts, &quoted);
                v["kind"] = json!("attachment");
                v["attachment"] = json!({"image": a.mime.starts_with("image/")});
                v["opened"] = json!(opened.contains_key(&m.id));
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
    // Opened view-once files are erased from the store: an "Opened" line in their place.
    let mut gone: Vec<(&String, &Opened)> = opened
        .iter()
        .filter(|(id, o)| {
            o.conversation == conversation
                && !items.iter().any(|i| match i {
                    TimelineItem::Message(m)
                    | TimelineItem::RelayLink(m)
                    | TimelineItem::Attachment(m, _) => m.id == **id,
                    TimelineItem::Group(_) => false,
                })
        })
        .collect();
    gone.sort_by_key(|(_, o)| o.at);
    for (id, o) in gone {
        let at = out.partition_point(|v| v["at"].as_u64().unwrap_or(0) <= o.at);
        out.insert(
            at,
            json!({
                "kind": "message", "id": id, "from": o.from, "outgoing": false, "at": o.at,
                "text": "", "view_once": true, "opened": true, "edited": false,
                "state": "received", "reply": null, "reactions": [],
            }),
        );
    }
    let timer_ms = p.timer(conversation).unwrap_or(0);
    let blocked = !group && p.blocked()?.iter().any(|b| b == conversation);
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
        "blocked": blocked,
        "timer_ms": timer_ms,
        "timer": hushwire_service::timer_text(timer_ms),
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
    let viewed = m.view_once
        && m.outgoing
        && receipts
            .get(&m.id)
            .is_some_and(|r| r.iter().any(|r| r.status == ReceiptStatus::Viewed));
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
        "viewed": viewed,
        "expires_at": m.expires_at_ms,
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

async fn api_send(State(st): State<AppState>, JsonBody(req): JsonBody<SendRequest>) -> ApiResult {
    if req.text.trim().is_empty() {
        return Err(ApiError::BadRequest("the message is empty".into()));
    }
    if let Some(reply_to) = req.reply_to.as_deref().filter(|r| !r.is_empty()) {
        let id = check_id(reply_to)?;
        let outcome =
            st.0.service
                .command(Command::Reply { id, text: req.text })
                .await?;
        return Ok(axum::Json(outcome_json(&outcome)));
    }
    let emitter = st.0.service.emitter();
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let id = c.queue_text(&req.to, &req.text)?;
                    let (failures, pending) = flush(c, &emitter).await;
                    Ok::<_, ApiError>(json!({"id": id, "failures": failures, "pending": pending}))
                })
            })
            .await??;
    Ok(axum::Json(v))
}

/// What a command did, as the browser reads it.
fn outcome_json(o: &Outcome) -> Value {
    let scope = o.scope.map(|s| match s {
        DeleteScope::Everyone => "everyone",
        DeleteScope::Unsent => "unsent",
        DeleteScope::ForMe => "me",
    });
    json!({"id": o.id, "scope": scope, "failures": o.failures, "pending": o.pending})
}

/// A message id from the browser: a UUID's characters, bounded.
pub(crate) fn check_id(id: &str) -> Result<String, ApiError> {
    let id = id.trim();
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(ApiError::BadRequest("not a message id".into()));
    }
    Ok(id.to_string())
}

/// One handle from the browser (a leading `@` is dropped), checked.
pub(crate) fn check_handle(handle: &str) -> Result<String, ApiError> {
    let h = handle.trim().trim_start_matches('@');
    hushwire_proto::identity::validate_handle(h)
        .map_err(|e| ApiError::BadRequest(format!("{h:?} is not a handle: {e}")))?;
    Ok(h.to_string())
}

/// A conversation name from the browser: a handle or `#GROUP`.
pub(crate) fn check_conversation(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if is_group_name(name) {
        Ok(name.to_string())
    } else {
        check_handle(name)
    }
}

#[derive(Deserialize)]
struct ReactRequest {
    id: String,
    emoji: String,
}

async fn api_react(State(st): State<AppState>, JsonBody(req): JsonBody<ReactRequest>) -> ApiResult {
    if !req.emoji.is_empty() {
        hushwire_e2e::validate_reaction(&req.emoji).map_err(ApiError::BadRequest)?;
    }
    let id = check_id(&req.id)?;
    let outcome =
        st.0.service
            .command(Command::React {
                id,
                emoji: req.emoji,
            })
            .await?;
    Ok(axum::Json(outcome_json(&outcome)))
}

#[derive(Deserialize)]
struct EditRequest {
    id: String,
    text: String,
}

async fn api_edit(State(st): State<AppState>, JsonBody(req): JsonBody<EditRequest>) -> ApiResult {
    let id = check_id(&req.id)?;
    if req.text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the new text is empty (delete the message instead)".into(),
        ));
    }
    let outcome =
        st.0.service
            .command(Command::Edit { id, text: req.text })
            .await?;
    Ok(axum::Json(outcome_json(&outcome)))
}

#[derive(Deserialize)]
struct DeleteRequest {
    id: String,
}

async fn api_delete(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<DeleteRequest>,
) -> ApiResult {
    let id = check_id(&req.id)?;
    let outcome = st.0.service.command(Command::Delete { id }).await?;
    Ok(axum::Json(outcome_json(&outcome)))
}

#[derive(Deserialize)]
struct TimerRequest {
    conversation: String,
    /// `off`, `5m`, `1h`, `7d`, ...
    timer: String,
}

/// The timer of a request, in milliseconds (0: off), within the allowed range.
pub(crate) fn timer_of(text: &str) -> Result<u64, ApiError> {
    hushwire_service::parse_timer(text).map_err(ApiError::BadRequest)
}

async fn api_timer(State(st): State<AppState>, JsonBody(req): JsonBody<TimerRequest>) -> ApiResult {
    let conversation = check_conversation(&req.conversation)?;
    let timer_ms = timer_of(&req.timer)?;
    let outcome =
        st.0.service
            .command(Command::Timer {
                conversation,
                timer_ms,
            })
            .await?;
    let mut v = outcome_json(&outcome);
    v["timer_ms"] = json!(timer_ms);
    v["timer"] = json!(hushwire_service::timer_text(timer_ms));
    Ok(axum::Json(v))
}

/// What the browser may do about another account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContactAction {
    /// Accept their message request.
    Accept,
    /// Delete their message request (a new message is a request again).
    Decline,
    /// Block them.
    Block,
    /// Take a block back.
    Unblock,
}

impl ContactAction {
    pub(crate) fn parse(action: &str) -> Result<Self, ApiError> {
        Ok(match action {
            "accept" => Self::Accept,
            "decline" => Self::Decline,
            "block" => Self::Block,
            "unblock" => Self::Unblock,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown action {other:?} (accept, decline, block or unblock)"
                )));
            }
        })
    }
}

#[derive(Deserialize)]
struct ContactRequest {
    handle: String,
    action: String,
}

async fn api_contact(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<ContactRequest>,
) -> ApiResult {
    let action = ContactAction::parse(&req.action)?;
    let handle = check_handle(&req.handle)?;
    let command = match action {
        ContactAction::Accept => Command::Accept { handle },
        ContactAction::Block => Command::Block { handle },
        ContactAction::Unblock => Command::Unblock { handle },
        ContactAction::Decline => {
            // Local only: nothing to send.
            st.0.clear_unread(&handle);
            st.0.service
                .with(move |c| Box::pin(async move { c.profile_mut().decline(&handle) }))
                .await??;
            return Ok(axum::Json(json!({"failures": [], "pending": null})));
        }
    };
    let outcome = st.0.service.command(command).await?;
    Ok(axum::Json(outcome_json(&outcome)))
}

#[derive(Deserialize)]
struct SafetyRequest {
    handle: String,
    /// The user compared the digits with the contact: mark them verified.
    #[serde(default)]
    mark: bool,
}

/// The safety number with a contact, from the account key fetched now. A key that
/// changed since it was pinned gives `{"changed": true}` and no number: the user
/// accepts it first (`/api/trust`), then compares.
async fn api_safety(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<SafetyRequest>,
) -> ApiResult {
    let handle = check_handle(&req.handle)?;
    match st.0.service.safety_number(&handle, req.mark).await {
        Ok(n) => Ok(axum::Json(json!({
            "handle": handle,
            "changed": false,
            "digits": n.digits,
            "verified": n.verified,
        }))),
        Err(ClientError::E2e(E2eError::IdentityChanged { .. })) => {
            Ok(axum::Json(json!({"handle": handle, "changed": true})))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct HandleRequest {
    handle: String,
}

/// Accepts a contact's changed account key.
async fn api_trust(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<HandleRequest>,
) -> ApiResult {
    let handle = check_handle(&req.handle)?;
    st.0.service.trust(&handle).await?;
    Ok(axum::Json(json!({"trusted": true})))
}

#[derive(Deserialize)]
struct ViewOnceRequest {
    conversation: String,
    id: String,
}

/// Percent-encodes `text` for a header value (the browser decodes it with
/// `decodeURIComponent`).
pub(crate) fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens a received view-once message once: the file is decrypted into a private
/// directory under the profile, read into memory and deleted at once, and its bytes are
/// the answer (never cached). A text-only message comes back as JSON. A second open is
/// refused.
async fn api_view_once(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<ViewOnceRequest>,
) -> Result<Response, ApiError> {
    let id = check_id(&req.id)?;
    let conversation = check_conversation(&req.conversation)?;
    if st.0.was_opened(&id) {
        return Err(ApiError::Conflict(
            "this view-once message was opened already".into(),
        ));
    }
    // What it is (from the timeline) before it is erased.
    let (sid, sconv) = (id.clone(), conversation.clone());
    let found =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let found = c
                        .profile()
                        .timeline(&sconv)?
                        .into_iter()
                        .find_map(|i| match i {
                            TimelineItem::Message(m) if m.id == sid => Some((m, None)),
                            TimelineItem::Attachment(m, a) if m.id == sid => Some((m, Some(a))),
                            _ => None,
                        });
                    Ok::<_, ApiError>(found)
                })
            })
            .await??;
    let Some((message, info)) = found else {
        return Err(ApiError::NotFound);
    };
    if !message.view_once || message.outgoing {
        return Err(ApiError::BadRequest(
            "only received view-once messages can be opened".into(),
        ));
    }
    let mut rnd = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut rnd);
    let dir = st.0.media_dir().join(VIEW_ONCE_DIR).join(hex::encode(rnd));
    let opened =
        st.0.service
            .open_view_once(&id, dir.clone(), NETWORK_TIMEOUT * 4)
            .await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.into());
        }
    };
    st.0.mark_opened(
        &id,
        Opened {
            conversation,
            from: message.from.clone(),
            at: message.sent_at_ms,
        },
    );
    let bytes = match &opened.path {
        Some(path) => {
            let read = async {
                let len = tokio::fs::metadata(path).await?.len();
                if len > MAX_VIEW_ONCE_BYTES {
                    return Ok(None);
                }
                tokio::fs::read(path).await.map(Some)
            }
            .await;
            // Gone from the disk before anything else happens.
            let _ = tokio::fs::remove_file(path).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            match read? {
                Some(b) => Some(b),
                None => return Err(ApiError::TooLarge),
            }
        }
        None => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            None
        }
    };
    let mut r = match bytes {
        None => {
            let body = json!({"kind": "text", "from": opened.from, "text": opened.text});
            let mut r = Response::new(Body::from(body.to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Some(bytes) => {
            let (name, mime) = match &info {
                Some(a) => (safe_file_name(&a.file_name), a.mime.as_str()),
                None => ("file".to_string(), ""),
            };
            let (mime, disposition) = match inline_mime(mime).filter(|m| m.starts_with("image/")) {
                Some(m) => (m, format!("inline; filename=\"{}\"", header_text(&name))),
                None => (
                    "application/octet-stream",
                    format!("attachment; filename=\"{}\"", header_text(&name)),
                ),
            };
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            for (k, v) in [
                ("x-hushwire-from", header_text(&opened.from)),
                ("x-hushwire-text", header_text(&opened.text)),
                ("x-hushwire-name", header_text(&name)),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            r
        }
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[derive(Deserialize)]
struct ReadRequest {
    conversation: String,
}

async fn api_read(State(st): State<AppState>, JsonBody(req): JsonBody<ReadRequest>) -> ApiResult {
    st.0.clear_unread(&req.conversation);
    let conversation = check_conversation(&req.conversation)?;
    st.0.service
        .command(Command::MarkRead { conversation })
        .await?;
    Ok(axum::Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct TypingRequest {
    conversation: String,
    typing: bool,
}

async fn api_typing(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<TypingRequest>,
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
    /// Receivers open it once; then it is gone.
    #[serde(default)]
    view_once: bool,
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
                    view_once: q.view_once,
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
    JsonBody(req): JsonBody<CreateGroupRequest>,
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
    JsonBody(req): JsonBody<GroupOpRequest>,
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

/// `everyone`, `contacts` or `nobody`.
pub(crate) fn presence_of(text: &str) -> Result<PresenceShare, ApiError> {
    match text {
        "everyone" => Ok(PresenceShare::Everyone),
        "contacts" => Ok(PresenceShare::Contacts),
        "nobody" => Ok(PresenceShare::Nobody),
        other => Err(ApiError::BadRequest(format!(
            "unknown presence setting {other:?} (everyone, contacts or nobody)"
        ))),
    }
}

async fn api_settings(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<SettingsRequest>,
) -> ApiResult {
    let share = req.presence.as_deref().map(presence_of).transpose()?;
    if let Some(on) = req.read_receipts {
        st.0.service.command(Command::ReadReceipts(on)).await?;
    }
    if let Some(share) = share {
        st.0.service.command(Command::Presence(share)).await?;
    }
    let v =
        st.0.service
            .with(move |c| {
                Box::pin(async move {
                    let p = c.profile();
                    Ok::<_, ApiError>(json!({
                        "read_receipts": p.read_receipts()?,
                        "presence": p.presence_share()?.as_str(),
                        "blocked": p.blocked()?,
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
/// for the new device (up to three minutes) the app goes on as usual.
async fn api_link(State(st): State<AppState>) -> ApiResult {
    if st.0.linking.swap(true, Ordering::SeqCst) {
        return Err(ApiError::Conflict(
            "a device link is already waiting".into(),
        ));
    }
    // The client is held only to open the session and to finish it: while the new
    // device is awaited it keeps receiving.
    let opened =
        st.0.service
            .with(|c| Box::pin(async move { c.open_link(LINK_TIMEOUT).await }))
            .await;
    let pending = match opened {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            st.0.linking.store(false, Ordering::SeqCst);
            return Err(ApiError::Conflict(format!(
                "the link session could not be opened: {e}"
            )));
        }
        Err(e) => {
            st.0.linking.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
    };
    let code = Zeroizing::new(pending.code().encode());
    let state = st.clone();
    tokio::spawn(async move {
        let service = state.0.service.clone();
        let emitter = service.emitter();
        let result = match pending.wait_for_device().await {
            Ok(request) => service
                .with(move |c| {
                    Box::pin(async move {
                        // The user started this from the app and holds the code: the new
                        // device that presents it is the one they are linking.
                        c.finish_link(pending, request, true, &mut |e| emitter.emit(e))
                            .await
                    })
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => {
                let _ = service
                    .with(move |c| Box::pin(async move { c.close_link(&pending).await }))
                    .await;
                Err(e.to_string())
            }
        };
        let event = match result {
            Ok(report) => json!({
                "type": "link", "ok": true, "device": report.device_id,
                "name": report.name, "conversations": report.conversations,
            }),
            Err(e) => json!({"type": "link", "ok": false, "error": e}),
        };
        state.0.linking.store(false, Ordering::SeqCst);
        let _ = state.0.app_events.send(event);
    });
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
    fn ids_handles_and_conversations_are_checked() {
        assert_eq!(
            check_id(" 0190a3c4-7b1e-7c2d-9e8f-0123456789ab ").unwrap(),
            "0190a3c4-7b1e-7c2d-9e8f-0123456789ab"
        );
        for bad in ["", "../x", "abc def", "0190'; DROP", &"a".repeat(65)] {
            let e = check_id(bad).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}");
        }
        assert_eq!(check_handle("@bob").unwrap(), "bob");
        assert!(check_handle("").is_err());
        assert!(check_handle("bob smith").is_err());
        assert!(check_conversation("bob").is_ok());
        assert!(check_conversation("no/slashes").is_err());
    }

    #[test]
    fn timers_and_actions_are_parsed() {
        assert_eq!(timer_of("off").unwrap(), 0);
        assert_eq!(timer_of("5m").unwrap(), 300_000);
        assert_eq!(timer_of("90d").unwrap(), 90 * 86_400_000);
        for bad in ["1s", "91d", "soon", ""] {
            assert!(
                matches!(timer_of(bad), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        assert_eq!(
            ContactAction::parse("accept").unwrap(),
            ContactAction::Accept
        );
        assert_eq!(ContactAction::parse("block").unwrap(), ContactAction::Block);
        assert_eq!(
            ContactAction::parse("unblock").unwrap(),
            ContactAction::Unblock
        );
        assert_eq!(
            ContactAction::parse("decline").unwrap(),
            ContactAction::Decline
        );
        let e = ContactAction::parse("ban").unwrap_err();
        assert!(e.to_string().contains("unknown action"), "{e}");
        assert_eq!(presence_of("contacts").unwrap(), PresenceShare::Contacts);
        assert!(presence_of("friends").is_err());
    }

    #[test]
    fn request_bodies_parse() {
        let r: TimerRequest =
            serde_json::from_str(r#"{"conversation":"bob","timer":"1h"}"#).unwrap();
        assert_eq!((r.conversation.as_str(), r.timer.as_str()), ("bob", "1h"));
        let r: EditRequest = serde_json::from_str(r#"{"id":"01","text":"new"}"#).unwrap();
        assert_eq!(r.text, "new");
        assert!(serde_json::from_str::<EditRequest>(r#"{"id":"01"}"#).is_err());
        assert!(serde_json::from_str::<ContactRequest>(r#"{"handle":"bob"}"#).is_err());
        let r: ViewOnceRequest =
            serde_json::from_str(r#"{"conversation":"bob","id":"01"}"#).unwrap();
        assert_eq!(r.id, "01");
        let q: UploadQuery =
            serde_json::from_str(r#"{"to":"bob","name":"a.png","view_once":true}"#).unwrap();
        assert!(q.view_once);
    }

    #[test]
    fn header_text_is_percent_encoded() {
        assert_eq!(header_text("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(
            header_text("line\r\nInjected: 1"),
            "line%0D%0AInjected%3A%201"
        );
        assert_eq!(header_text("line\nx"), "line%0Ax");
        assert_eq!(header_text("plain-text_1.png"), "plain-text_1.png");
    }

    #[test]
    fn outcomes_name_the_delete_scope() {
        let o = Outcome {
            scope: Some(DeleteScope::ForMe),
            ..Outcome::default()
        };
        let v = outcome_json(&o);
        assert_eq!(v["scope"], "me");
        assert_eq!(v["failures"], json!([]));
    }

    #[test]
    fn qr_codes_are_svg() {
        let svg = qr_svg("hushwire-link:abc").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("#111111"));
        assert!(!svg.contains("<script"));
    }
}
