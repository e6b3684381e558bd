//! `bench-server <kind> <addr>`: one server for the benchmarks, serving the same app through
//! different machinery, so that a difference between kinds is the machinery's.
//!
//! HTTP kinds serve one axum `Router` (`GET /` answers "ok", `GET /slow?ms=N` waits N ms):
//! - `hyper`: a bare hyper-util accept loop (auto builder), drained with hyper-util's
//!   `GracefulShutdown` on SIGTERM: the baseline;
//! - `axum`: `axum::serve(..).with_graceful_shutdown(SIGTERM)`;
//! - `lameduck`: a `Lifecycle` with an `HttpServer` (`--pid-file PATH` after the address: for
//!   the upgrade in place of the deploy benchmark, on SIGHUP);
//! - `lameduck-metrics`: the same with the Prometheus exporter installed, so that every series
//!   is recorded (`/metrics` answers it; the load does not ask for it).
//!
//! The same over TLS (`bench-server <kind> ADDR CERT KEY`, PEM files; ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3, rustls with ring in both):
//! - `hyper-tls`: the bare hyper-util loop with a tokio-rustls acceptor in front: the baseline;
//! - `lameduck-tls`: an `HttpServer` with `Tls::from_pem_files`.
//!
//! gRPC kinds serve the demo's `demo.v1.Echo`:
//! - `tonic`: `tonic::transport::Server`, shut down on SIGTERM;
//! - `lameduck-grpc`: a `Lifecycle` with a `GrpcServer`.
//!
//! Prints `READY <addr>` once it accepts, and exits when its shutdown is done.
#![forbid(unsafe_code)]

use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use lameduck::Lifecycle;
use lameduck::grpc::GrpcServer;
use lameduck::http::HttpServer;
use lameduck_demo::grpc_api::EchoService;
use lameduck_demo::proto::echo_server::EchoServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|Query(q): Query<Slow>| async move {
            tokio::time::sleep(Duration::from_millis(q.ms)).await;
            "slept"
        }),
    )
}

async fn sigterm() {
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        term.recv().await;
    }
}

fn ready(addr: std::net::SocketAddr) {
    println!("READY {addr}");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(addr)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: bench-server hyper|axum|lameduck|lameduck-metrics|tonic|lameduck-grpc ADDR, \
             or hyper-tls|lameduck-tls ADDR CERT KEY"
        );
        std::process::exit(2);
    };
    match kind.as_str() {
        "hyper" => hyper_server(&addr).await,
        "hyper-tls" | "lameduck-tls" => {
            let (Some(cert), Some(key)) = (args.next(), args.next()) else {
                eprintln!("usage: bench-server {kind} ADDR CERT KEY");
                std::process::exit(2);
            };
            if kind == "hyper-tls" {
                hyper_tls_server(&addr, &cert, &key).await
            } else {
                let tls = lameduck::http::Tls::from_pem_files(cert, key);
                lameduck(Lifecycle::new().service("web", HttpServer::bind(&addr, app()).tls(tls)))
                    .await
            }
        }
        "axum" => {
            let listener = TcpListener::bind(&addr).await.expect("bind");
            ready(listener.local_addr().expect("addr"));
            // TCP_NODELAY, as the other kinds set it: the comparison is of the machinery.
            let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
                let _ = stream.set_nodelay(true);
            });
            axum::serve(listener, app())
                .with_graceful_shutdown(sigterm())
                .await
                .expect("serve");
        }
        "lameduck-metrics" => {
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the metrics recorder");
            let app = app().route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move { metrics.render() }
                }),
            );
            lameduck(Lifecycle::new().service("web", HttpServer::bind(&addr, app))).await
        }
        "lameduck" => {
            let mut lifecycle = Lifecycle::new().service("web", HttpServer::bind(&addr, app()));
            // `--pid-file PATH`: for the deploy benchmark's upgrade (SIGHUP).
            if let (Some(flag), Some(path)) = (args.next(), args.next())
                && flag == "--pid-file"
            {
                lifecycle = lifecycle.pid_file(path);
            }
            lameduck(lifecycle).await
        }
        "tonic" => {
            let listener = TcpListener::bind(&addr).await.expect("bind");
            ready(listener.local_addr().expect("addr"));
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(EchoService))
                .serve_with_incoming_shutdown(incoming, sigterm())
                .await
                .expect("serve");
        }
        "lameduck-grpc" => {
            lameduck(
                Lifecycle::new().service(
                    "grpc",
                    GrpcServer::bind(&addr)
                        .add_service(EchoServer::new(EchoService))
                        .reflection(false),
                ),
            )
            .await
        }
        other => {
            eprintln!("unknown kind {other}");
            std::process::exit(2);
        }
    }
}

async fn lameduck(lifecycle: Lifecycle) {
    let handle = lifecycle.handle();
    tokio::spawn(async move {
        if handle.wait_ready().await.is_ok() {
            for service in ["web", "grpc"] {
                if let Some(addr) = handle.addresses(service).first() {
                    println!("READY {addr}");
                }
            }
        }
    });
    let report = lifecycle.run().await;
    report.exit();
}

/// The baseline: hyper-util's own accept loop and graceful shutdown, nothing else.
async fn hyper_server(addr: &str) {
    hyper_loop(addr, None).await
}

/// The TLS baseline: the same loop as [`hyper_server`] with a tokio-rustls handshake (on the
/// connection's task) in front; the configuration as lameduck's `Tls::from_pem_files` makes it
/// (ring, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).
async fn hyper_tls_server(addr: &str, cert: &str, key: &str) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto};

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = std::sync::Arc::new(crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("pair");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    hyper_loop(addr, Some(acceptor)).await
}

/// hyper-util's accept loop, auto builder and graceful shutdown on SIGTERM, with a TLS
/// handshake on each connection's task when given an acceptor.
async fn hyper_loop(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    ready(listener.local_addr().expect("addr"));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(app());
    let stop = sigterm();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = &tls else {
                    // Plain: served as hyper-util's examples do, the connection made here.
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service.clone());
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    continue;
                };
                let (acceptor, builder, service) = (acceptor.clone(), builder.clone(), service.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
