//! The builder: what runs (services, background tasks, hooks) and how (deadlines, signals).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, TaskFn};
use crate::error::BoxError;
use crate::hooks::Hook;
use crate::phase::Phase;
use crate::ready::{Control, LifecycleHandle};
use crate::report::Report;
use crate::run::Run;
use crate::service::{self, Service, StartFn};
use crate::upgrade::UpgradeSignal;

/// A process's services, background tasks and shutdown hooks, and the rules for starting and
/// stopping them.
///
/// [`run`](Lifecycle::run) starts every service concurrently and becomes ready when all have
/// started; on a signal (or a failure, or [`LifecycleHandle::shutdown`]) it turns readiness off,
/// waits the lame-duck delay, drains services and tasks under the deadline, runs the hooks phase
/// by phase, and resolves to a [`Report`]. A second signal abandons the shutdown.
///
/// ```no_run
/// use lameduck::{Lifecycle, Phase, StartContext};
/// use std::time::Duration;
///
/// #[tokio::main]
/// async fn main() {
///     let report = Lifecycle::new()
///         .drain_deadline(Duration::from_secs(20))
///         .service("api", |ctx: StartContext| async move {
///             let listener = ctx.bind_tcp("0.0.0.0:8080").await?;
///             let drain = ctx.drain();
///             Ok(async move {
///                 // accept until `drain.draining()`, run connections with `drain.spawn`
///                 # drop((listener, drain));
///                 Ok(())
///             })
///         })
///         .task("metrics", |stop| async move {
///             stop.cancelled().await;
///             Ok(())
///         })
///         .hook(Phase::FLUSH, "flush-cache", || async { Ok(()) })
///         .hook(Phase::CLOSE, "close-db", || async { Ok(()) })
///         .run()
///         .await;
///     eprintln!("{report}");
///     report.exit();
/// }
/// ```
pub struct Lifecycle {
    /// With whether each is drained last.
    pub(crate) services: Vec<(Arc<str>, StartFn, bool)>,
    pub(crate) tasks: Vec<(Arc<str>, TaskFn)>,
    pub(crate) hooks: Vec<Hook>,
    pub(crate) config: Config,
    pub(crate) control: Control,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// An empty lifecycle with the defaults: drain deadline 30 s, lame-duck delay 0 s, hook
    /// timeout 5 s, signals handled, a second signal forces the exit.
    pub fn new() -> Self {
        Lifecycle {
            services: Vec::new(),
            tasks: Vec::new(),
            hooks: Vec::new(),
            config: Config::default(),
            control: Control::new(),
        }
    }

    /// Adds a service. Its start step runs concurrently with the others'; the lifecycle is ready
    /// when every one has succeeded. See [`Service`].
    pub fn service(mut self, name: impl Into<String>, service: impl Service) -> Self {
        self.services
            .push((name.into().into(), service::erase(service), false));
        self
    }

    /// Adds a service that outlives the drain: for admin and debug endpoints (metrics,
    /// `/livez`, `/readyz`) that observers of a shutdown scrape while it happens.
    ///
    /// It starts with the others (the readiness barrier waits for it, and its failure fails
    /// the start), and serves on through the lame-duck delay, the drain and the hooks: its
    /// [`Drain`](crate::Drain) begins only once the last hook has ended. Its listener closes
    /// then, and what it still serves gets the [last drain's
    /// deadline](Self::last_drain_deadline) (1 s by default) before it is aborted (then the
    /// usual 100 ms notice and up to 1 s for the abort to land). It never holds up the drain of
    /// the others, and its connections never delay the exit by more than that; an idle one (a
    /// scraper's keep-alive connection) is closed at once. A
    /// deadline cut there is in its report, but does not make the exit code unclean. Readiness
    /// is the process's: an HTTP server's `/readyz` here says 503 from the shutdown's start,
    /// while `/livez` says 200 to the end. After an upgrade in place its listener is handed
    /// over like the others, so until the old process exits both serve it: a scrape then
    /// reaches either, and each answers for itself.
    ///
    /// ```
    /// use lameduck::{Lifecycle, StartContext};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let lifecycle = Lifecycle::new()
    ///     .handle_signals(false)
    ///     .service("api", |ctx: StartContext| async move {
    ///         let drain = ctx.drain();
    ///         Ok(async move { drain.draining().await; Ok(()) })
    ///     })
    ///     .service_drained_last("admin", |ctx: StartContext| async move {
    ///         let (drain, handle) = (ctx.drain(), ctx.handle());
    ///         Ok(async move {
    ///             drain.draining().await;
    ///             // The api service is drained and every hook has run.
    ///             assert_eq!(handle.state(), lameduck::State::Draining);
    ///             Ok(())
    ///         })
    ///     });
    /// let handle = lifecycle.handle();
    /// let run = tokio::spawn(lifecycle.run());
    /// handle.wait_ready().await.unwrap();
    /// handle.shutdown();
    /// let report = run.await.unwrap();
    /// assert_eq!(report.exit_code, lameduck::ExitCode::Clean);
    /// # }
    /// ```
    pub fn service_drained_last(mut self, name: impl Into<String>, service: impl Service) -> Self {
        self.services
            .push((name.into().into(), service::erase(service), true));
        self
    }

    /// Adds a background task, started once the lifecycle is ready. It gets a token that is
    /// cancelled when the drain begins, and the drain waits for it to return. A task that
    /// returns `Ok` before any shutdown has simply finished; one that fails or panics shuts
    /// everything down.
    pub fn task<F, Fut>(mut self, name: impl Into<String>, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        // Called inside the future, so that a panic before its first `.await` is the task's
        // panic (reported), not the run's.
        let run: TaskFn = Box::new(move |token| Box::pin(async move { task(token).await }));
        self.tasks.push((name.into().into(), run));
        self
    }

    /// Adds a shutdown hook in `phase`, with the default [hook timeout](Lifecycle::hook_timeout).
    /// Hooks run after the drain (also after one that hit its deadline, and after a failed start);
    /// phases run in order, the hooks of one phase concurrently.
    pub fn hook<F, Fut>(self, phase: Phase, name: impl Into<String>, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.push_hook(Hook::new(phase, name.into(), None, hook))
    }

    /// Adds a shutdown hook with a timeout of its own.
    pub fn hook_with_timeout<F, Fut>(
        self,
        phase: Phase,
        name: impl Into<String>,
        timeout: Duration,
        hook: F,
    ) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.push_hook(Hook::new(phase, name.into(), Some(timeout), hook))
    }

    fn push_hook(mut self, hook: Hook) -> Self {
        self.hooks.push(hook);
        self
    }

    /// How long the drain may take before remaining work is aborted. Default 30 s.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.config.drain_deadline = deadline;
        self
    }

    /// How long the [services drained last](Self::service_drained_last) may take to finish
    /// what they serve once their drain begins (after the hooks), before it is aborted.
    /// Default 1 s: a scrape or a health check takes milliseconds, and the exit waits for
    /// nothing else.
    pub fn last_drain_deadline(mut self, deadline: Duration) -> Self {
        self.config.last_drain_deadline = deadline;
        self
    }

    /// How long the [services drained last](Self::service_drained_last) keep serving after the
    /// last hook has ended, before their drain begins: time for one more scrape, so that the
    /// values only the end sets (`lameduck_drain_duration_seconds`, each hook's duration) reach
    /// the monitoring. Default 0 s: nothing delays the exit; set it to a little more than the
    /// scrape interval where those values matter.
    pub fn last_drain_delay(mut self, delay: Duration) -> Self {
        self.config.last_drain_delay = delay;
        self
    }

    /// How long services keep serving after readiness turns off, so that load balancers notice
    /// before listeners close. Default 0 s; on Kubernetes, a few seconds.
    pub fn lame_duck_delay(mut self, delay: Duration) -> Self {
        self.config.lame_duck_delay = delay;
        self
    }

    /// The timeout of hooks added without one of their own. Default 5 s.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.config.hook_timeout = timeout;
        self
    }

    /// Whether the run's second signal abandons the shutdown (the run returns at once with
    /// [`ExitCode::Forced`](crate::ExitCode::Forced)). Default on; when off, further signals
    /// are logged and ignored. A first signal during a shutdown that something else started (a
    /// failure, the handle) never forces it.
    pub fn force_on_second_signal(mut self, on: bool) -> Self {
        self.config.force_on_second_signal = on;
        self
    }

    /// Whether the run listens for SIGINT, SIGTERM and SIGQUIT (Ctrl+C and Ctrl+Break on
    /// Windows). Default on; turn it off when something else owns the signals, or in tests.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.config.handle_signals = on;
        self
    }

    /// Whether the run tells the service manager what it does through sd_notify, when
    /// `NOTIFY_SOCKET` is set (systemd, `Type=notify`): `READY=1` at the readiness barrier,
    /// `STOPPING=1` at the shutdown, `EXTEND_TIMEOUT_USEC=` for each step of it, the status,
    /// the error of a failed start, and the watchdog's pings (`WatchdogSec=`). Default on; it
    /// does nothing without `NOTIFY_SOCKET`, and on platforms other than Linux.
    pub fn sd_notify(mut self, on: bool) -> Self {
        self.config.sd_notify = on;
        self
    }

    /// Whether services take the listening sockets passed to the process (systemd socket
    /// activation: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) under their names, instead of
    /// binding. Default on; it does nothing when no sockets are passed. Off, the variables are
    /// left alone (for code of the process's own that reads them), and every service binds.
    pub fn inherit_listeners(mut self, on: bool) -> Self {
        self.config.inherit_listeners = on;
        self
    }

    /// The signal that starts an upgrade in place (see [`LifecycleHandle::upgrade`]): default
    /// SIGHUP; `None` for none (the handle can still ask). Installed only when the run handles
    /// signals ([`handle_signals`](Self::handle_signals)).
    pub fn upgrade_signal(mut self, signal: Option<UpgradeSignal>) -> Self {
        self.config.upgrade_signal = signal;
        self
    }

    /// How long an upgrade's new process has to become ready before it is stopped and this one
    /// serves on. Default 60 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.config.upgrade_timeout = timeout;
        self
    }

    /// A file naming the process that serves: written (atomically) once ready, rewritten by an
    /// upgrade's new process, removed at the end only if it still names this one.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.pid_file = Some(path.into());
        self
    }

    /// A handle to watch readiness and request a shutdown, from anywhere.
    pub fn handle(&self) -> LifecycleHandle {
        self.control.handle.clone()
    }

    /// Starts everything, serves until a shutdown is triggered, shuts down, and reports.
    ///
    /// Resolves once every service and task has stopped (or was aborted at the deadline) and
    /// every hook has ended, or at once when the shutdown is forced. Pass the report's exit code
    /// to the process ([`Report::exit`]).
    pub async fn run(self) -> Report {
        Run::new(
            self.services,
            self.tasks,
            self.hooks,
            self.config,
            self.control,
        )
        .execute()
        .await
    }
}
