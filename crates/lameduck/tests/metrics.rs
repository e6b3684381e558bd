//! The live metrics (feature `metrics`), scraped over HTTP from a service drained last, through
//! a whole shutdown: readiness and state as they change, the lame-duck delay, in-flight work
//! during the drain, how requests ended and why connections closed, the hooks, and the admin
//! listener itself, which outlives everything and never holds the exit.
//!
//! One Prometheus recorder per test binary (the facade's recorder is global), and the
//! lifecycle's own series are global too: the tests take turns (`cargo test` runs them on
//! threads of one process), and each names its services apart.
#![cfg(all(feature = "metrics", feature = "http"))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lameduck::http::HttpServer;
use lameduck::{ExitCode, Lifecycle, Outcome, Phase};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpStream;
use tokio::sync::Notify;

mod support;

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
const WAIT: Duration = Duration::from_secs(10);

/// The recorder, and this test's turn.
async fn recorder() -> (PrometheusHandle, tokio::sync::MutexGuard<'static, ()>) {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    (prometheus(), turn)
}

fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
        .clone()
}

fn app() -> Router {
    Router::new().route("/sleep/{ms}", support::sleep())
}

/// The admin service: `/metrics` in the Prometheus text format, and `/hang`, which never ends.
fn admin(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/hang", get(std::future::pending::<String>))
}

/// One keep-alive HTTP/1.1 connection (a scraper's).
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    async fn get(&mut self, path: &str) -> Result<(u16, String), hyper::Error> {
        self.sender.ready().await?;
        let request = http::Request::get(path)
            .header("host", "t")
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The samples of a Prometheus text exposition: `name{labels}` (labels sorted) -> value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value.parse().unwrap());
    }
    samples
}

struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// The value of `name` with exactly these labels (in any order).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let mut labels: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            format!("{name}{{{}}}", labels.join(","))
        };
        self.0.get(&key).copied()
    }

    fn state(&self) -> Vec<&str> {
        ["starting", "ready", "draining", "stopped"]
            .into_iter()
            .filter(|s| self.get("lameduck_state", &[("state", s)]) == Some(1.0))
            .collect()
    }
}

async fn scrape(client: &mut Client) -> Scrape {
    let (status, text) = client.get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    Scrape(parse(&text))
}

/// Scrapes until `until` holds (bounded by [`WAIT`]).
async fn scrape_until(client: &mut Client, what: &str, until: impl Fn(&Scrape) -> bool) -> Scrape {
    let began = Instant::now();
    loop {
        let scraped = scrape(client).await;
        if until(&scraped) {
            return scraped;
        }
        assert!(began.elapsed() < WAIT, "never saw {what}: {:?}", scraped.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_whole_shutdown_is_seen_live_from_a_service_drained_last() {
    let (recorder, _turn) = recorder().await;
    let flush = Arc::new(Notify::new());
    let close = Arc::new(Notify::new());
    let (flush_go, close_go) = (Arc::clone(&flush), Arc::clone(&close));
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .lame_duck_delay(Duration::from_millis(400))
        .service("api", HttpServer::bind("127.0.0.1:0", app()))
        .service_drained_last(
            "admin",
            HttpServer::bind("127.0.0.1:0", admin(recorder.clone())),
        )
        .hook(Phase::FLUSH, "flush", move || async move {
            flush_go.notified().await;
            Ok(())
        })
        .hook(Phase::CLOSE, "close", move || async move {
            close_go.notified().await;
            Ok(())
        });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let api: SocketAddr = handle.addresses("api")[0].parse().unwrap();
    let admin: SocketAddr = handle.addresses("admin")[0].parse().unwrap();
    let mut scraper = Client::connect(admin).await;

    let ready = scrape_until(&mut scraper, "ready", |s| {
        s.get("lameduck_ready", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(ready.state(), ["ready"]);
    assert!(ready.get("lameduck_time_to_ready_seconds", &[]).unwrap() > 0.0);
    assert_eq!(
        ready.get("lameduck_shutdown_start_time_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(ready.get("lameduck_lame_duck", &[]), Some(0.0));

    // A slow request, in flight across the signal.
    let mut client = Client::connect(api).await;
    let slow = tokio::spawn(async move { client.get("/sleep/1500").await });
    let busy = scrape_until(&mut scraper, "the slow request in flight", |s| {
        s.get("lameduck_in_flight", &[("service", "api")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        busy.get("lameduck_connections", &[("service", "api")]),
        Some(1.0)
    );

    let signalled = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    handle.shutdown();
    let lame = scrape_until(&mut scraper, "the lame-duck delay", |s| {
        s.get("lameduck_lame_duck", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(lame.get("lameduck_ready", &[]), Some(0.0));
    assert_eq!(lame.state(), ["draining"]);
    let started = lame
        .get("lameduck_shutdown_start_time_seconds", &[])
        .unwrap();
    assert!(
        (started - signalled).abs() < 5.0,
        "{started} vs {signalled}"
    );

    // The drain: the api's listener is closed, its slow request still in flight.
    let draining = scrape_until(&mut scraper, "the drain", |s| {
        s.get("lameduck_lame_duck", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(draining.state(), ["draining"]);
    assert_eq!(
        draining.get("lameduck_in_flight", &[("service", "api")]),
        Some(1.0)
    );
    assert!(
        TcpStream::connect(api).await.is_err(),
        "the api's listener is closed"
    );

    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "slept\n"));

    // The hooks: the admin still serves, on the same keep-alive connection.
    let hooks = scrape_until(&mut scraper, "the drain's end", |s| {
        s.get("lameduck_drain_duration_seconds", &[])
            .is_some_and(|d| d > 0.0)
    })
    .await;
    let api_series =
        |name: &str, label: (&str, &str)| hooks.get(name, &[("service", "api"), label]);
    assert_eq!(
        hooks.get("lameduck_in_flight", &[("service", "api")]),
        Some(0.0)
    );
    assert_eq!(
        hooks.get("lameduck_connections", &[("service", "api")]),
        Some(0.0)
    );
    assert_eq!(
        api_series("lameduck_requests_total", ("outcome", "completed")),
        Some(1.0)
    );
    assert_eq!(
        api_series("lameduck_requests_total", ("outcome", "aborted")),
        Some(0.0)
    );
    assert_eq!(
        api_series(
            "lameduck_connections_closed_total",
            ("reason", "after_response")
        ),
        Some(1.0),
        "the slow request's connection closed after its response: {:?}",
        hooks.0
    );
    assert_eq!(hooks.get("lameduck_deadline_exceeded", &[]), Some(0.0));
    flush.notify_one();
    let after_flush = scrape_until(&mut scraper, "the flush hook's duration", |s| {
        s.get(
            "lameduck_hook_duration_seconds",
            &[
                ("phase", "flush"),
                ("hook", "flush"),
                ("outcome", "completed"),
            ],
        )
        .is_some()
    })
    .await;
    assert_eq!(after_flush.state(), ["draining"]);
    assert!(
        after_flush
            .get("lameduck_in_flight", &[("service", "admin")])
            .unwrap()
            >= 1.0
    );

    // The last hook ends: the admin drains, and its scraper's idle keep-alive connection does
    // not hold the exit.
    let released = Instant::now();
    close.notify_one();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    let lag = released.elapsed();
    assert!(lag < Duration::from_millis(900), "the exit waited {lag:?}");
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let admin_report = &report.services[1];
    assert_eq!(admin_report.name, "admin");
    assert_eq!(admin_report.outcome, Outcome::Stopped, "{report}");
    assert!(
        scraper.get("/metrics").await.is_err(),
        "the admin closed last"
    );
    assert!(TcpStream::connect(admin).await.is_err());
    let after = Scrape(parse(&recorder.render()));
    let closed = |reason| {
        after
            .get(
                "lameduck_connections_closed_total",
                &[("service", "admin"), ("reason", reason)],
            )
            .unwrap()
    };
    // Idle, or answered a moment before the drain (then it gets the keep-alive grace).
    assert_eq!(
        closed("idle_at_drain") + closed("after_response"),
        1.0,
        "{:?}",
        after.0
    );
    assert_eq!(closed("deadline"), 0.0);
}

#[tokio::test]
async fn a_service_drained_last_never_holds_the_drain_and_is_cut_at_its_own_deadline() {
    let (recorder, _turn) = recorder().await;
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .drain_deadline(Duration::from_secs(20))
        .last_drain_deadline(Duration::from_millis(300))
        .service("api2", HttpServer::bind("127.0.0.1:0", app()))
        .service_drained_last(
            "admin2",
            HttpServer::bind("127.0.0.1:0", admin(recorder.clone())),
        );
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let admin: SocketAddr = handle.addresses("admin2")[0].parse().unwrap();
    // A request on the admin that never ends: the drain of the others does not wait for it.
    let mut hanging = Client::connect(admin).await;
    let hang = tokio::spawn(async move { hanging.get("/hang").await });
    let mut scraper = Client::connect(admin).await;
    scrape_until(&mut scraper, "the hanging request", |s| {
        s.get("lameduck_in_flight", &[("service", "admin2")]) == Some(2.0)
    })
    .await;
    drop(scraper);

    let began = Instant::now();
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "the shutdown took {took:?}");
    assert!(
        report.drain.unwrap() < Duration::from_secs(2),
        "the drain did not wait for the admin: {report}"
    );
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert!(!report.deadline_exceeded);
    let admin_report = report.services.iter().find(|s| s.name == "admin2").unwrap();
    assert_eq!(admin_report.outcome, Outcome::Aborted, "{report}");
    assert_eq!(admin_report.requests.aborted, 1, "{report}");
    assert!(hang.await.unwrap().is_err(), "the hanging request was cut");
    let after = Scrape(parse(&recorder.render()));
    assert_eq!(
        after.get(
            "lameduck_requests_total",
            &[("service", "admin2"), ("outcome", "aborted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.get(
            "lameduck_connections_closed_total",
            &[("service", "admin2"), ("reason", "deadline")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn requests_cut_at_the_drain_deadline_are_counted_aborted() {
    let (recorder, _turn) = recorder().await;
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .drain_deadline(Duration::from_millis(200))
        .service("api3", HttpServer::bind("127.0.0.1:0", app()));
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let api: SocketAddr = handle.addresses("api3")[0].parse().unwrap();
    let mut client = Client::connect(api).await;
    let slow = tokio::spawn(async move { client.get("/sleep/30000").await });
    let began = Instant::now();
    while Scrape(parse(&recorder.render())).get("lameduck_in_flight", &[("service", "api3")])
        != Some(1.0)
    {
        assert!(began.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded, "{report}");
    assert!(slow.await.unwrap().is_err());
    let after = Scrape(parse(&recorder.render()));
    let series = |name: &str, label: (&str, &str)| after.get(name, &[("service", "api3"), label]);
    assert_eq!(
        series("lameduck_requests_total", ("outcome", "aborted")),
        Some(1.0)
    );
    assert_eq!(
        series("lameduck_requests_total", ("outcome", "completed")),
        Some(0.0)
    );
    assert_eq!(
        series("lameduck_connections_closed_total", ("reason", "deadline")),
        Some(1.0)
    );
    assert_eq!(
        after.get("lameduck_in_flight", &[("service", "api3")]),
        Some(0.0)
    );
    assert_eq!(
        after.get("lameduck_connections", &[("service", "api3")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_response_of_known_length_is_completed_and_an_idle_connection_closes_idle() {
    let (recorder, _turn) = recorder().await;
    let app = app().route(
        "/stream",
        get(|| async {
            // A streamed body with its length said up front: hyper stops polling it once that
            // much is out, before it has said its own end.
            let chunks =
                ["ab", "cd"].map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c)));
            let body = axum::body::Body::from_stream(tokio_stream::iter(chunks));
            ([(http::header::CONTENT_LENGTH, "4")], body)
        }),
    );
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .service("api4", HttpServer::bind("127.0.0.1:0", app));
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let api: SocketAddr = handle.addresses("api4")[0].parse().unwrap();
    let mut client = Client::connect(api).await;
    assert_eq!(client.get("/stream").await.unwrap(), (200, "abcd".into()));
    let head = http::Request::head("/sleep/0")
        .header("host", "t")
        .body(Empty::new())
        .unwrap();
    client.sender.ready().await.unwrap();
    let response = client.sender.send_request(head).await.unwrap();
    assert_eq!(response.status(), 200);
    // Idle for longer than the keep-alive grace when the drain begins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    while Scrape(parse(&recorder.render())).get(
        "lameduck_requests_total",
        &[("service", "api4"), ("outcome", "completed")],
    ) != Some(2.0)
    {
        assert!(
            began.elapsed() < WAIT,
            "both completed: {}",
            recorder.render()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let after = Scrape(parse(&recorder.render()));
    let series = |name: &str, label: (&str, &str)| after.get(name, &[("service", "api4"), label]);
    assert_eq!(
        series("lameduck_requests_total", ("outcome", "cancelled")),
        Some(0.0)
    );
    assert_eq!(
        series(
            "lameduck_connections_closed_total",
            ("reason", "idle_at_drain")
        ),
        Some(1.0),
        "{:?}",
        after.0
    );
    assert_eq!(
        series(
            "lameduck_connections_closed_total",
            ("reason", "after_response")
        ),
        Some(0.0)
    );
}
