//! A connection's TLS handshake, inside the drain's rules and under the handshake timeout, and
//! the last word (close_notify) of a TLS connection that is closed without hyper's shutdown.

use tokio_rustls::server::TlsStream;

use super::{Acceptor, PeerCertificates};
use crate::events::Event;
use crate::http::io::{Raw, Transport};
use crate::http::shared::Shared;
use crate::http::state::{ConnState, FIRST_REQUEST_GRACE};
use crate::metrics::{Closed, Handshake};

/// A connection's TLS handshake, inside the drain's rules and under the handshake timeout
/// (which goes on to cover the first request): `None` if it failed, timed out, or was still
/// going when the drain began (it has begun no request: closed at once, unless accepted in the
/// last moment, whose handshake is most likely on the wire: that one gets the rest of the
/// grace). Each failure and timeout is counted.
pub(crate) async fn handshake(
    acceptor: &Acceptor,
    raw: Raw,
    state: &ConnState,
    shared: &Shared,
) -> Option<TlsStream<Raw>> {
    let accept = acceptor.now()?.accept(raw);
    tokio::pin!(accept);
    let born = state.born();
    let timeout = shared.timeouts.handshake();
    let timer = tokio::time::sleep_until(born + timeout.unwrap_or_default());
    tokio::pin!(timer);
    let drain = state.drain();
    let done = tokio::select! {
        biased;
        done = &mut accept => done,
        () = &mut timer, if timeout.is_some() => {
            drain.count(Event::HandshakeTimeout);
            drain.metrics().handshake(Handshake::Timeout);
            state.close_as(Closed::HandshakeTimeout);
            return None;
        }
        () = shared.closing() => {
            let cut = || {
                drain.metrics().handshake(Handshake::Drained);
                state.close_as(Closed::IdleAtDrain);
                None
            };
            let Some(left) = FIRST_REQUEST_GRACE.checked_sub(born.elapsed()) else {
                return cut();
            };
            tokio::select! {
                biased;
                done = &mut accept => done,
                () = tokio::time::sleep(left) => return cut(),
            }
        }
    };
    match done {
        Ok(stream) => {
            drain.metrics().handshake(Handshake::Ok);
            if let Some(chain) = stream.get_ref().1.peer_certificates() {
                state.set_peer_certificates(PeerCertificates::new(chain));
            }
            Some(stream)
        }
        Err(error) => {
            drain.count(Event::TlsHandshakeFailed);
            drain.metrics().handshake(Handshake::Failed);
            state.close_as(Closed::TlsFailed);
            tracing::debug!(target: "lameduck", peer = %state.peer(), "TLS handshake failed: {error}");
            None
        }
    }
}

impl Transport for TlsStream<Raw> {
    /// close_notify, if the socket takes it at once (a connection closed without hyper's
    /// shutdown: by the drain, or a timeout).
    fn closing(&mut self) {
        let (raw, conn) = self.get_mut();
        conn.send_close_notify();
        let mut socket = SocketWriter(raw.socket());
        while conn.wants_write() {
            match conn.write_tls(&mut socket) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Writes to a socket without waiting: what it does not take now is not written.
struct SocketWriter<'a>(&'a tokio::net::TcpStream);

impl std::io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
