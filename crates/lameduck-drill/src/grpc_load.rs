//! The gRPC load: workers, each on its own HTTP/2 connection, calling unary and
//! server-streaming methods with requests encoded once (the descriptors come from
//! [`schema`](crate::schema)), every call timed and classified.
//!
//! - **ok**: status OK, and for a stream, its trailers arrived;
//! - **refused**: it never reached a server: the connection was refused, or the call was not
//!   sent (the connection had closed) or not processed (above the server's GOAWAY, or reset with
//!   REFUSED_STREAM). Those a gRPC client retries transparently, once, on a new connection: so
//!   does the drill, and the retry's outcome counts;
//! - **failed**: anything else once the call was accepted: a status other than OK
//!   (UNAVAILABLE, CANCELLED, INTERNAL, ...), a stream cut without trailers, a timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::load::{REFUSED_PAUSE, Shared};
use crate::report::{Kind, Outcome, RequestRecord};
use crate::schema::Call;

/// Messages that are already bytes: requests encoded once, answers left encoded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

/// One HTTP/2 connection as the tower service tonic's client calls.
#[derive(Debug, Clone)]
pub(crate) struct H2(Sender);

type ResponseFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>
            + Send
            + 'static,
    >,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(request))
    }
}

/// A gRPC client on one connection of its own, and word of that connection's end.
pub(crate) struct Client {
    grpc: tonic::client::Grpc<H2>,
    /// Turns `true` when the connection's task has ended.
    ended: tokio::sync::watch::Receiver<bool>,
}

/// How long a call may stay pending once its connection has ended. A call on a connection
/// that is gone can only end with an error; one that does not is stuck in the client library
/// (hyper/h2 can lose a request queued as a GOAWAY arrives: reqwest #1323), not on a server.
const DEAD_CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Connects to `authority` (`host:port`), speaking HTTP/2 with prior knowledge; `None` if
/// it refused (or closed before the handshake was done).
pub(crate) async fn connect(authority: &str) -> Option<Client> {
    let stream = crate::load::tcp(authority).await?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    let (tell, ended) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = tell.send(true);
    });
    let origin = format!("http://{authority}").parse().ok()?;
    Some(Client {
        grpc: tonic::client::Grpc::with_origin(H2(send), origin),
        ended,
    })
}

/// How one call went.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Status OK (a stream: with its trailers); the answer, for a unary call.
    Ok(Option<Bytes>),
    /// It never reached a server's handler (see the module's documentation).
    NotSent,
    /// Accepted, then not OK: the status code's name (none for a timeout), and what happened.
    Failed(Option<&'static str>, String),
}

/// Whether `status` says the call was never processed: not sent (hyper: canceled), above the
/// server's GOAWAY, or refused with REFUSED_STREAM. An accepted stream that the connection's
/// end cuts is an I/O error (a broken pipe), not one of these.
fn not_processed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = error.source();
    }
    false
}

fn failed(status: &tonic::Status) -> Attempt {
    if not_processed(status) {
        return Attempt::NotSent;
    }
    // The causes, each said once (hyper and h2 repeat their sources in their messages).
    let mut detail = format!("{}: {}", code_name(status.code()), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    Attempt::Failed(Some(code_name(status.code())), detail)
}

/// Makes one call of `call` with `request` (its own encoded request if `None`), within
/// `timeout`.
pub(crate) async fn call_once(
    client: &mut Client,
    call: &Call,
    request: Option<Bytes>,
    timeout: std::time::Duration,
) -> Attempt {
    let request = request.unwrap_or_else(|| call.request.clone());
    let mut ended = client.ended.clone();
    let client = &mut client.grpc;
    let attempt = async {
        if client.ready().await.is_err() {
            return Attempt::NotSent;
        }
        let request = tonic::Request::new(request);
        if !call.server_streaming {
            return match client.unary(request, call.path.clone(), Raw).await {
                Ok(answer) => Attempt::Ok(Some(answer.into_inner())),
                Err(status) => failed(&status),
            };
        }
        let mut stream = match client
            .server_streaming(request, call.path.clone(), Raw)
            .await
        {
            // "Trailers-only": the status came in the headers (and tonic has checked it is
            // OK): a stream with no messages, complete.
            Ok(stream) if stream.metadata().get("grpc-status").is_some() => {
                return Attempt::Ok(None);
            }
            Ok(stream) => stream.into_inner(),
            Err(status) => return failed(&status),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => return failed(&status),
            }
        }
        match stream.trailers().await {
            Ok(Some(_)) => Attempt::Ok(None),
            Ok(None) => Attempt::Failed(None, "the stream ended without trailers".to_owned()),
            Err(status) => failed(&status),
        }
    };
    let stuck = async {
        let _ = ended.wait_for(|ended| *ended).await;
        tokio::time::sleep(DEAD_CONNECTION_GRACE).await;
    };
    let attempt = async {
        tokio::select! {
            attempt = attempt => attempt,
            // Never processed by a server that is gone: sent again, as a client would.
            () = stuck => Attempt::NotSent,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(attempt) => attempt,
        Err(_) => Attempt::Failed(None, format!("timed out after {timeout:?}")),
    }
}

/// The canonical name of a status code, as grpc-go and the gRPC docs spell it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC load's target.
#[derive(Debug)]
pub(crate) struct Target {
    /// `host:port`.
    pub(crate) authority: String,
    /// The methods, taken in turn.
    pub(crate) calls: Vec<Call>,
}

/// One call as a client makes it: on the kept connection (a new one if there is none), and
/// if it was not processed, once more on a new connection. The attempt, and whether it was
/// retried.
pub(crate) async fn call_retrying(
    client: &mut Option<Client>,
    authority: &str,
    call: &Call,
    request: Bytes,
    timeout: std::time::Duration,
) -> (Attempt, bool) {
    if client.is_none() {
        *client = connect(authority).await;
    }
    let Some(c) = client.as_mut() else {
        return (Attempt::NotSent, false);
    };
    let attempt = call_once(c, call, Some(request.clone()), timeout).await;
    if !matches!(attempt, Attempt::NotSent) {
        return (attempt, false);
    }
    // Transparently, once, on a new connection: what a gRPC client does.
    *client = connect(authority).await;
    match client.as_mut() {
        Some(c) => (call_once(c, call, Some(request), timeout).await, true),
        None => (Attempt::NotSent, true),
    }
}

/// How an attempt counts: its outcome, status code and error.
pub(crate) fn outcome(
    attempt: Attempt,
    call: &Call,
) -> (Outcome, Option<&'static str>, Option<String>) {
    match attempt {
        Attempt::Ok(_) => (Outcome::Ok, Some("OK"), None),
        Attempt::NotSent => (Outcome::Refused, None, None),
        Attempt::Failed(code, error) => (
            Outcome::Failed,
            code,
            Some(format!("{}: {error}", call.name)),
        ),
    }
}

/// One call, timed, as `kind`: its record (the caller keeps it, and pauses after a refusal).
pub(crate) async fn timed_call(
    shared: &Shared,
    client: &mut Option<Client>,
    authority: &str,
    call: &Call,
    request: Bytes,
    kind: Kind,
    worker: u16,
) -> RequestRecord {
    let start = Instant::now();
    let (attempt, retried) =
        call_retrying(client, authority, call, request, shared.request_timeout).await;
    let (outcome, code, error) = outcome(attempt, call);
    if outcome != Outcome::Ok {
        // Refused, or failed: the next call starts on a new connection.
        *client = None;
    }
    RequestRecord {
        kind,
        start_ms: shared.ms(start),
        end_ms: shared.ms(Instant::now()),
        outcome,
        worker,
        status: None,
        grpc_status: code,
        retried,
        error,
    }
}

/// One worker: calls in a loop on one connection (a new one when the server closes it), until
/// the drill stops the load.
pub(crate) async fn worker(shared: Arc<Shared>, target: Arc<Target>, worker: u16) {
    let mut client: Option<Client> = None;
    let mut next = usize::from(worker);
    while !shared.stop.load(Ordering::Acquire) {
        let call = &target.calls[next % target.calls.len()];
        next += 1;
        let request = call.request.clone();
        let record = timed_call(
            &shared,
            &mut client,
            &target.authority,
            call,
            request,
            Kind::Grpc,
            worker,
        )
        .await;
        let refused = record.outcome == Outcome::Refused;
        shared.record(record);
        if refused {
            tokio::time::sleep(REFUSED_PAUSE).await;
        }
    }
}
