//! One connection: its socket (tracked by the drain, and closed at the abort after the drain
//! deadline, even after an upgrade), its hyper connection, and how it ends when the drain
//! begins.

use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::ABORT_NOTICE;
use crate::drain::{Drain, WorkGuard};
use crate::error::BoxError;
use crate::events::Event;
use crate::gated::{Gate, Gated, MaybeGate, Registered};
use crate::http::clock;
use crate::http::request::RequestService;
use crate::http::server::{App, AppBody, Protocols, Shared};
use crate::http::timeouts::{Snapshot, Verdict};
use crate::metrics::{Closed, RequestEnd};

/// How long after its accept a connection that has sent nothing yet may still deliver its first
/// request once the drain has begun: a client that connected just before the drain is most
/// likely sending it. Older silent connections are closed at once.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(50);

/// How long after its last response an idle HTTP/1.1 keep-alive connection may still deliver
/// its next request once the drain has begun: a busy client sends it at once, and closing the
/// connection under it would reset it (the keep-alive race). That request is served, with
/// `Connection: close`. Connections idle for longer are closed at once.
const KEEP_ALIVE_GRACE: Duration = Duration::from_millis(50);

/// How long a connection with no request in flight gets, once told to shut down (at the drain:
/// counted from its last response), to close by itself (an HTTP/2 client acknowledging the
/// GOAWAY) before it is closed.
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
                        state.aged.store(true, Ordering::Release);
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

/// One connection, as its requests and the drain see it.
#[derive(Debug)]
pub(crate) struct ConnState {
    drain: Drain,
    /// The client's address and the server's name, for what is logged about a request.
    peer: SocketAddr,
    service: Arc<str>,
    /// Set at the first request: until then, the drain may close the connection at once.
    request_seen: AtomicBool,
    /// Requests in flight on this connection (HTTP/2 runs several at once).
    active: AtomicUsize,
    /// Set by the drain: the socket's next read goes to the kernel at once (see `ConnIo`).
    read_now: AtomicBool,
    /// Set when a response switches protocols: the socket is about to leave hyper for the
    /// handler's task, which the lifecycle cannot abort.
    upgraded: AtomicBool,
    /// Every byte read so far is the HTTP/2 preface's (and at least one has come).
    h2: AtomicBool,
    /// Bytes came after the preface (the client's SETTINGS, at least its frame's start).
    past_preface: AtomicBool,
    /// The versions the server speaks.
    protocols: Protocols,
    /// Bytes read so far, up to the length of the HTTP/2 preface (it is all that matters).
    prefix_read: AtomicUsize,
    /// A write is waiting for the peer to take data: a response is still on its way out.
    write_blocked: AtomicBool,
    /// When it was accepted (its timers count from it).
    born: Instant,
    /// The same on the coarse clock: what [`last_end_us`](Self::last_end_us) and
    /// [`head_began_us`](Self::head_began_us) count from.
    born_us: u64,
    /// When the last request ended, in microseconds since `born_us` (`u64::MAX`: none yet).
    last_end_us: AtomicU64,
    /// HTTP/1: no request since the last one ended; the next bytes read begin a head.
    between: AtomicBool,
    /// HTTP/1: when the first byte of the coming request head was read, in microseconds since
    /// `born_us` (`u64::MAX`: none is coming).
    head_began_us: AtomicU64,
    /// Why it closed, once known (a [`Closed`]; 0: not said, which at the drop means the
    /// deadline cut it if it has passed, else the client closed it).
    closed: AtomicU8,
    /// Its maximum age (since `born`), if the server has one.
    age: Option<Duration>,
    /// Set once it has reached that age: it is going (an HTTP/1 response says
    /// `Connection: close`).
    aged: AtomicBool,
    /// Cancelled once its age's grace is over: what it still carries ends (gRPC: UNAVAILABLE).
    /// Made only with a maximum age.
    age_cut: Option<CancellationToken>,
    /// The chain the client presented in its TLS handshake.
    #[cfg(feature = "tls")]
    peer_certificates: std::sync::OnceLock<crate::http::tls::PeerCertificates>,
}

/// A grace of more than this is no cut at all (and keeps a timer's instant representable).
const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Its length.
const H2_PREFACE_LEN: usize = H2_PREFACE.len();

impl ConnState {
    pub(crate) fn new(
        drain: Drain,
        protocols: Protocols,
        peer: SocketAddr,
        service: Arc<str>,
        age: Option<Duration>,
    ) -> Self {
        ConnState {
            age,
            aged: AtomicBool::new(false),
            age_cut: age.map(|_| CancellationToken::new()),
            drain,
            peer,
            service,
            protocols,
            past_preface: AtomicBool::new(false),
            request_seen: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            read_now: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            prefix_read: AtomicUsize::new(0),
            write_blocked: AtomicBool::new(false),
            born: Instant::now(),
            born_us: clock::now_us(),
            last_end_us: AtomicU64::new(u64::MAX),
            between: AtomicBool::new(true),
            head_began_us: AtomicU64::new(u64::MAX),
            closed: AtomicU8::new(0),
            #[cfg(feature = "tls")]
            peer_certificates: std::sync::OnceLock::new(),
        }
    }

    /// Says why the connection closes (for the metrics).
    #[inline]
    pub(crate) fn close_as(&self, reason: Closed) {
        self.closed.store(reason as u8, Ordering::Relaxed);
    }

    /// Why it closes when the drain ends it gracefully (past the deadline, what is still
    /// open ends because the deadline cut its work).
    fn drained(&self) -> Closed {
        if self.drain.is_deadline_passed() {
            Closed::Deadline
        } else if self.is_h2() {
            Closed::GoAway
        } else {
            Closed::AfterResponse
        }
    }

    /// Notes the chain the client presented in its TLS handshake.
    #[cfg(feature = "tls")]
    pub(crate) fn set_peer_certificates(&self, chain: Option<crate::http::tls::PeerCertificates>) {
        if let Some(chain) = chain {
            let _ = self.peer_certificates.set(chain);
        }
    }

    /// The chain the client presented in its TLS handshake, if it did.
    #[cfg(feature = "tls")]
    #[inline]
    pub(crate) fn peer_certificates(&self) -> Option<&crate::http::tls::PeerCertificates> {
        self.peer_certificates.get()
    }

    /// When it was accepted.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// Microseconds since it was accepted, on the coarse clock (read per request).
    #[inline]
    fn now_us(&self) -> u64 {
        clock::now_us()
            .saturating_sub(self.born_us)
            .min(u64::MAX - 1)
    }

    /// What its timer judges.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let at = |us: u64| (us != u64::MAX).then(|| Duration::from_micros(us));
        Snapshot {
            handshake_done: self.handshake_done(),
            upgraded: self.upgraded(),
            // Only once the whole preface has come: until then it may still turn out HTTP/1.
            h2: self.is_h2() && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN,
            busy: !self.quiet(),
            last_end: at(self.last_end_us.load(Ordering::Acquire)).unwrap_or_default(),
            head_began: at(self.head_began_us.load(Ordering::Acquire)),
            age: self.age.filter(|_| !self.aged()),
        }
    }

    /// With nothing more to come: nothing in flight, and (HTTP/1) no request head begun, nor
    /// a response ended a moment ago (the client's next request may be on its way).
    fn gone_quiet(&self) -> bool {
        self.quiet()
            && (self.is_h2()
                || (self.head_began_us.load(Ordering::Acquire) == u64::MAX
                    && self.keep_alive_grace().is_none()))
    }

    /// How long ago its last request ended (`Duration::MAX`: none has).
    fn since_last_end(&self) -> Duration {
        match self.last_end_us.load(Ordering::Acquire) {
            u64::MAX => Duration::MAX,
            last => Duration::from_micros(self.now_us().saturating_sub(last)),
        }
    }

    /// When to look again at a connection going away, to close it once it has gone quiet.
    fn recheck(&self) -> Duration {
        self.keep_alive_grace().unwrap_or(IDLE_CLOSE_GRACE)
    }

    /// Whether it has reached its maximum age (and is going).
    #[inline]
    pub(crate) fn aged(&self) -> bool {
        self.aged.load(Ordering::Acquire)
    }

    /// The token cancelled when its age's grace is over, if it has a maximum age.
    pub(crate) fn age_cut(&self) -> Option<&CancellationToken> {
        self.age_cut.as_ref()
    }

    /// Whether its age's grace is over (what it carried was cut off).
    pub(crate) fn age_cut_over(&self) -> bool {
        self.age_cut
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server's name (its service's).
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// Whether it speaks HTTP/2.
    #[inline]
    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }

    /// For an idle HTTP/1.1 keep-alive connection that answered less than
    /// [`KEEP_ALIVE_GRACE`] ago: the rest of that grace.
    fn keep_alive_grace(&self) -> Option<Duration> {
        let last = self.last_end_us.load(Ordering::Acquire);
        if last == u64::MAX || self.is_h2() || !self.quiet() {
            return None;
        }
        let since = Duration::from_micros(self.now_us().saturating_sub(last));
        KEEP_ALIVE_GRACE
            .checked_sub(since)
            .filter(|left| !left.is_zero())
    }

    /// Asks the socket to read what the kernel holds at its next read, even before the
    /// reactor has reported it.
    pub(crate) fn read_now(&self) {
        self.read_now.store(true, Ordering::Release);
    }

    /// Whether reads go straight to the kernel (until one finds nothing there).
    #[inline]
    pub(crate) fn reading_now(&self) -> bool {
        self.read_now.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn read_now_done(&self) {
        self.read_now.store(false, Ordering::Release);
    }

    /// Notes the first bytes a connection read: whether they are the HTTP/2 preface so far,
    /// and how much of it has come. `false`: the connection speaks a version this server does
    /// not (HTTP/1 on an HTTP/2-only server as soon as a byte differs from the preface; the
    /// whole preface on an HTTP/1-only one), and must be closed.
    #[inline]
    pub(crate) fn note_read(&self, bytes: &[u8]) -> bool {
        let before = self.prefix_read.load(Ordering::Relaxed);
        if bytes.is_empty() {
            return true;
        }
        if self.between.load(Ordering::Relaxed) {
            // The first bytes of a request head: the header timeout counts from now.
            self.between.store(false, Ordering::Relaxed);
            self.head_began_us.store(self.now_us(), Ordering::Release);
        }
        if before >= H2_PREFACE_LEN {
            // The first frame after the preface (its SETTINGS): the handshake is done.
            if !self.past_preface.load(Ordering::Relaxed) {
                self.past_preface.store(true, Ordering::Release);
            }
            return true;
        }
        let take = bytes.len().min(H2_PREFACE_LEN - before);
        if take < bytes.len() {
            self.past_preface.store(true, Ordering::Release);
        }
        let preface = (before == 0 || self.h2.load(Ordering::Relaxed))
            && bytes[..take] == H2_PREFACE[before..before + take];
        self.h2.store(preface, Ordering::Release);
        self.prefix_read.store(before + take, Ordering::Release);
        match self.protocols {
            Protocols::Both => true,
            Protocols::Http2 => preface,
            Protocols::Http1 => !(preface && before + take == H2_PREFACE_LEN),
        }
    }

    /// Whether the connection can be closed at once at the drain: no request has begun, and it
    /// is not an HTTP/2 connection past its preface (that one gets a GOAWAY, so a request the
    /// client is sending at this moment is retried elsewhere, not lost).
    pub(crate) fn closable_at_once(&self) -> bool {
        let h2_open = self.h2.load(Ordering::Acquire)
            && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN;
        !(self.request_seen() || h2_open)
    }

    /// Whether the client has shown it speaks: a first request head (HTTP/1), or the HTTP/2
    /// preface and the start of a frame after it.
    pub(crate) fn handshake_done(&self) -> bool {
        self.request_seen()
            || (self.is_h2()
                && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN
                && self.past_preface.load(Ordering::Acquire))
    }

    /// Whether not a byte has come in yet.
    pub(crate) fn nothing_read(&self) -> bool {
        self.prefix_read.load(Ordering::Acquire) == 0
    }

    #[inline]
    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Release);
        }
    }

    /// Whether nothing is in flight: no request running, and no response still being written.
    #[inline]
    pub(crate) fn quiet(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && !self.write_blocked.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn request_seen(&self) -> bool {
        self.request_seen.load(Ordering::Acquire)
    }

    /// A request began: counted for the service (the report) and the connection (the drain).
    #[inline]
    pub(crate) fn request_began(&self) {
        self.request_seen.store(true, Ordering::Release);
        self.head_done();
        self.drain.request_started();
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's response has ended (or it was cut off); `body_done`: its body was read to
    /// its end (or had none).
    #[inline]
    pub(crate) fn request_ended(&self, body_done: bool, end: RequestEnd) {
        self.ended_now(body_done);
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.drain.request_finished(end);
    }

    /// A health check or another answer that is not counted still shows that the client
    /// speaks (the connection is no longer silent), and that it is not idle.
    #[inline]
    pub(crate) fn answered(&self) {
        self.request_seen.store(true, Ordering::Release);
        self.head_done();
        self.ended_now(true);
    }

    /// A request head is complete: no header timeout runs until the next one begins.
    #[inline]
    fn head_done(&self) {
        self.between.store(false, Ordering::Relaxed);
        self.head_began_us.store(u64::MAX, Ordering::Release);
    }

    /// A request ended now: the idle time counts from here, and (HTTP/1) if its body was read
    /// to its end, the next bytes begin a head. (If not, hyper may still be reading the rest of
    /// the body: those bytes begin nothing, and the idle timeout bounds the connection.)
    #[inline]
    fn ended_now(&self, body_done: bool) {
        self.last_end_us.store(self.now_us(), Ordering::Release);
        if body_done && !self.is_h2() {
            self.between.store(true, Ordering::Relaxed);
        }
    }

    /// The socket is about to leave hyper for a handler's task (a 101, or a 2xx to CONNECT).
    pub(crate) fn mark_upgraded(&self) {
        if !self.upgraded.swap(true, Ordering::AcqRel) {
            // In flight until it closes (see `Drop`).
            self.drain.metrics().upgraded(true);
        }
    }

    #[inline]
    pub(crate) fn drain(&self) -> &Drain {
        &self.drain
    }
}

impl Drop for ConnState {
    /// The connection is gone: its socket closed, and every request on it ended.
    fn drop(&mut self) {
        let metrics = self.drain.metrics();
        let reason = Closed::from_u8(*self.closed.get_mut()).unwrap_or_else(|| {
            if self.drain.is_deadline_passed() {
                Closed::Deadline
            } else {
                Closed::Client
            }
        });
        metrics.closed(reason);
    }
}

/// A token waited for lazily: registered at the first wait only, so that what never waits costs
/// nothing (the registration takes a lock shared by everything waiting on the token).
pub(crate) struct Deadline {
    token: CancellationToken,
    /// Set before the token can be cancelled, if it is one of the drain's (its deadline, its
    /// abort): until then a look at the token, which takes its lock, is not needed. Asked at
    /// every read and write of a connection, which all share the service's token.
    gate: MaybeGate,
    wait: Option<Pin<Box<Gated<MaybeGate>>>>,
}

impl Deadline {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Deadline {
            token,
            gate: None,
            wait: None,
        }
    }

    /// A token of the drain's, with its gate (`Drain::deadline_gate`).
    pub(crate) fn gated(token: CancellationToken, gate: Arc<AtomicBool>) -> Self {
        Deadline {
            token,
            gate: Some(gate),
            wait: None,
        }
    }

    /// Whether it has passed (nothing is registered; with a gate, an atomic load until then).
    #[inline]
    pub(crate) fn passed(&self) -> bool {
        self.gate.is_open() && self.token.is_cancelled()
    }

    /// Whether it has passed; if not, the task is woken when it does.
    pub(crate) fn reached(&mut self, cx: &mut Context<'_>) -> bool {
        if self.passed() {
            return true;
        }
        let (token, gate) = (&self.token, &self.gate);
        self.wait
            .get_or_insert_with(|| Box::pin(Gated::new(token.clone(), gate.clone())))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// The accepted socket at the bottom of a connection (under TLS, if any): while the drain asks
/// ([`ConnState::read_now`]), reads go straight to the kernel, without waiting for the reactor
/// to report what it holds.
pub(crate) struct Raw {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl Raw {
    fn new(stream: TcpStream, state: Arc<ConnState>) -> Self {
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
    fn new(
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
