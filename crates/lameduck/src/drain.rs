//! The drain: how a service learns it must stop, and how its in-flight work is waited for.
//!
//! Each service gets a [`Drain`]. Its serve step watches [`Drain::draining`] to stop accepting
//! (and drop its listener, so the port is free at once), and runs each connection or request
//! through [`Drain::spawn`] (or holds a [`Drain::track`] guard) so the lifecycle can wait for it.
//! The wait is event-driven: [`TaskTracker`] wakes the lifecycle when the last unit ends; nothing
//! polls. At the drain deadline, work spawned here is aborted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::counter::{Counter, Counts};
use crate::events::{Event, Events};
use crate::gated::{Gated, Until};
use crate::metrics::{RequestEnd, ServiceMetrics};
use crate::report::ServingReport;
use crate::report::WorkReport;

/// A service's view of the shutdown: the drain signal, and the tracking of its in-flight work.
///
/// Cheap to clone; every clone sees the same drain.
///
/// An accept loop that fits it (any server that drains connection by connection fits the same
/// way: stop accepting on [`draining`](Drain::draining), tell each connection to finish):
///
/// ```
/// use lameduck::{Lifecycle, StartContext};
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let lifecycle = Lifecycle::new()
///     .handle_signals(false)
///     .service("hello", |ctx: StartContext| async move {
///         let listener = ctx.bind_tcp("127.0.0.1:0").await?;
///         let drain = ctx.drain();
///         Ok(async move {
///             loop {
///                 tokio::select! {
///                     // Returning drops the listener: the port is released at once.
///                     _ = drain.draining() => return Ok(()),
///                     conn = listener.accept() => {
///                         let (mut stream, _) = conn?;
///                         drain.spawn(async move {
///                             let _ = stream.write_all(b"hello\n").await;
///                         });
///                     }
///                 }
///             }
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
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: CancellationToken,
    /// Cancelled at the drain deadline: work may still end itself (a last status) ...
    deadline: CancellationToken,
    /// ... until this one, a moment later, aborts it.
    hard_stop: CancellationToken,
    /// Set when `deadline` is cancelled (or `hard_stop`): a lock-free look at it.
    deadline_passed: Arc<AtomicBool>,
    /// Cancelled when an upgrade has handed the listeners to a new process, before the drain.
    handed_over: CancellationToken,
    tracker: TaskTracker,
    /// Units of work: connections, for a server.
    work: Counter,
    /// Requests (or RPCs), for a server that counts them inside its connections.
    requests: Counter,
    /// What the server's limits closed or refused.
    events: Events,
    /// The live series of all this (feature `metrics`).
    metrics: ServiceMetrics,
}

/// Which counter a [`WorkGuard`] holds a unit of.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Work,
    Request,
}

impl Drain {
    /// Whether an upgrade handed the listeners to a new process: they live on there, so
    /// connections still queued in the kernel are the new process's to accept, not this one's.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn listeners_handed_over(&self) -> bool {
        self.inner.handed_over.is_cancelled()
    }

    /// `deadline` must be cancelled whenever `hard_stop` is (a child token of it), and
    /// `deadline_passed` set before either is.
    pub(crate) fn new(
        service: &str,
        draining: CancellationToken,
        deadline: CancellationToken,
        hard_stop: CancellationToken,
        handed_over: CancellationToken,
        deadline_passed: Arc<AtomicBool>,
    ) -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining,
                deadline,
                hard_stop,
                deadline_passed,
                handed_over,
                tracker: TaskTracker::new(),
                work: Counter::default(),
                requests: Counter::default(),
                events: Events::default(),
                metrics: ServiceMetrics::new(service),
            }),
        }
    }

    /// Resolves when the drain begins: stop accepting, let in-flight work finish.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.inner.draining.cancelled()
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// A token cancelled when the drain begins, for APIs that take one (or a future made from it,
    /// as `axum::serve(..).with_graceful_shutdown(token.cancelled_owned())` does). It is a child
    /// token: cancelling it does not start a drain.
    pub fn token(&self) -> CancellationToken {
        self.inner.draining.child_token()
    }

    /// Resolves when the drain deadline has passed (or the shutdown was forced): work still in
    /// flight is about to be aborted. A long-lived stream can watch it to end with a last
    /// message of its own (a gRPC status, say) instead of being cut off: the lifecycle gives
    /// work a moment (100 ms) to end itself before it aborts what is left.
    pub fn deadline_passed(&self) -> WaitForCancellationFuture<'_> {
        self.inner.deadline.cancelled()
    }

    /// Whether the drain deadline has passed.
    #[inline]
    pub fn is_deadline_passed(&self) -> bool {
        // The flag, set as the token is cancelled: an atomic load, where the token's own check
        // takes a lock.
        self.inner.deadline_passed.load(Ordering::Acquire)
    }

    /// Runs `work` (a connection, a request) as a tracked task: the drain waits for it, and
    /// once the drain deadline has passed it is aborted, at most 100 ms after the deadline
    /// (the handle then yields `None`).
    ///
    /// The future is not told about the drain: a connection that should close early (HTTP
    /// keep-alive, HTTP/2 GOAWAY) watches [`draining`](Drain::draining) itself.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let guard = self.track();
        self.spawn_attached(async move {
            let _guard = guard;
            work.await
        })
    }

    /// Like [`spawn`](Drain::spawn), but not counted as a unit of work: for a task that belongs
    /// to a unit counted elsewhere (an HTTP connection's task, whose socket holds the unit). The
    /// drain still waits for it, and the abort after the deadline ends it.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn spawn_attached<F>(&self, work: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Looked at through its gate: the task is woken often (a connection's, by its socket),
        // and the token is shared by every task of the service.
        let abort = Gated::new(
            self.inner.hard_stop.clone(),
            Arc::clone(&self.inner.deadline_passed),
        );
        self.inner.tracker.spawn(Until::new(work, abort))
    }

    /// Counts one unit of in-flight work (a connection, a job) until the guard is dropped, for
    /// work that is not spawned through [`spawn`](Drain::spawn). The drain waits for every
    /// guard; at the deadline the ones still held are counted as aborted (the lifecycle cannot
    /// abort them itself).
    pub fn track(&self) -> WorkGuard {
        self.guard(Kind::Work)
    }

    /// Counts one request (or RPC) in flight until the guard is dropped, separately from the
    /// units of [`track`](Drain::track): a server counts its connections as work and the
    /// requests they carry here, and the report shows both. The drain waits for these guards
    /// too.
    pub fn track_request(&self) -> WorkGuard {
        self.guard(Kind::Request)
    }

    /// What tells this drain (and its clones: the same service's) from another's: the address
    /// of what they share, never 0. Only compared, never followed.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Counts a request started, for a server whose connection (a unit of work the drain
    /// waits for) carries it: no guard, no tracker token, one atomic add. Pair with
    /// [`request_finished`](Drain::request_finished).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn request_started(&self) {
        self.inner.requests.start();
        self.inner.metrics.request_started();
    }

    /// A request counted with [`request_started`](Drain::request_started) ended so.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn request_finished(&self, end: RequestEnd) {
        self.inner.requests.finish();
        self.inner.metrics.request_finished(end);
    }

    /// The service's live series.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn metrics(&self) -> &ServiceMetrics {
        &self.inner.metrics
    }

    fn guard(&self, kind: Kind) -> WorkGuard {
        self.inner.counter(kind).start();
        match kind {
            Kind::Work => self.inner.metrics.unit(true),
            Kind::Request => self.inner.metrics.request_started(),
        }
        WorkGuard {
            inner: Arc::clone(&self.inner),
            kind,
            _token: self.inner.tracker.token(),
        }
    }

    /// Requests in flight now (see [`track_request`](Drain::track_request)).
    pub fn requests_in_flight(&self) -> u64 {
        self.inner.requests.snapshot().in_flight()
    }

    /// Units of work in flight now (see [`track`](Drain::track)).
    pub fn in_flight(&self) -> u64 {
        self.inner.work.snapshot().in_flight()
    }

    /// Resolves when no work is in flight any more. Call only once the serve step has returned
    /// (no new work can start then).
    pub(crate) async fn idle(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// The deadline's token, for responses that end themselves with a last status.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn deadline_token(&self) -> CancellationToken {
        self.inner.deadline.clone()
    }

    /// The flag set before the deadline's and the abort's tokens are cancelled: a check of it
    /// (an atomic load) tells a token's lock need not be taken, because neither has been.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn deadline_gate(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.deadline_passed)
    }

    /// The abort's token, for I/O that must fail once work is aborted (an upgraded connection,
    /// which no task of the drain's owns).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn hard_stop_token(&self) -> CancellationToken {
        self.inner.hard_stop.clone()
    }

    /// Counts one `event` of normal serving (a limit's work).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn count(&self, event: Event) {
        self.inner.events.count(event);
        self.inner.metrics.event(event);
    }

    /// The events so far, as the report shows them.
    pub(crate) fn serving(&self) -> ServingReport {
        self.inner.events.report()
    }

    pub(crate) fn counts(&self) -> WorkCounts {
        WorkCounts {
            work: self.inner.work.snapshot(),
            requests: self.inner.requests.snapshot(),
        }
    }
}

impl Inner {
    fn counter(&self, kind: Kind) -> &Counter {
        match kind {
            Kind::Work => &self.work,
            Kind::Request => &self.requests,
        }
    }
}

/// A snapshot of both counters, taken by the lifecycle at the drain's milestones.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WorkCounts {
    pub(crate) work: Counts,
    pub(crate) requests: Counts,
}

impl WorkCounts {
    /// The work and request reports from snapshots at the drain's start and at the end.
    pub(crate) fn report(
        at_drain: Option<Self>,
        at_end: Self,
        aborted: bool,
    ) -> (WorkReport, WorkReport) {
        (
            Counts::report(at_drain.map(|c| c.work), at_end.work, aborted),
            Counts::report(at_drain.map(|c| c.requests), at_end.requests, aborted),
        )
    }
}

/// One unit of tracked work (or one request); dropping it marks the unit done. See
/// [`Drain::track`] and [`Drain::track_request`].
#[derive(Debug)]
#[must_use = "the work counts as done as soon as the guard is dropped"]
pub struct WorkGuard {
    inner: Arc<Inner>,
    kind: Kind,
    _token: TaskTrackerToken,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.inner.counter(self.kind).finish();
        let metrics = &self.inner.metrics;
        match self.kind {
            Kind::Work => metrics.unit(false),
            Kind::Request if self.inner.deadline_passed.load(Ordering::Acquire) => {
                metrics.request_finished(RequestEnd::Aborted)
            }
            Kind::Request => metrics.request_finished(RequestEnd::Completed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drain() -> (Drain, CancellationToken, HardStop) {
        let (d, h) = (CancellationToken::new(), CancellationToken::new());
        let gate = Arc::<AtomicBool>::default();
        (
            Drain::new(
                "test",
                d.clone(),
                h.child_token(),
                h.clone(),
                CancellationToken::new(),
                Arc::clone(&gate),
            ),
            d,
            HardStop(h, gate),
        )
    }

    /// The abort as the lifecycle gives it: the gate first.
    struct HardStop(CancellationToken, Arc<AtomicBool>);

    impl HardStop {
        fn cancel(&self) {
            self.1.store(true, Ordering::Release);
            self.0.cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_spawned_work_and_guards() {
        let (drain, draining, _) = drain();
        let guard = drain.track();
        let work = drain.spawn(tokio::time::sleep(Duration::from_secs(3)));
        assert_eq!(drain.in_flight(), 2);
        draining.cancel();
        let before = drain.counts();

        let idle = drain.clone();
        let waiter = tokio::spawn(async move { idle.idle().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiter.is_finished(),
            "a held guard keeps the drain waiting"
        );
        assert_eq!(work.await.unwrap(), Some(()));
        drop(guard);
        waiter.await.unwrap();

        let (report, requests) = WorkCounts::report(Some(before), drain.counts(), false);
        assert_eq!(requests, WorkReport::default());
        assert_eq!(
            report,
            WorkReport {
                total: 2,
                in_flight_at_drain: 2,
                drained: 2,
                aborted: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hard_stop_aborts_spawned_work() {
        let (drain, _, hard_stop) = drain();
        let work = drain.spawn(std::future::pending::<()>());
        assert_eq!(drain.in_flight(), 1);
        let counts = drain.counts();
        hard_stop.cancel();
        assert_eq!(work.await.unwrap(), None, "aborted work yields None");
        assert_eq!(drain.in_flight(), 0);
        assert_eq!(WorkCounts::report(None, counts, true).0.aborted, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_counted_apart_from_work_and_waited_for() {
        let (drain, draining, _) = drain();
        let connection = drain.track();
        let request = drain.track_request();
        assert_eq!((drain.in_flight(), drain.requests_in_flight()), (1, 1));
        draining.cancel();
        let before = drain.counts();
        drop(connection);
        let idle = drain.clone();
        let waiter = tokio::spawn(async move { idle.idle().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "a request guard keeps the drain waiting"
        );
        drop(request);
        waiter.await.unwrap();
        let (work, requests) = WorkCounts::report(Some(before), drain.counts(), false);
        assert_eq!((work.total, work.drained), (1, 1));
        assert_eq!(
            (
                requests.total,
                requests.in_flight_at_drain,
                requests.drained
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn child_token_does_not_start_a_drain() {
        let (drain, draining, _) = drain();
        drain.token().cancel();
        assert!(!drain.is_draining());
        draining.cancel();
        assert!(drain.token().is_cancelled());
        drain.draining().await;
    }
}
