//! The data side: the requests counted into slices, with the most in flight in each, for the
//! whole drill and for the shutdown window the milestones bound.

use crate::report::{Bucket, DrillReport, Outcome, RequestRecord, Window};

/// Columns of the whole drill's timeline.
pub(crate) const BUCKETS: usize = 200;
/// Columns of the shutdown window's timeline.
pub(super) const WINDOW_BUCKETS: usize = 200;
/// The least margin the window keeps around its milestones.
const MIN_PAD_MS: f64 = 20.0;

/// Requests by when they ended, in `n` slices of `[start_ms, end_ms]` (those that ended
/// outside it are left out), each with the most requests open at once during the slice (a
/// request is open over `[start_ms, end_ms)`, whenever it ended). A sweep over the sorted
/// starts and ends: O(records log records + n).
pub(crate) fn buckets(
    records: &[RequestRecord],
    start_ms: f64,
    end_ms: f64,
    n: usize,
) -> Vec<Bucket> {
    if n == 0 {
        return Vec::new();
    }
    let width = ((end_ms - start_ms) / n as f64).max(f64::MIN_POSITIVE);
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start_ms: start_ms + i as f64 * width,
            ..Bucket::default()
        })
        .collect();
    count_outcomes(&mut out, records, start_ms, end_ms, width);
    sweep_in_flight(&mut out, records, width);
    out
}

/// The whole drill's timeline: [`BUCKETS`] slices of `[0, end_ms]`.
pub(crate) fn timeline(records: &[RequestRecord], end_ms: f64) -> Vec<Bucket> {
    buckets(records, 0.0, end_ms, BUCKETS)
}

/// Counts each record that ended within `[start_ms, end_ms]` in its slice.
fn count_outcomes(
    out: &mut [Bucket],
    records: &[RequestRecord],
    start_ms: f64,
    end_ms: f64,
    width: f64,
) {
    let last = out.len().saturating_sub(1);
    for r in records {
        if !(r.end_ms >= start_ms && r.end_ms <= end_ms) {
            continue;
        }
        let i = (((r.end_ms - start_ms) / width) as usize).min(last);
        let Some(b) = out.get_mut(i) else { continue };
        match r.outcome {
            Outcome::Ok => b.ok += 1,
            Outcome::Refused => b.refused += 1,
            Outcome::Failed => b.failed += 1,
        }
    }
}

/// Sets each slice's `in_flight`: the open count at its start, or the highest it reaches
/// within it.
fn sweep_in_flight(out: &mut [Bucket], records: &[RequestRecord], width: f64) {
    // An end sorts before a start at the same instant: the intervals are half-open.
    let mut events: Vec<(f64, i64)> = records
        .iter()
        .filter(|r| r.end_ms > r.start_ms)
        .flat_map(|r| [(r.start_ms, 1), (r.end_ms, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut next) = (0_i64, 0);
    for b in out.iter_mut() {
        while let Some(&(at, delta)) = events.get(next)
            && at <= b.start_ms
        {
            open += delta;
            next += 1;
        }
        let mut peak = open;
        while let Some(&(at, delta)) = events.get(next)
            && at < b.start_ms + width
        {
            open += delta;
            peak = peak.max(open);
            next += 1;
        }
        b.in_flight = u32::try_from(peak.max(0)).unwrap_or(u32::MAX);
    }
}

/// The shutdown window, in [`WINDOW_BUCKETS`] slices: from a little before the first signal
/// (a tenth of its length, at least [`MIN_PAD_MS`], never before the start) to a little after
/// the last milestone (a fifth, at least as much: room for its label right of its mark). The
/// milestones: the exit, the second signal, the listener's closing, the restart's or the new
/// process's readiness, the instances' exits and returns; for a process that never exited,
/// the end of the drill. Not the audit's read-back. `None` without a signal.
pub(crate) fn window(records: &[RequestRecord], report: &DrillReport) -> Option<Window> {
    let first = first_signal(report)?;
    let last = shutdown_milestones(report)
        .into_iter()
        .fold(first, f64::max);
    let length = last - first;
    let start_ms = (first - (length * 0.1).max(MIN_PAD_MS)).max(0.0);
    let end_ms = last + (length * 0.2).max(MIN_PAD_MS);
    Some(Window {
        start_ms,
        end_ms,
        timeline: buckets(records, start_ms, end_ms, WINDOW_BUCKETS),
    })
}

/// When the (first) signal was sent: the report's, or for a rollout the earliest instance's.
pub(super) fn first_signal(report: &DrillReport) -> Option<f64> {
    let first = if report.instances.is_empty() {
        Some(report.signal_at_ms)
    } else {
        report
            .instances
            .iter()
            .filter_map(|i| i.signal_at_ms)
            .reduce(f64::min)
    };
    first.filter(|t| t.is_finite() && *t >= 0.0)
}

/// The times of the milestones the shutdown window must hold, besides the first signal.
fn shutdown_milestones(report: &DrillReport) -> Vec<f64> {
    let r = report;
    let mut at = vec![
        r.second_signal_at_ms,
        r.listener_closed_after_signal_ms
            .map(|d| r.signal_at_ms + d),
        r.exit_at_ms,
        r.restart_ready_at_ms,
        r.upgrade_ready_at_ms,
    ];
    for i in &r.instances {
        at.extend([i.signal_at_ms, i.exit_at_ms, i.ready_again_at_ms]);
    }
    if r.exit_at_ms.is_none() && r.instances.is_empty() {
        // It never exited: it drained until the drill killed it, at the end.
        at.push(Some(r.ended_at_ms));
    }
    at.into_iter().flatten().filter(|t| t.is_finite()).collect()
}
