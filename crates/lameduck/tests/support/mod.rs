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
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
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
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{prefix}` line; saw {:?}", self.seen));
            self.seen.push(line.clone());
            // libtest's own "test child ... " may precede the first line on the same line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
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
