//! Where everything goes: the panels' scales and rows, the milestones' labels placed so that
//! none overlaps another, the header and the legend.

use crate::report::{Bucket, DrillReport, Window};

use super::marks::{Lane, Mark, lanes, marks, signal_name};
use super::metrics::{Line, lines};
use super::series::first_signal;
use super::{
    FAILED, IN_FLIGHT, LAME_DUCK, LANE_STEP, LEFT, MUTED, OK, PLOT_W, REFUSED, SERVING, STARTING,
    STOPPED, WIDTH,
};

/// Where the header and the legend start.
const MARGIN: f64 = 16.0;
/// The estimated width of a character at font-size 12.
pub(crate) const CHAR_W: f64 = 6.5;
/// The height of a row of milestone labels.
pub(super) const ROW_H: f64 = 15.0;
/// The least space between two labels in a row.
const LABEL_GAP: f64 = 4.0;
/// The most rows the window's labels take as a staircase (more, and they are packed).
const STAIRCASE_ROWS: usize = 10;
/// The rows the upper panel gives its labels (the lower one takes as many as it needs).
const UPPER_ROWS: usize = 2;
/// The upper plot's height.
const UPPER_H: f64 = 130.0;
/// The lower plot's height.
const LOWER_H: f64 = 190.0;

/// A panel's time axis: `[t0, t1]` (milliseconds since the drill started) across the plot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    /// The left edge's time.
    pub(crate) t0: f64,
    /// The right edge's time.
    pub(crate) t1: f64,
}

impl Scale {
    /// Its length, never 0.
    pub(super) fn span(self) -> f64 {
        (self.t1 - self.t0).max(1e-6)
    }

    /// The x of `ms`.
    pub(super) fn x(self, ms: f64) -> f64 {
        LEFT + (ms - self.t0) / self.span() * PLOT_W
    }

    /// Whether `ms` is on the axis.
    fn contains(self, ms: f64) -> bool {
        ms >= self.t0 && ms <= self.t1
    }
}

/// A box in the picture's coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rect {
    /// Left.
    pub(crate) x0: f64,
    /// Top.
    pub(crate) y0: f64,
    /// Right.
    pub(crate) x1: f64,
    /// Bottom.
    pub(crate) y1: f64,
}

impl Rect {
    /// Whether the two boxes share any area.
    #[cfg(test)]
    pub(crate) fn overlaps(&self, other: &Rect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }
}

/// A milestone's label, where the renderer draws it.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    /// Its text.
    pub(crate) text: String,
    /// Its box (a white background under the text).
    pub(crate) rect: Rect,
    /// Whether it sits left of its mark (too near the right edge for the right).
    pub(crate) anchor_end: bool,
}

/// A milestone as a panel draws it.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// The milestone.
    pub(crate) mark: Mark,
    /// Its line's x.
    pub(crate) x: f64,
    /// Its label, if the panel had room for it.
    pub(crate) label: Option<Label>,
}

/// One panel, laid out.
#[derive(Debug)]
pub(crate) struct Panel<'a> {
    /// Its heading.
    pub(crate) title: String,
    /// Its time axis.
    pub(crate) scale: Scale,
    /// What the tick labels count from: `None`, the drill's start; `Some`, the first signal
    /// (and they are signed).
    pub(crate) origin: Option<f64>,
    /// The bars.
    pub(crate) buckets: &'a [Bucket],
    /// The shutdown window, shaded.
    pub(crate) shade: Option<Scale>,
    /// The milestones on its axis.
    pub(crate) marks: Vec<Placed>,
    /// The heading's baseline.
    pub(crate) top: f64,
    /// The plot's top.
    pub(crate) plot_top: f64,
    /// The plot's bottom (the time axis).
    pub(crate) plot_bottom: f64,
    /// The first lane's top.
    pub(crate) lanes_top: f64,
    /// The panel's bottom, under its last lane.
    pub(crate) bottom: f64,
}

/// What a panel shows, before it is laid out (see [`Panel`] for the fields it shares).
struct Spec<'a> {
    /// Its heading.
    title: String,
    /// Its time axis.
    scale: Scale,
    /// What its tick labels count from.
    origin: Option<f64>,
    /// The bars.
    buckets: &'a [Bucket],
    /// The shutdown window, shaded.
    shade: Option<Scale>,
    /// How many rows of labels it may use (`None`: as many as it takes).
    max_rows: Option<usize>,
    /// The plot's height.
    plot_h: f64,
}

/// A line of the header.
#[derive(Debug, Clone)]
pub(super) struct Text {
    /// Where it starts.
    pub(super) x: f64,
    /// Its baseline.
    pub(super) y: f64,
    /// What it says.
    pub(super) text: String,
    /// Its font size.
    pub(super) size: u8,
    /// Whether in bold.
    pub(super) bold: bool,
    /// Its colour.
    pub(super) colour: &'static str,
}

/// What a legend entry's key looks like.
#[derive(Debug, Clone, Copy)]
pub(super) enum Key {
    /// A square of a colour.
    Swatch(&'static str),
    /// A line of a colour.
    Line(&'static str),
    /// A dashed line of a colour (a service's own count).
    Dashed(&'static str),
    /// The window's shade.
    Shade,
    /// The draining hatch.
    Hatch,
}

/// A legend entry at its place.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Its key's left.
    pub(super) x: f64,
    /// Its text's baseline.
    pub(super) y: f64,
    /// Its key.
    pub(super) key: Key,
    /// What it names.
    pub(super) text: String,
}

/// The whole picture, laid out: what [`render`](super::render) draws, and what the tests check.
#[derive(Debug)]
pub(crate) struct Layout<'a> {
    /// The title, the command, why it failed.
    pub(super) header: Vec<Text>,
    /// The legend's entries.
    pub(super) legend: Vec<Entry>,
    /// The whole drill, then (if there was a signal) the shutdown window.
    pub(crate) panels: Vec<Panel<'a>>,
    /// The processes' lifetimes, under each panel (and the states the service reported).
    pub(crate) lanes: Vec<Lane>,
    /// Each service's requests in flight, as it reported them.
    pub(crate) lines: Vec<Line>,
    /// The picture's height.
    pub(crate) height: f64,
}

/// Lays out the picture of `report`.
pub(crate) fn layout(report: &DrillReport) -> Layout<'_> {
    let header = header(report);
    let below_header = header.last().map_or(20.0, |t| t.y) + 24.0;
    let lines = report.metrics.as_ref().map_or_else(Vec::new, |m| {
        lines(m, report.exit_at_ms.unwrap_or(report.ended_at_ms))
    });
    let (legend, below_legend) = legend(below_header, report.metrics.is_some(), &lines);
    let lanes = lanes(report);
    let marks = marks(report);
    let upper = lay_out_panel(upper_spec(report), &marks, lanes.len(), below_legend + 26.0);
    let mut panels = vec![upper];
    if let Some(window) = &report.window {
        let top = panels.last().map_or(0.0, |p| p.bottom) + 48.0;
        let lower = lower_spec(report, window);
        panels.push(lay_out_panel(lower, &marks, lanes.len(), top));
    }
    let height = panels.last().map_or(below_legend, |p| p.bottom) + 20.0;
    Layout {
        header,
        legend,
        panels,
        lanes,
        lines,
        height: height.ceil(),
    }
}

/// The upper panel: the whole drill.
fn upper_spec(report: &DrillReport) -> Spec<'_> {
    let end = report.ended_at_ms.max(1.0);
    let slice = end / report.timeline.len().max(1) as f64;
    Spec {
        title: format!(
            "Whole drill, 0 to {}: requests ended per {} (bars, left scale), open at once \
             (line, right scale)",
            duration(end),
            duration(slice)
        ),
        scale: Scale { t0: 0.0, t1: end },
        origin: None,
        buckets: &report.timeline,
        shade: report.window.as_ref().map(|w| Scale {
            t0: w.start_ms,
            t1: w.end_ms,
        }),
        max_rows: Some(UPPER_ROWS),
        plot_h: UPPER_H,
    }
}

/// The lower panel: the shutdown window.
fn lower_spec<'a>(report: &DrillReport, window: &'a Window) -> Spec<'a> {
    let origin = first_signal(report).unwrap_or(window.start_ms);
    let slice = (window.end_ms - window.start_ms) / window.timeline.len().max(1) as f64;
    Spec {
        title: format!(
            "Shutdown window, {} to {} (times from the signal): requests ended per {}, open \
             at once",
            duration(window.start_ms),
            duration(window.end_ms),
            duration(slice)
        ),
        scale: Scale {
            t0: window.start_ms,
            t1: window.end_ms,
        },
        origin: Some(origin),
        buckets: &window.timeline,
        shade: None,
        max_rows: None,
        plot_h: LOWER_H,
    }
}

/// A milestone's label: its name, and in the window its time from the signal.
fn label_text(mark: &Mark, origin: Option<f64>) -> String {
    match origin {
        Some(origin) if (mark.at_ms - origin).abs() > 1e-9 => {
            format!("{} {}", mark.name, signed(mark.at_ms - origin))
        }
        _ => mark.name.clone(),
    }
}

/// The estimated width of a label's box (the text and 2 px either side).
pub(crate) fn label_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_W + 4.0
}

/// Where a label goes: its row (0 is nearest the plot), its box's left and right, and whether
/// it sits left of its mark.
type Slot = (usize, f64, f64, bool);

/// How [`fill`] may place a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// In a row where its box clears the others, no other mark's line crosses it and its own
    /// crosses no label under it; if there is none, not at all.
    Strict,
    /// As [`Rule::Strict`], else in the lowest row its box clears.
    StrictOrClear,
    /// In the lowest row its box clears.
    Clear,
}

/// Puts each label (its mark's x, its width) in a row, none overlapping another (by
/// [`LABEL_GAP`] at least). With `max_rows` (the whole drill): in time order, each in the
/// lowest row where no line crosses it either, or left out (`None`). Without (the window):
/// each after the labels of the marks its box covers, so that it can sit above them, clear of
/// their lines (the staircase a timeline's labels make), every mark labelled; if that takes
/// more than [`STAIRCASE_ROWS`] rows, in time order in the lowest row each box clears, lines
/// crossing labels as they may.
fn place_rows(items: &[(f64, f64)], max_rows: Option<usize>) -> Vec<Option<Slot>> {
    let sides: Vec<(f64, f64, bool)> = items.iter().map(|&(x, w)| side(x, w)).collect();
    let in_time: Vec<usize> = (0..items.len()).collect();
    if let Some(rows) = max_rows {
        return fill(items, &sides, &in_time, rows, Rule::Strict);
    }
    let rows = items.len() + 1;
    let staircase = fill(
        items,
        &sides,
        &cover_order(items, &sides),
        rows,
        Rule::StrictOrClear,
    );
    let used = staircase
        .iter()
        .flatten()
        .map(|s| s.0 + 1)
        .max()
        .unwrap_or(0);
    if used <= STAIRCASE_ROWS {
        staircase
    } else {
        fill(items, &sides, &in_time, rows, Rule::Clear)
    }
}

/// Places the labels in `order`, each in the lowest of `rows` rows `rule` allows.
fn fill(
    items: &[(f64, f64)],
    sides: &[(f64, f64, bool)],
    order: &[usize],
    rows: usize,
    rule: Rule,
) -> Vec<Option<Slot>> {
    let mut placed: Vec<Option<Slot>> = vec![None; items.len()];
    for &i in order {
        let others: Vec<(f64, Slot)> = items
            .iter()
            .zip(&placed)
            .filter_map(|(&(x, _), slot)| slot.map(|s| (x, s)))
            .collect();
        let (x, (x0, x1, end)) = (items[i].0, sides[i]);
        let strict = |s: &Slot| clears_row(*s, &others) && clears_lines(x, *s, &others);
        let clear = |s: &Slot| clears_row(*s, &others);
        let mut slots = (0..rows).map(|row| (row, x0, x1, end));
        placed[i] = match rule {
            Rule::Strict => slots.find(strict),
            Rule::StrictOrClear => slots.clone().find(strict).or_else(|| slots.find(clear)),
            Rule::Clear => slots.find(clear),
        };
    }
    placed
}

/// A label's box (mark at `x`, width `w`): right of its mark, or left of it where the right
/// edge is too near (the right anyway if neither fits).
fn side(x: f64, w: f64) -> (f64, f64, bool) {
    if x + 3.0 + w > WIDTH - 2.0 && x - 3.0 - w >= 2.0 {
        (x - 3.0 - w, x - 3.0, true)
    } else {
        (x + 3.0, x + 3.0 + w, false)
    }
}

/// An order of the labels in which each comes after those of the marks its box covers (in a
/// cycle, the first left goes first).
fn cover_order(items: &[(f64, f64)], sides: &[(f64, f64, bool)]) -> Vec<usize> {
    let covers = |i: usize, j: usize| {
        let (x0, x1, _) = sides[i];
        i != j && items[j].0 >= x0 - 1.0 && items[j].0 <= x1 + 1.0
    };
    let mut done = vec![false; items.len()];
    let mut order = Vec::with_capacity(items.len());
    while order.len() < items.len() {
        let free = |i: usize| !done[i] && (0..items.len()).all(|j| done[j] || !covers(i, j));
        let next = (0..items.len()).find(|&i| free(i));
        let Some(i) = next.or_else(|| done.iter().position(|d| !d)) else {
            break;
        };
        done[i] = true;
        order.push(i);
    }
    order
}

/// Whether a slot's box clears the boxes already in its row.
fn clears_row(slot: Slot, others: &[(f64, Slot)]) -> bool {
    let (row, x0, x1, _) = slot;
    others
        .iter()
        .filter(|(_, o)| o.0 == row)
        .all(|&(_, (_, a, b, _))| x1 + LABEL_GAP <= a || b + LABEL_GAP <= x0)
}

/// Whether no line crosses a slot's box (the lines of labels above it), and its own line at
/// `x` crosses no box under it.
fn clears_lines(x: f64, slot: Slot, others: &[(f64, Slot)]) -> bool {
    let (row, x0, x1, _) = slot;
    others.iter().all(|&(ox, (orow, a, b, _))| {
        let crossed = orow > row && ox >= x0 - 1.0 && ox <= x1 + 1.0;
        let crossing = orow < row && x >= a - 1.0 && x <= b + 1.0;
        !crossed && !crossing
    })
}

/// Lays out one panel from `top` down: heading, label rows, plot, axis, `lanes` lanes.
fn lay_out_panel<'a>(spec: Spec<'a>, marks: &[Mark], lanes: usize, top: f64) -> Panel<'a> {
    let visible: Vec<&Mark> = marks
        .iter()
        .filter(|m| spec.scale.contains(m.at_ms))
        .collect();
    let texts: Vec<String> = visible.iter().map(|m| label_text(m, spec.origin)).collect();
    let items: Vec<(f64, f64)> = visible
        .iter()
        .zip(&texts)
        .map(|(m, t)| (spec.scale.x(m.at_ms), label_width(t)))
        .collect();
    let rows = place_rows(&items, spec.max_rows);
    let used = rows.iter().flatten().map(|r| r.0 + 1).max().unwrap_or(0);
    let plot_top = top + 10.0 + used as f64 * ROW_H;
    let plot_bottom = plot_top + spec.plot_h;
    let lanes_top = plot_bottom + 34.0;
    let placed = visible
        .into_iter()
        .zip(texts)
        .zip(rows)
        .map(|((mark, text), row)| Placed {
            mark: mark.clone(),
            x: spec.scale.x(mark.at_ms),
            label: row.map(|(row, x0, x1, anchor_end)| {
                let baseline = plot_top - 5.0 - row as f64 * ROW_H;
                Label {
                    text,
                    rect: Rect {
                        x0,
                        y0: baseline - 11.0,
                        x1,
                        y1: baseline + 3.0,
                    },
                    anchor_end,
                }
            }),
        })
        .collect();
    Panel {
        title: spec.title,
        scale: spec.scale,
        origin: spec.origin,
        buckets: spec.buckets,
        shade: spec.shade,
        marks: placed,
        top,
        plot_top,
        plot_bottom,
        lanes_top,
        bottom: lanes_top + lanes as f64 * LANE_STEP,
    }
}

/// The title (verdict, mode, counts), the command, and why it failed.
fn header(report: &DrillReport) -> Vec<Text> {
    let r = &report.requests;
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let mode = if !report.instances.is_empty() {
        format!("rollout of {}", report.instances.len())
    } else if report.upgrade.is_some() {
        "upgrade in place".to_owned()
    } else if report.restart.is_some() {
        format!("{}, then a restart", signal_name(report.signal))
    } else {
        signal_name(report.signal)
    };
    let retried = if r.retried > 0 {
        format!(" ({} retried)", r.retried)
    } else {
        String::new()
    };
    let text = |y: f64, text: String, size, bold, colour| Text {
        x: MARGIN,
        y,
        text,
        size,
        bold,
        colour,
    };
    let title = format!(
        "lameduck-drill: {verdict} · {mode} · {} requests: {} ok, {} refused, {} \
         failed{retried}",
        r.total, r.ok, r.refused, r.failed
    );
    let mut lines = vec![
        text(
            22.0,
            clip(&title, 120),
            14,
            true,
            if report.passed { "#000000" } else { FAILED },
        ),
        text(40.0, clip(&report.command.join(" "), 148), 12, false, MUTED),
    ];
    for (i, reason) in report.reasons.iter().take(3).enumerate() {
        let y = 58.0 + 16.0 * i as f64;
        lines.push(text(
            y,
            clip(&format!("FAIL: {reason}"), 148),
            12,
            false,
            FAILED,
        ));
    }
    lines
}

/// The legend's entries from baseline `y`, wrapped to the width; and the y below them. With
/// the service's metrics, their states and each service's line too.
fn legend(y: f64, metrics: bool, lines: &[Line]) -> (Vec<Entry>, f64) {
    let mut entries: Vec<(Key, String)> = [
        (Key::Swatch(OK), "ok"),
        (Key::Swatch(REFUSED), "refused"),
        (Key::Swatch(FAILED), "failed"),
        (Key::Line(IN_FLIGHT), "in flight (right scale)"),
        (Key::Shade, "shutdown window"),
        (Key::Swatch(STARTING), "starting"),
        (Key::Swatch(SERVING), "serving"),
        (Key::Hatch, "draining"),
    ]
    .into_iter()
    .map(|(key, text)| (key, text.to_owned()))
    .collect();
    if metrics {
        entries.push((Key::Swatch(LAME_DUCK), "lame duck (metrics)".to_owned()));
        entries.push((Key::Swatch(STOPPED), "stopped (metrics)".to_owned()));
    }
    for line in lines {
        entries.push((Key::Dashed(line.colour), clip(&line.legend, 60)));
    }
    let (mut x, mut y) = (MARGIN, y);
    let mut out = Vec::new();
    for (key, text) in entries {
        let w = 16.0 + text.chars().count() as f64 * CHAR_W + 18.0;
        if x + w > WIDTH - MARGIN {
            x = MARGIN;
            y += 18.0;
        }
        out.push(Entry { x, y, key, text });
        x += w;
    }
    (out, y)
}

/// A duration, in ms or s.
fn duration(ms: f64) -> String {
    if ms.abs() >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms.abs() >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// A time from the signal, with its sign.
fn signed(ms: f64) -> String {
    if ms < 0.0 {
        format!("-{}", duration(-ms))
    } else {
        format!("+{}", duration(ms))
    }
}

/// `text`, cut to `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}
