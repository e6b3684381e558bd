//! The limits of normal serving: how long a client may take before it has shown it speaks
//! HTTP, to send a request head, to send the next request, to keep a request body coming, and
//! how many connections a server holds at once. Each has a safe default and a setter on
//! [`HttpServer`](super::HttpServer) and [`GrpcServer`](crate::grpc::GrpcServer).

use std::time::Duration;

/// The default [handshake timeout](super::HttpServer::handshake_timeout): Go's HTTP/2 server
/// closes a connection that sends no preface within 10 s.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [header timeout](super::HttpServer::header_timeout): hyper's header-read
/// timeout, kept.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [idle timeout](super::HttpServer::idle_timeout): above the idle timeouts of the
/// balancers and proxies in front of most services (AWS ALB and nginx's upstream keep-alive:
/// 60 s), so that they close an idle connection first and never send a request into one this
/// server is closing.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The default [body timeout](super::HttpServer::body_timeout) of an HTTP server: nginx's
/// `client_body_timeout` is 60 s, Apache's `RequestReadTimeout` body 20 s.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [grace after the maximum connection
/// age](super::HttpServer::max_connection_age_grace): what the drain deadline is by default.
pub(crate) const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The default jitter of the [maximum connection age](super::HttpServer::max_connection_age):
/// ±10 %, as grpc-go's, so that connections opened together do not all go at once.
pub(crate) const MAX_CONNECTION_AGE_JITTER: f64 = 0.1;

/// The default [connection cap](super::HttpServer::max_connections): well above what one
/// server of a process holds in normal use (10,000 idle keep-alive connections are a
/// benchmark), well below what exhausts a machine.
pub(crate) const MAX_CONNECTIONS: usize = 16_384;

/// A server's limits. A zero duration turns its timeout off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From the accept to a first complete request head (HTTP/1), or the HTTP/2 preface and
    /// the start of a frame after it, protocol sniffing included.
    pub(crate) handshake_timeout: Duration,
    /// HTTP/1: from the first byte of a request head to its end (after the first request).
    pub(crate) header_timeout: Duration,
    /// From the end of the last response (or the accept) with nothing in flight, to the close
    /// (HTTP/1) or GOAWAY (HTTP/2).
    pub(crate) idle_timeout: Duration,
    /// How long a request body the app waits for may go without data.
    pub(crate) body_timeout: Duration,
    /// Connections open at once; at the cap, newcomers wait in the kernel's queue.
    pub(crate) max_connections: usize,
    /// How long a connection may live (jittered); then GOAWAY or `Connection: close`.
    pub(crate) max_connection_age: Duration,
    /// After its age, how long what it still carries may take.
    pub(crate) max_connection_age_grace: Duration,
    /// The fraction by which each connection's age is moved, up or down, at random.
    pub(crate) max_connection_age_jitter: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connection_age: Duration::ZERO,
            max_connection_age_grace: MAX_CONNECTION_AGE_GRACE,
            max_connection_age_jitter: MAX_CONNECTION_AGE_JITTER,
        }
    }
}

/// A timeout as the timers use it: `None` when off (zero, or too far to count).
pub(crate) fn on(timeout: Duration) -> Option<Duration> {
    // A century is "off" too: an `Instant` that far out may not exist.
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    Some(timeout).filter(|t| !t.is_zero() && *t < FAR)
}
