//! The HTTP server under a real lifecycle, with real clients: hyper's HTTP/1.1 and HTTP/2
//! client connections, and raw TCP for keep-alive, silent and half-sent connections.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::http::{Health, HttpServer};
use lameduck::{Drain, ExitCode, Lifecycle, LifecycleHandle, Outcome, Report, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;

mod support;
use support::{h2 as raw_h2, wait_refused};

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
const WAIT: Duration = Duration::from_secs(10);

/// The size of `/big`'s body: far more than the socket buffers hold.
const BIG: usize = 16 << 20;

/// The app under test. `/sleep/{ms}` says `started` on the channel when it begins.
fn app(started: mpsc::UnboundedSender<()>) -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast\n" }))
        .route(
            "/sleep/{ms}",
            get(move |Path(ms): Path<u64>| {
                let started = started.clone();
                async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    format!("slept {ms} ms\n")
                }
            }),
        )
        .route("/ticks", get(ticks))
        .route("/big", get(|| async { vec![b'x'; BIG] }))
        .route("/echo", get(upgrade_to_echo))
        .route("/panic", get(panicking))
        .route("/panic-body", get(panicking_body))
}

/// A handler that panics.
async fn panicking() -> &'static str {
    panic!("the handler panicked on purpose")
}

/// A response whose body sends one chunk, then panics.
async fn panicking_body() -> Response {
    use tokio_stream::StreamExt as _;
    let chunks =
        tokio_stream::iter([Ok::<_, std::io::Error>("first\n"), Ok("never")]).map(|chunk| {
            if chunk.as_ref().is_ok_and(|c| *c == "never") {
                panic!("the body panicked on purpose");
            }
            chunk
        });
    Response::new(Body::from_stream(chunks))
}

/// A streaming response that ends itself when the drain begins.
async fn ticks(drain: Drain) -> Response {
    let stop = Box::pin(drain.token().cancelled_owned());
    let tick = tokio::time::interval(Duration::from_millis(20));
    Response::new(Body::new(Ticks { stop, tick }))
}

struct Ticks {
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    tick: tokio::time::Interval,
}

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.tick
            .poll_tick(cx)
            .map(|_| Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

/// Upgrades to a line echo (as a WebSocket handler would), on a task of its own.
async fn upgrade_to_echo(mut req: Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            if io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response
        .headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    response
        .headers_mut()
        .insert("upgrade", "echo".parse().unwrap());
    response
}

struct Running {
    handle: LifecycleHandle,
    run: JoinHandle<Report>,
    addr: SocketAddr,
    started: mpsc::UnboundedReceiver<()>,
}

impl Running {
    async fn report(self) -> Report {
        tokio::time::timeout(WAIT, self.run)
            .await
            .expect("the run ends")
            .unwrap()
    }
}

async fn start(lifecycle: Lifecycle, server: impl FnOnce(Router) -> HttpServer<Router>) -> Running {
    let (tx, started) = mpsc::unbounded_channel();
    let lifecycle = lifecycle
        .handle_signals(false)
        .service("web", server(app(tx)));
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let addr = handle.addresses("web")[0].parse().unwrap();
    Running {
        handle,
        run,
        addr,
        started,
    }
}

/// `lifecycle` with the app on an `HttpServer` of its defaults.
async fn start_with(lifecycle: Lifecycle) -> Running {
    start(lifecycle, |app| HttpServer::bind("127.0.0.1:0", app)).await
}

async fn start_default() -> Running {
    start_with(Lifecycle::new()).await
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h1(addr: SocketAddr) -> (H1, JoinHandle<hyper::Result<()>>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    (send, tokio::spawn(conn))
}

async fn h2(addr: SocketAddr) -> (H2, JoinHandle<hyper::Result<()>>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

fn get_req(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://test{path}"))
        .body(Empty::new())
        .unwrap()
}

/// A response's status, headers and whole body.
async fn fetch(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    send.ready().await.unwrap();
    let response = send.send_request(get_req(path)).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into(),
    )
}

/// A `/sleep/{ms}` request on its own connection, once its handler has started.
async fn slow_in_flight(
    running: &mut Running,
    ms: u64,
) -> JoinHandle<(StatusCode, http::HeaderMap, String)> {
    let (mut send, _) = h1(running.addr).await;
    let path = format!("/sleep/{ms}");
    let slow = tokio::spawn(async move { fetch(&mut send, &path).await });
    running.started.recv().await.unwrap();
    slow
}

async fn fetch_h2(send: &mut H2, path: &str) -> Result<(StatusCode, String), hyper::Error> {
    send.ready().await?;
    let response = send.send_request(get_req(path)).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into()))
}

/// A keep-alive connection that has had one `GET /fast` answered: idle now.
async fn answered_once(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream
}

/// Whether the peer closes `stream` within `within` (EOF or reset), reading and discarding.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http1_and_http2_and_counts_requests() {
    let running = start_default().await;
    let (mut one, _) = h1(running.addr).await;
    for _ in 0..3 {
        let (status, _, body) = fetch(&mut one, "/fast").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fast\n"));
    }
    let (mut two, _) = h2(running.addr).await;
    let (status, body) = fetch_h2(&mut two, "/fast").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fast\n"));

    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let web = &report.services[0];
    assert_eq!(web.outcome, Outcome::Stopped);
    assert_eq!(web.work.total, 2, "two connections: {report}");
    assert_eq!(web.requests.total, 4, "four requests: {report}");
    assert_eq!(web.requests.aborted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_closes_at_drain_start_while_a_slow_request_continues() {
    let mut running = start_default().await;
    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = TcpStream::connect(running.addr).await.unwrap();
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let slow = slow_in_flight(&mut running, 1500).await;

    running.handle.shutdown();
    let shutdown_at = Instant::now();
    assert!(
        closed_within(&mut idle, WAIT).await,
        "the idle keep-alive connection is closed"
    );
    assert!(
        !slow.is_finished(),
        "closed at the drain's start, not its end ({:?} after the shutdown)",
        shutdown_at.elapsed()
    );
    let (status, headers, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slept 1500 ms\n"));
    assert_eq!(headers["connection"], "close", "the last response says so");
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].requests.in_flight_at_drain, 1);
    assert_eq!(report.services[0].requests.drained, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_closes_first_and_the_port_is_bindable_during_the_drain() {
    let mut running = start_default().await;
    let slow = slow_in_flight(&mut running, 1500).await;

    running.handle.shutdown();
    wait_refused(running.addr).await;
    assert!(
        !slow.is_finished(),
        "refused while the slow request continues"
    );
    let other = std::net::TcpListener::bind(running.addr);
    assert!(
        other.is_ok(),
        "another socket binds {} during the drain: {other:?}",
        running.addr
    );
    drop(other);

    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

/// A client that never answers the GOAWAY's PING (so hyper never closes the connection by
/// itself): its open stream finishes and all of it arrives, and the connection is closed a
/// grace after that last response, not a grace after the drain began (which cut a response
/// that ended at that moment), nor at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_that_never_answers_the_goaway_gets_its_stream_then_a_grace() {
    let mut running = start_default().await;
    let mut raw = TcpStream::connect(running.addr).await.unwrap();
    raw.write_all(raw_h2::HELLO).await.unwrap();
    let asked = Instant::now();
    raw.write_all(&raw_h2::get(1, "/sleep/600")).await.unwrap();
    running.started.recv().await.unwrap();
    running.handle.shutdown();

    let (mut got, mut body) = (Vec::new(), Vec::new());
    let (mut goaway, mut ended) = (false, false);
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            for (kind, flags, stream, payload) in raw_h2::split_frames(&mut got) {
                match kind {
                    raw_h2::SETTINGS if flags & raw_h2::ACK == 0 => {
                        let ack = raw_h2::frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]);
                        let _ = raw.write_all(&ack).await;
                    }
                    raw_h2::GOAWAY => goaway = true,
                    raw_h2::DATA if stream == 1 => {
                        body.extend_from_slice(&payload);
                        if flags & raw_h2::END_STREAM != 0 {
                            ended = true;
                        }
                    }
                    // Its PINGs, the GOAWAY's among them, are never answered.
                    _ => {}
                }
            }
        }
    })
    .await;
    let closed = read.expect("the connection is closed before the deadline");
    assert!(goaway, "GOAWAY sent");
    assert_eq!(String::from_utf8_lossy(&body), "slept 600 ms\n");
    assert!(ended, "the stream ended");
    // The stream ends no earlier than 600 ms after it was asked for, and the grace counts
    // 1 s from there: however slow the machine, not before 1.6 s (the old rule, a grace from
    // the drain's start, closed it about 1 s after the request).
    let after = closed - asked;
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "closed {after:?} after the request, not a grace after its response"
    );
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].work.aborted, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_connections_close_at_once() {
    let mut running = start_default().await;
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    let mut partial = TcpStream::connect(running.addr).await.unwrap();
    partial
        .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent_h2 = TcpStream::connect(running.addr).await.unwrap();
    silent_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A request in flight keeps the drain going, to tell "at once" from "at the end".
    let slow = slow_in_flight(&mut running, 1500).await;

    running.handle.shutdown();
    for (what, stream) in [
        ("silent", &mut silent),
        ("half-sent headers", &mut partial),
        ("half-sent HTTP/2 preface", &mut silent_h2),
    ] {
        assert!(closed_within(stream, WAIT).await, "{what}: closed");
        assert!(!slow.is_finished(), "{what}: closed before the drain ended");
    }
    slow.await.unwrap();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].work.total, 4);
    assert_eq!(report.services[0].work.aborted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_goaway_and_finishes_its_open_stream() {
    // Once in about twenty runs of the whole workspace (never alone), the open stream ended
    // with `GoAway(NO_ERROR, Remote)`: what h2's client gives a stream still open when its
    // connection ends after a GOAWAY, whichever side ended it. Both sides' frames and ends are
    // logged (shown only if the test fails), so that the next failure says which it was.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("h2=debug,h2::proto::connection=trace,hyper=debug,lameduck=debug")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let mut running = start_default().await;
    let (mut send, conn) = h2(running.addr).await;
    fetch_h2(&mut send, "/fast").await.unwrap();
    let mut in_flight = send.clone();
    let slow = tokio::spawn(async move { fetch_h2(&mut in_flight, "/sleep/1000").await });
    running.started.recv().await.unwrap();

    let drained = Instant::now();
    running.handle.shutdown();
    wait_refused(running.addr).await;
    // After GOAWAY a new stream on this connection is refused (a client retries elsewhere).
    let began = Instant::now();
    let mut refused = false;
    while began.elapsed() < WAIT && !refused {
        refused = fetch_h2(&mut send, "/fast").await.is_err();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "new streams are refused after GOAWAY");
    let (status, body) = slow.await.unwrap().unwrap_or_else(|error| {
        panic!(
            "the open stream failed {:?} after the drain began: {error:?}",
            drained.elapsed()
        )
    });
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slept 1000 ms\n"));
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the server closes the connection once its streams are done")
        .unwrap()
        .unwrap();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].requests.drained, 1);
}

/// On one thread the order is exact: the next request reaches the server's kernel buffer, and
/// the drain begins, before the reactor has told the connection anything.
#[tokio::test(flavor = "current_thread")]
async fn a_request_unread_in_the_kernel_when_the_drain_begins_is_served() {
    let running = start_default().await;
    let stream = answered_once(running.addr).await;

    // Idle keep-alive now. Write the next request and start the drain without yielding.
    let mut std_stream = stream.into_std().unwrap();
    std::io::Write::write_all(&mut std_stream, b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    running.handle.shutdown();

    let mut stream = TcpStream::from_std(std_stream).unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    // Served (then the connection closes: `read_to_end` returned), not dropped.
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "served, not dropped: {answer:?}"
    );
    assert!(answer.ends_with("fast\n"), "{answer}");
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

#[tokio::test(flavor = "current_thread")]
async fn a_keep_alive_request_sent_just_after_the_drain_began_is_served_not_reset() {
    // The keep-alive race: a busy client sends its next request right after a response, and the
    // drain begins in between. Closing the idle-looking connection would reset that request.
    let running = start_default().await;
    let mut stream = answered_once(running.addr).await;

    running.handle.shutdown();
    // The drain has begun once the listener refuses (one thread: a moment, not the 50 ms).
    let began = Instant::now();
    while TcpStream::connect(running.addr).await.is_ok() {
        assert!(began.elapsed() < WAIT, "the listener never closed");
        tokio::task::yield_now().await;
    }
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        answer.starts_with("http/1.1 200"),
        "served, not reset: {answer:?}"
    );
    assert!(
        answer.contains("connection: close\r\n") && answer.ends_with("fast\n"),
        "its last answer, saying so: {answer}"
    );
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

/// The same on a new connection, with a request longer than the 24 bytes hyper-util reads to
/// tell HTTP/1.1 from HTTP/2.
#[tokio::test(flavor = "current_thread")]
async fn a_first_request_unread_in_the_kernel_when_the_drain_begins_is_served() {
    let running = start_default().await;
    let stream = TcpStream::connect(running.addr).await.unwrap();
    // Accepted, and its connection waiting for the first bytes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut std_stream = stream.into_std().unwrap();
    std::io::Write::write_all(
        &mut std_stream,
        b"GET /fast HTTP/1.1\r\nHost: t\r\nUser-Agent: a-first-request-longer-than-24-bytes\r\n\r\n",
    )
    .unwrap();
    running.handle.shutdown();

    let mut stream = TcpStream::from_std(std_stream).unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "served, not dropped: {answer:?}"
    );
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

/// A connection the kernel completed but the server had not accepted yet when the drain began:
/// closing the listener would reset it, request and all.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_still_in_the_listen_backlog_when_the_drain_begins_is_served() {
    let running = start_default().await;
    // On this thread nothing runs until the next await: the accept loop has not seen this one.
    let mut std_stream = std::net::TcpStream::connect(running.addr).unwrap();
    std::io::Write::write_all(&mut std_stream, b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    running.handle.shutdown();

    std_stream.set_nonblocking(true).unwrap();
    let mut stream = TcpStream::from_std(std_stream).unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "served, not reset: {answer:?}"
    );
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_to_a_slow_reader_is_not_cut_off_by_the_drain() {
    let running = start_default().await;
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The handler is done at once; the body sits in hyper's buffer and the socket's while this
    // client reads nothing, for longer than the drain's idle grace (1 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after the response")
        .unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(answer.len() - head_end, BIG, "the whole body arrived");
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_http2_client_does_not_hold_the_drain() {
    let running = start_with(Lifecycle::new().drain_deadline(Duration::from_secs(60))).await;
    // The client makes one request, then its runtime stops (a frozen process): the
    // connection stays open, and nobody acknowledges the server's GOAWAY.
    let addr = running.addr;
    let (asked, answered) = std::sync::mpsc::channel();
    let (release, frozen) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = runtime.block_on(async move {
            let (mut send, conn) = h2(addr).await;
            let _ = asked.send(fetch_h2(&mut send, "/fast").await.is_ok());
            (send, conn)
        });
        let _ = frozen.recv();
        drop((conn, runtime));
    });
    assert!(answered.recv().unwrap(), "the request was answered");

    let began = Instant::now();
    running.handle.shutdown();
    let report = running.report().await;
    let took = began.elapsed();
    let _ = release.send(());
    client.join().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert!(
        took < Duration::from_secs(5),
        "the drain took {took:?}: it waited on a client that will never answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_ends_when_the_last_response_does() {
    let mut running = start_with(
        // A deadline far away: only the last response can end the drain early.
        Lifecycle::new().drain_deadline(Duration::from_secs(60)),
    )
    .await;
    let (mut slow, _) = h1(running.addr).await;
    let slow = tokio::spawn(async move {
        let out = fetch(&mut slow, "/sleep/800").await;
        (out, Instant::now())
    });
    running.started.recv().await.unwrap();
    running.handle.shutdown();
    let run = running.run;
    let ended = tokio::spawn(async move {
        let report = run.await.unwrap();
        (report, Instant::now())
    });
    let (_, response_at) = slow.await.unwrap();
    let (report, ended_at) = tokio::time::timeout(WAIT, ended).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let lag = ended_at.saturating_duration_since(response_at);
    assert!(
        lag < Duration::from_secs(2),
        "the run ended {lag:?} after the last response (event-driven: about a millisecond)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_closes_what_is_left_and_the_report_counts_it() {
    let mut running = start_with(Lifecycle::new().drain_deadline(Duration::from_millis(300))).await;
    let (mut a, _) = h1(running.addr).await;
    let (mut b, _) = h2(running.addr).await;
    let a = tokio::spawn(async move {
        a.ready().await.unwrap();
        a.send_request(get_req("/sleep/60000")).await
    });
    let b = tokio::spawn(async move { fetch_h2(&mut b, "/sleep/60000").await });
    running.started.recv().await.unwrap();
    running.started.recv().await.unwrap();

    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded, "{report}");
    assert!(report.deadline_exceeded);
    let web = &report.services[0];
    assert_eq!(web.outcome, Outcome::Aborted);
    assert_eq!(web.work.aborted, 2, "two connections closed: {report}");
    assert_eq!(web.requests.aborted, 2, "with a request each: {report}");
    assert!(
        a.await.unwrap().is_err(),
        "the HTTP/1.1 client sees the close"
    );
    assert!(
        b.await.unwrap().is_err(),
        "the HTTP/2 client sees the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_handler_learns_of_the_drain_and_ends_cleanly() {
    let running = start_default().await;
    let (mut send, _) = h1(running.addr).await;
    send.ready().await.unwrap();
    let response = send.send_request(get_req("/ticks")).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "tick\n");

    running.handle.shutdown();
    // The body ends (cleanly: a complete chunked encoding) because the handler saw the drain.
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the stream ends at the drain")
        .expect("cleanly");
    assert!(rest.to_bytes().iter().all(|b| b"tick\n".contains(b)));
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].requests.drained, 1);
}

/// Sends the upgrade request and checks the echo works.
async fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream.write_all(b"ping\n").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping\n");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_holds_the_drain_until_it_ends() {
    let running = start_default().await;
    let mut stream = upgraded(running.addr).await;
    running.handle.shutdown();
    wait_refused(running.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !running.run.is_finished(),
        "the drain waits for the upgraded connection"
    );
    // Still usable during the drain.
    stream.write_all(b"more\n").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    drop(stream);
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    // The upgraded connection, and any probe of `wait_refused` that got in first.
    assert!(report.services[0].work.drained >= 1, "{report}");
    assert_eq!(report.services[0].work.aborted, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_is_closed_at_the_deadline() {
    let running = start_with(Lifecycle::new().drain_deadline(Duration::from_millis(300))).await;
    let mut stream = upgraded(running.addr).await;
    running.handle.shutdown();
    assert!(
        closed_within(&mut stream, WAIT).await,
        "the upgraded connection is closed at the deadline, though no task of ours owns it"
    );
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded, "{report}");
    assert_eq!(report.services[0].work.aborted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_in_the_lame_duck_delay_while_requests_are_served() {
    let running = start_with(Lifecycle::new().lame_duck_delay(Duration::from_millis(1500))).await;
    let (mut send, _) = h1(running.addr).await;
    let (status, headers, body) = fetch(&mut send, "/readyz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(fetch(&mut send, "/livez").await.0, StatusCode::OK);

    running.handle.shutdown();
    running
        .handle
        .subscribe()
        .wait_for(|s| *s == State::Draining)
        .await
        .unwrap();
    let (status, _, body) = fetch(&mut send, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    );
    let (status, _, _) = fetch(&mut send, "/fast").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still serving in the lame-duck delay"
    );
    assert_eq!(fetch(&mut send, "/livez").await.0, StatusCode::OK);
    // A new connection too: the listener is open until the delay ends.
    let (mut fresh, _) = h1(running.addr).await;
    assert_eq!(fetch(&mut fresh, "/fast").await.0, StatusCode::OK);
    assert!(!running.run.is_finished());
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_paths_are_configurable_and_can_live_on_an_admin_port() {
    let (tx, _started) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .lame_duck_delay(Duration::from_millis(800))
        .service(
            "web",
            HttpServer::bind("127.0.0.1:0", app(tx)).without_health(),
        )
        .service(
            "admin",
            HttpServer::health_only("127.0.0.1:0").health(Health::new().readyz("/ready")),
        );
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let web: SocketAddr = handle.addresses("web")[0].parse().unwrap();
    let admin: SocketAddr = handle.addresses("admin")[0].parse().unwrap();

    let (mut w, _) = h1(web).await;
    assert_eq!(
        fetch(&mut w, "/readyz").await.0,
        StatusCode::NOT_FOUND,
        "the app's own"
    );
    let (mut a, _) = h1(admin).await;
    assert_eq!(fetch(&mut a, "/ready").await.0, StatusCode::OK);
    assert_eq!(fetch(&mut a, "/livez").await.0, StatusCode::OK);
    assert_eq!(fetch(&mut a, "/fast").await.0, StatusCode::NOT_FOUND);
    handle.shutdown();
    handle
        .subscribe()
        .wait_for(|s| *s == State::Draining)
        .await
        .unwrap();
    assert_eq!(
        fetch(&mut a, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start_and_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (tx, _) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .service("web", HttpServer::bind(addr, app(tx)));
    let report = tokio::time::timeout(WAIT, lifecycle.run()).await.unwrap();
    assert_eq!(report.exit_code, ExitCode::StartFailed, "{report}");
    let shown = report.trigger.to_string();
    assert!(shown.contains(&addr.to_string()), "{shown}");
    assert!(shown.contains("already in use"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_ipv6_and_an_adopted_listener() {
    let v6 = std::net::TcpListener::bind("[::1]:0");
    let adopted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let adopted_addr = adopted.local_addr().unwrap();
    let (tx, _) = mpsc::unbounded_channel();
    let mut lifecycle = Lifecycle::new().handle_signals(false).service(
        "adopted",
        HttpServer::from_listener(adopted, app(tx.clone())).http1_only(),
    );
    let has_v6 = v6.is_ok();
    drop(v6);
    if has_v6 {
        lifecycle = lifecycle.service(
            "v6",
            HttpServer::bind("[::1]:0", app(tx))
                .only_v6(true)
                .backlog(16),
        );
    } else {
        eprintln!("no IPv6 loopback here: only the adopted listener is tested");
    }
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    assert_eq!(handle.addresses("adopted"), vec![adopted_addr.to_string()]);
    let (mut a, _) = h1(adopted_addr).await;
    assert_eq!(fetch(&mut a, "/fast").await.0, StatusCode::OK);
    if has_v6 {
        let addr: SocketAddr = handle.addresses("v6")[0].parse().unwrap();
        assert!(addr.is_ipv6());
        let (mut v, _) = h1(addr).await;
        assert_eq!(fetch(&mut v, "/fast").await.0, StatusCode::OK);
    }
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

/// What a raw client gets back for `bytes` before the server closes (bounded).
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server keeps the connection open");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_choice_is_enforced_a_server_answers_only_the_versions_it_speaks() {
    let h1 = start(Lifecycle::new(), |app| {
        HttpServer::bind("127.0.0.1:0", app).http1_only()
    })
    .await;
    let h2_only = start(Lifecycle::new(), |app| {
        HttpServer::bind("127.0.0.1:0", app).http2_only()
    })
    .await;
    let get = b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    // Each speaks its own version.
    let answer = answer_to(h1.addr, get).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let (mut send, _) = h2(h2_only.addr).await;
    assert_eq!(
        fetch_h2(&mut send, "/fast").await.unwrap().0,
        StatusCode::OK
    );
    // And closes the other at once, without an answer in either version (no SETTINGS, no
    // `HTTP/1.1 505`).
    let answer = answer_to(h1.addr, raw_h2::HELLO).await;
    assert!(
        answer.is_empty(),
        "HTTP/1-only answered the preface: {answer:?}"
    );
    let answer = answer_to(h2_only.addr, get).await;
    assert!(
        answer.is_empty(),
        "HTTP/2-only answered HTTP/1: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Health included: an HTTP/1 `/readyz` on an HTTP/2-only port gets nothing either.
    let answer = answer_to(h2_only.addr, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    for running in [h1, h2_only] {
        running.handle.shutdown();
        assert_eq!(running.report().await.exit_code, ExitCode::Clean);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let running = start(Lifecycle::new(), |app| {
        HttpServer::bind("127.0.0.1:0", app).handshake_timeout(timeout)
    })
    .await;
    let began = Instant::now();
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    let mut half_head = TcpStream::connect(running.addr).await.unwrap();
    half_head
        .write_all(b"GET /fast HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut half_preface = TcpStream::connect(running.addr).await.unwrap();
    half_preface.write_all(&raw_h2::HELLO[..10]).await.unwrap();
    let mut preface_only = TcpStream::connect(running.addr).await.unwrap();
    preface_only.write_all(&raw_h2::HELLO[..24]).await.unwrap();
    // One that spoke in time stays, idle, past the timeout.
    let mut spoke = answered_once(running.addr).await;
    for stream in [
        &mut silent,
        &mut half_head,
        &mut half_preface,
        &mut preface_only,
    ] {
        assert!(closed_within(stream, WAIT).await, "closed");
    }
    let took = began.elapsed();
    assert!(took >= timeout, "not before the timeout: {took:?}");
    assert!(
        !closed_within(&mut spoke, Duration::from_millis(200)).await,
        "a keep-alive client stays"
    );
    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean);
    assert_eq!(
        report.services[0].serving.handshake_timeouts, 4,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_a_500_is_counted_and_the_server_goes_on() {
    let running = start_default().await;
    // HTTP/1: a 500 that closes the connection.
    let answer = answer_to(running.addr, b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 500"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    // HTTP/2: a 500 on the stream; the connection goes on.
    let (mut send, _) = h2(running.addr).await;
    assert_eq!(
        fetch_h2(&mut send, "/panic").await.unwrap().0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        fetch_h2(&mut send, "/fast").await.unwrap(),
        (StatusCode::OK, "fast\n".into())
    );
    // A body that panics once it has begun: the stream is reset, not ended as if complete.
    let cut = fetch_h2(&mut send, "/panic-body").await;
    assert!(cut.is_err(), "{cut:?}");
    assert_eq!(
        fetch_h2(&mut send, "/fast").await.unwrap().0,
        StatusCode::OK
    );
    // HTTP/1: the connection is cut (hyper may not even flush the head it had buffered);
    // what came, if anything, never ends like a complete chunked body.
    let answer = answer_to(running.addr, b"GET /panic-body HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.ends_with("0\r\n\r\n"), "looks complete: {answer:?}");
    // And the server still serves.
    let (mut h1, _) = h1(running.addr).await;
    assert_eq!(fetch(&mut h1, "/fast").await.0, StatusCode::OK);
    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let web = &report.services[0];
    assert_eq!(web.serving.panics, 4, "{report}");
    assert_eq!(web.requests.total, 7, "{report}");
    assert_eq!(web.requests.aborted, 0, "every request ended: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_newcomers_wait_in_the_queue_and_are_served_once_a_slot_frees() {
    let running = start(Lifecycle::new(), |app| {
        HttpServer::bind("127.0.0.1:0", app).max_connections(2)
    })
    .await;
    let first = answered_once(running.addr).await;
    let _second = answered_once(running.addr).await;
    // The third is queued by the kernel, not accepted: its request waits, unanswered, and the
    // connection is not closed either.
    let mut third = TcpStream::connect(running.addr).await.unwrap();
    third
        .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(300), third.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "answered (or closed) past the cap: {answer:?}"
    );
    // A slot frees: the third is taken and served.
    drop(first);
    let served = tokio::time::timeout(WAIT, third.read_to_end(&mut answer)).await;
    assert!(served.is_ok());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert!(report.services[0].serving.at_cap >= 1, "{report}");
}
