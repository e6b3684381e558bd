//! What happened when: the milestones and each process's lifetime.

use crate::report::{DrillReport, InstanceReport};

use super::metrics::state_lane;
use super::{CLOSED, EXIT, NEW_READY, READ_BACK, READY, SECOND_SIGNAL, SIGNAL, UNREADY, WS_CLOSED};

/// A milestone: a dashed mark across the panels.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    /// When, milliseconds since the drill started.
    pub(crate) at_ms: f64,
    /// What happened.
    pub(crate) name: String,
    /// The mark's colour.
    pub(crate) colour: &'static str,
}

/// `SIGTERM` and the like.
pub(super) fn signal_name(signal: crate::args::SignalName) -> String {
    format!("SIG{signal:?}").to_uppercase()
}

/// The milestones of `report`, in time order.
pub(super) fn marks(report: &DrillReport) -> Vec<Mark> {
    let r = report;
    let sig = signal_name(r.signal);
    let mut marks = vec![mark(Some(r.ready_after_ms), "ready", READY)];
    if r.instances.is_empty() {
        let first = match &r.upgrade {
            Some(u) => format!("{} (upgrade)", signal_name(u.signal)),
            None => sig.clone(),
        };
        let exit = if r.upgrade.is_some() {
            "old process exit"
        } else {
            "exit"
        };
        marks.push(mark(Some(r.signal_at_ms), &first, SIGNAL));
        marks.push(mark(r.exit_at_ms, exit, EXIT));
    }
    marks.extend([
        mark(r.second_signal_at_ms, &format!("2nd {sig}"), SECOND_SIGNAL),
        mark(
            r.listener_closed_after_signal_ms
                .map(|d| r.signal_at_ms + d),
            "listener closed",
            CLOSED,
        ),
        mark(r.restart_ready_at_ms, "ready again", READY),
        mark(r.upgrade_ready_at_ms, "new process ready", NEW_READY),
        mark(
            r.audit.as_ref().map(|a| a.read_at_ms),
            "read-back",
            READ_BACK,
        ),
        mark(
            r.metrics
                .as_ref()
                .and_then(|m| m.ready_fell_after_signal_ms)
                .map(|d| r.signal_at_ms + d),
            "unready (metrics)",
            UNREADY,
        ),
    ]);
    for i in &r.instances {
        marks.extend(instance_marks(i, &sig));
    }
    // One mark per `--ws` URL, at its last Close (the spread is in the report).
    let several = r.websockets.len() > 1;
    for (n, ws) in r.websockets.iter().enumerate() {
        let name = match several {
            true => format!("ws {} closed", n + 1),
            false => "ws closed".to_owned(),
        };
        marks.push(mark(ws.closes_at_ms.last().copied(), &name, WS_CLOSED));
    }
    let mut marks: Vec<Mark> = marks
        .into_iter()
        .flatten()
        .filter(|m| m.at_ms.is_finite())
        .collect();
    marks.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    marks
}

/// A milestone, if it happened.
fn mark(at_ms: Option<f64>, name: &str, colour: &'static str) -> Option<Mark> {
    at_ms.map(|at_ms| Mark {
        at_ms,
        name: name.to_owned(),
        colour,
    })
}

/// A rollout instance's signal, exit and return.
fn instance_marks(i: &InstanceReport, sig: &str) -> [Option<Mark>; 3] {
    let n = i.instance;
    [
        mark(i.signal_at_ms, &format!("#{n} {sig}"), SIGNAL),
        mark(i.exit_at_ms, &format!("#{n} exit"), EXIT),
        mark(i.ready_again_at_ms, &format!("#{n} ready again"), READY),
    ]
}

/// What a process is doing over a span of its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Started, not ready yet.
    Starting,
    /// Ready, not signalled.
    Serving,
    /// Signalled, not exited.
    Draining,
    /// Unready but serving, in the lame-duck delay (as the service's metrics said).
    LameDuck,
    /// The run over, the process not exited yet (as the service's metrics said).
    Stopped,
}

/// One process's (or rollout instance's) lifetimes.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    /// Its name.
    pub(crate) name: String,
    /// From, to (milliseconds since the drill started), doing what.
    pub(crate) spans: Vec<(f64, f64, Phase)>,
}

/// One life from `start` until `end`: starting until `ready`, serving until `signal`,
/// draining from then on.
fn life(
    spans: &mut Vec<(f64, f64, Phase)>,
    start: f64,
    ready: Option<f64>,
    signal: Option<f64>,
    end: f64,
) {
    let ready = ready.unwrap_or(end).clamp(start, end.max(start));
    let drain = signal.unwrap_or(end).clamp(ready, end.max(ready));
    for (from, to, phase) in [
        (start, ready, Phase::Starting),
        (ready, drain, Phase::Serving),
        (drain, end, Phase::Draining),
    ] {
        if to > from {
            spans.push((from, to, phase));
        }
    }
}

/// A lane holding one life.
fn lane(name: &str, start: f64, ready: Option<f64>, signal: Option<f64>, end: f64) -> Lane {
    let mut spans = Vec::new();
    life(&mut spans, start, ready, signal, end);
    Lane {
        name: name.to_owned(),
        spans,
    }
}

/// The processes' lanes: one per process (the first and the restarted one, the old and the
/// new one), or one per rollout instance holding both its lives; then, with `--metrics-url`,
/// the states the service reported.
pub(super) fn lanes(report: &DrillReport) -> Vec<Lane> {
    let mut lanes = process_lanes(report);
    let end = report.exit_at_ms.unwrap_or(report.ended_at_ms);
    lanes.extend(report.metrics.as_ref().and_then(|m| state_lane(m, end)));
    lanes
}

/// One lane per process, or per rollout instance.
fn process_lanes(report: &DrillReport) -> Vec<Lane> {
    let r = report;
    let end = r.ended_at_ms;
    if !r.instances.is_empty() {
        return r.instances.iter().map(|i| instance_lane(i, end)).collect();
    }
    let exit = r.exit_at_ms.unwrap_or(end);
    let name = match (&r.upgrade, &r.restart) {
        (Some(_), _) => "old process",
        (None, Some(_)) => "first process",
        (None, None) => "process",
    };
    let mut lanes = vec![lane(
        name,
        0.0,
        Some(r.ready_after_ms),
        Some(r.signal_at_ms),
        exit,
    )];
    if r.upgrade.is_some() {
        lanes.push(lane(
            "new process",
            r.signal_at_ms,
            r.upgrade_ready_at_ms,
            None,
            end,
        ));
    } else if let (Some(_), Some(exit)) = (&r.restart, r.exit_at_ms) {
        lanes.push(lane(
            "second process",
            exit,
            r.restart_ready_at_ms,
            None,
            end,
        ));
    }
    lanes
}

/// A rollout instance's lane: its first life, then (once it exited) its second.
fn instance_lane(i: &InstanceReport, end: f64) -> Lane {
    let stopped = i.stopped_at_ms.unwrap_or(end);
    let first_end = i.exit_at_ms.unwrap_or(stopped);
    let mut spans = Vec::new();
    life(
        &mut spans,
        0.0,
        Some(i.ready_at_ms),
        i.signal_at_ms,
        first_end,
    );
    if let Some(exit) = i.exit_at_ms {
        life(&mut spans, exit, i.ready_again_at_ms, None, stopped);
    }
    Lane {
        name: format!("instance {}", i.instance),
        spans,
    }
}
