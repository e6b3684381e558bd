//! The timeline picture: requests over time as stacked bars coloured by outcome, with the
//! drill's milestones as vertical marks. Plain SVG, readable in any browser.

use std::fmt::Write as _;

use crate::report::{Bucket, DrillReport, RequestRecord};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
/// Columns of the timeline.
pub(crate) const BUCKETS: usize = 200;

const OK: &str = "#2e7d32";
const REFUSED: &str = "#9e9e9e";
const FAILED: &str = "#c62828";

/// Requests by the time they ended, in [`BUCKETS`] slices of `[0, end_ms]`.
pub(crate) fn buckets(records: &[RequestRecord], end_ms: f64) -> Vec<Bucket> {
    let width = (end_ms / BUCKETS as f64).max(f64::MIN_POSITIVE);
    let mut buckets: Vec<Bucket> = (0..BUCKETS)
        .map(|i| Bucket {
            start_ms: i as f64 * width,
            ..Bucket::default()
        })
        .collect();
    for r in records {
        let i = ((r.end_ms / width) as usize).min(BUCKETS - 1);
        let b = &mut buckets[i];
        match r.outcome {
            crate::report::Outcome::Ok => b.ok += 1,
            crate::report::Outcome::Refused => b.refused += 1,
            crate::report::Outcome::Failed => b.failed += 1,
        }
    }
    buckets
}

/// The picture of `report`.
pub(crate) fn render(report: &DrillReport) -> String {
    let end = report.ended_at_ms.max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |ms: f64| LEFT + ms / end * plot_w;
    let peak = report
        .timeline
        .iter()
        .map(|b| b.ok + b.refused + b.failed)
        .max()
        .unwrap_or(1)
        .max(1);
    let y = |n: f64| n / f64::from(peak) * plot_h;
    let mut svg = String::new();
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let r = &report.requests;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">lameduck-drill: {verdict} ({} ok, {} refused, {} failed)</text>"#,
        r.ok, r.refused, r.failed
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="38" fill="#555">{}</text>"##,
        escape(&report.command.join(" "))
    );
    // Bars: requests that ended in each slice, stacked ok / refused / failed.
    let bar_w = plot_w / report.timeline.len().max(1) as f64;
    for b in &report.timeline {
        let mut base = TOP + plot_h;
        for (count, colour) in [(b.ok, OK), (b.refused, REFUSED), (b.failed, FAILED)] {
            if count == 0 {
                continue;
            }
            let h = y(f64::from(count));
            base -= h;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.2}" y="{base:.2}" width="{:.2}" height="{h:.2}" fill="{colour}"/>"#,
                x(b.start_ms),
                bar_w.max(0.5)
            );
        }
    }
    // Axes.
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>"#,
        TOP + plot_h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{peak}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
        LEFT - 6.0,
        TOP + 4.0,
        LEFT - 6.0,
        TOP + plot_h
    );
    let step = tick_step(end);
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            TOP + plot_h + 16.0,
            format_s(t)
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">time since start (requests by when they ended)</text>"##,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 34.0
    );
    // Milestones.
    let marks = [
        (Some(report.ready_after_ms), "ready", "#1565c0"),
        (Some(report.signal_at_ms), "signal", "#ef6c00"),
        (report.second_signal_at_ms, "2nd signal", "#bf360c"),
        (
            report
                .listener_closed_after_signal_ms
                .map(|d| report.signal_at_ms + d),
            "listener closed",
            "#6a1b9a",
        ),
        (report.exit_at_ms, "exit", "#000000"),
        (report.restart_ready_at_ms, "ready again", "#1565c0"),
        (report.upgrade_ready_at_ms, "new process ready", "#2e7d32"),
    ];
    for (i, (at, label, colour)) in marks.iter().enumerate() {
        let Some(at) = at else { continue };
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3}" fill="{colour}">{label}</text>"#,
            x(*at),
            TOP + plot_h,
            x(*at) + 3.0,
            TOP + 12.0 + 13.0 * i as f64
        );
    }
    // Legend.
    for (i, (label, colour)) in [("ok", OK), ("refused", REFUSED), ("failed", FAILED)]
        .iter()
        .enumerate()
    {
        let lx = LEFT + 110.0 * i as f64;
        let ly = HEIGHT - 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{ly}">{label}</text>"#,
            ly - 10.0,
            lx + 16.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn tick_step(end_ms: f64) -> f64 {
    for step in [
        10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0,
    ] {
        if end_ms / step <= 12.0 {
            return step;
        }
    }
    60_000.0
}

fn format_s(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
