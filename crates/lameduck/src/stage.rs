//! When a service drains: with the others, or last (after the hooks, for admin and debug
//! endpoints that must outlive the shutdown they report on). Each stage has its own tokens, so
//! that the first drain's deadline and abort never reach a service drained last.

use tokio_util::sync::CancellationToken;

use crate::drain::Drain;

/// The tokens of one stage of the drain.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    /// Cancelled when the stage's drain begins.
    pub(crate) draining: CancellationToken,
    /// Cancelled at the stage's deadline (`Drain::deadline_passed`); a child of `hard_stop`.
    pub(crate) deadline: CancellationToken,
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
        )
    }

    /// Ends the stage at once: drain begun, work aborted.
    pub(crate) fn cut(&self) {
        self.draining.cancel();
        self.hard_stop.cancel();
    }
}
