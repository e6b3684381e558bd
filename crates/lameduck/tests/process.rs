//! End to end: a real child process, real signals, real sockets.
//!
//! The child is this test binary itself, re-run with `--ignored --exact child` and the scenario
//! in environment variables: `child` is not a test but the child's entry point (ignored, so a
//! normal run skips it). It serves a line protocol (`SLEEP <ms>` answers `DONE` after that
//! long), prints what it does on stdout (`LISTENING`, `READY`, `HOOK ...`, `REPORT <json>`), and
//! exits with the report's exit code.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck::{Lifecycle, Phase, StartContext};

mod support;
use support::{Proc, WAIT, accept_lines};

#[test]
#[ignore = "entry point of the child process, run by the other tests"]
fn child() {
    let env = |k: &str| std::env::var(k).ok();
    let bind = env("CHILD_BIND").unwrap_or_else(|| "127.0.0.1:0".into());
    let deadline_ms: u64 = env("CHILD_DEADLINE_MS").map_or(30_000, |v| v.parse().unwrap());
    let flush_ms: u64 = env("CHILD_FLUSH_MS").map_or(200, |v| v.parse().unwrap());
    let close_fails = env("CHILD_CLOSE_FAILS").is_some();
    let task_fails_ms: Option<u64> = env("CHILD_TASK_FAILS_MS").map(|v| v.parse().unwrap());
    let bound = Arc::new(Mutex::new(None));
    let record = Arc::clone(&bound);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async move {
        let mut lifecycle = Lifecycle::new()
            .drain_deadline(Duration::from_millis(deadline_ms))
            .service("lines", move |ctx: StartContext| async move {
                let listener = ctx.bind_tcp(bind.as_str()).await?;
                let addr = listener.local_addr()?;
                *record.lock().unwrap() = Some(addr);
                println!("LISTENING {addr}");
                let drain = ctx.drain();
                Ok(accept_lines(listener, drain))
            })
            .hook(Phase::FLUSH, "flush", move || async move {
                println!("HOOK flush start");
                tokio::time::sleep(Duration::from_millis(flush_ms)).await;
                println!("HOOK flush end");
                Ok(())
            })
            .hook(Phase::CLOSE, "close", move || async move {
                println!("HOOK close");
                if close_fails {
                    return Err("database already gone".into());
                }
                Ok(())
            });
        if let Some(ms) = task_fails_ms {
            lifecycle = lifecycle.task("worker", move |_stop| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Err("queue connection lost".into())
            });
        }
        let handle = lifecycle.handle();
        tokio::spawn(async move {
            if handle.wait_ready().await.is_ok() {
                println!("READY");
            }
        });
        lifecycle.run().await
    });
    // The port must be free when `run()` returns, not merely once the process has exited.
    if let Some(addr) = *bound.lock().unwrap() {
        match TcpListener::bind(addr) {
            Ok(_) => println!("PORT FREE"),
            Err(e) => println!("PORT BUSY {e}"),
        }
    }
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    report.exit();
}

/// Sends `SLEEP <ms>` and returns the connection, the request in flight.
fn request(addr: SocketAddr, ms: u64) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    writeln!(conn, "SLEEP {ms}").unwrap();
    conn
}

/// The server's answer: its text, or `""` when the server closed the connection (EOF or reset).
/// Panics on a timeout: a connection left hanging is not an answer.
fn read_answer(conn: &mut TcpStream) -> String {
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("no answer and no close: {e}"),
    }
}

#[test]
fn sigterm_drains_the_request_in_flight_closes_the_listener_runs_hooks_in_order() {
    let mut proc = Proc::spawn("child", &[("CHILD_FLUSH_MS", "500")]);
    let addr = proc.addr();
    let mut conn = request(addr, 1000);
    // The signal must come while the request is in the handler.
    proc.expect("REQUEST");
    proc.signal("TERM");

    assert_eq!(
        read_answer(&mut conn),
        "DONE\n",
        "in-flight request finished"
    );
    // The idle keep-alive connection is closed by the drain, not left open.
    assert_eq!(read_answer(&mut conn), "");
    proc.expect("HOOK flush start");
    // The process is still alive (flushing), and its listener is already closed.
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    let (code, report, lines) = proc.finish();
    assert_eq!(code, 0, "{report}");
    assert_eq!(lines[..3], ["HOOK flush end", "HOOK close", "PORT FREE"]);
    assert_eq!(report["trigger"]["signal"], "SIGTERM");
    let work = &report["services"][0]["work"];
    assert_eq!(work["in_flight_at_drain"], 1);
    assert_eq!(work["drained"], 1);
}

#[test]
fn sigint_and_sigquit_shut_down_gracefully_too() {
    for signal in ["INT", "QUIT"] {
        let mut proc = Proc::spawn("child", &[]);
        proc.addr();
        proc.signal(signal);
        let (code, report, lines) = proc.finish();
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["trigger"]["signal"], format!("SIG{signal}"));
        assert!(lines.contains(&"PORT FREE".to_owned()), "{lines:?}");
    }
}

#[test]
fn second_signal_forces_the_exit_with_its_own_code() {
    let mut proc = Proc::spawn("child", &[("CHILD_FLUSH_MS", "60000")]);
    proc.addr();
    proc.signal("TERM");
    proc.expect("HOOK flush start");
    let sent = Instant::now();
    proc.signal("INT");
    let (code, report, lines) = proc.finish();
    let took = sent.elapsed();
    assert_eq!(code, 7, "{report}");
    assert_eq!(report["forced"], true);
    assert_eq!(report["hooks"][0]["outcome"]["kind"], "abandoned");
    assert!(lines.contains(&"PORT FREE".to_owned()), "{lines:?}");
    // The requirement is 100 ms (docs/BENCHMARKS.md measures it); on a loaded machine, only
    // "not the 60 s hook" is certain.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn first_signal_during_a_failure_shutdown_does_not_force_it() {
    // The worker fails at once; the shutdown it starts is in its 1 s flush hook when the
    // supervisor's one SIGTERM comes. That is no reason to abandon the hooks.
    let mut proc = Proc::spawn(
        "child",
        &[("CHILD_TASK_FAILS_MS", "0"), ("CHILD_FLUSH_MS", "1000")],
    );
    proc.expect("HOOK flush start");
    proc.signal("TERM");
    let (code, report, lines) = proc.finish();
    assert_eq!(code, 4, "{report}");
    assert_eq!(report["trigger"]["task"], "worker");
    assert_eq!(lines[..2], ["HOOK flush end", "HOOK close"]);
}

#[test]
fn taken_port_fails_the_start_naming_the_address_and_the_likely_cause() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let proc = Proc::spawn("child", &[("CHILD_BIND", &addr)]);
    let (code, report, _) = proc.finish();
    assert_eq!(code, 3, "{report}");
    let error = report["trigger"]["error"].as_str().unwrap();
    assert!(error.contains("service `lines` failed to start"), "{error}");
    assert!(error.contains(&addr), "{error}");
    assert!(error.contains("another instance"), "{error}");
    assert_eq!(report["hooks"][1]["outcome"]["kind"], "completed");
}

#[test]
fn drain_deadline_aborts_the_request_closes_its_connection_and_frees_the_port() {
    let mut proc = Proc::spawn(
        "child",
        &[("CHILD_DEADLINE_MS", "300"), ("CHILD_FLUSH_MS", "2000")],
    );
    let addr = proc.addr();
    let mut conn = request(addr, 60_000);
    proc.expect("REQUEST");
    proc.signal("TERM");
    // The aborted request's connection is closed by the abort, while the process lives on (in
    // its 2 s flush hook): not by the process exiting.
    assert_eq!(read_answer(&mut conn), "");
    assert!(proc.child.try_wait().unwrap().is_none(), "already exited");
    let (code, report, lines) = proc.finish();
    assert_eq!(code, 5, "{report}");
    assert_eq!(report["deadline_exceeded"], true);
    assert_eq!(report["services"][0]["outcome"]["kind"], "aborted");
    assert_eq!(report["services"][0]["work"]["aborted"], 1);
    assert_eq!(report["hooks"][0]["outcome"]["kind"], "completed");
    assert!(lines.contains(&"PORT FREE".to_owned()), "{lines:?}");
}

#[test]
fn failing_hook_gives_its_exit_code_after_the_others_ran() {
    let mut proc = Proc::spawn(
        "child",
        &[("CHILD_CLOSE_FAILS", "1"), ("CHILD_FLUSH_MS", "0")],
    );
    proc.addr();
    proc.signal("TERM");
    let (code, report, lines) = proc.finish();
    assert_eq!(code, 6, "{report}");
    assert!(lines.contains(&"HOOK close".to_owned()), "{lines:?}");
    assert_eq!(report["hooks"][0]["outcome"]["kind"], "completed");
    assert_eq!(
        report["hooks"][1]["outcome"]["error"],
        "database already gone"
    );
}
