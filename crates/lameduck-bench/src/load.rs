//! Load: throughput clients (HTTP/1.1, HTTP/2, gRPC), and connections held open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck_demo::proto::EchoRequest;
use lameduck_demo::proto::echo_client::EchoClient;
use tokio::net::TcpStream;

/// An HTTP/1.1 client connection.
pub type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

fn get(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    // With a Host header, which HTTP/1.1 requires (Go's server answers 400 without one).
    http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .expect("a valid request")
}

/// An HTTP/1.1 keep-alive connection.
pub async fn h1(addr: SocketAddr) -> Option<H1> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn h2(addr: SocketAddr) -> Option<H2> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// One GET on `send`; whether a complete 200 came back.
pub async fn fetch(send: &mut H1, addr: SocketAddr, path: &str) -> bool {
    if send.ready().await.is_err() {
        return false;
    }
    match send.send_request(get(addr, path)).await {
        Ok(response) => response.status() == 200 && response.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// How one GET on a keep-alive connection went.
pub enum Fetched {
    /// A complete 200.
    Ok,
    /// The connection was closed before the request was taken (not sent, or closed without a
    /// byte of response): an idempotent request is sent again on a new connection.
    NotSent,
    /// Anything else.
    Failed,
}

/// One GET on `send`, classified.
pub async fn fetch_outcome(send: &mut H1, addr: SocketAddr, path: &str) -> Fetched {
    if send.ready().await.is_err() {
        return Fetched::NotSent;
    }
    match send.try_send_request(get(addr, path)).await {
        Ok(response) if response.status() == 200 => match response.into_body().collect().await {
            Ok(_) => Fetched::Ok,
            Err(_) => Fetched::Failed,
        },
        Ok(_) => Fetched::Failed,
        Err(e) if e.message().is_some() || e.error().is_incomplete_message() => Fetched::NotSent,
        Err(_) => Fetched::Failed,
    }
}

/// The measurement window: responses count only inside it.
#[derive(Clone, Copy)]
pub struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    /// Starts after `warmup`, lasts `duration`.
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        let from = Instant::now() + warmup;
        Window {
            from,
            to: from + duration,
        }
    }

    fn count(&self, counter: &AtomicU64) -> bool {
        let now = Instant::now();
        if now >= self.from && now < self.to {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        now < self.to
    }

    fn per_second(&self, counter: &AtomicU64) -> f64 {
        counter.load(Ordering::Relaxed) as f64 / (self.to - self.from).as_secs_f64()
    }
}

/// Requests per second of `GET /` over `conns` HTTP/1.1 keep-alive connections.
pub async fn h1_rps(addr: SocketAddr, conns: usize, window: Window) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let Some(mut send) = h1(addr).await else {
                return;
            };
            while fetch(&mut send, addr, "/").await && window.count(&done) {}
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    window.per_second(&done)
}

/// Requests per second of `GET /` over `conns` HTTP/2 connections, `streams` at once on each.
pub async fn h2_rps(addr: SocketAddr, conns: usize, streams: usize, window: Window) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let Some(send) = h2(addr).await else { continue };
        for _ in 0..streams {
            let (done, mut send) = (Arc::clone(&done), send.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    if send.ready().await.is_err() {
                        return;
                    }
                    let Ok(response) = send.send_request(get(addr, "/")).await else {
                        return;
                    };
                    if response.into_body().collect().await.is_err() || !window.count(&done) {
                        return;
                    }
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    window.per_second(&done)
}

/// Unary `demo.v1.Echo/Echo` calls per second over `conns` channels, `streams` at once on each.
pub async fn grpc_rps(addr: SocketAddr, conns: usize, streams: usize, window: Window) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let Ok(client) = EchoClient::connect(format!("http://{addr}")).await else {
            continue;
        };
        for _ in 0..streams {
            let (done, mut client) = (Arc::clone(&done), client.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let request = EchoRequest {
                        message: "hi".into(),
                        delay_ms: 0,
                    };
                    if client.echo(request).await.is_err() || !window.count(&done) {
                        return;
                    }
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    window.per_second(&done)
}

/// `n` keep-alive connections that each made one request and now sit idle (dropping the
/// vector closes them).
pub async fn idle_keep_alive(addr: SocketAddr, n: usize) -> Vec<H1> {
    let mut held = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..n {
        batch.spawn(async move {
            let mut send = h1(addr).await?;
            fetch(&mut send, addr, "/").await.then_some(send)
        });
        if batch.len() >= 200 || i + 1 == n {
            while let Some(done) = batch.join_next().await {
                if let Ok(Some(send)) = done {
                    held.push(send);
                }
            }
        }
    }
    held
}

/// `n` connections that never send anything.
pub async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(stream) = TcpStream::connect(addr).await {
            held.push(stream);
        }
    }
    held
}

/// `n` connections that sent part of a request's headers, and stalled (a slow or stuck client).
pub async fn half_sent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(mut stream) = TcpStream::connect(addr).await
            && stream
                .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Stalled: ")
                .await
                .is_ok()
        {
            held.push(stream);
        }
    }
    held
}
