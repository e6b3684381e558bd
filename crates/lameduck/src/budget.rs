//! The timing budget of a shutdown: the fixed graces the run adds to the configured delay,
//! deadline and hook timeouts, and the bound of each step that follows from them (what
//! `EXTEND_TIMEOUT_USEC` tells systemd, and what the README's "Timing budget" adds up).

use std::time::Duration;

/// How long aborted work (serve steps and their work at the drain deadline, start steps cut
/// short, hooks past their timeout) gets to be dropped before the run stops waiting for it.
/// Dropping is what closes listeners and connections. Aborts land at the task's next poll, so
/// this only matters for a task stuck in blocking code, or work held by a [`WorkGuard`] outside
/// [`Drain::spawn`].
///
/// [`WorkGuard`]: crate::WorkGuard
/// [`Drain::spawn`]: crate::Drain::spawn
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(1);

/// How long work gets, after the drain deadline, to end itself (a stream sending its last
/// status, as a gRPC server does with UNAVAILABLE) before it is aborted. Work that ends sooner
/// ends the wait sooner.
pub(crate) const ABORT_NOTICE: Duration = Duration::from_millis(100);

/// The longest the drain can take: the deadline, the notice, then the abort's grace.
pub(crate) fn drain_bound(deadline: Duration) -> Duration {
    deadline + ABORT_NOTICE + ABORT_GRACE
}

/// The longest a phase of hooks can take: its longest timeout, then the abort's grace.
pub(crate) fn phase_bound(longest_timeout: Duration) -> Duration {
    longest_timeout + ABORT_GRACE
}
