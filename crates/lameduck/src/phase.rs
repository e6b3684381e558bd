//! The order of shutdown hooks: [`Phase`], below both the hooks that run in it and the report
//! that names it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// When a hook runs: lower phases first, after the drain has finished (or hit its deadline).
///
/// The named phases cover the usual order (flush what the requests left behind, then close what
/// the flush wrote to); any `u16` works for finer steps.
///
/// ```
/// use lameduck::Phase;
/// assert!(Phase::FLUSH < Phase::CLOSE);
/// assert!(Phase::new(150) > Phase::FLUSH && Phase::new(150) < Phase::CLOSE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phase(u16);

impl Phase {
    /// Write out buffered state: caches, write-behind queues, metrics.
    pub const FLUSH: Phase = Phase(100);
    /// Close what the flush wrote to: databases, remote connections.
    pub const CLOSE: Phase = Phase(200);
    /// Last words: final log lines, telemetry shutdown.
    pub const FINAL: Phase = Phase(300);

    /// A phase of its own; lower runs first.
    pub const fn new(order: u16) -> Self {
        Phase(order)
    }

    /// Its position in the order.
    pub const fn order(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Phase::FLUSH => f.write_str("flush"),
            Phase::CLOSE => f.write_str("close"),
            Phase::FINAL => f.write_str("final"),
            Phase(n) => write!(f, "{n}"),
        }
    }
}
