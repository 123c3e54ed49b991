//! The HTTP transport: `POST /api/v1/rpc`, `GET /api/v1/events` (Server-Sent Events),
//! `GET /api/v1/check`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use hushwire_service::Service;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use crate::Token;
use crate::lines::{MAX_LINE, next_events};
use crate::queue::EventQueue;
use crate::rpc::{Methods, notification};

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) methods: Methods,
    pub(crate) queue: EventQueue,
    pub(crate) service: Service,
    /// Required on every request when set.
    pub(crate) token: Option<Arc<Token>>,
}

/// The router (public for in-process tests through [`crate::Daemon::router`]).
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/rpc", post(rpc))
        .route("/api/v1/events", get(events))
        .route("/api/v1/check", get(check))
        .layer(DefaultBodyLimit::max(MAX_LINE))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({"error": "a valid bearer token is required"})),
    )
        .into_response()
}

async fn auth(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())));
        if !ok {
            return unauthorized();
        }
    }
    next.run(request).await
}

async fn rpc(State(state): State<HttpState>, body: Bytes) -> Response {
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => {
            return axum::Json(crate::rpc::error_response(
                serde_json::Value::Null,
                &crate::rpc::RpcError {
                    code: crate::rpc::code::PARSE,
                    message: "parse error: not UTF-8".into(),
                    data: None,
                },
            ))
            .into_response();
        }
    };
    match state.methods.handle_text(text).await {
        Some(v) => axum::Json(v).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn check(State(state): State<HttpState>) -> Response {
    let online = *state.service.online().borrow();
    axum::Json(json!({"ok": true, "online": online})).into_response()
}

struct Cursor {
    queue: EventQueue,
    pos: u64,
    latest: tokio::sync::watch::Receiver<u64>,
    buffered: VecDeque<(u64, String)>,
    /// The last event handed to the connection: recorded as delivered when the next one
    /// is asked for (the previous one was taken by the connection).
    handed: Option<u64>,
}

async fn events(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let pos = match resume {
        Some(p) => p,
        None => match state.queue.delivered().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "event queue failed");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        },
    };
    let cursor = Cursor {
        latest: state.queue.latest(),
        queue: state.queue.clone(),
        pos,
        buffered: VecDeque::new(),
        handed: None,
    };
    Sse::new(stream(cursor))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream(cursor: Cursor) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(cursor, |mut c| async move {
        if let Some(seq) = c.handed.take()
            && let Err(e) = c.queue.set_delivered(seq).await
        {
            tracing::warn!(error = %e, "event queue failed");
            return None;
        }
        if c.buffered.is_empty() {
            match next_events(&c.queue, c.pos, &mut c.latest).await {
                Ok(events) => {
                    for e in events {
                        c.pos = e.seq;
                        c.buffered
                            .push_back((e.seq, notification(&e.body).to_string()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event queue failed");
                    return None;
                }
            }
        }
        let (seq, data) = c.buffered.pop_front()?;
        c.handed = Some(seq);
        let event = SseEvent::default()
            .id(seq.to_string())
            .event("receive")
            .data(data);
        Some((Ok(event), c))
    })
}
