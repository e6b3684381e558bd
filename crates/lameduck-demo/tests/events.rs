//! Server-sent events across SIGTERM, with curl: the ticks go on through the lame-duck delay,
//! then a final `shutdown` event with a `retry:` hint arrives and the body ends cleanly (curl
//! exits 0, as it does not for a body cut off), and the demo exits promptly and cleanly.
#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::free_port;

const DEMO: &str = env!("CARGO_BIN_EXE_lameduck-demo");
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_event_stream_gets_a_last_event_and_a_clean_end_at_the_drain() {
    let Some(curl) = tools::tool("curl", "curl") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("lameduck-demo-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut demo = Command::new(DEMO)
        .args(["--http", &http])
        .args(["--grpc-a", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-b", &format!("127.0.0.1:{}", free_port())])
        .arg("--db")
        .arg(dir.join("demo.db"))
        .args(["--lame-duck", "400ms"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while !Command::new(&curl)
        .args(["-sf", &format!("http://{http}/readyz")])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(began.elapsed() < WAIT, "the demo did not get ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = Command::new(&curl)
        .args(["-sN", "--max-time", "10"])
        .arg(format!("http://{http}/events?interval_ms=50"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    let out = events.wait_with_output().unwrap();
    let ended = signalled.elapsed();
    let body = String::from_utf8_lossy(&out.stdout);
    // A clean end of the body: curl says 0 (a cut-off chunked body is its exit 18).
    assert!(out.status.success(), "curl: {:?}\n{body}", out.status);
    // Ticks before and during the lame-duck delay, then the last event, last.
    let ticks = body.matches("event: tick").count();
    assert!(ticks >= 5, "{ticks} ticks:\n{body}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("event: shutdown"), "{body}");
    assert!(last.contains("retry: 1000"), "{body}");
    assert!(
        ended >= Duration::from_millis(350) && ended < Duration::from_secs(3),
        "the stream ended {ended:?} after the signal (lame duck 400 ms)"
    );
    let began = Instant::now();
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(began.elapsed() < WAIT, "the demo did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
