//! A periodic flush that fails, end to end on the real binary: another connection holds
//! SQLite's write lock; the demo keeps the acknowledged write, retries with a backoff, logs each
//! failure, answers `/readyz` with 503 naming `store` (gRPC health NOT_SERVING) while it
//! fails, and once the lock is gone flushes the write, logs that it recovered, and is ready.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machines are shared and noisy.
const WAIT: Duration = Duration::from_secs(30);

/// The demo, its stderr (JSON lines) as they come; killed if the test fails.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<Value>,
}

impl Demo {
    fn start(db: &std::path::Path, extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lameduck-demo"))
            .args(["--http", "127.0.0.1:0", "--grpc-a", "127.0.0.1:0"])
            .args(["--grpc-b", "127.0.0.1:0", "--log-format", "json", "--db"])
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a log event whose message contains `text`; returns it.
    fn expect(&mut self, text: &str) -> Value {
        if let Some(seen) = self.seen.iter().find(|e| message(e).contains(text)) {
            return seen.clone();
        }
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no `{text}` log line; saw:\n{:#?}", self.seen);
            };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            self.seen.push(event.clone());
            if message(&event).contains(text) {
                return event;
            }
        }
    }

    /// Takes the log lines that came so far.
    fn drain_log(&mut self) {
        self.seen.extend(
            self.lines
                .try_iter()
                .filter_map(|l| serde_json::from_str::<Value>(&l).ok()),
        );
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed");
            }
            assert!(began.elapsed() < WAIT, "the demo did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(event: &Value) -> &str {
    event["message"].as_str().unwrap_or_default()
}

/// One HTTP/1.1 request on a connection of its own: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let length = body.len();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Length: {length}\r\n\r\n{body}"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    (head[9..12].parse().unwrap(), body.to_owned())
}

/// Polls `/readyz` (bounded by `WAIT`) until its status is `status`; returns its body.
fn readyz_until(addr: SocketAddr, status: u16) -> String {
    let until = Instant::now() + WAIT;
    loop {
        let (now, body) = http(addr, "GET", "/readyz", "");
        if now == status {
            return body;
        }
        assert!(
            Instant::now() < until,
            "/readyz never {status}: {now} {body:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// grpc.health.v1's answer for the whole server (1 = SERVING, 2 = NOT_SERVING).
fn grpc_health(addr: SocketAddr) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
    })
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-demo-flush-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[test]
fn a_failing_flush_is_retried_logged_and_shown_by_readyz_and_loses_nothing() {
    let db = temp_db("locked");
    let mut demo = Demo::start(&db, &["--flush-interval", "100ms"]);
    let ready = demo.expect("serving: all servers ready");
    let addr = |k: &str| -> SocketAddr { ready[k].as_str().unwrap().parse().unwrap() };
    let (http_addr, grpc_addr) = (addr("http"), addr("grpc_b"));
    assert_eq!(
        http(http_addr, "GET", "/readyz", ""),
        (200, "ready\n".into())
    );

    // Another writer holds SQLite's write lock (the demo opened the file, in WAL mode, before
    // it was ready). In WAL mode readers go on, and `BEGIN IMMEDIATE` is what keeps every
    // other writer out (`EXCLUSIVE` does the same there); the demo's flush waits its busy
    // timeout (5 s) for it, then fails with "database is locked". No lock makes it fail
    // sooner: SQLite calls the busy handler for any writer that finds the lock taken.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let (status, _) = http(http_addr, "PUT", "/kv/held", "kept through the lock");
    assert_eq!(status, 200, "acknowledged");
    let failing_since = Instant::now();

    let body = readyz_until(http_addr, 503);
    assert!(
        body.starts_with("not ready: store: flush failing: database ")
            && body.contains("database is locked"),
        "{body:?}"
    );
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert_eq!(
        grpc_health(grpc_addr),
        2,
        "NOT_SERVING while the flush fails"
    );
    // Still serving, and the write is still readable, from the cache.
    assert_eq!(
        http(http_addr, "GET", "/kv/held", ""),
        (200, "kept through the lock".into())
    );
    let warned = demo.expect("periodic flush failed");
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["attempt"], 1, "{warned}");
    assert_eq!(warned["retry_in_ms"], 100, "{warned}");
    assert_eq!(warned["unflushed"], 1, "{warned}");
    assert!(message(&warned).contains("database is locked"), "{warned}");

    // The lock goes: the next attempt flushes the write, and the process is ready again.
    locker.execute_batch("ROLLBACK").unwrap();
    let released = Instant::now();
    assert_eq!(readyz_until(http_addr, 200), "ready\n");
    assert_eq!(grpc_health(grpc_addr), 1, "SERVING again");
    let recovered = demo.expect("periodic flush recovered");
    assert_eq!(recovered["level"], "INFO", "{recovered}");
    let attempts = recovered["failed_attempts"].as_u64().unwrap();
    assert!(attempts >= 1, "{recovered}");
    assert!(
        recovered["failing_ms"].as_u64().unwrap() as u128 <= failing_since.elapsed().as_millis(),
        "{recovered}"
    );
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "recovered soon after the lock went: {:?}",
        released.elapsed()
    );
    // One WARN line per failed attempt, numbered in order.
    demo.drain_log();
    let warned: Vec<u64> = demo
        .seen
        .iter()
        .filter(|e| message(e).contains("periodic flush failed"))
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(warned, (1..=attempts).collect::<Vec<_>>());

    // In SQLite, read by another connection, before the shutdown's final flush.
    let value: String = locker
        .query_row("SELECT value FROM kv WHERE key = 'held'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(value, "kept through the lock");

    drop(locker);
    assert_eq!(demo.stop(), 0);
}
