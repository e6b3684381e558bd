//! Verify any service's graceful shutdown under load, the way an SRE would before trusting a
//! deploy: start it, wait until it is ready, drive HTTP and gRPC load, send the signal, and
//! check that no accepted request failed, the exit code is the expected one, and (with
//! `--restart`) a new instance binds at once. With `--write`/`--read`, every write the service
//! acknowledged is read back from the instance that serves after the restart or the upgrade;
//! with `--rollout N`, N instances are restarted one by one behind a load balancer, which must
//! hide every restart. The service can be written in any language.
//!
//! With `--metrics-url URL` (and `--metrics-interval`, 100 ms by default), the drill also
//! scrapes the service's Prometheus metrics from readiness until the process exits, on a
//! connection of its own, and keeps the lameduck series: `lameduck_ready`, `lameduck_state`,
//! `lameduck_lame_duck`, and `lameduck_in_flight` and `lameduck_connections` per service. The
//! report's `metrics` section ([`report::MetricsReport`]) has every sample on the requests'
//! clock, when readiness fell relative to the signal, and the most in flight per service from
//! the signal on; the picture draws the states as a lane and the in-flight counts as lines.
//! Scrapes that fail are counted, never a failure: a service whose admin listener closes early
//! only loses its samples, and one that never answered before the signal is a warning.
//!
//! With `--ws URL` (`ws://`, or `wss://` with `--cacert` or `--insecure`; repeatable), the
//! drill holds `--ws-clients` WebSockets (8 by default) open on each URL through the shutdown,
//! counting the messages they receive (and sending a text message every `--ws-send-every`, if
//! asked). The clients connect before the signal; none is attempted after it (a service that
//! drains refuses new ones anyway), and one that could not connect before it counts as
//! refused. A client is ok if the server sent a Close frame with 1001 "going away", 1012
//! "service restart" or 1000 after the signal and before the exit (the client answers with its
//! own, so the server can finish), and the connection then ended cleanly; it failed if the
//! connection was cut without a Close frame (what a browser reports as 1006), closed with
//! another code, closed before the signal, or reset after the Close. A failed client fails the
//! drill. The report's `websockets` section ([`report::WebSocketReport`]) has the counts, the
//! close codes seen, and the time from the signal to the Close frames; the picture marks the
//! last Close of each URL.
//!
//! The binary (`lameduck-drill [OPTIONS] -- <command> [args...]`) is a thin shell over
//! [`drill`]; tests of other crates call it directly:
//!
//! ```no_run
//! use clap::Parser;
//! use lameduck_drill::{DrillArgs, drill};
//!
//! # #[tokio::main] async fn main() {
//! let args = DrillArgs::parse_from([
//!     "lameduck-drill", "--url", "http://127.0.0.1:8080/fast", "--", "./my-service",
//! ]);
//! let report = drill(&args).await.unwrap();
//! assert!(report.passed, "{report}");
//! # }
//! ```
#![forbid(unsafe_code)]

mod args;
mod audit;
mod child;
mod exposition;
mod grpc_load;
mod load;
mod probe;
pub mod report;
mod rollout;
mod run;
mod schema;
mod scrape;
mod svg;
mod tls;
mod traffic;
mod ws_load;

pub use args::{DrillArgs, SignalName};
pub use report::DrillReport;
pub use run::{DrillError, drill};

/// The timeline of `report` as an SVG picture.
pub fn render_svg(report: &DrillReport) -> String {
    svg::render(report)
}
