//! WebSockets that end well at a shutdown (feature `ws`, on axum's): an upgrade refused once
//! the drain has begun (503 with `Connection: close`), and on every open socket, at the drain's
//! start (when the listeners close; during the lame-duck delay they keep working), a Close
//! frame with 1001 "going away" (the code and reason configurable: 1012 "service restart",
//! say), sent by the handler's next read or write of the socket (one that waits in `recv`, or
//! in a send, is woken for it; one that polls neither sends none). The handler then sees the
//! socket's end (its sends fail; its reads go on until the
//! client's own Close, which ends the stream), and at the drain deadline what is still open is
//! cut, as every upgraded connection is. A client so sees a clean close it can act on (reconnect
//! elsewhere), never the abnormal closure (1006) of a connection cut without one.
//!
//! ```
//! use axum::extract::ws::Message;
//! use lameduck::http::ws::WebSocketUpgrade;
//!
//! async fn echo(ws: WebSocketUpgrade) -> axum::response::Response {
//!     ws.on_upgrade(|mut socket| async move {
//!         // Ends with the client's Close: its own, or its answer to ours at the drain.
//!         while let Some(Ok(message)) = socket.recv().await {
//!             if let Message::Text(text) = message
//!                 && socket.send(Message::Text(text)).await.is_err()
//!             {
//!                 break;
//!             }
//!         }
//!     })
//! }
//! # let _app: axum::Router = axum::Router::new().route("/echo", axum::routing::get(echo));
//! ```
//!
//! Without axum (tokio-tungstenite on a socket of one's own), the same comes from the
//! [`Drain`]: wait for [`Drain::draining`] beside the socket's reads, send the Close frame
//! then, and read on until the client's.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::FromRequestParts;
use axum::extract::ws::{self, CloseFrame, Message};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use futures_sink::Sink;
use http::StatusCode;
use http::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::drain::Drain;

/// The close code sent at the drain by default: 1001, "going away" (RFC 6455 §7.4.1).
pub const GOING_AWAY: u16 = 1001;

/// axum's `WebSocketUpgrade`, with the drain's rules: refused once the drain has begun, and
/// its socket ([`WebSocket`]) closed with [`GOING_AWAY`] at the drain's start.
pub struct WebSocketUpgrade {
    inner: ws::WebSocketUpgrade,
    drain: Drain,
    code: u16,
    reason: &'static str,
}

impl WebSocketUpgrade {
    /// The close code the drain sends (default 1001, "going away"; 1012 "service restart"
    /// tells clients the service comes back).
    pub fn close_code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// The reason the drain's Close frame gives (default "going away"). A Close frame has
    /// room for 123 bytes of it: a longer one is cut there (at a character's boundary).
    pub fn close_reason(mut self, reason: &'static str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.reason = &reason[..end];
        self
    }

    /// axum's upgrade itself, for its settings (message sizes, subprotocols).
    pub fn configure(
        mut self,
        f: impl FnOnce(ws::WebSocketUpgrade) -> ws::WebSocketUpgrade,
    ) -> Self {
        self.inner = f(self.inner);
        self
    }

    /// Finishes the upgrade, and runs `callback` with the socket once it is done.
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (drain, code, reason) = (self.drain, self.code, self.reason);
        self.inner.on_upgrade(move |socket| {
            callback(WebSocket {
                inner: socket,
                // One wait for each side: a split socket's halves poll in different tasks, and
                // a wait wakes only the last to poll it.
                draining: [
                    Box::pin(drain.token().cancelled_owned()),
                    Box::pin(drain.token().cancelled_owned()),
                ],
                close: Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }),
                closing: Closing::No,
            })
        })
    }
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("code", &self.code)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Why an upgrade was not made: the drain has begun (503, `Connection: close`,
/// `Retry-After: 1`: another instance takes it), or axum's own reasons (not a WebSocket
/// request, say).
#[derive(Debug)]
pub enum WebSocketUpgradeRejection {
    /// The drain has begun: no new long-lived connection.
    Draining,
    /// axum's rejection.
    Axum(ws::rejection::WebSocketUpgradeRejection),
    /// Not served by a lameduck server (no [`Drain`] to watch).
    NoDrain(StatusCode, &'static str),
}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        match self {
            WebSocketUpgradeRejection::Draining => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down: no new WebSocket here\n",
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            WebSocketUpgradeRejection::Axum(rejection) => rejection.into_response(),
            WebSocketUpgradeRejection::NoDrain(status, text) => (status, text).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let drain = Drain::from_request_parts(parts, state)
            .await
            .map_err(|(status, text)| WebSocketUpgradeRejection::NoDrain(status, text))?;
        if drain.is_draining() {
            return Err(WebSocketUpgradeRejection::Draining);
        }
        let inner = ws::WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(WebSocketUpgradeRejection::Axum)?;
        Ok(WebSocketUpgrade {
            inner,
            drain,
            code: GOING_AWAY,
            reason: "going away",
        })
    }
}

/// The reads' wait for the drain, and the writes'.
const READ: usize = 0;
const WRITE: usize = 1;

/// Where the drain's Close frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Not yet due.
    No,
    /// Due: to be sent.
    Send,
    /// Sent: to be flushed.
    Flush,
    /// Out.
    Sent,
}

/// axum's `WebSocket`, closed with the upgrade's code at the drain's start. A `Stream` of
/// messages and a `Sink` of them, as axum's; [`recv`](Self::recv) and [`send`](Self::send)
/// too. After the drain's Close, sends fail and reads go on until the client's Close.
pub struct WebSocket {
    inner: ws::WebSocket,
    /// The drain's start, waited for by the reads ([`READ`]) and the writes ([`WRITE`]).
    draining: [Pin<Box<WaitForCancellationFutureOwned>>; 2],
    close: Option<CloseFrame>,
    closing: Closing,
}

impl WebSocket {
    /// The next message (`None` once the socket has closed).
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends a message; fails once the socket is closing (the drain's Close is out).
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_ready(cx)).await?;
        Pin::new(&mut *self).start_send(message)?;
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_flush(cx)).await
    }

    /// The subprotocol the upgrade selected, if any.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.inner.protocol()
    }

    /// Whether the drain has closed it (its Close frame is out, or going).
    pub fn is_closing(&self) -> bool {
        self.closing != Closing::No
    }

    /// The drain's Close, when due: sent (and flushed) before anything else goes, by the
    /// side (`READ` or `WRITE`) polled. An error sending it (the client closed first, the
    /// socket broke) is said once; the socket is closing all the same.
    fn poll_close(&mut self, cx: &mut Context<'_>, side: usize) -> Poll<Result<(), axum::Error>> {
        loop {
            match self.closing {
                Closing::No => {
                    if self.draining[side].as_mut().poll(cx).is_pending() {
                        return Poll::Ready(Ok(()));
                    }
                    self.closing = Closing::Send;
                }
                Closing::Send => {
                    let sent = match ready!(Pin::new(&mut self.inner).poll_ready(cx)) {
                        Ok(()) => {
                            let frame = self.close.clone();
                            Pin::new(&mut self.inner).start_send(Message::Close(frame))
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = sent {
                        self.closing = Closing::Sent;
                        return Poll::Ready(Err(error));
                    }
                    self.closing = Closing::Flush;
                }
                Closing::Flush => {
                    let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                    self.closing = Closing::Sent;
                    return Poll::Ready(flushed);
                }
                Closing::Sent => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Stream for WebSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Err(error) = ready!(this.poll_close(cx, READ)) {
            return Poll::Ready(Some(Err(error)));
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

/// What a send gets once the drain has closed the socket.
#[derive(Debug)]
struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the WebSocket is closing: the server is shutting down")
    }
}

impl std::error::Error for Closed {}

impl Sink<Message> for WebSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_close(cx, WRITE))?;
        if this.closing == Closing::Sent {
            return Poll::Ready(Err(axum::Error::new(Closed)));
        }
        Pin::new(&mut this.inner).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::stage::Stage;

    #[tokio::test]
    async fn an_upgrade_once_the_drain_has_begun_gets_503_and_connection_close() {
        let stage = Stage::new();
        let drain = stage.drain("test", &CancellationToken::new());
        stage.draining.cancel();
        let request = http::Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .extension(drain)
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let rejection = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        let response = rejection.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[CONNECTION], "close");
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }
}
