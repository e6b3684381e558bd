//! Listeners from outside and the service manager, end to end: the child is started by
//! systemd's own `systemd-socket-activate` (or by a shell that sets the variables by hand, for
//! the bad cases), and tells a `NOTIFY_SOCKET` that the test binds what it does.
//!
//! The child is this test binary, re-run with `--ignored --exact activated` (see `support`). Its
//! service `lines` takes its listener through `StartContext::listen_tcp` and serves `SLEEP <ms>`
//! lines (see `support::serve_lines`); `web` (with `CHILD_WEB`) is an `HttpServer`; `slow` (with `CHILD_SLOW_START_MS`)
//! takes that long to start.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lameduck::http::HttpServer;
use lameduck::{Lifecycle, service_fn};

mod support;
use support::notify::{Notify, value};
use support::tools::socket_activate;
use support::{Proc, WAIT, accept_lines, child_args};

#[test]
#[ignore = "entry point of the child process, run by the other tests"]
fn activated() {
    let env = |k: &str| std::env::var(k).ok();
    let bind = env("CHILD_BIND").unwrap_or_else(|| "127.0.0.1:0".into());
    let twice = env("CHILD_TWICE").is_some();
    let web = env("CHILD_WEB");
    let slow_ms: Option<u64> = env("CHILD_SLOW_START_MS").map(|v| v.parse().unwrap());
    let lame_duck_ms: u64 = env("CHILD_LAME_DUCK_MS").map_or(0, |v| v.parse().unwrap());
    let inherit = env("CHILD_NO_INHERIT").is_none();

    println!("STARTING");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async move {
        let mut lifecycle = Lifecycle::new()
            .drain_deadline(Duration::from_secs(5))
            .lame_duck_delay(Duration::from_millis(lame_duck_ms))
            .inherit_listeners(inherit)
            .service(
                "lines",
                service_fn(move |ctx| async move {
                    let listener = ctx.listen_tcp(bind.as_str()).await?;
                    if twice {
                        ctx.listen_tcp(bind.as_str()).await?;
                    }
                    println!("LISTENING {}", listener.local_addr()?);
                    let drain = ctx.drain();
                    Ok(accept_lines(listener, drain))
                }),
            );
        if let Some(web) = web {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "web\n" }));
            lifecycle = lifecycle.service("web", HttpServer::bind(web, app));
        }
        if let Some(ms) = slow_ms {
            lifecycle = lifecycle.service(
                "slow",
                service_fn(move |ctx| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    println!("SLOW STARTED {}", unix_micros(SystemTime::now()));
                    let drain = ctx.drain();
                    Ok(async move {
                        drain.draining().await;
                        Ok(())
                    })
                }),
            );
        }
        let handle = lifecycle.handle();
        tokio::spawn(async move {
            if handle.wait_ready().await.is_ok() {
                let var = |k| std::env::var(k).ok();
                println!(
                    "ENV LISTEN_PID={:?} LISTEN_FDS={:?} LISTEN_FDNAMES={:?}",
                    var("LISTEN_PID"),
                    var("LISTEN_FDS"),
                    var("LISTEN_FDNAMES")
                );
                println!("READY");
            }
        });
        lifecycle.run().await
    });
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    report.exit();
}

fn unix_micros(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros()
}

/// Ports free right now (systemd-socket-activate cannot bind port 0).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Connects once `addr` listens (the launcher binds it after it starts).
fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let began = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(conn) => {
                conn.set_read_timeout(Some(WAIT)).unwrap();
                return conn;
            }
            Err(e) if began.elapsed() < WAIT => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{addr} never listened: {e}"),
        }
    }
}

fn get(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        conn,
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn socket_activation_serves_the_first_connection_on_named_sockets_and_speaks_sd_notify() {
    let Some(activate) = socket_activate() else {
        return;
    };
    // The flags point at a port this test holds: binding it instead of inheriting would fail.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let ports: [u16; 4] = free_ports();
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let mut notify = Notify::bind_abstract();

    let mut cmd = Command::new(activate);
    for port in ports {
        cmd.arg("-l").arg(format!("127.0.0.1:{port}"));
    }
    cmd.arg("--fdname=lines:web:web:extra");
    for var in [
        format!("CHILD_BIND={held}"),
        format!("CHILD_WEB={held}"),
        "CHILD_SLOW_START_MS=300".to_owned(),
        "CHILD_LAME_DUCK_MS=1000".to_owned(),
        format!("NOTIFY_SOCKET={}", notify.address),
        "WATCHDOG_USEC=300000".to_owned(),
        "RUST_LOG=info".to_owned(),
    ] {
        cmd.arg("-E").arg(var);
    }
    cmd.arg("--").args(child_args("activated"));
    let mut proc = Proc::spawn_command(cmd);

    // This connection is what makes the launcher start the service: it must be served.
    let mut first = connect_when_listening(addr(0));
    first.write_all(b"SLEEP 1\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&first).read_line(&mut answer).unwrap();
    assert_eq!(answer, "DONE\n");

    let slow_started: u128 = proc.expect("SLOW STARTED").parse().unwrap();
    let env = proc.expect("ENV");
    assert_eq!(
        env, "LISTEN_PID=None LISTEN_FDS=None LISTEN_FDNAMES=None",
        "the variables are removed once read"
    );
    proc.expect("READY");
    let (ready_at, ready_wall, ready) = notify.expect("READY=1");
    assert!(
        unix_micros(ready_wall) >= slow_started,
        "READY=1 came before every service had started"
    );
    let status = value(&ready, "STATUS").expect("a STATUS with READY=1");
    for (i, fd, name) in [(0, 3, "lines"), (1, 4, "web"), (2, 5, "web")] {
        let shown = format!("{} (inherited fd {fd} \"{name}\")", addr(i));
        assert!(status.contains(&shown), "{shown} missing from {status}");
    }

    // Both sockets passed as `web` serve the HttpServer; the unclaimed one was closed.
    for i in [1, 2] {
        let response = get(addr(i));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("web\n"), "{response}");
    }
    let refused = TcpStream::connect(addr(3)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // Let the watchdog ping a while, then stop.
    std::thread::sleep(Duration::from_millis(1200));
    proc.signal("TERM");
    let (stopping_at, _, stopping) = notify.expect("STOPPING=1");
    // At the shutdown's first moment, not after the lame-duck delay: the port still serves.
    let mut during = TcpStream::connect(addr(0)).expect("serving through the lame-duck delay");
    during.set_read_timeout(Some(WAIT)).unwrap();
    during.write_all(b"SLEEP 1\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&during).read_line(&mut answer).unwrap();
    assert_eq!(answer, "DONE\n");
    // The lame-duck delay (1 s) and the drain's bound (5 s + 0.1 s + 1 s), plus 2 s.
    assert_eq!(
        value(&stopping, "EXTEND_TIMEOUT_USEC"),
        Some("9100000"),
        "{stopping}"
    );
    let (_, _, draining) = notify.expect("STATUS=draining");
    assert_eq!(
        value(&draining, "EXTEND_TIMEOUT_USEC"),
        Some("8100000"),
        "{draining}"
    );
    notify.expect("STATUS=stopped");
    let (code, report, _) = proc.finish();
    assert_eq!(code, 0, "{report}");

    let pings: Vec<Instant> = notify
        .pings()
        .into_iter()
        .filter(|at| *at >= ready_at && *at <= stopping_at)
        .collect();
    assert!(pings.len() >= 4, "{} pings in 1.2 s", pings.len());
    drop(during);
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(75) && median <= Duration::from_millis(225),
        "WATCHDOG_USEC=300000 must ping every 150 ms; median gap {median:?}"
    );

    let services = report["services"].as_array().unwrap();
    assert_eq!(
        services[0]["addresses"][0]["origin"],
        serde_json::json!({ "kind": "inherited", "fd": 3, "name": "lines" })
    );
    let web: Vec<i64> = services[1]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["origin"]["fd"].as_i64().unwrap())
        .collect();
    assert_eq!(web, [4, 5]);
}

#[test]
fn without_passed_sockets_the_address_is_bound_and_the_report_says_so() {
    let mut proc = Proc::spawn("activated", &[]);
    let addr: SocketAddr = proc.expect("LISTENING").parse().unwrap();
    proc.expect("READY");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"SLEEP 1\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer).unwrap();
    assert_eq!(answer, "DONE\n");
    proc.signal("TERM");
    let (code, report, _) = proc.finish();
    assert_eq!(code, 0);
    assert_eq!(
        report["services"][0]["addresses"][0]["origin"],
        serde_json::json!({ "kind": "bound" })
    );
}

/// Starts the child under `sh -c script` (which sets the variables and `exec`s it, keeping
/// the PID).
fn under_shell(script: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{script}; exec \"$0\" \"$@\""))
        .args(child_args("activated"))
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn_command(cmd)
}

/// As [`under_shell`], to the exit: its exit code, report and stdout.
fn run_under_shell(script: &str, env: &[(&str, &str)]) -> (i32, serde_json::Value, Vec<String>) {
    under_shell(script, env).finish()
}

/// As [`under_shell`], for a child that starts: its `ENV` line, then (after SIGTERM) its exit
/// code and report.
fn serve_under_shell(script: &str, env: &[(&str, &str)]) -> (String, i32, serde_json::Value) {
    let mut proc = under_shell(script, env);
    let vars = proc.expect("ENV");
    proc.expect("READY");
    proc.signal("TERM");
    let (code, report, _) = proc.finish();
    (vars, code, report)
}

/// The start failed: exit code 3, the trigger names `service` and says each of `needles`, and
/// the service never got a listener (it prints `LISTENING` once it has one).
fn assert_start_failed(
    (code, report, lines): &(i32, serde_json::Value, Vec<String>),
    service: &str,
    needles: &[&str],
) {
    assert_eq!(*code, 3, "{report}");
    let trigger = &report["trigger"];
    assert_eq!(trigger["kind"], "start_failed", "{report}");
    assert_eq!(trigger["service"], service, "{report}");
    let error = trigger["error"].as_str().unwrap();
    for needle in needles {
        assert!(error.contains(needle), "`{needle}` missing from: {error}");
    }
    assert!(
        !lines.iter().any(|l| l.contains("LISTENING")),
        "nothing may listen after a failed start: {lines:?}"
    );
    assert!(
        report["services"][0]["addresses"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{report}"
    );
    assert!(report["ready_after"].is_null(), "{report}");
}

#[test]
fn bad_variables_and_descriptors_fail_the_start_naming_the_culprit() {
    // Set by hand, `$$` being the shell's PID, which `exec` keeps.
    let unparsable = run_under_shell("export LISTEN_PID=$$ LISTEN_FDS=abc", &[]);
    assert_start_failed(&unparsable, "socket activation", &["LISTEN_FDS=`abc`"]);

    let miscounted = run_under_shell(
        "exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=lines:extra",
        &[],
    );
    assert_start_failed(
        &miscounted,
        "socket activation",
        &["LISTEN_FDNAMES=`lines:extra` names 2 descriptors, but LISTEN_FDS=1"],
    );

    // More descriptors than were passed: the runtime's own take the lowest free numbers, and
    // past them one is not open. (Nothing is closed on the way: the runtime must survive.)
    let closed = run_under_shell("exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=100", &[]);
    assert_start_failed(
        &closed,
        "socket activation",
        &["(`unknown`), but it is not open"],
    );

    let file = run_under_shell(
        "exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=lines",
        &[],
    );
    assert_start_failed(
        &file,
        "lines",
        &[
            "service `lines`",
            "inherited fd 3 (`lines`) is not a socket",
        ],
    );

    // Turned off, the variables are left alone and the address is bound.
    let (vars, code, report) = serve_under_shell(
        "exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1",
        &[("CHILD_NO_INHERIT", "1")],
    );
    assert!(vars.contains("LISTEN_FDS=Some(\"1\")"), "{vars}");
    assert_eq!(code, 0, "{report}");
    let origin = &report["services"][0]["addresses"][0]["origin"];
    assert_eq!(origin["kind"], "bound", "{report}");

    // Variables for another process are not ours to use: the address is bound as usual.
    let (vars, code, report) =
        serve_under_shell("exec 3</dev/null; export LISTEN_PID=1 LISTEN_FDS=1", &[]);
    assert_eq!(vars, "LISTEN_PID=None LISTEN_FDS=None LISTEN_FDNAMES=None");
    assert_eq!(code, 0, "{report}");
    let origin = &report["services"][0]["addresses"][0]["origin"];
    assert_eq!(origin["kind"], "bound", "{report}");
}

#[test]
fn a_udp_socket_or_a_socket_asked_for_twice_fails_the_start_naming_the_service_and_the_fd() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let [port] = free_ports();
    let udp = {
        let mut cmd = Command::new(&activate);
        cmd.args([
            "--datagram",
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=lines",
        ])
        .args(["-E", "RUST_LOG=info", "--"])
        .args(child_args("activated"));
        let mut proc = Proc::spawn_command(cmd);
        // A datagram is what starts a datagram socket's service: send until it has started.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let began = Instant::now();
        while proc
            .try_expect("STARTING", Duration::from_millis(100))
            .is_err()
        {
            assert!(
                began.elapsed() < WAIT,
                "the launcher never started the service"
            );
            sender.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        }
        proc.finish()
    };
    assert_start_failed(
        &udp,
        "lines",
        &[
            "service `lines`",
            "inherited fd 3 (`lines`) is a UDP socket",
        ],
    );

    let [port] = free_ports();
    let twice = {
        let mut cmd = Command::new(&activate);
        cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=lines"])
            .args(["-E", "RUST_LOG=info", "-E", "CHILD_TWICE=1", "--"])
            .args(child_args("activated"));
        let proc = Proc::spawn_command(cmd);
        let _trigger = connect_when_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        proc.finish()
    };
    assert_eq!(twice.0, 3);
    let error = twice.1["trigger"]["error"].as_str().unwrap();
    assert!(
        error.contains("inherited fd 3 (`lines`) was already taken by service `lines`"),
        "{error}"
    );
}

#[test]
fn a_failed_start_tells_the_service_manager_why_with_the_errno() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut notify = Notify::bind_path();
    let mut proc = Proc::spawn(
        "activated",
        &[("CHILD_BIND", &taken), ("NOTIFY_SOCKET", &notify.address)],
    );
    let (_, _, failed) = notify.expect("STATUS=failed to start");
    let status = value(&failed, "STATUS").unwrap();
    assert!(status.contains(&taken), "{status}");
    assert!(status.contains("service `lines`"), "{status}");
    assert_eq!(value(&failed, "ERRNO"), Some("98"), "EADDRINUSE: {failed}");
    assert!(
        !notify.texts().iter().any(|t| t.contains("READY=1")),
        "{:?}",
        notify.texts()
    );
    let report = proc.expect("REPORT");
    assert_eq!(
        support::wait_exit(&mut proc.child, WAIT).code(),
        Some(3),
        "{report}"
    );
}

#[test]
fn of_several_sockets_under_one_name_listen_tcp_takes_the_one_on_its_address() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let [first, second] = free_ports();
    let wanted = format!("127.0.0.1:{second}");
    let mut cmd = Command::new(&activate);
    cmd.args(["-l", &format!("127.0.0.1:{first}"), "-l", &wanted])
        .arg("--fdname=lines:lines")
        .args([
            "-E",
            "RUST_LOG=info",
            "-E",
            &format!("CHILD_BIND={wanted}"),
            "--",
        ])
        .args(child_args("activated"));
    let mut proc = Proc::spawn_command(cmd);
    let _trigger = connect_when_listening(SocketAddr::from(([127, 0, 0, 1], first)));
    assert_eq!(
        proc.expect("LISTENING"),
        wanted,
        "the socket on the address asked for"
    );
    proc.expect("READY");
    proc.signal("TERM");
    let (code, report, _) = proc.finish();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["services"][0]["addresses"][0]["origin"]["fd"], 4);
}
