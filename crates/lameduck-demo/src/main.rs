//! `lameduck-demo`: the seed articles' service under one lifecycle.
//!
//! Start: the store opens SQLite while the HTTP server and both gRPC servers bind; ready when all
//! four have. Serve: writes are acknowledged from the cache and flushed every
//! `--flush-interval`; a flush that fails is retried (100 ms, doubling, at most 5 s or the
//! interval), logged at WARN each time, and holds the process not ready (`/readyz` 503 naming
//! `store`, gRPC NOT_SERVING) until one works, logged at INFO. Shutdown (SIGINT, SIGTERM,
//! SIGQUIT): readiness off, `--lame-duck` delay, drain under `--drain-timeout`, then the hooks
//! in order: the final flush of everything acknowledged, then the database's close (WAL
//! checkpoint). A second signal exits at once.
//!
//! Under systemd the servers take the sockets passed as `http`, `grpc-a` and `grpc-b`, and the
//! lifecycle tells systemd when it is ready and stopping (`deploy/systemd/`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use clap::Parser;
use lameduck::grpc::GrpcServer;
use lameduck::http::{HttpServer, Tls};
use lameduck::{Lifecycle, Phase, Report, StartContext};
use lameduck_demo::config::{Config, LogFormat};
use lameduck_demo::flusher;
use lameduck_demo::grpc_api::{EchoService, StoreService};
use lameduck_demo::http_api::{self, Api};
use lameduck_demo::proto::{self, echo_server::EchoServer, store_server::StoreServer};
use lameduck_demo::store::Store;

#[tokio::main]
async fn main() {
    let began = Instant::now();
    // A bad flag or value: clap prints why and exits with 2, before anything starts.
    let config = Config::parse();
    init_logging(config.log_format);

    let store = Store::bounded(&config.db, config.cache_max_bytes);
    let write_through = config.flush_interval.is_zero();
    store.set_write_through(write_through);
    let api = Api {
        store: store.clone(),
    };
    let store_service = StoreService {
        store: store.clone(),
    };
    let opening = store.clone();
    // One TLS source for the three servers: the files are loaded (and watched) once.
    let tls = config
        .tls_cert
        .as_ref()
        .zip(config.tls_key.as_ref())
        .map(|(cert, key)| {
            let tls = Tls::from_pem_files(cert, key);
            match &config.tls_client_ca {
                Some(ca) => tls.client_ca(ca),
                None => tls,
            }
        });
    let grpc = |addr: &str| {
        let server = GrpcServer::bind(addr)
            .file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .handshake_timeout(config.handshake_timeout)
            .idle_timeout(config.idle_timeout)
            .body_timeout(config.body_timeout.unwrap_or_default())
            .max_connection_age(config.max_connection_age)
            .max_connection_age_grace(config.max_connection_age_grace)
            .max_connections(config.max_connections as usize);
        match &tls {
            Some(tls) => server.tls(tls.clone()),
            None => server,
        }
    };
    let mut lifecycle = Lifecycle::new()
        .drain_deadline(config.drain_timeout)
        .lame_duck_delay(config.lame_duck)
        .service("store", move |ctx: StartContext| async move {
            // Part of the readiness barrier: no request is served before the database is open.
            opening.open().await?;
            let drain = ctx.drain();
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .service("http", {
            let server = HttpServer::bind(&config.http, http_api::router(api))
                .handshake_timeout(config.handshake_timeout)
                .header_timeout(config.header_timeout)
                .idle_timeout(config.idle_timeout)
                .max_connection_age(config.max_connection_age)
                .max_connection_age_grace(config.max_connection_age_grace)
                .max_connections(config.max_connections as usize);
            let server = match config.body_timeout {
                Some(timeout) => server.body_timeout(timeout),
                None => server,
            };
            match &tls {
                Some(tls) => server.tls(tls.clone()),
                None => server,
            }
        })
        .service(
            "grpc-a",
            grpc(&config.grpc_a).add_service(EchoServer::new(EchoService)),
        )
        .service(
            "grpc-b",
            grpc(&config.grpc_b).add_service(StoreServer::new(store_service)),
        );
    if let Some(path) = &config.pid_file {
        lifecycle = lifecycle.pid_file(path);
    }
    if let Some(addr) = &config.admin {
        let metrics = match lameduck_demo::admin::install() {
            Ok(metrics) => metrics,
            Err(error) => {
                eprintln!("lameduck-demo: cannot install the metrics recorder: {error}");
                std::process::exit(2);
            }
        };
        let admin = HttpServer::bind(addr, lameduck_demo::admin::router(metrics))
            .handshake_timeout(config.handshake_timeout)
            .header_timeout(config.header_timeout)
            .idle_timeout(config.idle_timeout);
        lifecycle = lifecycle
            .service_drained_last("admin", admin)
            .last_drain_delay(config.admin_linger);
    }
    if !write_through {
        // A failed flush keeps the writes, is retried with a backoff, and holds the process not
        // ready until one works (`flusher`); the final flush reports.
        let flushing = store.clone();
        let interval = config.flush_interval;
        let handle = lifecycle.handle();
        lifecycle = lifecycle.task("flusher", move |stop| async move {
            flusher::run(flushing, interval, handle, stop.cancelled_owned()).await;
            Ok(())
        });
    }
    let final_flush = store.clone();
    let closing = store.clone();
    let lifecycle = lifecycle
        .hook(Phase::FLUSH, "final-flush", move || async move {
            let flushed = final_flush.flush().await?;
            tracing::info!(flushed, "every acknowledged write is in the database");
            Ok(())
        })
        .hook(Phase::CLOSE, "close-db", move || async move {
            closing.close().await?;
            tracing::info!(db = %closing.path().display(), "database closed");
            Ok(())
        });

    // An upgrade: for a moment two processes serve, each with its own cache. From the moment
    // the new one starts, this one writes through (after flushing what it holds), so that the
    // new one reads every write this one acknowledged, and this one's final flush cannot write
    // an older value over a newer one the new process stored.
    let upgrading = lifecycle.handle();
    let handing = store.clone();
    tokio::spawn(async move {
        while let Some(pid) = upgrading.upgrade_started().await {
            handing.set_write_through(true);
            match handing.flush().await {
                Ok(flushed) => tracing::info!(new_pid = pid, flushed, "upgrade: writing through"),
                Err(error) => tracing::error!(new_pid = pid, "upgrade: flush failed: {error}"),
            }
        }
    });

    let handle = lifecycle.handle();
    tokio::spawn(async move {
        if handle.wait_ready().await.is_ok() {
            let first = |name: &str| {
                handle
                    .addresses(name)
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            };
            tracing::info!(
                ready_ms = ms(began.elapsed()),
                http = %first("http"),
                grpc_a = %first("grpc-a"),
                grpc_b = %first("grpc-b"),
                "serving: all servers ready"
            );
        }
    });

    let report = lifecycle.run().await;
    summarize(&report);
    if let Some(path) = &config.report_json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(error) = written {
            tracing::error!(path = %path.display(), "could not write the report: {error}");
        }
    }
    report.exit();
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The final log line: how it ended, what was drained, how the hooks went.
fn summarize(report: &Report) {
    let sum = |f: fn(&lameduck::WorkReport) -> u64| {
        report.services.iter().map(|s| f(&s.requests)).sum::<u64>()
    };
    let hooks: Vec<String> = report
        .hooks
        .iter()
        .map(|h| format!("{}={:?}", h.name, h.outcome))
        .collect();
    tracing::info!(
        exit_code = report.exit_code.code(),
        trigger = %report.trigger,
        requests_total = sum(|w| w.total),
        requests_drained = sum(|w| w.drained),
        requests_aborted = sum(|w| w.aborted),
        hooks = %hooks.join(", "),
        shutdown_ms = ms(report.shutdown),
        "exiting"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
