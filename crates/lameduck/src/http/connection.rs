//! One connection: its socket (tracked by the drain, and closed at the abort after the drain
//! deadline, even after an upgrade), its hyper connection, and how it ends when the drain
//! begins.

use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::drain::WorkGuard;
use crate::error::BoxError;
use crate::http::request::{ConnState, RequestService, Shared};

/// How long after its accept a connection that has sent nothing yet may still deliver its first
/// request once the drain has begun: a client that connected just before the drain is most
/// likely sending it. Older silent connections are closed at once.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(50);

/// How long a connection with no request in flight gets, once told to shut down, to close by
/// itself (an HTTP/2 client acknowledging the GOAWAY) before it is closed.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs hyper's background work (the tasks of HTTP/2 streams) on the runtime. A stream task
/// ends with its stream; at the drain deadline, the request in it ends at its next poll (the
/// request watches the deadline only while it waits, so a quick one costs nothing).
///
/// It is the executor of the [`auto::Builder`](hyper_util::server::conn::auto::Builder) that
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

/// Serves one accepted connection on a task of the drain's.
///
/// When the drain begins, a connection on which no request has begun (silent, or partway
/// through its first request's headers) is closed at once: nothing is lost. One accepted in the
/// last 50 ms that has sent nothing yet gets the rest of those 50 ms to send its request. Every
/// other connection is told to shut down gracefully: an idle HTTP/1.1 keep-alive connection
/// closes, a busy one finishes its response (with `Connection: close`), HTTP/2 sends GOAWAY
/// and finishes its open streams.
pub(crate) fn serve<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    app: S,
    shared: &Arc<Shared>,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: From<&'static str> + Send,
    B::Error: Into<BoxError>,
{
    let drain = shared.drain.clone();
    let state = Arc::new(ConnState::new(drain.clone()));
    let io = TokioIo::new(ConnIo::new(
        stream,
        drain.track(),
        drain.hard_stop_token(),
        Arc::clone(&state),
    ));
    let service = RequestService::new(app, Arc::clone(shared), Arc::clone(&state));
    let shared = Arc::clone(shared);
    drain.clone().spawn_attached(async move {
        let conn = shared.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            biased;
            result = conn.as_mut() => result,
            () = drain.draining() => {
                // A request may sit in the kernel, sent before the drain began but not yet
                // reported by the reactor: have hyper read it now, so that it is served rather
                // than lost when an idle-looking connection is closed.
                state.read_now();
                let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
                if let Poll::Ready(result) = polled {
                    log_end(peer, result);
                    return;
                }
                if state.closable_at_once() {
                    let age = accepted.elapsed();
                    if state.nothing_read() && age < FIRST_REQUEST_GRACE {
                        // Connected a moment ago: its first request is most likely on the
                        // wire. It gets the rest of the grace (served as usual), then is
                        // judged again.
                        tokio::select! {
                            biased;
                            result = conn.as_mut() => {
                                log_end(peer, result);
                                return;
                            }
                            () = tokio::time::sleep(FIRST_REQUEST_GRACE - age) => {}
                        }
                    }
                    if state.closable_at_once() {
                        // Dropping the connection closes the socket.
                        return;
                    }
                }
                conn.as_mut().graceful_shutdown();
                // With nothing in flight, an HTTP/2 connection still waits for the client to
                // acknowledge the GOAWAY; a client that never does must not hold the drain. A
                // response still being written is in flight: it is not cut off here.
                tokio::select! {
                    biased;
                    result = conn.as_mut() => result,
                    () = tokio::time::sleep(IDLE_CLOSE_GRACE) => {
                        if state.quiet() {
                            return;
                        }
                        conn.await
                    }
                }
            }
        };
        log_end(peer, result);
    });
}

fn log_end(peer: SocketAddr, result: Result<(), BoxError>) {
    if let Err(error) = result {
        tracing::debug!(target: "lameduck", %peer, "connection ended: {error}");
    }
}

/// The accepted socket, as the connection (and, after an upgrade, the WebSocket or tunnel)
/// sees it. It holds the connection's unit of work, so the drain waits for an upgraded
/// connection too until it ends. Once upgraded, it watches the abort that follows the drain
/// deadline: from then on every read and write fails and the socket is closed (at the next
/// read or write its task polls; a waiting one is woken for it), so that nothing outlives the
/// shutdown.
pub(crate) struct ConnIo {
    stream: Option<TcpStream>,
    _guard: Option<WorkGuard>,
    deadline: CancellationToken,
    state: Arc<ConnState>,
    /// Created at the first read (or write) that has to wait, so the task wakes at the
    /// deadline; one per direction, because the halves of a split stream wait in different
    /// tasks.
    read_deadline: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    write_deadline: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl ConnIo {
    fn new(
        stream: TcpStream,
        guard: WorkGuard,
        deadline: CancellationToken,
        state: Arc<ConnState>,
    ) -> Self {
        ConnIo {
            stream: Some(stream),
            _guard: Some(guard),
            deadline,
            state,
            read_deadline: None,
            write_deadline: None,
        }
    }

    /// Closes the socket and lets the drain go.
    fn close(&mut self) -> io::Error {
        self.stream = None;
        self._guard = None;
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed at the drain deadline",
        )
    }

    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.deadline.is_cancelled() {
            return Poll::Ready(Err(self.close()));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Err(self.close()));
        };
        let polled = op(Pin::new(stream), cx);
        if write {
            self.state.set_write_blocked(polled.is_pending());
        }
        // Only an upgraded socket waits on the deadline itself (a lock-free check otherwise):
        // hyper's connections are closed by their task, which the deadline aborts.
        if polled.is_pending() && self.state.upgraded() {
            let slot = if write {
                &mut self.write_deadline
            } else {
                &mut self.read_deadline
            };
            let deadline =
                slot.get_or_insert_with(|| Box::pin(self.deadline.clone().cancelled_owned()));
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(self.close()));
            }
        }
        polled
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.reading_now()
            && let Some(stream) = &this.stream
        {
            // The reactor reports readiness on its next turn; the kernel knows now. Reads go
            // straight to it until it has nothing more (the socket is non-blocking), however
            // small the reader's buffer (hyper-util's protocol sniffing reads 24 bytes).
            let filled = buf.filled().len();
            match (&*SockRef::from(stream)).read(buf.initialize_unfilled()) {
                // End of stream: the client is gone.
                Ok(0) => {
                    this.state.read_now_done();
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    buf.advance(n);
                    this.state.note_read(&buf.filled()[filled..]);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.state.read_now_done(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let filled = buf.filled().len();
        let polled = this.poll_io(cx, false, |stream, cx| stream.poll_read(cx, buf));
        if polled.is_ready() {
            this.state.note_read(&buf.filled()[filled..]);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, true, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, true, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, true, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
