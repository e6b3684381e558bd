//! The seed's worked example over HTTP, with axum: a route that sleeps, and a Ctrl+C halfway.
//!
//! ```text
//! cargo run -p lameduck --features http --example http
//! curl -i localhost:8080/sleep/10 &   # a 10 s request
//! sleep 5; pkill -INT -f examples/http   # or Ctrl+C in the server's terminal
//! ```
//!
//! The response still arrives at about 10 s (with `Connection: close`), and the process exits
//! right after it; a request that outlives the 30 s deadline is cut off then. A second Ctrl+C
//! exits at once, with exit code 7. Meanwhile new connections are refused, and `/readyz`
//! answers 503 as soon as the shutdown begins (with `--lame-duck 5`, for 5 s while the server
//! keeps serving).

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use clap::Parser;
use lameduck::Lifecycle;
use lameduck::http::HttpServer;

#[derive(Parser, Debug)]
#[command(about = "The seed's worked example: a 10 s route and a graceful Ctrl+C")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Seconds the drain may take before in-flight requests are cut off.
    #[arg(long, default_value_t = 30.0)]
    drain_deadline: f64,
    /// Seconds to keep serving with `/readyz` at 503 before the listener closes.
    #[arg(long, default_value_t = 0.0)]
    lame_duck: f64,
}

async fn sleep(Path(secs): Path<f64>) -> String {
    tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 3600.0))).await;
    format!("slept {secs} s\n")
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/sleep/{secs}", get(sleep));
    let report = Lifecycle::new()
        .drain_deadline(Duration::from_secs_f64(args.drain_deadline))
        .lame_duck_delay(Duration::from_secs_f64(args.lame_duck))
        .service("web", HttpServer::bind(&args.addr, app))
        .run()
        .await;
    eprintln!("{report}");
    report.exit();
}
