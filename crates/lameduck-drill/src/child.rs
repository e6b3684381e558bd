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
            use nix::sys::signal::kill;
            use nix::unistd::Pid;
            let pid = self
                .child
                .id()
                .ok_or_else(|| "the process has already exited".to_owned())?;
            let pid = i32::try_from(pid).map_err(|e| e.to_string())?;
            kill(Pid::from_raw(pid), nix_signal(signal)).map_err(|e| format!("kill: {e}"))
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

    /// Its PID, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[cfg(unix)]
fn nix_signal(signal: SignalName) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    match signal {
        SignalName::Term => Signal::SIGTERM,
        SignalName::Int => Signal::SIGINT,
        SignalName::Quit => Signal::SIGQUIT,
        SignalName::Hup => Signal::SIGHUP,
        SignalName::Usr1 => Signal::SIGUSR1,
        SignalName::Usr2 => Signal::SIGUSR2,
    }
}

/// Makes the drill the parent of its service's orphans (Linux: a child subreaper), so that an
/// upgrade's new process, whose parent is the old one, becomes the drill's child when the old
/// one exits: then its exit status can be read.
pub(crate) fn adopt_orphans(on: bool) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_child_subreaper(on).map_err(|e| format!("prctl: {e}"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = on;
        Err("an upgrade drill needs Linux (a child subreaper)".to_owned())
    }
}

/// A process the drill did not start: an upgrade's new process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adopted {
    pub(crate) pid: u32,
}

impl Adopted {
    /// Sends `signal`.
    pub(crate) fn signal(&self, signal: SignalName) -> Result<(), String> {
        #[cfg(unix)]
        {
            let pid = i32::try_from(self.pid).map_err(|e| e.to_string())?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix_signal(signal))
                .map_err(|e| format!("kill: {e}"))
        }
        #[cfg(not(unix))]
        {
            let _ = signal;
            Err("sending signals needs a Unix system".to_owned())
        }
    }

    /// SIGKILL, and the wait for it (bounded).
    pub(crate) async fn kill(&self) {
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.pid) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.wait(Duration::from_secs(5)).await;
    }

    /// Waits for its exit, at most `within` (it must be the drill's child by then, see
    /// [`adopt_orphans`]); `None` if it did not exit in time.
    pub(crate) async fn wait(&self, within: Duration) -> Option<Exit> {
        #[cfg(unix)]
        {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).ok()?);
            let until = tokio::time::Instant::now() + within;
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        return Some(Exit {
                            code: Some(code),
                            signal: None,
                        });
                    }
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        return Some(Exit {
                            code: None,
                            signal: Some(signal as i32),
                        });
                    }
                    // Not exited yet, or not our child yet (its parent still runs).
                    Ok(_) | Err(_) => {}
                }
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = within;
            None
        }
    }
}
