//! One connection's task: its hyper connection on the socket (`io`), its timer (the handshake,
//! header, idle and age limits), and how it ends when the drain begins, judged from its state
//! (`state`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::budget::ABORT_NOTICE;
use crate::error::BoxError;
use crate::events::Event;
use crate::gated::Registered;
use crate::http::clock;
use crate::http::io::{ConnIo, Raw, Transport};
use crate::http::request::RequestService;
use crate::http::shared::{App, AppBody, Shared};
use crate::http::state::{ConnState, FIRST_REQUEST_GRACE, IDLE_CLOSE_GRACE};
use crate::http::timeouts::Verdict;
use crate::metrics::Closed;

/// A grace of more than this is no cut at all (and keeps a timer's instant representable).
const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Serves one accepted connection on a task of the drain's.
///
/// When the drain begins, a connection on which no request has begun (silent, or partway
/// through its first request's headers) is closed at once: nothing is lost. One accepted in the
/// last 50 ms that has sent nothing yet gets the rest of those 50 ms to send its request. Every
/// other connection is told to shut down gracefully: an idle HTTP/1.1 keep-alive connection
/// closes (one that answered in the last 50 ms first gets the rest of those 50 ms for its next
/// request), a busy one finishes its response (with `Connection: close`), HTTP/2 sends GOAWAY
/// and finishes its open streams.
pub(crate) fn serve<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    nodelay: bool,
    app: S,
    shared: &Arc<Shared>,
    slot: Option<OwnedSemaphorePermit>,
) where
    S: App<B>,
    B: AppBody,
{
    if nodelay {
        let _ = stream.set_nodelay(true);
    }
    let drain = shared.drain.clone();
    let state = Arc::new(ConnState::new(
        drain.clone(),
        shared.protocols,
        peer,
        Arc::clone(&shared.name),
        shared.max_age.map(|m| m.of(peer)),
    ));
    let guard = (drain.track(), slot);
    let raw = Raw::new(stream, Arc::clone(&state));
    let service = RequestService::new(app, Arc::clone(shared), Arc::clone(&state));
    let shared = Arc::clone(shared);
    drain.clone().spawn_attached(async move {
        let abort = (drain.hard_stop_token(), drain.deadline_gate());
        #[cfg(feature = "tls")]
        if shared.tls.is_some() {
            // On the heap: a TLS connection's state (its handshake, rustls's buffers) is
            // larger than a plaintext one's, and the task of every connection would
            // otherwise be the size of the larger (10,000 idle ones: 65 MiB more).
            return Box::pin(async move {
                let Some(acceptor) = &shared.tls else { return };
                // The handshake first, inside the drain's rules; the guard is held meanwhile.
                let Some(tls) = crate::http::tls::handshake(acceptor, raw, &state, &shared).await
                else {
                    return;
                };
                let io = TokioIo::new(ConnIo::new(tls, guard, abort, Arc::clone(&state)));
                drive(io, service, shared, state, peer).await
            })
            .await;
        }
        let io = TokioIo::new(ConnIo::new(raw, guard, abort, Arc::clone(&state)));
        drive(io, service, shared, state, peer).await;
    });
}

/// Serves a connection (its handshake, if TLS, done) until it ends: the timeouts of normal
/// serving, and how it ends at the drain.
async fn drive<T, S, B>(
    io: TokioIo<ConnIo<T>>,
    service: RequestService<S>,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    peer: SocketAddr,
) where
    T: Transport,
    S: App<B>,
    B: AppBody,
{
    let drain = shared.drain.clone();
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // The timeouts of normal serving (handshake, header, idle), on one timer that is
    // looked at lazily (see `timeouts`). When every one is off, it is never polled.
    let born = state.born();
    let mut next = shared.timeouts.judge(&state.snapshot(), Duration::ZERO);
    let timer = tokio::time::sleep_until(born + at(next));
    tokio::pin!(timer);
    // Sent GOAWAY for being idle: it closes once the client has gone, or after a grace.
    let mut going_away = false;
    // At its maximum age: told to go, and given the grace, which ends then.
    let mut aging: Option<Duration> = None;
    // The drain, for connections: once every listener is closed (a connection already going
    // away for being idle just goes on).
    let mut closing = std::pin::pin!(shared.closing());
    let result = loop {
        // What woke the task: hyper's connection is polled at every wake; the timer and the
        // drain only when they may have fired (see `gated`), or to register.
        let mut timer_registered = Registered::default();
        let wake = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Wake::Ended(result));
            }
            if matches!(next, Verdict::At(_)) && (timer.is_elapsed() || timer_registered.stale(cx))
            {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                timer_registered.note(cx);
            }
            if !going_away && closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Closing);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Ended(result) => break result,
            Wake::Timer => {
                let now = born.elapsed();
                if let Some(end) = aging {
                    if state.gone_quiet() {
                        // Nothing in flight (HTTP/2: the client kept its connection after the
                        // GOAWAY; HTTP/1: no request came): closed, once settled.
                        match settle(conn.as_mut(), &state, SETTLE).await {
                            Settled::Ended(result) => log_end(&state, peer, result),
                            Settled::Close => {}
                            Settled::Wait(wait) => {
                                // Within the grace, not past its end.
                                let again = now + wait;
                                next = Verdict::At(if end > now { again.min(end) } else { again });
                                timer.as_mut().reset(born + at(next));
                                continue;
                            }
                        }
                        return;
                    }
                    if now < end {
                        // Looked at early, to close it once quiet: its work goes on.
                        next = Verdict::At(end.min(now + state.recheck()));
                        timer.as_mut().reset(born + at(next));
                        continue;
                    }
                    // The grace is over: what is left ends as at the drain's deadline (gRPC
                    // streams with UNAVAILABLE, given a moment to say it), then the
                    // connection is closed.
                    drain.count(Event::MaxConnectionAgeGrace);
                    if let Some(cut) = state.age_cut() {
                        cut.cancel();
                        if shared.grpc {
                            let _ = tokio::time::timeout(ABORT_NOTICE, conn.as_mut()).await;
                        }
                    }
                    return;
                }
                if going_away {
                    if state.quiet() {
                        let settled = settle(conn.as_mut(), &state, SETTLE).await;
                        if let Settled::Wait(wait) = settled {
                            next = Verdict::At(now + wait);
                            timer.as_mut().reset(born + at(next));
                            continue;
                        }
                        state.close_as(Closed::IdleTimeout);
                        if let Settled::Ended(result) = settled {
                            log_end(&state, peer, result);
                        }
                        return;
                    }
                    // A stream begun before the GOAWAY is still running: it finishes.
                    next = Verdict::At(now + IDLE_CLOSE_GRACE);
                    timer.as_mut().reset(born + at(next));
                    continue;
                }
                next = shared.timeouts.judge(&state.snapshot(), now);
                if matches!(next, Verdict::Close(Event::IdleTimeout) | Verdict::Age) {
                    // A request may have come this very moment, still in the kernel: a last
                    // look before closing (the keep-alive race, made as narrow as it gets).
                    state.read_now();
                    let polled = poll_once(conn.as_mut()).await;
                    if let Poll::Ready(result) = polled {
                        log_end(&state, peer, result);
                        return;
                    }
                    next = shared.timeouts.judge(&state.snapshot(), now);
                }
                match next {
                    Verdict::At(_) => timer.as_mut().reset(born + at(next)),
                    Verdict::Off => {}
                    Verdict::Close(event) => {
                        drain.count(event);
                        state.close_as(Closed::of(event));
                        tracing::debug!(target: "lameduck", %peer, ?event, "connection closed");
                        // Dropping the connection closes the socket.
                        return;
                    }
                    Verdict::GoAway => {
                        drain.count(Event::IdleTimeout);
                        state.close_as(Closed::IdleTimeout);
                        conn.as_mut().graceful_shutdown();
                        going_away = true;
                        next = Verdict::At(now + IDLE_CLOSE_GRACE);
                        timer.as_mut().reset(born + at(next));
                    }
                    Verdict::Age => {
                        // Told to go as the drain tells it: GOAWAY (its streams finish), or
                        // HTTP/1 closed now if idle, else after its response (which, and any
                        // request after, says `Connection: close`).
                        drain.count(Event::MaxConnectionAge);
                        state.mark_aged();
                        state.close_as(Closed::MaxAge);
                        if state.gone_quiet() && !state.is_h2() {
                            // Idle, no head begun, not answered a moment ago (the last look
                            // at the kernel was just taken): closed now.
                            return;
                        }
                        if state.is_h2() || !state.quiet() {
                            // GOAWAY; or HTTP/1 busy: its response says `Connection: close`
                            // and hyper closes after it.
                            conn.as_mut().graceful_shutdown();
                        }
                        // (HTTP/1 between requests, one most likely on its way: not shut now,
                        // which would close it under that request; the request's response
                        // says `Connection: close`.)
                        let grace = shared.max_age.map_or(Duration::ZERO, |m| m.grace);
                        let end = now.saturating_add(grace.min(FAR));
                        aging = Some(end);
                        // Quiet already: looked at again soon, to close it once the client
                        // has taken the GOAWAY, or the moment for a next request has passed.
                        next = Verdict::At(if state.quiet() {
                            now + state.recheck()
                        } else {
                            end
                        });
                        timer.as_mut().reset(born + at(next));
                    }
                }
                continue;
            }
            Wake::Closing => {
                // A request may sit in the kernel, sent before the drain began but not yet
                // reported by the reactor: have hyper read it now, so that it is served rather
                // than lost when an idle-looking connection is closed.
                state.read_now();
                let polled = poll_once(conn.as_mut()).await;
                if let Poll::Ready(result) = polled {
                    log_end(&state, peer, result);
                    return;
                }
                if state.closable_at_once() {
                    let age = born.elapsed();
                    if state.nothing_read() && age < FIRST_REQUEST_GRACE {
                        // Connected a moment ago: its first request is most likely on the
                        // wire. It gets the rest of the grace (served as usual), then is
                        // judged again.
                        tokio::select! {
                            biased;
                            result = conn.as_mut() => {
                                state.close_as(state.drained());
                                log_end(&state, peer, result);
                                return;
                            }
                            () = tokio::time::sleep(FIRST_REQUEST_GRACE - age) => {}
                        }
                    }
                    if state.closable_at_once() {
                        // Dropping the connection closes the socket.
                        state.close_as(Closed::IdleAtDrain);
                        return;
                    }
                }
                if let Some(left) = state.keep_alive_grace() {
                    // Answered a moment ago: its next request is most likely on its way. It is
                    // served (with `Connection: close`, after which the connection ends).
                    tokio::select! {
                        biased;
                        result = conn.as_mut() => {
                            state.close_as(state.drained());
                            log_end(&state, peer, result);
                            return;
                        }
                        () = tokio::time::sleep(left) => {}
                    }
                    // A last look into the kernel after that wait, as before it.
                    state.read_now();
                    if let Poll::Ready(result) = poll_once(conn.as_mut()).await {
                        state.close_as(state.drained());
                        log_end(&state, peer, result);
                        return;
                    }
                }
                if !state.is_h2() && state.gone_quiet() {
                    // HTTP/1.1 between requests, none begun nor in the kernel (looked at
                    // above): closed by the drop, whose FIN is the one hyper's shutdown would
                    // send (a syscall fewer for each of 10,000 idle connections).
                    state.close_as(Closed::IdleAtDrain);
                    return;
                }
                // Nothing in flight now: it closes idle (HTTP/1 at once; HTTP/2 once the
                // client has taken the GOAWAY), unless a stream comes first.
                let idle = state.quiet();
                conn.as_mut().graceful_shutdown();
                // With nothing in flight, an HTTP/2 connection still waits for the client to
                // acknowledge the GOAWAY; a client that never does must not hold the drain. The
                // grace counts from its last response's end, so that a stream that ends as it
                // would run out still has its last frames written. A response still being
                // written is in flight: it is not cut off here.
                let mut wait = IDLE_CLOSE_GRACE;
                let result = loop {
                    tokio::select! {
                        biased;
                        result = conn.as_mut() => break result,
                        () = tokio::time::sleep(wait) => {}
                    }
                    match settle(conn.as_mut(), &state, IDLE_CLOSE_GRACE).await {
                        Settled::Ended(result) => break result,
                        Settled::Close => break Ok(()),
                        Settled::Wait(left) => wait = left,
                    }
                };
                state.close_as(if idle && state.quiet() {
                    Closed::IdleAtDrain
                } else {
                    state.drained()
                });
                break result;
            }
        }
    };
    log_end(&state, peer, result);
}

/// How long an HTTP/2 connection's last stream must have ended before the connection is
/// dropped: a stream counts as ended as its body gives its last frame, a moment before its
/// task has handed that frame to hyper.
const SETTLE: Duration = Duration::from_millis(30);

/// What [`settle`] found.
enum Settled<T> {
    /// The connection ended in the last poll.
    Ended(T),
    /// To be dropped now.
    Close,
    /// Not yet: look again after this.
    Wait(Duration),
}

/// For a connection to be closed once nothing is in flight. Busy: looked at again after
/// [`IDLE_CLOSE_GRACE`]. HTTP/1 is dropped at once: hyper writes its responses on this task,
/// so nothing is left elsewhere. HTTP/2 once its last stream ended `after` ago (at least
/// [`SETTLE`]), and after a last poll that writes what hyper holds; a stream that poll took in
/// (a client that has not yet seen the GOAWAY) is served, and the connection looked at again.
async fn settle<C: Future>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    after: Duration,
) -> Settled<C::Output> {
    // Quiet first: then the last end's time, stored before the count went down, is the one
    // of the request that made it quiet.
    if !state.quiet() {
        return Settled::Wait(IDLE_CLOSE_GRACE);
    }
    if !state.is_h2() {
        return Settled::Close;
    }
    let after = after.max(SETTLE);
    let since = state.since_last_end();
    if since.saturating_add(clock::SLACK) < after {
        return Settled::Wait(after - since);
    }
    match poll_once(conn.as_mut()).await {
        Poll::Ready(result) => Settled::Ended(result),
        Poll::Pending if state.quiet() => Settled::Close,
        Poll::Pending => Settled::Wait(IDLE_CLOSE_GRACE),
    }
}

/// One poll of `future`, for a look at what is ready now (or to have it write what it holds).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// What woke a connection's task, to do something about.
enum Wake {
    /// The connection ended.
    Ended(Result<(), BoxError>),
    /// Its timer fired.
    Timer,
    /// The drain begins for connections.
    Closing,
}

/// The time a verdict looks again at (since the accept); zero for one that does not.
fn at(verdict: Verdict) -> Duration {
    match verdict {
        Verdict::At(at) => at,
        _ => Duration::ZERO,
    }
}

/// Counts what ended a connection with an error the client caused (a head too large, an
/// HTTP/2 flood or protocol error), and logs it.
fn log_end(state: &ConnState, peer: SocketAddr, result: Result<(), BoxError>) {
    let Err(error) = result else { return };
    if let Some(event) = client_error(&*error) {
        state.drain().count(event);
        state.close_as(Closed::of(event));
    }
    tracing::debug!(target: "lameduck", %peer, "connection ended: {error}");
}

/// The event a connection's error counts as, if the client caused it.
fn client_error(error: &(dyn std::error::Error + 'static)) -> Option<Event> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_parse_too_large()
        {
            return Some(Event::HeadersTooLarge);
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            // Only what this side detected and answered with GOAWAY: not the client's own
            // GOAWAY, nor a broken socket.
            if !(h2.is_go_away() && h2.is_library()) {
                return None;
            }
            return match h2.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(Event::H2TooManyResets),
                Some(h2::Reason::NO_ERROR) | None => None,
                Some(_) => Some(Event::H2ProtocolError),
            };
        }
        cause = error.source();
    }
    None
}
