//! The admin listener (`--admin`): `/metrics` in the Prometheus text format (the exporter
//! crate's, not formatted here), beside the `/livez` and `/readyz` every `HttpServer` answers.
//! It is a service drained last: it serves through the lame-duck delay, the drain and the
//! hooks, so that a scraper sees the whole shutdown, and closes once the hooks are over.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder, process-wide: every series lameduck records (and the
/// demo's own, were there any) from now on is in what `handle.render()` returns. Call it before
/// building the lifecycle.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// The admin routes.
pub fn router(metrics: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    metrics.render(),
                )
            }
        }),
    )
}
