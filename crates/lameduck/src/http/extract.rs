//! The [`Drain`] as an axum extractor: `async fn handler(drain: lameduck::Drain)`.

use axum_core::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use crate::drain::Drain;

/// Takes the service's [`Drain`] from the request, where [`HttpServer`](super::HttpServer) puts
/// it. A handler uses it to end a long-lived response (a stream, a WebSocket) when the drain
/// begins, or to send a last message when the deadline has passed.
impl<S: Send + Sync> FromRequestParts<S> for Drain {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Drain>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "lameduck::Drain is not in the request's extensions: serve the app with lameduck::http::HttpServer\n",
        ))
    }
}
