//! Start network services correctly, stop them gracefully, and prove it.
//!
//! A [`Lifecycle`] runs a process's services (HTTP, gRPC, any accept loop), background tasks and
//! shutdown hooks through one flow, one module each:
//!
//! 1. **start** ([`Service`], [`service_fn`], [`StartContext`]): every start step (bind, prepare) runs
//!    concurrently; a failure stops the rest, releases every port, and names the culprit.
//! 2. **ready** ([`LifecycleHandle`], [`State`], [`Impairment`]): ready only when all started;
//!    observable by waiting, watching, or the log line with the time it took; held down while
//!    the application says it is impaired (a dependency down, a flush failing).
//! 3. **signal** ([`Signal`]): SIGINT, SIGTERM, SIGQUIT (Ctrl+C, Ctrl+Break on Windows), the
//!    handle, or a failing service start the shutdown; a second signal forces it.
//! 4. **drain** ([`Drain`]): readiness off, lame-duck delay, listeners closed, in-flight work
//!    waited for without polling, and aborted at the deadline.
//! 5. **hooks** ([`Phase`]): ordered phases, concurrent within a phase, each hook time-bounded.
//! 6. **report** ([`Report`], [`ExitCode`]): what happened, serialisable, and an exit code that
//!    says which kind of ending it was.
//!
//! Servers that fit this flow come with the features: `http` (`http::HttpServer`: any tower
//! service, an axum `Router` as it is, with a connection-level drain and health endpoints) and
//! `grpc` (`grpc::GrpcServer`: tonic services with `grpc.health.v1`, reflection and GOAWAY);
//! `tls` puts either on rustls (`http::Tls`: certificate files reloaded when they change,
//! client certificates, the handshake inside the drain's rules).
//! `ws` wraps axum's WebSockets (`http::ws`): closed with 1001 "going away" at the drain's
//! start, refused during it.
//!
//! With `metrics`, all of it is recorded live through the `metrics` facade (readiness, state,
//! in-flight work, how requests ended and why connections closed, the drain, each hook), and
//! [`Lifecycle::service_drained_last`] runs an admin listener that serves through the whole
//! shutdown and closes last, so that it can be scraped while it happens. The run's phases are
//! tracing spans (`start`, `shutdown` with `lame_duck`, `drain`, `hooks`, `drain_last`).
//!
//! ```
//! use lameduck::{Lifecycle, Phase, ExitCode};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let lifecycle = Lifecycle::new()
//!     .handle_signals(false) // a real service keeps the default: SIGINT/SIGTERM/SIGQUIT
//!     .task("worker", |stop| async move {
//!         stop.cancelled().await; // wind down here
//!         Ok(())
//!     })
//!     .hook(Phase::FLUSH, "flush", || async { Ok(()) })
//!     .hook(Phase::CLOSE, "close", || async { Ok(()) });
//! let handle = lifecycle.handle();
//! let run = tokio::spawn(lifecycle.run());
//! handle.wait_ready().await.unwrap();
//! handle.shutdown();
//! let report = run.await.unwrap();
//! assert_eq!(report.exit_code, ExitCode::Clean);
//! assert_eq!(report.hooks[0].name, "flush");
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod budget;
mod config;
mod counter;
mod drain;
mod error;
mod events;
mod gated;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
mod hooks;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod impair;
mod lifecycle;
mod listen;
mod metrics;
mod notify;
mod phase;
mod pid_file;
mod ready;
mod report;
mod run;
mod service;
mod signal;
mod stage;
mod upgrade;

pub use drain::{Drain, WorkGuard};
pub use error::{BindError, BoxError, InheritError, ListenError, NotReady, StartError};
pub use impair::{Impaired, Impairment};
pub use lifecycle::Lifecycle;
pub use listen::ListenFdsError;
pub use phase::Phase;
pub use ready::{LifecycleHandle, State};
pub use report::{
    ExitCode, HookOutcome, HookReport, Listening, Origin, Outcome, Report, ServingReport, Trigger,
    UnitReport, WorkReport,
};
pub use service::{Service, ServiceFn, StartContext, service_fn};
pub use signal::Signal;
pub use upgrade::{UpgradeError, UpgradeSignal};

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
