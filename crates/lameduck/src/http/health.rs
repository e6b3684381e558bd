//! Liveness and readiness endpoints, answered before the app sees the request.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

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

    /// The answer to `req`, if it is a health check, with a body that lives for good (what the
    /// response body takes today): [`respond`](Self::respond)'s, interned.
    pub(crate) fn answer<B>(
        &self,
        req: &Request<B>,
        handle: &LifecycleHandle,
    ) -> Option<(StatusCode, &'static str)> {
        self.respond(req, handle).map(|(status, body)| {
            let body = match body {
                Cow::Borrowed(body) => body,
                Cow::Owned(body) => interned(body),
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
            // The probe's hot path: no mutex, no allocation.
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

/// At most this many distinct impaired answers are kept, for the life of the process (each at
/// most 9 lines of at most 200 characters: below 2 KB in ASCII, 7 KB at worst): under 1 MB in
/// all. Past that, a new text is answered with [`TOO_MANY`], which does not name them.
const MAX_INTERNED: usize = 128;

/// The answer naming the impairments once [`MAX_INTERNED`] distinct ones have been given.
const TOO_MANY: &str = "not ready: impaired (the reasons changed too often to show them here)\n";

/// `text` as a `&'static str`, each distinct text leaked once, at most [`MAX_INTERNED`] of them.
///
/// Why: the response body of the server's own answers takes a `&'static str` (no allocation
/// per probe), and the impaired answer is built at run time. The texts repeat (the same
/// reasons, while they last), so a few are kept for good; a reason that changes at every
/// probe (a counter in it, say) ends at [`TOO_MANY`] instead of growing the memory. Gone once
/// the body can carry an owned text ([`Health::respond`]'s `Cow`).
fn interned(text: String) -> &'static str {
    static KEPT: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    intern(&KEPT, text)
}

fn intern(kept: &Mutex<BTreeSet<&'static str>>, text: String) -> &'static str {
    let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = kept.get(text.as_str()) {
        return known;
    }
    if kept.len() >= MAX_INTERNED {
        return TOO_MANY;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    kept.insert(leaked);
    leaked
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
        let readyz = || health.answer(&get("/readyz"), &handle).unwrap();
        assert_eq!(readyz(), (StatusCode::SERVICE_UNAVAILABLE, "starting\n"));
        control.set(State::Ready);
        assert_eq!(readyz(), (StatusCode::OK, "ready\n"));
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
            )
        );
        // The same text is the same leaked one.
        assert!(std::ptr::eq(readyz().1, readyz().1));
        drop(store);
        assert_eq!(
            readyz(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: http: cannot accept connections:  EMFILE\n"
            )
        );
        assert_eq!(
            health.answer(&get("/livez"), &handle),
            Some((StatusCode::OK, "ok\n")),
            "alive all along"
        );
        drop(http);
        assert_eq!(readyz(), (StatusCode::OK, "ready\n"));

        // Impaired or not, the shutdown says it is one.
        let _late = handle.impair("store", "flush failing");
        control.set(State::Draining);
        assert_eq!(readyz(), (StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
    }

    #[test]
    fn interning_keeps_a_bounded_number_of_texts() {
        let kept = Mutex::new(BTreeSet::new());
        let first = intern(&kept, "text 0".to_owned());
        assert_eq!(first, "text 0");
        assert!(std::ptr::eq(first, intern(&kept, "text 0".to_owned())));
        let answers: Vec<&str> = (1..=MAX_INTERNED)
            .map(|i| intern(&kept, format!("text {i}")))
            .collect();
        assert_eq!(
            answers[MAX_INTERNED - 2],
            format!("text {}", MAX_INTERNED - 1)
        );
        assert_eq!(answers[MAX_INTERNED - 1], TOO_MANY, "past the bound");
        assert_eq!(kept.lock().unwrap().len(), MAX_INTERNED);
        assert!(
            std::ptr::eq(first, intern(&kept, "text 0".to_owned())),
            "kept"
        );
    }
}
