//! One request: answered by the health endpoints or passed to the app, counted from the call to
//! the end of its response body, with the service's [`Drain`] in its extensions.
//!
//! A request that waits (a slow handler, a streaming body) watches the drain deadline
//! ([`Watch`]): at the abort it ends (an HTTP/2 stream runs on a task of its own, which nothing
//! else would stop), and for gRPC it ends a moment earlier with status UNAVAILABLE. A request
//! that does not wait costs no registration at all.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use pin_project_lite::pin_project;

use crate::drain::Drain;
use crate::error::BoxError;
use crate::gated::Deadline;
use crate::http::body::{BodyShared, BodyWatch, RequestBody};
use crate::http::panic::{self, Asked};
use crate::http::shared::Shared;
use crate::http::state::ConnState;
use crate::metrics::{Closed, RequestEnd};

/// One request in flight: counted for the service (the report) and for its connection (the
/// drain), until its response body has ended. The connection is the unit the drain waits for;
/// the request is only counted (one atomic add each way on the service's counters).
pub(crate) struct RequestGuard {
    conn: Arc<ConnState>,
    /// Its body, if one was still to come at the head (and is watched).
    body: Option<Arc<BodyShared>>,
    /// How it ended, once known (a [`RequestEnd`]; 0: not said, which at the drop means cut
    /// off: by the deadline if it has passed, else by the client going away). Atomic only
    /// because a body's `is_end_stream` says it through `&self`.
    end: AtomicU8,
}

impl RequestGuard {
    fn new(conn: &Arc<ConnState>, body: Option<Arc<BodyShared>>) -> Self {
        conn.request_began();
        RequestGuard {
            conn: Arc::clone(conn),
            body,
            end: AtomicU8::new(0),
        }
    }

    /// Says how the request ended (before the guard is dropped).
    #[inline]
    fn end_as(&self, end: RequestEnd) {
        self.end.store(end as u8, Ordering::Relaxed);
    }

    /// An HTTP/1 connection closes after this request, for `reason` (an HTTP/2 one goes on:
    /// only the stream ends).
    fn closes_connection(&self, reason: Closed) {
        if !self.conn.is_h2() {
            self.conn.close_as(reason);
        }
    }

    /// Its body, if it timed out (`cx` is woken when it does).
    #[inline]
    fn body_timed_out(&self, cx: &mut Context<'_>) -> Option<&BodyShared> {
        self.body.as_deref().filter(|b| b.timed_out(cx))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let body_done = self.body.as_ref().is_none_or(|b| b.complete());
        let end = RequestEnd::from_u8(self.end.load(Ordering::Relaxed)).unwrap_or_else(|| {
            if self.conn.drain().is_deadline_passed() || self.conn.age_cut_over() {
                RequestEnd::Aborted
            } else {
                RequestEnd::Cancelled
            }
        });
        self.conn.request_ended(body_done, end);
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
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Data: From<Bytes>,
{
    type Response = Response<ResponseBody<B, AppFuture<S>>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    // Into hyper's dispatch: the future it builds is moved less (counted under callgrind: 55
    // instructions a request fewer on HTTP/1.1, 116 on h2c).
    #[inline(always)]
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let health = self.shared.health.as_ref();
        if let Some((status, text)) = health.and_then(|h| h.answer(&req, &self.shared.handle)) {
            let mut response = Response::new(ResponseBody::text(text));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            self.conn.answered();
            return ResponseFuture::Ready {
                response: Some(Box::new(response)),
            };
        }
        // A body still to come is watched: timed while the app waits for it, and (HTTP/1) for
        // its end, after which the next bytes begin a head.
        let timeout = self.shared.body_timeout;
        let body = (!req.body().is_end_stream() && (timeout.is_some() || !self.conn.is_h2()))
            .then(|| BodyShared::new(self.shared.drain.clone(), timeout));
        let watch = body.as_ref().map(BodyWatch::new);
        let guard = RequestGuard::new(&self.conn, body);
        let mut req = req.map(|incoming| RequestBody::new(incoming, watch));
        #[cfg(feature = "tls")]
        if let Some(chain) = self.conn.peer_certificates() {
            req.extensions_mut().insert(chain.clone());
        }
        if self.shared.grpc {
            // tonic handlers read it from the request; axum's extractor finds it while the
            // handler runs (`serving`), without an allocation per request.
            req.extensions_mut().insert(self.shared.drain.clone());
        }
        let asked = (req.method().clone(), req.uri().path_and_query().cloned());
        let connect = req.method() == http::Method::CONNECT;
        let last = !self.conn.is_h2() && (self.conn.aged() || self.shared.is_closing());
        // Allocated first, then written: the app's future is made in its place rather than
        // on the stack and copied there. (The future here and made so, counted: 130
        // instructions a request fewer on HTTP/1.1, 500 on h2c, where hyper moved it more.)
        let held = Box::write(
            Box::new_uninit(),
            Held {
                future: Some(hyper::service::Service::call(&self.app, req)),
                body: None,
                // Said if the handler panics.
                asked,
                guard: Some(guard),
                watch: None,
                left: None,
                grpc: self.shared.grpc,
                connect,
                // A request that comes once the connections are closing (in the drain's
                // keep-alive grace) is the connection's last: its answer says so.
                last,
            },
        );
        ResponseFuture::App {
            held: Some(Box::into_pin(held)),
        }
    }
}

/// The app's future for one request.
pub(crate) type AppFuture<S> = TowerToHyperServiceFuture<S, Request<RequestBody>>;

/// The drain deadline, as a waiting request watches it: registered at its first wait only, so
/// that a quick request costs nothing.
pub(crate) struct Watch {
    /// gRPC: the deadline itself, to end with UNAVAILABLE while the connection can carry it.
    cutoff: Option<Deadline>,
    /// gRPC: the end of the connection's maximum age's grace, to end the same way.
    age: Option<Deadline>,
    /// The abort a moment later: the request ends, whatever it is.
    abort: Deadline,
}

/// What the deadline means for a request that is waiting.
enum Ending {
    /// Keep waiting.
    No,
    /// gRPC: end with status UNAVAILABLE, saying why.
    Unavailable(&'static str),
    /// End now.
    Abort,
}

impl Watch {
    fn new(conn: &ConnState, grpc: bool) -> Self {
        let drain = conn.drain();
        Watch {
            cutoff: grpc.then(|| Deadline::gated(drain.deadline_token(), drain.deadline_gate())),
            age: conn
                .age_cut()
                .filter(|_| grpc)
                .map(|cut| Deadline::new(cut.clone())),
            abort: Deadline::gated(drain.hard_stop_token(), drain.deadline_gate()),
        }
    }

    /// The watch of the request `guard` counts, made at its first wait.
    fn of<'a>(
        watch: &'a mut Option<Box<Watch>>,
        guard: &Option<RequestGuard>,
        grpc: bool,
    ) -> Option<&'a mut Watch> {
        if watch.is_none() {
            *watch = Some(Box::new(Watch::new(&guard.as_ref()?.conn, grpc)));
        }
        watch.as_deref_mut()
    }

    fn ending(&mut self, cx: &mut Context<'_>) -> Ending {
        if self.abort.reached(cx) {
            Ending::Abort
        } else if self.cutoff.as_mut().is_some_and(|c| c.reached(cx)) {
            Ending::Unavailable("server shutting down: drain deadline reached")
        } else if self.age.as_mut().is_some_and(|c| c.reached(cx)) {
            Ending::Unavailable("connection at its maximum age: grace period over")
        } else {
            Ending::No
        }
    }

    /// `grpc-status: 14` (UNAVAILABLE, which clients may retry) and why: the headers of a
    /// trailers-only response, or a streaming response's trailers.
    fn unavailable(why: &'static str) -> HeaderMap {
        let mut status = HeaderMap::new();
        status.insert("grpc-status", HeaderValue::from_static("14"));
        status.insert("grpc-message", HeaderValue::from_static(why));
        status
    }
}

pin_project! {
    /// What a request holds from its call to the end of its response body, in one allocation
    /// made at the call, the app's future in it: the response future and then the response
    /// body carry a pointer to it, so that what hyper moves around per request (the future,
    /// the response, its body) is no larger than a pointer, or than the app's own.
    pub(crate) struct Held<B, F> {
        // The app's future, until it has answered.
        #[pin]
        future: Option<F>,
        // The app's response body, once it has answered.
        #[pin]
        body: Option<B>,
        // `None` once the request has ended (answered without a body to follow, or its body
        // ended or was cut off).
        guard: Option<RequestGuard>,
        // The request's method and path, for the event if the handler or the body panics.
        asked: Asked,
        // Made at its first wait only (most requests never wait).
        watch: Option<Box<Watch>>,
        // Bytes of the response body still to come, when the length is known: at 0 it is
        // complete.
        left: Option<u64>,
        grpc: bool,
        // A CONNECT request: a 2xx answer hands the socket over, as a 101 does.
        connect: bool,
        // The connection's last request: its answer carries `Connection: close`.
        last: bool,
    }
}

pin_project! {
    /// The response of a [`RequestService`].
    #[project = ResponseFutureProj]
    pub(crate) enum ResponseFuture<S, B>
    where
        S: tower_service::Service<Request<RequestBody>>,
    {
        App {
            // Handed to the response body once the app has answered.
            held: Option<Pin<Box<Held<B, AppFuture<S>>>>>,
        },
        // A health endpoint's answer (boxed: the future stays two words).
        Ready { response: Option<Box<Response<ResponseBody<B, AppFuture<S>>>>> },
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B, AppFuture<S>>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::App { held } => {
                // Answered already: hyper polls a ready future no more.
                let Some(kept) = held.as_mut() else {
                    return Poll::Pending;
                };
                let mut h = kept.as_mut().project();
                let Some(future) = h.future.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                let guard = h.guard;
                match panic::catch(|| serving(guard, || future.poll(cx))) {
                    Err(message) => {
                        let grpc = *h.grpc;
                        let h2 = guard.as_ref().is_some_and(|g| g.conn.is_h2());
                        let Some(guard) = guard.take() else {
                            return Poll::Ready(Ok(panic::answer(grpc, h2)));
                        };
                        guard.end_as(RequestEnd::Panicked);
                        guard.closes_connection(Closed::Panic);
                        panic::report(&guard.conn, h.asked, &message, "before answering");
                        // A handler that panics on its body's error: the body's timeout is what
                        // the client is told.
                        Poll::Ready(match guard.body_timed_out(cx) {
                            Some(body) => body_timed_out(Some(body), grpc, h2),
                            None => Ok(panic::answer(grpc, h2)),
                        })
                    }
                    Ok(polled) => match polled {
                        // The body stalled: the request ends, whatever the app is doing or
                        // answered (its read failed).
                        _ if guard
                            .as_ref()
                            .is_some_and(|g| g.body_timed_out(cx).is_some()) =>
                        {
                            let guard = guard.take();
                            if let Some(guard) = &guard {
                                guard.end_as(RequestEnd::Failed);
                                guard.closes_connection(Closed::BodyTimeout);
                            }
                            let h2 = guard.as_ref().is_some_and(|g| g.conn.is_h2());
                            let body = guard.as_ref().and_then(|g| g.body.as_deref());
                            Poll::Ready(body_timed_out(body, *h.grpc, h2))
                        }
                        Poll::Pending => {
                            let mut response = Response::new(ResponseBody::default());
                            let ending = Watch::of(h.watch, guard, *h.grpc)
                                .map_or(Ending::No, |w| w.ending(cx));
                            match ending {
                                Ending::No => return Poll::Pending,
                                // A trailers-only response.
                                Ending::Unavailable(why) => {
                                    *response.headers_mut() = Watch::unavailable(why);
                                    response.headers_mut().insert(
                                        CONTENT_TYPE,
                                        HeaderValue::from_static("application/grpc"),
                                    );
                                }
                                // The connection is being closed: this answer goes nowhere, but
                                // the handler is dropped (cancelled) and the stream's task ends.
                                Ending::Abort => {
                                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE
                                }
                            }
                            if let Some(guard) = guard.take() {
                                guard.end_as(RequestEnd::Aborted);
                            }
                            Poll::Ready(Ok(response))
                        }
                        // The request stays in flight until its body has been sent.
                        Poll::Ready(Ok(mut response)) => {
                            let status = response.status();
                            let upgrade = status == StatusCode::SWITCHING_PROTOCOLS
                                || (*h.connect && status.is_success());
                            if let Some(guard) = guard.as_ref() {
                                if upgrade {
                                    // Before hyper hands the socket to the handler: from now on
                                    // it must watch the deadline itself.
                                    guard.conn.mark_upgraded();
                                } else if *h.last {
                                    // The client must not send another request on this
                                    // connection.
                                    response
                                        .headers_mut()
                                        .insert(CONNECTION, HeaderValue::from_static("close"));
                                }
                            }
                            // How much body is to come, if known: hyper stops polling a body
                            // once it has sent that much (or none at all, for HEAD, 204, 304).
                            let none = h.asked.0 == http::Method::HEAD
                                || status == StatusCode::NO_CONTENT
                                || status == StatusCode::NOT_MODIFIED;
                            *h.left = if none {
                                Some(0)
                            } else {
                                response.body().size_hint().exact().or_else(|| {
                                    let length = response.headers().get(CONTENT_LENGTH)?;
                                    length.to_str().ok()?.parse().ok()
                                })
                            };
                            if *h.left == Some(0)
                                && let Some(guard) = guard
                            {
                                guard.end_as(RequestEnd::Completed);
                            }
                            // The body goes where the rest of the request is held; the app's
                            // future, done, goes.
                            h.future.set(None);
                            let (parts, body) = response.into_parts();
                            let body = match held.take() {
                                Some(mut held) => {
                                    held.as_mut().project().body.set(Some(body));
                                    ResponseBody::App { held }
                                }
                                None => ResponseBody::default(),
                            };
                            Poll::Ready(Ok(Response::from_parts(parts, body)))
                        }
                        // Dropping the guard ends the request: hyper closes the connection.
                        Poll::Ready(Err(error)) => {
                            if let Some(guard) = guard.take() {
                                guard.end_as(RequestEnd::Failed);
                            }
                            Poll::Ready(Err(error.into()))
                        }
                    },
                }
            }
            ResponseFutureProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(*response)),
                None => Poll::Pending,
            },
        }
    }
}

/// A response body: the app's, holding its request's count until it ends, or a short text.
/// No larger than two words, as the app's own body (axum's) is: hyper moves it several
/// times per request.
pub(crate) enum ResponseBody<B, F> {
    App { held: Pin<Box<Held<B, F>>> },
    Text { text: Option<Box<Bytes>> },
}

impl<B, F> ResponseBody<B, F> {
    /// A short text.
    pub(crate) fn text(text: Bytes) -> Self {
        ResponseBody::Text {
            text: Some(Box::new(text)),
        }
    }
}

impl<B, F> Default for ResponseBody<B, F> {
    /// No body.
    fn default() -> Self {
        ResponseBody::Text { text: None }
    }
}

impl<B, F> Body for ResponseBody<B, F>
where
    B: Body,
    B::Data: From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::App { held } => {
                let h = held.as_mut().project();
                let guard = h.guard;
                // Ended: by the body itself, or by the deadline.
                if guard.is_none() {
                    return Poll::Ready(None);
                }
                let Some(body) = h.body.as_pin_mut() else {
                    return Poll::Ready(None);
                };
                let polled = match panic::catch(|| body.poll_frame(cx)) {
                    Ok(polled) => polled.map(|frame| frame.map(|f| f.map_err(Into::into))),
                    Err(message) => {
                        // The head is out: the stream is reset (HTTP/2) or the connection cut
                        // (HTTP/1), so that the client does not take what came for the whole.
                        if let Some(guard) = guard.take() {
                            guard.end_as(RequestEnd::Panicked);
                            guard.closes_connection(Closed::Panic);
                            panic::report(&guard.conn, h.asked, &message, "in its response body");
                        }
                        return Poll::Ready(Some(Err(message.into())));
                    }
                };
                // The request's body stalled: the response is cut off.
                if !matches!(polled, Poll::Ready(None | Some(Err(_))))
                    && let Some(g) = guard.as_ref()
                    && let Some(stalled) = g.body_timed_out(cx)
                {
                    let end = body_timed_out_midway(stalled, *h.grpc, g.conn.is_h2());
                    g.end_as(RequestEnd::Failed);
                    g.closes_connection(Closed::BodyTimeout);
                    guard.take();
                    return Poll::Ready(Some(end));
                }
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(guard) = guard.take() {
                            guard.end_as(RequestEnd::Completed);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(guard) = guard.take() {
                            guard.end_as(RequestEnd::Failed);
                        }
                    }
                    Poll::Pending => match Watch::of(h.watch, guard, *h.grpc)
                        .map_or(Ending::No, |w| w.ending(cx))
                    {
                        Ending::No => {}
                        Ending::Unavailable(why) => {
                            if let Some(guard) = guard.take() {
                                guard.end_as(RequestEnd::Aborted);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(Watch::unavailable(why)))));
                        }
                        Ending::Abort => {
                            if let Some(guard) = guard.take() {
                                guard.end_as(RequestEnd::Aborted);
                            }
                            return Poll::Ready(None);
                        }
                    },
                    Poll::Ready(Some(Ok(frame))) => {
                        // The last byte of a body of known length: hyper may not poll again.
                        if let (Some(n), Some(data)) = (h.left.as_mut(), frame.data_ref()) {
                            *n = n.saturating_sub(data.remaining() as u64);
                            if *n == 0
                                && let Some(guard) = guard.as_ref()
                            {
                                guard.end_as(RequestEnd::Completed);
                            }
                        }
                    }
                }
                polled
            }
            ResponseBody::Text { text } => {
                Poll::Ready(text.take().map(|text| Ok(Frame::data((*text).into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::App { held } => {
                let end = held.body.as_ref().is_none_or(Body::is_end_stream);
                // hyper polls an ended body no more: this is its end.
                if end && let Some(guard) = &held.guard {
                    guard.end_as(RequestEnd::Completed);
                }
                end
            }
            ResponseBody::Text { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::App { held } => held
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            ResponseBody::Text { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

/// The answer to a request whose body stalled before its response began: 408 with
/// `Connection: close` (HTTP/1), a reset stream (HTTP/2: CANCEL), or gRPC status CANCELLED.
fn body_timed_out<B, F>(
    body: Option<&BodyShared>,
    grpc: bool,
    h2: bool,
) -> Result<Response<ResponseBody<B, F>>, BoxError> {
    if h2 && !grpc {
        return Err(Box::new(h2::Error::from(h2::Reason::CANCEL)));
    }
    let mut response = Response::new(ResponseBody::default());
    if grpc {
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.extend(cancelled(body));
    } else {
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        *response.body_mut() = ResponseBody::text(Bytes::from_static(b"request body timed out\n"));
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    Ok(response)
}

/// The end of a response whose request body stalled after it began: gRPC trailers with status
/// CANCELLED, or an error (HTTP/2: the stream is reset with CANCEL; HTTP/1: the connection is
/// closed).
fn body_timed_out_midway<D>(body: &BodyShared, grpc: bool, h2: bool) -> Result<Frame<D>, BoxError> {
    if grpc {
        Ok(Frame::trailers(cancelled(Some(body))))
    } else if h2 {
        Err(Box::new(h2::Error::from(h2::Reason::CANCEL)))
    } else {
        Err(Box::new(body.error()))
    }
}

/// `grpc-status: 1` (CANCELLED) and why.
fn cancelled(body: Option<&BodyShared>) -> HeaderMap {
    let mut status = HeaderMap::new();
    status.insert("grpc-status", HeaderValue::from_static("1"));
    let message = body.map(|b| b.error().to_string()).unwrap_or_default();
    if let Ok(message) = HeaderValue::from_str(&message) {
        status.insert("grpc-message", message);
    }
    status
}

thread_local! {
    /// The drain of the last service whose handler was polled on this thread, for the axum
    /// extractor, so that no request pays for an extension it may never read. Kept between
    /// polls: the next is almost always the same service's, and then it is neither cloned
    /// nor borrowed.
    static SERVING: RefCell<Option<Drain>> = const { RefCell::new(None) };
    /// The [`Drain::id`] of the drain in `SERVING` (0: none).
    static SERVED: Cell<usize> = const { Cell::new(0) };
    /// While a handler is polled, its drain's id (0: no handler of this module is polled).
    static IN_HANDLER: Cell<usize> = const { Cell::new(0) };
}

/// Polls a handler with its service's drain findable by [`serving_drain`].
fn serving<T>(guard: &Option<RequestGuard>, poll: impl FnOnce() -> T) -> T {
    let Some(guard) = guard else { return poll() };
    let drain = guard.conn.drain();
    let id = drain.id();
    if SERVED.get() != id {
        SERVING.with(|serving| *serving.borrow_mut() = Some(drain.clone()));
        SERVED.set(id);
    }
    /// Restores the outer poll's id however this one ends, a handler's panic included.
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_HANDLER.set(self.0);
        }
    }
    let _restore = Restore(IN_HANDLER.replace(id));
    poll()
}

/// The drain of the handler running now on this thread, if a server of this module runs it.
/// `None` too in a handler that polled another service's handler itself (on its own thread),
/// once that one has returned: its drain is no longer the one kept.
pub(crate) fn serving_drain() -> Option<Drain> {
    let id = IN_HANDLER.get();
    if id == 0 || SERVED.get() != id {
        return None;
    }
    SERVING.with(|serving| serving.borrow().clone())
}
