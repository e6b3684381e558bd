//! The HTTP API (axum): `GET /slow?ms=N`, `GET /fast`, `PUT /kv/{key}`, `GET /kv/{key}`.
//! `/livez` and `/readyz` are answered by lameduck's `HttpServer`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

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
