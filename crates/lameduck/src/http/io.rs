//! What a connection's bytes travel through: the accepted socket ([`Raw`]), TLS on it if any
//! ([`Transport`]), and the wrapper hyper reads and writes ([`ConnIo`]), which tells the
//! connection's state what was read and closes the socket at the abort after the drain
//! deadline, even once upgraded.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::drain::WorkGuard;
use crate::events::Event;
use crate::gated::Deadline;
use crate::http::state::ConnState;
use crate::metrics::Closed;

/// The accepted socket at the bottom of a connection (under TLS, if any): while the drain asks
/// ([`ConnState::read_now`]), reads go straight to the kernel, without waiting for the reactor
/// to report what it holds.
pub(crate) struct Raw {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl Raw {
    pub(crate) fn new(stream: TcpStream, state: Arc<ConnState>) -> Self {
        Raw { stream, state }
    }

    /// The socket.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Raw {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.reading_now() {
            // The reactor reports readiness on its next turn; the kernel knows now. Reads go
            // straight to it until it has nothing more (the socket is non-blocking), however
            // small the reader's buffer (hyper-util's protocol sniffing reads 24 bytes).
            // A byte is peeked first: most often there is nothing, and the reader's buffer is
            // not initialized for nothing (at the drain, 10,000 idle connections would each
            // zero, and fault in, 8 KiB of hyper's fresh buffer only to read none of it).
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
            match SockRef::from(&this.stream).peek(&mut probe) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    this.state.read_now_done();
                    return Pin::new(&mut this.stream).poll_read(cx, buf);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            match (&*SockRef::from(&this.stream)).read(buf.initialize_unfilled()) {
                // End of stream: the client is gone.
                Ok(0) => {
                    this.state.read_now_done();
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.state.read_now_done(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Raw {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What a connection's bytes travel over: the socket itself, or TLS on it.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection is being closed without hyper's shutdown (at once, at the drain or a
    /// timeout): a last word, if the protocol has one (TLS's close_notify), written only if the
    /// socket takes it now.
    fn closing(&mut self) {}
}

impl Transport for Raw {}

/// The connection as hyper (and, after an upgrade, the WebSocket or tunnel) sees it. It holds
/// the connection's unit of work, so the drain waits for an upgraded connection too until it
/// ends. Once upgraded, it watches the abort that follows the drain deadline: from then on
/// every read and write fails and the socket is closed (at the next read or write its task
/// polls; a waiting one is woken for it), so that nothing outlives the shutdown. What it reads
/// (the plaintext, under TLS) tells the connection's state which protocol the client speaks
/// and when a request head begins.
pub(crate) struct ConnIo<T: Transport> {
    stream: Option<T>,
    /// The connection's unit of work, and its slot under the server's connection cap: both
    /// held until the socket closes (an upgraded one included).
    guard: Option<(WorkGuard, Option<OwnedSemaphorePermit>)>,
    state: Arc<ConnState>,
    /// The abort, waited for once upgraded: one wait per direction, because the halves of a
    /// split stream wait in different tasks.
    read_abort: Deadline,
    write_abort: Deadline,
}

impl<T: Transport> ConnIo<T> {
    pub(crate) fn new(
        stream: T,
        guard: (WorkGuard, Option<OwnedSemaphorePermit>),
        (abort, gate): (CancellationToken, Arc<AtomicBool>),
        state: Arc<ConnState>,
    ) -> Self {
        ConnIo {
            stream: Some(stream),
            guard: Some(guard),
            state,
            read_abort: Deadline::gated(abort.clone(), Arc::clone(&gate)),
            write_abort: Deadline::gated(abort, gate),
        }
    }

    /// Closes a connection that speaks an HTTP version the server does not: at once, without
    /// an answer in either version.
    fn refuse(&mut self) -> io::Error {
        self.state.drain().count(Event::WrongProtocol);
        self.state.close_as(Closed::WrongProtocol);
        self.drop_stream();
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "an HTTP version this server does not speak",
        )
    }

    /// Closes the socket and lets the drain go.
    fn close(&mut self) -> io::Error {
        self.drop_stream();
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed at the drain deadline",
        )
    }

    fn drop_stream(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.closing();
        }
        // An upgraded connection was in flight until its socket closed: now.
        if self.guard.take().is_some() && self.state.upgraded() {
            self.state.drain().metrics().upgraded(false);
        }
    }

    #[inline]
    fn poll_io<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        // Past the abort nothing more goes out: a response the abort cut short must not
        // reach the client looking complete.
        if self.read_abort.passed() {
            return Poll::Ready(Err(self.close()));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Err(self.close()));
        };
        let polled = op(Pin::new(stream), cx);
        if write {
            self.state.set_write_blocked(polled.is_pending());
        }
        // Only an upgraded socket watches the abort itself: hyper's connections are closed by
        // their task, which the abort ends.
        if polled.is_pending() && self.state.upgraded() {
            let abort = if write {
                &mut self.write_abort
            } else {
                &mut self.read_abort
            };
            if abort.reached(cx) {
                return Poll::Ready(Err(self.close()));
            }
        }
        polled
    }
}

impl<T: Transport> Drop for ConnIo<T> {
    fn drop(&mut self) {
        // However it ends, a last word first (TLS's close_notify) if the socket takes it.
        self.drop_stream();
    }
}

impl<T: Transport> AsyncRead for ConnIo<T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        let polled = this.poll_io(cx, false, |stream, cx| stream.poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = polled
            && !this.state.note_read(&buf.filled()[filled..])
        {
            return Poll::Ready(Err(this.refuse()));
        }
        polled
    }
}

impl<T: Transport> AsyncWrite for ConnIo<T> {
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
        self.stream.as_ref().is_some_and(T::is_write_vectored)
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
