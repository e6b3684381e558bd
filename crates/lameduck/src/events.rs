//! What a server closed or refused during normal serving, counted: the limits' work, for the
//! report (one atomic add per event on the service's own [`Drain`](crate::Drain)).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::report::ServingReport;

/// One kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum Event {
    /// A connection that did not finish its handshake (a first request head, or the HTTP/2
    /// preface and a frame) within the handshake timeout, closed.
    HandshakeTimeout,
    /// A connection that spoke an HTTP version the server does not, closed at once.
    WrongProtocol,
    /// A handler (or its response body) panicked; the request got an error.
    Panic,
    /// An accept had to wait for a slot under the connection cap.
    AtCap,
    /// An accept failed for want of a resource (descriptors, memory).
    AcceptError,
    /// An HTTP/1 request head (after the first) not complete within the header timeout: the
    /// connection was closed.
    HeaderTimeout,
    /// A connection with nothing in flight for the idle timeout: closed (HTTP/1) or sent
    /// GOAWAY (HTTP/2).
    IdleTimeout,
    /// A request body the app waited for brought no data for the body timeout: the request
    /// ended (408, a reset stream, or gRPC status CANCELLED).
    BodyTimeout,
    /// An HTTP/1 request head over the size limit: answered 431 (or 414 for its URI) and
    /// closed.
    HeadersTooLarge,
    /// An HTTP/2 connection closed with GOAWAY ENHANCE_YOUR_CALM: a flood of resets, pings
    /// or settings (the rapid-reset attack among them).
    H2TooManyResets,
    /// An HTTP/2 connection closed for another protocol error of the client's.
    H2ProtocolError,
    /// A TLS handshake that failed (a client that does not trust the certificate, speaks no
    /// common version, or presents no valid client certificate; not TLS at all).
    TlsHandshakeFailed,
    /// A connection reached its maximum age: sent GOAWAY (HTTP/2) or `Connection: close`
    /// (HTTP/1), or closed if idle.
    MaxConnectionAge,
    /// After its maximum age and the grace, a connection still carrying work was closed.
    MaxConnectionAgeGrace,
}

impl Event {
    /// Every kind, in the order of their numbers.
    pub(crate) const ALL: [Event; 14] = [
        Event::HandshakeTimeout,
        Event::WrongProtocol,
        Event::Panic,
        Event::AtCap,
        Event::AcceptError,
        Event::HeaderTimeout,
        Event::IdleTimeout,
        Event::BodyTimeout,
        Event::HeadersTooLarge,
        Event::H2TooManyResets,
        Event::H2ProtocolError,
        Event::TlsHandshakeFailed,
        Event::MaxConnectionAge,
        Event::MaxConnectionAgeGrace,
    ];

    /// Its name in the metrics (the report's field, in the singular).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Event::HandshakeTimeout => "handshake_timeout",
            Event::WrongProtocol => "wrong_protocol",
            Event::Panic => "panic",
            Event::AtCap => "at_cap",
            Event::AcceptError => "accept_error",
            Event::HeaderTimeout => "header_timeout",
            Event::IdleTimeout => "idle_timeout",
            Event::BodyTimeout => "body_timeout",
            Event::HeadersTooLarge => "headers_too_large",
            Event::H2TooManyResets => "h2_too_many_resets",
            Event::H2ProtocolError => "h2_protocol_error",
            Event::TlsHandshakeFailed => "tls_handshake_failed",
            Event::MaxConnectionAge => "max_connection_age",
            Event::MaxConnectionAgeGrace => "max_connection_age_grace",
        }
    }
}

/// How many kinds there are.
const KINDS: usize = Event::ALL.len();

/// The counts, one per kind.
#[derive(Debug, Default)]
pub(crate) struct Events {
    counts: [AtomicU64; KINDS],
}

impl Events {
    /// Counts one `event`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn count(&self, event: Event) {
        self.counts[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, event: Event) -> u64 {
        self.counts[event as usize].load(Ordering::Relaxed)
    }

    /// The counts as the report shows them.
    pub(crate) fn report(&self) -> ServingReport {
        ServingReport {
            handshake_timeouts: self.get(Event::HandshakeTimeout),
            wrong_protocol: self.get(Event::WrongProtocol),
            panics: self.get(Event::Panic),
            at_cap: self.get(Event::AtCap),
            accept_errors: self.get(Event::AcceptError),
            header_timeouts: self.get(Event::HeaderTimeout),
            idle_timeouts: self.get(Event::IdleTimeout),
            body_timeouts: self.get(Event::BodyTimeout),
            headers_too_large: self.get(Event::HeadersTooLarge),
            h2_too_many_resets: self.get(Event::H2TooManyResets),
            h2_protocol_errors: self.get(Event::H2ProtocolError),
            tls_handshake_failures: self.get(Event::TlsHandshakeFailed),
            max_connection_age: self.get(Event::MaxConnectionAge),
            max_connection_age_grace: self.get(Event::MaxConnectionAgeGrace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_each_kind_at_its_number() {
        for (i, event) in Event::ALL.iter().enumerate() {
            assert_eq!(*event as usize, i, "{event:?}");
        }
    }

    #[test]
    fn each_kind_counts_apart() {
        let events = Events::default();
        events.count(Event::HandshakeTimeout);
        events.count(Event::HandshakeTimeout);
        events.count(Event::WrongProtocol);
        events.count(Event::H2ProtocolError);
        let report = events.report();
        assert_eq!((report.handshake_timeouts, report.wrong_protocol), (2, 1));
        assert_eq!((report.h2_protocol_errors, report.body_timeouts), (1, 0));
    }
}
