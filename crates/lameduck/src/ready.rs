//! Readiness, observable from outside the run: the [`State`] the lifecycle is in, and the
//! [`LifecycleHandle`] that watches it and asks for a shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::NotReady;
use crate::impair::{Impaired, Impairment, Impairments};
use crate::report::Addresses;

/// Where the lifecycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Start steps are running; not ready.
    Starting,
    /// Every service started and is serving.
    Ready,
    /// Shutting down: readiness is off; services may still serve during the lame-duck delay.
    Draining,
    /// The run is over.
    Stopped,
}

/// A cloneable handle on a lifecycle: watch its readiness, request a shutdown, force one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use lameduck::{Lifecycle, State};
///
/// let lifecycle = Lifecycle::new().handle_signals(false);
/// let handle = lifecycle.handle();
/// assert_eq!(handle.state(), State::Starting);
/// let run = tokio::spawn(lifecycle.run());
/// // Tasks and services would run now; there are none, so the run completes by itself.
/// let report = run.await.unwrap();
/// assert_eq!(handle.state(), State::Stopped);
/// assert_eq!(report.exit_code.code(), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LifecycleHandle {
    state: watch::Receiver<State>,
    shutdown: CancellationToken,
    force: CancellationToken,
    upgrade: Arc<tokio::sync::Notify>,
    /// The PID of the last upgrade's new process (0: none yet).
    upgrade_started: watch::Receiver<u32>,
    start_error: Arc<OnceLock<String>>,
    /// Set before the state turns `Ready`: the watch keeps only the latest state, and a waiter
    /// that looks late must still learn that readiness was reached.
    became_ready: Arc<AtomicBool>,
    /// Each service's addresses, as its start step records them.
    addresses: Published,
    /// What holds readiness down now ([`impair`](Self::impair)): application code, and
    /// servers that cannot accept (out of descriptors, say).
    impaired: Arc<Impairments>,
}

/// Each service's name and addresses, shared by every handle.
type Published = Arc<Mutex<Vec<(Arc<str>, Addresses)>>>;

/// The lifecycle's side of the handle: it publishes state changes and reads the requests.
#[derive(Debug)]
pub(crate) struct Control {
    state: watch::Sender<State>,
    upgrade_started: watch::Sender<u32>,
    pub(crate) handle: LifecycleHandle,
}

impl Control {
    pub(crate) fn new() -> Self {
        let (tx, rx) = watch::channel(State::Starting);
        let (upgrade_tx, upgrade_rx) = watch::channel(0);
        Control {
            state: tx,
            upgrade_started: upgrade_tx,
            handle: LifecycleHandle {
                state: rx,
                shutdown: CancellationToken::new(),
                force: CancellationToken::new(),
                upgrade: Arc::default(),
                upgrade_started: upgrade_rx,
                start_error: Arc::new(OnceLock::new()),
                became_ready: Arc::new(AtomicBool::new(false)),
                addresses: Arc::default(),
                impaired: Arc::new(Impairments::new()),
            },
        }
    }

    pub(crate) fn set(&self, state: State) {
        if state == State::Ready {
            self.handle.became_ready.store(true, Ordering::Release);
        }
        self.state.send_replace(state);
    }

    pub(crate) fn set_start_error(&self, error: String) {
        // Only the first failure is the reason; later ones are in the report.
        let _ = self.handle.start_error.set(error);
    }

    pub(crate) fn publish_addresses(&self, service: Arc<str>, addresses: Addresses) {
        self.handle
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((service, addresses));
    }

    pub(crate) fn shutdown_requested(&self) -> &CancellationToken {
        &self.handle.shutdown
    }

    pub(crate) fn force_requested(&self) -> &CancellationToken {
        &self.handle.force
    }

    pub(crate) fn upgrade_started(&self, pid: u32) {
        self.upgrade_started.send_replace(pid);
    }

    pub(crate) fn upgrade_requested(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.handle.upgrade)
    }
}

impl LifecycleHandle {
    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Whether the lifecycle is ready (every service started, no shutdown begun, and nothing
    /// [impaired](Self::impair) right now, a server failing to accept connections included):
    /// what a readiness probe should answer. No allocation, and no lock but a watch's read
    /// lock.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Ready && !self.is_impaired()
    }

    /// Whether anything holds readiness down now: an [`Impairment`] of the application's, or a
    /// server that cannot accept connections (out of descriptors, say). No allocation, and no
    /// lock but a watch's read lock.
    pub fn is_impaired(&self) -> bool {
        self.impaired.any()
    }

    /// Whether every server can accept connections now, and nothing else holds readiness down.
    #[deprecated(
        since = "0.1.0",
        note = "impairments now include the application's own: use `!is_impaired()`, and \
                `impairments()` for who and why"
    )]
    pub fn accepting(&self) -> bool {
        !self.is_impaired()
    }

    /// Says that this process should get no traffic right now, and why: while the returned
    /// guard (or any other) lives, [`is_ready`](Self::is_ready) is false, `/readyz` answers
    /// 503 with a line `not ready: <who>: <reason>` for each, and gRPC health says NOT_SERVING.
    /// The process serves on, and nothing else changes: dropping the last guard makes it ready
    /// again, if it still is in [`State::Ready`]. For a dependency that is down, a backlog
    /// past its bound, a cache that cannot be flushed: what a load balancer should route
    /// around, not a reason to stop. `/readyz` shows `who` and `reason` to anyone who asks:
    /// keep secrets (credentials in a database URL, say) out of them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use lameduck::{Lifecycle, StartContext};
    ///
    /// let lifecycle = Lifecycle::new()
    ///     .handle_signals(false)
    ///     .service("api", |ctx: StartContext| async move {
    ///         let drain = ctx.drain();
    ///         Ok(async move { drain.draining().await; Ok(()) })
    ///     });
    /// let handle = lifecycle.handle();
    /// let run = tokio::spawn(lifecycle.run());
    /// handle.wait_ready().await.unwrap();
    /// assert!(handle.is_ready());
    ///
    /// let failing = handle.impair("store", "flush failing: database is locked");
    /// assert!(!handle.is_ready());
    /// assert_eq!(handle.impairments()[0].who, "store");
    /// failing.set_reason("flush failing: disk I/O error");
    /// drop(failing);
    /// assert!(handle.is_ready());
    ///
    /// handle.shutdown();
    /// run.await.unwrap();
    /// # }
    /// ```
    pub fn impair(&self, who: impl Into<String>, reason: impl Into<String>) -> Impairment {
        self.impaired.add(who.into(), reason.into())
    }

    /// What is [impaired](Self::impair) now, oldest first: the application's impairments, and
    /// the servers that cannot accept connections (named after the server).
    pub fn impairments(&self) -> Vec<Impaired> {
        self.impaired.list()
    }

    /// How many impairments there are, and a wake-up at each addition and removal.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn subscribe_impaired(&self) -> watch::Receiver<usize> {
        self.impaired.subscribe()
    }

    /// `/readyz`'s lines naming each impairment (sanitized, cut short); `None` if there is none.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn impaired_text(&self) -> Option<String> {
        self.impaired.text()
    }

    /// Waits until the lifecycle has become ready: `Ok` once every service has started, even if
    /// a shutdown has begun since (check [`is_ready`](Self::is_ready) for now). Fails if the
    /// run ends without ever being ready: a failed start (the reason says which service and
    /// why), or a shutdown during the start.
    pub async fn wait_ready(&self) -> Result<(), NotReady> {
        let mut rx = self.state.clone();
        // An error means the lifecycle was dropped: the flag below tells the rest.
        let _ = rx.wait_for(|s| *s != State::Starting).await;
        if self.became_ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(NotReady {
                reason: self.start_error.get().cloned(),
            })
        }
    }

    /// Waits until the run is over (its report is about to be returned).
    pub async fn wait_stopped(&self) {
        let mut rx = self.state.clone();
        // An error means the lifecycle was dropped: it is stopped too.
        let _ = rx.wait_for(|s| *s == State::Stopped).await;
    }

    /// A receiver of every state change, for code that reacts to them.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// The addresses `service` listens on (with the ports the OS chose, for port 0), once its
    /// start step has bound them: after [`wait_ready`](Self::wait_ready), all of them. Empty for
    /// an unknown service.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use lameduck::{Lifecycle, StartContext};
    ///
    /// let lifecycle = Lifecycle::new()
    ///     .handle_signals(false)
    ///     .service("api", |ctx: StartContext| async move {
    ///         let listener = ctx.bind_tcp("127.0.0.1:0").await?;
    ///         let drain = ctx.drain();
    ///         Ok(async move { drain.draining().await; drop(listener); Ok(()) })
    ///     });
    /// let handle = lifecycle.handle();
    /// let run = tokio::spawn(lifecycle.run());
    /// handle.wait_ready().await.unwrap();
    /// let addr: std::net::SocketAddr = handle.addresses("api")[0].parse().unwrap();
    /// assert_ne!(addr.port(), 0);
    /// handle.shutdown();
    /// run.await.unwrap();
    /// # }
    /// ```
    pub fn addresses(&self, service: &str) -> Vec<String> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| &**name == service)
            .flat_map(|(_, addresses)| addresses.get())
            .map(|listening| listening.address)
            .collect()
    }

    /// Starts a graceful shutdown, as a signal would. Idempotent.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Starts an upgrade in place, as the upgrade signal (SIGHUP) would: the binary at this
    /// process's path is started with every listener, and once it is ready this process shuts
    /// down (the report's trigger is [`Trigger::Upgraded`](crate::Trigger::Upgraded)); if it
    /// fails or is not ready in time, it is stopped and this one serves on, as the log says.
    /// Only in [`State::Ready`] (an [impaired](Self::impair) process may be upgraded: the new
    /// binary may be the fix); a request during an upgrade is ignored. Linux only.
    pub fn upgrade(&self) {
        if self.state() == State::Ready {
            self.upgrade.notify_one();
        } else {
            tracing::warn!(target: "lameduck", state = ?self.state(), "upgrade asked for while not ready: ignored");
        }
    }

    /// Waits until the next upgrade starts its new process, and returns its PID; `None` once
    /// the run is over. From that moment two processes serve: the moment for state this one
    /// keeps to itself (a write-behind cache, say) to become readable by the next one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let lifecycle = lameduck::Lifecycle::new().handle_signals(false);
    /// let handle = lifecycle.handle();
    /// tokio::spawn(async move {
    ///     while let Some(pid) = handle.upgrade_started().await {
    ///         // flush the cache, write through from now on
    ///         # let _ = pid;
    ///     }
    /// });
    /// # drop(lifecycle);
    /// # }
    /// ```
    pub async fn upgrade_started(&self) -> Option<u32> {
        let mut rx = self.upgrade_started.clone();
        rx.mark_unchanged();
        rx.changed().await.ok()?;
        let pid = *rx.borrow();
        Some(pid)
    }

    /// Abandons the shutdown, as a second signal would: the run returns at once with
    /// [`ExitCode::Forced`](crate::ExitCode::Forced).
    pub fn force(&self) {
        self.force.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_again_only_once_the_last_impairment_is_dropped() {
        let control = Control::new();
        let handle = control.handle.clone();
        let mut changes = handle.subscribe_impaired();
        control.set(State::Ready);
        assert!(handle.is_ready());

        let store = handle.impair("store", "flush failing: database is locked");
        let queue = handle.impair(String::from("queue"), format!("behind by {} jobs", 12));
        assert!(!handle.is_ready());
        assert!(handle.is_impaired());
        assert_eq!(handle.state(), State::Ready, "the state is not changed");
        changes.changed().await.unwrap();
        let who: Vec<String> = handle.impairments().into_iter().map(|i| i.who).collect();
        assert_eq!(who, ["store", "queue"]);

        drop(store);
        assert!(!handle.is_ready(), "one is left");
        assert_eq!(handle.impairments()[0].reason, "behind by 12 jobs");
        drop(queue);
        assert!(handle.is_ready());
        assert!(handle.impairments().is_empty());
        changes.changed().await.unwrap();
        assert_eq!(*changes.borrow(), 0);

        // Impaired or not, a lifecycle that is not in `Ready` is not ready.
        control.set(State::Draining);
        assert!(!handle.is_ready());
    }

    #[test]
    fn an_impairment_outlives_its_lifecycle_harmlessly() {
        let control = Control::new();
        let impairment = control.handle.impair("late", "after the end");
        drop(control);
        impairment.set_reason("still fine");
        drop(impairment);
    }
}
