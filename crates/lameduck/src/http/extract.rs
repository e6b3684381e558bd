//! The [`Drain`] as an axum extractor: `async fn handler(drain: lameduck::Drain)`.

use axum_core::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use crate::drain::Drain;
use crate::http::request::serving_drain;

/// Takes the service's [`Drain`]: [`HttpServer`](super::HttpServer) makes it findable while it
/// runs the handler (a `Drain` in the request's extensions, if any, comes first). A handler
/// uses it to end a long-lived response (a stream, a WebSocket) when the drain begins, or to
/// send a last message when the deadline has passed.
impl<S: Send + Sync> FromRequestParts<S> for Drain {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let found = parts.extensions.get::<Drain>().cloned();
        found.or_else(serving_drain).ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "lameduck::Drain is not in the request's extensions: serve the app with lameduck::http::HttpServer\n",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_a_lameduck_server_the_extractor_says_why() {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        let rejection = Drain::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        assert_eq!(rejection.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(rejection.1.contains("HttpServer"));
    }
}
