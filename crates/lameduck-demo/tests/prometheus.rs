//! A real Prometheus (Debian package `prometheus`) scrapes the demo's admin listener every
//! 100 ms while the drill runs slow requests and sends SIGTERM; afterwards its query API must
//! show the shutdown as it happened: `lameduck_ready` 1 -> 0 at the signal, the state
//! `draining`, the HTTP server's requests in flight during the drain and none at its end, and
//! scrapes that worked until the process exited. A scraper's keep-alive connection must not
//! hold the exit: the exit lag is the same as without Prometheus.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lameduck_drill::{DrillArgs, DrillReport, drill};
use serde_json::Value;

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::free_port;

const DEMO: &str = env!("CARGO_BIN_EXE_lameduck-demo");

fn temp_dir(name: &str) -> PathBuf {
    tools::fresh_dir("demo-prometheus", name)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Prometheus server of its own (config and data in `dir`), killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\n\
                 scrape_configs:\n  - job_name: demo\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let prometheus = Prometheus { child, addr };
        // Ready, and scraping the target: Prometheus hands targets to its scrapers at most
        // every 5 s, the first time included.
        let began = Instant::now();
        while !prometheus.get("/api/v1/targets").is_some_and(|body| {
            body.contains(&format!("\"scrapeUrl\":\"http://{target}/metrics\""))
        }) {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "Prometheus did not get ready to scrape {target}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn get(&self, path: &str) -> Option<String> {
        tools::curl_get(&format!("http://{}{path}", self.addr))
    }

    /// Every raw sample of `selector` in the last five minutes: (Unix time, value), per series.
    fn samples(&self, selector: &str) -> Vec<Vec<(f64, f64)>> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={selector}[5m]"))
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .unwrap();
        assert!(out.status.success(), "the query of {selector} failed");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                series["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|pair| {
                        let at = pair[0].as_f64().unwrap();
                        let value: f64 = pair[1].as_str().unwrap().parse().unwrap();
                        (at, value)
                    })
                    .collect()
            })
            .collect()
    }

    /// The samples of the one series `selector` names.
    fn series(&self, selector: &str) -> Vec<(f64, f64)> {
        let mut all = self.samples(selector);
        assert_eq!(all.len(), 1, "{selector}: {all:?}");
        all.remove(0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The drill: slow requests (2.5 s) from 8 clients, SIGTERM after 2 s, against the demo with
/// an admin listener on `admin` (serving 300 ms past the hooks, for a last scrape) and a
/// lame-duck delay of 1 s.
/// With `scrape`, the drill scrapes the admin listener too (`--metrics-url`).
async fn run_drill(dir: &Path, admin: &str, scrape: bool) -> DrillReport {
    let http = format!("127.0.0.1:{}", free_port());
    let ready = format!("http://{http}/readyz");
    let slow = format!("http://{http}/slow?ms=2500");
    let (grpc_a, grpc_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let db = dir.join("demo.db").display().to_string();
    let metrics = format!("http://{admin}/metrics");
    let mut cli = vec!["lameduck-drill", "--quiet"];
    if scrape {
        cli.extend(["--metrics-url", &metrics]);
    }
    cli.extend([
        "--ready-url",
        &ready,
        "--url",
        &slow,
        "--concurrency",
        "8",
        "--signal-after",
        "2s",
        "--",
        DEMO,
        "--http",
        &http,
        "--grpc-a",
        &grpc_a,
        "--grpc-b",
        &grpc_b,
        "--admin",
        admin,
        "--lame-duck",
        "1s",
        "--admin-linger",
        "300ms",
        "--db",
        &db,
    ]);
    drill(&DrillArgs::parse_from(cli)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_whole_shutdown_and_its_keep_alive_does_not_hold_the_exit() {
    let Some(binary) = tools::tool("prometheus", "prometheus") else {
        return;
    };
    // Without a scraper first: the exit lag to compare with.
    let alone = run_drill(
        &temp_dir("alone"),
        &format!("127.0.0.1:{}", free_port()),
        false,
    )
    .await;
    assert!(alone.passed, "{alone}");

    let dir = temp_dir("scraped");
    let admin = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(&binary, &dir, &admin);
    let began = unix_now();
    let scraped = run_drill(&dir, &admin, true).await;
    assert!(scraped.passed, "{scraped}");
    let exited = began + scraped.exit_at_ms.unwrap() / 1e3;
    assert!(scraped.in_flight_at_signal > 0, "{scraped}");

    // The shutdown's start, as the demo recorded it (Unix time).
    let start = prometheus
        .series("lameduck_shutdown_start_time_seconds")
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0, f64::max);
    let signal = began + scraped.signal_at_ms / 1e3;
    assert!(
        (start - signal).abs() < 0.5,
        "the shutdown began at {start}, the signal at {signal}"
    );

    // Ready 1 before the signal, 0 after it (a scrape's timestamp is when it began).
    let ready = prometheus.series("lameduck_ready");
    let before: Vec<f64> = ready
        .iter()
        .filter(|(t, _)| *t < start - 0.05)
        .map(|(_, v)| *v)
        .collect();
    let after: Vec<f64> = ready
        .iter()
        .filter(|(t, _)| *t > start + 0.05)
        .map(|(_, v)| *v)
        .collect();
    assert!(before.len() >= 5 && after.len() >= 5, "{ready:?}");
    assert!(
        before.iter().skip(2).all(|v| *v == 1.0),
        "ready before the signal: {ready:?}"
    );
    assert!(
        after.iter().all(|v| *v == 0.0),
        "not ready after it: {ready:?}"
    );

    // Draining from the signal on (the lame-duck delay included).
    let draining = prometheus.series("lameduck_state{state=\"draining\"}");
    assert!(
        draining
            .iter()
            .filter(|(t, _)| *t > start + 0.05)
            .all(|(_, v)| *v == 1.0),
        "{draining:?}"
    );
    let lame_duck = prometheus.series("lameduck_lame_duck");
    assert!(lame_duck.iter().any(|(_, v)| *v == 1.0), "{lame_duck:?}");

    // The slow requests in flight during the drain (after the 1 s lame-duck delay), none at
    // its end.
    let in_flight = prometheus.series("lameduck_in_flight{service=\"http\"}");
    let drain_began = start + 1.05;
    assert!(
        in_flight.iter().any(|(t, v)| *t > drain_began && *v > 0.0),
        "in flight during the drain: {in_flight:?}"
    );
    assert_eq!(in_flight.last().unwrap().1, 0.0, "{in_flight:?}");

    // The scrapes worked until the hooks had finished: a scrape saw both hooks' durations,
    // and the drain's.
    let hooks = prometheus.samples("lameduck_hook_duration_seconds");
    assert_eq!(hooks.len(), 2, "final-flush and close-db: {hooks:?}");
    let drained = prometheus.series("lameduck_drain_duration_seconds");
    assert!(drained.last().unwrap().1 > 0.5, "{drained:?}");
    // And until the exit: the last successful one began within a few intervals of it (the
    // admin listener closes after the hooks and the linger, and the process exits right after).
    let up = prometheus.series("up");
    let last_ok = up
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    assert!(
        exited - last_ok < 0.4,
        "the last scrape that worked began {:.3} s before the exit: {up:?}",
        exited - last_ok
    );

    // A scraper's keep-alive connection did not hold the exit.
    let (lag, lag_alone) = (scraped.exit_lag_ms.unwrap(), alone.exit_lag_ms.unwrap());
    assert!(
        lag < lag_alone + 250.0,
        "exit lag {lag} ms with Prometheus scraping, {lag_alone} ms without"
    );

    // The drill scraped the same series beside Prometheus: readiness fell at the signal, the
    // HTTP server's requests were in flight after it.
    let seen = scraped.metrics.as_ref().expect("the drill's metrics");
    assert!(seen.scrapes_ok > 10, "{scraped}");
    let fell = seen.ready_fell_after_signal_ms.expect("ready fell");
    assert!(
        (0.0..300.0).contains(&fell),
        "ready fell {fell} ms after the signal"
    );
    assert!(
        seen.states_seen.iter().any(|s| s == "draining"),
        "{:?}",
        seen.states_seen
    );
    assert!(
        seen.peak_in_flight_after_signal
            .get("http")
            .is_some_and(|n| *n > 0.0)
    );
    drop(prometheus);
}
