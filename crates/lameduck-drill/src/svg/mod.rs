//! The timeline picture, in two panels: the whole drill, then the shutdown window at its own
//! scale. Each shows the requests by when they ended (stacked bars: ok, refused, failed, with
//! a tick row under the axis so that a single failure shows), the requests in flight (a line
//! on its own scale), the milestones (dashed marks, their labels laid out in rows so that none
//! overlaps another) and each process's lifetime (a lane: starting, serving, draining). With the
//! service's metrics (`--metrics-url`), its states as it reported them (a lane: serving, lame
//! duck, draining, stopped), its in-flight count per service (dashed lines on the in-flight
//! scale) and the fall of its readiness (a milestone). With `--ws`, the last Close frame each
//! URL's WebSocket clients received (a milestone). Plain, self-contained SVG, readable in
//! any browser.

mod layout;
mod marks;
mod metrics;
mod series;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::report::{Bucket, DrillReport};

use layout::{Entry, Key, Panel, Scale, Text, layout};
use marks::{Lane, Phase};
use metrics::Line;
pub(crate) use series::{timeline, window};

/// The picture's width.
const WIDTH: f64 = 1000.0;
/// Left of the plots: the count axis and the lanes' names.
const LEFT: f64 = 110.0;
/// Right of the plots: the in-flight axis.
const RIGHT: f64 = 60.0;
/// The plots' width.
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
/// A lane's height.
const LANE_H: f64 = 11.0;
/// From one lane to the next.
const LANE_STEP: f64 = 16.0;
/// The least height of a bar that counts anything.
const MIN_BAR: f64 = 2.0;

// Colours: of the outcomes, the in-flight line, the window's shade, the lanes' phases, the
// milestones.
/// Answered requests.
const OK: &str = "#81c784";
/// Refused requests.
const REFUSED: &str = "#616161";
/// Failed requests (and a failed verdict).
const FAILED: &str = "#d50000";
/// The in-flight line and its scale.
const IN_FLIGHT: &str = "#1a237e";
/// The shutdown window on the whole drill.
const SHADE: &str = "#fff59d";
/// Its edge, and the lines to its own panel.
const SHADE_EDGE: &str = "#f9a825";
/// A lane while its process starts.
const STARTING: &str = "#c5cae9";
/// A lane while its process serves.
const SERVING: &str = "#5c6bc0";
/// A lane while its process drains: the hatching's ground.
const DRAINING_BG: &str = "#ffcc80";
/// The hatching's stripes.
const DRAINING_LINE: &str = "#e65100";
/// Ready, and ready again.
const READY: &str = "#1565c0";
/// The signal.
const SIGNAL: &str = "#ef6c00";
/// The second signal.
const SECOND_SIGNAL: &str = "#bf360c";
/// The listener's closing.
const CLOSED: &str = "#6a1b9a";
/// An exit.
const EXIT: &str = "#212121";
/// The upgrade's new process ready.
const NEW_READY: &str = "#2e7d32";
/// The audit's read-back.
const READ_BACK: &str = "#795548";
/// Secondary text.
const MUTED: &str = "#555555";
/// A lane in the lame-duck delay (unready, still serving), as the service's metrics said.
const LAME_DUCK: &str = "#4db6ac";
/// A lane once the run is over, before the exit, as the service's metrics said.
const STOPPED: &str = "#424242";
/// `lameduck_ready` going 1 -> 0, as the service's metrics said.
const UNREADY: &str = "#00838f";
/// The last Close frame a `--ws` URL's clients received.
const WS_CLOSED: &str = "#ad1457";

/// The picture of `report`.
pub(crate) fn render(report: &DrillReport) -> String {
    let layout = layout(report);
    let mut svg = String::new();
    let h = layout.height;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<defs><pattern id="draining" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="{DRAINING_BG}"/><line x1="1" y1="0" x2="1" y2="6" stroke="{DRAINING_LINE}" stroke-width="2"/></pattern></defs>"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for t in &layout.header {
        draw_text(&mut svg, t);
    }
    draw_legend(&mut svg, &layout.legend);
    for panel in &layout.panels {
        draw_panel(&mut svg, panel, &layout.lanes, &layout.lines);
    }
    if let [upper, lower] = layout.panels.as_slice() {
        draw_zoom(&mut svg, upper, lower);
    }
    svg.push_str("</svg>\n");
    svg
}

/// A line of text.
fn draw_text(svg: &mut String, t: &Text) {
    let weight = if t.bold { r#" font-weight="bold""# } else { "" };
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="{}"{weight} fill="{}">{}</text>"#,
        t.x,
        t.y,
        t.size,
        t.colour,
        escape(&t.text)
    );
}

/// The legend.
fn draw_legend(svg: &mut String, entries: &[Entry]) {
    for e in entries {
        let (x, top) = (e.x, e.y - 10.0);
        let _ = match e.key {
            Key::Swatch(colour) => writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="12" height="12" fill="{colour}"/>"#
            ),
            Key::Line(colour) => writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{colour}" stroke-width="2"/>"#,
                e.y - 4.0,
                x + 12.0
            ),
            Key::Dashed(colour) => writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="4 2"/>"#,
                e.y - 4.0,
                x + 14.0
            ),
            Key::Shade => writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="12" height="12" fill="{SHADE}" stroke="{SHADE_EDGE}"/>"#
            ),
            Key::Hatch => writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="12" height="12" fill="url(#draining)"/>"#
            ),
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 16.0,
            e.y,
            escape(&e.text)
        );
    }
}

/// One panel: heading, shade, bars, tick rows, in-flight lines, axes, lanes, milestones.
fn draw_panel(svg: &mut String, p: &Panel<'_>, lanes: &[Lane], lines: &[Line]) {
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"#,
        p.top,
        escape(&p.title)
    );
    draw_frame(svg, p);
    draw_bars(svg, p);
    draw_ticks(svg, p);
    draw_in_flight(svg, p, lines);
    draw_services(svg, p, lines);
    draw_axes(svg, p, lines);
    draw_lanes(svg, p, lanes);
    draw_marks(svg, p);
}

/// The plot's background: the window's shade on the whole drill, a tint on the window.
fn draw_frame(svg: &mut String, p: &Panel<'_>) {
    let h = p.plot_bottom - p.plot_top;
    if p.origin.is_some() {
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{:.1}" width="{PLOT_W}" height="{h:.1}" fill="#fffde7" stroke="{SHADE_EDGE}"/>"##,
            p.plot_top
        );
    }
    if let Some(shade) = p.shade {
        let x0 = p.scale.x(shade.t0.max(p.scale.t0));
        let w = (p.scale.x(shade.t1.min(p.scale.t1)) - x0).max(3.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="{SHADE}" stroke="{SHADE_EDGE}"/>"#,
            p.plot_top
        );
    }
}

/// A slice's total.
fn total(b: &Bucket) -> u32 {
    b.ok.saturating_add(b.refused).saturating_add(b.failed)
}

/// A column's width.
fn column_w(p: &Panel<'_>) -> f64 {
    PLOT_W / p.buckets.len().max(1) as f64
}

/// The stacked bars: ok, refused, failed; anything counted at least [`MIN_BAR`] high.
fn draw_bars(svg: &mut String, p: &Panel<'_>) {
    let peak = p.buckets.iter().map(total).max().unwrap_or(0).max(1);
    let unit = (p.plot_bottom - p.plot_top - 3.0 * MIN_BAR) / f64::from(peak);
    let w = column_w(p);
    for b in p.buckets {
        let x = p.scale.x(b.start_ms);
        let mut base = p.plot_bottom;
        for (count, colour, class) in [
            (b.ok, OK, "ok"),
            (b.refused, REFUSED, "refused"),
            (b.failed, FAILED, "failed"),
        ] {
            if count == 0 {
                continue;
            }
            let h = (f64::from(count) * unit).max(MIN_BAR);
            base -= h;
            let _ = writeln!(
                svg,
                r#"<rect class="bar {class}" x="{x:.2}" y="{base:.2}" width="{:.2}" height="{h:.2}" fill="{colour}"/>"#,
                w.max(0.5)
            );
        }
    }
}

/// Under the axis, a grey tick for each slice with a refused request and a red one for each
/// with a failed one: visible whatever the counts.
fn draw_ticks(svg: &mut String, p: &Panel<'_>) {
    let w = column_w(p);
    for b in p.buckets {
        let x = p.scale.x(b.start_ms);
        for (count, y, h, colour, class) in [
            (b.refused, 2.0, 3.0, REFUSED, "refused"),
            (b.failed, 6.0, 4.0, FAILED, "failed"),
        ] {
            if count > 0 {
                let _ = writeln!(
                    svg,
                    r#"<rect class="tick {class}" x="{x:.2}" y="{:.2}" width="{:.2}" height="{h}" fill="{colour}"/>"#,
                    p.plot_bottom + y,
                    w.max(3.0)
                );
            }
        }
    }
}

/// The most requests in flight per slice, as a step line on the right scale.
fn draw_in_flight(svg: &mut String, p: &Panel<'_>, lines: &[Line]) {
    let peak = in_flight_top(p, lines);
    let w = column_w(p);
    let scale = (p.plot_bottom - p.plot_top - 4.0) / f64::from(peak);
    let mut points = String::new();
    for b in p.buckets {
        let x = p.scale.x(b.start_ms);
        let y = p.plot_bottom - f64::from(b.in_flight) * scale;
        let _ = write!(points, "{x:.1},{y:.1} {:.1},{y:.1} ", x + w);
    }
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{IN_FLIGHT}" stroke-width="1.5" stroke-linejoin="round" points="{}"/>"#,
        points.trim_end()
    );
}

/// Each service's requests in flight as it counted them (`--metrics-url`), a step line per
/// service on the right scale, clipped to the panel.
fn draw_services(svg: &mut String, p: &Panel<'_>, lines: &[Line]) {
    let top = f64::from(in_flight_top(p, lines));
    let scale = (p.plot_bottom - p.plot_top - 4.0) / top;
    for line in lines {
        for run in &line.runs {
            let points: Vec<String> = run
                .iter()
                .filter(|(t, _)| *t >= p.scale.t0 && *t <= p.scale.t1)
                .map(|&(t, v)| {
                    let y = p.plot_bottom - v.clamp(0.0, top) * scale;
                    format!("{:.1},{y:.1}", p.scale.x(t))
                })
                .collect();
            if points.len() < 2 {
                continue;
            }
            let _ = writeln!(
                svg,
                r#"<polyline class="service" data-service="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="6 2" stroke-linejoin="round" points="{}"/>"#,
                escape(&line.service),
                line.colour,
                points.join(" ")
            );
        }
    }
}

/// The right scale's top: a round number a little above the most in flight (the drill's
/// count, and each service's own).
fn in_flight_top(p: &Panel<'_>, lines: &[Line]) -> u32 {
    let services = lines
        .iter()
        .map(|l| l.peak_within(p.scale))
        .fold(0.0, f64::max)
        .min(f64::from(u32::MAX))
        .ceil() as u32;
    let peak = p
        .buckets
        .iter()
        .map(|b| b.in_flight)
        .max()
        .unwrap_or(0)
        .max(services)
        .max(1);
    let want = f64::from(peak) * 1.1;
    let magnitude = 10_f64.powf(want.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= want)
        .map_or(peak, |top| top.ceil() as u32)
}

/// Both count axes and the time axis with its ticks.
fn draw_axes(svg: &mut String, p: &Panel<'_>, lines: &[Line]) {
    let (top, bottom, right) = (p.plot_top, p.plot_bottom, LEFT + PLOT_W);
    let peak = p.buckets.iter().map(total).max().unwrap_or(0).max(1);
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{bottom:.1}" x2="{right}" y2="{bottom:.1}" stroke="black"/><line x1="{LEFT}" y1="{top:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="black"/><line x1="{right}" y1="{top:.1}" x2="{right}" y2="{bottom:.1}" stroke="{IN_FLIGHT}"/>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{0}" y="{1:.1}" text-anchor="end">{peak}</text><text x="{0}" y="{2:.1}" text-anchor="end" font-size="10" fill="{MUTED}">ended</text><text x="{0}" y="{3:.1}" text-anchor="end">0</text>"##,
        LEFT - 6.0,
        top + 10.0,
        top + 23.0,
        bottom
    );
    let _ = writeln!(
        svg,
        r#"<text x="{0}" y="{1:.1}" fill="{IN_FLIGHT}">{peak}</text><text x="{0}" y="{2:.1}" font-size="10" fill="{IN_FLIGHT}">in flight</text><text x="{0}" y="{3:.1}" fill="{IN_FLIGHT}">0</text>"#,
        right + 6.0,
        top + 10.0,
        top + 23.0,
        bottom,
        peak = in_flight_top(p, lines)
    );
    for (at, text) in ticks(p.scale, p.origin) {
        let x = p.scale.x(at);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{text}</text>"#,
            bottom + 12.0,
            bottom + 25.0
        );
    }
}

/// The time axis's ticks: round steps from the origin (0, or the signal, signed).
fn ticks(scale: Scale, origin: Option<f64>) -> Vec<(f64, String)> {
    let zero = origin.unwrap_or(0.0);
    let step = nice_step(scale.span());
    let first = ((scale.t0 - zero) / step).ceil() as i64;
    let last = ((scale.t1 - zero) / step).floor() as i64;
    (first..=last)
        .map(|k| {
            let rel = k as f64 * step;
            (zero + rel, tick_text(rel, step, origin.is_some()))
        })
        .collect()
}

/// A round step (1, 2 or 5 times a power of ten) giving at most about ten ticks over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = (span / 8.0).max(1e-3);
    let magnitude = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick's text, with as many decimals as its step needs.
fn tick_text(ms: f64, step: f64, signed: bool) -> String {
    let text = if step >= 500.0 {
        let d = decimals(step / 1000.0);
        format!("{:.d$} s", ms / 1000.0)
    } else {
        let d = decimals(step);
        format!("{ms:.d$} ms")
    };
    if signed && ms > 0.0 {
        format!("+{text}")
    } else {
        text
    }
}

/// The decimals a step of `step` units needs.
fn decimals(step: f64) -> usize {
    match step {
        s if s >= 1.0 => 0,
        s if s >= 0.1 => 1,
        s if s >= 0.01 => 2,
        _ => 3,
    }
}

/// The processes' lanes under the panel.
fn draw_lanes(svg: &mut String, p: &Panel<'_>, lanes: &[Lane]) {
    for (i, lane) in lanes.iter().enumerate() {
        let y = p.lanes_top + i as f64 * LANE_STEP;
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text><rect x="{LEFT}" y="{y:.1}" width="{PLOT_W}" height="{LANE_H}" fill="#f5f5f5"/>"##,
            LEFT - 6.0,
            y + LANE_H - 1.0,
            escape(&lane.name)
        );
        for &(from, to, phase) in &lane.spans {
            let (from, to) = (from.max(p.scale.t0), to.min(p.scale.t1));
            if to <= from {
                continue;
            }
            let fill = match phase {
                Phase::Starting => STARTING,
                Phase::Serving => SERVING,
                Phase::Draining => "url(#draining)",
                Phase::LameDuck => LAME_DUCK,
                Phase::Stopped => STOPPED,
            };
            let x0 = p.scale.x(from);
            let w = (p.scale.x(to) - x0).max(1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.2}" y="{y:.1}" width="{w:.2}" height="{LANE_H}" fill="{fill}"/>"#
            );
        }
    }
}

/// The milestones: dashed lines down through the plot and the lanes, then the labels on top
/// of every line, each on a white box.
fn draw_marks(svg: &mut String, p: &Panel<'_>) {
    for m in &p.marks {
        let y1 = m.label.as_ref().map_or(p.plot_top, |l| l.rect.y1);
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{y1:.1}" x2="{0:.1}" y2="{1:.1}" stroke="{2}" stroke-width="1.2" stroke-dasharray="4 3"/>"#,
            m.x, p.bottom, m.mark.colour
        );
    }
    for m in &p.marks {
        let Some(l) = &m.label else { continue };
        let r = l.rect;
        let (x, anchor) = if l.anchor_end {
            (r.x1 - 2.0, "end")
        } else {
            (r.x0 + 2.0, "start")
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" fill-opacity="0.9"/><text x="{x:.1}" y="{:.1}" text-anchor="{anchor}" fill="{}">{}</text>"#,
            r.x0,
            r.y0,
            r.x1 - r.x0,
            r.y1 - r.y0,
            r.y1 - 3.0,
            m.mark.colour,
            escape(&l.text)
        );
    }
}

/// Lines from the window's shade on the whole drill to the corners of its own panel.
fn draw_zoom(svg: &mut String, upper: &Panel<'_>, lower: &Panel<'_>) {
    let Some(shade) = upper.shade else { return };
    let (y0, y1) = (upper.bottom + 2.0, lower.top - 16.0);
    let (t0, t1) = (shade.t0.max(upper.scale.t0), shade.t1.min(upper.scale.t1));
    for (from, to) in [(t0, LEFT), (t1, LEFT + PLOT_W)] {
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y0:.1}" x2="{to:.1}" y2="{y1:.1}" stroke="{SHADE_EDGE}" stroke-dasharray="2 2"/>"#,
            upper.scale.x(from)
        );
    }
}

/// `text`, safe inside an element or an attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
