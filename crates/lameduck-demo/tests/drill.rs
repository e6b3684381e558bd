//! The drill's part two against the demo: gRPC load (from the server's reflection, and from the
//! `.proto` file), the acknowledged-write audit over HTTP and gRPC, a gRPC server that loses
//! the calls in flight, and a rolling restart of three instances behind HAProxy with the
//! configuration this repository ships (`deploy/haproxy/haproxy.cfg`).
#![cfg(unix)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use clap::Parser;
use lameduck_drill::{DrillArgs, DrillReport, drill};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::free_port;

const DEMO: &str = env!("CARGO_BIN_EXE_lameduck-demo");

fn temp_dir(name: &str) -> PathBuf {
    tools::fresh_dir("demo-drill", name)
}

/// The demo's three addresses, on free ports.
struct Ports {
    http: String,
    grpc_a: String,
    grpc_b: String,
}

impl Ports {
    fn new() -> Ports {
        let addr = || format!("127.0.0.1:{}", free_port());
        Ports {
            http: addr(),
            grpc_a: addr(),
            grpc_b: addr(),
        }
    }

    /// The demo's command line on these ports, with its database in `dir`.
    fn demo(&self, dir: &Path) -> Vec<String> {
        [
            DEMO,
            "--http",
            &self.http,
            "--grpc-a",
            &self.grpc_a,
            "--grpc-b",
            &self.grpc_b,
            "--db",
            &dir.join("demo.db").display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// Runs the drill with `flags`, then `--` and `command`.
async fn run(flags: &[&str], command: Vec<String>) -> DrillReport {
    let mut cli: Vec<String> = vec!["lameduck-drill".into(), "--quiet".into()];
    cli.extend(flags.iter().map(|s| s.to_string()));
    cli.push("--".into());
    cli.extend(command);
    drill(&DrillArgs::parse_from(cli)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_load_by_reflection_passes_a_restart_and_every_write_is_read_back()
{
    let ports = Ports::new();
    let dir = temp_dir("grpc-restart");
    let ready = format!("http://{}/readyz", ports.http);
    let write = format!("PUT http://{}/kv/{{n}}", ports.http);
    let read = format!("GET http://{}/kv/{{n}}", ports.http);
    let report = run(
        &[
            "--ready-url",
            &ready,
            "--grpc",
            &ports.grpc_a,
            "--call",
            "demo.v1.Echo/Echo",
            "--data",
            r#"{"message": "drill", "delayMs": 150}"#,
            "--call",
            "demo.v1.Echo/Ticks",
            "--data",
            r#"{"count": 6, "intervalMs": 30}"#,
            "--write",
            &write,
            "--read",
            &read,
            "--signal-after",
            "700ms",
            "--restart",
        ],
        ports.demo(&dir),
    )
    .await;
    assert!(report.passed, "{report}");
    let grpc = report.grpc.as_ref().unwrap();
    assert!(grpc.requests.ok > 10, "{report}");
    assert_eq!(grpc.requests.failed, 0, "{report}");
    assert_eq!(
        grpc.status_codes.get("OK"),
        Some(&grpc.requests.ok),
        "{report}"
    );
    assert!(report.in_flight_at_signal > 0, "{report}");
    assert_eq!(
        report.in_flight_at_signal, report.in_flight_at_signal_completed,
        "{report}"
    );
    let audit = report.audit.as_ref().unwrap();
    assert!(audit.acknowledged > 10, "{report}");
    assert_eq!(audit.found, audit.acknowledged, "{report}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_load_from_the_proto_file_and_the_grpc_write_audit_pass_an_upgrade() {
    let ports = Ports::new();
    let dir = temp_dir("grpc-upgrade");
    let pid_file = dir.join("demo.pid").display().to_string();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/demo/v1/demo.proto");
    let ready = format!("http://{}/readyz", ports.http);
    let mut demo = ports.demo(&dir);
    demo.extend(["--pid-file".into(), pid_file.clone()]);
    let report = run(
        &[
            "--ready-url",
            &ready,
            // The Store server: its calls as load, and as the audit's writes and reads.
            "--grpc",
            &ports.grpc_b,
            "--proto",
            proto,
            "--call",
            "demo.v1.Store/Put",
            "--data",
            r#"{"key": "load", "value": "x"}"#,
            "--write-call",
            "demo.v1.Store/Put",
            "--write-data",
            r#"{"key": "w{n}", "value": "{value}"}"#,
            "--read-call",
            "demo.v1.Store/Get",
            "--read-data",
            r#"{"key": "w{n}"}"#,
            "--signal-after",
            "600ms",
            "--upgrade",
            "--pid-file",
            &pid_file,
            "--after-upgrade",
            "300ms",
        ],
        demo,
    )
    .await;
    assert!(report.passed, "{report}");
    assert_eq!(report.requests.refused, 0, "{report}");
    let grpc = report.grpc.as_ref().unwrap();
    assert!(grpc.requests.ok > 10, "{report}");
    let audit = report.audit.as_ref().unwrap();
    assert!(audit.acknowledged > 10, "{report}");
    assert_eq!(audit.found, audit.acknowledged, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_killed_on_sigterm_fails_the_drill_with_the_calls_it_lost() {
    let ports = Ports::new();
    let dir = temp_dir("grpc-killed");
    // What a container runtime does when a service ignores its grace period, at once: the
    // wrapper answers SIGTERM with SIGKILL to the demo.
    let demo = ports.demo(&dir).join(" ");
    let script =
        format!("{demo} & pid=$!; trap 'kill -KILL $pid' TERM; wait $pid; wait $pid; exit 0");
    let report = run(
        &[
            "--ready-grpc",
            &ports.grpc_a,
            "--grpc",
            &ports.grpc_a,
            "--call",
            "demo.v1.Echo/Echo",
            "--data",
            r#"{"message": "lost", "delayMs": 300}"#,
            "--call",
            "demo.v1.Echo/Ticks",
            "--data",
            r#"{"count": 20, "intervalMs": 30}"#,
            "--signal-after",
            "700ms",
        ],
        vec!["sh".into(), "-c".into(), script],
    )
    .await;
    assert!(!report.passed, "{report}");
    let grpc = report.grpc.as_ref().unwrap();
    assert!(grpc.requests.failed > 0, "{report}");
    assert!(grpc.requests.ok > 0, "{report}");
    assert!(
        report.in_flight_at_signal_completed < report.in_flight_at_signal,
        "{report}"
    );
    let reasons = report.reasons.join("\n");
    assert!(reasons.contains("accepted request(s) failed"), "{reasons}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.error.contains("demo.v1.Echo/")),
        "the failures name the method: {report}"
    );
}

/// The shipped HAProxy configuration, on free ports: the front and three instances.
fn haproxy_config(dir: &Path) -> (PathBuf, String, Vec<u16>) {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/haproxy/haproxy.cfg"
    );
    let mut config = std::fs::read_to_string(shipped).unwrap();
    let front = format!("127.0.0.1:{}", free_port());
    assert!(config.contains("bind 127.0.0.1:8000"));
    config = config.replace("127.0.0.1:8000", &front);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        let shipped = format!("127.0.0.1:{}", 8081 + i);
        assert!(config.contains(&shipped), "{shipped} in {config}");
        config = config.replace(&shipped, &format!("127.0.0.1:{port}"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    (path, front, ports)
}

/// Three demo instances behind HAProxy, rolled one by one under load.
async fn rollout(lame_duck: &str) -> Option<DrillReport> {
    let haproxy = tools::tool("haproxy", "haproxy")?;
    let dir = temp_dir(&format!("rollout-{lame_duck}"));
    let (config, front, ports) = haproxy_config(&dir);
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let front_command = format!("{} -db -f {}", haproxy.display(), config.display());
    let front_url = format!("http://{front}/fast");
    let slow = format!("http://{front}/slow?ms=100");
    let db = dir.join("demo-{i}.db").display().to_string();
    let report = run(
        &[
            "--rollout",
            "3",
            "--ports",
            &ports.join(","),
            "--front",
            &front_url,
            "--front-command",
            &front_command,
            "--ready-url",
            "http://127.0.0.1:{port}/readyz",
            "--url",
            &slow,
            "--url",
            &front_url,
            "--concurrency",
            "16",
            "--signal-after",
            "500ms",
            "--settle",
            "700ms",
        ],
        [
            DEMO,
            "--http",
            "127.0.0.1:{port}",
            "--grpc-a",
            "127.0.0.1:0",
            "--grpc-b",
            "127.0.0.1:0",
            "--db",
            &db,
            "--lame-duck",
            lame_duck,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    Some(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_behind_haproxy_passes_with_a_lame_duck_delay() {
    let Some(report) = rollout("500ms").await else {
        return;
    };
    assert!(report.passed, "{report}");
    assert_eq!(report.requests.failed, 0, "{report}");
    assert!(report.requests.ok > 100, "{report}");
    assert_eq!(report.instances.len(), 3);
    for instance in &report.instances {
        assert_eq!(instance.exit_code, Some(0), "{report}");
        assert_eq!(instance.final_exit_code, Some(0), "{report}");
        // Out for the lame-duck delay at least: the balancer saw it leave first.
        assert!(instance.out_ms.unwrap() >= 500.0, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_behind_haproxy_fails_without_a_lame_duck_delay() {
    let Some(report) = rollout("0s").await else {
        return;
    };
    assert!(!report.passed, "{report}");
    // Every instance shut down cleanly: what failed is the balancer's view of it.
    for instance in &report.instances {
        assert_eq!(instance.exit_code, Some(0), "{report}");
    }
    assert!(report.requests.failed > 0, "{report}");
    let reasons = report.reasons.join("\n");
    assert!(reasons.contains("through the front failed"), "{reasons}");
    assert!(
        report.failures.iter().any(|f| f.error.contains("503")),
        "HAProxy answers 503 for the requests it sent to a closed listener: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_server_does_not_have_is_a_clear_error_and_the_service_is_stopped() {
    let ports = Ports::new();
    let dir = temp_dir("grpc-unknown");
    let ready = format!("http://{}/readyz", ports.http);
    let cli: Vec<String> = [
        "lameduck-drill",
        "--quiet",
        "--ready-url",
        &ready,
        "--grpc",
        &ports.grpc_a,
        "--call",
        "demo.v1.Nope/Echo",
        "--",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(ports.demo(&dir))
    .collect();
    let error = drill(&DrillArgs::parse_from(cli)).await.unwrap_err();
    let said = error.to_string();
    assert!(
        said.contains(&ports.grpc_a) && said.contains("`demo.v1.Nope`") && said.contains("--proto"),
        "{said}"
    );
    // The drill stopped the demo it started: its port is free again.
    TcpListener::bind(&ports.http).expect("the demo was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_load_and_writes_over_tls_pass_a_restart_with_the_ca_trusted_and_insecure() {
    let dir = temp_dir("https");
    let Some((cert, key)) = tools::self_signed(&dir) else {
        return;
    };
    let cert = cert.display().to_string();
    for trust in [vec!["--cacert", cert.as_str()], vec!["--insecure"]] {
        let ports = Ports::new();
        let port = ports.http.rsplit(':').next().unwrap_or_default().to_owned();
        let base = format!("https://localhost:{port}");
        let (ready, slow) = (format!("{base}/readyz"), format!("{base}/slow?ms=150"));
        let (write, read) = (
            format!("PUT {base}/kv/{{n}}"),
            format!("GET {base}/kv/{{n}}"),
        );
        let mut flags = trust.clone();
        flags.extend([
            "--ready-url",
            &ready,
            "--url",
            &slow,
            "--write",
            &write,
            "--read",
            &read,
            "--signal-after",
            "600ms",
            "--restart",
        ]);
        let mut demo = ports.demo(&dir);
        demo.extend(["--tls-cert".into(), cert.clone(), "--tls-key".into()]);
        demo.push(key.display().to_string());
        let report = run(&flags, demo).await;
        assert!(report.passed, "{trust:?}: {report}");
        assert!(report.requests.ok > 5, "{report}");
        assert_eq!(report.requests.failed, 0, "{report}");
        let audit = report.audit.as_ref().expect("the audit ran");
        assert!(audit.acknowledged > 5, "{report}");
        assert_eq!(audit.found, audit.acknowledged, "{report}");
    }
    // Without a way to trust the server, an https:// URL is a usage error, before anything starts.
    let ports = Ports::new();
    let cli = [
        "lameduck-drill",
        "--quiet",
        "--url",
        "https://localhost:1/",
        "--",
        "true",
    ];
    let error = drill(&DrillArgs::parse_from(cli)).await.unwrap_err();
    assert!(error.to_string().contains("--cacert"), "{error}");
    let _ = ports;
}
