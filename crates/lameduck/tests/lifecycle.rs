//! Every rule of the lifecycle, on a paused tokio clock: deterministic, and no real sleeps (a
//! 30 s deadline takes no time at all).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lameduck::{
    BoxError, Drain, ExitCode, HookOutcome, Lifecycle, LifecycleHandle, Outcome, Phase, Report,
    Service, StartContext, State, Trigger,
};
use tokio::time::{Instant, sleep};

const SEC: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What work that ignores the deadline gets, after it, to end itself before it is aborted.
const ABORT_NOTICE: Duration = Duration::from_millis(100);

/// Asserts `d` is `want` to the millisecond (the paused clock makes it exact but for the odd tick).
fn assert_about(d: Duration, want: Duration) {
    let diff = d.abs_diff(want);
    assert!(diff < Duration::from_millis(5), "{d:?} is not {want:?}");
}

/// A service that takes `start` to start and serves until the drain, with one unit of work in
/// flight that takes `work` to finish.
fn service(start: Duration, work: Option<Duration>) -> impl Service {
    move |ctx: StartContext| async move {
        sleep(start).await;
        let drain = ctx.drain();
        if let Some(work) = work {
            drain.spawn(sleep(work));
        }
        Ok(async move {
            drain.draining().await;
            Ok(())
        })
    }
}

fn lifecycle() -> Lifecycle {
    Lifecycle::new().handle_signals(false)
}

/// Runs the lifecycle; once ready, calls `shutdown` on the handle.
async fn run_then_shutdown(lifecycle: Lifecycle) -> Report {
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    handle.shutdown();
    run.await.unwrap()
}

/// A log of events with the (paused) time they happened at.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, Duration)>>>, Option<Instant>);

impl Log {
    fn new() -> Self {
        Log(Default::default(), Some(Instant::now()))
    }
    fn push(&self, what: &str) {
        let at = self.1.map(|t| t.elapsed()).unwrap_or_default();
        self.0.lock().unwrap().push((what.to_owned(), at));
    }
    fn events(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(w, _)| w.clone())
            .collect()
    }
    fn at(&self, what: &str) -> Duration {
        let log = self.0.lock().unwrap();
        log.iter().find(|(w, _)| w == what).unwrap().1
    }
}

#[tokio::test(start_paused = true)]
async fn ready_only_when_every_start_step_succeeded() {
    let lifecycle = lifecycle()
        .service("fast", service(SEC, None))
        .service("slow", service(secs(3), None));
    let handle = lifecycle.handle();
    let began = Instant::now();
    let run = tokio::spawn(lifecycle.run());

    sleep(secs(2)).await;
    assert_eq!(
        handle.state(),
        State::Starting,
        "one start step is still running"
    );
    assert!(!handle.is_ready());
    handle.wait_ready().await.unwrap();
    assert_about(began.elapsed(), secs(3));
    assert!(handle.is_ready());

    handle.shutdown();
    let report = run.await.unwrap();
    assert_eq!(report.exit_code, ExitCode::Clean);
    assert_eq!(report.trigger, Trigger::Requested);
    assert_about(report.ready_after.unwrap(), secs(3));
    assert_about(report.services[0].started_in.unwrap(), SEC);
    assert_about(report.services[1].started_in.unwrap(), secs(3));
    assert!(
        report
            .services
            .iter()
            .all(|s| s.outcome == Outcome::Stopped)
    );
    assert_eq!(handle.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn start_steps_run_concurrently() {
    let lifecycle = (0..10).fold(lifecycle(), |l, i| {
        l.service(format!("s{i}"), service(secs(2), None))
    });
    let report = run_then_shutdown(lifecycle).await;
    // Ten 2 s start steps in sequence would take 20 s.
    assert_about(report.ready_after.unwrap(), secs(2));
}

#[tokio::test(start_paused = true)]
async fn failed_start_cuts_the_others_short_and_names_the_culprit() {
    let dropped = Log::new();
    let slow_dropped = dropped.clone();
    let lifecycle = lifecycle()
        .service("ok", service(Duration::ZERO, None))
        .service("slow", move |_ctx: StartContext| async move {
            struct OnDrop(Log);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.push("slow start dropped");
                }
            }
            let _guard = OnDrop(slow_dropped);
            sleep(secs(3600)).await;
            Ok(async { Ok(()) })
        })
        .service("broken", |_ctx: StartContext| async move {
            sleep(SEC).await;
            Err::<std::future::Ready<Result<(), BoxError>>, _>("no config".into())
        })
        .hook(Phase::FLUSH, "still-runs", || async { Ok(()) });
    let handle = lifecycle.handle();
    let report = lifecycle.run().await;

    assert_eq!(report.exit_code, ExitCode::StartFailed);
    assert_eq!(
        report.trigger,
        Trigger::StartFailed {
            service: "broken".into(),
            error: "service `broken` failed to start: no config".into()
        }
    );
    assert_eq!(report.ready_after, None);
    assert_eq!(dropped.events(), ["slow start dropped"]);
    assert_about(dropped.at("slow start dropped"), SEC);
    let outcomes: Vec<_> = report.services.iter().map(|s| s.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Cancelled,
            Outcome::Cancelled,
            Outcome::StartFailed {
                error: "service `broken` failed to start: no config".into()
            }
        ]
    );
    assert_eq!(report.hooks[0].outcome, HookOutcome::Completed);
    assert_eq!(report.drain, None);
    let not_ready = handle.wait_ready().await.unwrap_err();
    assert!(not_ready.to_string().contains("`broken` failed to start"));
}

#[tokio::test(start_paused = true)]
async fn panicking_start_is_a_start_failure_with_its_message() {
    let lifecycle = lifecycle().service("boom", |_ctx: StartContext| async move {
        if true {
            panic!("bad wiring");
        }
        Ok(async { Ok(()) })
    });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::StartFailed);
    match &report.trigger {
        Trigger::StartFailed { service, error } => {
            assert_eq!(service, "boom");
            assert!(error.contains("bad wiring"), "{error}");
        }
        other => panic!("unexpected trigger {other:?}"),
    }
}

#[tokio::test]
async fn taken_port_fails_the_start_with_address_and_hint_and_releases_the_others() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free_port = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&free_port);
    let lifecycle = lifecycle()
        .service("first", move |ctx: StartContext| async move {
            let l = ctx.bind_tcp("127.0.0.1:0").await?;
            *seen.lock().unwrap() = Some(l.local_addr()?);
            Ok(async move {
                drop(l);
                Ok(())
            })
        })
        .service("second", move |ctx: StartContext| async move {
            // Let `first` bind before this one fails.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let l = ctx.bind_tcp(taken_addr).await?;
            Ok(async move {
                drop(l);
                Ok(())
            })
        });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::StartFailed);
    let Trigger::StartFailed { service, error } = &report.trigger else {
        panic!("{:?}", report.trigger)
    };
    assert_eq!(service, "second");
    assert!(error.contains(&taken_addr.to_string()), "{error}");
    assert!(error.contains("another instance"), "{error}");
    let first = free_port.lock().unwrap().unwrap();
    let listening = &report.services[0].addresses;
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert_eq!(listening[0].address, first.to_string());
    assert_eq!(listening[0].origin, lameduck::Origin::Bound);
    // The listener of the service that did start was released with the failed start.
    std::net::TcpListener::bind(first).expect("port of `first` released");
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_in_flight_work_without_polling_and_reports_it() {
    let lifecycle = lifecycle()
        .service("api", service(Duration::ZERO, Some(secs(10))))
        .drain_deadline(secs(30));
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(report.exit_code, ExitCode::Clean);
    let api = &report.services[0];
    assert_eq!(api.outcome, Outcome::Stopped);
    assert_eq!(api.work.total, 1);
    assert_eq!(api.work.in_flight_at_drain, 1);
    assert_eq!(api.work.drained, 1);
    assert_eq!(api.work.aborted, 0);
    // The drain ends when the work does (10 s), not on a polling tick after it.
    assert_about(report.drain.unwrap(), secs(10));
    assert_about(api.drained_in.unwrap(), secs(10));
}

#[tokio::test(start_paused = true)]
async fn deadline_aborts_what_is_left_names_it_and_hooks_still_run() {
    let lifecycle = lifecycle()
        .service("quick", service(Duration::ZERO, Some(SEC)))
        .service("stuck", service(Duration::ZERO, Some(secs(3600))))
        .task("stubborn", |_stop| async {
            sleep(secs(3600)).await;
            Ok(())
        })
        .drain_deadline(secs(30))
        .hook(Phase::FLUSH, "flush", || async { Ok(()) });
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded);
    assert!(report.deadline_exceeded);
    assert_about(report.drain.unwrap(), secs(30) + ABORT_NOTICE);
    assert_eq!(report.services[0].outcome, Outcome::Stopped);
    assert_eq!(report.services[0].work.aborted, 0);
    assert_eq!(report.services[1].outcome, Outcome::Aborted);
    assert_eq!(report.services[1].work.aborted, 1);
    assert_eq!(report.tasks[0].outcome, Outcome::Aborted);
    assert_eq!(report.hooks[0].outcome, HookOutcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn serve_step_that_ignores_the_drain_is_aborted_at_the_deadline() {
    let lifecycle = lifecycle()
        .service("deaf", |_ctx: StartContext| async {
            Ok(std::future::pending::<Result<(), BoxError>>())
        })
        .drain_deadline(secs(5));
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded);
    assert_eq!(report.services[0].outcome, Outcome::Aborted);
    assert_about(report.drain.unwrap(), secs(5) + ABORT_NOTICE);
}

#[tokio::test(start_paused = true)]
async fn work_that_watches_the_deadline_ends_itself_first_and_still_counts_as_aborted() {
    let last_words = Arc::new(Mutex::new(Vec::new()));
    let said = Arc::clone(&last_words);
    let lifecycle = lifecycle()
        .service("streams", move |ctx: StartContext| async move {
            let drain = ctx.drain();
            let stream = drain.clone();
            drain.spawn(async move {
                tokio::select! {
                    () = sleep(secs(3600)) => {}
                    // A gRPC server stream ends here with UNAVAILABLE, not a reset.
                    () = stream.deadline_passed() => said.lock().unwrap().push(stream.is_deadline_passed()),
                }
            });
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .drain_deadline(secs(5));
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(*last_words.lock().unwrap(), [true], "it had its last word");
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded);
    // No abort notice waited out: the drain ended when the work did.
    assert_about(report.drain.unwrap(), secs(5));
    assert_eq!(report.services[0].outcome, Outcome::Aborted);
    assert_eq!(report.services[0].work.aborted, 1, "cut short, so counted");
}

#[tokio::test(start_paused = true)]
async fn lame_duck_delay_keeps_serving_with_readiness_off() {
    let drain_seen: Arc<Mutex<Option<Drain>>> = Default::default();
    let keep = Arc::clone(&drain_seen);
    let lifecycle =
        lifecycle()
            .lame_duck_delay(secs(5))
            .service("api", move |ctx: StartContext| async move {
                *keep.lock().unwrap() = Some(ctx.drain());
                let drain = ctx.drain();
                Ok(async move {
                    drain.draining().await;
                    Ok(())
                })
            });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    let drain = drain_seen.lock().unwrap().clone().unwrap();
    handle.shutdown();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.state(), State::Draining, "readiness is off at once");
    assert!(!drain.is_draining(), "but the service still serves");
    sleep(secs(4)).await;
    assert!(!drain.is_draining());
    drain.draining().await;
    let report = run.await.unwrap();
    assert_about(report.shutdown, secs(5));
    assert_eq!(report.exit_code, ExitCode::Clean);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_phase_after_phase_concurrently_within_a_phase() {
    let log = Log::new();
    let hook = |log: &Log, name: &'static str, took: Duration| {
        let log = log.clone();
        move || async move {
            log.push(&format!("{name} start"));
            sleep(took).await;
            log.push(&format!("{name} end"));
            Ok(())
        }
    };
    // Registered out of order on purpose: phases order them, not registration.
    let lifecycle = lifecycle()
        .hook(Phase::CLOSE, "close-db", hook(&log, "close-db", SEC))
        .hook(
            Phase::FLUSH,
            "flush-cache",
            hook(&log, "flush-cache", secs(2)),
        )
        .hook(
            Phase::FLUSH,
            "flush-metrics",
            hook(&log, "flush-metrics", SEC),
        )
        .hook(Phase::new(150), "between", hook(&log, "between", SEC));
    let report = lifecycle.run().await;

    assert_eq!(report.exit_code, ExitCode::Clean);
    let names: Vec<_> = report.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["flush-cache", "flush-metrics", "between", "close-db"]
    );
    // Both flush hooks started together; the next phase waited for the slower one.
    assert_about(log.at("flush-cache start"), Duration::ZERO);
    assert_about(log.at("flush-metrics start"), Duration::ZERO);
    assert_about(log.at("between start"), secs(2));
    assert_about(log.at("close-db start"), secs(3));
    assert_about(log.at("close-db end"), secs(4));
    assert_about(report.hooks[0].duration, secs(2));
}

#[tokio::test(start_paused = true)]
async fn failing_panicking_and_slow_hooks_are_recorded_and_the_others_still_run() {
    let lifecycle = lifecycle()
        .hook_timeout(secs(5))
        .hook(Phase::FLUSH, "fails", || async { Err("disk full".into()) })
        .hook(Phase::FLUSH, "panics", || async { panic!("oops") })
        .hook(Phase::FLUSH, "hangs", || async {
            sleep(secs(3600)).await;
            Ok(())
        })
        .hook_with_timeout(Phase::FLUSH, "slow-but-allowed", secs(20), || async {
            sleep(secs(10)).await;
            Ok(())
        })
        .hook(Phase::CLOSE, "close", || async { Ok(()) });
    let report = lifecycle.run().await;

    assert_eq!(report.exit_code, ExitCode::HookFailed);
    let by_name = |n: &str| report.hooks.iter().find(|h| h.name == n).unwrap();
    assert_eq!(
        by_name("fails").outcome,
        HookOutcome::Failed {
            error: "disk full".into()
        }
    );
    assert_eq!(
        by_name("panics").outcome,
        HookOutcome::Panicked {
            message: "oops".into()
        }
    );
    assert_eq!(
        by_name("hangs").outcome,
        HookOutcome::TimedOut { timeout: secs(5) }
    );
    assert_about(by_name("hangs").duration, secs(5));
    assert_eq!(by_name("slow-but-allowed").outcome, HookOutcome::Completed);
    assert_eq!(by_name("close").outcome, HookOutcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn failing_service_shuts_everything_down() {
    let lifecycle = lifecycle()
        .service("healthy", service(Duration::ZERO, Some(SEC)))
        .service("flaky", |_ctx: StartContext| async {
            Ok(async {
                sleep(secs(2)).await;
                Err::<(), BoxError>("upstream gone".into())
            })
        });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::ServiceFailed);
    assert_eq!(
        report.trigger,
        Trigger::ServiceFailed {
            service: "flaky".into(),
            error: "failed: upstream gone".into()
        }
    );
    assert_eq!(report.services[0].outcome, Outcome::Stopped);
    assert_eq!(
        report.services[1].outcome,
        Outcome::Failed {
            error: "upstream gone".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn panicking_task_shuts_everything_down_with_its_message() {
    let lifecycle = lifecycle()
        .service("api", service(Duration::ZERO, None))
        .task("worker", |_stop| async {
            sleep(SEC).await;
            panic!("poisoned queue");
        });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::ServiceFailed);
    assert_eq!(
        report.trigger,
        Trigger::TaskFailed {
            task: "worker".into(),
            error: "panicked: poisoned queue".into()
        }
    );
    assert_eq!(
        report.tasks[0].outcome,
        Outcome::Panicked {
            message: "poisoned queue".into()
        }
    );
    assert_eq!(report.services[0].outcome, Outcome::Stopped);
}

#[tokio::test(start_paused = true)]
async fn service_that_stops_serving_on_its_own_is_a_failure() {
    let lifecycle = lifecycle().service("quitter", |_ctx: StartContext| async {
        Ok(async { Ok(()) })
    });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::ServiceFailed);
    assert!(matches!(report.trigger, Trigger::ServiceFailed { .. }));
}

#[tokio::test(start_paused = true)]
async fn tasks_finishing_on_their_own_are_fine_and_the_run_completes() {
    let stopped = Log::new();
    let s = stopped.clone();
    let lifecycle = lifecycle()
        .task("one-shot", |_stop| async {
            sleep(SEC).await;
            Ok(())
        })
        .task("worker", move |stop| async move {
            tokio::select! {
                _ = stop.cancelled() => s.push("cancelled"),
                _ = sleep(secs(2)) => s.push("finished"),
            }
            Ok(())
        });
    let report = lifecycle.run().await;
    assert_eq!(report.trigger, Trigger::Completed);
    assert_eq!(report.exit_code, ExitCode::Clean);
    assert_eq!(report.tasks[0].outcome, Outcome::Finished);
    assert_eq!(report.tasks[1].outcome, Outcome::Finished);
    assert_eq!(stopped.events(), ["finished"]);
}

#[tokio::test(start_paused = true)]
async fn tasks_get_their_token_cancelled_at_the_drain() {
    let lifecycle = lifecycle().task("worker", |stop| async move {
        stop.cancelled().await;
        sleep(SEC).await; // winding down
        Ok(())
    });
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(report.tasks[0].outcome, Outcome::Stopped);
    assert_about(report.tasks[0].drained_in.unwrap(), SEC);
}

#[tokio::test(start_paused = true)]
async fn force_abandons_the_shutdown_at_once() {
    let lifecycle = lifecycle()
        .service("slow", service(Duration::ZERO, Some(secs(20))))
        .hook(Phase::FLUSH, "never", || async { Ok(()) });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    handle.shutdown();
    sleep(secs(2)).await;
    let forced_at = Instant::now();
    handle.force();
    let report = run.await.unwrap();
    assert!(forced_at.elapsed() < Duration::from_millis(100));
    assert_eq!(report.exit_code, ExitCode::Forced);
    assert!(report.forced);
    assert_eq!(report.trigger, Trigger::Requested);
    assert_eq!(report.services[0].outcome, Outcome::Abandoned);
    assert_eq!(report.hooks[0].outcome, HookOutcome::Abandoned);
}

#[tokio::test(start_paused = true)]
async fn force_during_hooks_abandons_and_stops_the_rest() {
    let finished = Log::new();
    let f = finished.clone();
    let lifecycle = lifecycle()
        .hook(Phase::FLUSH, "slow", move || async move {
            sleep(secs(4)).await;
            f.push("hook finished");
            Ok(())
        })
        .hook(Phase::CLOSE, "after", || async { Ok(()) })
        .task("t", |stop| async move {
            stop.cancelled().await;
            Ok(())
        });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    handle.shutdown();
    sleep(SEC).await;
    handle.force();
    let report = run.await.unwrap();
    assert_eq!(report.exit_code, ExitCode::Forced);
    assert_eq!(report.tasks[0].outcome, Outcome::Stopped);
    let outcomes: Vec<_> = report.hooks.iter().map(|h| h.outcome.clone()).collect();
    assert_eq!(outcomes, [HookOutcome::Abandoned, HookOutcome::Abandoned]);
    // Abandoned means stopped, not left running detached.
    sleep(secs(10)).await;
    assert!(finished.events().is_empty(), "an abandoned hook ran on");
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_start_releases_everything() {
    let lifecycle = lifecycle().service("slow", service(secs(10), None));
    let handle: LifecycleHandle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    sleep(SEC).await;
    handle.shutdown();
    let report = run.await.unwrap();
    assert_eq!(report.trigger, Trigger::Requested);
    assert_eq!(report.ready_after, None);
    assert_eq!(report.services[0].outcome, Outcome::Cancelled);
    assert_about(report.total, SEC);
    assert!(handle.wait_ready().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn report_serialises_with_durations_in_milliseconds() {
    let lifecycle = lifecycle()
        .service("api", service(Duration::from_millis(250), Some(SEC)))
        .hook(Phase::FLUSH, "flush", || async { Ok(()) });
    let report = run_then_shutdown(lifecycle).await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["exit_code"], "clean");
    assert_eq!(json["trigger"]["kind"], "requested");
    assert_eq!(json["services"][0]["outcome"]["kind"], "stopped");
    let started = json["services"][0]["started_in"].as_f64().unwrap();
    assert!((started - 250.0).abs() < 5.0, "{started}");
    assert_eq!(json["hooks"][0]["phase"], 100);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back.exit_code, report.exit_code);
    assert_eq!(back.services[0].work, report.services[0].work);
}

#[test]
fn exit_codes_are_distinct_and_documented() {
    let codes = [
        ExitCode::Clean,
        ExitCode::StartFailed,
        ExitCode::ServiceFailed,
        ExitCode::DeadlineExceeded,
        ExitCode::HookFailed,
        ExitCode::Forced,
    ]
    .map(ExitCode::code);
    assert_eq!(codes, [0, 3, 4, 5, 6, 7]);
}

// Found in review: each of these failed before its fix.

#[tokio::test(start_paused = true)]
async fn failure_during_the_drain_survives_the_deadline() {
    let lifecycle =
        lifecycle()
            .drain_deadline(secs(5))
            .service("api", |ctx: StartContext| async move {
                let drain = ctx.drain();
                drain.spawn(sleep(secs(3600)));
                Ok(async move {
                    drain.draining().await;
                    Err::<(), BoxError>("graceful close failed".into())
                })
            });
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(
        report.services[0].outcome,
        Outcome::Failed {
            error: "graceful close failed".into()
        }
    );
    assert_eq!(report.services[0].work.aborted, 1);
    assert!(report.deadline_exceeded);
    // A failure outranks the deadline.
    assert_eq!(report.exit_code, ExitCode::ServiceFailed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_blocking_its_thread_is_still_bounded() {
    let lifecycle = lifecycle().hook_with_timeout(
        Phase::FLUSH,
        "sync-flush",
        Duration::from_millis(100),
        || async {
            std::thread::sleep(secs(3)); // a synchronous client, say
            Ok(())
        },
    );
    let began = std::time::Instant::now();
    let report = lifecycle.run().await;
    assert!(matches!(
        report.hooks[0].outcome,
        HookOutcome::TimedOut { .. }
    ));
    // Timeout plus the abort grace (1 s), not the 3 s the hook blocks for.
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn panics_before_the_first_await_are_reported() {
    let lifecycle = lifecycle()
        .task("w", |_stop| -> std::future::Ready<Result<(), BoxError>> {
            panic!("bad config");
        })
        .hook(
            Phase::FLUSH,
            "h",
            || -> std::future::Ready<Result<(), BoxError>> { panic!("no handle") },
        );
    let report = lifecycle.run().await;
    assert_eq!(
        report.trigger,
        Trigger::TaskFailed {
            task: "w".into(),
            error: "panicked: bad config".into()
        }
    );
    assert_eq!(
        report.hooks[0].outcome,
        HookOutcome::Panicked {
            message: "no handle".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn wait_ready_is_ok_after_a_run_that_was_ready() {
    let lifecycle = lifecycle().task("once", |_stop| async { Err("boom".into()) });
    let handle = lifecycle.handle();
    let report = lifecycle.run().await;
    assert!(report.ready_after.is_some());
    handle.wait_ready().await.unwrap();
    assert!(!handle.is_ready());
}

#[tokio::test(start_paused = true)]
async fn failed_start_stops_work_its_start_steps_spawned() {
    let seen: Arc<Mutex<Option<Drain>>> = Default::default();
    let keep = Arc::clone(&seen);
    let lifecycle = lifecycle()
        .service("ok", move |ctx: StartContext| async move {
            let drain = ctx.drain();
            *keep.lock().unwrap() = Some(drain.clone());
            drain.spawn(sleep(secs(3600))); // a pool filler, say
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .service("bad", |_ctx: StartContext| async move {
            sleep(SEC).await;
            Err::<std::future::Ready<Result<(), BoxError>>, _>("no config".into())
        });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::StartFailed);
    let work = report.services[0].work;
    assert_eq!((work.in_flight_at_drain, work.aborted), (0, 1));
    let drain = seen.lock().unwrap().clone().unwrap();
    assert!(drain.is_draining());
    assert_eq!(drain.in_flight(), 0, "gone when run() returns");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_stops_everything() {
    let lifecycle = lifecycle().service("api", service(Duration::ZERO, None));
    let handle = lifecycle.handle();
    let _ = tokio::time::timeout(SEC, lifecycle.run()).await;
    assert_eq!(handle.state(), State::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_while_a_failed_start_is_released_keeps_the_trigger() {
    // The test body (not a runtime worker) relays `stuck`'s start to `bad`: a wake from a worker
    // about to block could park `bad` in that worker's LIFO slot until the block ends.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (failing_tx, failing_rx) = tokio::sync::oneshot::channel();
    let lifecycle = lifecycle()
        .service("stuck", |_ctx: StartContext| async move {
            let _ = started_tx.send(());
            std::thread::sleep(Duration::from_millis(500)); // the abort lands late
            Ok(async { Ok(()) })
        })
        .service("bad", |_ctx: StartContext| async move {
            let _ = go_rx.await;
            let _ = failing_tx.send(());
            Err::<std::future::Ready<Result<(), BoxError>>, _>("port taken".into())
        });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    started_rx.await.unwrap();
    go_tx.send(()).unwrap();
    failing_rx.await.unwrap();
    sleep(Duration::from_millis(20)).await;
    handle.force();
    let report = run.await.unwrap();
    assert!(
        matches!(report.trigger, Trigger::StartFailed { .. }),
        "{:?}",
        report.trigger
    );
    assert_eq!(report.exit_code, ExitCode::Forced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_start_only_after_aborted_work_is_gone() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let gone = Arc::new(AtomicBool::new(false));
    let seen_by_hook = Arc::new(Mutex::new(None));
    let (g, s) = (Arc::clone(&gone), Arc::clone(&seen_by_hook));
    let lifecycle = lifecycle()
        .drain_deadline(Duration::from_millis(200))
        .service("api", move |ctx: StartContext| async move {
            let drain = ctx.drain();
            drain.spawn(async move {
                let _flag = SetOnDrop(g);
                loop {
                    // Busy in blocking code when the abort comes: it lands at the next poll.
                    std::thread::sleep(Duration::from_millis(400));
                    tokio::task::yield_now().await;
                }
            });
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .hook(Phase::FLUSH, "flush", move || async move {
            *s.lock().unwrap() = Some(gone.load(Ordering::SeqCst));
            Ok(())
        });
    let report = run_then_shutdown(lifecycle).await;
    assert_eq!(report.exit_code, ExitCode::DeadlineExceeded);
    assert_eq!(report.services[0].work.aborted, 1);
    assert_eq!(*seen_by_hook.lock().unwrap(), Some(true));
}

#[tokio::test]
async fn failed_start_releases_a_listener_owned_by_spawned_work() {
    let addr = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&addr);
    let lifecycle = lifecycle()
        .service("acceptor", move |ctx: StartContext| async move {
            let listener = ctx.bind_tcp("127.0.0.1:0").await?;
            *seen.lock().unwrap() = Some(listener.local_addr()?);
            let drain = ctx.drain();
            // An accept loop that the start step runs as tracked work.
            drain.spawn(async move {
                loop {
                    let _ = listener.accept().await;
                }
            });
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .service("bad", |_ctx: StartContext| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<std::future::Ready<Result<(), BoxError>>, _>("no config".into())
        });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::StartFailed);
    assert_eq!(report.services[0].outcome, Outcome::Cancelled);
    let addr = addr.lock().unwrap().unwrap();
    std::net::TcpListener::bind(addr).expect("port released when run() returns");
}

#[tokio::test(start_paused = true)]
async fn endings_during_the_lame_duck_delay_are_recorded_as_they_happen() {
    let lifecycle = lifecycle()
        .lame_duck_delay(secs(5))
        .service("quitter", |ctx: StartContext| async move {
            let drain = ctx.drain();
            Ok(async move {
                tokio::select! {
                    _ = drain.draining() => {}
                    // Stops 2 s into the lame-duck delay, before any drain.
                    _ = sleep(secs(3)) => {}
                }
                Ok(())
            })
        })
        .service("stays", service(Duration::ZERO, None))
        .task("one-shot", |_stop| async {
            sleep(secs(2)).await; // finishes on its own during the delay
            Ok(())
        });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    sleep(SEC).await;
    handle.shutdown();
    let report = run.await.unwrap();
    // A shutdown was under way: stopping then is not a failure, but it is not a drain either.
    let quitter = &report.services[0];
    assert_eq!(quitter.outcome, Outcome::Stopped);
    assert_eq!(quitter.drained_in, None);
    assert_eq!(report.services[1].outcome, Outcome::Stopped);
    assert!(report.services[1].drained_in.is_some());
    assert_eq!(report.tasks[0].outcome, Outcome::Finished);
    assert_eq!(report.exit_code, ExitCode::Clean);
}

#[tokio::test(start_paused = true)]
async fn lame_duck_delay_ends_when_nothing_serves_any_more() {
    let lifecycle =
        lifecycle()
            .lame_duck_delay(secs(5))
            .service("flaky", |_ctx: StartContext| async {
                Ok(async {
                    sleep(SEC).await;
                    Err::<(), BoxError>("lost its socket".into())
                })
            });
    let report = lifecycle.run().await;
    assert_eq!(report.exit_code, ExitCode::ServiceFailed);
    // Nobody to be a lame duck for: no 5 s wait.
    assert_about(report.shutdown, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn start_failure_in_the_same_instant_as_a_shutdown_is_not_lost() {
    let lifecycle = lifecycle().service("bad", |ctx: StartContext| async move {
        ctx.drain().spawn(sleep(secs(3600)));
        sleep(SEC).await;
        Err::<std::future::Ready<Result<(), BoxError>>, _>("no config".into())
    });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    sleep(SEC).await;
    handle.shutdown();
    let report = run.await.unwrap();
    assert!(matches!(
        report.services[0].outcome,
        Outcome::StartFailed { .. }
    ));
    assert_eq!(report.exit_code, ExitCode::StartFailed);
    // The work its start step spawned was aborted with the failed start, and says so.
    assert_eq!(report.services[0].work.aborted, 1);
}
