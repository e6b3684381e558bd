//! One drill, step by step: start -> ready -> load -> signal(s) -> exit -> restart -> verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::{DrillArgs, SignalName};
use crate::audit;
use crate::child::{self, Adopted, Exit, Service};
use crate::load::Target;
use crate::probe::{self, PROBE_INTERVAL, Readiness};
use crate::report::{AuditReport, Counts, DrillReport, Outcome, RestartReport, UpgradeReport};
use crate::rollout;
use crate::scrape::Scraper;
use crate::svg;
use crate::tls::Trust;
use crate::traffic::{self, Load, Plan};
use crate::ws_load;

/// Why a drill could not be carried out at all (as opposed to a service that failed it).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A URL or address that cannot be used.
    #[error("{0}")]
    BadTarget(String),
    /// The command could not be started.
    #[error("{0}")]
    Start(String),
    /// The command exited before it was ready.
    #[error("the service exited before it was ready ({exit}); its output above says why")]
    ExitedBeforeReady {
        /// How it exited.
        exit: String,
    },
    /// The command did not become ready in time.
    #[error("the service was not ready within {0:?} (check the readiness option)")]
    NotReady(Duration),
    /// The signal could not be sent.
    #[error("could not send the signal: {0}")]
    Signal(String),
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn describe(exit: Exit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Waits until `readiness` holds; returns how long it took since `began`.
pub(crate) async fn wait_ready(
    service: &mut Service,
    readiness: &Readiness,
    within: Duration,
    began: Instant,
) -> Result<Duration, DrillError> {
    let until = began + within;
    loop {
        if readiness.check().await {
            return Ok(began.elapsed());
        }
        if let Some(exit) = service.exited() {
            return Err(DrillError::ExitedBeforeReady {
                exit: describe(exit),
            });
        }
        if Instant::now() >= until {
            service.kill().await;
            return Err(DrillError::NotReady(within));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The live progress line (hidden when stderr is not a terminal, or with `--quiet`).
pub(crate) fn progress(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Runs the drill `args` describes.
pub async fn drill(args: &DrillArgs) -> Result<DrillReport, DrillError> {
    if args.rollout.is_some() {
        return rollout::drill(args).await;
    }
    let drilled = once(args).await;
    if args.upgrade {
        // The process is a subreaper only for the drill (a library caller's other children
        // are none of its business), however it ended.
        let _ = child::adopt_orphans(false);
    }
    drilled
}

/// One process's drill: a stop, a restart, or an upgrade.
async fn once(args: &DrillArgs) -> Result<DrillReport, DrillError> {
    let mut plan = Plan::from_args(args)?;
    let listener = plan.first_address()?;
    let readiness = Readiness::from_args(args, &listener, None).map_err(DrillError::BadTarget)?;
    let metrics = metrics_target(args)?;
    let bar = progress(args.quiet);

    if args.upgrade {
        child::adopt_orphans(true).map_err(DrillError::Start)?;
    }
    let began = Instant::now();
    bar.set_message("starting");
    let mut service = Service::start(&args.command).map_err(DrillError::Start)?;
    let ready_after = wait_ready(&mut service, &readiness, args.ready_timeout, began).await?;
    // From readiness until the exit (dropped on an early return, it stops by itself; and
    // bounded by the longest the drill waits for the exit, whatever happens).
    let scraper = metrics.map(|(target, url)| {
        let until =
            Instant::now() + args.signal_after + args.exit_timeout + Duration::from_secs(10);
        Scraper::start(target, url, args.metrics_interval, began, until)
    });
    let grpc = match plan.grpc(args).await {
        Ok(grpc) => grpc,
        Err(error) => {
            service.kill().await;
            return Err(error);
        }
    };
    let load = Load::start(&plan, grpc, args, began, &bar);
    let shared = Arc::clone(&load.shared);

    let mut reasons = Vec::new();
    let mut prober = None;
    let mut new_process = None;
    let early = tokio::time::timeout(args.signal_after, service.wait(Duration::MAX)).await;
    let (signal_at, second_signal_at, exit) = if let Ok(exit) = early {
        reasons.push(format!(
            "the service exited on its own before the signal ({})",
            exit.map_or_else(|| "unknown status".to_owned(), describe)
        ));
        (Instant::now(), None, exit)
    } else if let (true, Some(pid_file)) = (args.upgrade, &args.pid_file) {
        bar.set_message("upgrading");
        let signal_at = Instant::now();
        shared.signal_sent(signal_at);
        let (new, exit) = follow_upgrade(&mut service, args, pid_file, signal_at).await?;
        new_process = Some(new);
        (signal_at, None, exit)
    } else {
        let signal_at = Instant::now();
        shared.signal_sent(signal_at);
        service.signal(args.signal).map_err(DrillError::Signal)?;
        prober = Some(tokio::spawn(listener_closed(listener.clone())));
        let (second_signal_at, exit) = wait_exit(&mut service, args).await?;
        (signal_at, second_signal_at, exit)
    };
    let exit_at = Instant::now();
    let metrics = match scraper {
        Some(scraper) => Some(scraper.finish(ms(signal_at.duration_since(began))).await),
        None => None,
    };
    if new_process.is_some() && exit.is_some() {
        // The new process alone serves now: the load goes on against it a while.
        tokio::time::sleep(args.after_upgrade).await;
    }
    let listener_closed = match prober {
        // After the exit the port refuses at once, if it did not before.
        Some(prober) => match tokio::time::timeout(Duration::from_secs(1), prober).await {
            Ok(Ok(closed)) => Some(closed.saturating_duration_since(signal_at)),
            _ => None,
        },
        None => None,
    };

    let grpc = load.grpc.clone();
    let (records, ws_ends) = load.stop_all(args.request_timeout).await;
    let mut audit = None;
    if exit.is_none() {
        reasons.push(format!(
            "the service did not exit within {:?} of the signal; it was killed",
            args.exit_timeout
        ));
        service.kill().await;
    }
    // The upgrade's new process is stopped once the load is over, as any service would be
    // (and once the old one is gone, so that it is the drill's child: its exit can be read).
    let writes = plan.writes.clone();
    let upgrade = new_process.map(|new| async move {
        let mut report = UpgradeReport {
            signal: args.upgrade_signal,
            new_pid: None,
            new_ready_after_signal_ms: None,
            old_exit_after_signal_ms: None,
            new_exit_code: None,
            new_exit_signal: None,
        };
        let mut stopped = None;
        let mut audited = None;
        if let Some((new, ready_at)) = new {
            report.new_pid = Some(new.pid);
            report.new_ready_after_signal_ms = Some(ms(ready_at.duration_since(signal_at)));
            // The audit reads from the new process, before it is stopped.
            if let Some(writes) = &writes {
                audited =
                    Some(audit::read_back(writes, args.http2, args.request_timeout, began).await);
            }
            stopped = Some(match new.signal(args.signal) {
                Ok(()) => new.wait(args.exit_timeout).await,
                Err(_) => None,
            });
            if let Some(Some(exit)) = stopped {
                report.new_exit_code = exit.code;
                report.new_exit_signal = exit.signal;
            } else {
                // Nothing may outlive the drill.
                new.kill().await;
            }
        }
        (report, stopped, audited)
    });
    let upgrade = match upgrade {
        Some(stopping) => {
            let (report, stopped, audited) = stopping.await;
            audit = audited;
            Some((report, stopped))
        }
        None => None,
    };

    let mut restart_ready_at = None;
    let restart = if args.restart {
        bar.set_message("restarting");
        let again = Instant::now();
        let outcome = match Service::start(&args.command) {
            Err(e) => Err(e),
            Ok(mut second) => {
                let ready = wait_ready(&mut second, &readiness, args.ready_timeout, again).await;
                // The audit reads from the second instance, before it is stopped.
                if let (Ok(_), Some(writes)) = (&ready, &plan.writes) {
                    audit = Some(
                        audit::read_back(writes, args.http2, args.request_timeout, began).await,
                    );
                }
                let _ = second.signal(SignalName::Term);
                if second.wait(args.exit_timeout).await.is_none() {
                    second.kill().await;
                }
                ready.map_err(|e| match e {
                    DrillError::ExitedBeforeReady { exit } => format!(
                        "the restarted service exited before it was ready ({exit}): \
                         `address already in use`?"
                    ),
                    other => other.to_string(),
                })
            }
        };
        Some(match outcome {
            Ok(ready) => {
                restart_ready_at = Some(ms(again.duration_since(began) + ready));
                RestartReport {
                    ready: true,
                    ready_after_ms: Some(ms(ready)),
                    error: None,
                }
            }
            Err(error) => {
                reasons.push(format!("restart: {error}"));
                RestartReport {
                    ready: false,
                    ready_after_ms: None,
                    error: Some(error),
                }
            }
        })
    } else {
        None
    };
    bar.finish_and_clear();

    let requests = Counts::of(&records);
    let signal_ms = ms(signal_at.duration_since(began));
    let exit_ms = ms(exit_at.duration_since(began));
    let (in_flight, in_flight_completed) = traffic::in_flight_at(&records, signal_ms);
    let last_ok = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.end_ms)
        .reduce(f64::max);
    let failures = traffic::failures(&records);
    reasons.extend(traffic::failure_reason(
        &requests,
        &failures,
        "accepted request(s)",
    ));
    let mut upgrade_ready_at = None;
    let upgrade = upgrade.map(|(mut report, stopped)| {
        report.old_exit_after_signal_ms = exit.map(|_| ms(exit_at.duration_since(signal_at)));
        upgrade_ready_at = report
            .new_ready_after_signal_ms
            .map(|after| signal_ms + after);
        match (report.new_pid, stopped) {
            (None, _) => reasons.push(format!(
                "no new process: the pid file {} never named another one (the upgrade failed, \
                 or was refused: the service's log says why)",
                args.pid_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"))
                    .display()
            )),
            (Some(pid), Some(None)) => reasons.push(format!(
                "the new process (PID {pid}) did not exit within {:?} of the signal",
                args.exit_timeout
            )),
            (Some(pid), _) if report.new_exit_code != Some(args.expect_exit_code) => {
                reasons.push(format!(
                    "the new process (PID {pid}) exited with {:?} (signal {:?}), expected exit \
                     code {}",
                    report.new_exit_code, report.new_exit_signal, args.expect_exit_code
                ));
            }
            _ => {}
        }
        if requests.refused > 0 {
            reasons.push(format!(
                "{} request(s) refused: an upgrade in place refuses none",
                requests.refused
            ));
        }
        report
    });
    if plan.writes.is_some() {
        audit_reasons(audit.as_ref(), &mut reasons);
    }
    let exit_ms_if = exit.map(|_| exit_ms);
    let websockets: Vec<_> = plan
        .ws
        .iter()
        .zip(&ws_ends)
        .map(|(target, ends)| ws_load::report(target, ends, signal_ms, exit_ms_if))
        .collect();
    reasons.extend(websockets.iter().flat_map(ws_load::reasons));
    // WebSockets alone send no requests.
    let requested = !plan.urls.is_empty() || grpc.is_some() || plan.writes.is_some();
    if requests.ok == 0 && requested {
        reasons.push("no request was answered: the load never reached the service".to_owned());
    }
    if let Some(exit) = exit
        && exit.code != Some(args.expect_exit_code)
    {
        reasons.push(format!(
            "{}, expected exit code {}",
            describe(exit),
            args.expect_exit_code
        ));
    }
    let ended_at = began.elapsed();
    let mut report = DrillReport {
        command: args.command.clone(),
        passed: reasons.is_empty(),
        reasons,
        ready_after_ms: ms(ready_after),
        signal: args.signal,
        signal_at_ms: signal_ms,
        second_signal_at_ms: second_signal_at.map(|t| ms(t.duration_since(began))),
        listener_closed_after_signal_ms: listener_closed.map(ms),
        exit_after_signal_ms: exit.map(|_| exit_ms - signal_ms),
        // After an upgrade the last responses come from the new process: no lag to speak of.
        exit_lag_ms: exit
            .and(last_ok)
            .filter(|_| !args.upgrade)
            .map(|last| (exit_ms - last).max(0.0)),
        exit_code: exit.and_then(|e| e.code),
        exit_signal: exit.and_then(|e| e.signal),
        expected_exit_code: args.expect_exit_code,
        requests,
        in_flight_at_signal: in_flight,
        in_flight_at_signal_completed: in_flight_completed,
        failures,
        restart,
        ended_at_ms: ms(ended_at),
        timeline: Vec::new(),
        exit_at_ms: exit.map(|_| exit_ms),
        restart_ready_at_ms: restart_ready_at,
        upgrade,
        upgrade_ready_at_ms: upgrade_ready_at,
        window: None,
        grpc: grpc
            .as_deref()
            .map(|target| traffic::grpc_report(&records, target)),
        audit,
        websockets,
        instances: Vec::new(),
        metrics,
        records: Vec::new(),
    };
    report.timeline = svg::timeline(&records, report.ended_at_ms);
    report.window = svg::window(&records, &report);
    report.records = records;
    Ok(report)
}

/// `--metrics-url`, parsed (with the drill's TLS trust for an `https://` one), and as given.
fn metrics_target(args: &DrillArgs) -> Result<Option<(Target, String)>, DrillError> {
    let Some(url) = &args.metrics_url else {
        return Ok(None);
    };
    let bad = |e: String| DrillError::BadTarget(format!("--metrics-url {e}"));
    let trust = Trust::from_args(args).map_err(bad)?;
    let target = Target::parse(url, &trust).map_err(bad)?;
    Ok(Some((target, url.clone())))
}

/// Why the audit fails the drill, if it does.
pub(crate) fn audit_reasons(audit: Option<&AuditReport>, reasons: &mut Vec<String>) {
    let Some(audit) = audit else {
        reasons.push(
            "the acknowledged writes were not read back: no instance served after the restart \
             or the upgrade to read them from"
                .to_owned(),
        );
        return;
    };
    if audit.acknowledged == 0 {
        reasons.push(format!(
            "no write was acknowledged (2xx) out of {}: check --write",
            audit.writes
        ));
    }
    let bad = audit.lost + audit.wrong + audit.unreadable;
    if bad > 0 {
        let first = audit
            .samples
            .first()
            .map(|s| format!(" (first: {s})"))
            .unwrap_or_default();
        reasons.push(format!(
            "{bad} of {} acknowledged write(s) not read back: {} lost, {} wrong, {} unreadable{first}",
            audit.acknowledged, audit.lost, audit.wrong, audit.unreadable
        ));
    }
}

/// Waits for the exit after the first signal, sending the second one on time if asked.
async fn wait_exit(
    service: &mut Service,
    args: &DrillArgs,
) -> Result<(Option<Instant>, Option<Exit>), DrillError> {
    let Some(after) = args.second_signal_after else {
        return Ok((None, service.wait(args.exit_timeout).await));
    };
    if let Ok(exit) = tokio::time::timeout(after, service.wait(Duration::MAX)).await {
        return Ok((None, exit));
    }
    let second = Instant::now();
    service.signal(args.signal).map_err(DrillError::Signal)?;
    let left = args.exit_timeout.saturating_sub(after);
    Ok((Some(second), service.wait(left).await))
}

/// After the upgrade signal: when the pid file names a new process, and how the old one exits
/// (each bounded by `--exit-timeout`).
async fn follow_upgrade(
    service: &mut Service,
    args: &DrillArgs,
    pid_file: &std::path::Path,
    signal_at: Instant,
) -> Result<(Option<(Adopted, Instant)>, Option<Exit>), DrillError> {
    let old_pid = service.pid();
    let named = || {
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    // What the file says before the signal (the old process, or a stale PID) is not the new one.
    let before = named();
    service
        .signal(args.upgrade_signal)
        .map_err(DrillError::Signal)?;
    let until = signal_at + args.exit_timeout;
    let (mut new, mut exit) = (None, None);
    loop {
        if new.is_none() {
            let fresh = named().filter(|pid| Some(*pid) != old_pid && Some(*pid) != before);
            if let Some(pid) = fresh {
                new = Some((Adopted { pid }, Instant::now()));
            }
        }
        if exit.is_none() {
            exit = service.exited();
        }
        // An old process that exits without a new one has failed the upgrade: no waiting.
        if exit.is_some() || Instant::now() >= until {
            return Ok((new, exit));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// When `authority` first refuses a connection: its listener has closed. Probed every
/// [`PROBE_INTERVAL`] from the signal on.
async fn listener_closed(authority: String) -> Instant {
    loop {
        if probe::refused(&authority).await {
            return Instant::now();
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
