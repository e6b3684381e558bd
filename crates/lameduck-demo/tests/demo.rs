//! End to end: the `lameduck-demo` binary as a real process, real signals, real HTTP and gRPC
//! clients, and the SQLite file it leaves behind.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lameduck_demo::proto::store_client::StoreClient;
use lameduck_demo::proto::{GetRequest, PutRequest};
use serde_json::Value;

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::{alive, socket_activate, tool};

/// Generous: the machines are shared and noisy.
const WAIT: Duration = Duration::from_secs(30);

/// A running demo: its stderr (JSON log lines) as they come, and its exit.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

/// The three servers' addresses, from the ready line.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    http: SocketAddr,
    grpc_a: SocketAddr,
    grpc_b: SocketAddr,
}

impl Demo {
    fn start(db: &Path, extra: &[&str]) -> Demo {
        Self::start_on(db, ["127.0.0.1:0"; 3], extra)
    }

    fn start_on(db: &Path, addrs: [&str; 3], extra: &[&str]) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lameduck-demo"));
        cmd.args(demo_args(db, addrs, extra))
            .env("RUST_LOG", "info,lameduck_demo=debug");
        Self::spawn(cmd)
    }

    /// Runs `cmd` (the demo, or a launcher of it), reading its stderr.
    fn spawn(mut cmd: Command) -> Demo {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        thread::spawn(move || {
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

    /// Waits for a log line whose message contains `text`; returns it parsed.
    fn expect(&mut self, text: &str) -> Value {
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no `{text}` log line; saw:\n{}", self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"].as_str().is_some_and(|m| m.contains(text)) {
                return event;
            }
        }
    }

    fn ready(&mut self) -> Addrs {
        let ready = self.expect("serving: all servers ready");
        let addr = |k: &str| ready[k].as_str().unwrap().parse().unwrap();
        Addrs {
            http: addr("http"),
            grpc_a: addr("grpc_a"),
            grpc_b: addr("grpc_b"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit code, and everything logged.
    fn wait(mut self) -> (i32, String) {
        let until = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "the demo did not exit");
            thread::sleep(Duration::from_millis(5));
        };
        // The reader thread ends at EOF; take what is left.
        let rest: Vec<String> = self.lines.iter().collect();
        self.seen.extend(rest);
        (
            status.code().expect("exited, not killed"),
            self.seen.join("\n"),
        )
    }
}

impl Demo {
    /// Waits (bounded) for the demo's exit, leaving its log to read: an upgrade's new process
    /// still holds the pipe.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(began.elapsed() < WAIT, "the demo did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Stops an upgrade's new process (not the test's child, so not waited for), bounded.
async fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let began = Instant::now();
    while alive(pid) && began.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(pid), "PID {pid} still runs");
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo's command line: its three addresses, JSON logs, the database, and `extra`.
fn demo_args(db: &Path, [http, a, b]: [&str; 3], extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "--http",
        http,
        "--grpc-a",
        a,
        "--grpc-b",
        b,
        "--log-format",
        "json",
        "--db",
    ]
    .map(Into::into)
    .to_vec();
    args.push(db.into());
    args.extend(extra.iter().map(Into::into));
    args
}

/// grpc.health.v1's answer for the whole server (1 = SERVING).
async fn grpc_health(addr: SocketAddr) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-demo-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http(addr: SocketAddr) -> std::io::Result<Sender> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// One request on a keep-alive connection: status and body, or the error.
async fn request(
    send: &mut Sender,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), hyper::Error> {
    send.ready().await?;
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://demo{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = send.send_request(req).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn grpc_store(addr: SocketAddr) -> StoreClient<tonic::transport::Channel> {
    StoreClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_every_server_accepts_then_a_clean_sigterm() {
    let db = temp_db("ready");
    let mut demo = Demo::start(&db, &[]);
    let addrs = demo.ready();
    for addr in [addrs.http, addrs.grpc_a, addrs.grpc_b] {
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr} accepts at ready: {e}"));
    }
    let mut send = http(addrs.http).await.unwrap();
    assert_eq!(
        request(&mut send, "GET", "/readyz", "").await.unwrap().0,
        200
    );
    assert_eq!(request(&mut send, "GET", "/fast", "").await.unwrap().0, 200);
    for addr in [addrs.grpc_a, addrs.grpc_b] {
        assert_eq!(grpc_health(addr).await, 1, "SERVING on {addr}");
    }
    demo.signal("TERM");
    let (code, log) = demo.wait();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("database closed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_cleanly_naming_it_and_frees_the_others() {
    let free = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (http_addr, a_addr) = (free(), free());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let b_addr = taken.local_addr().unwrap();
    let db = temp_db("taken");
    let report = db.with_extension("report.json");
    let demo = Demo::start_on(
        &db,
        [
            &http_addr.to_string(),
            &a_addr.to_string(),
            &b_addr.to_string(),
        ],
        &["--report-json", report.to_str().unwrap()],
    );
    let (code, log) = demo.wait();
    assert_eq!(code, 3, "{log}");
    assert!(
        log.contains(&b_addr.to_string()),
        "names the address: {log}"
    );
    assert!(log.contains("already in use"), "and the cause: {log}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["trigger"]["service"], "grpc-b", "{report}");
    for addr in [http_addr, a_addr] {
        assert!(TcpListener::bind(addr).is_ok(), "{addr} was released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_a_slow_request_completes_across_sigint() {
    let db = temp_db("seed");
    let mut demo = Demo::start(&db, &[]);
    let addrs = demo.ready();
    let mut send = http(addrs.http).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut send, "GET", "/slow?ms=1500", "").await });
    demo.expect("slow request started");
    demo.signal("INT");
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200);
    let timing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(timing["requested_ms"], 1500);
    let (code, log) = demo.wait();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("requests_drained\":1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once_with_the_forced_code() {
    let db = temp_db("forced");
    let mut demo = Demo::start(&db, &[]);
    let addrs = demo.ready();
    let mut send = http(addrs.http).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut send, "GET", "/slow?ms=60000", "").await });
    demo.expect("slow request started");
    demo.signal("INT");
    demo.expect("shutting down");
    let sent = Instant::now();
    demo.signal("INT");
    let (code, log) = demo.wait();
    assert_eq!(code, 7, "{log}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "at once, not after the request"
    );
    assert!(slow.await.unwrap().is_err(), "the request was cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_a_usage_error_and_starts_nothing() {
    let db = temp_db("usage");
    let demo = Demo::start(&db, &["--drain-timeout", "soon"]);
    let (code, log) = demo.wait();
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("`soon` is not a duration"), "{log}");
    assert!(!db.exists(), "nothing started: no database created");
}

/// Writes `key -> value` pairs over one keep-alive HTTP connection until the service stops
/// taking them; returns those acknowledged (200).
/// PUTs `http-<writer>-<i>` = `v<i>` on a keep-alive connection, reconnecting when the server
/// closes it, until 5000 are done, a connection is refused, or `stop`; returns what was
/// acknowledged (200).
async fn http_writer(
    addr: SocketAddr,
    writer: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    let Ok(mut send) = http(addr).await else {
        return acked;
    };
    for i in 0..5000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, value) = (format!("http-{writer}-{i}"), format!("v{i}"));
        match request(&mut send, "PUT", &format!("/kv/{key}"), &value).await {
            Ok((200, _)) => acked.push((key, value)),
            // Closed after the drain began (no new connection is accepted): stop.
            _ => match http(addr).await {
                Ok(again) => send = again,
                Err(_) => break,
            },
        }
    }
    acked
}

async fn grpc_writer(addr: SocketAddr, writer: usize) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    let mut client = grpc_store(addr).await;
    for i in 0..5000 {
        let (key, value) = (format!("grpc-{writer}-{i}"), format!("v{i}"));
        let put = PutRequest {
            key: key.clone(),
            value: value.clone(),
        };
        match client.put(put).await {
            Ok(_) => acked.push((key, value)),
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigterm_under_load_and_a_restart_serves_it() {
    let db = temp_db("load");
    // A long flush interval: most writes reach SQLite only through the final flush hook.
    let mut demo = Demo::start(&db, &["--flush-interval", "10s"]);
    let addrs = demo.ready();
    let mut writers = Vec::new();
    for w in 0..4 {
        writers.push(tokio::spawn(http_writer(addrs.http, w, Arc::default())));
        writers.push(tokio::spawn(grpc_writer(addrs.grpc_b, w)));
    }
    // Mid-load: once writes have been acknowledged on both APIs.
    let mut probe = http(addrs.http).await.unwrap();
    let began = Instant::now();
    loop {
        let (_, body) = request(&mut probe, "GET", "/kv/grpc-0-20", "")
            .await
            .unwrap();
        let (_, body2) = request(&mut probe, "GET", "/kv/http-0-20", "")
            .await
            .unwrap();
        if body == "v20" && body2 == "v20" {
            break;
        }
        assert!(began.elapsed() < WAIT, "no writes acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(probe);
    demo.signal("TERM");
    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    let (code, log) = demo.wait();
    assert_eq!(code, 0, "{log}");
    assert!(acked.len() > 40, "only {} writes acknowledged", acked.len());
    let partial = acked.len() < 8 * 5000;
    assert!(partial, "the signal landed mid-load");

    // Every acknowledged write is in the database file.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stored = BTreeMap::new();
    let mut query = conn.prepare("SELECT key, value FROM kv").unwrap();
    let rows = query
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .unwrap();
    for row in rows {
        let (k, v) = row.unwrap();
        stored.insert(k, v);
    }
    drop(query);
    drop(conn);
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v)| stored.get(*k) != Some(*v))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not stored: {lost:?} (of {})",
        acked.len()
    );

    // A restart binds the same ports at once and serves the writes.
    let ports = [addrs.http, addrs.grpc_a, addrs.grpc_b].map(|a| a.to_string());
    let mut again = Demo::start_on(&db, [&ports[0], &ports[1], &ports[2]], &[]);
    let same = again.ready();
    assert_eq!(same.http, addrs.http);
    let mut send = http(same.http).await.unwrap();
    let mut client = grpc_store(same.grpc_b).await;
    for (key, value) in acked.iter().step_by(97) {
        let (status, body) = request(&mut send, "GET", &format!("/kv/{key}"), "")
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (200, value.as_str()), "{key}");
        let got = client
            .get(GetRequest { key: key.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.value, value);
    }
    again.signal("TERM");
    assert_eq!(again.wait().0, 0);
}

/// The drill (`lameduck-drill`) against the demo: HTTP/1.1 and HTTP/2 load across SIGTERM,
/// then a restart on the same ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_passes_against_the_demo() {
    use clap::Parser;

    // A stop then a restart, and (on Linux) an upgrade in place, where a refused request fails
    // the drill too; each over HTTP/1.1 and h2c.
    let upgrades: &[bool] = if cfg!(target_os = "linux") {
        &[false, true]
    } else {
        &[false]
    };
    for &upgrade in upgrades {
        for http2 in [false, true] {
            let ports: Vec<String> = (0..3)
                .map(|_| {
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap().to_string()
                })
                .collect();
            let name = format!(
                "drill-{}-{}",
                if upgrade { "up" } else { "stop" },
                u8::from(http2)
            );
            let db = temp_db(&name);
            let pid_file = db.with_extension("pid");
            let http = &ports[0];
            let mut args = vec![
                "lameduck-drill".to_owned(),
                "--quiet".into(),
                "--ready-url".into(),
                format!("http://{http}/readyz"),
                "--url".into(),
                format!("http://{http}/slow?ms=150"),
                "--url".into(),
                format!("http://{http}/fast"),
                "--signal-after".into(),
                "500ms".into(),
            ];
            if upgrade {
                args.extend([
                    "--upgrade".into(),
                    "--pid-file".into(),
                    pid_file.display().to_string(),
                ]);
                args.extend(["--after-upgrade".into(), "300ms".into()]);
            } else {
                args.push("--restart".into());
            }
            if http2 {
                args.push("--http2".into());
            }
            args.extend([
                "--".into(),
                env!("CARGO_BIN_EXE_lameduck-demo").into(),
                "--http".into(),
                ports[0].clone(),
                "--grpc-a".into(),
                ports[1].clone(),
                "--grpc-b".into(),
                ports[2].clone(),
                "--db".into(),
                db.display().to_string(),
                "--pid-file".into(),
                pid_file.display().to_string(),
            ]);
            let args = lameduck_drill::DrillArgs::parse_from(args);
            let report = lameduck_drill::drill(&args).await.unwrap();
            let mode = format!("upgrade={upgrade} http2={http2}");
            assert!(report.passed, "{mode}\n{report}");
            assert!(report.in_flight_at_signal > 0, "{mode}\n{report}");
            assert_eq!(
                report.in_flight_at_signal, report.in_flight_at_signal_completed,
                "{mode}"
            );
            if upgrade {
                assert_eq!(report.requests.refused, 0, "{mode}\n{report}");
                let handover = report.upgrade.as_ref().unwrap();
                assert!(handover.new_pid.is_some(), "{mode}\n{report}");
                assert_eq!(handover.new_exit_code, Some(0), "{mode}\n{report}");
            }
        }
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_socket_activation_the_demo_serves_three_named_sockets_and_notifies_systemd() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

    let Some(activate) = socket_activate() else {
        return;
    };
    // The flags point at ports this test holds: binding them instead would fail the start.
    let held: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let held: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let ports: Vec<u16> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let [http_addr, a_addr, b_addr] =
        [0, 1, 2].map(|i| SocketAddr::from(([127, 0, 0, 1], ports[i])));

    let name = format!("lameduck-demo-test-{}", std::process::id());
    let notify = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let (tx, messages) = channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends after the demo's last message, or a timeout.
        while let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let last = text.starts_with("STATUS=stopped");
            if tx.send((Instant::now(), text)).is_err() || last {
                return;
            }
        }
    });

    let db = temp_db("activated");
    let mut cmd = Command::new(activate);
    for port in &ports {
        cmd.arg("-l").arg(format!("127.0.0.1:{port}"));
    }
    cmd.arg("--fdname=http:grpc-a:grpc-b")
        .args(["-E", &format!("NOTIFY_SOCKET=@{name}")])
        .args(["-E", "WATCHDOG_USEC=300000", "-E", "RUST_LOG=info"])
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_lameduck-demo"))
        .args(demo_args(&db, [&held[0], &held[1], &held[2]], &[]));
    let mut demo = Demo::spawn(cmd);

    // The request that makes the launcher start the demo: queued in the kernel meanwhile, then
    // served, not refused.
    let began = Instant::now();
    let mut send = loop {
        match http(http_addr).await {
            Ok(send) => break send,
            Err(e) if began.elapsed() < WAIT => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the launcher never listened: {e}"),
        }
    };
    assert_eq!(
        request(&mut send, "GET", "/readyz", "").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    let addrs = demo.ready();
    assert_eq!(
        (addrs.http, addrs.grpc_a, addrs.grpc_b),
        (http_addr, a_addr, b_addr)
    );
    for addr in [a_addr, b_addr] {
        assert_eq!(grpc_health(addr).await, 1, "SERVING on {addr}");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    demo.signal("TERM");
    let (code, log) = demo.wait();
    assert_eq!(code, 0, "{log}");

    let messages: Vec<(Instant, String)> = messages.iter().collect();
    let first = |key: &str| {
        messages
            .iter()
            .position(|(_, m)| m.lines().any(|l| l == key))
            .unwrap_or_else(|| panic!("no {key}: {messages:?}"))
    };
    let (ready, stopping) = (first("READY=1"), first("STOPPING=1"));
    assert!(ready < stopping, "{messages:?}");
    for (addr, fd, name) in [
        (http_addr, 3, "http"),
        (a_addr, 4, "grpc-a"),
        (b_addr, 5, "grpc-b"),
    ] {
        let shown = format!("{addr} (inherited fd {fd} \"{name}\")");
        assert!(
            messages[ready].1.contains(&shown),
            "{shown}: {}",
            messages[ready].1
        );
    }
    let pings: Vec<Instant> = messages[ready..stopping]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1\n")
        .map(|(at, _)| *at)
        .collect();
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    assert!(gaps.len() >= 3, "{messages:?}");
    let median = gaps[gaps.len() / 2];
    assert!(
        median <= Duration::from_millis(200) && median >= Duration::from_millis(75),
        "with WATCHDOG_USEC=300000 a ping every 150 ms; median gap {median:?}"
    );
}

/// The units users copy (`deploy/systemd/`) are ones systemd accepts: `systemd-analyze verify`,
/// with `ExecStart=` pointed at the binary just built, reports nothing at all.
#[test]
fn the_systemd_units_in_deploy_verify() {
    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let dir = std::env::temp_dir().join(format!("lameduck-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            "/usr/local/bin/lameduck-demo",
            env!("CARGO_BIN_EXE_lameduck-demo"),
        );
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 4, "a service and three sockets");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_acknowledged_across_an_upgrade_is_stored_and_served_by_the_new_process() {
    let db = temp_db("upgrade");
    let pid_file = db.with_extension("pid");
    // A long flush interval: without the switch to writing through, the new process could not
    // read what the old one acknowledged until the old one's final flush.
    let mut demo = Demo::start(
        &db,
        &[
            "--flush-interval",
            "10s",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let addrs = demo.ready();
    let old_pid = demo.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(http_writer(addrs.http, w, Arc::clone(&stop))))
        .collect();
    // Holds the old process's drain open, and so its final flush off, for 3 s.
    let mut slow_conn = http(addrs.http).await.unwrap();
    let slow = tokio::spawn(async move {
        request(&mut slow_conn, "GET", "/slow?ms=3000", "")
            .await
            .map(|(status, _)| status)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    demo.signal("HUP");
    let began = Instant::now();
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    while read_pid() == Some(old_pid) && began.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new_pid = read_pid().unwrap();
    assert_ne!(new_pid, old_pid);
    // Let the old process close its listener (its drain's first step), and the writers reach
    // the new one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 40, "only {} writes acknowledged", acked.len());
    assert!(
        demo.child.try_wait().unwrap().is_none(),
        "the old process is still draining (its final flush still to come)"
    );

    // While both run, the new process serves every write either acknowledged.
    let mut send = http(addrs.http).await.unwrap();
    for (key, value) in &acked {
        let (status, body) = request(&mut send, "GET", &format!("/kv/{key}"), "")
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (200, value.as_str()), "{key}");
    }
    drop(send);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the old process finished its request"
    );
    assert_eq!(demo.exited().await.code(), Some(0), "the old process");
    terminate(new_pid).await;
    let (_, log) = demo.wait();
    assert!(log.contains("upgrade: writing through"), "{log}");

    // And once both have exited, all of it is in the database.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut query = conn.prepare("SELECT value FROM kv WHERE key = ?1").unwrap();
    for (key, value) in &acked {
        let stored: String = query.query_row([key], |row| row.get(0)).unwrap();
        assert_eq!(&stored, value, "{key}");
    }
}

/// Whether the call's stream was above the last one the server's GOAWAY said it processed
/// (RFC 9113 §6.8: not processed, safe to send again; gRPC clients retry it transparently).
/// tonic reports it as INTERNAL with h2's `GoAway(NO_ERROR, Remote)` behind it.
fn above_goaway(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        cause = error.source();
    }
    false
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_across_an_upgrade_all_succeed_and_the_new_process_serves_their_writes() {
    let db = temp_db("upgrade-grpc");
    let pid_file = db.with_extension("pid");
    let mut demo = Demo::start(&db, &["--pid-file", pid_file.to_str().unwrap()]);
    let addrs = demo.ready();
    let old_pid = demo.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer on its own channel, as a client process would be; a call the channel could
    // not send (its connection went away under the old process's GOAWAY) is sent again once,
    // as gRPC clients retry a call that never reached a server.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client = grpc_store(addrs.grpc_b).await;
                let (mut acked, mut failed, mut retried) = (Vec::new(), Vec::new(), 0);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 20_000 {
                    let (key, value) = (format!("grpc-up-{w}-{i}"), format!("v{i}"));
                    let put = || PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    let outcome = match client.put(put()).await {
                        Ok(_) => Ok(()),
                        // Not sent: the channel's connection went away under GOAWAY first
                        // (UNAVAILABLE), or was closed before the call was written (hyper's
                        // "connection closed", a client-side CANCELLED: a status the server
                        // sent has no transport error behind it).
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                || (status.code() == tonic::Code::Cancelled
                                    && std::error::Error::source(&status).is_some())
                                || above_goaway(&status) =>
                        {
                            retried += 1;
                            client.put(put()).await.map(|_| ())
                        }
                        Err(status) => Err(status),
                    };
                    match outcome {
                        Ok(()) => acked.push((key, value)),
                        Err(status) => failed.push(format!("{key}: {status}")),
                    }
                    i += 1;
                }
                (acked, failed, retried)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    demo.signal("HUP");
    assert_eq!(demo.exited().await.code(), Some(0), "the old process");
    let new_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    let mut failed = Vec::new();
    let mut retried = 0;
    for writer in writers {
        let (a, f, r) = writer.await.unwrap();
        acked.extend(a);
        failed.extend(f);
        retried += r;
    }
    assert!(
        failed.is_empty(),
        "{} failed ({retried} retried): {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(acked.len() > 40, "only {} calls acknowledged", acked.len());

    // The new process answers gRPC, and has every write.
    let mut client = grpc_store(addrs.grpc_b).await;
    for (key, value) in acked.iter().step_by(7) {
        let got = client
            .get(GetRequest { key: key.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.value, value, "{key}");
    }
    drop(client);
    terminate(new_pid).await;
    let (_, log) = demo.wait();
    assert!(log.contains("upgraded: PID"), "{log}");
}
