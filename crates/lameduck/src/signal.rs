//! Operating-system signals that start (and, a second time, force) a shutdown.
//!
//! Unix: SIGINT, SIGTERM, SIGQUIT. Windows: Ctrl+C and Ctrl+Break. Once tokio installs a handler
//! it never uninstalls it (the default action, terminating the process, is gone for good), so
//! the lifecycle listens for as long as it runs: that is what lets a second signal force the exit.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT (Ctrl+C in a Unix terminal).
    Sigint,
    /// SIGTERM (what `kill`, systemd and Kubernetes send).
    Sigterm,
    /// SIGQUIT (Ctrl+\ in a Unix terminal).
    Sigquit,
    /// Ctrl+C on Windows.
    CtrlC,
    /// Ctrl+Break on Windows.
    CtrlBreak,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Sigint => "SIGINT",
            Signal::Sigterm => "SIGTERM",
            Signal::Sigquit => "SIGQUIT",
            Signal::CtrlC => "CTRL_C",
            Signal::CtrlBreak => "CTRL_BREAK",
        })
    }
}

/// The installed handlers. Installed once, before the start, so that a signal during the start
/// is not lost, and kept until the run ends.
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: [(Signal, tokio::signal::unix::Signal); 3],
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
}

impl Signals {
    #[cfg(unix)]
    pub(crate) fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            streams: [
                (Signal::Sigint, signal(SignalKind::interrupt())?),
                (Signal::Sigterm, signal(SignalKind::terminate())?),
                (Signal::Sigquit, signal(SignalKind::quit())?),
            ],
        })
    }

    #[cfg(windows)]
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Signals {
            ctrl_c: tokio::signal::windows::ctrl_c()?,
            ctrl_break: tokio::signal::windows::ctrl_break()?,
        })
    }

    /// The next signal. Each kind has its own stream, so a SIGTERM followed by a SIGINT is
    /// never merged into one. Two deliveries of the same signal merge only if both arrive before
    /// the runtime has handled the first (microseconds; the kernel merges pending signals alike).
    #[cfg(unix)]
    pub(crate) async fn recv(&mut self) -> Signal {
        let [(a, sa), (b, sb), (c, sc)] = &mut self.streams;
        // `recv` yields `None` only when the runtime shuts down; then wait forever, the run is over.
        tokio::select! {
            Some(()) = sa.recv() => *a,
            Some(()) = sb.recv() => *b,
            Some(()) = sc.recv() => *c,
            else => std::future::pending().await,
        }
    }

    #[cfg(windows)]
    pub(crate) async fn recv(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.ctrl_c.recv() => Signal::CtrlC,
            Some(()) = self.ctrl_break.recv() => Signal::CtrlBreak,
            else => std::future::pending().await,
        }
    }
}
