//! [`HttpServer`]: a tower service (an axum `Router` as it is) served under the lifecycle.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

use crate::error::BoxError;
use crate::http::accept::{Gate, Slots};
use crate::http::age::MaxAge;
use crate::http::body::RequestBody;
use crate::http::connection;
use crate::http::health::Health;
use crate::http::limits::{self, Limits};
use crate::http::shared::{
    App, AppBody, ConnExecutor, ListenerOpen, OpenListeners, Protocols, Shared,
};
use crate::http::timeouts::Timeouts;
use crate::listen::{Listen, SocketOptions};
use crate::service::{Service, StartContext};

/// An HTTP/1.1 and cleartext HTTP/2 server for any tower `Service` (an axum `Router` goes in
/// as it is; so do tonic's routes), to add to a [`Lifecycle`](crate::Lifecycle) as a service.
///
/// - **Start**: takes the sockets passed to the process under the service's name (systemd
///   socket activation: `FileDescriptorName=`, `--fdname`), all of them, or else binds its
///   address (with `SO_REUSEADDR` on Unix and a backlog of 1024, both configurable); records
///   each address and where it came from, and fails the lifecycle's start naming the address
///   or descriptor and the cause if it cannot.
/// - **Serve**: every connection and request is counted (atomics on the service's own
///   [`Drain`](crate::Drain), no lock), for the report. A handler can learn of the drain: with
///   axum, take `lameduck::Drain` as an argument. `/livez` and `/readyz` are answered before
///   the app ([`Health`]).
/// - **Drain**: the listener closes first, so new connections are refused and the port can be
///   bound by another process at once; connections still in its backlog are taken, not reset.
///   Each connection reads what the kernel already holds, so a request sent before the drain
///   is served. Then a connection on which no request has begun (silent, or partway through
///   its first headers) closes at once; an idle HTTP/1.1 keep-alive connection closes; a busy
///   one finishes its response, sent with `Connection: close`; an HTTP/2 connection gets
///   GOAWAY and finishes its open streams. The service is done the moment its last connection
///   ends: nothing polls.
/// - **Deadline**: what is left is closed up to 100 ms later (gRPC calls first end with status
///   UNAVAILABLE), upgraded connections (WebSockets) included, and the report counts the
///   connections and the requests they had in flight.
///
/// ```
/// use axum::{Router, routing::get};
/// use lameduck::{Lifecycle, http::HttpServer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app = Router::new().route("/", get(|| async { "hello\n" }));
/// let lifecycle = Lifecycle::new()
///     .handle_signals(false) // a real service keeps the default
///     .service("web", HttpServer::bind("127.0.0.1:0", app));
/// let handle = lifecycle.handle();
/// let run = tokio::spawn(lifecycle.run());
/// handle.wait_ready().await.unwrap();
/// handle.shutdown();
/// let report = run.await.unwrap();
/// assert_eq!(report.exit_code, lameduck::ExitCode::Clean);
/// # }
/// ```
pub struct HttpServer<S> {
    app: S,
    pub(crate) grpc: bool,
    listen: Listen,
    socket: SocketOptions,
    nodelay: bool,
    health: Option<Health>,
    protocols: Protocols,
    limits: Limits,
    configure: Option<Configure>,
    #[cfg(feature = "tls")]
    tls: Option<crate::http::tls::Tls>,
}

impl<S> HttpServer<S> {
    /// Serves `app` on `addr` (`"127.0.0.1:8080"`, `"[::]:8080"`, `"localhost:0"`; a name is
    /// resolved and the first address that binds is used), or on the sockets passed to the
    /// process under the service's name, if there are any (socket activation: `addr` is then
    /// not bound).
    pub fn bind(addr: impl fmt::Display, app: S) -> Self {
        Self::new(Listen::Addr(addr.to_string()), app)
    }

    /// Serves `app` on a listener bound elsewhere (socket activation, a test); socket options
    /// are not applied to it.
    pub fn from_listener(listener: std::net::TcpListener, app: S) -> Self {
        Self::new(Listen::Std(listener), app)
    }

    /// Serves `app` on a tokio listener bound elsewhere; socket options are not applied to it.
    pub fn from_tokio_listener(listener: TcpListener, app: S) -> Self {
        Self::new(Listen::Tokio(listener), app)
    }

    fn new(listen: Listen, app: S) -> Self {
        HttpServer {
            app,
            grpc: false,
            listen,
            socket: SocketOptions::default(),
            nodelay: true,
            health: Some(Health::new()),
            protocols: Protocols::Both,
            limits: Limits::default(),
            configure: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serves over TLS (feature `tls`): rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` (or
    /// only the one protocol of an `http1_only` or `http2_only` server). The configuration is
    /// loaded at the start (before the listener is bound: a pair that cannot be loaded fails
    /// the start, naming the file) and, from files, reloaded when they change
    /// ([`Tls::from_pem_files`](crate::http::Tls::from_pem_files)).
    ///
    /// The handshake is inside the drain's rules: a connection still in its handshake when
    /// the drain begins has begun no request, and is closed at once (one accepted in the last
    /// 50 ms first gets the rest of them); the [handshake timeout](Self::handshake_timeout)
    /// covers it (and the first request after it). A connection the drain closes sends
    /// close_notify. Failed handshakes are counted (`serving.tls_handshake_failures`); a
    /// client's certificate chain is in its requests' extensions
    /// ([`PeerCertificates`](crate::http::PeerCertificates)).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::http::tls::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long a new connection may take to show it speaks HTTP: from the accept to its
    /// first complete request head (HTTP/1.1), or the HTTP/2 preface and the start of a frame
    /// after it, protocol sniffing included. A connection that has not by then (silent, or
    /// stalled inside its request head or the preface) is closed quietly and counted in the
    /// report (`serving.handshake_timeouts`). Default 10 s, as Go's HTTP/2 server; a client
    /// that never speaks would otherwise hold a descriptor forever. `Duration::ZERO` (or
    /// `Duration::MAX`) turns it off.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// HTTP/1.1: how long a request head may take, from its first byte to its end (the first
    /// request's is under the [handshake timeout](Self::handshake_timeout) instead, unless
    /// that is off). A
    /// connection whose head is not complete by then (a client trickling its headers) is
    /// closed quietly and counted (`serving.header_timeouts`). Default 30 s, as hyper's
    /// header-read timeout; unlike hyper's, it does not run while the connection is idle
    /// (that is the [idle timeout](Self::idle_timeout)). `Duration::ZERO` turns it off.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout;
        self
    }

    /// How long a connection may stay with nothing in flight (no request running, no response
    /// being written), from the end of its last response (or its accept): then an HTTP/1.1 connection is
    /// closed, and an HTTP/2 connection is sent GOAWAY (and closed once the client has gone,
    /// or a second later), however often the client pings. Counted (`serving.idle_timeouts`).
    /// Default 120 s: above the idle timeouts of the balancers and proxies in front of most
    /// services (AWS ALB, nginx: 60 s), so that they close first and never send a request
    /// into a connection this server is closing. `Duration::ZERO` turns it off.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// How long a request body may go without data while the app waits for it. Then the
    /// request ends: the app's read fails ([`BodyTimedOut`](crate::http::BodyTimedOut)), its
    /// handler is dropped, and the client gets 408 with `Connection: close` (HTTP/1.1, if no
    /// response has begun; otherwise the connection is closed), a reset stream (HTTP/2:
    /// RST_STREAM CANCEL) or gRPC status CANCELLED. Counted (`serving.body_timeouts`). It
    /// times a stall, not a slow upload: each chunk that comes starts it again, and a body
    /// the app does not read is not timed. Default 30 s for an `HttpServer` (nginx: 60 s),
    /// off for a [`GrpcServer`](crate::grpc::GrpcServer), whose streaming calls may be
    /// quiet for long. `Duration::ZERO` turns it off.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.limits.body_timeout = timeout;
        self
    }

    /// How long a connection may live: at that age (moved at random by up to the
    /// [jitter](Self::max_connection_age_jitter), ±10 % by default) an HTTP/2 connection is
    /// sent GOAWAY (its streams finish, the client opens a new connection for the next), and
    /// an HTTP/1.1 one is closed if idle, or else after its response, which says
    /// `Connection: close`. After the [grace](Self::max_connection_age_grace) what is left
    /// ends as at the drain's deadline (gRPC: status UNAVAILABLE, which clients retry) and
    /// the connection is closed. Both are counted (`serving.max_connection_age`,
    /// `serving.max_connection_age_grace`).
    ///
    /// For clients behind an L4 balancer (a Kubernetes Service through kube-proxy): after a
    /// rolling restart they keep their HTTP/2 connections to the instances that stayed up,
    /// and a restarted instance gets no traffic until they reconnect; an age makes them
    /// reconnect, and so spread again, within age + grace. Off by default (`Duration::ZERO`),
    /// as grpc-go's `MaxConnectionAge`. An upgraded connection (a WebSocket) has no age; a
    /// drain that begins while a connection is going takes over (its rules and deadline).
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.limits.max_connection_age = age;
        self
    }

    /// How long a connection at its [maximum age](Self::max_connection_age) has for the work
    /// it still carries before that is cut off. Default 30 s (the drain deadline's default).
    pub fn max_connection_age_grace(mut self, grace: Duration) -> Self {
        self.limits.max_connection_age_grace = grace;
        self
    }

    /// By how much each connection's [maximum age](Self::max_connection_age) is moved at
    /// random, as a fraction of it, up or down: connections opened together (after a restart)
    /// then do not all go together. Default 0.1 (±10 %, as grpc-go); held to 0 to 0.5.
    pub fn max_connection_age_jitter(mut self, fraction: f64) -> Self {
        self.limits.max_connection_age_jitter = fraction;
        self
    }

    /// How many connections the server holds open at once (at least 1). At the cap it stops
    /// accepting: newcomers wait in the kernel's listen queue (up to the backlog) rather than
    /// being accepted and closed, and are taken as soon as a connection ends. Each accept that
    /// waits for a slot is counted (`serving.at_cap`) and logged, at most once a second.
    /// Default 16,384.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// The listen backlog: connections the kernel queues before they are accepted. Default
    /// 1024 (the OS may cap it).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.socket.backlog = backlog;
        self
    }

    /// Whether to set `SO_REUSEADDR` (Unix only), so that a restart can bind while connections
    /// of the previous process are in `TIME_WAIT`. Default on.
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.socket.reuse_address = on;
        self
    }

    /// For an IPv6 address: whether to accept IPv6 only (`true`) or IPv4-mapped connections
    /// too (`false`). Default: the OS's.
    pub fn only_v6(mut self, only: bool) -> Self {
        self.socket.only_v6 = Some(only);
        self
    }

    /// Whether accepted connections set `TCP_NODELAY`. Default on.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// The health endpoints to answer (default: [`Health::new`], `/livez` and `/readyz`).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// No health endpoints: every request goes to the app.
    pub fn without_health(mut self) -> Self {
        self.health = None;
        self
    }

    /// Speak HTTP/1.1 only.
    pub fn http1_only(mut self) -> Self {
        self.protocols = Protocols::Http1;
        self
    }

    /// Speak HTTP/2 only (prior knowledge, as gRPC does).
    pub fn http2_only(mut self) -> Self {
        self.protocols = Protocols::Http2;
        self
    }

    /// Tunes hyper's connection builder (window sizes, header limits, HTTP/2 keep-alive pings)
    /// before the server starts. Its timer is set already, so hyper's timer-based options
    /// work. hyper's own HTTP/1 header-read timeout is off: [`header_timeout`](Self::header_timeout)
    /// and [`idle_timeout`](Self::idle_timeout) do its work apart (hyper's also runs while a
    /// connection is idle, and closes it at 30 s).
    ///
    /// ```
    /// use lameduck::http::HttpServer;
    /// use std::time::Duration;
    ///
    /// let app: axum::Router = axum::Router::new();
    /// let server = HttpServer::bind("127.0.0.1:0", app).configure(|builder| {
    ///     builder.http1().max_buf_size(64 * 1024);
    ///     builder.http2().max_concurrent_streams(250).keep_alive_interval(Duration::from_secs(20));
    /// });
    /// # drop(server);
    /// ```
    pub fn configure(
        mut self,
        configure: impl FnOnce(&mut auto::Builder<ConnExecutor>) + Send + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }
}

impl<S> HttpServer<S> {
    /// The same server with another app (the gRPC server builds its routes at start).
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn with_app<T>(self, app: T) -> HttpServer<T> {
        HttpServer {
            app,
            grpc: self.grpc,
            listen: self.listen,
            socket: self.socket,
            nodelay: self.nodelay,
            health: self.health,
            protocols: self.protocols,
            limits: self.limits,
            configure: self.configure,
            #[cfg(feature = "tls")]
            tls: self.tls,
        }
    }
}

impl HttpServer<NotFound> {
    /// A server of the health endpoints alone (404 for everything else): an admin port, for
    /// probes that should not share the app's port. It drains like any service: `/readyz`
    /// answers 503 through the lame-duck delay, and the port closes when the drain begins.
    pub fn health_only(addr: impl fmt::Display) -> Self {
        Self::bind(addr, NotFound)
    }
}

impl<S> fmt::Debug for HttpServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("listen", &self.listen)
            .field("health", &self.health)
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service for HttpServer<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: From<Bytes> + Send,
    B::Error: Into<BoxError>,
{
    type Serve = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    async fn start(self, ctx: StartContext) -> Result<Self::Serve, BoxError> {
        // TLS first: a pair that cannot be loaded fails the start before anything is bound.
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(tls) => Some(tls.start(self.protocols.alpn()).await?),
            None => None,
        };
        let mut listeners = ctx.listen(self.listen, self.socket).await?;
        ctx.drain().metrics().server_started();
        let name: Arc<str> = ctx.name().into();
        let shared = Arc::new(Shared {
            name: Arc::clone(&name),
            drain: ctx.drain(),
            handle: ctx.handle(),
            health: self.health,
            builder: builder(self.protocols, self.configure),
            grpc: self.grpc,
            protocols: self.protocols,
            timeouts: Timeouts::new(&self.limits),
            max_age: MaxAge::new(&self.limits),
            body_timeout: limits::on(self.limits.body_timeout),
            listeners: OpenListeners::new(listeners.len()),
            slots: Slots::new(self.limits.max_connections),
            #[cfg(feature = "tls")]
            tls,
        });
        let (app, nodelay) = (self.app, self.nodelay);
        // One accept loop per listener: one, unless the process was passed several under the
        // service's name. Done when all are closed.
        Ok(Box::pin(async move {
            if let [_] = listeners.as_slice() {
                let listener = listeners.remove(0);
                let open = ListenerOpen::new(Arc::clone(&shared));
                return accept(listener, app, shared, nodelay, name, open).await;
            }
            let mut loops = tokio::task::JoinSet::new();
            for listener in listeners {
                let (app, shared, name) = (app.clone(), Arc::clone(&shared), Arc::clone(&name));
                // Aborted with the set when the serve step is dropped (the deadline's abort).
                // The guard is made here, not in the task: a set dropped before a task ran
                // still lets the connections close.
                let open = ListenerOpen::new(Arc::clone(&shared));
                loops.spawn(accept(listener, app, shared, nodelay, name, open));
            }
            // The first loop to fail fails the service (the others are aborted with the set,
            // as one listener's queue is dropped with it when its loop fails); a panic stays
            // a panic in the report.
            while let Some(ended) = loops.join_next().await {
                match ended {
                    Ok(result) => result?,
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Err(join) => return Err(join.into()),
                }
            }
            Ok(())
        }))
    }
}

/// The user's tuning of hyper's builder.
type Configure = Box<dyn FnOnce(&mut auto::Builder<ConnExecutor>) + Send>;

/// The connections' builder: timers set (hyper's header-read timeout and HTTP/2 keep-alive
/// need one), the protocols chosen, the user's tuning applied.
fn builder(protocols: Protocols, configure: Option<Configure>) -> auto::Builder<ConnExecutor> {
    let mut builder = auto::Builder::new(ConnExecutor);
    // The header and idle timeouts are the connection's (hyper's would close an idle
    // connection at 30 s, and cost a timer per request).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    builder = match protocols {
        Protocols::Both => builder,
        Protocols::Http1 => builder.http1_only(),
        Protocols::Http2 => builder.http2_only(),
    };
    if let Some(configure) = configure {
        configure(&mut builder);
    }
    builder
}

/// Accepts until the drain begins, then closes the listener: new connections are refused from
/// that moment, and the port is free for another process.
async fn accept<S, B>(
    listener: TcpListener,
    app: S,
    shared: Arc<Shared>,
    nodelay: bool,
    name: Arc<str>,
    open: ListenerOpen,
) -> Result<(), BoxError>
where
    S: App<B>,
    B: AppBody,
{
    let drain = shared.drain.clone();
    let mut gate = Gate::new(Arc::clone(&name), drain.clone(), shared.handle.clone());
    loop {
        // A slot first: at the cap, newcomers wait in the kernel's queue.
        let slot = tokio::select! {
            biased;
            () = drain.draining() => break,
            slot = shared.slots.take(&mut gate) => slot,
        };
        let accepted = tokio::select! {
            biased;
            () = drain.draining() => break,
            accepted = listener.accept() => accepted,
            // After a failure, an accept that neither fails nor finds anyone for a while has
            // nothing against it: with no client queued, it would otherwise stay "failing".
            () = tokio::time::sleep(RECOVERED_AFTER), if gate.failing() => {
                gate.succeeded();
                continue;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                gate.succeeded();
                connection::serve(stream, peer, nodelay, app.clone(), &shared, slot);
            }
            // The accept worked; the connection was gone.
            Err(error) if is_connection_error(&error) => gate.succeeded(),
            Err(error) => {
                let wait = gate.failed(&error);
                tokio::select! {
                    () = drain.draining() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(gate);
    // Connections the kernel completed but nobody accepted yet would be reset with the
    // listener, requests and all: take them (without waiting for the reactor), and let them be
    // served or closed like any other. Unless an upgrade handed the listener over: then it
    // lives on in the new process, which accepts them.
    let mut backlog = 0usize;
    let sweep = !drain.listeners_handed_over();
    while let Some(Ok((socket, _))) = sweep.then(|| SockRef::from(&listener).accept()) {
        let adopted = socket.set_nonblocking(true).and_then(|()| {
            let stream = TcpStream::from_std(socket.into())?;
            let peer = stream.peer_addr()?;
            Ok((stream, peer))
        });
        if let Ok((stream, peer)) = adopted {
            // Past the cap if need be: each is served or closed at once, and the kernel would
            // reset it otherwise.
            connection::serve(stream, peer, nodelay, app.clone(), &shared, None);
            backlog += 1;
        }
    }
    drop(listener);
    drop(open);
    tracing::debug!(target: "lameduck", service = %name, backlog, "listener closed");
    Ok(())
}

/// Errors about one connection (gone before it was accepted), not about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return true;
    }
    // Linux passes the new connection's pending network errors to accept(2).
    #[cfg(target_os = "linux")]
    if let Some(errno) = error.raw_os_error() {
        return matches!(
            errno,
            libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        );
    }
    false
}

/// How long an accept must go without failing, after a failure, for the server to count as
/// accepting again when no client is queued to prove it.
const RECOVERED_AFTER: Duration = Duration::from_millis(100);

/// The app of [`HttpServer::health_only`]: 404 for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotFound;

impl<B> tower_service::Service<Request<B>> for NotFound {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(response))
    }
}
