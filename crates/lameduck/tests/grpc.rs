//! Two gRPC servers under one lifecycle, with real tonic clients: RPCs across the drain, health,
//! reflection, streams at the drain and at the deadline, silent connections.
//!
//! The test service is written the way tonic's generated code is (a tower service dispatching on
//! the path to `tonic::server::Grpc`), with prost-derived messages: no protobuf compiler needed.
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use lameduck::grpc::GrpcServer;
use lameduck::{Drain, ExitCode, Lifecycle, LifecycleHandle, Outcome, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_prost::ProstCodec;

mod support;
use support::wait_refused;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint64, tag = "2")]
    delay_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TicksRequest {
    #[prost(uint32, tag = "1")]
    count: u32,
    #[prost(uint64, tag = "2")]
    interval_ms: u64,
    /// End the stream (cleanly) when the drain begins.
    #[prost(bool, tag = "3")]
    stop_at_drain: bool,
}

/// `test.Echo`: unary `Echo` (after `delay_ms`) and server-streaming `Ticks`. Each call says
/// `started` on the channel.
#[derive(Clone)]
struct Echo {
    started: mpsc::UnboundedSender<()>,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // One codec per method: a codec's types are its messages'.
            Ok(match req.uri().path() {
                "/test.Echo/Echo" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(this, req).await
                }
                "/test.Echo/Ticks" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.server_streaming(this, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

impl tonic::server::UnaryService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let _ = self.started.send(());
        Box::pin(async move {
            let request = request.into_inner();
            assert_ne!(request.message, "panic", "the handler panicked on purpose");
            tokio::time::sleep(Duration::from_millis(request.delay_ms)).await;
            Ok(tonic::Response::new(EchoReply {
                message: request.message,
            }))
        })
    }
}

impl tonic::server::ServerStreamingService<TicksRequest> for Echo {
    type Response = EchoReply;
    type ResponseStream = ReceiverStream<Result<EchoReply, Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<TicksRequest>) -> Self::Future {
        let _ = self.started.send(());
        let drain = request
            .extensions()
            .get::<Drain>()
            .cloned()
            .expect("the server puts the Drain in every request");
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for n in 0..request.count {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(request.interval_ms)) => {}
                    () = drain.draining(), if request.stop_at_drain => return,
                }
                let tick = EchoReply {
                    message: format!("tick {n}"),
                };
                if tx.send(Ok(tick)).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(async move { Ok(tonic::Response::new(ReceiverStream::new(rx))) })
    }
}

async fn echo(channel: Channel, message: &str, delay_ms: u64) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = EchoRequest {
        message: message.into(),
        delay_ms,
    };
    let reply: tonic::Response<EchoReply> = grpc
        .unary(
            tonic::Request::new(request),
            PathAndQuery::from_static("/test.Echo/Echo"),
            ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

async fn ticks(
    channel: Channel,
    request: TicksRequest,
) -> Result<tonic::Streaming<EchoReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = grpc
        .server_streaming(
            tonic::Request::new(request),
            PathAndQuery::from_static("/test.Echo/Ticks"),
            ProstCodec::default(),
        )
        .await?;
    Ok(response.into_inner())
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

struct Running {
    handle: LifecycleHandle,
    run: JoinHandle<Report>,
    a: SocketAddr,
    b: SocketAddr,
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

/// Server A serves `test.Echo`; server B only health and reflection.
async fn start(lifecycle: Lifecycle) -> Running {
    let (tx, started) = mpsc::unbounded_channel();
    let lifecycle = lifecycle
        .handle_signals(false)
        .service(
            "grpc-a",
            GrpcServer::bind("127.0.0.1:0").add_service(Echo { started: tx }),
        )
        .service("grpc-b", GrpcServer::bind("127.0.0.1:0"));
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let addr = |name| handle.addresses(name)[0].parse().unwrap();
    Running {
        a: addr("grpc-a"),
        b: addr("grpc-b"),
        handle: handle.clone(),
        run,
        started,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_rpc_in_flight_completes_across_the_shutdown_of_both_servers() {
    let mut running = start(Lifecycle::new()).await;
    let channel = connect(running.a).await;
    assert_eq!(echo(channel.clone(), "hi", 0).await.unwrap(), "hi");
    let in_flight = tokio::spawn(echo(channel.clone(), "slow", 1000));
    running.started.recv().await.unwrap();
    running.started.recv().await.unwrap();

    running.handle.shutdown();
    wait_refused(running.a).await;
    wait_refused(running.b).await;
    // A new RPC is refused without being run: the connection got GOAWAY (tonic's client then
    // says CANCELLED, "connection closed", before sending), and new connections are refused
    // (UNAVAILABLE). Either way a client may retry it elsewhere. The one in flight completes.
    let refused = echo(channel.clone(), "late", 0).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::Cancelled),
        "{refused:?}"
    );
    assert_eq!(in_flight.await.unwrap().unwrap(), "slow");
    assert!(
        running.started.try_recv().is_err(),
        "the late RPC never ran"
    );

    let (a, b) = (running.a, running.b);
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    for service in &report.services {
        assert_eq!(service.outcome, Outcome::Stopped, "{report}");
    }
    assert_eq!(report.services[0].requests.in_flight_at_drain, 1);
    assert_eq!(report.services[0].requests.drained, 1);
    for addr in [a, b] {
        assert!(std::net::TcpListener::bind(addr).is_ok(), "{addr} is free");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_when_ready_and_not_serving_from_the_start_of_the_shutdown() {
    let running = start(Lifecycle::new().lame_duck_delay(Duration::from_millis(1500))).await;
    let mut health = HealthClient::new(connect(running.a).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "test.Echo"] {
        let status = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(status.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(check("nope.Nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // The caller's string is not echoed raw: no CR/LF, and cut short.
    let hostile = format!("x\r\nInjected: yes\r\n{}", "y".repeat(10_000));
    let answer = health.check(check(&hostile)).await.unwrap_err();
    assert_eq!(answer.code(), Code::NotFound);
    let message = answer.message();
    assert!(!message.contains(['\r', '\n']), "{message:?}");
    assert!(message.len() < 200, "{} bytes", message.len());
    assert!(
        message.contains(r"x\r\nInjected"),
        "escaped, not dropped: {message:?}"
    );
    let mut b = HealthClient::new(connect(running.b).await);
    assert_eq!(
        b.check(check("")).await.unwrap().into_inner().status,
        ServingStatus::Serving as i32
    );
    let mut watch = health.watch(check("")).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // The protocol: an unknown service is watched as SERVICE_UNKNOWN, not refused.
    let mut unknown = health.watch(check("nope.Nope")).await.unwrap().into_inner();
    let first = unknown.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);

    running.handle.shutdown();
    // The watch says NOT_SERVING and ends cleanly, during the lame-duck delay: it never holds
    // the drain open.
    let next = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .is_none(),
        "the watch ends with status OK"
    );
    assert!(
        tokio::time::timeout(WAIT, unknown.next())
            .await
            .unwrap()
            .is_none(),
        "so does the unknown service's"
    );
    for service in ["", "test.Echo"] {
        let status = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(
            status.status,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    // Still serving RPCs in the lame-duck delay.
    assert_eq!(
        echo(connect(running.a).await, "still", 0).await.unwrap(),
        "still"
    );
    assert!(!running.run.is_finished());
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_that_watches_the_drain_ends_cleanly() {
    let mut running = start(Lifecycle::new()).await;
    let request = TicksRequest {
        count: 10_000,
        interval_ms: 20,
        stop_at_drain: true,
    };
    let mut stream = ticks(connect(running.a).await, request).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().message, "tick 0");
    running.started.recv().await.unwrap();

    running.handle.shutdown();
    let rest = tokio::time::timeout(WAIT, async {
        let mut rest = Vec::new();
        while let Some(item) = stream.next().await {
            rest.push(item);
        }
        rest
    })
    .await
    .expect("the stream ends at the drain");
    assert!(rest.iter().all(Result::is_ok), "ended with OK: {rest:?}");
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_rpcs_end_with_unavailable_not_a_reset() {
    let mut running = start(Lifecycle::new().drain_deadline(Duration::from_millis(400))).await;
    let channel = connect(running.a).await;
    let request = TicksRequest {
        count: 10_000,
        interval_ms: 20,
        stop_at_drain: false,
    };
    let mut stream = ticks(channel.clone(), request).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().message, "tick 0");
    let unary = tokio::spawn(echo(channel, "forever", 60_000));
    running.started.recv().await.unwrap();
    running.started.recv().await.unwrap();

    running.handle.shutdown();
    let last = last_of(&mut stream, "at the deadline").await;
    let status = last.expect("with a status, not a bare end").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain deadline"), "{status:?}");
    let status = unary.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain deadline"), "{status:?}");

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded, "{report}");
    assert_eq!(report.services[0].outcome, Outcome::Aborted);
    assert_eq!(report.services[0].requests.aborted, 2, "{report}");
    assert_eq!(report.services[1].outcome, Outcome::Stopped);
}

/// What ends a stream of ticks (`None`: a bare end), within `WAIT` ("the stream ends {when}").
async fn last_of(
    stream: &mut tonic::Streaming<EchoReply>,
    when: &str,
) -> Option<Result<EchoReply, Status>> {
    let last = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    });
    last.await
        .unwrap_or_else(|_| panic!("the stream ends {when}"))
}

/// Asserts that the server closes `stream` (EOF or a reset) within `WAIT`.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_delay_the_exit() {
    let running = start(Lifecycle::new().drain_deadline(Duration::from_secs(60))).await;
    let mut silent = TcpStream::connect(running.a).await.unwrap();
    let mut half_preface = TcpStream::connect(running.b).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // Both accepted before the shutdown.
    let _ = echo(connect(running.a).await, "x", 0).await.unwrap();

    let began = Instant::now();
    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the exit took {:?}: it waited on a silent connection",
        began.elapsed()
    );
    for stream in [&mut silent, &mut half_preface] {
        assert_closed(stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_is_opt_in_and_lists_only_the_servers_own_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    // A descriptor for `test.Echo` and `test.Other` (served by another server of the same
    // process, say), as tonic-prost-build would write it.
    let service = |name: &str| prost_types::ServiceDescriptorProto {
        name: Some(name.into()),
        ..Default::default()
    };
    let descriptor = prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("test/echo.proto".into()),
            package: Some("test".into()),
            service: vec![service("Echo"), service("Other")],
            ..Default::default()
        }],
    };
    let encoded: &'static [u8] = Box::leak(prost::Message::encode_to_vec(&descriptor).into());
    let (tx, _) = mpsc::unbounded_channel();
    let (tx2, _) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .service(
            "grpc",
            GrpcServer::bind("127.0.0.1:0")
                .add_service(Echo { started: tx })
                .file_descriptor_set(encoded)
                .reflection(true),
        )
        .service(
            "quiet",
            GrpcServer::bind("127.0.0.1:0")
                .add_service(Echo { started: tx2 })
                .file_descriptor_set(encoded),
        );
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let addr: SocketAddr = handle.addresses("grpc")[0].parse().unwrap();
    let quiet: SocketAddr = handle.addresses("quiet")[0].parse().unwrap();

    // Off unless asked for.
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut off = ServerReflectionClient::new(connect(quiet).await);
    let refused = off
        .server_reflection_info(tokio_stream::iter([list()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    let mut client = ServerReflectionClient::new(connect(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "test.Echo"
        ]
    );
    drop(responses);
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_speaks_http2_only_and_closes_an_http1_client_at_once() {
    let running = start(Lifecycle::new()).await;
    for request in [
        &b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"POST /test.Echo/Echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(running.a).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "closed, not held open");
        assert!(
            answer.is_empty(),
            "no HTTP/1 answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // HTTP/2 clients are served as ever.
    let mut health = HealthClient::new(connect(running.a).await);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);
    running.handle.shutdown();
    assert_eq!(running.report().await.exit_code, ExitCode::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_never_sends_the_preface_is_closed_at_the_handshake_timeout() {
    let (tx, _started) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new().handle_signals(false).service(
        "grpc",
        GrpcServer::bind("127.0.0.1:0")
            .add_service(Echo { started: tx })
            .handshake_timeout(Duration::from_millis(300)),
    );
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let addr: SocketAddr = handle.addresses("grpc")[0].parse().unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half_preface = TcpStream::connect(addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A real client, idle after its call, stays.
    let channel = connect(addr).await;
    echo(channel.clone(), "hi", 0).await.unwrap();
    for stream in [&mut silent, &mut half_preface] {
        assert_closed(stream).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(echo(channel, "again", 0).await.unwrap(), "again");
    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].serving.handshake_timeouts, 2, "{report}");
    assert!(
        report.to_string().contains("handshake timeouts: 2"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_rpc_ends_with_internal_and_the_server_goes_on() {
    let running = start(Lifecycle::new()).await;
    let channel = connect(running.a).await;
    let panicked = echo(channel.clone(), "panic", 0).await.unwrap_err();
    assert_eq!(panicked.code(), Code::Internal, "{panicked:?}");
    assert!(panicked.message().contains("panicked"), "{panicked:?}");
    // The same connection goes on serving.
    assert_eq!(echo(channel, "after", 0).await.unwrap(), "after");
    running.handle.shutdown();
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].serving.panics, 1, "{report}");
    assert_eq!(report.services[0].requests.total, 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_maximum_age_a_connection_goes_and_after_the_grace_its_calls_end_with_unavailable() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new().handle_signals(false).service(
        "grpc-a",
        GrpcServer::bind("127.0.0.1:0")
            .add_service(Echo { started: tx })
            .max_connection_age(Duration::from_millis(500))
            .max_connection_age_grace(Duration::from_millis(500)),
    );
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let addr: SocketAddr = handle.addresses("grpc-a")[0].parse().unwrap();
    let connected = std::time::Instant::now();
    let channel = connect(addr).await;
    let request = TicksRequest {
        count: 10_000,
        interval_ms: 20,
        stop_at_drain: false,
    };
    let mut stream = ticks(channel.clone(), request).await.unwrap();
    let unary = tokio::spawn(echo(channel.clone(), "forever", 60_000));
    started.recv().await.unwrap();
    started.recv().await.unwrap();

    // Neither ends by itself: after the age (0.5 s, ±10 %) and its grace (0.5 s), both end
    // with UNAVAILABLE, which clients retry, rather than a reset.
    let last = last_of(&mut stream, "after the grace").await;
    let ended = connected.elapsed();
    let status = last.expect("with a status, not a bare end").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("maximum age"), "{status:?}");
    let status = unary.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_millis(1800),
        "ended after {ended:?}"
    );
    // The channel connects again by itself: the next call is served. Once in a while the
    // channel still hands it to the old connection in the moment that connection closes
    // (tonic's client has no transparent retry): never sent, it fails with CANCELLED
    // ("connection closed"), and a second try goes to the new connection.
    let mut again = echo(channel.clone(), "again", 0).await;
    if let Err(status) = &again
        && status.code() == Code::Cancelled
    {
        again = echo(channel, "again", 0).await;
    }
    let again = again.unwrap();
    assert!(again.contains("again"), "{again}");

    handle.shutdown();
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let serving = &report.services[0].serving;
    // The channel's new connection may reach its own age before the shutdown.
    assert!(serving.max_connection_age >= 1, "{report}");
    assert_eq!(serving.max_connection_age_grace, 1, "{report}");
}
