//! The maximum connection age, with hyper's clients: a busy HTTP/2 connection gets GOAWAY
//! within its age (jittered), its streams finish, and a stream still running after the grace
//! is cut and the connection gone; an HTTP/1 keep-alive client gets `Connection: close` at its
//! age. The report counts both.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::ExitCode;
use lameduck::http::HttpServer;
use tokio::net::TcpStream;

mod support;
use support::InProcess;

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
const WAIT: Duration = Duration::from_secs(10);
/// What a timing may be late by, on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

fn app() -> Router {
    Router::new().route("/sleep/{ms}", support::sleep())
}

fn aged(age_ms: u64, grace_ms: u64) -> HttpServer<Router> {
    HttpServer::bind("127.0.0.1:0", app())
        .max_connection_age(Duration::from_millis(age_ms))
        .max_connection_age_grace(Duration::from_millis(grace_ms))
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2(addr: SocketAddr) -> (H2, tokio::task::JoinHandle<hyper::Result<()>>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

async fn fetch(send: &mut H2, path: &str) -> Result<http::Response<Bytes>, hyper::Error> {
    send.ready().await?;
    let request = http::Request::get(format!("http://t{path}"))
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

#[tokio::test]
async fn a_busy_http2_connection_gets_goaway_at_its_age_and_a_stream_past_the_grace_is_cut() {
    let server = InProcess::start(aged(1000, 1000)).await;
    let connected = Instant::now();
    let (mut send, conn) = h2(server.addr).await;
    // A long stream, begun before the age: it runs past age + grace.
    let mut long_send = send.clone();
    let long = tokio::spawn(async move { fetch(&mut long_send, "/sleep/5000").await });
    // Short requests, one after another, until the connection takes no more: the GOAWAY.
    let mut served = 0;
    let refused_at = loop {
        match fetch(&mut send, "/sleep/20").await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                served += 1;
            }
            Err(_) => break connected.elapsed(),
        }
        assert!(connected.elapsed() < WAIT, "never told to go");
    };
    assert!(served > 10, "it served before its age: {served}");
    // The age is 1 s, moved by up to ±10 %.
    assert!(
        refused_at >= Duration::from_millis(880)
            && refused_at < Duration::from_millis(1100) + SLACK,
        "GOAWAY after {refused_at:?}"
    );
    // The long stream is cut after the grace, and the connection with it.
    let cut = long.await.unwrap();
    assert!(cut.is_err(), "the long stream was cut: {cut:?}");
    let _ = tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection ended");
    let gone = connected.elapsed();
    assert!(
        gone >= Duration::from_millis(1800) && gone < Duration::from_millis(2100) + SLACK,
        "gone after {gone:?}"
    );
    let report = server.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let web = &report.services[0];
    assert_eq!(web.serving.max_connection_age, 1, "{report}");
    assert_eq!(web.serving.max_connection_age_grace, 1, "{report}");
}

#[tokio::test]
async fn streams_that_finish_within_the_grace_finish_and_a_new_connection_serves() {
    let server = InProcess::start(aged(600, 3000)).await;
    let (mut send, conn) = h2(server.addr).await;
    // Begun just before the age, it ends within the grace: it completes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut within = send.clone();
    let finishing = tokio::spawn(async move { fetch(&mut within, "/sleep/1000").await });
    let began = Instant::now();
    while fetch(&mut send, "/sleep/10").await.is_ok() {
        assert!(began.elapsed() < WAIT, "never told to go");
    }
    let done = finishing
        .await
        .unwrap()
        .expect("it finished within the grace");
    assert_eq!(done.status(), 200);
    // Once its streams are done, the connection ends: long before the grace is over.
    let ended = Instant::now();
    let _ = tokio::time::timeout(WAIT, conn).await.unwrap();
    assert!(ended.elapsed() < Duration::from_millis(500) + SLACK);
    // The client reconnects: a new connection serves at once.
    let (mut again, _conn) = h2(server.addr).await;
    assert_eq!(fetch(&mut again, "/sleep/0").await.unwrap().status(), 200);
    let report = server.report().await;
    let web = &report.services[0];
    assert!(web.serving.max_connection_age >= 1, "{report}");
    assert_eq!(web.serving.max_connection_age_grace, 0, "{report}");
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test]
async fn an_http1_keep_alive_client_gets_connection_close_at_its_age() {
    let server = InProcess::start(aged(800, 1000)).await;
    let connected = Instant::now();
    let io = TokioIo::new(TcpStream::connect(server.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let closed_at = loop {
        send.ready().await.unwrap();
        let request = http::Request::get("/sleep/20")
            .header("host", "t")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v == "close");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        if close {
            break connected.elapsed();
        }
        assert!(connected.elapsed() < WAIT, "never told to close");
    };
    assert!(
        closed_at >= Duration::from_millis(700) && closed_at < Duration::from_millis(880) + SLACK,
        "Connection: close after {closed_at:?}"
    );
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection ended")
        .unwrap()
        .unwrap();
    let report = server.report().await;
    assert_eq!(report.services[0].serving.max_connection_age, 1, "{report}");
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_at_its_age() {
    let server = InProcess::start(aged(500, 5000).max_connection_age_jitter(0.0)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /sleep/0 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let closed = began.elapsed();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Closed at its age (0.5 s, no jitter), not after the grace.
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_millis(500) + SLACK,
        "closed after {closed:?}"
    );
    server.report().await;
}
