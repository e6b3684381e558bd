//! The seed's worked example as a real process: an axum app under [`HttpServer`], a slow
//! request, and real SIGINTs (see `examples/http.rs` for the full-size version).
#![cfg(all(unix, feature = "http"))]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use lameduck::Lifecycle;
use lameduck::http::HttpServer;

mod support;
use support::{Proc, WAIT};

#[test]
#[ignore = "entry point of the child process, run by the other tests"]
fn http_child() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async {
        let app = Router::new().route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                println!("REQUEST {ms}");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms\n")
            }),
        );
        let lifecycle = Lifecycle::new().service("web", HttpServer::bind("127.0.0.1:0", app));
        let handle = lifecycle.handle();
        tokio::spawn(async move {
            if handle.wait_ready().await.is_ok() {
                println!("LISTENING {}", handle.addresses("web")[0]);
                println!("READY");
            }
            let _ = handle
                .subscribe()
                .wait_for(|s| *s == lameduck::State::Draining)
                .await;
            println!("SHUTTING DOWN");
        });
        lifecycle.run().await
    });
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    report.exit();
}

/// Sends `GET /sleep/<ms>` on a thread; the thread returns the whole answer (until the server
/// closes the connection) and when it ended.
fn slow_request(addr: SocketAddr, ms: u64) -> thread::JoinHandle<(String, Instant)> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(conn, "GET /sleep/{ms} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        (
            String::from_utf8_lossy(&answer).into_owned(),
            Instant::now(),
        )
    })
}

#[test]
fn sigint_mid_request_exits_right_after_the_response() {
    let mut proc = Proc::spawn("http_child", &[]);
    let addr = proc.addr();
    let request = slow_request(addr, 1500);
    proc.expect("REQUEST");
    proc.signal("INT");

    let (answer, answered_at) = request.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("slept 1500 ms\n"), "{answer}");
    let (code, report, _) = proc.finish();
    let exit_lag = answered_at.elapsed();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["services"][0]["requests"]["drained"], 1, "{report}");
    // Generous: the exit is event-driven (about a millisecond); this only rules out a poll or a
    // wait for the deadline.
    assert!(
        exit_lag < Duration::from_secs(3),
        "exit {exit_lag:?} after the response"
    );
    assert!(
        TcpListener::bind(addr).is_ok(),
        "a restart can bind {addr} at once"
    );
}

#[test]
fn second_sigint_exits_at_once_with_the_forced_code() {
    let mut proc = Proc::spawn("http_child", &[]);
    let addr = proc.addr();
    let request = slow_request(addr, 60_000);
    proc.expect("REQUEST");
    proc.signal("INT");
    proc.expect("SHUTTING DOWN");
    let sent = Instant::now();
    proc.signal("INT");
    let (code, report, _) = proc.finish();
    assert_eq!(code, 7, "{report}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "forced, not waiting for the 60 s request"
    );
    let (answer, _) = request.join().unwrap();
    assert!(answer.is_empty(), "the request was cut off: {answer:?}");
}
