//! The drill against two real services: a graceful one (lameduck) that must pass, and a
//! deliberately bad one (exits at once on SIGTERM, dropping the requests in flight) that must
//! fail, with the reason said.
//!
//! Both are this test binary, re-run as a child: `good_server` and `bad_server` are ignored
//! tests that serve `/work` (100 ms) and `/fast` on the port given as a `port=N` argument, and
//! a WebSocket at `/ws` that pushes `tick N` every 20 ms and echoes text: the good one's is
//! lameduck's (Close 1001 at the drain), the bad one's axum's own (cut when the process exits).
//! `store_server` is a key-value store for the write audit: it keeps its writes in memory and,
//! unless told to forget (`forget`), saves them at shutdown (a FLUSH hook) to the file given as
//! `file=PATH` and loads them at start. `metrics_server` is a graceful one (lameduck, with a
//! lame-duck delay) that also serves `/metrics` in the Prometheus text format on an admin port
//! (`admin=N`, over TLS with `tls=CERT,KEY`) that stays open until the process exits, as the
//! library's admin listener does.
#![cfg(unix)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use lameduck_drill::report::MetricsSample;

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use lameduck_drill::{DrillArgs, drill, render_svg};

fn app() -> Router {
    Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "done\n"
            }),
        )
        .route("/fast", get(|| async { "fast\n" }))
        .route("/readyz-plain", get(|| async { "ok\n" }))
}

/// The `/ws` socket's work: a tick every 20 ms, text echoed; once a send fails (the drain's
/// Close went out), reads on until the client's Close ends the stream.
async fn ticks<S>(mut socket: S)
where
    S: futures_util::Stream<Item = Result<axum::extract::ws::Message, axum::Error>>
        + futures_util::Sink<axum::extract::ws::Message>
        + Unpin,
{
    use axum::extract::ws::Message;
    use futures_util::{SinkExt, StreamExt};
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let (mut n, mut sending) = (0u64, true);
    loop {
        tokio::select! {
            _ = every.tick(), if sending => {
                n += 1;
                sending = socket.send(Message::Text(format!("tick {n}").into())).await.is_ok();
            }
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) if sending => {
                    sending = socket.send(Message::Text(text)).await.is_ok();
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

fn port_arg() -> u16 {
    std::env::args()
        .find_map(|a| a.strip_prefix("port=").map(|p| p.parse().unwrap()))
        .expect("a port=N argument")
}

#[test]
#[ignore = "a child process of the other tests"]
fn good_server() {
    let port = port_arg();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(
        lameduck::Lifecycle::new()
            .service(
                "web",
                lameduck::http::HttpServer::bind(
                    format!("127.0.0.1:{port}"),
                    app().route(
                        "/ws",
                        get(|ws: lameduck::http::ws::WebSocketUpgrade| async move {
                            ws.on_upgrade(ticks)
                        }),
                    ),
                ),
            )
            .run(),
    );
    report.exit();
}

#[test]
#[ignore = "a child process of the other tests"]
fn bad_server() {
    let port = port_arg();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let app = app().route(
            "/ws",
            get(|ws: axum::extract::ws::WebSocketUpgrade| async move { ws.on_upgrade(ticks) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        // What too many services do: exit at once, whatever is in flight.
        std::process::exit(0);
    });
}

/// What `metrics_server`'s `/metrics` shows: the lifecycle's state and readiness (from its
/// handle), the lame duck (from the state's change to draining, for the delay), the requests
/// in flight in the app, and the admin port's own connections and requests.
struct Life {
    handle: lameduck::LifecycleHandle,
    lame_duck: Duration,
    /// When the state became draining.
    draining_since: Mutex<Option<Instant>>,
    in_flight: AtomicI64,
    completed: AtomicU64,
    admin_connections: AtomicI64,
}

/// The admin service's name: quotes in it, escaped in the exposition.
const ADMIN: &str = "admin \"metrics\"";

impl Life {
    fn exposition(&self) -> String {
        let state = match self.handle.state() {
            lameduck::State::Starting => "starting",
            lameduck::State::Ready => "ready",
            lameduck::State::Draining => "draining",
            _ => "stopped",
        };
        let since = *self.draining_since.lock().unwrap();
        let lame_duck = since.is_some_and(|t| t.elapsed() < self.lame_duck);
        let mut text = String::new();
        text.push_str(
            "# HELP lameduck_ready 1 while ready, else 0.\n# TYPE lameduck_ready gauge\n",
        );
        text.push_str(&format!(
            "lameduck_ready {}\n",
            u8::from(self.handle.is_ready())
        ));
        text.push_str(
            "# HELP lameduck_state 1 for the current state.\n# TYPE lameduck_state gauge\n",
        );
        for s in ["starting", "ready", "draining", "stopped"] {
            text.push_str(&format!(
                "lameduck_state{{state=\"{s}\"}} {}\n",
                u8::from(s == state)
            ));
        }
        text.push_str(&format!(
            "# TYPE lameduck_lame_duck gauge\nlameduck_lame_duck {}\n",
            u8::from(lame_duck)
        ));
        let admin = ADMIN.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "# TYPE lameduck_in_flight gauge\n\
             lameduck_in_flight{{service=\"web\"}} {}\n\
             lameduck_in_flight{{service=\"{admin}\"}} 1\n\
             # TYPE lameduck_connections gauge\n\
             lameduck_connections{{service=\"{admin}\"}} {}\n\
             # TYPE lameduck_time_to_ready_seconds gauge\n\
             lameduck_time_to_ready_seconds NaN\n\
             # TYPE lameduck_requests_total counter\n\
             lameduck_requests_total{{service=\"web\",outcome=\"completed\"}} {} 1712345678901\n",
            self.in_flight.load(Ordering::SeqCst),
            self.admin_connections.load(Ordering::SeqCst),
            self.completed.load(Ordering::SeqCst),
        ));
        text
    }
}

/// The admin port: HTTP/1.1 keep-alive (over TLS with `tls`), `/metrics` and 404 for
/// anything else.
async fn admin(
    listener: tokio::net::TcpListener,
    life: Arc<Life>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (life, tls) = (Arc::clone(&life), tls.clone());
        tokio::spawn(async move {
            life.admin_connections.fetch_add(1, Ordering::SeqCst);
            let _ = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => serve_admin(stream, &life).await,
                    Err(e) => Err(e),
                },
                None => serve_admin(stream, &life).await,
            };
            life.admin_connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One admin connection's requests, one after the other.
async fn serve_admin<S>(stream: S, life: &Life) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        // Origin-form, or absolute-form (RFC 9112 §3.2.2: what the drill sends).
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let path = match target.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        }
        .to_owned();
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            if header.trim().is_empty() {
                break;
            }
        }
        let (status, body) = if path == "/metrics" {
            ("200 OK", life.exposition())
        } else {
            ("404 Not Found", String::new())
        };
        // One write: head and body in one segment (no Nagle delay).
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(response.as_bytes()).await?;
        write.flush().await?;
    }
}

/// A TLS acceptor of the PEM pair `cert` and `key` (rustls with ring, as the drill's client).
fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto::ring};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[test]
#[ignore = "a child process of the other tests"]
fn metrics_server() {
    let port = port_arg();
    let admin_port: u16 = arg("admin").expect("an admin=N argument").parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async move {
        let lame_duck = Duration::from_millis(300);
        let lifecycle = lameduck::Lifecycle::new().lame_duck_delay(lame_duck);
        let life = Arc::new(Life {
            handle: lifecycle.handle(),
            lame_duck,
            draining_since: Mutex::new(None),
            in_flight: AtomicI64::new(0),
            completed: AtomicU64::new(0),
            admin_connections: AtomicI64::new(0),
        });
        let mut states = life.handle.subscribe();
        let watched = Arc::clone(&life);
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                if *states.borrow() == lameduck::State::Draining {
                    watched
                        .draining_since
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", admin_port))
            .await
            .unwrap();
        let tls = arg("tls").map(|pair| {
            let (cert, key) = pair.split_once(',').expect("tls=CERT,KEY");
            acceptor(cert, key)
        });
        tokio::spawn(admin(listener, Arc::clone(&life), tls));
        let counted = Arc::clone(&life);
        let app = app().layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let life = Arc::clone(&counted);
                async move {
                    life.in_flight.fetch_add(1, Ordering::SeqCst);
                    let response = next.run(request).await;
                    life.in_flight.fetch_sub(1, Ordering::SeqCst);
                    life.completed.fetch_add(1, Ordering::SeqCst);
                    response
                }
            },
        ));
        let report = lifecycle
            .service(
                "web",
                lameduck::http::HttpServer::bind(format!("127.0.0.1:{port}"), app),
            )
            .run()
            .await;
        // The admin port outlives the run a while, saying `stopped`.
        tokio::time::sleep(Duration::from_millis(200)).await;
        report
    });
    report.exit();
}

type Kv = Arc<Mutex<HashMap<String, String>>>;

fn arg(name: &str) -> Option<String> {
    std::env::args().find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

#[test]
#[ignore = "a child process of the other tests"]
fn store_server() {
    let port = port_arg();
    let file = PathBuf::from(arg("file").expect("a file=PATH argument"));
    let forget = std::env::args().any(|a| a == "forget");
    // A store that saves every value changed: a write read back wrong.
    let corrupt = std::env::args().any(|a| a == "corrupt");
    let saved: HashMap<String, String> = std::fs::read(&file)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_default();
    let kv: Kv = Arc::new(Mutex::new(saved));
    let app = Router::new()
        .route(
            "/kv/{key}",
            get(|State(kv): State<Kv>, Path(key): Path<String>| async move {
                match kv.lock().unwrap().get(&key) {
                    Some(value) => Ok(value.clone()),
                    None => Err(StatusCode::NOT_FOUND),
                }
            })
            .put(
                |State(kv): State<Kv>, Path(key): Path<String>, value: String| async move {
                    kv.lock().unwrap().insert(key, value);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(Arc::clone(&kv));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(
        lameduck::Lifecycle::new()
            .service(
                "kv",
                lameduck::http::HttpServer::bind(format!("127.0.0.1:{port}"), app),
            )
            .hook(lameduck::Phase::FLUSH, "save", move || async move {
                if corrupt {
                    for value in kv.lock().unwrap().values_mut() {
                        value.push_str(" (changed)");
                    }
                }
                if !forget {
                    let json = serde_json::to_vec(&*kv.lock().unwrap())?;
                    std::fs::write(&file, json)?;
                }
                Ok(())
            })
            .run(),
    );
    report.exit();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The drill's arguments for `server` on `port`, with `extra` options.
fn args(server: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut args: Vec<String> = vec![
        "lameduck-drill".into(),
        "--quiet".into(),
        "--ready-tcp".into(),
        format!("127.0.0.1:{port}"),
        "--url".into(),
        format!("http://127.0.0.1:{port}/work"),
        "--url".into(),
        format!("http://127.0.0.1:{port}/fast"),
        "--concurrency".into(),
        "6".into(),
        "--signal-after".into(),
        "600ms".into(),
        "--exit-timeout".into(),
        "20s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--".into(),
        exe.display().to_string(),
        server.into(),
        "--exact".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        format!("port={port}"),
    ]);
    args
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_service_passes_with_a_restart() {
    let port = free_port();
    let args = DrillArgs::parse_from(args("good_server", port, &["--restart"]));
    let report = drill(&args).await.unwrap();
    assert!(report.passed, "{report}");
    assert_eq!(report.requests.failed, 0);
    assert!(report.requests.ok > 10, "{report}");
    assert!(
        report.in_flight_at_signal > 0,
        "requests were in flight: {report}"
    );
    assert_eq!(
        report.in_flight_at_signal, report.in_flight_at_signal_completed,
        "{report}"
    );
    assert_eq!(report.exit_code, Some(0));
    assert!(report.listener_closed_after_signal_ms.is_some(), "{report}");
    let restart = report.restart.as_ref().unwrap();
    assert!(restart.ready, "{report}");
    let svg = render_svg(&report);
    assert!(svg.starts_with("<svg") && svg.contains("PASS"), "{svg}");
    assert!(svg.contains("listener closed") && svg.contains("exit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_drops_requests_in_flight_fails_and_the_drill_says_why() {
    let port = free_port();
    let args = DrillArgs::parse_from(args("bad_server", port, &[]));
    let report = drill(&args).await.unwrap();
    assert!(!report.passed, "{report}");
    assert!(report.requests.failed > 0, "{report}");
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("accepted request(s) failed")),
        "{:?}",
        report.reasons
    );
    assert!(
        report.in_flight_at_signal_completed < report.in_flight_at_signal,
        "{report}"
    );
    let shown = report.to_string();
    assert!(shown.contains("FAIL:"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_exit_code_fails() {
    let port = free_port();
    let args = DrillArgs::parse_from(args("good_server", port, &["--expect-exit-code", "3"]));
    let report = drill(&args).await.unwrap();
    assert!(!report.passed, "{report}");
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("exit code 0, expected exit code 3")),
        "{:?}",
        report.reasons
    );
}

#[test]
fn the_binary_exits_nonzero_on_a_failed_drill_and_writes_its_outputs() {
    let port = free_port();
    let (json, svg, records) = (temp("bad.json"), temp("bad.svg"), temp("bad.jsonl"));
    let mut cli = args("bad_server", port, &[]);
    cli.splice(
        1..1,
        [
            "--json".to_owned(),
            json.display().to_string(),
            "--svg".to_owned(),
            svg.display().to_string(),
            "--records".to_owned(),
            records.display().to_string(),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-drill"))
        .args(&cli[1..])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL:"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], false);
    assert!(report["requests"]["failed"].as_u64().unwrap() > 0);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("FAIL"));
    // Every request, a line each, with the same counts as the report.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&records)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.len() as u64,
        report["requests"]["total"].as_u64().unwrap()
    );
    let failed = lines.iter().filter(|r| r["outcome"] == "failed").count() as u64;
    assert_eq!(failed, report["requests"]["failed"].as_u64().unwrap());
    assert!(
        lines
            .iter()
            .all(|r| r["kind"] == "http" && r["end_ms"].is_f64())
    );
}

#[test]
fn a_service_that_never_gets_ready_is_a_clear_error() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-drill"))
        .args([
            "--quiet",
            "--ready-timeout",
            "300ms",
            "--url",
            &format!("http://127.0.0.1:{port}/"),
            "--",
            "sleep",
            "30",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not ready within"), "{stderr}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_brings_no_new_process_fails_and_says_why() {
    // axum's `serve` has no upgrade: SIGHUP ends the process (the signal's default), and what
    // the clients meet then is refused connections.
    let port = free_port();
    let pid_file = temp("never-written.pid");
    let _ = std::fs::remove_file(&pid_file);
    let pid_file = pid_file.display().to_string();
    let extra = [
        "--upgrade",
        "--pid-file",
        &pid_file,
        "--after-upgrade",
        "200ms",
    ];
    let args = DrillArgs::parse_from(args("bad_server", port, &extra));
    let report = drill(&args).await.unwrap();
    assert!(!report.passed, "{report}");
    let reasons = report.reasons.join("\n");
    assert!(reasons.contains("no new process"), "{reasons}");
    assert_eq!(report.exit_signal, Some(1), "killed by SIGHUP: {report}");
    let upgrade = report.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.new_pid, None);
}

/// The audit's drill of `store_server` in `mode` (`forget`: it loses its writes at exit;
/// `corrupt`: it changes them), with a restart.
async fn audit_drill(mode: Option<&str>) -> lameduck_drill::DrillReport {
    let port = free_port();
    let file = temp(&format!("kv-{port}.json"));
    let _ = std::fs::remove_file(&file);
    let exe = std::env::current_exe().unwrap();
    let mut cli: Vec<String> = [
        "lameduck-drill",
        "--quiet",
        "--ready-tcp",
        &format!("127.0.0.1:{port}"),
        "--write",
        &format!("PUT http://127.0.0.1:{port}/kv/{{n}}"),
        "--read",
        &format!("http://127.0.0.1:{port}/kv/{{n}}"),
        "--signal-after",
        "400ms",
        "--restart",
        "--",
        &exe.display().to_string(),
        "store_server",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        &format!("port={port}"),
        &format!("file={}", file.display()),
    ]
    .map(str::to_owned)
    .to_vec();
    cli.extend(mode.map(str::to_owned));
    drill(&DrillArgs::parse_from(cli)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_audit_passes_a_store_that_keeps_its_writes() {
    let report = audit_drill(None).await;
    assert!(report.passed, "{report}");
    let audit = report.audit.as_ref().unwrap();
    assert!(audit.acknowledged > 10, "{report}");
    assert_eq!(audit.found, audit.acknowledged, "{report}");
    assert_eq!(audit.lost + audit.wrong + audit.unreadable, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_audit_fails_a_store_that_drops_its_cache_on_exit() {
    let report = audit_drill(Some("forget")).await;
    assert!(!report.passed, "{report}");
    // A clean shutdown otherwise: nothing failed, the exit and restart were fine.
    assert_eq!(report.requests.failed, 0, "{report}");
    assert_eq!(report.exit_code, Some(0), "{report}");
    let audit = report.audit.as_ref().unwrap();
    assert!(audit.acknowledged > 10, "{report}");
    assert_eq!(audit.lost, audit.acknowledged, "every write lost: {report}");
    assert_eq!(audit.found, 0, "{report}");
    let reasons = report.reasons.join("\n");
    assert!(
        reasons.contains("acknowledged write(s) not read back"),
        "{reasons}"
    );
    assert!(
        report.to_string().contains("lost (the read answered 404)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_audit_fails_a_store_that_changes_what_it_acknowledged() {
    let report = audit_drill(Some("corrupt")).await;
    assert!(!report.passed, "{report}");
    let audit = report.audit.as_ref().unwrap();
    assert!(audit.acknowledged > 10, "{report}");
    assert_eq!(
        audit.wrong, audit.acknowledged,
        "every write changed: {report}"
    );
    assert!(audit.samples[0].contains("(changed)"), "{report}");
}

#[test]
fn a_write_audit_needs_a_second_life_to_read_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-drill"))
        .args([
            "--write",
            "PUT http://127.0.0.1:1/kv/{n}",
            "--read",
            "GET http://127.0.0.1:1/kv/{n}",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("required arguments were not provided")
            && stderr.contains("<--restart|--upgrade|--rollout <N>>"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_front_that_hides_nothing_a_rollout_counts_refused_as_failed() {
    // No balancer: the "front" is instance 1 itself, so its restart refuses connections, which
    // a rollout must count as failures (a balancer would have hidden it).
    let ports = [free_port(), free_port()];
    let exe = std::env::current_exe().unwrap().display().to_string();
    let front = format!("http://127.0.0.1:{}/fast", ports[0]);
    let cli: Vec<String> = [
        "lameduck-drill",
        "--quiet",
        "--rollout",
        "2",
        "--ports",
        &format!("{},{}", ports[0], ports[1]),
        "--front",
        &front,
        "--ready-tcp",
        "127.0.0.1:{port}",
        "--signal-after",
        "300ms",
        "--settle",
        "200ms",
        "--",
        &exe,
        "good_server",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "port={port}",
    ]
    .map(str::to_owned)
    .to_vec();
    let report = drill(&DrillArgs::parse_from(cli)).await.unwrap();
    assert!(!report.passed, "{report}");
    assert_eq!(
        report.requests.refused, 0,
        "refused became failed: {report}"
    );
    assert!(report.requests.failed > 0, "{report}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.error.contains("refused during the rollout")),
        "{report}"
    );
    assert_eq!(report.instances.len(), 2);
    for instance in &report.instances {
        assert_eq!(instance.exit_code, Some(0), "{report}");
        assert_eq!(instance.final_exit_code, Some(0), "{report}");
        assert!(instance.ready_again_at_ms.is_some(), "{report}");
        assert!(
            instance
                .command
                .iter()
                .any(|a| a == &format!("port={}", ports[instance.instance as usize - 1])),
            "{:?}",
            instance.command
        );
    }
    let shown = report.to_string();
    assert!(
        shown.contains("instance") && shown.contains("out for"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_metrics_show_its_shutdown_from_inside() {
    let (port, admin_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    let extra = ["--metrics-url", &url, "--metrics-interval", "20ms"];
    let mut cli = args("metrics_server", port, &extra);
    cli.push(format!("admin={admin_port}"));
    let report = drill(&DrillArgs::parse_from(cli)).await.unwrap();
    assert!(report.passed, "{report}");
    let m = report.metrics.as_ref().expect("a metrics section");
    assert_eq!(m.url, url);
    assert!(m.warnings.is_empty(), "{report}");
    // Every 20 ms for 600 ms and more: many samples, in time order, on the requests' clock.
    assert!(m.scrapes_ok >= 15, "{report}");
    assert_eq!(m.scrapes_ok as usize, m.samples.len());
    assert!(m.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    // About every interval, from ready to the exit: a kept connection keeps up.
    let due = (report.exit_at_ms.unwrap() - report.ready_after_ms) / 20.0;
    let scrapes = (m.scrapes_ok + m.scrapes_failed) as f64;
    assert!(
        scrapes >= due / 2.0 && scrapes <= due + 2.0,
        "{scrapes} of {due}: {report}"
    );
    let first = &m.samples[0];
    assert!(first.at_ms >= report.ready_after_ms - 1.0, "{first:?}");
    let last = m.samples.last().unwrap();
    assert!(
        last.at_ms <= report.exit_at_ms.unwrap() + 1.0,
        "scraped until the exit: {last:?}"
    );
    let signal = report.signal_at_ms;
    let (before, after): (Vec<_>, Vec<_>) = m.samples.iter().partition(|s| s.at_ms < signal);
    // Ready before the signal, not ready after it (once the service has heard it: a scrape
    // answered as the signal went out may still say ready); the fall seen within a few
    // intervals.
    assert!(
        before
            .iter()
            .any(|s| s.ready == Some(1.0) && s.state.as_deref() == Some("ready")),
        "{before:?}"
    );
    let heard = |s: &&&MetricsSample| s.at_ms > signal + 100.0;
    assert!(
        after.iter().filter(heard).all(|s| s.ready == Some(0.0)),
        "{after:?}"
    );
    let fell = m.ready_fell_after_signal_ms.expect("ready went 1 -> 0");
    assert!((0.0..250.0).contains(&fell), "{fell} ms: {report}");
    // The lifecycle's states in order, the lame duck on after the signal only.
    let position = |state: &str| m.states_seen.iter().position(|s| s == state);
    let (ready, draining) = (position("ready"), position("draining"));
    assert!(ready.is_some() && draining > ready, "{:?}", m.states_seen);
    assert!(position("stopped") > draining, "{:?}", m.states_seen);
    assert!(
        before.iter().all(|s| s.lame_duck == Some(0.0)),
        "{before:?}"
    );
    assert!(after.iter().any(|s| s.lame_duck == Some(1.0)), "{after:?}");
    // Requests in flight during the lame duck and the drain, as the service counts them.
    let peak = m.peak_in_flight_after_signal.get("web").copied();
    assert!(peak.is_some_and(|p| p > 0.0), "{report}");
    assert!(
        after
            .iter()
            .any(|s| s.state.as_deref() == Some("draining") && s.in_flight["web"] > 0.0),
        "{after:?}"
    );
    // A label with escaped quotes, read back; one keep-alive connection for the scrapes.
    let admin = "admin \"metrics\"";
    assert!(
        m.samples
            .iter()
            .all(|s| s.in_flight.get(admin) == Some(&1.0))
    );
    assert!(
        m.samples
            .iter()
            .all(|s| s.connections.get(admin) == Some(&1.0))
    );
    // The scrapes that failed were those after the signal, as the process went away.
    assert_eq!(m.scrapes_failed, m.scrapes_failed_after_signal, "{report}");
    // The text, the JSON and the picture show them.
    let shown = report.to_string();
    assert!(shown.contains("metrics after signal"), "{shown}");
    assert!(shown.contains("ready 1 -> 0 +"), "{shown}");
    let json = serde_json::to_value(&report).unwrap();
    let samples = json["metrics"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), m.samples.len());
    assert!(samples[0]["at_ms"].is_f64() && samples[0]["in_flight"]["web"].is_f64());
    let svg = render_svg(&report);
    assert!(svg.contains("web in flight (metrics)"), "{svg}");
    assert!(svg.contains(r#"data-service="web""#) && svg.contains("metrics state"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_url_that_never_answers_is_a_warning_not_a_failure() {
    let (port, nobody) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{nobody}/metrics");
    let extra = ["--metrics-url", &url, "--metrics-interval", "50ms"];
    let report = drill(&DrillArgs::parse_from(args("good_server", port, &extra)))
        .await
        .unwrap();
    assert!(report.passed, "{report}");
    let m = report.metrics.as_ref().expect("a metrics section");
    assert_eq!(m.scrapes_ok, 0, "{report}");
    assert!(m.scrapes_failed > m.scrapes_failed_after_signal, "{report}");
    assert!(m.samples.is_empty());
    let shown = report.to_string();
    assert!(
        shown.contains("WARNING: the metrics URL")
            && shown.contains("never answered before the signal"),
        "{shown}"
    );
    assert!(
        m.first_error
            .as_deref()
            .is_some_and(|e| e.contains("no connection")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_https_are_scraped_with_the_drills_trust() {
    let dir = temp("metrics-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let Some((cert, key)) = tools::self_signed(&dir) else {
        return;
    };
    let (port, admin_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{admin_port}/metrics");
    let ca = cert.display().to_string();
    let tls = format!("tls={},{}", cert.display(), key.display());
    let extra = [
        "--metrics-url",
        &url,
        "--cacert",
        &ca,
        "--metrics-interval",
        "40ms",
    ];
    let mut cli = args("metrics_server", port, &extra);
    cli.extend([format!("admin={admin_port}"), tls]);
    let report = drill(&DrillArgs::parse_from(cli)).await.unwrap();
    assert!(report.passed, "{report}");
    let m = report.metrics.as_ref().expect("a metrics section");
    assert!(m.warnings.is_empty(), "{report}");
    assert!(m.scrapes_ok >= 10, "{report}");
    assert!(m.ready_fell_after_signal_ms.is_some(), "{report}");
    assert!(m.states_seen.iter().any(|s| s == "draining"), "{report}");
    // One TLS connection kept for all the scrapes.
    let admin = "admin \"metrics\"";
    assert!(
        m.samples
            .iter()
            .all(|s| s.connections.get(admin) == Some(&1.0))
    );
    // Without a way to trust it, the URL is a usage error, before anything starts.
    let untrusted = args("metrics_server", free_port(), &["--metrics-url", &url]);
    let error = drill(&DrillArgs::parse_from(untrusted)).await.unwrap_err();
    let said = error.to_string();
    assert!(
        said.contains("--metrics-url") && said.contains("--cacert"),
        "{said}"
    );
}

/// The drill of `server` with `--ws` (4 clients that send every 50 ms), beside the HTTP load
/// or (`alone`) without it.
async fn websocket_drill(server: &str, alone: bool) -> lameduck_drill::DrillReport {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let extra = ["--ws", &url, "--ws-clients", "4", "--ws-send-every", "50ms"];
    let mut cli = args(server, port, &extra);
    if alone {
        while let Some(i) = cli.iter().position(|a| a == "--url") {
            cli.drain(i..i + 2);
        }
    }
    let report = drill(&DrillArgs::parse_from(cli)).await.unwrap();
    eprintln!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_closed_with_going_away_at_the_drain_pass() {
    let report = websocket_drill("good_server", false).await;
    assert!(report.passed, "{report}");
    let [ws] = report.websockets.as_slice() else {
        panic!("one websockets section: {report}");
    };
    assert_eq!((ws.clients, ws.connected), (4, 4), "{report}");
    assert_eq!((ws.ok, ws.failed, ws.refused), (4, 0, 0), "{report}");
    assert_eq!(ws.close_codes.get("1001"), Some(&4), "{report}");
    // Ticks for the 600 ms before the signal, and the echoes of what was sent.
    assert!(ws.messages_received >= 4 * 20, "{report}");
    assert!(ws.messages_sent >= 4 * 5, "{report}");
    let (median, max) = (
        ws.close_after_signal_median_ms.unwrap(),
        ws.close_after_signal_max_ms.unwrap(),
    );
    assert!(0.0 <= median && median <= max, "{report}");
    assert!(
        report.exit_after_signal_ms.is_some_and(|exit| max <= exit),
        "{report}"
    );
    let shown = report.to_string();
    assert!(
        shown.contains("websockets") && shown.contains("1001 x4"),
        "{shown}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["websockets"][0]["ok"], 4, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_cut_without_a_close_frame_fail_and_the_drill_names_the_cut() {
    // The WebSockets alone: the HTTP load's own failures must not be what fails it.
    let report = websocket_drill("bad_server", true).await;
    assert!(!report.passed, "{report}");
    assert_eq!(report.requests.total, 0, "{report}");
    assert_eq!(report.reasons.len(), 1, "{:?}", report.reasons);
    let ws = &report.websockets[0];
    assert_eq!(ws.connected, 4, "{report}");
    assert_eq!((ws.ok, ws.failed), (0, 4), "{report}");
    assert!(ws.close_codes.is_empty(), "{report}");
    assert!(ws.messages_received > 0, "{report}");
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("WebSocket client(s)")
                && r.contains("without a Close frame")
                && r.contains("1006")),
        "{:?}",
        report.reasons
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_never_connect_are_refused_and_fail_the_drill() {
    // wss:// to a cleartext port: every TLS handshake fails, before the signal and until it.
    let port = free_port();
    let url = format!("wss://127.0.0.1:{port}/ws");
    let extra = ["--ws", &url, "--ws-clients", "2", "--insecure"];
    let report = drill(&DrillArgs::parse_from(args("good_server", port, &extra)))
        .await
        .unwrap();
    assert!(!report.passed, "{report}");
    let ws = &report.websockets[0];
    assert_eq!((ws.connected, ws.refused, ws.failed), (0, 2, 0), "{report}");
    assert!(
        ws.first_refusal
            .as_deref()
            .is_some_and(|e| e.contains("TLS")),
        "{report}"
    );
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("no WebSocket client") && r.contains("connected before the signal")),
        "{:?}",
        report.reasons
    );
}
