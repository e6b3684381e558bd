//! The drill against two real services: a graceful one (lameduck) that must pass, and a
//! deliberately bad one (exits at once on SIGTERM, dropping the requests in flight) that must
//! fail, with the reason said.
//!
//! Both are this test binary, re-run as a child: `good_server` and `bad_server` are ignored
//! tests that serve `/work` (100 ms) and `/fast` on the port given as a `port=N` argument.
//! `store_server` is a key-value store for the write audit: it keeps its writes in memory and,
//! unless told to forget (`forget`), saves them at shutdown (a FLUSH hook) to the file given as
//! `file=PATH` and loads them at start.
#![cfg(unix)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
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
                lameduck::http::HttpServer::bind(format!("127.0.0.1:{port}"), app()),
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
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        // What too many services do: exit at once, whatever is in flight.
        std::process::exit(0);
    });
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
