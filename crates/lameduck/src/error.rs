//! Typed errors: each names the service, the address and the cause, with a hint where one helps.

use std::any::Any;
use std::fmt;
use std::io;

/// The error type services, tasks and hooks return: anything that is an error and can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A listener could not be bound.
///
/// Produced by [`StartContext::bind_tcp`](crate::StartContext::bind_tcp); its message carries the
/// address, the operating-system error and, for the common causes, what to do about it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = taken.local_addr().unwrap();
/// let err = lameduck::BindError::new(addr.to_string(), std::io::ErrorKind::AddrInUse.into());
/// assert!(err.to_string().contains("another instance"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {addr}: {source}{}", BindError::hint(.source))]
pub struct BindError {
    addr: String,
    #[source]
    source: io::Error,
}

impl BindError {
    /// Wraps the operating-system error from binding `addr`.
    pub fn new(addr: impl Into<String>, source: io::Error) -> Self {
        BindError {
            addr: addr.into(),
            source,
        }
    }

    /// The address that could not be bound, as it was asked for.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The operating-system error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    fn hint(source: &io::Error) -> &'static str {
        match source.kind() {
            io::ErrorKind::AddrInUse => {
                " (hint: is another instance still running, or an old one still shutting down? \
                 `ss -ltnp` names the process holding the port)"
            }
            io::ErrorKind::PermissionDenied => {
                " (hint: ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            io::ErrorKind::AddrNotAvailable => {
                " (hint: that address is not assigned to any interface of this host)"
            }
            _ => "",
        }
    }
}

/// A passed (inherited) socket cannot serve the service that claimed it: it is not a listening
/// TCP socket, or another service took it already.
///
/// Produced by [`StartContext::listen_tcp`](crate::StartContext::listen_tcp) and the servers that
/// use it; the message names the descriptor and its name, and what it is instead.
#[derive(Debug, thiserror::Error)]
#[error("inherited fd {fd} (`{name}`) {problem}")]
pub struct InheritError {
    fd: i32,
    name: String,
    problem: String,
}

impl InheritError {
    pub(crate) fn new(fd: i32, name: &str, problem: impl Into<String>) -> Self {
        InheritError {
            fd,
            name: name.to_owned(),
            problem: problem.into(),
        }
    }

    /// The descriptor's number.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// The name it was passed under (`LISTEN_FDNAMES`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A service could not get its listener: binding failed, or a socket passed to the process
/// under the service's name cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Binding the address failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// An inherited socket is unusable.
    #[error(transparent)]
    Inherited(#[from] InheritError),
}

/// A service's start step failed: the lifecycle never became ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The start step returned an error (for a [`BindError`] the message names the address).
    #[error("service `{service}` failed to start: {source}")]
    Failed {
        /// The service's name.
        service: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The start step panicked.
    #[error("service `{service}` panicked while starting: {message}")]
    Panicked {
        /// The service's name.
        service: String,
        /// The panic's message.
        message: String,
    },
}

impl StartError {
    /// The name of the service that failed to start.
    pub fn service(&self) -> &str {
        match self {
            StartError::Failed { service, .. } | StartError::Panicked { service, .. } => service,
        }
    }
}

/// The lifecycle never became ready: a start step failed, or a shutdown came during the start.
///
/// Returned by [`LifecycleHandle::wait_ready`](crate::LifecycleHandle::wait_ready).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lifecycle never became ready{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct NotReady {
    /// Why, when a start step failed (the [`StartError`] message).
    pub reason: Option<String>,
}

/// Renders an error with its chain of causes, `outer: inner: root`, skipping causes whose
/// text the outer message already contains (thiserror's `{source}` pattern repeats them).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The operating-system error code at the root of `err`, if there is one (for sd_notify's
/// `ERRNO=`).
pub(crate) fn errno_of(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(err);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        if let Some(code) = c
            .downcast_ref::<BindError>()
            .and_then(|b| b.io_error().raw_os_error())
        {
            return Some(code);
        }
        cause = c.source();
    }
    None
}

/// The message of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// How a spawned unit of work ended, when it did not end well.
pub(crate) enum Failure {
    Error(String),
    Panic(String),
}

impl Failure {
    /// Reads a `JoinHandle` result: an error or panic becomes a `Failure`; cancellation by
    /// abort is `None` (the caller knows it aborted).
    pub(crate) fn from_join(
        res: Result<Result<(), BoxError>, tokio::task::JoinError>,
    ) -> Result<(), Option<Failure>> {
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Some(Failure::Error(chain(e.as_ref())))),
            Err(join) if join.is_panic() => Err(Some(Failure::Panic(panic_message(
                join.into_panic().as_ref(),
            )))),
            Err(_) => Err(None),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "failed: {e}"),
            Failure::Panic(p) => write!(f, "panicked: {p}"),
        }
    }
}
