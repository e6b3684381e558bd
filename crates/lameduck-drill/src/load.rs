//! The load: workers on keep-alive connections, every request timed and classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::report::{Outcome, RequestRecord};

/// How long a worker waits after a refused connection before it tries again, so that a closed
/// listener does not turn the drill into a busy loop.
const REFUSED_PAUSE: Duration = Duration::from_millis(5);

/// What the workers share with the drill.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) began: Instant,
    pub(crate) urls: Vec<Target>,
    pub(crate) http2: bool,
    pub(crate) request_timeout: Duration,
    /// Set once the drill stops the load.
    pub(crate) stop: AtomicBool,
    /// When the signal was sent, in microseconds since `began`; `u64::MAX` before.
    pub(crate) signal_at_us: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// A URL to load, split for the client.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) uri: Uri,
    /// `host:port`, to connect to.
    pub(crate) authority: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "`{url}`: only http:// URLs (cleartext HTTP/1.1, or h2c with --http2)"
            ));
        }
        let host = uri.host().ok_or_else(|| format!("`{url}`: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Target {
            authority: format!("{host}:{port}"),
            uri,
        })
    }
}

impl Shared {
    pub(crate) fn new(
        urls: Vec<Target>,
        http2: bool,
        request_timeout: Duration,
        began: Instant,
    ) -> Self {
        Shared {
            began,
            urls,
            http2,
            request_timeout,
            stop: AtomicBool::new(false),
            signal_at_us: AtomicU64::new(u64::MAX),
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.began).as_secs_f64() * 1000.0
    }

    fn after_signal(&self, at: Instant) -> bool {
        let signal = self.signal_at_us.load(Ordering::Acquire);
        let at = u64::try_from(at.saturating_duration_since(self.began).as_micros()).unwrap_or(0);
        signal != u64::MAX && at >= signal
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Refused => &self.refused,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// How a request on a connection went wrong.
enum SendError {
    /// Never sent: the connection was closed before the request could go out.
    NotSent,
    /// Sent, and no response head came back.
    BeforeHead(String),
    /// The response head came, the body did not finish.
    Truncated(u16, String),
}

enum ConnectError {
    /// Nothing listens (or the connection was closed before the handshake finished).
    Refused,
}

async fn connect(target: &Target, http2: bool) -> Result<Conn, ConnectError> {
    let stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|_| ConnectError::Refused)?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if http2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| ConnectError::Refused)?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|_| ConnectError::Refused)?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(send) => send.is_closed(),
            Conn::H2(send) => send.is_closed(),
        }
    }

    async fn get(&mut self, target: &Target) -> Result<u16, SendError> {
        let request = http::Request::get(target.uri.clone())
            .header(http::header::HOST, target.authority.as_str())
            .body(Empty::new())
            .map_err(|e| SendError::BeforeHead(e.to_string()))?;
        let sent = match self {
            Conn::H1(send) => {
                send.ready().await.map_err(|_| SendError::NotSent)?;
                send.send_request(request).await
            }
            Conn::H2(send) => {
                send.ready().await.map_err(|_| SendError::NotSent)?;
                send.send_request(request).await
            }
        };
        let response = sent.map_err(|e| {
            if e.is_canceled() {
                SendError::NotSent
            } else {
                SendError::BeforeHead(error_chain(&e))
            }
        })?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::Truncated(status, error_chain(&e)))?;
        Ok(status)
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One worker: requests in a loop on one keep-alive connection (a new one when the server
/// closes it), until the drill stops the load.
pub(crate) async fn worker(shared: Arc<Shared>, worker: u16) -> Vec<RequestRecord> {
    let mut records = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut next = usize::from(worker);
    while !shared.stop.load(Ordering::Acquire) {
        let target = &shared.urls[next % shared.urls.len()];
        next += 1;
        let start = Instant::now();
        let record = |outcome, status, error: Option<String>, retried| RequestRecord {
            start_ms: shared.ms(start),
            end_ms: shared.ms(Instant::now()),
            outcome,
            worker,
            status,
            retried,
            error,
        };
        let reused = conn.as_ref().is_some_and(|c| !c.is_closed());
        if !reused {
            match connect(target, shared.http2).await {
                Ok(fresh) => conn = Some(fresh),
                Err(ConnectError::Refused) => {
                    conn = None;
                    shared.count(Outcome::Refused);
                    records.push(record(Outcome::Refused, None, None, false));
                    tokio::time::sleep(REFUSED_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let (outcome, status, error, retried) = match send(c, target, &shared).await {
            Attempt::Answered(status) => (classify(status), Some(status), None, false),
            Attempt::NotSent => {
                // The server closed the connection before this request went out: nothing
                // was accepted; try again on a new connection (not counted).
                conn = None;
                continue;
            }
            Attempt::Lost(error) if reused && shared.after_signal(start) => {
                // A reused connection closed under a request sent after the signal, with no
                // response: the keep-alive race every HTTP client retries for idempotent
                // requests. Retry once on a new connection; its outcome counts.
                conn = None;
                match connect(target, shared.http2).await {
                    Err(ConnectError::Refused) => (Outcome::Refused, None, None, true),
                    Ok(mut fresh) => {
                        let retry = send(&mut fresh, target, &shared).await;
                        conn = Some(fresh);
                        match retry {
                            Attempt::Answered(status) => {
                                (classify(status), Some(status), None, true)
                            }
                            Attempt::NotSent => (Outcome::Refused, None, None, true),
                            Attempt::Lost(retry_error) => (
                                Outcome::Failed,
                                None,
                                Some(format!("{error}; retried: {retry_error}")),
                                true,
                            ),
                            Attempt::Truncated(status, e) => {
                                (Outcome::Failed, Some(status), Some(e), true)
                            }
                        }
                    }
                }
            }
            Attempt::Lost(error) => {
                conn = None;
                (Outcome::Failed, None, Some(error), false)
            }
            Attempt::Truncated(status, error) => {
                conn = None;
                (Outcome::Failed, Some(status), Some(error), false)
            }
        };
        let error = error.or_else(|| {
            (outcome == Outcome::Failed).then(|| format!("status {}", status.unwrap_or(0)))
        });
        shared.count(outcome);
        records.push(record(outcome, status, error, retried));
    }
    records
}

fn classify(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::Failed
    } else {
        Outcome::Ok
    }
}

/// How one attempt to send a request went.
enum Attempt {
    Answered(u16),
    NotSent,
    Lost(String),
    Truncated(u16, String),
}

async fn send(conn: &mut Conn, target: &Target, shared: &Shared) -> Attempt {
    match tokio::time::timeout(shared.request_timeout, conn.get(target)).await {
        Ok(Ok(status)) => Attempt::Answered(status),
        Ok(Err(SendError::NotSent)) => Attempt::NotSent,
        Ok(Err(SendError::BeforeHead(e))) => Attempt::Lost(format!("no response: {e}")),
        Ok(Err(SendError::Truncated(status, e))) => {
            Attempt::Truncated(status, format!("response truncated: {e}"))
        }
        Err(_) => Attempt::Lost(format!("timed out after {:?}", shared.request_timeout)),
    }
}
