//! What every connection of one server shares: its configuration, its drain, whether its
//! listeners are still open, and the bounds an app and its response bodies meet.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;
use crate::error::BoxError;
use crate::gated::Gated;
use crate::http::accept::Slots;
use crate::http::age::MaxAge;
use crate::http::body::RequestBody;
use crate::http::health::Health;
use crate::http::timeouts::Timeouts;
use crate::ready::LifecycleHandle;

/// What every connection of a server shares.
pub(crate) struct Shared {
    /// The service's name.
    pub(crate) name: Arc<str>,
    pub(crate) drain: Drain,
    pub(crate) handle: LifecycleHandle,
    pub(crate) health: Option<Health>,
    pub(crate) builder: auto::Builder<ConnExecutor>,
    /// gRPC: what the drain deadline cuts off ends with status UNAVAILABLE, not a reset.
    pub(crate) grpc: bool,
    /// The HTTP versions spoken: a connection that starts with another is closed at once.
    pub(crate) protocols: Protocols,
    /// The handshake, header and idle timeouts.
    pub(crate) timeouts: Timeouts,
    /// The maximum connection age, if there is one.
    pub(crate) max_age: Option<MaxAge>,
    /// See [`HttpServer::body_timeout`](crate::http::HttpServer::body_timeout) (`None`: off).
    pub(crate) body_timeout: Option<Duration>,
    /// Its listeners: connections begin to close once all are.
    pub(crate) listeners: OpenListeners,
    /// The connection cap.
    pub(crate) slots: Slots,
    /// The TLS handshakes' configuration, if it serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::http::tls::Acceptor>,
}

impl Shared {
    /// Whether every listener is closed: connections are closing.
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        self.listeners.closed_now.load(Ordering::Acquire)
    }

    /// Resolves once every listener is closed: connections begin to close. Polled at every
    /// wake of a connection's task, it is an atomic load until then.
    pub(crate) fn closing(&self) -> Gated<&AtomicBool> {
        Gated::new(self.listeners.closed.clone(), &self.listeners.closed_now)
    }
}

/// A server's listeners, as its connections see them: only once every one is closed (or handed
/// over) do connections begin to end, so that a client that reconnects when its connection
/// closes finds the port refusing (and goes elsewhere), not a listener about to reset it.
pub(crate) struct OpenListeners {
    /// Listeners still open; the last to close cancels `closed`.
    count: AtomicUsize,
    /// Set just before `closed` is cancelled: what a request asks (an atomic load, where the
    /// token's own check takes its lock).
    closed_now: AtomicBool,
    closed: CancellationToken,
}

impl OpenListeners {
    /// `count` listeners, each to be held open by a [`ListenerOpen`].
    pub(crate) fn new(count: usize) -> Self {
        OpenListeners {
            count: AtomicUsize::new(count),
            closed_now: AtomicBool::new(false),
            closed: CancellationToken::new(),
        }
    }
}

/// Held by an accept loop while its listener is open: however the loop ends (the drain, an
/// error, the deadline's abort), the last one dropped lets the connections begin to close.
pub(crate) struct ListenerOpen(Arc<Shared>);

impl ListenerOpen {
    /// One of `shared`'s listeners (counted in [`OpenListeners::new`]), open until dropped.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ListenerOpen(shared)
    }
}

impl Drop for ListenerOpen {
    fn drop(&mut self) {
        let listeners = &self.0.listeners;
        if listeners.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            listeners.closed_now.store(true, Ordering::Release);
            listeners.closed.cancel();
        }
    }
}

/// Which HTTP versions a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    Both,
    Http1,
    Http2,
}

impl Protocols {
    /// Their names in a TLS handshake's ALPN, the preferred first.
    #[cfg(feature = "tls")]
    pub(crate) fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocols::Both => &[b"h2", b"http/1.1"],
            Protocols::Http1 => &[b"http/1.1"],
            Protocols::Http2 => &[b"h2"],
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("health", &self.health)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

/// What an app is to a server's accept loop and connections: a tower service of
/// `RequestBody` requests, cloned for each connection, whose responses have bodies `B`. One
/// name for the bounds they share (the public `Service` impl spells them out).
pub(crate) trait App<B>:
    tower_service::Service<
        Request<RequestBody>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> App<B> for S
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// What a response body of an app's is to a connection.
pub(crate) trait AppBody:
    http_body::Body<Data: From<Bytes> + Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> AppBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: From<Bytes> + Send,
    B::Error: Into<BoxError>,
{
}

/// Runs hyper's background work (the tasks of HTTP/2 streams) on the runtime. A stream task
/// ends with its stream; at the drain deadline, the request in it ends at its next poll (the
/// request watches the deadline only while it waits, so a quick one costs nothing).
///
/// It is the executor of the [`auto::Builder`] that
/// [`HttpServer::configure`](crate::http::HttpServer::configure) tunes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnExecutor;

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}
