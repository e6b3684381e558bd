use super::layout::{CHAR_W, Label, Layout, ROW_H};
use super::marks::lanes;
use super::series::{WINDOW_BUCKETS, buckets};
use super::*;
use crate::args::SignalName;
use crate::report::{
    AuditReport, Counts, InstanceReport, Kind, MetricsReport, MetricsSample, Outcome,
    RequestRecord, RestartReport, UpgradeReport,
};
use std::collections::BTreeMap;

fn record(start_ms: f64, end_ms: f64, outcome: Outcome) -> RequestRecord {
    RequestRecord {
        kind: Kind::Http,
        start_ms,
        end_ms,
        outcome,
        worker: 0,
        status: None,
        grpc_status: None,
        retried: false,
        error: None,
    }
}

/// A small deterministic generator of numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// `workers` workers sending back to back from `from` until `until`, each request lasting
/// 2 to 110 ms; `outcome` says how one sent at `start` and due at `end` ended, and when.
fn load(
    from: f64,
    until: f64,
    workers: u16,
    outcome: impl Fn(f64, f64, &mut Lcg) -> (Outcome, f64),
) -> Vec<RequestRecord> {
    let mut rng = Lcg(7);
    let mut records = Vec::new();
    for worker in 0..workers {
        let mut t = from + rng.next() * 5.0;
        while t < until {
            let due = t + 2.0 + rng.next() * 108.0;
            let (outcome, end) = outcome(t, due, &mut rng);
            let mut r = record(t, end, outcome);
            r.worker = worker;
            records.push(r);
            t = end
                + if outcome == Outcome::Refused {
                    5.0
                } else {
                    0.2
                };
        }
    }
    records
}

fn base(ended_at_ms: f64) -> DrillReport {
    DrillReport {
        command: vec![
            "./my-service".to_owned(),
            "--port".to_owned(),
            "8080".to_owned(),
            "<&\"quoted\">".to_owned(),
        ],
        passed: true,
        reasons: Vec::new(),
        ready_after_ms: 0.0,
        signal: SignalName::Term,
        signal_at_ms: 0.0,
        second_signal_at_ms: None,
        listener_closed_after_signal_ms: None,
        exit_after_signal_ms: None,
        exit_lag_ms: None,
        exit_code: Some(0),
        exit_signal: None,
        expected_exit_code: 0,
        requests: Counts::default(),
        in_flight_at_signal: 0,
        in_flight_at_signal_completed: 0,
        failures: Vec::new(),
        restart: None,
        ended_at_ms,
        timeline: Vec::new(),
        exit_at_ms: None,
        restart_ready_at_ms: None,
        upgrade: None,
        upgrade_ready_at_ms: None,
        window: None,
        grpc: None,
        audit: None,
        websockets: Vec::new(),
        instances: Vec::new(),
        metrics: None,
        records: Vec::new(),
    }
}

/// Fills in what run.rs computes from the records.
fn finish(mut report: DrillReport, records: &[RequestRecord]) -> DrillReport {
    report.requests = Counts::of(records);
    if report.requests.failed > 0 {
        report.passed = false;
        report.reasons.push(format!(
            "{} accepted request(s) failed",
            report.requests.failed
        ));
    }
    report.timeline = timeline(records, report.ended_at_ms);
    report.window = window(records, &report);
    report
}

/// A stop with a second signal, a failure, and a restart.
fn restart() -> DrillReport {
    let (signal, closed, exit) = (5000.0, 5001.8, 5130.0);
    let mut records = load(310.0, exit, 16, |start, due, _| {
        if start >= closed {
            (Outcome::Refused, start + 0.4)
        } else {
            (Outcome::Ok, due.min(exit))
        }
    });
    records.push(record(4990.0, 5129.0, Outcome::Failed));
    let mut r = base(5460.0);
    r.ready_after_ms = 310.0;
    r.signal_at_ms = signal;
    r.second_signal_at_ms = Some(5080.0);
    r.listener_closed_after_signal_ms = Some(closed - signal);
    r.exit_after_signal_ms = Some(exit - signal);
    r.exit_at_ms = Some(exit);
    r.restart = Some(RestartReport {
        ready: true,
        ready_after_ms: Some(290.0),
        error: None,
    });
    r.restart_ready_at_ms = Some(5420.0);
    finish(r, &records)
}

/// An upgrade in place: nothing refused.
fn upgrade() -> DrillReport {
    let records = load(250.0, 4400.0, 16, |_, due, _| (Outcome::Ok, due));
    let mut r = base(4400.0);
    r.ready_after_ms = 250.0;
    r.signal_at_ms = 3000.0;
    r.exit_at_ms = Some(3390.0);
    r.exit_after_signal_ms = Some(390.0);
    r.upgrade = Some(UpgradeReport {
        signal: SignalName::Hup,
        new_pid: Some(4242),
        new_ready_after_signal_ms: Some(185.0),
        old_exit_after_signal_ms: Some(390.0),
        new_exit_code: Some(0),
        new_exit_signal: None,
    });
    r.upgrade_ready_at_ms = Some(3185.0);
    finish(r, &records)
}

/// A rollout of three instances behind a balancer, with a write audit.
fn rollout() -> DrillReport {
    rollout_of(3)
}

/// A rollout of `count` instances, one restarted every 700 ms.
fn rollout_of(count: u32) -> DrillReport {
    let stop = 2900.0 + 700.0 * f64::from(count);
    let instances: Vec<InstanceReport> = (1..=count)
        .map(|n| {
            let signal = 1300.0 + 700.0 * f64::from(n);
            InstanceReport {
                instance: n,
                command: vec!["./my-service".to_owned(), format!("--port={}", 8080 + n)],
                ready_at_ms: 165.0 + 15.0 * f64::from(n),
                signal_at_ms: Some(signal),
                exit_at_ms: Some(signal + 140.0),
                exit_code: Some(0),
                ready_again_at_ms: Some(signal + 370.0),
                out_ms: Some(370.0),
                stopped_at_ms: Some(stop),
                final_exit_code: Some(0),
                ..InstanceReport::default()
            }
        })
        .collect();
    let exits: Vec<f64> = instances.iter().filter_map(|i| i.exit_at_ms).collect();
    let records = load(210.0, stop, 24, |start, due, rng| {
        let near = exits.iter().any(|e| (start - e).abs() < 4.0);
        if near && rng.next() < 0.5 {
            (Outcome::Refused, start + 0.5)
        } else {
            (Outcome::Ok, due)
        }
    });
    let mut r = base(stop + 50.0);
    r.ready_after_ms = 210.0;
    r.signal_at_ms = 2000.0;
    r.exit_at_ms = Some(2140.0);
    r.instances = instances;
    r.audit = Some(AuditReport {
        writes: 120,
        acknowledged: 120,
        found: 120,
        read_at_ms: stop + 10.0,
        ..AuditReport::default()
    });
    finish(r, &records)
}

/// The restart's drill with the service's metrics: scraped every 50 ms from ready to the
/// exit, none between 2000 and 2500 ms (the scrapes failed), ready until the signal, then a
/// lame duck, a drain (its in-flight count above the drill's), stopped; two services, one
/// with a name to escape and a value that is not a number.
fn with_metrics() -> DrillReport {
    let mut r = restart();
    let (signal, exit) = (r.signal_at_ms, r.exit_at_ms.unwrap_or(r.ended_at_ms));
    let mut samples = Vec::new();
    let mut at = r.ready_after_ms + 2.0;
    while at < exit {
        if !(2000.0..2500.0).contains(&at) {
            let (state, lame_duck) = match at - signal {
                d if d < 0.0 => ("ready", 0.0),
                d if d < 60.0 => ("draining", 1.0),
                d if d < 110.0 => ("draining", 0.0),
                _ => ("stopped", 0.0),
            };
            let web = if state == "draining" { 40.0 } else { 16.0 };
            let grpc = if (1000.0..1050.0).contains(&at) {
                f64::NAN
            } else {
                2.0
            };
            samples.push(MetricsSample {
                at_ms: at,
                ready: Some(if at < signal { 1.0 } else { 0.0 }),
                state: Some(state.to_owned()),
                lame_duck: Some(lame_duck),
                in_flight: BTreeMap::from([("web".to_owned(), web), ("grpc <&>".to_owned(), grpc)]),
                connections: BTreeMap::from([("web".to_owned(), 16.0)]),
            });
        }
        at += 50.0;
    }
    let fell = samples
        .iter()
        .find(|s| s.ready == Some(0.0))
        .map(|s| s.at_ms - signal);
    r.metrics = Some(MetricsReport {
        url: "http://127.0.0.1:9090/metrics".to_owned(),
        interval_ms: 50.0,
        scrapes_ok: samples.len() as u64,
        scrapes_failed: 10,
        states_seen: vec![
            "ready".to_owned(),
            "draining".to_owned(),
            "stopped".to_owned(),
        ],
        ready_fell_after_signal_ms: fell,
        samples,
        ..MetricsReport::default()
    });
    r
}

/// A stop with WebSockets closed just after the signal.
fn with_websockets() -> DrillReport {
    let mut r = restart();
    r.restart = None;
    r.restart_ready_at_ms = None;
    r.second_signal_at_ms = None;
    r.websockets = vec![crate::report::WebSocketReport {
        url: "ws://127.0.0.1:8080/ws".to_owned(),
        clients: 2,
        connected: 2,
        ok: 2,
        closes_at_ms: vec![5002.0, 5003.5],
        ..Default::default()
    }];
    r
}

fn scenarios() -> [(&'static str, DrillReport); 6] {
    [
        ("websockets", with_websockets()),
        ("restart", restart()),
        ("upgrade", upgrade()),
        ("rollout", rollout()),
        ("rollout-12", rollout_of(12)),
        ("metrics", with_metrics()),
    ]
}

#[test]
fn buckets_count_by_end_and_track_the_most_in_flight() {
    let records = [
        record(0.0, 10.0, Outcome::Ok),
        record(2.0, 8.0, Outcome::Ok),
        record(5.0, 12.0, Outcome::Refused),
        // Ends outside the range: not counted, but open meanwhile.
        record(1.0, 30.0, Outcome::Failed),
        // Over before the range.
        record(-5.0, -1.0, Outcome::Failed),
        // Ends on the range's end: the last slice.
        record(16.0, 20.0, Outcome::Ok),
    ];
    let b = buckets(&records, 0.0, 20.0, 4);
    let counts: Vec<(u32, u32, u32)> = b.iter().map(|b| (b.ok, b.refused, b.failed)).collect();
    assert_eq!(counts, [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 0, 0)]);
    // [0, 5): three open by 2; [5, 10): the refused one joins, four; [10, 15): the first
    // ended at 10, two then one; [15, 20): the long one and the last.
    let in_flight: Vec<u32> = b.iter().map(|b| b.in_flight).collect();
    assert_eq!(in_flight, [3, 4, 2, 2]);
    let starts: Vec<f64> = b.iter().map(|b| b.start_ms).collect();
    assert_eq!(starts, [0.0, 5.0, 10.0, 15.0]);
}

#[test]
fn a_request_ending_as_another_starts_is_not_overlapping_it() {
    let records = [record(0.0, 5.0, Outcome::Ok), record(5.0, 9.0, Outcome::Ok)];
    let b = buckets(&records, 0.0, 10.0, 1);
    assert_eq!(b[0].in_flight, 1);
    assert_eq!(b[0].ok, 2);
    assert!(buckets(&records, 0.0, 10.0, 0).is_empty());
}

#[test]
fn the_window_spans_the_signal_to_the_last_milestone() {
    let w = restart().window.expect("a window");
    // 5000 to 5420 (ready again), padded by a tenth before (42 ms), a fifth after.
    assert!((w.start_ms - 4958.0).abs() < 1e-9, "{}", w.start_ms);
    assert!((w.end_ms - 5504.0).abs() < 1e-9, "{}", w.end_ms);
    assert_eq!(w.timeline.len(), WINDOW_BUCKETS);
    let w = upgrade().window.expect("a window");
    assert!((w.start_ms - 2961.0).abs() < 1e-9, "{}", w.start_ms);
    assert!((w.end_ms - 3468.0).abs() < 1e-9, "{}", w.end_ms);
    // The rollout's: the first instance's signal to the last one's return, not the audit.
    let w = rollout().window.expect("a window");
    assert!(
        (w.start_ms - (2000.0 - 177.0)).abs() < 1e-9,
        "{}",
        w.start_ms
    );
    assert!((w.end_ms - (3770.0 + 354.0)).abs() < 1e-9, "{}", w.end_ms);
    // A short one keeps 20 ms either side, and never starts before 0.
    let mut r = base(100.0);
    r.signal_at_ms = 10.0;
    r.exit_at_ms = Some(15.0);
    let w = window(&[], &r).expect("a window");
    assert_eq!((w.start_ms, w.end_ms), (0.0, 35.0));
    r.instances = vec![InstanceReport::default()];
    assert!(window(&[], &r).is_none(), "a rollout that signalled none");
}

fn labels<'a>(layout: &'a Layout<'_>) -> Vec<&'a Label> {
    layout
        .panels
        .iter()
        .flat_map(|p| &p.marks)
        .filter_map(|m| m.label.as_ref())
        .collect()
}

#[test]
fn no_two_milestone_labels_overlap() {
    for (name, report) in scenarios() {
        let layout = layout(&report);
        let labels = labels(&layout);
        assert!(labels.len() >= 4, "{name}: {labels:?}");
        for (i, a) in labels.iter().enumerate() {
            assert!(a.rect.x0 >= 0.0 && a.rect.x1 <= WIDTH, "{name}: {a:?}");
            let w = a.text.chars().count() as f64 * CHAR_W;
            assert!(a.rect.x1 - a.rect.x0 >= w, "{name}: {a:?}");
            for b in &labels[i + 1..] {
                assert!(!a.rect.overlaps(&b.rect), "{name}: {a:?} overlaps {b:?}");
            }
        }
        // No mark's line crosses another's label (but in the crowded window, packed).
        let panels = if name == "rollout-12" { 1 } else { 2 };
        for panel in layout.panels.iter().take(panels) {
            for m in &panel.marks {
                let Some(own) = &m.label else { continue };
                for l in panel.marks.iter().filter_map(|o| o.label.as_ref()) {
                    let below = l.rect.y0 >= own.rect.y1;
                    let crossed = l.rect.x0 < m.x && m.x < l.rect.x1;
                    assert!(!(below && crossed), "{name}: {m:?} crosses {l:?}");
                }
            }
        }
        // The window labels every milestone in it (in at most a dozen rows), and the
        // picture draws those labels.
        let lower = layout.panels.get(1).expect("a lower panel");
        assert!(lower.marks.iter().all(|m| m.label.is_some()), "{name}");
        let rows = (lower.plot_top - lower.top - 10.0) / ROW_H;
        assert!(rows <= 12.0, "{name}: {rows} rows");
        let svg = render(&report);
        for l in labels {
            assert!(
                svg.contains(&format!(">{}</text>", escape(&l.text))),
                "{l:?}"
            );
        }
    }
}

#[test]
fn the_lanes_show_each_lifetime() {
    let phases = |lane: &Lane| lane.spans.iter().map(|s| s.2).collect::<Vec<_>>();
    let lanes = lanes(&restart());
    let names: Vec<&str> = lanes.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["first process", "second process"]);
    use Phase::*;
    assert_eq!(phases(&lanes[0]), [Starting, Serving, Draining]);
    assert_eq!(lanes[0].spans[2], (5000.0, 5130.0, Draining));
    assert_eq!(
        lanes[1].spans,
        [(5130.0, 5420.0, Starting), (5420.0, 5460.0, Serving)]
    );
    let lanes = marks::lanes(&upgrade());
    assert_eq!(lanes[1].name, "new process");
    assert_eq!(lanes[1].spans[0], (3000.0, 3185.0, Starting));
    let lanes = marks::lanes(&rollout());
    assert_eq!(lanes.len(), 3);
    for lane in &lanes {
        assert_eq!(
            phases(lane),
            [Starting, Serving, Draining, Starting, Serving],
            "{lane:?}"
        );
    }
}

#[test]
fn the_services_metrics_draw_its_states_and_a_line_per_service() {
    let report = with_metrics();
    let (signal, exit) = (report.signal_at_ms, report.exit_at_ms.unwrap());
    // The states as a lane under the processes': one phase after the other, nothing drawn
    // where the scrapes failed, nothing past the exit.
    let lanes = lanes(&report);
    assert_eq!(lanes.len(), 3, "{lanes:?}");
    let state = &lanes[2];
    assert_eq!(state.name, "metrics state");
    let mut phases: Vec<Phase> = state.spans.iter().map(|s| s.2).collect();
    phases.dedup();
    use Phase::*;
    assert_eq!(phases, [Serving, LameDuck, Draining, Stopped]);
    assert!(
        state
            .spans
            .iter()
            .all(|&(from, to, _)| to <= 2050.0 || from >= 2500.0),
        "the gap: {:?}",
        state.spans
    );
    assert!(state.spans.iter().all(|&(_, to, _)| to <= exit));
    let lame = state.spans.iter().find(|s| s.2 == LameDuck).unwrap();
    assert!(lame.0 >= signal && lame.0 < signal + 50.0, "{lame:?}");
    // A line per service, in name order, broken at the gap (and at the NaN).
    let layout = layout(&report);
    let names: Vec<&str> = layout.lines.iter().map(|l| l.service.as_str()).collect();
    assert_eq!(names, ["grpc <&>", "web"]);
    assert_eq!(
        layout.lines[1].runs.len(),
        2,
        "{:?}",
        layout.lines[1].runs.len()
    );
    assert_eq!(
        layout.lines[0].runs.len(),
        3,
        "{:?}",
        layout.lines[0].runs.len()
    );
    assert_ne!(layout.lines[0].colour, layout.lines[1].colour);
    // The drain's 40 in flight sets the window's right scale; the drill's own 16 does not.
    let lower = &layout.panels[1];
    let own = lower.buckets.iter().map(|b| b.in_flight).max().unwrap();
    assert!(own < 40, "{own}");
    assert!(in_flight_top(lower, &layout.lines) >= 40);
    assert!(in_flight_top(lower, &[]) < 40);
    // The picture: the lines, the lane, the legend (escaped), the fall of ready.
    let svg = render(&report);
    let polylines = |service: &str| {
        svg.matches(&format!(r#"class="service" data-service="{service}""#))
            .count()
    };
    assert!(polylines("web") >= 3, "both panels: {}", polylines("web"));
    assert!(polylines("grpc &lt;&amp;&gt;") >= 3);
    for text in [
        ">web in flight (metrics)</text>",
        ">grpc &lt;&amp;&gt; in flight (metrics)</text>",
        ">lame duck (metrics)</text>",
        ">metrics state</text>",
        ">unready (metrics) +",
    ] {
        assert!(svg.contains(text), "{text}");
    }
    assert!(svg.contains(LAME_DUCK) && svg.contains(STOPPED));
    // Without metrics, none of it.
    let plain = render(&restart());
    assert!(!plain.contains("(metrics)") && !plain.contains("metrics state"));
    assert!(!plain.contains(r#"class="service""#));
}

/// The heights of the red elements the picture draws for failures.
fn failed_heights(svg: &str) -> Vec<f64> {
    svg.split("<rect")
        .filter(|e| e.contains(r#"class="bar failed""#) || e.contains(r#"class="tick failed""#))
        .filter_map(|e| {
            let h = e.split(r#"height=""#).nth(1)?;
            h.split('"').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn one_failure_among_ten_thousand_shows() {
    let mut records: Vec<RequestRecord> = (0..10_000)
        .map(|i| {
            let start = 100.0 + f64::from(i) * 0.02;
            record(start, start + 5.0, Outcome::Ok)
        })
        .collect();
    let mut r = base(10_000.0);
    r.ready_after_ms = 90.0;
    r.signal_at_ms = 8000.0;
    r.exit_at_ms = Some(8100.0);
    assert!(failed_heights(&render(&finish(r.clone(), &records))).is_empty());
    records.push(record(7990.0, 8050.0, Outcome::Failed));
    let svg = render(&finish(r, &records));
    let heights = failed_heights(&svg);
    // A bar and a tick in each panel.
    assert_eq!(heights.len(), 4, "{heights:?}");
    assert!(heights.iter().all(|h| *h >= 2.0), "{heights:?}");
}

#[test]
fn the_picture_is_whole_and_escaped() {
    for (name, report) in scenarios() {
        let svg = render(&report);
        assert!(
            svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
            "{name}"
        );
        assert!(svg.contains("&lt;&amp;&quot;quoted&quot;&gt;"), "{name}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{name}");
        assert!(svg.contains("polyline"), "{name}");
    }
    // A report without a window draws the whole drill alone.
    let mut r = restart();
    r.window = None;
    let layout = layout(&r);
    assert_eq!(layout.panels.len(), 1);
    assert!(render(&r).contains("PASS") || render(&r).contains("FAIL"));
}

/// With `LAMEDUCK_DRILL_SVG_DIR` set, writes the scenarios' pictures there, to look at.
#[test]
fn writes_the_pictures_when_asked() {
    let Some(dir) = std::env::var_os("LAMEDUCK_DRILL_SVG_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("the directory");
    for (name, report) in scenarios() {
        std::fs::write(dir.join(format!("{name}.svg")), render(&report)).expect("written");
    }
}

#[test]
fn the_last_websocket_close_is_a_milestone() {
    let report = with_websockets();
    let marks = super::marks::marks(&report);
    let ws: Vec<_> = marks.iter().filter(|m| m.name == "ws closed").collect();
    assert_eq!(ws.len(), 1, "{marks:?}");
    assert_eq!(ws[0].at_ms, 5003.5);
    assert!(render(&report).contains("ws closed"));
    assert!(
        !super::marks::marks(&restart())
            .iter()
            .any(|m| m.name.contains("ws"))
    );
}
