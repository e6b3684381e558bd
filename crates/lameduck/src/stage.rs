//! When a service drains: with the others, or last (after the hooks, for admin and debug
//! endpoints that must outlive the shutdown they report on). Each stage has its own tokens, so
//! that the first drain's deadline and abort never reach a service drained last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::drain::Drain;

/// The tokens of one stage of the drain.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    /// Cancelled when the stage's drain begins.
    pub(crate) draining: CancellationToken,
    /// Cancelled at the stage's deadline (`Drain::deadline_passed`); a child of `hard_stop`.
    /// Cancel it with [`pass_deadline`](Self::pass_deadline).
    pub(crate) deadline: CancellationToken,
    /// Set as the deadline's token is cancelled: what `Drain::is_deadline_passed` reads, an
    /// atomic load where the token's own check takes its lock (asked once per connection and
    /// per request cut off, to say why).
    passed: Arc<AtomicBool>,
    /// Cancelled a moment after the deadline, or at once on a forced or cut-short end: aborts
    /// work spawned through `Drain::spawn`.
    pub(crate) hard_stop: CancellationToken,
}

impl Stage {
    pub(crate) fn new() -> Self {
        let hard_stop = CancellationToken::new();
        Stage {
            draining: CancellationToken::new(),
            deadline: hard_stop.child_token(),
            hard_stop,
            passed: Arc::default(),
        }
    }

    /// The drain of a service in this stage.
    pub(crate) fn drain(&self, service: &str, handed_over: &CancellationToken) -> Drain {
        Drain::new(
            service,
            self.draining.clone(),
            self.deadline.clone(),
            self.hard_stop.clone(),
            handed_over.clone(),
            Arc::clone(&self.passed),
        )
    }

    /// The stage's deadline has passed: work is told, before it is aborted.
    pub(crate) fn pass_deadline(&self) {
        self.passed.store(true, Ordering::Release);
        self.deadline.cancel();
    }

    /// Ends the stage at once: drain begun, work aborted.
    pub(crate) fn cut(&self) {
        self.draining.cancel();
        self.passed.store(true, Ordering::Release);
        self.hard_stop.cancel();
    }
}
