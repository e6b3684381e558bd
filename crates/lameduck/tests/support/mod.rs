//! What the process tests share: the child process as the parent sees it.
//!
//! The child is the test binary itself, re-run with `--exact --ignored <entry>`: the entry is
//! an ignored test that serves, prints what it does on stdout (`LISTENING <addr>`, `READY`,
//! `REPORT <json>`, ...), and exits with the report's exit code.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use lameduck::{BoxError, Drain};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub mod h2;
#[cfg(target_os = "linux")]
pub mod notify;
pub mod tools;

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
pub const WAIT: Duration = Duration::from_secs(20);

/// The child as the parent sees it: its stdout lines as they come, and its exit.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Runs this test binary's ignored test `entry` as the child, with `env`.
    pub fn spawn(entry: &str, env: &[(&str, &str)]) -> Proc {
        let args = child_args(entry);
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(cmd)
    }

    /// Runs `cmd` (a launcher of the child, say), reading its stdout.
    pub fn spawn_command(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // A binary the test has just written can be "busy" for a moment: another test's
        // thread may have forked while it was open for writing, and that child holds the
        // descriptor until its own exec. Wait it out, bounded.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.unwrap(),
            }
        };
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line with `prefix`; returns the rest of it.
    pub fn expect(&mut self, prefix: &str) -> String {
        self.try_expect(prefix, WAIT)
            .unwrap_or_else(|()| panic!("no `{prefix}` line; saw {:?}", self.seen))
    }

    /// As [`expect`](Self::expect), waiting at most `within`: `Err` when no such line came.
    pub fn try_expect(&mut self, prefix: &str, within: Duration) -> Result<String, ()> {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| ())?;
            self.seen.push(line.clone());
            // libtest's own "test child ... " may precede the first line on the same line.
            if let Some(at) = line.find(prefix) {
                return Ok(line[at + prefix.len()..].trim().to_owned());
            }
        }
    }

    pub fn addr(&mut self) -> SocketAddr {
        let addr = self.expect("LISTENING").parse().unwrap();
        self.expect("READY");
        addr
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the exit; returns the code, the report, and our stdout lines since the last
    /// `expect`, in order.
    pub fn finish(mut self) -> (i32, serde_json::Value, Vec<String>) {
        let from = self.seen.len();
        let report = self.expect("REPORT");
        let status = wait_exit(&mut self.child, WAIT);
        let lines = self.seen[from..].to_vec();
        (
            status.code().expect("exited, not killed"),
            serde_json::from_str(&report).unwrap(),
            lines,
        )
    }
}

/// The command line that runs this test binary's ignored test `entry` as a child: the binary,
/// then its arguments.
pub fn child_args(entry: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    [
        exe.to_str().unwrap(),
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed assertion must not leave the child running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < until,
            "child did not exit within {within:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded by [`WAIT`]) until connecting to `addr` is refused: the listener has closed.
/// A probe that gets in first is accepted and closed like any silent connection.
pub async fn wait_refused(addr: SocketAddr) {
    let began = Instant::now();
    while began.elapsed() < WAIT {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{addr} still accepts connections {WAIT:?} into the drain");
}

/// `SLEEP <ms>` lines, each answered `DONE` after that long. Like HTTP keep-alive, an idle
/// connection is closed at the drain; a request in progress is finished first.
pub async fn serve_lines(stream: tokio::net::TcpStream, drain: Drain) -> Result<(), BoxError> {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            biased;
            () = drain.draining() => return Ok(()),
            line = lines.next_line() => line?,
        };
        let Some(line) = line else { return Ok(()) };
        let ms: u64 = line
            .strip_prefix("SLEEP ")
            .ok_or("expected SLEEP")?
            .parse()?;
        println!("REQUEST {ms}");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        write.write_all(b"DONE\n").await?;
    }
}

/// Accepts until the drain, serving each connection with [`serve_lines`] as tracked work.
pub async fn accept_lines(listener: tokio::net::TcpListener, drain: Drain) -> Result<(), BoxError> {
    loop {
        tokio::select! {
            _ = drain.draining() => return Ok(()),
            conn = listener.accept() => {
                let (stream, _) = conn?;
                drain.spawn(serve_lines(stream, drain.clone()));
            }
        }
    }
}

/// A lifecycle of one service named `web`, running in this process, once ready.
pub struct InProcess {
    pub handle: lameduck::LifecycleHandle,
    pub run: tokio::task::JoinHandle<lameduck::Report>,
    /// The service's first address.
    pub addr: SocketAddr,
}

impl InProcess {
    /// Starts `service` as `web` (no signal handling) and waits until it is ready.
    pub async fn start(service: impl lameduck::Service) -> InProcess {
        let lifecycle = lameduck::Lifecycle::new()
            .handle_signals(false)
            .service("web", service);
        let handle = lifecycle.handle();
        let run = tokio::spawn(lifecycle.run());
        handle.wait_ready().await.unwrap();
        let addr = handle.addresses("web")[0].parse().unwrap();
        InProcess { handle, run, addr }
    }

    /// Shuts down, and the report (bounded by [`WAIT`]).
    pub async fn report(self) -> lameduck::Report {
        self.handle.shutdown();
        tokio::time::timeout(WAIT, self.run)
            .await
            .expect("the run ends")
            .unwrap()
    }
}

/// `GET /sleep/{ms}`: waits that long, then answers "slept" (the tests' slow request).
pub fn sleep() -> axum::routing::MethodRouter {
    axum::routing::get(
        |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slept\n"
        },
    )
}
