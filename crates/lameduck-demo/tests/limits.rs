//! The demo's limits of normal serving, end to end on the real binary: a client that never
//! finishes its handshake is closed at `--handshake-timeout` on all three ports, and the gRPC
//! ports answer nothing to HTTP/1.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
