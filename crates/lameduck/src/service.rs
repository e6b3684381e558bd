//! What a service is: a start step that binds and prepares, returning a serve step that runs
//! until the drain and returns when fully stopped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, ToSocketAddrs};

use crate::drain::Drain;
use crate::error::{BindError, BoxError, ListenError};
use crate::listen::{self, Handover, Inherited, Listen, SocketOptions};
use crate::ready::LifecycleHandle;
use crate::report::{Addresses, Listening, Origin};

/// A server the lifecycle starts, waits for, and drains.
///
/// `start` binds listeners and does whatever must succeed before the process is ready; it returns
/// the serve step, a future that serves until [`Drain::draining`] and resolves once the service
/// has stopped (listener closed first, then in-flight work finished or handed to
/// [`Drain::spawn`]). A serve step that returns before the drain is a failure.
///
/// Any `FnOnce(StartContext) -> impl Future<Output = Result<impl Future<Output =
/// Result<(), BoxError>>, BoxError>>` is a service, so a closure (annotated `|ctx:
/// StartContext|`, or wrapped in [`service_fn`]) or an `async fn` does for a one-off; a reusable
/// server (an HTTP or gRPC adapter) implements the trait on its own type:
///
/// ```
/// use lameduck::{BoxError, Service, StartContext};
///
/// struct Idle { addr: String }
///
/// impl Service for Idle {
///     type Serve = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
///
///     async fn start(self, ctx: StartContext) -> Result<Self::Serve, BoxError> {
///         let listener = ctx.bind_tcp(self.addr.as_str()).await?;
///         let drain = ctx.drain();
///         Ok(Box::pin(async move {
///             drain.draining().await;
///             drop(listener);
///             Ok(())
///         }))
///     }
/// }
/// # let _ = lameduck::Lifecycle::new().service("idle", Idle { addr: "127.0.0.1:0".into() });
/// ```
pub trait Service: Send + 'static {
    /// The serve step.
    type Serve: Future<Output = Result<(), BoxError>> + Send + 'static;

    /// The start step: bind, prepare, and return the serve step.
    fn start(
        self,
        ctx: StartContext,
    ) -> impl Future<Output = Result<Self::Serve, BoxError>> + Send + 'static;
}

impl<F, Fut, S> Service for F
where
    F: FnOnce(StartContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    type Serve = S;

    fn start(
        self,
        ctx: StartContext,
    ) -> impl Future<Output = Result<Self::Serve, BoxError>> + Send + 'static {
        self(ctx)
    }
}

/// Makes a service of a closure, with its argument's type inferred.
///
/// A closure passed straight to [`Lifecycle::service`](crate::Lifecycle::service) needs its
/// argument annotated (`|ctx: StartContext|`): Rust infers closure argument types only from a
/// bound on the closure itself, which `service_fn` has.
///
/// ```
/// use lameduck::{Lifecycle, service_fn};
///
/// let lifecycle = Lifecycle::new().service("api", service_fn(|ctx| async move {
///     let listener = ctx.bind_tcp("127.0.0.1:0").await?;
///     let drain = ctx.drain();
///     Ok(async move {
///         drain.draining().await;
///         drop(listener);
///         Ok(())
///     })
/// }));
/// ```
pub fn service_fn<F, Fut, S>(start: F) -> ServiceFn<F>
where
    F: FnOnce(StartContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    ServiceFn(start)
}

/// A closure as a [`Service`]; see [`service_fn`].
#[derive(Clone, Copy, Debug)]
pub struct ServiceFn<F>(F);

/// The closure is a service already (see [`Service`]); the wrapper only helps inference.
impl<F: Service> Service for ServiceFn<F> {
    type Serve = F::Serve;

    fn start(
        self,
        ctx: StartContext,
    ) -> impl Future<Output = Result<Self::Serve, BoxError>> + Send + 'static {
        self.0.start(ctx)
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type ServeFuture = BoxFuture<Result<(), BoxError>>;
pub(crate) type StartFn =
    Box<dyn FnOnce(StartContext) -> BoxFuture<Result<ServeFuture, BoxError>> + Send>;

/// Erases a service's type so services of every kind sit in one list.
pub(crate) fn erase<S: Service>(service: S) -> StartFn {
    Box::new(move |ctx| {
        Box::pin(async move {
            let serve = service.start(ctx).await?;
            Ok(Box::pin(serve) as ServeFuture)
        })
    })
}

/// What a start step gets: its name, a way to listen that names the address in errors and in
/// the report (and takes the socket the process was passed under the service's name, under
/// systemd socket activation), the service's [`Drain`], and the [`LifecycleHandle`] (for a
/// readiness endpoint).
pub struct StartContext {
    name: Arc<str>,
    addresses: Addresses,
    drain: Drain,
    handle: LifecycleHandle,
    inherited: Arc<Inherited>,
    handover: Arc<Handover>,
}

impl StartContext {
    pub(crate) fn new(
        name: Arc<str>,
        addresses: Addresses,
        drain: Drain,
        handle: LifecycleHandle,
        inherited: Arc<Inherited>,
        handover: Arc<Handover>,
    ) -> Self {
        StartContext {
            name,
            addresses,
            drain,
            handle,
            inherited,
            handover,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A TCP listener of the service: the next socket passed to the process under the
    /// service's name (systemd socket activation: `LISTEN_FDS`, `LISTEN_FDNAMES`,
    /// `FileDescriptorName=`; or an upgrade's old process) if it was passed any, otherwise
    /// `addr`, bound (with `SO_REUSEADDR` on Unix and a backlog of 1024). Its local address and
    /// where it came from go into the report and the log line. With several passed under the
    /// name, a socket unit's (in no fixed order) must include one listening on `addr`, which is
    /// taken; an upgrade's come in the order the old process made them, and are taken in turn.
    ///
    /// The error names the address or the descriptor: a taken port (with a hint at the usual
    /// cause), a passed socket that is not a listening TCP socket, or a name asked for more
    /// often than sockets were passed under it (another service took them). Passed sockets
    /// left over at the end of the start are closed with a warning
    /// ([`listen_tcp_all`](Self::listen_tcp_all) takes them all).
    ///
    /// ```
    /// use lameduck::{Lifecycle, service_fn};
    ///
    /// let lifecycle = Lifecycle::new().service("api", service_fn(|ctx| async move {
    ///     // Under `systemd-socket-activate --fdname=api -l 8080 ...`, fd 3; otherwise bound.
    ///     let listener = ctx.listen_tcp("127.0.0.1:0").await?;
    ///     let drain = ctx.drain();
    ///     Ok(async move {
    ///         drain.draining().await;
    ///         drop(listener);
    ///         Ok(())
    ///     })
    /// }));
    /// ```
    pub async fn listen_tcp(&self, addr: impl fmt::Display) -> Result<TcpListener, ListenError> {
        let shown = addr.to_string();
        let all = self
            .listen_some(true, Listen::Addr(shown.clone()), SocketOptions::default())
            .await?;
        all.into_iter().next().ok_or_else(|| {
            let none = std::io::Error::other("no listener came of it");
            ListenError::Bind(BindError::new(shown, none))
        })
    }

    /// Every socket passed to the process under the service's name, or `addr` bound when none
    /// was: as [`listen_tcp`](Self::listen_tcp), for a service that serves several listeners
    /// (a socket unit with several `ListenStream=` lines under one name).
    pub async fn listen_tcp_all(
        &self,
        addr: impl fmt::Display,
    ) -> Result<Vec<TcpListener>, ListenError> {
        self.listen(Listen::Addr(addr.to_string()), SocketOptions::default())
            .await
    }

    /// Binds a TCP listener at `addr` (never a passed socket: see
    /// [`listen_tcp`](Self::listen_tcp)), with `SO_REUSEADDR` on Unix and a backlog of 1024,
    /// and records its local address (with the port the OS chose, for port 0) in the report and
    /// the ready log line. The error names the address and, for a taken port, hints at the
    /// usual cause.
    pub async fn bind_tcp<A>(&self, addr: A) -> Result<TcpListener, BindError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let shown = addr.to_string();
        let listener = listen::bind_addr(addr, SocketOptions::default()).await?;
        let local = listener
            .local_addr()
            .map_err(|e| BindError::new(shown, e))?;
        self.listening_on(local);
        self.handover.block(format!(
            "service `{}` binds with `bind_tcp`, which the new process would do again, and fail \
             (hint: `listen_tcp` takes the listener handed over)",
            self.name
        ));
        Ok(listener)
    }

    /// Records an address the service listens on, for a service that binds by itself.
    pub fn listening_on(&self, addr: impl fmt::Display) {
        self.addresses.push(Listening {
            address: addr.to_string(),
            origin: Origin::Bound,
        });
    }

    /// The listeners of a server configured with `listen`, recorded for the report.
    pub(crate) async fn listen(
        &self,
        listen: Listen,
        options: SocketOptions,
    ) -> Result<Vec<TcpListener>, ListenError> {
        self.listen_some(false, listen, options).await
    }

    /// As [`listen`](Self::listen); with `one`, the next passed socket only.
    async fn listen_some(
        &self,
        one: bool,
        listen: Listen,
        options: SocketOptions,
    ) -> Result<Vec<TcpListener>, ListenError> {
        let all = listen::listeners(&self.name, &self.inherited, one, listen, options).await?;
        Ok(all
            .into_iter()
            .map(|(listener, listening)| {
                if listening.origin == Origin::Adopted {
                    self.handover.block(format!(
                        "service `{}` serves a listener it was given (`from_listener`), which \
                         the new process would bind again (hint: `HttpServer::bind` takes the \
                         listener handed over)",
                        self.name
                    ));
                } else {
                    self.handover.record(&self.name, &listener);
                }
                self.addresses.push(listening);
                listener
            })
            .collect())
    }

    /// The service's drain, to move into the serve step.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// The lifecycle's handle: readiness for a health endpoint, or a way to request shutdown.
    pub fn handle(&self) -> LifecycleHandle {
        self.handle.clone()
    }
}

impl fmt::Debug for StartContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartContext")
            .field("name", &self.name)
            .field("addresses", &self.addresses.get())
            .finish_non_exhaustive()
    }
}
