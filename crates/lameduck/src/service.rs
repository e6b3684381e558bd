//! What a service is: a start step that binds and prepares, returning a serve step that runs
//! until the drain and returns when fully stopped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, ToSocketAddrs};

use crate::drain::Drain;
use crate::error::{BindError, BoxError};
use crate::ready::LifecycleHandle;

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

/// What a start step gets: its name, a way to bind that names the address in errors and in the
/// report, the service's [`Drain`], and the [`LifecycleHandle`] (for a readiness endpoint).
pub struct StartContext {
    name: Arc<str>,
    addresses: Addresses,
    drain: Drain,
    handle: LifecycleHandle,
}

/// The addresses a service listens on, shared between its start step and the report.
#[derive(Clone, Default, Debug)]
pub(crate) struct Addresses(Arc<Mutex<Vec<String>>>);

impl Addresses {
    pub(crate) fn push(&self, addr: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(addr);
    }

    pub(crate) fn get(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StartContext {
    pub(crate) fn new(
        name: Arc<str>,
        addresses: Addresses,
        drain: Drain,
        handle: LifecycleHandle,
    ) -> Self {
        StartContext {
            name,
            addresses,
            drain,
            handle,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds a TCP listener and records its local address (with the port the OS chose, for
    /// port 0) in the report and the ready log line. The error names the address and, for a
    /// taken port, hints at the usual cause.
    pub async fn bind_tcp<A>(&self, addr: A) -> Result<TcpListener, BindError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let shown = addr.to_string();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| BindError::new(shown.clone(), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| BindError::new(shown, e))?;
        self.listening_on(local);
        Ok(listener)
    }

    /// Records an address the service listens on, for a service that binds by itself.
    pub fn listening_on(&self, addr: impl fmt::Display) {
        self.addresses.push(addr.to_string());
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
