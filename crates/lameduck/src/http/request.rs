//! One request: answered by the health endpoints or passed to the app, counted from the call to
//! the end of its response body, with the service's [`Drain`] in its extensions. For gRPC, what
//! the drain deadline cuts off ends with status UNAVAILABLE ([`Cutoff`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::server::conn::auto;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::drain::{Drain, WorkGuard};
use crate::http::connection::DrainExecutor;
use crate::http::health::Health;
use crate::ready::LifecycleHandle;

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) drain: Drain,
    pub(crate) handle: LifecycleHandle,
    pub(crate) health: Option<Health>,
    pub(crate) builder: auto::Builder<DrainExecutor>,
    /// gRPC: what the drain deadline cuts off ends with status UNAVAILABLE, not a reset.
    pub(crate) grpc: bool,
}

/// What the drain needs to know of one connection's requests.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Set at the first request: until then, the drain may close the connection at once.
    request_seen: AtomicBool,
    /// Requests in flight on this connection (HTTP/2 runs several at once).
    active: AtomicUsize,
    /// Set by the drain: the socket's next read goes to the kernel at once (see `ConnIo`).
    read_now: AtomicBool,
}

impl ConnState {
    /// Asks the socket to read what the kernel holds at its next read, even before the
    /// reactor has reported it.
    pub(crate) fn read_now(&self) {
        self.read_now.store(true, Ordering::Release);
    }

    pub(crate) fn take_read_now(&self) -> bool {
        self.read_now.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn request_seen(&self) -> bool {
        self.request_seen.load(Ordering::Acquire)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// One request in flight: counted for the service (the report) and for its connection (the
/// drain), until its response body has ended.
pub(crate) struct RequestGuard {
    _work: WorkGuard,
    conn: Arc<ConnState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service of one connection: the app, wrapped.
pub(crate) struct RequestService<S> {
    app: TowerToHyperService<S>,
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
}

impl<S> RequestService<S> {
    pub(crate) fn new(app: S, shared: Arc<Shared>, conn: Arc<ConnState>) -> Self {
        RequestService {
            app: TowerToHyperService::new(app),
            shared,
            conn,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for RequestService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone,
    B: Body,
    B::Data: From<&'static str>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.conn.request_seen.store(true, Ordering::Release);
        let health = self.shared.health.as_ref();
        if let Some((status, text)) = health.and_then(|h| h.answer(&req, &self.shared.handle)) {
            let mut response = Response::new(ResponseBody::Text { text: Some(text) });
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return ResponseFuture::Ready {
                response: Some(response),
            };
        }
        self.conn.active.fetch_add(1, Ordering::AcqRel);
        let guard = RequestGuard {
            _work: self.shared.drain.track_request(),
            conn: Arc::clone(&self.conn),
        };
        req.extensions_mut().insert(self.shared.drain.clone());
        let cutoff = self
            .shared
            .grpc
            .then(|| Cutoff::new(self.shared.drain.deadline_token()));
        ResponseFuture::App {
            future: hyper::service::Service::call(&self.app, req),
            guard: Some(guard),
            cutoff,
        }
    }
}

/// The drain deadline, as a gRPC response watches it: a response still pending, or still
/// streaming, then ends with status UNAVAILABLE while the connection can still carry it (the
/// lifecycle aborts what is left a moment later).
pub(crate) struct Cutoff {
    deadline: CancellationToken,
    /// Made at the first wait, so that a quick response costs no allocation.
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Cutoff {
    fn new(deadline: CancellationToken) -> Self {
        Cutoff {
            deadline,
            wait: None,
        }
    }

    /// Whether the deadline has passed; if not, the task is woken when it does.
    fn reached(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.is_cancelled() {
            return true;
        }
        let deadline = &self.deadline;
        self.wait
            .get_or_insert_with(|| Box::pin(deadline.clone().cancelled_owned()))
            .as_mut()
            .poll(cx)
            .is_ready()
    }

    /// `grpc-status: 14` (UNAVAILABLE, which clients may retry) and why: the headers of a
    /// trailers-only response, or a streaming response's trailers.
    fn unavailable() -> HeaderMap {
        let mut status = HeaderMap::new();
        status.insert("grpc-status", HeaderValue::from_static("14"));
        status.insert(
            "grpc-message",
            HeaderValue::from_static("server shutting down: drain deadline reached"),
        );
        status
    }
}

pin_project! {
    /// The response of a [`RequestService`].
    #[project = ResponseFutureProj]
    pub(crate) enum ResponseFuture<S, B>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        App {
            #[pin]
            future: TowerToHyperServiceFuture<S, Request<Incoming>>,
            guard: Option<RequestGuard>,
            cutoff: Option<Cutoff>,
        },
        Ready { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<ResponseBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::App {
                future,
                guard,
                cutoff,
            } => match future.poll(cx) {
                Poll::Pending => {
                    if !cutoff.as_mut().is_some_and(|c| c.reached(cx)) {
                        return Poll::Pending;
                    }
                    // Answer UNAVAILABLE (trailers-only); dropping the handler cancels it.
                    guard.take();
                    let mut response = Response::new(ResponseBody::Text { text: None });
                    *response.headers_mut() = Cutoff::unavailable();
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    Poll::Ready(Ok(response))
                }
                // The request stays in flight until its body has been sent.
                Poll::Ready(Ok(response)) => {
                    Poll::Ready(Ok(response.map(|body| ResponseBody::App {
                        body,
                        guard: guard.take(),
                        cutoff: cutoff.take(),
                    })))
                }
                // Dropping the guard ends the request: hyper closes the connection.
                Poll::Ready(Err(error)) => {
                    guard.take();
                    Poll::Ready(Err(error))
                }
            },
            ResponseFutureProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

pin_project! {
    /// A response body: the app's, holding its request's count until it ends, or a short text.
    #[project = ResponseBodyProj]
    pub(crate) enum ResponseBody<B> {
        App {
            #[pin]
            body: B,
            // `None` once the body has ended (or was cut off).
            guard: Option<RequestGuard>,
            cutoff: Option<Cutoff>,
        },
        Text { text: Option<&'static str> },
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<&'static str>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::App {
                body,
                guard,
                cutoff,
            } => {
                if guard.is_none() && cutoff.is_some() {
                    // Ended by the cutoff's trailers.
                    return Poll::Ready(None);
                }
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(None | Some(Err(_))) => {
                        guard.take();
                    }
                    Poll::Pending => {
                        if let Some(c) = cutoff
                            && c.reached(cx)
                        {
                            guard.take();
                            return Poll::Ready(Some(Ok(Frame::trailers(Cutoff::unavailable()))));
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                }
                polled
            }
            ResponseBodyProj::Text { text } => {
                Poll::Ready(text.take().map(|text| Ok(Frame::data(text.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::App { body, .. } => body.is_end_stream(),
            ResponseBody::Text { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::App { body, .. } => body.size_hint(),
            ResponseBody::Text { text } => SizeHint::with_exact(text.map_or(0, |t| t.len() as u64)),
        }
    }
}
