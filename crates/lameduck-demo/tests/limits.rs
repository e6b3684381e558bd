//! The demo's limits of normal serving, end to end on the real binary: a client that never
//! finishes its handshake is closed at `--handshake-timeout` on all three ports, the gRPC
//! ports answer nothing to HTTP/1, and out of file descriptors (`prlimit`) the demo says it is
//! not ready, logs sparingly, and recovers.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;

/// Generous: the machines are shared and noisy.
const WAIT: Duration = Duration::from_secs(30);

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The demo on free ports, once all three accept; killed if the test fails.
struct Demo {
    child: Child,
    addrs: [String; 3],
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let addrs = [free_addr(), free_addr(), free_addr()];
        let port = addrs[0].rsplit(':').next().unwrap_or("0");
        let dir = std::env::temp_dir().join(format!(
            "lameduck-demo-limits-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lameduck-demo"))
            .args([
                "--http", &addrs[0], "--grpc-a", &addrs[1], "--grpc-b", &addrs[2],
            ])
            .arg("--db")
            .arg(dir.join("demo.db"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let demo = Demo { child, addrs };
        let began = Instant::now();
        while demo.addrs.iter().any(|a| TcpStream::connect(a).is_err()) {
            assert!(began.elapsed() < WAIT, "the demo did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        demo
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
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

/// What the server sends before it closes `stream` (bounded by `WAIT`), and when it closed.
fn answer_and_close(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (answer, Instant::now())
}

#[test]
fn silent_and_stalled_clients_are_closed_at_the_handshake_timeout_on_every_port() {
    let demo = Demo::start(&["--handshake-timeout", "500ms"]);
    let began = Instant::now();
    let mut held = Vec::new();
    for addr in &demo.addrs {
        held.push(TcpStream::connect(addr).unwrap());
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        held.push(half);
    }
    let mut half_head = TcpStream::connect(&demo.addrs[0]).unwrap();
    half_head.write_all(b"GET /fast HTTP/1.1\r\nHost").unwrap();
    held.push(half_head);
    for stream in &mut held {
        let (answer, closed) = answer_and_close(stream);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        let after = closed.duration_since(began);
        assert!(
            after >= Duration::from_millis(500),
            "closed at the timeout, not before: {after:?}"
        );
        assert!(after < WAIT, "closed: {after:?}");
    }
    assert_eq!(demo.stop(), 0);
}

#[test]
fn the_grpc_ports_answer_nothing_to_http1() {
    let demo = Demo::start(&[]);
    for addr in &demo.addrs[1..] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (answer, _) = answer_and_close(&mut stream);
        assert!(
            answer.is_empty(),
            "{addr}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // The HTTP port still answers it.
    let mut stream = TcpStream::connect(&demo.addrs[0]).unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = answer_and_close(&mut stream);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(demo.stop(), 0);
}

/// One `GET /readyz` on a kept-alive connection: the status and the body.
fn readyz(stream: &mut TcpStream) -> (u16, String) {
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if body.len() >= length {
            let status = head[9..12].parse().unwrap();
            return (status, body.to_owned());
        }
    }
}

#[test]
fn out_of_descriptors_the_demo_is_not_ready_logs_sparingly_and_recovers() {
    let Some(prlimit) = tools::tool("prlimit", "util-linux") else {
        return;
    };
    let addrs = [free_addr(), free_addr(), free_addr()];
    let dir = std::env::temp_dir().join(format!("lameduck-demo-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(prlimit)
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_lameduck-demo"))
        .args([
            "--http", &addrs[0], "--grpc-a", &addrs[1], "--grpc-b", &addrs[2],
        ])
        .arg("--db")
        .arg(dir.join("demo.db"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let demo = Demo { child, addrs };
    let began = Instant::now();
    let mut kept = loop {
        if let Ok(stream) = TcpStream::connect(&demo.addrs[0]) {
            break stream;
        }
        assert!(began.elapsed() < WAIT, "the demo did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(readyz(&mut kept), (200, "ready\n".to_owned()));

    // Silent clients take every descriptor left; the kernel queues the rest.
    let holders: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&demo.addrs[0]).unwrap())
        .collect();
    let until = Instant::now() + WAIT;
    let (status, body) = loop {
        let answer = readyz(&mut kept);
        if answer.0 != 200 || Instant::now() > until {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "{body:?}");
    // The server's impairment, named after it, with the accept error.
    assert!(
        body.starts_with("not ready: http: cannot accept connections: ")
            && body.lines().count() == 1,
        "{body:?}"
    );
    // Failing all along, it logs at most a line a second.
    let watched = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let failing: Vec<String> = lines
        .try_iter()
        .filter(|(at, line)| *at >= watched && line.contains("accept failed"))
        .map(|(_, line)| line)
        .collect();
    assert!(
        (1..=4).contains(&failing.len()),
        "{} accept-error lines in 2.5 s:\n{}",
        failing.len(),
        failing.join("\n")
    );
    // The holders leave: back to ready, and serving.
    drop(holders);
    let until = Instant::now() + WAIT;
    while readyz(&mut kept).0 != 200 {
        assert!(Instant::now() < until, "not ready again");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(kept);
    assert_eq!(demo.stop(), 0);
}

/// The demo's resident memory, from `/proc` (Linux), in KiB.
fn rss_kib(demo: &Demo) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", demo.child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn stalled_uploads_get_408_at_the_body_timeout_and_what_they_held_is_released() {
    let demo = Demo::start(&["--body-timeout", "3s"]);
    let before = rss_kib(&demo);
    // 64 uploads of 2 MiB that stop halfway: each has 1 MiB buffered in the app's extractor.
    let half = vec![b'x'; 1 << 20];
    let mut stalled = Vec::new();
    for i in 0..64 {
        let mut stream = TcpStream::connect(&demo.addrs[0]).unwrap();
        let head = format!(
            "PUT /kv/stalled-{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            2 << 20
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&half).unwrap();
        stalled.push(stream);
    }
    // What the server holds once it has read what was sent (well before the timeout).
    let mut held = None;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(50));
        held = held.max(rss_kib(&demo));
    }
    for stream in &mut stalled {
        let (answer, _) = answer_and_close(stream);
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.starts_with("http/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }
    // Nothing of theirs was stored.
    let mut probe = TcpStream::connect(&demo.addrs[0]).unwrap();
    probe
        .write_all(b"GET /kv/stalled-0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = answer_and_close(&mut probe);
    assert!(
        answer.starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let after = rss_kib(&demo);
    if let (Some(before), Some(held), Some(after)) = (before, held, after) {
        eprintln!("RSS: {before} KiB before, {held} KiB held, {after} KiB after");
        // The 64 MiB the uploads held is given back (to the allocator, and most of it to the
        // system): what stays is well under what they held.
        let grew = held.saturating_sub(before);
        assert!(
            grew > 32 << 10,
            "the uploads were held: {before} -> {held} KiB"
        );
        assert!(
            after.saturating_sub(before) < grew / 2,
            "not released: {before} -> {held} -> {after} KiB"
        );
    }
    assert_eq!(demo.stop(), 0);
}
