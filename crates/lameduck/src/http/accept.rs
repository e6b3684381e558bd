//! What stands between a listener and `accept`: the connection cap, and the backoff after an
//! accept error (out of descriptors, of memory).
//!
//! - **The cap**: at [`max_connections`](super::HttpServer::max_connections) open connections
//!   the server stops accepting: newcomers wait in the kernel's queue (no accept-and-close, which
//!   a client sees as a failure) and are taken as soon as a connection ends. Counted, and logged
//!   at most once a second.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS, ENOMEM): the loop waits 1 ms, doubling up to
//!   1 s, and back to 1 ms at the next success; one log line a second at most, with the count;
//!   and while it cannot accept, the server holds an [`Impairment`] (named after it, the reason
//!   `cannot accept connections: <the error>`): the lifecycle is not ready (`/readyz` 503
//!   naming it, gRPC health NOT_SERVING), back once it can.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::drain::Drain;
use crate::events::Event;
use crate::impair::Impairment;
use crate::ready::LifecycleHandle;

/// The first wait after an accept error.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// The longest wait.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line of a kind per this long.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The connection cap of one server: a permit per open connection.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for the next connection: at once, or once one ends (counting the wait).
    pub(crate) async fn take(&self, gate: &mut Gate) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        gate.at_cap(self.max);
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}

/// One accept loop's state: its backoff, and when it last said something.
#[derive(Debug)]
pub(crate) struct Gate {
    service: Arc<str>,
    drain: Drain,
    handle: LifecycleHandle,
    backoff: Duration,
    /// Held while the server cannot accept; dropped (ready again) at the next success, or
    /// with the loop at the drain.
    impairment: Option<Impairment>,
    failures: u64,
    said_failing: Option<Instant>,
    said_at_cap: Option<Instant>,
}

impl Gate {
    pub(crate) fn new(service: Arc<str>, drain: Drain, handle: LifecycleHandle) -> Self {
        Gate {
            service,
            drain,
            handle,
            backoff: FIRST_BACKOFF,
            impairment: None,
            failures: 0,
            said_failing: None,
            said_at_cap: None,
        }
    }

    fn at_cap(&mut self, max: usize) {
        self.drain.count(Event::AtCap);
        if due(&mut self.said_at_cap) {
            tracing::warn!(
                target: "lameduck",
                service = %self.service,
                max_connections = max,
                "at the connection cap: new connections wait in the kernel's queue"
            );
        }
    }

    /// After an accept error: how long to wait before the next accept.
    pub(crate) fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.drain.count(Event::AcceptError);
        self.failures += 1;
        // Out of a resource, the server cannot take anyone: not ready until it can. Any other
        // error is waited out the same way, without saying so.
        if self.impairment.is_none() && out_of_resources(error) {
            let reason = format!("cannot accept connections: {error}");
            self.impairment = Some(self.handle.impair(&*self.service, reason));
        }
        if due(&mut self.said_failing) {
            tracing::error!(
                target: "lameduck",
                service = %self.service,
                failures = self.failures,
                retry_in_ms = self.backoff.as_millis() as u64,
                "accept failed: {error}; not ready until it succeeds"
            );
            self.failures = 0;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// Whether the server cannot accept (out of resources) since its last success.
    pub(crate) fn failing(&self) -> bool {
        self.impairment.is_some()
    }

    /// After an accept that succeeded.
    pub(crate) fn succeeded(&mut self) {
        // Whatever the failure was, the next one starts the backoff afresh.
        self.backoff = FIRST_BACKOFF;
        if self.impairment.take().is_some() {
            tracing::info!(
                target: "lameduck",
                service = %self.service,
                "accepting again"
            );
        }
    }
}

/// Whether `error` says the process is out of something every accept needs: descriptors,
/// buffers, memory.
fn out_of_resources(error: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    // Elsewhere, every error that is not about one connection counts.
    #[cfg(not(target_os = "linux"))]
    {
        let _ = error;
        true
    }
}

/// Whether a line may be logged now (at most one per [`LOG_EVERY`]), noting it if so.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lines_are_said_at_most_once_a_second() {
        let mut last = None;
        assert!(due(&mut last));
        assert!(!due(&mut last));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!due(&mut last));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(due(&mut last));
    }
}
