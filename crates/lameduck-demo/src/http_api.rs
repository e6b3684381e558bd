//! The HTTP API (axum): `GET /slow?ms=N`, `GET /fast`, `PUT /kv/{key}`, `GET /kv/{key}`,
//! `GET /events?interval_ms=N` (server-sent ticks, ended at the drain with a `shutdown` event),
//! `GET /ws/ticks?interval_ms=N` (a WebSocket: a tick pushed every N ms, and what the client
//! sends echoed; closed with 1001 "going away" at the drain).
//! `/livez` and `/readyz` are answered by lameduck's `HttpServer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::Message;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use lameduck::Drain;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::IntervalStream;
use tokio_stream::{Stream, StreamExt};

use crate::store::{Store, StoreError};

/// The longest `/slow` waits: a typo must not tie a connection up for a day.
const SLOW_MAX: Duration = Duration::from_secs(600);

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct Api {
    /// The write-behind store.
    pub store: Arc<Store>,
}

/// The router, with its state.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/fast", get(fast))
        .route("/slow", get(slow))
        .route("/events", get(events))
        .route("/ws/ticks", get(ws_ticks))
        .route("/kv/{key}", get(read).put(write))
        .with_state(api)
}

async fn fast() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: u64,
}

/// The timing of a `/slow` request.
#[derive(Serialize, Deserialize, Debug)]
pub struct Slow {
    /// What was asked for.
    pub requested_ms: u64,
    /// How long the handler actually waited.
    pub waited_ms: f64,
}

async fn slow(Query(query): Query<SlowQuery>) -> Json<Slow> {
    tracing::debug!(ms = query.ms, "slow request started");
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(query.ms).min(SLOW_MAX)).await;
    Json(Slow {
        requested_ms: query.ms,
        waited_ms: began.elapsed().as_secs_f64() * 1000.0,
    })
}

#[derive(Deserialize)]
struct EventsQuery {
    interval_ms: Option<u64>,
}

/// The shortest interval between ticks: a typo must not flood the client.
const EVENTS_MIN: Duration = Duration::from_millis(10);

/// Server-sent events: a `tick` every `interval_ms` (1000 by default), until the drain begins;
/// then a last `shutdown` event that tells `EventSource` clients to reconnect in a second
/// (elsewhere: this process's listeners are closed), and a clean end of the body.
async fn events(
    drain: Drain,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let every = Duration::from_millis(query.interval_ms.unwrap_or(1000)).max(EVENTS_MIN);
    let mut n = 0u64;
    let ticks = IntervalStream::new(tokio::time::interval(every)).map(move |_| {
        n += 1;
        Ok(Event::default()
            .event("tick")
            .id(n.to_string())
            .data(n.to_string()))
    });
    Sse::new(lameduck::http::end_at_drain(ticks, &drain, || {
        Ok(Event::default()
            .event("shutdown")
            .retry(Duration::from_secs(1))
            .data("server going away: reconnect"))
    }))
}

/// A WebSocket that pushes `tick N` every `interval_ms` (1000 by default) and echoes the text
/// the client sends. At the drain its socket sends Close 1001 (lameduck's `WebSocketUpgrade`):
/// the next push fails, and the handler reads on until the client's Close (at most until the
/// drain deadline, which cuts what is left).
async fn ws_ticks(
    ws: lameduck::http::ws::WebSocketUpgrade,
    Query(query): Query<EventsQuery>,
) -> Response {
    let every = Duration::from_millis(query.interval_ms.unwrap_or(1000)).max(EVENTS_MIN);
    ws.on_upgrade(move |mut socket| async move {
        let mut ticks = tokio::time::interval(every);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    n += 1;
                    if socket.send(Message::Text(format!("tick {n}").into())).await.is_err() {
                        break;
                    }
                }
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if socket.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        // Closing (ours at the drain, or the client's): read on until the client's Close.
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
}

async fn write(State(api): State<Api>, Path(key): Path<String>, value: String) -> Response {
    if let Err(error) = api.store.write(key.clone(), value).await {
        tracing::error!(%key, "write not taken: {error}");
        let mut refused = (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response();
        if matches!(error, StoreError::Full { .. }) {
            // Not taken: the client may send it again in a moment.
            refused.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        return refused;
    }
    Json(serde_json::json!({ "key": key, "acknowledged": true })).into_response()
}

async fn read(State(api): State<Api>, Path(key): Path<String>) -> Response {
    match api.store.get(&key).await {
        Ok(Some(value)) => value.into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no key `{key}`\n")).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}
