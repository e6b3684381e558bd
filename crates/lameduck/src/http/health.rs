//! Liveness and readiness endpoints, answered before the app sees the request.

use std::borrow::Cow;

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use crate::ready::{LifecycleHandle, State};

/// The health endpoints a server answers itself: liveness (`/livez`: 200 while the process
/// runs) and readiness (`/readyz`: 200 only once every service of the lifecycle has started,
/// 503 from the moment the shutdown begins, lame-duck delay included, and 503 while anything
/// is [impaired](LifecycleHandle::impair), with a line `not ready: <who>: <reason>` for
/// each). Only `GET` and `HEAD` are answered; other methods, and every other path, go to the
/// app.
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

    /// The answer to `req`, if it is a health check: [`respond`](Self::respond)'s, as the
    /// response body takes it.
    pub(crate) fn answer<B>(
        &self,
        req: &Request<B>,
        handle: &LifecycleHandle,
    ) -> Option<(StatusCode, Bytes)> {
        self.respond(req, handle).map(|(status, body)| {
            let body = match body {
                Cow::Borrowed(body) => Bytes::from_static(body.as_bytes()),
                Cow::Owned(body) => Bytes::from(body),
            };
            (status, body)
        })
    }

    /// The answer to `req`, if it is a health check. Borrowed, without an allocation, but for
    /// the one naming what is [impaired](LifecycleHandle::impair).
    pub(crate) fn respond<B>(
        &self,
        req: &Request<B>,
        handle: &LifecycleHandle,
    ) -> Option<(StatusCode, Cow<'static, str>)> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let path = req.uri().path();
        if self.livez.as_deref() == Some(path) {
            return Some((StatusCode::OK, Cow::Borrowed("ok\n")));
        }
        if self.readyz.as_deref() != Some(path) {
            return None;
        }
        let unavailable =
            |body: &'static str| (StatusCode::SERVICE_UNAVAILABLE, Cow::Borrowed(body));
        Some(match handle.state() {
            // The probe's hot path: no allocation.
            State::Ready if !handle.is_impaired() => (StatusCode::OK, Cow::Borrowed("ready\n")),
            // Gone since, maybe: then ready.
            State::Ready => match handle.impaired_text() {
                Some(text) => (StatusCode::SERVICE_UNAVAILABLE, Cow::Owned(text)),
                None => (StatusCode::OK, Cow::Borrowed("ready\n")),
            },
            State::Starting => unavailable("starting\n"),
            _ => unavailable("draining\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ready::Control;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn readyz_names_each_impairment_while_ready_and_is_ready_again_without() {
        let control = Control::new();
        let handle = control.handle.clone();
        let health = Health::new();
        let readyz = || {
            let (status, body) = health.answer(&get("/readyz"), &handle).unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        assert_eq!(
            readyz(),
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
        );
        control.set(State::Ready);
        assert_eq!(readyz(), (StatusCode::OK, "ready\n".to_owned()));
        assert!(matches!(
            health.respond(&get("/readyz"), &handle),
            Some((StatusCode::OK, Cow::Borrowed("ready\n")))
        ));

        let store = handle.impair("store", "flush failing: database is locked");
        let http = handle.impair("http", "cannot accept connections:\r\nEMFILE");
        assert_eq!(
            readyz(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: store: flush failing: database is locked\n\
                 not ready: http: cannot accept connections:  EMFILE\n"
                    .to_owned()
            )
        );
        drop(store);
        assert_eq!(
            readyz(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: http: cannot accept connections:  EMFILE\n".to_owned()
            )
        );
        assert_eq!(
            health.answer(&get("/livez"), &handle),
            Some((StatusCode::OK, Bytes::from_static(b"ok\n"))),
            "alive all along"
        );
        drop(http);
        assert_eq!(readyz(), (StatusCode::OK, "ready\n".to_owned()));

        // Impaired or not, the shutdown says it is one.
        let _late = handle.impair("store", "flush failing");
        control.set(State::Draining);
        assert_eq!(
            readyz(),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        );
    }
}
