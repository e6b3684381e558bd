//! Liveness and readiness endpoints, answered before the app sees the request.

use http::{Method, Request, StatusCode};

use crate::ready::{LifecycleHandle, State};

/// The health endpoints a server answers itself: liveness (`/livez`: 200 while the process
/// runs) and readiness (`/readyz`: 200 only once every service of the lifecycle has started,
/// 503 from the moment the shutdown begins, lame-duck delay included). Only `GET` and `HEAD`
/// are answered; other methods, and every other path, go to the app.
///
/// ```
/// use lameduck::http::Health;
///
/// let health = Health::new().livez("/healthz").readyz("/ready");
/// let readiness_only = Health::new().without_livez();
/// # drop((health, readiness_only));
/// ```
#[derive(Debug, Clone)]
pub struct Health {
    livez: Option<String>,
    readyz: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// `/livez` and `/readyz`.
    pub fn new() -> Self {
        Health {
            livez: Some("/livez".to_owned()),
            readyz: Some("/readyz".to_owned()),
        }
    }

    /// Serves liveness at `path` instead.
    pub fn livez(mut self, path: impl Into<String>) -> Self {
        self.livez = Some(path.into());
        self
    }

    /// Serves readiness at `path` instead.
    pub fn readyz(mut self, path: impl Into<String>) -> Self {
        self.readyz = Some(path.into());
        self
    }

    /// No liveness endpoint.
    pub fn without_livez(mut self) -> Self {
        self.livez = None;
        self
    }

    /// No readiness endpoint.
    pub fn without_readyz(mut self) -> Self {
        self.readyz = None;
        self
    }

    /// The answer to `req`, if it is a health check.
    pub(crate) fn answer<B>(
        &self,
        req: &Request<B>,
        handle: &LifecycleHandle,
    ) -> Option<(StatusCode, &'static str)> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let path = req.uri().path();
        if self.livez.as_deref() == Some(path) {
            return Some((StatusCode::OK, "ok\n"));
        }
        if self.readyz.as_deref() != Some(path) {
            return None;
        }
        Some(match handle.state() {
            State::Ready if handle.accepting() => (StatusCode::OK, "ready\n"),
            State::Ready => (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot accept connections\n",
            ),
            State::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        })
    }
}
