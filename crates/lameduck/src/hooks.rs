//! Shutdown hooks, in ordered phases: a phase starts when the previous one has finished; the
//! hooks of one phase run concurrently; each has its own timeout; every outcome is reported.
//!
//! This is what Go's `RegisterOnShutdown` lacks: there, callbacks have no order and nothing
//! waits for them.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use tokio_util::task::AbortOnDropHandle;

use crate::budget::{ABORT_GRACE, phase_bound};
use crate::error::{BoxError, Failure};
use crate::notify::Notifier;
use crate::phase::Phase;
use crate::report::{HookOutcome, HookReport};
use crate::service::BoxFuture;

type HookFn = Box<dyn FnOnce() -> BoxFuture<Result<(), BoxError>> + Send>;

/// A registered hook.
pub(crate) struct Hook {
    phase: Phase,
    name: String,
    timeout: Option<Duration>,
    run: HookFn,
}

impl Hook {
    pub(crate) fn new<F, Fut>(
        phase: Phase,
        name: String,
        timeout: Option<Duration>,
        hook: F,
    ) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Hook {
            phase,
            name,
            timeout,
            // Called inside the future: a panic before its first `.await` is the hook's panic.
            run: Box::new(move || Box::pin(async move { hook().await })),
        }
    }
}

/// The hooks grouped by phase, run phase after phase.
pub(crate) struct Hooks {
    phases: BTreeMap<Phase, Vec<Hook>>,
    default_timeout: Duration,
    reports: Vec<HookReport>,
}

impl Hooks {
    pub(crate) fn new(hooks: Vec<Hook>, default_timeout: Duration) -> Self {
        let mut phases: BTreeMap<Phase, Vec<Hook>> = BTreeMap::new();
        for hook in hooks {
            phases.entry(hook.phase).or_default().push(hook);
        }
        Hooks {
            phases,
            default_timeout,
            reports: Vec::new(),
        }
    }

    /// Runs every phase in order. Cancel-safe in the sense that matters: if this future is
    /// dropped (a forced exit), [`take_reports`](Hooks::take_reports) still names every hook,
    /// the unfinished ones as abandoned, and the hook tasks are aborted with their `JoinSet`.
    /// `shutdown_began` is what the log lines' elapsed times count from.
    pub(crate) async fn run(&mut self, shutdown_began: Instant, notify: &Notifier) {
        while let Some((phase, hooks)) = self.phases.pop_first() {
            tracing::info!(
                target: "lameduck",
                %phase,
                hooks = hooks.len(),
                since_trigger_ms = ms(shutdown_began.elapsed()),
                "running shutdown hooks"
            );
            let longest = hooks
                .iter()
                .map(|h| h.timeout.unwrap_or(self.default_timeout))
                .max()
                .unwrap_or_default();
            notify.step(
                &format!("shutdown hooks: phase {phase} ({} hooks)", hooks.len()),
                phase_bound(longest),
            );
            // Until the phase is done, its hooks are abandoned if this future is dropped.
            let first = self.reports.len();
            let mut set = JoinSet::new();
            // A span per phase, and one per hook inside it (the hook's own events are in it).
            let span = tracing::info_span!(target: "lameduck", "hook_phase", %phase);
            for (i, hook) in hooks.into_iter().enumerate() {
                let timeout = hook.timeout.unwrap_or(self.default_timeout);
                self.reports.push(HookReport {
                    phase,
                    name: hook.name.clone(),
                    outcome: HookOutcome::Abandoned,
                    duration: Duration::ZERO,
                });
                let hook_span = tracing::info_span!(target: "lameduck", parent: &span, "hook", hook = %hook.name);
                set.spawn(
                    async move { (first + i, run_one(hook, timeout).await) }.instrument(hook_span),
                );
            }
            let reports = &mut self.reports;
            async {
                while let Some(done) = set.join_next().await {
                    // `run_one` catches the hook's own panics; a JoinError here would be our
                    // bug, and the hook then stays reported as abandoned.
                    if let Ok((slot, report)) = done {
                        reports[slot] = report;
                    }
                }
            }
            .instrument(span)
            .await;
        }
    }

    /// Reports for every hook: run ones in the order run, then any never reached.
    /// The longest the hooks can take, phase after phase.
    pub(crate) fn bound(&self) -> Duration {
        self.phases
            .values()
            .map(|hooks| {
                let longest = hooks
                    .iter()
                    .map(|h| h.timeout.unwrap_or(self.default_timeout))
                    .max()
                    .unwrap_or_default();
                phase_bound(longest)
            })
            .sum()
    }

    pub(crate) fn take_reports(&mut self) -> Vec<HookReport> {
        for (phase, hooks) in std::mem::take(&mut self.phases) {
            self.reports.extend(hooks.into_iter().map(|h| HookReport {
                phase,
                name: h.name,
                outcome: HookOutcome::Abandoned,
                duration: Duration::ZERO,
            }));
        }
        std::mem::take(&mut self.reports)
    }
}

/// Runs one hook in a task of its own, so that a panic is caught and a timeout can abort it.
/// The task is aborted if this future is dropped (a forced exit): an abandoned hook stops.
async fn run_one(hook: Hook, timeout: Duration) -> HookReport {
    let started = Instant::now();
    let mut task = AbortOnDropHandle::new(tokio::spawn((hook.run)().in_current_span()));
    let result = match tokio::time::timeout(timeout, &mut task).await {
        Ok(res) => Some(res),
        Err(_) => {
            task.abort();
            // Wait for the abort to land, so the next phase does not overlap this hook; bounded,
            // since a hook blocking its thread cannot be aborted.
            match tokio::time::timeout(ABORT_GRACE, &mut task).await {
                // It finished before the abort landed: that is its outcome after all.
                Ok(res @ Ok(_)) => Some(res),
                Ok(Err(_)) => None,
                Err(_) => {
                    tracing::error!(
                        target: "lameduck", hook = %hook.name,
                        "hook timed out and did not stop within {ABORT_GRACE:?} of its abort (blocking code?)"
                    );
                    None
                }
            }
        }
    };
    let outcome = match result.map(Failure::from_join) {
        None => HookOutcome::TimedOut { timeout },
        Some(Ok(())) => HookOutcome::Completed,
        Some(Err(Some(Failure::Error(error)))) => HookOutcome::Failed { error },
        Some(Err(Some(Failure::Panic(message)))) => HookOutcome::Panicked { message },
        Some(Err(None)) => HookOutcome::Abandoned,
    };
    let duration = started.elapsed();
    match &outcome {
        HookOutcome::Completed => tracing::info!(
            target: "lameduck", hook = %hook.name, phase = %hook.phase,
            duration_ms = ms(duration), "hook completed"
        ),
        other => tracing::warn!(
            target: "lameduck", hook = %hook.name, phase = %hook.phase,
            duration_ms = ms(duration), outcome = ?other, "hook did not complete"
        ),
    }
    crate::metrics::hook_ended(hook.phase, &hook.name, &outcome, duration);
    HookReport {
        phase: hook.phase,
        name: hook.name,
        outcome,
        duration,
    }
}

/// Milliseconds, to the microsecond: what the log lines show.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
