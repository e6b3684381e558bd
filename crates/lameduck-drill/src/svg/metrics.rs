//! The service's own view (`--metrics-url`): its states as a lane under the processes' (ready,
//! lame duck, draining, stopped, as it reported them), and its requests in flight per service
//! as lines on the in-flight scale, beside the drill's own count.

use crate::report::{MetricsReport, MetricsSample};

use super::layout::Scale;
use super::marks::{Lane, Phase};

/// The lines' colours, one per service in name order (then again from the first).
const SERVICE_COLOURS: [&str; 6] = [
    "#c2185b", "#00897b", "#8e24aa", "#f4511e", "#7cb342", "#546e7a",
];

/// How many intervals apart two samples may be and still be one stretch (more: the scrapes
/// between them failed, and nothing is known of that time).
const GAP_INTERVALS: f64 = 2.5;

/// The lane's name.
pub(super) const LANE_NAME: &str = "metrics state";

/// One service's in-flight line: stretches of steps, `(ms, value)`, broken where nothing is
/// known (failed scrapes, a value that is not a number).
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The service.
    pub(crate) service: String,
    /// Its colour.
    pub(crate) colour: &'static str,
    /// Its legend text.
    pub(crate) legend: String,
    /// The stretches, each a step line's corners.
    pub(crate) runs: Vec<Vec<(f64, f64)>>,
}

impl Line {
    /// The highest value within `scale`'s time.
    pub(super) fn peak_within(&self, scale: Scale) -> f64 {
        self.runs
            .iter()
            .flatten()
            .filter(|(t, _)| *t >= scale.t0 && *t <= scale.t1)
            .map(|&(_, v)| v)
            .fold(0.0, f64::max)
    }
}

/// Until when sample `i` holds: the next sample, if it is near; else one interval on (never
/// past `end`).
fn held_until(samples: &[MetricsSample], i: usize, interval: f64, end: f64) -> f64 {
    let at = samples[i].at_ms;
    let next = samples
        .get(i + 1)
        .map(|n| n.at_ms)
        .filter(|&next| next - at <= GAP_INTERVALS * interval);
    next.unwrap_or(at + interval).min(end.max(at))
}

/// The one that is not near the next: a stretch ends there.
fn ends_stretch(samples: &[MetricsSample], i: usize, interval: f64) -> bool {
    samples
        .get(i + 1)
        .is_none_or(|n| n.at_ms - samples[i].at_ms > GAP_INTERVALS * interval)
}

/// What a sample says the process was doing (`None`: it did not say).
fn phase(s: &MetricsSample) -> Option<Phase> {
    if s.lame_duck == Some(1.0) {
        return Some(Phase::LameDuck);
    }
    match s.state.as_deref() {
        Some("starting") => Some(Phase::Starting),
        Some("ready") => Some(Phase::Serving),
        Some("draining") => Some(Phase::Draining),
        Some("stopped") => Some(Phase::Stopped),
        _ => (s.ready == Some(1.0)).then_some(Phase::Serving),
    }
}

/// The states the service reported, as a lane (spans of one phase merged); `None` if no
/// sample said any.
pub(super) fn state_lane(m: &MetricsReport, end: f64) -> Option<Lane> {
    let interval = m.interval_ms.max(f64::MIN_POSITIVE);
    let mut spans: Vec<(f64, f64, Phase)> = Vec::new();
    for (i, s) in m.samples.iter().enumerate() {
        let Some(phase) = phase(s) else { continue };
        let (from, to) = (s.at_ms, held_until(&m.samples, i, interval, end));
        if !(from.is_finite() && to.is_finite()) || to <= from {
            continue;
        }
        match spans.last_mut() {
            Some(last) if last.2 == phase && (last.1 - from).abs() < 1e-9 => last.1 = to,
            _ => spans.push((from, to, phase)),
        }
    }
    (!spans.is_empty()).then(|| Lane {
        name: LANE_NAME.to_owned(),
        spans,
    })
}

/// Each service's in-flight line, in name order.
pub(super) fn lines(m: &MetricsReport, end: f64) -> Vec<Line> {
    let interval = m.interval_ms.max(f64::MIN_POSITIVE);
    let mut services: Vec<&String> = m.samples.iter().flat_map(|s| s.in_flight.keys()).collect();
    services.sort();
    services.dedup();
    services
        .into_iter()
        .enumerate()
        .map(|(n, service)| {
            let mut runs = Vec::new();
            let mut run: Vec<(f64, f64)> = Vec::new();
            for (i, s) in m.samples.iter().enumerate() {
                match s.in_flight.get(service).copied().filter(|v| v.is_finite()) {
                    Some(v) if s.at_ms.is_finite() => {
                        run.push((s.at_ms, v));
                        run.push((held_until(&m.samples, i, interval, end), v));
                    }
                    _ => runs.extend((!run.is_empty()).then(|| std::mem::take(&mut run))),
                }
                if ends_stretch(&m.samples, i, interval) && !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
            }
            runs.extend((!run.is_empty()).then_some(run));
            Line {
                service: service.clone(),
                colour: SERVICE_COLOURS[n % SERVICE_COLOURS.len()],
                legend: format!("{service} in flight (metrics)"),
                runs,
            }
        })
        .collect()
}
