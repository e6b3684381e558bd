//! Probes from outside the process: is it ready, and is its listener still open.
//!
//! The drill watches a process it does not control, so it asks repeatedly: every
//! [`PROBE_INTERVAL`], which is also the resolution of the times it reports for them.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::load::{self, Target};
use crate::tls::Trust;

/// How often a probe asks.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// What "ready" means for the drilled service.
#[derive(Debug, Clone)]
pub(crate) enum Readiness {
    /// A GET of the URL answers 200.
    Http(Target),
    /// The address accepts a connection.
    Tcp(String),
    /// The gRPC health check of service "" says SERVING.
    Grpc(String),
}

impl Readiness {
    /// What the flags say "ready" is: `fill` puts an instance's values in the placeholders
    /// (a rollout), `default` is the address to connect to without a readiness option.
    pub(crate) fn from_args(
        args: &crate::args::DrillArgs,
        default: &str,
        fill: Option<&dyn Fn(&str) -> String>,
    ) -> Result<Readiness, String> {
        let fill = |text: &str| fill.map_or_else(|| text.to_owned(), |fill| fill(text));
        Ok(match (&args.ready_url, &args.ready_tcp, &args.ready_grpc) {
            (Some(url), _, _) => {
                let trust = Trust::from_args(args)?;
                Readiness::Http(
                    Target::parse(&fill(url), &trust).map_err(|e| format!("--ready-url {e}"))?,
                )
            }
            (_, Some(addr), _) => Readiness::Tcp(fill(addr)),
            (_, _, Some(addr)) => Readiness::Grpc(fill(addr)),
            _ => Readiness::Tcp(default.to_owned()),
        })
    }

    /// One probe: `Ok(true)` ready, `Ok(false)` not yet.
    pub(crate) async fn check(&self) -> bool {
        let probe = async {
            match self {
                Readiness::Tcp(addr) => TcpStream::connect(addr).await.is_ok(),
                Readiness::Http(target) => http_ok(target).await,
                Readiness::Grpc(addr) => grpc_serving(addr).await.unwrap_or(false),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .unwrap_or(false)
    }
}

async fn http_ok(target: &Target) -> bool {
    let Some(mut conn) = load::connect(target, false).await else {
        return false;
    };
    let request = load::Request::get(target);
    matches!(
        load::send(&mut conn, &request, Duration::from_secs(2)).await,
        load::Attempt::Answered(200, _)
    )
}

async fn grpc_serving(addr: &str) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner()
        .status;
    Ok(status == ServingStatus::Serving as i32)
}

/// Whether `addr` refuses connections now (the listener is closed).
pub(crate) async fn refused(addr: &str) -> bool {
    match TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}
