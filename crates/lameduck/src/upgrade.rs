//! The upgrade in place: on SIGHUP (or [`LifecycleHandle::upgrade`](crate::LifecycleHandle::upgrade)),
//! start the binary now at this process's path, with the same arguments, environment and
//! working directory, and every listener passed to it under its service's name (the socket
//! activation protocol: `LISTEN_FDS`, `LISTEN_FDNAMES`); keep serving until it says `READY=1`
//! on a socket of ours, then shut down as usual. The listening sockets never close in between:
//! the kernel queues connections for whichever process accepts next, so no client is refused.
//! If the new process exits, or is not ready in time, it is stopped and this one keeps serving.
//!
//! Linux only; elsewhere an upgrade is refused with [`UpgradeError::Unsupported`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::listen::Handover;

/// The signal that starts an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UpgradeSignal {
    /// SIGHUP, as nginx and tableflip use it; `ExecReload=kill -HUP $MAINPID` under systemd.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2 (nginx's binary upgrade).
    Usr2,
}

/// Why an upgrade did not happen. The process that tried keeps serving, and a later upgrade
/// can be tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Not on this platform.
    #[error("upgrades in place are supported on Linux only")]
    Unsupported,
    /// The new process could not be started.
    #[error("cannot start the new process {exe}: {source}")]
    Spawn {
        /// The binary.
        exe: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listeners could not be handed over.
    #[error("cannot hand the listeners over: {0}")]
    Handover(String),
    /// This process cannot be upgraded as it runs (the reason says why, with a hint).
    #[error("upgrade refused: {0}")]
    Refused(&'static str),
    /// The new process ended before it was ready.
    #[error("the new process (PID {pid}) exited before it was ready ({status}){}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Exited {
        /// Its PID.
        pid: u32,
        /// How it ended (`exit status: 1`, `signal: 9`).
        status: String,
        /// What it said of its failed start (its `STATUS=`), if anything.
        reason: Option<String>,
    },
    /// The new process was not ready in time; it was stopped.
    #[error("the new process (PID {pid}) was not ready within {timeout:?}")]
    Timeout {
        /// Its PID.
        pid: u32,
        /// The upgrade timeout.
        timeout: Duration,
    },
}

/// What starts upgrades in a run, and how they are made.
pub(crate) struct Upgrader {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    requested: Arc<Notify>,
    timeout: Duration,
    /// The path this process was started from (a deploy replaces the file there).
    exe: Option<PathBuf>,
}

impl Upgrader {
    /// Listens for `signal` (when given) and the handle's requests.
    pub(crate) fn new(
        signal: Option<UpgradeSignal>,
        requested: Arc<Notify>,
        timeout: Duration,
    ) -> std::io::Result<Upgrader> {
        #[cfg(unix)]
        let signal = match signal {
            Some(signal) => {
                use tokio::signal::unix::SignalKind;
                let kind = match signal {
                    UpgradeSignal::Hup => SignalKind::hangup(),
                    UpgradeSignal::Usr1 => SignalKind::user_defined1(),
                    UpgradeSignal::Usr2 => SignalKind::user_defined2(),
                };
                Some(tokio::signal::unix::signal(kind)?)
            }
            None => None,
        };
        #[cfg(not(unix))]
        let _ = signal;
        Ok(Upgrader {
            #[cfg(unix)]
            signal,
            requested,
            timeout,
            exe: sys::own_path(),
        })
    }

    /// Forgets requests made before the lifecycle was ready: an upgrade is only for a process
    /// that serves.
    pub(crate) fn forget_earlier(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            while signal.poll_recv(&mut cx).is_ready() {
                tracing::info!(target: "lameduck", "upgrade signal before ready: ignored");
            }
        }
        let notified = self.requested.notified();
        tokio::pin!(notified);
        let _ = notified.as_mut().poll(&mut cx);
    }

    /// The next request for an upgrade.
    pub(crate) async fn requested(&mut self) {
        #[cfg(unix)]
        let signal = async {
            match &mut self.signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signal = std::future::pending::<()>();
        tokio::select! {
            () = signal => tracing::info!(target: "lameduck", "upgrade signal"),
            () = self.requested.notified() => tracing::info!(target: "lameduck", "upgrade requested"),
        }
    }

    /// Starts the new process with every listener of `handover`.
    ///
    /// Refused when the new process could not take the listeners (`inherit_listeners(false)`,
    /// which it shares), or would end with this one (PID 1, a container's init).
    pub(crate) fn begin(
        &self,
        handover: &Handover,
        inherit_listeners: bool,
    ) -> Result<Attempt, UpgradeError> {
        if !inherit_listeners {
            return Err(UpgradeError::Refused(
                "with inherit_listeners(false) the new process would not take the listeners",
            ));
        }
        if std::process::id() == 1 {
            return Err(UpgradeError::Refused(
                "this process is PID 1 (a container's init), and the new one would end with it \
                 (hint: run under an init that stays, such as tini or `docker run --init`)",
            ));
        }
        sys::begin(self.exe.as_deref(), handover, self.timeout)
    }
}

use std::future::Future as _;

pub(crate) use sys::Attempt;

#[cfg(target_os = "linux")]
mod sys {
    use std::os::linux::net::SocketAddrExt;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use command_fds::{CommandFdExt, FdMapping};
    use tokio::net::UnixDatagram;
    use tokio::time::Instant;

    use super::UpgradeError;
    use crate::listen::{Handover, UPGRADE_NOTIFY, UPGRADE_PARENT};

    /// The path this process's binary was started by: `argv[0]` when it names a file (made
    /// absolute against the working directory at the start, which a child inherits), so that
    /// a symlink (`current -> releases/v2`) is followed again at the upgrade; otherwise
    /// `/proc/self/exe`, without the " (deleted)" it gets once a deploy has replaced the file
    /// (the path counts, not the old inode).
    pub(super) fn own_path() -> Option<PathBuf> {
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        if let Some(argv0) = argv0.filter(|p| p.components().count() > 1) {
            return std::env::current_dir().ok().map(|dir| dir.join(argv0));
        }
        let path = std::env::current_exe().ok()?;
        let text = path.to_str()?;
        Some(PathBuf::from(
            text.strip_suffix(" (deleted)").unwrap_or(text),
        ))
    }

    /// A new process on its way to ready. Dropped before it has handed over (the run itself
    /// dropped, say), it kills the new process: nothing may serve unmanaged.
    #[derive(Debug)]
    pub(crate) struct Attempt {
        child: tokio::process::Child,
        pid: u32,
        /// Where it says READY=1, or why it failed: a socket in a directory only this user can
        /// enter, so that no other user's process can say it.
        socket: UnixDatagram,
        /// The socket's directory, to remove with it (none for an abstract socket).
        dir: Option<PathBuf>,
        handed_over: bool,
        deadline: Instant,
        timeout: Duration,
        /// What it said of a failed start.
        reason: Option<String>,
    }

    pub(super) fn begin(
        exe: Option<&Path>,
        handover: &Handover,
        timeout: Duration,
    ) -> Result<Attempt, UpgradeError> {
        let exe = exe.ok_or_else(|| UpgradeError::Spawn {
            exe: "(this process's binary)".to_owned(),
            source: std::io::Error::other("its path is unknown"),
        })?;
        let listeners = handover.duplicates().map_err(UpgradeError::Handover)?;
        if let Some((name, _)) = listeners.iter().find(|(name, _)| name.contains(':')) {
            return Err(UpgradeError::Handover(format!(
                "the service name `{name}` has a `:`, which LISTEN_FDNAMES cannot carry"
            )));
        }
        let (dir, address, socket) = readiness_socket()
            .map_err(|e| UpgradeError::Handover(format!("no readiness socket: {e}")))?;

        let names: Vec<&str> = listeners.iter().map(|(name, _)| &**name).collect();
        let names = names.join(":");
        let count = listeners.len();
        let mappings = listeners
            .into_iter()
            .zip(3..)
            .map(|((_, fd), child_fd)| FdMapping {
                parent_fd: fd,
                child_fd,
            })
            .collect();
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env_remove("LISTEN_PID")
            // systemd's watchdog follows the main PID, which will be the new process's.
            .env_remove("WATCHDOG_PID")
            .env("LISTEN_FDS", count.to_string())
            .env("LISTEN_FDNAMES", names)
            .env(UPGRADE_PARENT, std::process::id().to_string())
            .env(UPGRADE_NOTIFY, &address)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        cmd.fd_mappings(mappings)
            .map_err(|e| UpgradeError::Handover(e.to_string()))?;
        let shown = exe.display().to_string();
        let child = cmd.spawn().map_err(|source| {
            if let Some(dir) = &dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            UpgradeError::Spawn {
                exe: shown.clone(),
                source,
            }
        })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(
            target: "lameduck", pid, exe = %shown, listeners = count,
            timeout_ms = timeout.as_millis() as u64,
            "upgrade: new process started, serving on until it is ready"
        );
        Ok(Attempt {
            child,
            pid,
            socket,
            dir,
            handed_over: false,
            deadline: Instant::now() + timeout,
            timeout,
            reason: None,
        })
    }

    impl Attempt {
        /// Its PID.
        pub(crate) fn pid(&self) -> u32 {
            self.pid
        }

        /// Resolves once the new process is ready (`Ok`), or has failed: it exited, or was not
        /// ready by the deadline. Cancel-safe.
        pub(crate) async fn ready(&mut self) -> Result<u32, UpgradeError> {
            let mut buf = [0u8; 4096];
            loop {
                tokio::select! {
                    // What it said first (why it failed, or READY=1), then how it ended.
                    biased;
                    received = self.socket.recv(&mut buf) => {
                        let Ok(n) = received else { continue };
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Some(status) = text.lines().find_map(|l| l.strip_prefix("STATUS=")) {
                            self.reason = Some(status.to_owned());
                        }
                        if text.lines().any(|l| l == "READY=1") {
                            self.handed_over = true;
                            return Ok(self.pid);
                        }
                    }
                    status = self.child.wait() => {
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        return Err(UpgradeError::Exited {
                            pid: self.pid,
                            status,
                            reason: self.reason.take(),
                        });
                    }
                    () = tokio::time::sleep_until(self.deadline) => {
                        return Err(UpgradeError::Timeout { pid: self.pid, timeout: self.timeout });
                    }
                }
            }
        }

        /// Whether it has said READY=1 already (without waiting).
        pub(crate) fn said_ready(&mut self) -> bool {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.socket.try_recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return true;
                }
            }
            false
        }

        /// SIGKILL, now (reaped by [`stop`](Self::stop)).
        pub(crate) fn kill_now(&mut self) {
            let _ = self.child.start_kill();
        }

        /// Stops the new process (the upgrade failed, or this one is shutting down first):
        /// SIGTERM, then SIGKILL if it has not exited `within` (a moment for one that never
        /// served; its drain for one that may have, when a shutdown raced its READY=1); reaped
        /// either way.
        pub(crate) async fn stop(mut self, within: Duration) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if let Ok(pid) = i32::try_from(self.pid) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(within, self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(target: "lameduck", pid = self.pid, "upgrade: the new process did not stop within {within:?}: killed");
                let _ = self.child.kill().await;
            }
        }
    }

    impl Drop for Attempt {
        fn drop(&mut self) {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            if !self.handed_over {
                let _ = self.child.start_kill();
            }
        }
    }

    /// A datagram socket in a new directory that only this user can enter; where that cannot be
    /// (a read-only or too long temporary directory), one in the abstract namespace under a name
    /// nobody can guess. Returns its directory, its address for `LAMEDUCK_UPGRADE_NOTIFY`, and
    /// the socket.
    fn readiness_socket() -> std::io::Result<(Option<PathBuf>, String, UnixDatagram)> {
        static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let unique = format!(
            "lameduck-upgrade-{}-{nanos}-{}",
            std::process::id(),
            ATTEMPTS.fetch_add(1, Ordering::Relaxed)
        );
        match private_socket(&unique) {
            Ok((dir, path, socket)) => Ok((Some(dir), path, socket)),
            Err(error) => {
                tracing::debug!(target: "lameduck", "upgrade: no socket in the temporary directory ({error}): an abstract one");
                use std::hash::{BuildHasher, Hasher};
                let mut secret = std::collections::hash_map::RandomState::new().build_hasher();
                secret.write_u32(nanos);
                let name = format!("{unique}-{:016x}", secret.finish());
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
                socket.set_nonblocking(true)?;
                Ok((None, format!("@{name}"), UnixDatagram::from_std(socket)?))
            }
        }
    }

    fn private_socket(unique: &str) -> std::io::Result<(PathBuf, String, UnixDatagram)> {
        use std::os::unix::fs::DirBuilderExt;
        let temp = std::env::temp_dir();
        let temp = if temp.is_absolute() {
            temp
        } else {
            std::env::current_dir()?.join(temp)
        };
        let dir = temp.join(unique);
        // Fails if it exists: nobody else's directory is used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("ready.sock");
        let bound = std::os::unix::net::UnixDatagram::bind(&path).and_then(|socket| {
            socket.set_nonblocking(true)?;
            UnixDatagram::from_std(socket)
        });
        match (bound, path.to_str()) {
            (Ok(socket), Some(text)) => Ok((dir.clone(), text.to_owned(), socket)),
            (result, _) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(result
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("not a UTF-8 path")))
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::UpgradeError;
    use crate::listen::Handover;

    pub(super) fn own_path() -> Option<PathBuf> {
        None
    }

    /// Never made on this platform.
    #[derive(Debug)]
    pub(crate) enum Attempt {}

    pub(super) fn begin(
        _exe: Option<&Path>,
        _handover: &Handover,
        _timeout: Duration,
    ) -> Result<Attempt, UpgradeError> {
        Err(UpgradeError::Unsupported)
    }

    impl Attempt {
        pub(crate) fn pid(&self) -> u32 {
            match *self {}
        }

        pub(crate) async fn ready(&mut self) -> Result<u32, UpgradeError> {
            match *self {}
        }

        pub(crate) async fn stop(self, _within: Duration) {
            match self {}
        }

        pub(crate) fn said_ready(&mut self) -> bool {
            match *self {}
        }

        pub(crate) fn kill_now(&mut self) {
            match *self {}
        }
    }
}
