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
