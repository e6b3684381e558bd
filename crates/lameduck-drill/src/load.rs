//! The HTTP load: workers on keep-alive connections, every request timed and classified. The
//! same loop sends the audit's writes (see [`audit`](crate::audit)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::report::{Kind, Outcome, RequestRecord};
use crate::tls::Trust;

/// How long a worker waits after a refused connection before it tries again, so that a closed
/// listener does not turn the drill into a busy loop.
pub(crate) const REFUSED_PAUSE: Duration = Duration::from_millis(5);

/// How long a connection attempt may take: an address that drops SYNs (a dead host) must not
/// hold a worker for the kernel's two minutes.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `authority` with [`CONNECT_TIMEOUT`], `TCP_NODELAY` set.
pub(crate) async fn tcp(authority: &str) -> Option<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

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
    /// Every request's record, as it ends: a worker cut off at the stop keeps what it did.
    records: Mutex<Vec<RequestRecord>>,
}

/// A URL to load, split for the client.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) uri: Uri,
    /// `host:port`, to connect to.
    pub(crate) authority: String,
    /// The host, for TLS's server name.
    pub(crate) host: String,
    /// For an `https://` URL: how its certificate is trusted.
    pub(crate) tls: Option<Trust>,
}

impl Target {
    /// An `http://` URL, or an `https://` one if `trust` can (`--cacert`, `--insecure`).
    pub(crate) fn parse(url: &str, trust: &Trust) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (None, 80),
            Some("https") if trust.usable() => (Some(trust.clone()), 443),
            Some("https") => {
                return Err(format!(
                    "`{url}`: an https:// URL needs --cacert PEM (or --insecure)"
                ));
            }
            _ => {
                return Err(format!(
                    "`{url}`: only http:// (HTTP/1.1, or h2c with --http2) and https:// URLs"
                ));
            }
        };
        let host = uri.host().ok_or_else(|| format!("`{url}`: no host"))?;
        let port = uri.port_u16().unwrap_or(default_port);
        Ok(Target {
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            tls,
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
            records: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.began).as_secs_f64() * 1000.0
    }

    /// Marks `at` as the moment of the signal (the keep-alive race's retries start there).
    pub(crate) fn signal_sent(&self, at: Instant) {
        let at_us = u64::try_from(at.saturating_duration_since(self.began).as_micros())
            .unwrap_or(u64::MAX - 1);
        self.signal_at_us.store(at_us, Ordering::Release);
    }

    /// Whether the signal has been sent.
    pub(crate) fn signalled(&self) -> bool {
        self.signal_at_us.load(Ordering::Acquire) != u64::MAX
    }

    fn after_signal(&self, at: Instant) -> bool {
        let signal = self.signal_at_us.load(Ordering::Acquire);
        let at = u64::try_from(at.saturating_duration_since(self.began).as_micros()).unwrap_or(0);
        signal != u64::MAX && at >= signal
    }

    /// Counts `record` and keeps it.
    pub(crate) fn record(&self, record: RequestRecord) {
        let counter = match record.outcome {
            Outcome::Ok => &self.ok,
            Outcome::Refused => &self.refused,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut records) = self.records.lock() {
            records.push(record);
        }
    }

    /// The records so far, taken.
    pub(crate) fn take_records(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

/// One HTTP request to send.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) target: Target,
    pub(crate) body: Bytes,
}

impl Request {
    /// A GET of `target`.
    pub(crate) fn get(target: &Target) -> Request {
        Request {
            method: Method::GET,
            target: target.clone(),
            body: Bytes::new(),
        }
    }

    /// Whether a client may send it again when a reused connection closed under it (RFC 9110
    /// §9.2.2: idempotent methods).
    fn idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        )
    }
}

/// An HTTP/1.1 or h2c connection.
pub(crate) enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
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

/// Connects to `target`'s address (with TLS for an `https://` one, speaking what ALPN chose);
/// `None` if nothing listens, or the connection was closed before the handshake finished.
pub(crate) async fn connect(target: &Target, http2: bool) -> Option<Conn> {
    let tcp = tcp(&target.authority).await?;
    let Some(trust) = &target.tls else {
        return handshake(TokioIo::new(tcp), http2).await;
    };
    let (stream, h2) = trust.connect(&target.host, tcp, http2).await?;
    handshake(TokioIo::new(stream), h2).await
}

/// hyper's handshake on `io`, HTTP/2 or HTTP/1.1.
async fn handshake<T>(io: TokioIo<T>, http2: bool) -> Option<Conn>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .ok()?;
        tokio::spawn(conn);
        Some(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(conn);
        Some(Conn::H1(send))
    }
}

impl Conn {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Conn::H1(send) => send.is_closed(),
            Conn::H2(send) => send.is_closed(),
        }
    }

    /// Sends `request`; the status and the whole body.
    async fn send(&mut self, request: &Request) -> Result<(u16, Bytes), SendError> {
        let built = http::Request::builder()
            .method(request.method.clone())
            .uri(request.target.uri.clone())
            .header(http::header::HOST, request.target.authority.as_str())
            .body(Full::new(request.body.clone()))
            .map_err(|e| SendError::BeforeHead(e.to_string()))?;
        let sent = match self {
            Conn::H1(send) => {
                send.ready().await.map_err(|_| SendError::NotSent)?;
                send.send_request(built).await
            }
            Conn::H2(send) => {
                send.ready().await.map_err(|_| SendError::NotSent)?;
                send.send_request(built).await
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
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::Truncated(status, error_chain(&e)))?;
        Ok((status, body.to_bytes()))
    }
}

pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How one attempt to send a request went.
pub(crate) enum Attempt {
    /// A whole response: its status and body.
    Answered(u16, Bytes),
    /// Never sent: the connection had closed.
    NotSent,
    /// Sent, and no response: the connection closed under it.
    Lost(String),
    /// Sent, and no response within the request timeout: the server held it (never retried).
    TimedOut(String),
    /// The head came, the body did not finish.
    Truncated(u16, String),
}

/// Sends `request` on `conn`, within `timeout`.
pub(crate) async fn send(conn: &mut Conn, request: &Request, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, conn.send(request)).await {
        Ok(Ok((status, body))) => Attempt::Answered(status, body),
        Ok(Err(SendError::NotSent)) => Attempt::NotSent,
        Ok(Err(SendError::BeforeHead(e))) => Attempt::Lost(format!("no response: {e}")),
        Ok(Err(SendError::Truncated(status, e))) => {
            Attempt::Truncated(status, format!("response truncated: {e}"))
        }
        Err(_) => Attempt::TimedOut(format!("timed out after {timeout:?}")),
    }
}

/// A request's end, as the load counts it.
pub(crate) struct Sent {
    pub(crate) record: RequestRecord,
    /// The status, for an answered request.
    pub(crate) answered: Option<u16>,
}

/// A worker's connection: kept across requests while the server keeps it open.
#[derive(Default)]
pub(crate) struct Slot {
    conn: Option<Conn>,
}

impl Slot {
    /// Sends `request` as a client would: on the kept connection (a new one if the server
    /// closed it); once more on a new connection if the server closed a reused one under an
    /// idempotent request after the signal (the keep-alive race). `None`: never sent (the
    /// server closed the connection first); the caller sends it again, uncounted.
    pub(crate) async fn send(
        &mut self,
        shared: &Shared,
        kind: Kind,
        worker: u16,
        request: &Request,
    ) -> Option<Sent> {
        let start = Instant::now();
        let record = |outcome, status, error: Option<String>, retried| RequestRecord {
            kind,
            grpc_status: None,
            start_ms: shared.ms(start),
            end_ms: shared.ms(Instant::now()),
            outcome,
            worker,
            status,
            retried,
            error,
        };
        let reused = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        if !reused {
            self.conn = connect(&request.target, shared.http2).await;
            if self.conn.is_none() {
                return Some(Sent {
                    record: record(Outcome::Refused, None, None, false),
                    answered: None,
                });
            }
        }
        let conn = self.conn.as_mut()?;
        let timeout = shared.request_timeout;
        let (attempt, retried) = match send(conn, request, timeout).await {
            Attempt::NotSent => {
                // The server closed the connection before this request went out: nothing was
                // accepted; the caller tries again on a new connection (not counted).
                self.conn = None;
                return None;
            }
            Attempt::Lost(error)
                if reused && request.idempotent() && shared.after_signal(start) =>
            {
                // A reused connection closed under a request sent after the signal, with no
                // response: the keep-alive race every HTTP client retries for idempotent
                // requests. Retry once on a new connection; its outcome counts.
                self.conn = connect(&request.target, shared.http2).await;
                match self.conn.as_mut() {
                    None => (Attempt::NotSent, true),
                    Some(fresh) => match send(fresh, request, timeout).await {
                        Attempt::Lost(retry) => {
                            (Attempt::Lost(format!("{error}; retried: {retry}")), true)
                        }
                        other => (other, true),
                    },
                }
            }
            other => (other, false),
        };
        let sent = match attempt {
            Attempt::Answered(status, _) => Sent {
                record: record(classify(status), Some(status), None, retried),
                answered: Some(status),
            },
            Attempt::NotSent => Sent {
                record: record(Outcome::Refused, None, None, retried),
                answered: None,
            },
            Attempt::Lost(error) | Attempt::TimedOut(error) => {
                self.conn = None;
                Sent {
                    record: record(Outcome::Failed, None, Some(error), retried),
                    answered: None,
                }
            }
            Attempt::Truncated(status, error) => {
                self.conn = None;
                Sent {
                    record: record(Outcome::Failed, Some(status), Some(error), retried),
                    answered: None,
                }
            }
        };
        let mut sent = sent;
        if sent.record.outcome == Outcome::Failed && sent.record.error.is_none() {
            sent.record.error = Some(format!("status {}", sent.record.status.unwrap_or(0)));
        }
        Some(sent)
    }
}

/// One worker: GETs of the URLs in turn on one keep-alive connection (a new one when the
/// server closes it), until the drill stops the load.
pub(crate) async fn worker(shared: Arc<Shared>, worker: u16) {
    let mut slot = Slot::default();
    let mut next = usize::from(worker);
    while !shared.stop.load(Ordering::Acquire) {
        let request = Request::get(&shared.urls[next % shared.urls.len()]);
        next += 1;
        let Some(sent) = slot.send(&shared, Kind::Http, worker, &request).await else {
            continue;
        };
        let refused = sent.record.outcome == Outcome::Refused;
        shared.record(sent.record);
        if refused {
            tokio::time::sleep(REFUSED_PAUSE).await;
        }
    }
}

fn classify(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::Failed
    } else {
        Outcome::Ok
    }
}
