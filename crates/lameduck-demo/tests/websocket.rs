//! WebSockets across SIGTERM, with a client that is not ours (Python's `websockets`, Debian's
//! `python3-websockets`): the demo's `/ws/ticks` pushes ticks through the lame-duck delay, then
//! closes with 1001 "going away", never an abnormal closure (1006), and the process exits as
//! soon as the client has answered. A client that ignores the close (raw TCP, never answering)
//! is cut at the drain deadline, and the report counts its connection aborted.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::free_port;

const DEMO: &str = env!("CARGO_BIN_EXE_lameduck-demo");
const WAIT: Duration = Duration::from_secs(15);

/// The client: connects, says hello, counts ticks (printing READY after three), and at the
/// end prints what closed the socket, as JSON.
const CLIENT: &str = r#"
import asyncio, json, sys, time
import websockets

async def main(url):
    ticks, echoed = 0, False
    async with websockets.connect(url, close_timeout=10) as ws:
        await ws.send("hello")
        try:
            async for message in ws:
                if message == "hello":
                    echoed = True
                elif message.startswith("tick"):
                    ticks += 1
                    if ticks == 3:
                        print("READY", flush=True)
        except websockets.ConnectionClosed:
            pass
        print(json.dumps({"ticks": ticks, "echoed": echoed, "code": ws.close_code,
                          "reason": ws.close_reason}), flush=True)

asyncio.run(main(sys.argv[1]))
"#;

/// A Python 3 with `websockets`: Debian's (`/usr/bin/python3`), or the one on `PATH`. CI
/// installs it (`.ci/run`); elsewhere a missing one skips the test, loudly.
fn python() -> Option<PathBuf> {
    let found = ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with websockets is missing (Debian package `python3-websockets`)"
        );
        eprintln!("SKIPPED: no python3 with websockets (apt-get install python3-websockets)");
    }
    found.map(PathBuf::from)
}

struct Demo {
    child: Child,
    http: String,
    report: PathBuf,
}

impl Demo {
    fn start(dir: &Path, drain_timeout: &str) -> Demo {
        let http = format!("127.0.0.1:{}", free_port());
        let report = dir.join("report.json");
        let child = Command::new(DEMO)
            .args(["--http", &http])
            .args(["--grpc-a", &format!("127.0.0.1:{}", free_port())])
            .args(["--grpc-b", &format!("127.0.0.1:{}", free_port())])
            .arg("--db")
            .arg(dir.join("demo.db"))
            .args(["--lame-duck", "300ms", "--drain-timeout", drain_timeout])
            .arg("--report-json")
            .arg(&report)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let began = Instant::now();
        while TcpStream::connect(&http).is_err() {
            assert!(began.elapsed() < WAIT, "the demo did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Demo {
            child,
            http,
            report,
        }
    }

    fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Its exit code and report, once it has exited.
    fn finish(mut self) -> (Option<i32>, serde_json::Value) {
        let began = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(began.elapsed() < WAIT, "the demo did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let report = std::fs::read(&self.report).unwrap();
        (status.code(), serde_json::from_slice(&report).unwrap())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    tools::fresh_dir("demo-ws", name)
}

/// The `http` service's part of the report.
fn http_service(report: &serde_json::Value) -> &serde_json::Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "http")
        .unwrap()
}

#[test]
fn a_websocket_client_gets_1001_going_away_at_the_drain_and_the_exit_follows_its_answer() {
    let Some(python) = python() else { return };
    let dir = temp_dir("client");
    let demo = Demo::start(&dir, "10s");
    let mut client = Command::new(python)
        .args(["-c", CLIENT])
        .arg(format!("ws://{}/ws/ticks?interval_ms=50", demo.http))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = client.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("READY") {
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the client ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let signalled = Instant::now();
    demo.sigterm();
    out.read_to_end(&mut seen).unwrap();
    let closed = signalled.elapsed();
    assert!(client.wait().unwrap().success());
    let text = String::from_utf8_lossy(&seen);
    let line = text.lines().last().unwrap();
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(result["code"], 1001, "{text}");
    assert_eq!(result["reason"], "going away", "{text}");
    assert_eq!(result["echoed"], true, "{text}");
    // Ticks went on through the lame-duck delay (300 ms at 50 ms: about 6 more than the 3).
    assert!(result["ticks"].as_u64().unwrap() >= 6, "{text}");
    assert!(
        closed >= Duration::from_millis(250) && closed < Duration::from_secs(3),
        "closed {closed:?} after the signal"
    );
    let (code, report) = demo.finish();
    let exited = signalled.elapsed();
    assert_eq!(code, Some(0), "{report}");
    assert!(
        exited < Duration::from_secs(3),
        "exited {exited:?} after the signal"
    );
    let http = http_service(&report);
    assert_eq!(http["work"]["aborted"], 0, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_ignores_the_close_is_cut_at_the_deadline_and_counted_aborted() {
    let dir = temp_dir("ignoring");
    let demo = Demo::start(&dir, "1s");
    let mut stream = TcpStream::connect(&demo.http).unwrap();
    stream
        .write_all(
            b"GET /ws/ticks?interval_ms=50 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The 101, then ticks: frames this client reads and never answers, a Close included.
    while got.len() < 200 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let signalled = Instant::now();
    demo.sigterm();
    let mut close_frame = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // A Close frame (opcode 8, unmasked from the server) with 1001 (0x03e9).
                close_frame |= buf[..n].windows(4).any(|w| w == [0x88, 0x0c, 0x03, 0xe9]);
            }
        }
    }
    let cut = signalled.elapsed();
    assert!(close_frame, "the Close frame came first");
    // Lame duck 0.3 s, then the drain's 1 s deadline: cut then, not before.
    assert!(
        cut >= Duration::from_millis(1200) && cut < Duration::from_secs(4),
        "cut {cut:?} after the signal"
    );
    let (code, report) = demo.finish();
    assert_eq!(code, Some(5), "deadline exceeded: {report}");
    assert_eq!(http_service(&report)["work"]["aborted"], 1, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_holds_websockets_through_a_shutdown_and_each_ends_with_1001() {
    use clap::Parser;
    let dir = temp_dir("drill");
    let http = format!("127.0.0.1:{}", free_port());
    let (ws, ready) = (
        format!("ws://{http}/ws/ticks?interval_ms=50"),
        format!("http://{http}/readyz"),
    );
    let (grpc_a, grpc_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let db = dir.join("demo.db").display().to_string();
    let cli = [
        "lameduck-drill",
        "--quiet",
        "--ready-url",
        &ready,
        "--ws",
        &ws,
        "--ws-clients",
        "6",
        "--ws-send-every",
        "100ms",
        "--signal-after",
        "700ms",
        "--",
        DEMO,
        "--http",
        &http,
        "--grpc-a",
        &grpc_a,
        "--grpc-b",
        &grpc_b,
        "--db",
        &db,
        "--lame-duck",
        "300ms",
    ];
    let report = lameduck_drill::drill(&lameduck_drill::DrillArgs::parse_from(cli))
        .await
        .unwrap();
    assert!(report.passed, "{report}");
    let sockets = &report.websockets[0];
    assert_eq!(
        (sockets.ok, sockets.failed, sockets.refused),
        (6, 0, 0),
        "{report}"
    );
    assert_eq!(sockets.close_codes.get("1001"), Some(&6), "{report}");
    assert!(sockets.messages_received > 6 * 10, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
