//! A request's body as the app receives it ([`RequestBody`]): hyper's, with the body timeout.
//!
//! The timeout is armed only when the app waits for data that is not there (a poll that finds
//! nothing), and started again by each chunk that comes: a body that the app does not read, or
//! one with a length that arrives with its head, costs no timer (a chunked one usually arms
//! one, for its last chunk). The body is also watched for its end: only after a request whose
//! body was read to its end do the connection's next bytes begin a head (and its timeout). When it expires, the app's read fails, and the
//! request's answer (see `request`) ends the request the way its protocol allows.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::drain::Drain;
use crate::error::BoxError;
use crate::events::Event;

pin_project! {
    /// The body of a request served by [`HttpServer`](super::HttpServer) and
    /// [`GrpcServer`](crate::grpc::GrpcServer): hyper's [`Incoming`], ended with a
    /// [`BodyTimedOut`] error when the app waits for data and none comes for the server's
    /// [body timeout](super::HttpServer::body_timeout). An axum `Router` and tonic's routes
    /// take it as they take any body; a hyper-style service is written for
    /// `Request<RequestBody>`.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        watch: Option<BodyWatch>,
    }
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, watch: Option<BodyWatch>) -> Self {
        RequestBody { inner, watch }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .field(
                "timeout",
                &self.watch.as_ref().and_then(|w| w.shared.timeout),
            )
            .finish()
    }
}

/// The error of a [`RequestBody`] that brought no data for the server's body timeout while
/// the app waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyTimedOut {
    /// The body timeout.
    pub timeout: Duration,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body timed out: no data for {:?} while the server waited for it",
            self.timeout
        )
    }
}

impl StdError for BodyTimedOut {}

/// What a request's body, its guard and its answer share: whether the body was read to its
/// end (the connection's next bytes then begin a request head), whether it timed out, and who
/// to wake when it does (the answer may wait on another task than the body's reader).
#[derive(Debug)]
pub(crate) struct BodyShared {
    done: AtomicBool,
    timed_out: AtomicBool,
    waker: AtomicWaker,
    drain: Drain,
    /// The body timeout (`None`: off, the body is only watched for its end).
    timeout: Option<Duration>,
}

impl BodyShared {
    /// For a request with a body still to come.
    pub(crate) fn new(drain: Drain, timeout: Option<Duration>) -> Arc<Self> {
        Arc::new(BodyShared {
            done: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            drain,
            timeout,
        })
    }

    /// Whether the app read the body to its end.
    pub(crate) fn complete(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Whether the body timed out; if not, `cx`'s task is woken when it does.
    pub(crate) fn timed_out(&self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_none() {
            return false;
        }
        if self.timed_out.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.timed_out.load(Ordering::Acquire)
    }

    /// The error the app's read got.
    pub(crate) fn error(&self) -> BodyTimedOut {
        BodyTimedOut {
            timeout: self.timeout.unwrap_or_default(),
        }
    }

    fn fire(&self) {
        if !self.timed_out.swap(true, Ordering::AcqRel) {
            self.drain.count(Event::BodyTimeout);
            self.waker.wake();
        }
    }
}

/// How one body is watched: for its end, and (under a body timeout) by a timer armed at its
/// first wait.
pub(crate) struct BodyWatch {
    shared: Arc<BodyShared>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data came since the timer was last set.
    progressed: bool,
    /// The timeout's error has been given: the body ends (`None`) from now on.
    told: bool,
}

impl BodyWatch {
    pub(crate) fn new(shared: &Arc<BodyShared>) -> Self {
        BodyWatch {
            shared: Arc::clone(shared),
            sleep: None,
            progressed: false,
            told: false,
        }
    }

    /// The body found nothing: whether it has waited too long (the timer set, or set again
    /// after progress, otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.shared.timeout else {
            return false;
        };
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.progressed {
                    sleep.as_mut().reset(Instant::now() + timeout);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.progressed = false;
        if sleep.as_mut().poll(cx).is_ready() {
            self.shared.fire();
            return true;
        }
        false
    }

    /// The timeout's error, once; then the end.
    fn timed_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if std::mem::replace(&mut self.told, true) {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Err(self.shared.error().into())))
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(watch) = this.watch else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        if watch.shared.timed_out.load(Ordering::Acquire) {
            // Ended: nothing more comes through, even data that came late; the error once (a
            // reader that skips errors must not spin), then the end.
            return watch.timed_out();
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => {
                watch.progressed = true;
                let end = match &frame {
                    None => true,
                    Some(Ok(frame)) => frame.is_trailers() || this.inner.is_end_stream(),
                    Some(Err(_)) => false,
                };
                if end {
                    watch.shared.done.store(true, Ordering::Release);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if watch.expired(cx) => watch.timed_out(),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
