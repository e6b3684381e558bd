//! Section 7: a deploy on one host, as its clients see it: a restart (SIGTERM, exit, start again on the
//! same port) against an upgrade in place (SIGHUP: the listener handed to a new process), under
//! the same load, for axum, lameduck and cloudflare/tableflip (Go).
//!
//! Load: 8 clients on fresh connections (`Connection: close`) and 8 on keep-alive connections,
//! `GET /` in a loop. A request is **refused** when its connection is (nobody listens: the
//! restart's gap), **failed** when it was accepted and then got no complete 200 (reset, closed
//! mid-response, an error status), **ok** otherwise. A keep-alive connection that the server
//! closed while idle (the ordinary end of keep-alive at a drain) is reopened and the request
//! sent again, as every HTTP client does with an idempotent request: that is neither.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::load;

/// How the deploy is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM, wait for the exit, start the same command again.
    Restart,
    /// SIGHUP, follow the pid file to the new process, wait for the old one to exit.
    Upgrade,
}

/// What one deploy under load gave.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
    /// From the signal until the new process serves: for a restart, until the new process
    /// prints READY; for an upgrade, until the pid file names the new process.
    pub handover_ms: Option<f64>,
    /// From spawn to READY of a fresh start, measured in the same run.
    pub own_ready_ms: Option<f64>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// A server process started from a command line; its stdout is read for `READY <addr>`, then
/// drained (an upgrade's new process writes to the same pipe).
struct Proc {
    child: Child,
}

impl Proc {
    async fn start(command: &[String]) -> (Proc, Duration) {
        let began = Instant::now();
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", command[0]));
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("READY ") => break,
                Ok(Some(_)) => {}
                _ => panic!("{}: no READY line", command[0]),
            }
        }
        let took = began.elapsed();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Proc { child }, took)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        signal_pid(self.child.id(), signal);
    }
}

fn signal_pid(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Whether `pid` still runs: a zombie (dead, not yet reaped by its parent) does not.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One deploy of `command` (which serves `GET /` on `addr`) under load.
pub async fn once(
    command: &[String],
    addr: SocketAddr,
    action: Action,
    pid_file: &Path,
) -> Outcome {
    use nix::sys::signal::Signal;

    let _ = std::fs::remove_file(pid_file);
    let (mut first, own_ready) = Proc::start(command).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..16 {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            if i % 2 == 0 {
                fresh_client(addr, &stop, &tally).await;
            } else {
                keep_alive_client(addr, &stop, &tally).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let signal_at = Instant::now();
    let mut handover = None;
    let mut second = None;
    match action {
        Action::Restart => {
            first.signal(Signal::SIGTERM);
            let _ = tokio::time::timeout(Duration::from_secs(30), first.child.wait()).await;
            let (again, _) = Proc::start(command).await;
            handover = Some(signal_at.elapsed());
            second = Some(again);
        }
        Action::Upgrade => {
            let old = first.child.id();
            first.signal(Signal::SIGHUP);
            let until = signal_at + Duration::from_secs(30);
            while Instant::now() < until {
                if handover.is_none() && read_pid(pid_file).is_some_and(|pid| Some(pid) != old) {
                    handover = Some(signal_at.elapsed());
                }
                if handover.is_some() && first.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    }
    // The new process alone, a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    // Stop whatever serves now: the restarted process, or the upgrade's new one.
    match (second, read_pid(pid_file)) {
        (Some(again), _) => {
            again.signal(Signal::SIGTERM);
            let mut again = again;
            let _ = tokio::time::timeout(Duration::from_secs(30), again.child.wait()).await;
        }
        (None, Some(pid)) => {
            signal_pid(Some(pid), Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(30);
            while alive(pid) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (None, None) => {}
    }
    let _ = first.child.kill().await;
    Outcome {
        ok: tally.ok.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        handover_ms: handover.map(crate::ms),
        own_ready_ms: Some(crate::ms(own_ready)),
    }
}

/// `GET /` on a new connection each time.
async fn fresh_client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let request = b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
        let mut response = Vec::new();
        let answered = async {
            conn.write_all(request).await?;
            conn.read_to_end(&mut response).await
        };
        let done = tokio::time::timeout(Duration::from_secs(5), answered).await;
        let complete = matches!(done, Ok(Ok(_))) && response.starts_with(b"HTTP/1.1 200");
        let counter = if complete { &tally.ok } else { &tally.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET /` on a keep-alive connection, reopened when the server closes it.
async fn keep_alive_client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<load::H1> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let mut send = match conn.take() {
            Some(send) => send,
            None => match load::h1(addr).await {
                Some(send) => send,
                None => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        match load::fetch_outcome(&mut send, addr, "/").await {
            load::Fetched::Ok => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                conn = Some(send);
            }
            // The server had closed the idle connection: send it again on a new one.
            load::Fetched::NotSent if reused => {}
            load::Fetched::NotSent | load::Fetched::Failed => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The tableflip peer (a Go net/http server upgraded with cloudflare/tableflip), built by
/// `scripts/bench.sh` beside the benchmark when Go and the Debian package are present.
pub fn tableflip_server(beside: &Path) -> Option<PathBuf> {
    let path = beside.with_file_name("tableflip-server");
    path.exists().then_some(path)
}
