//! A server process under measurement: started, signalled, waited for, weighed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `bench-server`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `bench-server <kind> 127.0.0.1:0` and waits for its `READY` line.
    pub async fn start(bin: &Path, kind: &str) -> Server {
        let mut child = Command::new(bin)
            .args([kind, "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next_line()
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("{kind}: no READY line"));
            if let Some(addr) = line.strip_prefix("READY ") {
                break addr.parse().expect("an address");
            }
        };
        Server { child, addr }
    }

    /// Sends SIGTERM; returns when it was sent.
    pub fn terminate(&self) -> Instant {
        signal_term(self.child.id());
        Instant::now()
    }

    /// Waits for the exit at most `within`; returns when it happened, or `None` (then kills).
    pub async fn exited(&mut self, within: Duration) -> Option<Instant> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(_) => Some(Instant::now()),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// Sends SIGTERM to `pid`.
pub fn signal_term(pid: Option<u32>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Raises the open-file limit to its hard limit: ten thousand connections need it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            hard
        }
        Err(_) => 0,
    }
}
