//! The limits of normal serving, with real clients (hyper's, and raw TCP for what a client
//! library would not send): the header and idle timeouts kept apart, an idle HTTP/2 connection
//! sent GOAWAY although it pings, a stalled request body ended the way each protocol allows,
//! and the client errors the report counts (a head too large, an HTTP/2 flood or protocol
//! error).
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lameduck::ExitCode;
use lameduck::grpc::GrpcServer;
use lameduck::http::HttpServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
const WAIT: Duration = Duration::from_secs(10);

mod support;
use support::{InProcess, h2 as raw_h2};

fn app() -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast\n" }))
        .route("/sleep/{ms}", support::sleep())
        // Reads the whole body, then says how long it was.
        .route(
            "/upload",
            post(|body: Bytes| async move { format!("{} bytes\n", body.len()) }),
        )
}

/// A keep-alive connection that has had one `GET /fast` answered: idle now.
async fn answered_once(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    get_fast(&mut stream).await;
    stream
}

async fn get_fast(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Whether the peer closes `stream` within `within` (EOF or reset), reading and keeping what
/// comes.
async fn closed_within(stream: &mut TcpStream, within: Duration, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_and_the_header_timeout_are_apart() {
    let (header, idle) = (Duration::from_millis(400), Duration::from_millis(1500));
    let running = InProcess::start(
        HttpServer::bind("127.0.0.1:0", app())
            .header_timeout(header)
            .idle_timeout(idle),
    )
    .await;
    let mut got = Vec::new();

    // Idle: open past the header timeout (hyper's header-read timeout would close it there),
    // closed at the idle timeout.
    let began = Instant::now();
    let mut idle_conn = answered_once(running.addr).await;
    // A head begun, and never finished: closed at the header timeout, long before the idle one.
    let mut trickled = answered_once(running.addr).await;
    trickled
        .write_all(b"GET /fast HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(
        closed_within(&mut trickled, WAIT, &mut got).await,
        "trickled head"
    );
    let trickled_took = began.elapsed();
    assert!(trickled_took >= header, "{trickled_took:?}");
    // A body the app did not read (a 404): hyper drains it, and the connection is idle after.
    let mut unread = TcpStream::connect(running.addr).await.unwrap();
    let post =
        b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n01234567890123456789";
    unread.write_all(post).await.unwrap();
    let mut buf = [0u8; 512];
    let n = unread.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    assert!(
        !closed_within(&mut idle_conn, header * 2, &mut got).await,
        "closed by a header timeout while idle"
    );
    assert!(
        !closed_within(&mut unread, Duration::from_millis(50), &mut got).await,
        "closed by a header timeout after an unread body"
    );
    // A busy client: a request every 300 ms keeps its connection for longer than the idle
    // timeout, as the idle time counts from the last response.
    let mut busy = answered_once(running.addr).await;
    let until = Instant::now() + idle + Duration::from_millis(500);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        get_fast(&mut busy).await;
    }
    assert!(closed_within(&mut idle_conn, WAIT, &mut got).await, "idle");
    assert!(
        closed_within(&mut unread, WAIT, &mut got).await,
        "idle after its body"
    );
    let idle_took = began.elapsed();
    assert!(idle_took >= idle, "{idle_took:?}");
    assert!(got.is_empty(), "closed quietly: {got:?}");

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let serving = report.services[0].serving;
    assert_eq!(serving.header_timeouts, 1, "{report}");
    assert_eq!(serving.idle_timeouts, 2, "{report}");
    assert_eq!(serving.handshake_timeouts, 0, "{report}");
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection that pings every 100 ms, and answers the server's pings.
async fn h2_pinging(addr: SocketAddr) -> (H2, JoinHandle<hyper::Result<()>>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(io)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

async fn get_h2(send: &mut H2, path: &str) -> Result<StatusCode, hyper::Error> {
    send.ready().await?;
    let request = http::Request::get(format!("http://t{path}"))
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_although_it_pings_and_a_busy_one_does_not() {
    let idle = Duration::from_millis(800);
    let running = InProcess::start(HttpServer::bind("127.0.0.1:0", app()).idle_timeout(idle)).await;
    let (mut send, conn) = h2_pinging(running.addr).await;
    // A stream that runs for longer than the idle timeout: the connection is busy, not idle.
    assert_eq!(
        get_h2(&mut send, "/sleep/1500").await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(get_h2(&mut send, "/fast").await.unwrap(), StatusCode::OK);
    // Then idle, pinging: GOAWAY, and the connection ends cleanly.
    let began = Instant::now();
    let ended = tokio::time::timeout(WAIT, conn).await;
    let took = began.elapsed();
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    assert!(took >= idle / 2, "too early: {took:?}");
    assert!(send.is_closed());
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].serving.idle_timeouts, 1, "{report}");
    assert_eq!(report.services[0].requests.aborted, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http1_body_gets_408_and_a_slow_one_is_read_to_its_end() {
    let timeout = Duration::from_secs(1);
    let running =
        InProcess::start(HttpServer::bind("127.0.0.1:0", app()).body_timeout(timeout)).await;
    let head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n";

    // Stalled after 5 of its 20 bytes: 408 and the connection closed.
    let mut stalled = TcpStream::connect(running.addr).await.unwrap();
    stalled.write_all(head).await.unwrap();
    stalled.write_all(b"12345").await.unwrap();
    let began = Instant::now();
    let mut got = Vec::new();
    assert!(closed_within(&mut stalled, WAIT, &mut got).await);
    let took = began.elapsed();
    let answer = String::from_utf8_lossy(&got).to_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(took >= timeout, "{took:?}");

    // Slow, but never stalled for the timeout: each chunk starts it again.
    let mut slow = TcpStream::connect(running.addr).await.unwrap();
    slow.write_all(head).await.unwrap();
    for chunk in [b"1234", b"5678", b"9012", b"3456", b"7890"] {
        // A fifth of the timeout apart: room for a slow machine.
        tokio::time::sleep(timeout / 5).await;
        slow.write_all(chunk).await.unwrap();
    }
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("20 bytes\n"), "{answer}");

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let web = &report.services[0];
    assert_eq!(web.serving.body_timeouts, 1, "{report}");
    assert_eq!(web.requests.total, 2, "{report}");
    assert_eq!(web.requests.aborted, 0, "{report}");
}

type Chunks = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
type Chunked = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// An HTTP/2 connection whose requests have bodies sent chunk by chunk.
async fn h2_streaming(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Chunks> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake::<_, _, Chunks>(TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A body that has sent `first`, and the sender of the rest (dropped: the end).
async fn chunked(first: &'static [u8]) -> (Chunked, Chunks) {
    let (chunks, rx) = mpsc::channel(4);
    chunks
        .send(Ok(Frame::data(Bytes::from_static(first))))
        .await
        .unwrap();
    (chunks, StreamBody::new(ReceiverStream::new(rx)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_resets_its_stream_and_the_connection_goes_on() {
    let timeout = Duration::from_millis(400);
    let running =
        InProcess::start(HttpServer::bind("127.0.0.1:0", app()).body_timeout(timeout)).await;
    let mut send = h2_streaming(running.addr).await;
    let (chunks, body) = chunked(b"12345").await;
    let request = http::Request::post("http://t/upload").body(body).unwrap();
    send.ready().await.unwrap();
    let answer = tokio::time::timeout(WAIT, send.send_request(request))
        .await
        .expect("answered");
    let error = answer.expect_err("a reset, not a response");
    let reason = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::CANCEL), "{error:?}");
    // The body is still open on the client's side; the connection serves on.
    drop(chunks);
    let (whole, body) = chunked(b"abc").await;
    drop(whole);
    let request = http::Request::post("http://t/upload").body(body).unwrap();
    send.ready().await.unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"3 bytes\n");

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].serving.body_timeouts, 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_grpc_request_ends_with_status_cancelled_and_grpc_has_no_body_timeout_unless_asked()
 {
    let timeout = Duration::from_millis(400);
    for on in [true, false] {
        let server = GrpcServer::bind("127.0.0.1:0");
        let server = if on {
            server.body_timeout(timeout)
        } else {
            server
        };
        let running = InProcess::start(server).await;
        let mut send = h2_streaming(running.addr).await;
        // A health check whose message stops after 3 of its 5-byte frame header.
        let (chunks, body) = chunked(b"\x00\x00\x00").await;
        let request = http::Request::post("http://t/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        send.ready().await.unwrap();
        let answer = tokio::time::timeout(timeout * 4, send.send_request(request)).await;
        if on {
            let response = answer.expect("answered").unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], "1", "{response:?}");
            let message = response.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("timed out"), "{message}");
        } else {
            assert!(answer.is_err(), "off by default: still waiting");
        }
        drop(chunks);
        let report = running.report().await;
        assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
        let expected = u64::from(on);
        assert_eq!(
            report.services[0].serving.body_timeouts, expected,
            "{report}"
        );
    }
}

/// The GOAWAY's error code the server sends for `frames` after the preface, if any.
async fn goaway_for(addr: SocketAddr, frames: &[u8]) -> Option<u32> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw_h2::HELLO).await.unwrap();
    // The server may close while this is still being written: what it said is what counts.
    let _ = stream.write_all(frames).await;
    let mut got = Vec::new();
    closed_within(&mut stream, WAIT, &mut got).await;
    // The GOAWAY's code is after its last stream id.
    raw_h2::split_frames(&mut got)
        .into_iter()
        .find(|(kind, _, _, payload)| *kind == raw_h2::GOAWAY && payload.len() >= 8)
        .map(|(_, _, _, payload)| {
            u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_too_large_and_http2_floods_and_protocol_errors_are_counted() {
    let running = InProcess::start(HttpServer::bind("127.0.0.1:0", app())).await;

    // HTTP/1: a head over hyper's buffer limit gets 431.
    let mut big = TcpStream::connect(running.addr).await.unwrap();
    let mut head = b"GET /fast HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    head.resize(head.len() + (1 << 20), b'a');
    let _ = big.write_all(&head).await;
    let mut got = Vec::new();
    assert!(closed_within(&mut big, WAIT, &mut got).await);
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // HTTP/2, a protocol error: DATA on stream 0.
    let code = goaway_for(running.addr, &raw_h2::frame(raw_h2::DATA, 0x0, 0, b"x")).await;
    assert_eq!(code, Some(0x1), "PROTOCOL_ERROR");

    // HTTP/2, the rapid reset: streams opened and reset at once, many of them.
    let mut flood = Vec::new();
    // :method GET, :scheme http, :path /, :authority t.
    let headers = [0x82, 0x86, 0x84, 0x41, 0x01, b't'];
    for stream in (1..2000u32).step_by(2) {
        flood.extend(raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_HEADERS,
            stream,
            &headers,
        ));
        flood.extend(raw_h2::frame(0x3, 0x0, stream, &8u32.to_be_bytes()));
    }
    let code = goaway_for(running.addr, &flood).await;
    assert_eq!(code, Some(0xb), "ENHANCE_YOUR_CALM");

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let serving = report.services[0].serving;
    assert_eq!(serving.headers_too_large, 1, "{report}");
    assert_eq!(serving.h2_protocol_errors, 1, "{report}");
    assert_eq!(serving.h2_too_many_resets, 1, "{report}");
}
