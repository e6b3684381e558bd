//! The load as a whole: what to send, from the flags (HTTP GETs, gRPC calls, the audit's
//! writes, WebSocket clients), and its workers, started together and stopped together.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use indicatif::ProgressBar;
use tokio::task::JoinHandle;

use crate::args::DrillArgs;
use crate::audit::{self, CallTemplate, Store, Template, Writes};
use crate::grpc_load;
use crate::load::{self, Shared, Target};
use crate::report::{Counts, FailureSample, GrpcReport, Kind, Outcome, RequestRecord};
use crate::run::DrillError;
use crate::schema::{self, Source};
use crate::tls::Trust;
use crate::ws_load::{self, ClientEnd, End, WsTarget};

/// What the flags ask to send.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) urls: Vec<Target>,
    grpc: Option<(String, Source)>,
    /// The gRPC descriptors (from `--proto` at once; from reflection once the service is
    /// ready).
    pool: Option<prost_reflect::DescriptorPool>,
    pub(crate) writes: Option<Arc<Writes>>,
    /// The `--ws` URLs.
    pub(crate) ws: Vec<Arc<WsTarget>>,
}

impl Plan {
    /// Reads and checks the flags; `--proto` is compiled here, before anything starts.
    pub(crate) fn from_args(args: &DrillArgs) -> Result<Plan, DrillError> {
        let bad = DrillError::BadTarget;
        let trust = Trust::from_args(args).map_err(bad)?;
        let mut urls = args
            .urls
            .iter()
            .map(|u| Target::parse(u, &trust))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        if urls.is_empty()
            && args.grpc.is_none()
            && let Some(front) = &args.front
        {
            urls.push(Target::parse(front, &trust).map_err(bad)?);
        }
        let ws = args
            .ws
            .iter()
            .map(|u| WsTarget::parse(u, &trust).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let grpc = args.grpc.as_ref().map(|addr| {
            let source = match &args.proto {
                Some(file) => Source::Proto {
                    file: file.clone(),
                    imports: args.import_paths.clone(),
                },
                None => Source::Reflection(addr.clone()),
            };
            (addr.clone(), source)
        });
        let writes = match (&args.write, &args.read) {
            (Some(write), Some(read)) => Some(Arc::new(Writes::new(Store::Http {
                write: Template::parse(write, "--write", Method::PUT, &trust).map_err(bad)?,
                read: Template::parse(read, "--read", Method::GET, &trust).map_err(bad)?,
            }))),
            _ => None,
        };
        if grpc.is_some() && args.calls.is_empty() && args.write_call.is_none() {
            return Err(bad(
                "--grpc needs --call (load) or --write-call (the audit)".into(),
            ));
        }
        let mut plan = Plan {
            urls,
            grpc,
            pool: None,
            writes,
            ws,
        };
        if let Some((_, Source::Proto { file, imports })) = &plan.grpc {
            // Compiled before anything starts, so that a mistake costs nothing.
            let pool = schema::compile(file, imports).map_err(bad)?;
            plan.check(&pool, args)?;
            plan.pool = Some(pool);
        }
        Ok(plan)
    }

    /// The address the load reaches first: where "the listener closed" is watched, and what
    /// "ready" means without a readiness option.
    pub(crate) fn first_address(&self) -> Result<String, DrillError> {
        if let Some(url) = self.urls.first() {
            return Ok(url.authority.clone());
        }
        if let Some((addr, _)) = &self.grpc {
            return Ok(addr.clone());
        }
        match (&self.writes, self.ws.first()) {
            (Some(writes), _) => writes.authority().map_err(DrillError::BadTarget),
            (None, Some(ws)) => Ok(ws.target.authority.clone()),
            (None, None) => Err(DrillError::BadTarget(
                "no --url, --grpc, --ws or --front given".into(),
            )),
        }
    }

    /// The gRPC load's target, its calls resolved (by reflection, if that is the source: the
    /// service must be ready); the gRPC form of the audit is set up here too.
    pub(crate) async fn grpc(
        &mut self,
        args: &DrillArgs,
    ) -> Result<Option<Arc<grpc_load::Target>>, DrillError> {
        let Some((addr, source)) = &self.grpc else {
            return Ok(None);
        };
        let pool = match self.pool.take() {
            Some(pool) => pool,
            None => {
                let services = Self::methods(args);
                schema::pool(source, &services, args.ready_timeout)
                    .await
                    .map_err(DrillError::BadTarget)?
            }
        };
        let (calls, writes) = self.check(&pool, args)?;
        if let Some(writes) = writes {
            self.writes = Some(Arc::new(writes));
        }
        if calls.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(grpc_load::Target {
            authority: addr.clone(),
            calls,
        })))
    }

    /// Every method the flags name.
    fn methods(args: &DrillArgs) -> Vec<String> {
        let mut methods = args.calls.clone();
        methods.extend(args.write_call.iter().cloned());
        methods.extend(args.read_call.iter().cloned());
        methods
    }

    /// The load's calls and the audit's gRPC writes, resolved in `pool`.
    fn check(
        &self,
        pool: &prost_reflect::DescriptorPool,
        args: &DrillArgs,
    ) -> Result<(Vec<schema::Call>, Option<Writes>), DrillError> {
        let bad = DrillError::BadTarget;
        let calls = schema::resolve(pool, &args.calls, &args.data).map_err(bad)?;
        let writes = match (&self.grpc, &args.write_call, &args.write_data) {
            (Some((addr, _)), Some(write), Some(write_data)) => {
                let read = args.read_call.clone().unwrap_or_default();
                let read_data = args.read_data.clone().unwrap_or_default();
                let one = |name: &str| {
                    schema::resolve(pool, &[name.to_owned()], &[])
                        .map(|mut calls| calls.remove(0))
                        .map_err(bad)
                };
                let write =
                    CallTemplate::new(one(write)?, write_data, "--write-data", &["{n}", "{value}"])
                        .map_err(bad)?;
                let read = CallTemplate::new(one(&read)?, &read_data, "--read-data", &["{n}"])
                    .map_err(bad)?;
                Some(Writes::new(Store::Grpc {
                    authority: addr.clone(),
                    write: Box::new(write),
                    read: Box::new(read),
                }))
            }
            _ => None,
        };
        Ok((calls, writes))
    }
}

/// The running load.
pub(crate) struct Load {
    pub(crate) shared: Arc<Shared>,
    workers: Vec<(Kind, JoinHandle<()>)>,
    /// The WebSocket clients, by `--ws` URL.
    ws_clients: Vec<Vec<JoinHandle<ClientEnd>>>,
    ticker: Option<JoinHandle<()>>,
    pub(crate) grpc: Option<Arc<grpc_load::Target>>,
}

impl Load {
    /// Starts every worker the plan asks for, and the progress line's ticker.
    pub(crate) fn start(
        plan: &Plan,
        grpc: Option<Arc<grpc_load::Target>>,
        args: &DrillArgs,
        began: Instant,
        bar: &ProgressBar,
    ) -> Load {
        let shared = Arc::new(Shared::new(
            plan.urls.clone(),
            args.http2,
            args.request_timeout,
            began,
        ));
        let mut workers = Vec::new();
        if !plan.urls.is_empty() {
            workers.extend((0..args.concurrency).map(|w| {
                (
                    Kind::Http,
                    tokio::spawn(load::worker(Arc::clone(&shared), w)),
                )
            }));
        }
        if let Some(target) = &grpc {
            workers.extend((0..args.grpc_concurrency).map(|w| {
                let worker = grpc_load::worker(Arc::clone(&shared), Arc::clone(target), w);
                (Kind::Grpc, tokio::spawn(worker))
            }));
        }
        if let Some(writes) = &plan.writes {
            workers.extend((0..args.write_concurrency).map(|w| {
                let writer = audit::writer(Arc::clone(&shared), Arc::clone(writes), w);
                (Kind::Write, tokio::spawn(writer))
            }));
        }
        let ws_clients = plan
            .ws
            .iter()
            .map(|target| {
                (0..args.ws_clients)
                    .map(|c| {
                        let client = ws_load::client(
                            Arc::clone(&shared),
                            Arc::clone(target),
                            c,
                            args.ws_send_every,
                        );
                        tokio::spawn(client)
                    })
                    .collect()
            })
            .collect();
        let ticker = {
            let shared = Arc::clone(&shared);
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    let phase = if shared.signal_at_us.load(Ordering::Acquire) == u64::MAX {
                        "load"
                    } else {
                        "shutting down"
                    };
                    bar.set_message(format!(
                        "{phase} | {} ok, {} refused, {} failed",
                        shared.ok.load(Ordering::Relaxed),
                        shared.refused.load(Ordering::Relaxed),
                        shared.failed.load(Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Load {
            shared,
            workers,
            ws_clients,
            ticker: Some(ticker),
            grpc,
        }
    }

    /// Stops the load: every worker finishes the request it is in (bounded: a request and
    /// its one retry, each with its connection); their records, sorted by start. A worker
    /// still in a request after that is cut off, and its open request counts as failed.
    pub(crate) async fn stop(self, request_timeout: Duration) -> Vec<RequestRecord> {
        self.stop_all(request_timeout).await.0
    }

    /// [`stop`](Load::stop), with the WebSocket clients' ends too (by `--ws` URL): each closes
    /// its side if still open (bounded), and one that does not finish in time is cut off.
    pub(crate) async fn stop_all(
        mut self,
        request_timeout: Duration,
    ) -> (Vec<RequestRecord>, Vec<Vec<ClientEnd>>) {
        self.shared.stop.store(true, Ordering::Release);
        let grace = (request_timeout + load::CONNECT_TIMEOUT) * 2 + Duration::from_secs(1);
        let until = Instant::now() + grace;
        let mut cut_off = Vec::new();
        for (kind, worker) in std::mem::take(&mut self.workers) {
            let left = until.saturating_duration_since(Instant::now());
            let abort = worker.abort_handle();
            if tokio::time::timeout(left, worker).await.is_err() {
                abort.abort();
                cut_off.push(kind);
            }
        }
        let mut ws_ends = Vec::new();
        for clients in std::mem::take(&mut self.ws_clients) {
            let mut ends = Vec::new();
            for client in clients {
                let abort = client.abort_handle();
                let within = ws_load::STOP_WITHIN;
                ends.push(match tokio::time::timeout(within, client).await {
                    Ok(Ok(end)) => end,
                    _ => {
                        abort.abort();
                        ClientEnd {
                            connected_ms: None,
                            messages: 0,
                            sent: 0,
                            close: None,
                            end: End::Cut(format!(
                                "the client did not finish within {within:?} of the load's \
                                 stop; it was cut off"
                            )),
                            end_ms: self.shared.ms(Instant::now()),
                        }
                    }
                });
            }
            ws_ends.push(ends);
        }
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let mut records = self.shared.take_records();
        let at = self.shared.ms(Instant::now());
        records.extend(cut_off.into_iter().map(|kind| RequestRecord {
            kind,
            start_ms: at,
            end_ms: at,
            outcome: Outcome::Failed,
            worker: 0,
            status: None,
            grpc_status: None,
            retried: false,
            error: Some(format!(
                "a request was still open {grace:?} after the load stopped; its worker was cut off"
            )),
        }));
        records.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        (records, ws_ends)
    }
}

/// The first failures, as examples.
pub(crate) fn failures(records: &[RequestRecord]) -> Vec<FailureSample> {
    records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .take(20)
        .map(|r| FailureSample {
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            error: r.error.clone().unwrap_or_default(),
        })
        .collect()
}

impl Drop for Load {
    /// A load dropped without [`stop`](Load::stop) (the drill failed on the way) ends at once:
    /// no worker outlives it.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for (_, worker) in &self.workers {
            worker.abort();
        }
        for client in self.ws_clients.iter().flatten() {
            client.abort();
        }
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

/// Why failed requests fail the drill (`what` they were: "accepted request(s)", "request(s)
/// through the front"), if any did: their count and the first one.
pub(crate) fn failure_reason(
    requests: &Counts,
    failures: &[FailureSample],
    what: &str,
) -> Option<String> {
    (requests.failed > 0).then(|| {
        let first = failures
            .first()
            .map(|f| format!(" (first at {:.1} ms: {})", f.end_ms, f.error))
            .unwrap_or_default();
        format!("{} {what} failed{first}", requests.failed)
    })
}

/// The requests in flight when the signal was sent at `signal_ms` (a retry is not: its first
/// try was), and how many of them were answered.
pub(crate) fn in_flight_at(records: &[RequestRecord], signal_ms: f64) -> (u64, u64) {
    let open: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.start_ms <= signal_ms && r.end_ms > signal_ms && !r.retried)
        .collect();
    let answered = open.iter().filter(|r| r.outcome == Outcome::Ok).count();
    (open.len() as u64, answered as u64)
}

/// The gRPC calls' counts and status codes.
pub(crate) fn grpc_report(records: &[RequestRecord], target: &grpc_load::Target) -> GrpcReport {
    let calls: Vec<&RequestRecord> = records.iter().filter(|r| r.kind == Kind::Grpc).collect();
    let mut report = GrpcReport {
        calls: target.calls.iter().map(|c| c.name.clone()).collect(),
        requests: Counts::of(calls.iter().copied()),
        status_codes: Default::default(),
    };
    for code in calls.iter().filter_map(|r| r.grpc_status) {
        *report.status_codes.entry(code.to_owned()).or_default() += 1;
    }
    report
}
