//! The limits of normal serving: how long a client may take before it has shown it speaks
//! HTTP, and how many connections a server holds at once. Each has a safe default and a setter on [`HttpServer`](super::HttpServer) and
//! [`GrpcServer`](crate::grpc::GrpcServer).

use std::time::Duration;

/// The default [handshake timeout](super::HttpServer::handshake_timeout): Go's HTTP/2 server
/// closes a connection that sends no preface within 10 s.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [connection cap](super::HttpServer::max_connections): well above what one
/// server of a process holds in normal use (10,000 idle keep-alive connections are a
/// benchmark), well below what exhausts a machine.
pub(crate) const MAX_CONNECTIONS: usize = 16_384;

/// A server's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From the accept to a first complete request head (HTTP/1), or the HTTP/2 preface and
    /// the start of a frame after it, protocol sniffing included.
    pub(crate) handshake_timeout: Duration,
    /// Connections open at once; at the cap, newcomers wait in the kernel's queue.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}
