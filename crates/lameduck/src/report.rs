//! What happened: the [`Report`] that [`Lifecycle::run`](crate::Lifecycle::run) resolves to, and
//! the [`ExitCode`] it maps to.
//!
//! Every duration serialises as milliseconds (a float), so a report reads well as JSON:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let report = lameduck::Lifecycle::new().handle_signals(false).run().await;
//! let json = serde_json::to_string(&report).unwrap();
//! assert!(json.contains(r#""exit_code":"clean""#));
//! assert_eq!(report.exit_code.code(), 0);
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::phase::Phase;
use crate::signal::Signal;

/// Everything a run did, in the order it did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// What started the shutdown.
    pub trigger: Trigger,
    /// How long the start took, from `run()` to ready; `None` if it never became ready.
    #[serde(with = "duration_ms::option")]
    pub ready_after: Option<Duration>,
    /// One entry per service, in registration order.
    pub services: Vec<UnitReport>,
    /// One entry per background task, in registration order.
    pub tasks: Vec<UnitReport>,
    /// One entry per hook, in the order the hooks were run (by phase, then registration).
    pub hooks: Vec<HookReport>,
    /// How long the drain took (drain signal to last service or task stopped or aborted);
    /// `None` if no drain happened (a failed start, or a forced exit first).
    #[serde(with = "duration_ms::option")]
    pub drain: Option<Duration>,
    /// Whether the drain deadline was reached and remaining work aborted.
    pub deadline_exceeded: bool,
    /// Whether a second signal (or [`LifecycleHandle::force`](crate::LifecycleHandle::force))
    /// abandoned the rest of the shutdown.
    pub forced: bool,
    /// From the trigger to the end of the shutdown.
    #[serde(with = "duration_ms")]
    pub shutdown: Duration,
    /// From `run()` to the end.
    #[serde(with = "duration_ms")]
    pub total: Duration,
    /// The process exit code this report stands for.
    pub exit_code: ExitCode,
}

/// What started the shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// An operating-system signal.
    Signal {
        /// Which one.
        signal: Signal,
    },
    /// [`LifecycleHandle::shutdown`](crate::LifecycleHandle::shutdown) was called.
    Requested,
    /// [`LifecycleHandle::force`](crate::LifecycleHandle::force) was called before any shutdown.
    Forced,
    /// A service's start step failed or panicked.
    StartFailed {
        /// The service.
        service: String,
        /// The error (naming the address and hint for bind errors) or panic message.
        error: String,
    },
    /// A service failed, panicked or stopped serving on its own.
    ServiceFailed {
        /// The service.
        service: String,
        /// The error or panic message.
        error: String,
    },
    /// A background task failed or panicked.
    TaskFailed {
        /// The task.
        task: String,
        /// The error or panic message.
        error: String,
    },
    /// There were no services, and every background task finished on its own.
    Completed,
    /// An upgrade handed the listeners to a new process, which is ready and serving: this one
    /// drained and exited.
    Upgraded {
        /// The new process's PID.
        new_pid: u32,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Signal { signal } => write!(f, "signal {signal}"),
            Trigger::Requested => f.write_str("shutdown requested"),
            Trigger::Forced => f.write_str("forced"),
            Trigger::StartFailed { error, .. } => f.write_str(error),
            Trigger::ServiceFailed { service, error } => write!(f, "service `{service}` {error}"),
            Trigger::TaskFailed { task, error } => write!(f, "task `{task}` {error}"),
            Trigger::Completed => f.write_str("all tasks completed"),
            Trigger::Upgraded { new_pid } => write!(f, "upgraded: PID {new_pid} serves now"),
        }
    }
}

/// What happened to one service or background task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UnitReport {
    /// Its name.
    pub name: String,
    /// The addresses it listened on, and where each listener came from (services that listen
    /// through [`StartContext`](crate::StartContext), as `HttpServer` and `GrpcServer` do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Listening>,
    /// How long its start step took (services only).
    #[serde(with = "duration_ms::option")]
    pub started_in: Option<Duration>,
    /// From the drain signal until it stopped; `None` if it was not running when the drain began.
    #[serde(with = "duration_ms::option")]
    pub drained_in: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its tracked work (for a server, its connections): see [`Drain::track`](crate::Drain::track).
    pub work: WorkReport,
    /// The requests (or RPCs) it counted inside that work: see
    /// [`Drain::track_request`](crate::Drain::track_request). All zero for a service that does
    /// not count them.
    #[serde(default)]
    pub requests: WorkReport,
    /// What its limits closed or refused during normal serving (servers only; all zero
    /// otherwise).
    #[serde(default)]
    pub serving: ServingReport,
}

/// What a server's limits closed or refused during normal serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServingReport {
    /// Connections closed because they did not finish their handshake in time (a first request
    /// head, or the HTTP/2 preface and a frame): silent or stalled clients.
    pub handshake_timeouts: u64,
    /// Connections closed at once because they spoke an HTTP version the server does not
    /// (HTTP/1 to a gRPC server, say).
    pub wrong_protocol: u64,
    /// Requests whose handler (or response body) panicked: each got an error (a 500, gRPC
    /// status INTERNAL, or a reset once the body had begun), and the server went on.
    pub panics: u64,
    /// Accepts that had to wait for a slot under the connection cap (newcomers held in the
    /// kernel's queue meanwhile).
    pub at_cap: u64,
    /// Accepts that failed for want of a resource (out of descriptors, of memory).
    pub accept_errors: u64,
    /// HTTP/1 connections closed because a request head (after the first) was not complete
    /// within the header timeout.
    #[serde(default)]
    pub header_timeouts: u64,
    /// Connections with nothing in flight for the idle timeout: closed (HTTP/1) or sent
    /// GOAWAY (HTTP/2).
    #[serde(default)]
    pub idle_timeouts: u64,
    /// Requests ended because their body brought no data for the body timeout while the app
    /// waited for it (HTTP/1: answered 408).
    #[serde(default)]
    pub body_timeouts: u64,
    /// HTTP/1 request heads over the size limit, answered 431 (or 414, when it is the URI).
    #[serde(default)]
    pub headers_too_large: u64,
    /// HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM (a flood of resets: the
    /// rapid-reset attack; of pings or settings).
    #[serde(default)]
    pub h2_too_many_resets: u64,
    /// HTTP/2 connections closed for another protocol error of the client's.
    #[serde(default)]
    pub h2_protocol_errors: u64,
    /// TLS handshakes that failed (those that timed out are `handshake_timeouts`).
    #[serde(default)]
    pub tls_handshake_failures: u64,
    /// Connections that reached their maximum age (sent GOAWAY, or `Connection: close`, or
    /// closed idle).
    #[serde(default)]
    pub max_connection_age: u64,
    /// Of those, the ones still carrying work after the grace: closed, what they carried cut
    /// off (gRPC: status UNAVAILABLE).
    #[serde(default)]
    pub max_connection_age_grace: u64,
}

impl ServingReport {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == ServingReport::default()
    }
}

/// An address a service listened on, and where its listener came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Listening {
    /// The local address, with the port the OS chose for port 0 (`127.0.0.1:8080`).
    pub address: String,
    /// Where the listener came from.
    pub origin: Origin,
}

impl fmt::Display for Listening {
    /// The address, and for one not bound here where it came from:
    /// `127.0.0.1:8080 (inherited fd 3 "http")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)?;
        match &self.origin {
            Origin::Bound => Ok(()),
            Origin::Inherited { fd, name } => write!(f, " (inherited fd {fd} {name:?})"),
            Origin::Adopted => f.write_str(" (adopted)"),
        }
    }
}

/// The addresses a service listens on, shared between its start step and the report.
#[derive(Clone, Default, Debug)]
pub(crate) struct Addresses(Arc<Mutex<Vec<Listening>>>);

impl Addresses {
    pub(crate) fn push(&self, addr: Listening) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(addr);
    }

    pub(crate) fn get(&self) -> Vec<Listening> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where a listener came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Origin {
    /// Bound by this process.
    Bound,
    /// Passed to the process (systemd socket activation: `LISTEN_FDS`), under the service's name.
    Inherited {
        /// The descriptor's number.
        fd: i32,
        /// The name it was passed under (`LISTEN_FDNAMES`, `FileDescriptorName=`).
        name: String,
    },
    /// Handed to the server by the caller (`HttpServer::from_listener`, say).
    Adopted,
}

/// How a service or background task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It was never started: a background task, when the start failed or was cut short.
    NotStarted,
    /// A service whose start step was cut short, or finished but never got to serve, because
    /// another service failed to start or a shutdown came first. Its listeners were released,
    /// and work its start step had spawned was aborted.
    Cancelled,
    /// Its start step failed or panicked.
    StartFailed {
        /// The error or panic message.
        error: String,
    },
    /// A background task that finished on its own before any shutdown.
    Finished,
    /// Stopped cleanly after being told to drain.
    Stopped,
    /// Returned an error (or, for a service, stopped serving on its own before any shutdown).
    Failed {
        /// The error.
        error: String,
    },
    /// Panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// Still running at the drain deadline (its serve step, its task, or work it tracked), and
    /// aborted.
    Aborted,
    /// Still running when a forced exit abandoned it.
    Abandoned,
}

impl Outcome {
    pub(crate) fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::Panicked { .. })
    }
}

/// Counts of a service's tracked work (see [`Drain::spawn`](crate::Drain::spawn) and
/// [`Drain::track`](crate::Drain::track)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkReport {
    /// Units of work started over the whole run.
    pub total: u64,
    /// Units in flight when the drain began.
    pub in_flight_at_drain: u64,
    /// Units that finished during the drain (including ones that started during it).
    pub drained: u64,
    /// Units still in flight at the deadline, which were aborted.
    pub aborted: u64,
}

/// What happened to one shutdown hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HookReport {
    /// Its phase.
    pub phase: Phase,
    /// Its name.
    pub name: String,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
}

/// How a shutdown hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HookOutcome {
    /// It returned `Ok`.
    Completed,
    /// It returned an error.
    Failed {
        /// The error.
        error: String,
    },
    /// It panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// It ran past its timeout and was aborted.
    TimedOut {
        /// The timeout it had.
        #[serde(with = "duration_ms")]
        timeout: Duration,
    },
    /// A forced exit came before it could run or finish.
    Abandoned,
}

/// The process exit codes, one per kind of ending.
///
/// When several apply, the first in this list wins: forced, start failed, service failed,
/// deadline exceeded, hook failed.
///
/// | code | variant |
/// |---:|---|
/// | 0 | [`Clean`](ExitCode::Clean) |
/// | 3 | [`StartFailed`](ExitCode::StartFailed) |
/// | 4 | [`ServiceFailed`](ExitCode::ServiceFailed) |
/// | 5 | [`DeadlineExceeded`](ExitCode::DeadlineExceeded) |
/// | 6 | [`HookFailed`](ExitCode::HookFailed) |
/// | 7 | [`Forced`](ExitCode::Forced) |
///
/// 1 and 2 are left to the program itself (a generic error, a usage error), and 128 + N to
/// the shell's "killed by signal N".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExitCode {
    /// Nothing failed: the run stopped as asked (after the start, or during it), drained within
    /// the deadline, and every hook completed.
    Clean,
    /// A start step failed or panicked (for example, a port was taken).
    StartFailed,
    /// A service or background task failed or panicked, or a service stopped serving on its own.
    ServiceFailed,
    /// The drain deadline was reached and remaining work aborted.
    DeadlineExceeded,
    /// A hook failed, panicked or timed out.
    HookFailed,
    /// A second signal (or [`LifecycleHandle::force`](crate::LifecycleHandle::force)) abandoned
    /// the shutdown.
    Forced,
}

impl ExitCode {
    /// The numeric code, for [`std::process::exit`].
    pub const fn code(self) -> i32 {
        match self {
            ExitCode::Clean => 0,
            ExitCode::StartFailed => 3,
            ExitCode::ServiceFailed => 4,
            ExitCode::DeadlineExceeded => 5,
            ExitCode::HookFailed => 6,
            ExitCode::Forced => 7,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        // Every code fits in a u8 by construction.
        std::process::ExitCode::from(code.code() as u8)
    }
}

impl Report {
    /// Derives the exit code from the contents (see [`ExitCode`] for the precedence).
    pub(crate) fn exit_code_of(&self) -> ExitCode {
        let units = || self.services.iter().chain(&self.tasks);
        if self.forced {
            ExitCode::Forced
        } else if matches!(self.trigger, Trigger::StartFailed { .. })
            || units().any(|u| matches!(u.outcome, Outcome::StartFailed { .. }))
        {
            ExitCode::StartFailed
        } else if matches!(
            self.trigger,
            Trigger::ServiceFailed { .. } | Trigger::TaskFailed { .. }
        ) || units().any(|u| u.outcome.is_failure())
        {
            ExitCode::ServiceFailed
        } else if self.deadline_exceeded {
            ExitCode::DeadlineExceeded
        } else if self
            .hooks
            .iter()
            .any(|h| h.outcome != HookOutcome::Completed)
        {
            ExitCode::HookFailed
        } else {
            ExitCode::Clean
        }
    }

    /// Exits the process with this report's exit code, at once.
    ///
    /// Returning from `main` drops the tokio runtime, which waits for code still blocking a
    /// thread (a hook stuck past its timeout, work the deadline could not abort); `exit` does
    /// not wait, which is what a forced or bounded shutdown needs. It runs no destructors of what
    /// is still alive (a log appender's guard, say): drop those first.
    pub fn exit(&self) -> ! {
        std::process::exit(self.exit_code.code())
    }
}

impl fmt::Display for Report {
    /// A human summary, one line per service, task and hook.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lameduck report: exit {} ({:?}), trigger: {}",
            self.exit_code.code(),
            self.exit_code,
            self.trigger
        )?;
        if let Some(ready) = self.ready_after {
            writeln!(f, "  ready after {}", ms(ready))?;
        }
        for (kind, units) in [("service", &self.services), ("task", &self.tasks)] {
            for u in units {
                write!(f, "  {kind} {}: {:?}", u.name, u.outcome)?;
                if !u.addresses.is_empty() {
                    let shown: Vec<String> = u.addresses.iter().map(ToString::to_string).collect();
                    write!(f, " on {}", shown.join(", "))?;
                }
                if let Some(d) = u.drained_in {
                    write!(f, ", drained in {}", ms(d))?;
                }
                for (what, w) in [("work", u.work), ("requests", u.requests)] {
                    if w.total > 0 {
                        write!(
                            f,
                            ", {what}: {} total, {} in flight at drain, {} drained, {} aborted",
                            w.total, w.in_flight_at_drain, w.drained, w.aborted
                        )?;
                    }
                }
                let closed = [
                    ("handshake timeouts", u.serving.handshake_timeouts),
                    ("wrong protocol", u.serving.wrong_protocol),
                    ("panics", u.serving.panics),
                    ("at the connection cap", u.serving.at_cap),
                    ("accept errors", u.serving.accept_errors),
                    ("header timeouts", u.serving.header_timeouts),
                    ("idle timeouts", u.serving.idle_timeouts),
                    ("body timeouts", u.serving.body_timeouts),
                    ("heads too large (431/414)", u.serving.headers_too_large),
                    (
                        "HTTP/2 floods (ENHANCE_YOUR_CALM)",
                        u.serving.h2_too_many_resets,
                    ),
                    ("HTTP/2 protocol errors", u.serving.h2_protocol_errors),
                    ("TLS handshakes failed", u.serving.tls_handshake_failures),
                    ("at their maximum age", u.serving.max_connection_age),
                    (
                        "cut after the age's grace",
                        u.serving.max_connection_age_grace,
                    ),
                ];
                for (what, n) in closed.into_iter().filter(|(_, n)| *n > 0) {
                    write!(f, ", {what}: {n}")?;
                }
                writeln!(f)?;
            }
        }
        for h in &self.hooks {
            writeln!(
                f,
                "  hook {} (phase {}): {:?} in {}",
                h.name,
                h.phase,
                h.outcome,
                ms(h.duration)
            )?;
        }
        if let Some(d) = self.drain {
            write!(f, "  drain {}", ms(d))?;
            if self.deadline_exceeded {
                write!(f, " (deadline exceeded)")?;
            }
            write!(f, ", ")?;
        } else {
            write!(f, "  ")?;
        }
        write!(
            f,
            "shutdown {}, total {}",
            ms(self.shutdown),
            ms(self.total)
        )?;
        if self.forced {
            write!(f, " (forced)")?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Serde for `Duration` as milliseconds (a float), the unit people read reports in.
pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
    }

    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<f64>::deserialize(d)?
                .map(|ms| Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
