//! The drilled process: started, signalled, waited for.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::args::SignalName;

/// The service under drill.
#[derive(Debug)]
pub(crate) struct Service {
    child: Child,
}

/// How the process ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        Exit {
            code: status.code(),
            signal,
        }
    }
}

impl Service {
    /// Starts `command` with its output passed through.
    pub(crate) fn start(command: &[String]) -> Result<Service, String> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| "no command given".to_owned())?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("could not start `{program}`: {e}"))?;
        Ok(Service { child })
    }

    /// Sends `signal`.
    pub(crate) fn signal(&self, signal: SignalName) -> Result<(), String> {
        #[cfg(unix)]
        {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            let pid = self
                .child
                .id()
                .ok_or_else(|| "the process has already exited".to_owned())?;
            let pid = i32::try_from(pid).map_err(|e| e.to_string())?;
            let signal = match signal {
                SignalName::Term => Signal::SIGTERM,
                SignalName::Int => Signal::SIGINT,
                SignalName::Quit => Signal::SIGQUIT,
            };
            kill(Pid::from_raw(pid), signal).map_err(|e| format!("kill: {e}"))
        }
        #[cfg(not(unix))]
        {
            let _ = signal;
            Err("sending signals needs a Unix system".to_owned())
        }
    }

    /// Whether it has exited (without waiting).
    pub(crate) fn exited(&mut self) -> Option<Exit> {
        self.child.try_wait().ok().flatten().map(Exit::from)
    }

    /// Waits for the exit, at most `within`.
    pub(crate) async fn wait(&mut self, within: Duration) -> Option<Exit> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.into()),
            _ => None,
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
