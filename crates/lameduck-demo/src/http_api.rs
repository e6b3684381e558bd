//! The HTTP API (axum): `GET /slow?ms=N`, `GET /fast`, `PUT /kv/{key}`, `GET /kv/{key}`,
//! `GET /events?interval_ms=N` (server-sent ticks, ended at the drain with a `shutdown` event).
//! `/livez` and `/readyz` are answered by lameduck's `HttpServer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
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
