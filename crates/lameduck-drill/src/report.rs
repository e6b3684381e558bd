//! What a drill found: every request's outcome, the shutdown's milestones, and the verdict.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::args::SignalName;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A complete response with a status below 500.
    Ok,
    /// Never accepted: the connection was refused (the listener had closed), or the request
    /// could not be sent on a connection the server had closed. Expected of a single instance
    /// once it shuts down.
    Refused,
    /// Accepted, then lost: reset, truncated, a 5xx status, or timed out. A defect.
    Failed,
}

/// What kind of load a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An HTTP GET of a `--url`.
    Http,
    /// A gRPC call (`--grpc` and `--call`).
    Grpc,
    /// A write of the audit (`--write`).
    Write,
}

/// One request, as the load saw it. Times are milliseconds since the drill started.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// What kind of request.
    pub kind: Kind,
    /// When it was started.
    pub start_ms: f64,
    /// When it ended.
    pub end_ms: f64,
    /// How.
    pub outcome: Outcome,
    /// The worker (connection slot) that sent it.
    pub worker: u16,
    /// The HTTP status, if a response head arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The gRPC status code's name (`OK`, `UNAVAILABLE`, ...), for a call that got one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<&'static str>,
    /// Whether it was sent again on a new connection after the server closed a reused one
    /// under it (what HTTP clients do for idempotent requests, RFC 9110 §9.2.2).
    pub retried: bool,
    /// What went wrong, for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts of requests by outcome.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// All requests.
    pub total: u64,
    /// Answered.
    pub ok: u64,
    /// Never accepted.
    pub refused: u64,
    /// Accepted, then lost.
    pub failed: u64,
    /// Sent again after the server closed a reused connection under them (counted once, by
    /// the retry's outcome).
    pub retried: u64,
}

impl Counts {
    /// Counts `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Counts {
        let mut counts = Counts::default();
        for r in records {
            counts.total += 1;
            counts.retried += u64::from(r.retried);
            match r.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Refused => counts.refused += 1,
                Outcome::Failed => counts.failed += 1,
            }
        }
        counts
    }
}

/// One failed request, as an example.
#[derive(Debug, Clone, Serialize)]
pub struct FailureSample {
    /// When it started, milliseconds since the drill started.
    pub start_ms: f64,
    /// When it failed.
    pub end_ms: f64,
    /// Why.
    pub error: String,
}

/// The restart check.
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    /// Whether the second start became ready.
    pub ready: bool,
    /// Its time to ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_after_ms: Option<f64>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The upgrade in place, with `--upgrade`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    /// The signal that started it.
    pub signal: SignalName,
    /// The new process, as the pid file named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_pid: Option<u32>,
    /// From the signal until the pid file named the new process (it writes it once ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_ready_after_signal_ms: Option<f64>,
    /// From the signal until the old process exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_exit_after_signal_ms: Option<f64>,
    /// The new process's exit code, once the drill stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_exit_code: Option<i32>,
    /// The signal that killed the new process, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_exit_signal: Option<i32>,
}

/// Requests that ended in one slice of the timeline, by outcome.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bucket {
    /// The slice's start, milliseconds since the drill started.
    pub start_ms: f64,
    /// Answered.
    pub ok: u32,
    /// Never accepted.
    pub refused: u32,
    /// Accepted, then lost.
    pub failed: u32,
    /// The most requests open at once during the slice.
    pub in_flight: u32,
}

/// The shutdown window drawn at its own scale: from shortly before the (first) signal until
/// shortly after the last milestone (the exit, the restart's or the new process's readiness,
/// the last instance's return).
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Its start, milliseconds since the drill started.
    pub start_ms: f64,
    /// Its end.
    pub end_ms: f64,
    /// Requests over the window, by outcome.
    pub timeline: Vec<Bucket>,
}

/// Counts of the gRPC calls, with their status codes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpcReport {
    /// The method(s) called.
    pub calls: Vec<String>,
    /// The calls by outcome.
    pub requests: Counts,
    /// How many calls ended with each status code (a call that never reached a server has
    /// none).
    pub status_codes: BTreeMap<String, u64>,
}

/// The WebSockets of one `--ws` URL: how their clients' sockets ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebSocketReport {
    /// The URL.
    pub url: String,
    /// Its clients (`--ws-clients`).
    pub clients: u64,
    /// Of those, how many connected (before the signal).
    pub connected: u64,
    /// Text and binary messages the clients received, in all.
    pub messages_received: u64,
    /// Text messages they sent (`--ws-send-every`).
    pub messages_sent: u64,
    /// Clients that got a Close frame with 1001, 1012 or 1000 after the signal and before the
    /// exit, and then a clean end.
    pub ok: u64,
    /// Clients whose connection was cut without a Close frame (what a client reports as
    /// 1006), closed with another code, closed before the signal, or not cleanly after the
    /// Close.
    pub failed: u64,
    /// Clients that could not connect before the signal (none connects after it).
    pub refused: u64,
    /// How many Close frames came with each code (1005: a Close without one).
    pub close_codes: BTreeMap<String, u64>,
    /// From the signal until a Close frame came: the median over the clients that got one
    /// after the signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_after_signal_median_ms: Option<f64>,
    /// The same, the longest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_after_signal_max_ms: Option<f64>,
    /// When each Close frame came, milliseconds since the drill started, in order.
    pub closes_at_ms: Vec<f64>,
    /// The first failed clients, with why.
    pub failures: Vec<String>,
    /// Why the first refused client could not connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<String>,
}

/// The acknowledged-write audit (`--write`, `--read`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Writes sent.
    pub writes: u64,
    /// Writes answered 2xx: the service promised to keep them.
    pub acknowledged: u64,
    /// Acknowledged writes read back with their value.
    pub found: u64,
    /// Acknowledged writes the new instance does not have (404 or 410).
    pub lost: u64,
    /// Acknowledged writes read back with another value.
    pub wrong: u64,
    /// Acknowledged writes that could not be read at all (another status, or no answer after
    /// three tries).
    pub unreadable: u64,
    /// When the reads began, milliseconds since the drill started.
    pub read_at_ms: f64,
    /// The first lost, wrong or unreadable writes, as examples.
    pub samples: Vec<String>,
}

/// One instance of a rollout (`--rollout`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceReport {
    /// Its number, from 1.
    pub instance: u32,
    /// The command, its placeholders filled in.
    pub command: Vec<String>,
    /// When it was first ready, milliseconds since the drill started.
    pub ready_at_ms: f64,
    /// When its restart's signal was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_at_ms: Option<f64>,
    /// When it exited after that signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_at_ms: Option<f64>,
    /// Its exit code then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed it then, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// When its second life was ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_again_at_ms: Option<f64>,
    /// From the signal until ready again: how long it was out of service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_ms: Option<f64>,
    /// When the drill stopped its second life, at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<f64>,
    /// The second life's exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_exit_code: Option<i32>,
    /// The signal that killed the second life, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_exit_signal: Option<i32>,
    /// What went wrong with it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The service's own metrics, scraped through the drill (`--metrics-url`): from readiness
/// until the process exited, every `--metrics-interval`, on a connection of its own.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsReport {
    /// The URL scraped.
    pub url: String,
    /// The interval between scrapes, in milliseconds.
    pub interval_ms: f64,
    /// Scrapes answered 200 with a text that parsed (each gave a sample).
    pub scrapes_ok: u64,
    /// Scrapes that failed: no connection, no answer in time, another status, or a text
    /// that is not the Prometheus format.
    pub scrapes_failed: u64,
    /// Of those, how many were sent after the (first) signal: expected, as the process and
    /// its admin listener go away.
    pub scrapes_failed_after_signal: u64,
    /// The first failed scrape's error, with its time (milliseconds since the drill started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The states `lameduck_state` reported, in the order first seen.
    pub states_seen: Vec<String>,
    /// From the (first) signal until the first sample in which `lameduck_ready` went from 1
    /// to 0 (negative: before the signal), within a scrape interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_fell_after_signal_ms: Option<f64>,
    /// The most `lameduck_in_flight` each service reported from the signal on (the lame
    /// duck and the drain).
    pub peak_in_flight_after_signal: BTreeMap<String, f64>,
    /// What looks wrong with the scrapes, without failing the drill (a URL that never
    /// answered before the signal, a text without any `lameduck_` series).
    pub warnings: Vec<String>,
    /// Every successful scrape's values, in time order.
    pub samples: Vec<MetricsSample>,
}

/// One scrape's values of the lameduck series; a series the text did not have is left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MetricsSample {
    /// When the service wrote it: the middle of the scrape's round trip, milliseconds since
    /// the drill started (the requests' clock).
    pub at_ms: f64,
    /// `lameduck_ready`: 1 while ready, else 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<f64>,
    /// The `state` label of the `lameduck_state` series at 1: `starting`, `ready`,
    /// `draining`, `stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `lameduck_lame_duck`: 1 during the lame-duck delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lame_duck: Option<f64>,
    /// `lameduck_in_flight`, by its `service` label.
    pub in_flight: BTreeMap<String, f64>,
    /// `lameduck_connections`, by its `service` label.
    pub connections: BTreeMap<String, f64>,
}

/// Everything the drill measured, and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The command drilled.
    pub command: Vec<String>,
    /// Whether the service passed, and if not, why.
    pub passed: bool,
    /// Each reason it did not pass.
    pub reasons: Vec<String>,
    /// Start to ready.
    pub ready_after_ms: f64,
    /// The signal sent.
    pub signal: SignalName,
    /// When it was sent, since the drill started.
    pub signal_at_ms: f64,
    /// When the second signal was sent, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_signal_at_ms: Option<f64>,
    /// Signal to the first refused connection: the listener closed.
    pub listener_closed_after_signal_ms: Option<f64>,
    /// Signal to the process's exit.
    pub exit_after_signal_ms: Option<f64>,
    /// The last answered request's end to the exit: how long the process lingered.
    pub exit_lag_ms: Option<f64>,
    /// The exit code (`None`: killed by a signal, or still running at the exit timeout).
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// The exit code a correct shutdown gives.
    pub expected_exit_code: i32,
    /// All requests.
    pub requests: Counts,
    /// Requests in flight when the signal was sent.
    pub in_flight_at_signal: u64,
    /// Of those, how many were answered.
    pub in_flight_at_signal_completed: u64,
    /// The first failures, as examples.
    pub failures: Vec<FailureSample>,
    /// The restart check, if asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartReport>,
    /// When the drill ended, since it started.
    pub ended_at_ms: f64,
    /// Requests over time, by outcome (what the SVG draws).
    pub timeline: Vec<Bucket>,
    /// When the (first) process exited, since the drill started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_at_ms: Option<f64>,
    /// When the restarted process was ready, since the drill started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_ready_at_ms: Option<f64>,
    /// The upgrade, with `--upgrade` (`signal` is then the one that stopped the new process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeReport>,
    /// When the upgrade's new process was ready, since the drill started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_ready_at_ms: Option<f64>,
    /// The shutdown window at its own scale (what the SVG's lower panel draws).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The gRPC load, with `--grpc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcReport>,
    /// The acknowledged-write audit, with `--write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditReport>,
    /// The WebSockets, one per `--ws` URL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub websockets: Vec<WebSocketReport>,
    /// The instances of a rollout, with `--rollout`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceReport>,
    /// The service's own metrics, with `--metrics-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsReport>,
    /// Every request, by start (not in the JSON report: `--records` writes them, one JSON
    /// object a line).
    #[serde(skip)]
    pub records: Vec<RequestRecord>,
}

impl WebSocketReport {
    /// The summary table's line.
    fn summary(&self) -> String {
        let codes: Vec<String> = self
            .close_codes
            .iter()
            .map(|(code, n)| format!("{code} x{n}"))
            .collect();
        let timing = match (
            self.close_after_signal_median_ms,
            self.close_after_signal_max_ms,
        ) {
            (Some(median), Some(max)) => {
                format!("; signal -> close {median:.1} ms median, {max:.1} ms max")
            }
            _ => String::new(),
        };
        format!(
            "{}: {} clients, {} messages received: {} ok, {} failed, {} refused; close codes: \
             {}{timing}",
            self.url,
            self.clients,
            self.messages_received,
            self.ok,
            self.failed,
            self.refused,
            if codes.is_empty() {
                "-".to_owned()
            } else {
                codes.join(", ")
            }
        )
    }
}

impl MetricsReport {
    /// The summary table's rows: the scrapes and the states seen; what happened from the
    /// signal on.
    fn rows(&self) -> [(&'static str, String); 2] {
        let states = if self.states_seen.is_empty() {
            "no lameduck_state".to_owned()
        } else {
            format!("states {}", self.states_seen.join(" -> "))
        };
        let scrapes = format!(
            "{} scrapes ok, {} failed ({} after the signal), every {:.0} ms; {states}",
            self.scrapes_ok,
            self.scrapes_failed,
            self.scrapes_failed_after_signal,
            self.interval_ms
        );
        let fell = match self.ready_fell_after_signal_ms {
            Some(at) if at < 0.0 => format!("{:.1} ms before the signal", -at),
            Some(at) => format!("+{at:.1} ms after the signal"),
            None => "never seen".to_owned(),
        };
        let peaks: Vec<String> = self
            .peak_in_flight_after_signal
            .iter()
            .map(|(service, peak)| format!("{service} {peak}"))
            .collect();
        let peaks = if peaks.is_empty() {
            "-".to_owned()
        } else {
            peaks.join(", ")
        };
        [
            ("metrics", scrapes),
            (
                "metrics after signal",
                format!("ready 1 -> 0 {fell}; peak in flight: {peaks}"),
            ),
        ]
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

impl fmt::Display for DrillReport {
    /// The summary table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.requests;
        let rows: Vec<(&str, String)> = vec![
            ("command", self.command.join(" ")),
            ("time to ready", format!("{:.1} ms", self.ready_after_ms)),
            ("signal", format!("SIG{:?}", self.signal).to_uppercase()),
            (
                "requests",
                format!(
                    "{} total: {} ok, {} refused, {} failed ({} retried on a new connection)",
                    r.total, r.ok, r.refused, r.failed, r.retried
                ),
            ),
            (
                "in flight at signal",
                format!(
                    "{} ({} completed)",
                    self.in_flight_at_signal, self.in_flight_at_signal_completed
                ),
            ),
            (
                "signal -> listener closed",
                opt_ms(self.listener_closed_after_signal_ms),
            ),
            ("signal -> exit", opt_ms(self.exit_after_signal_ms)),
            ("last response -> exit", opt_ms(self.exit_lag_ms)),
            (
                "exit code",
                match (self.exit_code, self.exit_signal) {
                    (Some(code), _) => format!("{code} (expected {})", self.expected_exit_code),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => "did not exit".to_owned(),
                },
            ),
        ];
        let mut rows = rows;
        if !self.instances.is_empty() {
            // A rollout: no single process's exit; each instance's instead.
            rows.retain(|(key, _)| {
                !matches!(
                    *key,
                    "signal -> listener closed"
                        | "signal -> exit"
                        | "last response -> exit"
                        | "exit code"
                )
            });
            for i in &self.instances {
                let code = |code: Option<i32>, signal: Option<i32>| match (code, signal) {
                    (Some(code), _) => format!("exit {code}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => "no exit".to_owned(),
                };
                let mut line = match i.out_ms {
                    Some(out) => format!(
                        "{}, out for {out:.1} ms, then {}",
                        code(i.exit_code, i.exit_signal),
                        code(i.final_exit_code, i.final_exit_signal)
                    ),
                    None => "not restarted".to_owned(),
                };
                if let Some(error) = &i.error {
                    line = format!("{line}: {error}");
                }
                rows.push(("instance", format!("{}: {line}", i.instance)));
            }
        }
        if let Some(grpc) = &self.grpc {
            let g = &grpc.requests;
            let codes: Vec<String> = grpc
                .status_codes
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            rows.push((
                "grpc calls",
                format!(
                    "{} total: {} ok, {} refused, {} failed ({} retried); status codes: {}",
                    g.total,
                    g.ok,
                    g.refused,
                    g.failed,
                    g.retried,
                    if codes.is_empty() {
                        "-".to_owned()
                    } else {
                        codes.join(", ")
                    }
                ),
            ));
        }
        for ws in &self.websockets {
            rows.push(("websockets", ws.summary()));
        }
        if let Some(audit) = &self.audit {
            rows.push((
                "writes",
                format!(
                    "{} sent, {} acknowledged: {} found, {} lost, {} wrong, {} unreadable",
                    audit.writes,
                    audit.acknowledged,
                    audit.found,
                    audit.lost,
                    audit.wrong,
                    audit.unreadable
                ),
            ));
        }
        if let Some(m) = &self.metrics {
            rows.extend(m.rows());
        }
        if let Some(upgrade) = &self.upgrade {
            let sig = format!("SIG{:?}", upgrade.signal).to_uppercase();
            rows.push((
                "upgrade",
                match upgrade.new_pid {
                    Some(pid) => format!("{sig} -> new PID {pid}"),
                    None => format!("{sig} -> no new process"),
                },
            ));
            rows.push((
                "signal -> new ready",
                opt_ms(upgrade.new_ready_after_signal_ms),
            ));
            rows.push((
                "signal -> old exit",
                opt_ms(upgrade.old_exit_after_signal_ms),
            ));
            rows.push((
                "new process exit code",
                match (upgrade.new_exit_code, upgrade.new_exit_signal) {
                    (Some(code), _) => format!("{code} (expected {})", self.expected_exit_code),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => "did not exit".to_owned(),
                },
            ));
        }
        if let Some(restart) = &self.restart {
            rows.push((
                "restart",
                match (&restart.error, restart.ready_after_ms) {
                    (None, Some(ms)) => format!("ready again in {ms:.1} ms"),
                    (Some(e), _) => format!("FAILED: {e}"),
                    (None, None) => "not ready".to_owned(),
                },
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            writeln!(f, "  {key:<width$}  {value}")?;
        }
        for sample in self.audit.iter().flat_map(|a| a.samples.iter().take(5)) {
            writeln!(f, "  {sample}")?;
        }
        for failure in self
            .websockets
            .iter()
            .flat_map(|w| w.failures.iter().take(5))
        {
            writeln!(f, "  websocket {failure}")?;
        }
        for sample in self.failures.iter().take(5) {
            writeln!(
                f,
                "  failure at {:.1} ms (sent at {:.1} ms): {}",
                sample.end_ms, sample.start_ms, sample.error
            )?;
        }
        for warning in self.metrics.iter().flat_map(|m| &m.warnings) {
            writeln!(f, "WARNING: {warning}")?;
        }
        if self.passed {
            writeln!(f, "PASS")
        } else {
            for reason in &self.reasons {
                writeln!(f, "FAIL: {reason}")?;
            }
            Ok(())
        }
    }
}
