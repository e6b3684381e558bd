//! A request's body as the app receives it ([`RequestBody`]): hyper's, with the body timeout.
//!
//! The timeout is armed only when the app waits for data that is not there (a poll that finds
//! nothing), and started again by each chunk that comes: a body that arrives with its head, or
//! that the app does not read, costs no timer. When it expires, the app's read fails, and the
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
        timer: Option<BodyTimer>,
    }
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, timer: Option<BodyTimer>) -> Self {
        RequestBody { inner, timer }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .field("timeout", &self.timer.as_ref().map(|t| t.timeout))
            .finish()
    }
}

/// The error of a [`RequestBody`] that brought no data for the server's body timeout while
/// the app waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a request's body and its answer share: whether the body timed out, and who to wake
/// when it does (the answer may wait on another task than the body's reader).
#[derive(Debug)]
pub(crate) struct BodyShared {
    timed_out: AtomicBool,
    waker: AtomicWaker,
    drain: Drain,
    timeout: Duration,
}

impl BodyShared {
    /// For a request with a body still to come, under a body timeout.
    pub(crate) fn new(drain: Drain, timeout: Duration) -> Arc<Self> {
        Arc::new(BodyShared {
            timed_out: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            drain,
            timeout,
        })
    }

    /// Whether the body timed out; if not, `cx`'s task is woken when it does.
    pub(crate) fn timed_out(&self, cx: &mut Context<'_>) -> bool {
        if self.timed_out.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.timed_out.load(Ordering::Acquire)
    }

    /// The error the app's read got.
    pub(crate) fn error(&self) -> BodyTimedOut {
        BodyTimedOut {
            timeout: self.timeout,
        }
    }

    fn fire(&self) {
        if !self.timed_out.swap(true, Ordering::AcqRel) {
            self.drain.count(Event::BodyTimeout);
            self.waker.wake();
        }
    }
}

/// The timer of one body, armed at its first wait.
pub(crate) struct BodyTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data came since the timer was last set.
    progressed: bool,
    shared: Arc<BodyShared>,
}

impl BodyTimer {
    pub(crate) fn new(shared: &Arc<BodyShared>) -> Self {
        BodyTimer {
            timeout: shared.timeout,
            sleep: None,
            progressed: false,
            shared: Arc::clone(shared),
        }
    }

    /// The body found nothing: whether it has waited too long (the timer set, or set again
    /// after progress, otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.progressed {
                    sleep.as_mut().reset(Instant::now() + self.timeout);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep(self.timeout))),
        };
        self.progressed = false;
        if sleep.as_mut().poll(cx).is_ready() {
            self.shared.fire();
            return true;
        }
        false
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(timer) = this.timer
            && timer.shared.timed_out.load(Ordering::Acquire)
        {
            // Ended: nothing more comes through, even data that came late.
            return Poll::Ready(Some(Err(timer.shared.error().into())));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer {
                    timer.progressed = true;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if let Some(timer) = this.timer
                    && timer.expired(cx)
                {
                    return Poll::Ready(Some(Err(timer.shared.error().into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
