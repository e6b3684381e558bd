//! One run, step by step: start (barrier) -> ready -> trigger -> lame duck -> drain -> hooks ->
//! report. Every wait here is on an event (a task ending, a token, a timer for a deadline);
//! nothing polls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::budget::{ABORT_GRACE, ABORT_NOTICE, drain_bound};
use crate::config::{Config, TaskFn};
use crate::drain::{Drain, WorkCounts};
use crate::error::{BoxError, Failure, StartError, chain, errno_of, panic_message};
use crate::hooks::Hook;
use crate::hooks::{Hooks, ms};
use crate::listen::{Handover, Inherited, ListenFdsError};
use crate::metrics::{LifecycleMetrics, Upgrade};
use crate::notify::Notifier;
use crate::pid_file::PidFile;
use crate::ready::{Control, State};
use crate::report::Addresses;
use crate::report::{ExitCode, Outcome, Report, Trigger, UnitReport};
use crate::service::{ServeFuture, StartContext, StartFn};
use crate::signal::{Signal, Signals};
use crate::stage::Stage;
use crate::upgrade::{Attempt, Upgrader};

/// A service or background task, as the run sees it.
struct Unit {
    name: Arc<str>,
    addresses: Addresses,
    /// Services only; tasks track no work.
    drain: Option<Drain>,
    /// A service drained last, after the hooks.
    last: bool,
    /// Its serve step or task, once spawned; then the wait for its in-flight work.
    running: Option<AbortHandle>,
    idle: Option<AbortHandle>,
    started_in: Option<Duration>,
    drained_in: Option<Duration>,
    /// `None` while it runs (or never ran).
    outcome: Option<Outcome>,
    /// Whether a serve step, task or in-flight work of it is still running.
    live: bool,
    at_drain: Option<WorkCounts>,
    at_end: Option<WorkCounts>,
    /// Whether its work was cut short (the drain deadline, a failed start, a forced exit): what
    /// was in flight at `at_end` was aborted.
    work_aborted: bool,
}

impl Unit {
    fn new(name: Arc<str>, drain: Option<Drain>, last: bool) -> Self {
        Unit {
            name,
            addresses: Addresses::default(),
            drain,
            last,
            running: None,
            idle: None,
            started_in: None,
            drained_in: None,
            outcome: None,
            live: false,
            at_drain: None,
            at_end: None,
            work_aborted: false,
        }
    }

    /// The unit's counters now, as its end snapshot; with `aborted`, what is in flight counts as
    /// aborted.
    fn snapshot_end(&mut self, aborted: bool) {
        if let Some(drain) = &self.drain {
            self.at_end = Some(drain.counts());
            self.work_aborted |= aborted;
        }
    }

    /// Records how it ended. A failure is never overwritten, and work aborted at the deadline
    /// stays aborted even if its serve step returned cleanly at the last moment.
    fn set_outcome(&mut self, outcome: Outcome) {
        let keep = match &self.outcome {
            Some(Outcome::Failed { .. } | Outcome::Panicked { .. }) => true,
            Some(Outcome::Aborted) => !outcome.is_failure(),
            _ => false,
        };
        if !keep {
            self.outcome = Some(outcome);
        }
    }

    fn report(self, forced: bool) -> UnitReport {
        let outcome = match (self.outcome, forced && self.live) {
            (Some(o @ (Outcome::Failed { .. } | Outcome::Panicked { .. })), _) => o,
            (_, true) => Outcome::Abandoned,
            (Some(o), false) => o,
            (None, false) => Outcome::NotStarted,
        };
        let serving = self.drain.as_ref().map(Drain::serving).unwrap_or_default();
        let (work, requests) = match &self.drain {
            Some(d) => WorkCounts::report(
                self.at_drain,
                self.at_end.unwrap_or_else(|| d.counts()),
                self.work_aborted,
            ),
            None => Default::default(),
        };
        UnitReport {
            name: self.name.to_string(),
            addresses: self.addresses.get(),
            started_in: self.started_in,
            drained_in: self.drained_in,
            outcome,
            work,
            requests,
            serving,
        }
    }
}

/// Where shutdown requests come from: signals, and the handle.
struct Triggers {
    signals: Option<Signals>,
    shutdown: CancellationToken,
    force: CancellationToken,
    force_on_second_signal: bool,
    /// Signals received so far in this run.
    signals_seen: u32,
}

impl Triggers {
    /// The trigger of the shutdown.
    async fn first(&mut self) -> Trigger {
        tokio::select! {
            biased;
            () = self.force.cancelled() => Trigger::Forced,
            signal = next_signal(&mut self.signals) => {
                self.signals_seen += 1;
                Trigger::Signal { signal }
            }
            () = self.shutdown.cancelled() => Trigger::Requested,
        }
    }

    /// Resolves when the shutdown under way must be abandoned: at the *second* signal of the
    /// run. When something else started the shutdown (a failure, the handle), the first signal
    /// is only an operator or supervisor asking for what is already happening (Kubernetes sends
    /// one SIGTERM), and the shutdown goes on.
    async fn forced(&mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.force.cancelled() => {
                    tracing::warn!(target: "lameduck", "forced by the handle: abandoning the shutdown");
                    return;
                }
                signal = next_signal(&mut self.signals) => {
                    self.signals_seen += 1;
                    if self.signals_seen < 2 {
                        tracing::info!(
                            target: "lameduck", %signal,
                            force_on_second_signal = self.force_on_second_signal,
                            "signal during shutdown: already shutting down"
                        );
                    } else if self.force_on_second_signal {
                        tracing::warn!(target: "lameduck", %signal, "second signal: abandoning the shutdown");
                        return;
                    } else {
                        tracing::warn!(target: "lameduck", %signal, "signal during shutdown ignored (force_on_second_signal is off)");
                    }
                }
            }
        }
    }
}

/// What a start step task yields: its unit, its serve step (or error), and how long it took.
type StartResult = (usize, Result<ServeFuture, BoxError>, Duration);

pub(crate) struct Run {
    config: Config,
    control: Control,
    /// Services first, in registration order, then tasks.
    units: Vec<Unit>,
    starts: Vec<StartFn>,
    tasks: Vec<TaskFn>,
    hooks: Hooks,
    /// The drain's tokens (its start, its deadline, and the abort [`ABORT_NOTICE`] after it):
    /// services' `Drain` and tasks' tokens hang off them.
    first: Stage,
    /// The tokens of the services drained last, after the hooks.
    last: Stage,
    /// The live series (feature `metrics`).
    metrics: LifecycleMetrics,
    /// The serve steps and the tasks.
    running: JoinSet<Result<(), BoxError>>,
    ids: HashMap<Id, usize>,
    /// Waits for services' in-flight work, once their serve step has returned.
    idle: JoinSet<usize>,
    began: Instant,
    ready_after: Option<Duration>,
    drain_began: Option<Instant>,
    /// When the services drained last began to drain.
    last_drain_began: Option<Instant>,
    drain_took: Option<Duration>,
    deadline_exceeded: bool,
    /// When the trigger arrived: what the report's shutdown duration counts from.
    triggered_at: Option<Instant>,
    /// Whether a second signal (or `force()`) abandoned the shutdown.
    forced: bool,
    /// The sockets passed to the process, for the services to claim by name.
    inherited: Arc<Inherited>,
    /// sd_notify, when the service manager asked for it.
    notify: Notifier,
    /// The OS error code behind the first failed start, if one was (for `ERRNO=`); `Some` once
    /// a start failed.
    start_errno: Option<Option<i32>>,
    /// Every listener, for an upgrade to hand over; closed when the shutdown begins.
    handover: Arc<Handover>,
    /// What starts an upgrade, once the run is prepared.
    upgrader: Option<Upgrader>,
    /// Cancelled when an upgrade has handed the listeners over (see `Drain`).
    handed_over: CancellationToken,
    /// New processes of failed or abandoned upgrades, being stopped.
    stopping: JoinSet<()>,
    pid_file: Option<Arc<PidFile>>,
}

impl Run {
    pub(crate) fn new(
        services: Vec<(Arc<str>, StartFn, bool)>,
        tasks: Vec<(Arc<str>, TaskFn)>,
        hooks: Vec<Hook>,
        config: Config,
        control: Control,
    ) -> Self {
        let mut names = std::collections::HashSet::new();
        let service_names = services.iter().map(|(name, _, _)| name);
        for name in service_names.chain(tasks.iter().map(|(name, _)| name)) {
            if !names.insert(name) {
                tracing::warn!(
                    target: "lameduck", %name,
                    "two services or tasks share this name: logs and the report can tell them \
                     apart only by position"
                );
            }
        }
        // Before any series is resolved: the descriptions first.
        let metrics = LifecycleMetrics::new();
        let (first, last) = (Stage::new(), Stage::new());
        let handed_over = CancellationToken::new();
        let mut units = Vec::with_capacity(services.len() + tasks.len());
        let mut starts = Vec::with_capacity(services.len());
        for (name, start, drained_last) in services {
            let stage = if drained_last { &last } else { &first };
            let drain = stage.drain(&name, &handed_over);
            let unit = Unit::new(name, Some(drain), drained_last);
            control.publish_addresses(Arc::clone(&unit.name), unit.addresses.clone());
            units.push(unit);
            starts.push(start);
        }
        let mut task_fns = Vec::with_capacity(tasks.len());
        for (name, task) in tasks {
            units.push(Unit::new(name, None, false));
            task_fns.push(task);
        }
        Run {
            hooks: Hooks::new(hooks, config.hook_timeout),
            config,
            control,
            units,
            starts,
            tasks: task_fns,
            first,
            last,
            metrics,
            running: JoinSet::new(),
            ids: HashMap::new(),
            idle: JoinSet::new(),
            began: Instant::now(),
            ready_after: None,
            drain_began: None,
            last_drain_began: None,
            drain_took: None,
            deadline_exceeded: false,
            triggered_at: None,
            forced: false,
            inherited: Arc::default(),
            notify: Notifier::default(),
            start_errno: None,
            handover: Arc::default(),
            upgrader: None,
            handed_over,
            stopping: JoinSet::new(),
            pid_file: None,
        }
    }

    pub(crate) async fn execute(mut self) -> Report {
        self.began = Instant::now();
        self.metrics.follow(&self.control.handle);
        // Passed descriptors first, before anything of ours opens one at a number they use.
        let inherited = if self.config.inherit_listeners {
            Inherited::from_env()
        } else {
            Ok(Inherited::default())
        };
        let parent = inherited.as_ref().ok().and_then(Inherited::upgrade_notify);
        self.notify = Notifier::from_env(self.config.sd_notify, parent);
        self.pid_file = self
            .config
            .pid_file
            .clone()
            .map(|path| Arc::new(PidFile::new(path)));
        let trigger = self.through(inherited).await;
        if self.forced {
            // Dropping them kills the new processes at once.
            self.stopping.abort_all();
        }
        while self.stopping.join_next().await.is_some() {}
        let report = self.finish(trigger);
        if let Some(pid_file) = &self.pid_file {
            pid_file.remove_if_ours();
        }
        match &report.trigger {
            Trigger::StartFailed { error, .. } => {
                self.notify.start_failed(error, self.start_errno.flatten());
            }
            _ => self.notify.status(&format!(
                "stopped: exit code {} ({:?})",
                report.exit_code.code(),
                report.exit_code
            )),
        }
        self.notify.flush().await;
        report
    }

    /// From the start to the end of the shutdown; returns the trigger, for the report.
    async fn through(&mut self, inherited: Result<Inherited, ListenFdsError>) -> Trigger {
        let mut triggers = Triggers {
            signals: None,
            shutdown: self.control.shutdown_requested().clone(),
            force: self.control.force_requested().clone(),
            force_on_second_signal: self.config.force_on_second_signal,
            signals_seen: 0,
        };
        let prepared = inherited
            .map_err(|e| ("socket activation", chain(&e), None))
            .and_then(|inherited| {
                self.inherited = Arc::new(inherited);
                let handled = self.config.handle_signals;
                let signal = self.config.upgrade_signal.filter(|_| handled);
                let requested = self.control.upgrade_requested();
                let upgrader = Upgrader::new(signal, requested, self.config.upgrade_timeout)
                    .map_err(|e| {
                        let error = format!("cannot install the upgrade signal's handler: {e}");
                        ("signal handler", error, e.raw_os_error())
                    })?;
                self.upgrader = Some(upgrader);
                if !handled {
                    return Ok(());
                }
                let signals = Signals::install().map_err(|e| {
                    let error = format!("cannot install signal handlers: {e}");
                    ("signal handler", error, e.raw_os_error())
                })?;
                triggers.signals = Some(signals);
                Ok(())
            });
        let trigger = match prepared {
            // Nothing started: the hooks still run (a failed start), then the report.
            Err((culprit, error, errno)) => {
                tracing::error!(target: "lameduck", error = %error, "start failed");
                self.control.set_start_error(error.clone());
                self.start_errno = Some(errno);
                self.triggered_at = Some(Instant::now());
                Trigger::StartFailed {
                    service: culprit.into(),
                    error,
                }
            }
            Ok(()) => match self
                .start(&mut triggers)
                .instrument(info_span!(target: "lameduck", "start"))
                .await
            {
                Ok(()) => self.serve(&mut triggers).await,
                Err(trigger) => trigger,
            },
        };
        // From here on nothing is handed over: the listeners close when their servers drop them.
        self.handover.close();
        if trigger == Trigger::Forced {
            self.forced = true;
        }
        if self.forced {
            return trigger;
        }
        self.control.set(State::Draining);
        self.metrics
            .shutdown_started(self.triggered_at.map(|t| t.elapsed()));
        tracing::info!(target: "lameduck", %trigger, "shutting down: readiness off");
        if !matches!(
            trigger,
            Trigger::StartFailed { .. } | Trigger::Upgraded { .. }
        ) {
            let bound = self.config.lame_duck_delay + drain_bound(self.config.drain_deadline);
            self.notify
                .stopping(&format!("shutting down ({trigger}): readiness off"), bound);
        }

        let span = info_span!(target: "lameduck", "shutdown", %trigger);
        self.forced = tokio::select! {
            biased;
            () = triggers.forced() => true,
            () = self.shut_down().instrument(span) => false,
        };
        // New processes of upgrades still being stopped: waited for, but a second signal still
        // forces (they are then killed at once).
        if !self.forced && !self.stopping.is_empty() {
            let stopping = &mut self.stopping;
            self.forced = tokio::select! {
                biased;
                () = triggers.forced() => true,
                () = async { while stopping.join_next().await.is_some() {} } => false,
            };
        }
        trigger
    }

    /// The readiness barrier: every start step runs concurrently; ready only when all succeed.
    /// On a failure (or a trigger) the others are cut short and every listener is released,
    /// since no serve step has been spawned yet: dropping them is enough.
    async fn start(&mut self, triggers: &mut Triggers) -> Result<(), Trigger> {
        let mut starting = JoinSet::new();
        let mut ids = HashMap::new();
        for (i, start) in std::mem::take(&mut self.starts).into_iter().enumerate() {
            let unit = &self.units[i];
            let Some(drain) = unit.drain.clone() else {
                continue;
            };
            let ctx = StartContext::new(
                Arc::clone(&unit.name),
                unit.addresses.clone(),
                drain,
                self.control.handle.clone(),
                Arc::clone(&self.inherited),
                Arc::clone(&self.handover),
            );
            let handle = starting.spawn(async move {
                let began = Instant::now();
                let serve = start(ctx).await;
                (i, serve, began.elapsed())
            });
            ids.insert(handle.id(), i);
        }
        let mut serves: Vec<Option<ServeFuture>> = self.units.iter().map(|_| None).collect();

        let outcome = loop {
            let next = tokio::select! {
                biased;
                trigger = triggers.first() => break Err(trigger),
                next = starting.join_next() => next,
            };
            let Some(next) = next else { break Ok(()) };
            match self.record_start(next, &ids) {
                Ok(Some((i, serve))) => serves[i] = Some(serve),
                Ok(None) => {}
                Err(trigger) => break Err(trigger),
            }
        };

        if let Err(trigger) = &outcome {
            self.triggered_at.get_or_insert_with(Instant::now);
            if *trigger == Trigger::Forced {
                self.forced = true;
            }
            drop(serves);
            self.cut_short(trigger, triggers, starting, &ids).await;
            self.inherited.close_unclaimed();
            return outcome;
        }
        self.inherited.close_unclaimed();

        // Ready before the serve steps run, so that a request the kernel queued meanwhile (the
        // one that started a socket-activated process) finds `/readyz` ready.
        let took = self.began.elapsed();
        self.ready_after = Some(took);
        self.metrics.ready_after(took);
        // Before anyone hears of readiness (READY=1 to an upgrading parent, a waiter on the
        // handle): they may read the file then.
        if let Some(pid_file) = &self.pid_file {
            pid_file.write();
        }
        // Upgrades are for a process that serves: earlier requests are forgotten.
        if let Some(upgrader) = &mut self.upgrader {
            upgrader.forget_earlier();
        }
        self.control.set(State::Ready);
        self.notify.ready(&self.ready_status(took));
        for (i, serve) in serves.into_iter().enumerate() {
            if let Some(serve) = serve {
                let handle = self.running.spawn(serve);
                self.ids.insert(handle.id(), i);
                self.units[i].live = true;
                self.units[i].running = Some(handle);
            }
        }
        let first_task = self.units.len() - self.tasks.len();
        for (j, task) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            let handle = self.running.spawn(task(self.first.draining.child_token()));
            self.ids.insert(handle.id(), first_task + j);
            self.units[first_task + j].live = true;
            self.units[first_task + j].running = Some(handle);
        }
        tracing::info!(
            target: "lameduck",
            services = first_task, tasks = self.units.len() - first_task,
            took_ms = ms(took), "ready"
        );
        Ok(())
    }

    /// What `STATUS=` says once ready: every service's addresses, and where each came from.
    fn ready_status(&self, took: Duration) -> String {
        let mut status = format!("ready in {:.0} ms", ms(took));
        let mut first = true;
        for unit in &self.units {
            let addresses = unit.addresses.get();
            if addresses.is_empty() {
                continue;
            }
            let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            status.push_str(if first { ": " } else { "; " });
            first = false;
            status.push_str(&format!("{} on {}", unit.name, shown.join(", ")));
        }
        status
    }

    /// A start that failed or was interrupted. Nothing ever served, so nothing is drained: the
    /// remaining start steps are aborted, and so is whatever any start step began on its
    /// `Drain`. Each abort is waited for (bounded), so that the listeners they own are closed
    /// before the run goes on; a further signal forces.
    async fn cut_short(
        &mut self,
        trigger: &Trigger,
        triggers: &mut Triggers,
        mut starting: JoinSet<StartResult>,
        ids: &HashMap<Id, usize>,
    ) {
        tracing::info!(target: "lameduck", %trigger, "start cut short: releasing every listener");
        starting.abort_all();
        if !self.forced {
            // Steps that had already ended still count: a failure among them is recorded.
            let ended = async {
                while let Some(next) = starting.join_next().await {
                    let _ = self.record_start(next, ids);
                }
            };
            self.forced = within_grace(triggers, "aborted start steps", ended).await;
        }
        let mut drains = Vec::new();
        for unit in self.units.iter_mut().filter(|u| u.drain.is_some()) {
            unit.outcome.get_or_insert(Outcome::Cancelled);
            unit.snapshot_end(true);
            drains.extend(unit.drain.clone());
        }
        self.first.cut();
        self.last.cut();
        if !self.forced {
            let idle = async {
                for drain in &drains {
                    drain.idle().await;
                }
            };
            self.forced = within_grace(triggers, "work spawned by start steps", idle).await;
        }
    }

    /// Records a start step's end: its serve step if it succeeded, the trigger if it failed.
    fn record_start(
        &mut self,
        next: Result<StartResult, JoinError>,
        ids: &HashMap<Id, usize>,
    ) -> Result<Option<(usize, ServeFuture)>, Trigger> {
        match next {
            Ok((i, Ok(serve), took)) => {
                let unit = &mut self.units[i];
                unit.started_in = Some(took);
                let addresses: Vec<String> = unit
                    .addresses
                    .get()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                tracing::info!(
                    target: "lameduck", service = %unit.name,
                    addresses = ?addresses, took_ms = ms(took), "service started"
                );
                Ok(Some((i, serve)))
            }
            Ok((i, Err(source), took)) => {
                let unit = &mut self.units[i];
                unit.started_in = Some(took);
                let err = StartError::Failed {
                    service: unit.name.to_string(),
                    source,
                };
                Err(self.start_failed(i, err))
            }
            Err(join) if join.is_panic() => match ids.get(&join.id()) {
                Some(&i) => {
                    let err = StartError::Panicked {
                        service: self.units[i].name.to_string(),
                        message: join_message(join),
                    };
                    Err(self.start_failed(i, err))
                }
                None => Ok(None),
            },
            // Aborted by us: the outcome is set by the caller.
            Err(_) => Ok(None),
        }
    }

    fn start_failed(&mut self, i: usize, err: StartError) -> Trigger {
        let error = chain(&err);
        self.start_errno.get_or_insert(errno_of(&err));
        tracing::error!(target: "lameduck", service = %self.units[i].name, error = %error, "start failed");
        self.control.set_start_error(error.clone());
        self.units[i].outcome = Some(Outcome::StartFailed {
            error: error.clone(),
        });
        Trigger::StartFailed {
            service: self.units[i].name.to_string(),
            error,
        }
    }

    /// Ready: waits for a trigger, or a service or task ending on its own.
    async fn serve(&mut self, triggers: &mut Triggers) -> Trigger {
        let mut attempt = None;
        let trigger = self.serve_until(triggers, &mut attempt).await;
        if let Some(mut attempt) = attempt {
            tracing::warn!(
                target: "lameduck", pid = attempt.pid(),
                "upgrade abandoned: this process shuts down first; stopping the new one"
            );
            if attempt.said_ready() {
                // Its READY=1 raced this shutdown: it serves, and gets a whole shutdown of its
                // own (it has not handed over, so a lame-duck delay too).
                let within = self.config.lame_duck_delay
                    + drain_bound(self.config.drain_deadline)
                    + self.hooks.bound()
                    + self.last_bound();
                self.stop_in_background(attempt, within);
            } else {
                // It never served: killed at once, so that its copies of the listeners close
                // now and the drain below closes the ports as it always does.
                attempt.kill_now();
                self.stop_in_background(attempt, ABORT_GRACE);
            }
        }
        trigger
    }

    /// An upgrade was asked for: starts its new process, unless one is under way already.
    fn begin_upgrade(&mut self, attempt: &mut Option<Attempt>) {
        if let Some(under_way) = attempt {
            let pid = under_way.pid();
            tracing::warn!(target: "lameduck", pid, "upgrade already under way: ignored");
            return;
        }
        let Some(upgrader) = &self.upgrader else {
            return;
        };
        match upgrader.begin(&self.handover, self.config.inherit_listeners) {
            Ok(started) => {
                self.metrics.upgrade(Upgrade::Started);
                self.control.upgrade_started(started.pid());
                *attempt = Some(started);
            }
            Err(error) => {
                self.metrics.upgrade(Upgrade::Failed);
                tracing::error!(target: "lameduck", "upgrade failed, serving on: {error}")
            }
        }
    }

    /// Stops an upgrade's new process without holding up the run; the run's end waits for it.
    fn stop_in_background(&mut self, attempt: Attempt, within: Duration) {
        let pid_file = self.pid_file.clone();
        self.stopping.spawn(async move {
            let pid = attempt.pid();
            attempt.stop(within).await;
            if let Some(pid_file) = pid_file {
                pid_file.reclaim(pid);
            }
        });
    }

    /// Serves until a trigger; an upgrade under way is in `attempt`.
    async fn serve_until(
        &mut self,
        triggers: &mut Triggers,
        attempt: &mut Option<Attempt>,
    ) -> Trigger {
        loop {
            let next = tokio::select! {
                biased;
                trigger = triggers.first() => {
                    self.triggered_at = Some(Instant::now());
                    return trigger;
                }
                ready = attempt_ready(attempt) => {
                    let done = attempt.take();
                    match ready {
                        Ok(new_pid) => {
                            self.metrics.upgrade(Upgrade::HandedOver);
                            self.triggered_at = Some(Instant::now());
                            self.handed_over.cancel();
                            self.notify.handed_over(new_pid);
                            tracing::info!(target: "lameduck", new_pid, "upgrade: the new process is ready");
                            return Trigger::Upgraded { new_pid };
                        }
                        Err(error) => {
                            self.metrics.upgrade(Upgrade::Failed);
                            tracing::error!(target: "lameduck", "upgrade failed, serving on: {error}");
                            if let Some(done) = done {
                                self.stop_in_background(done, ABORT_GRACE);
                            }
                        }
                    }
                    continue;
                }
                () = upgrade_requested(&mut self.upgrader) => {
                    self.begin_upgrade(attempt);
                    continue;
                }
                next = self.running.join_next_with_id() => next,
            };
            let Some(next) = next else {
                tracing::info!(target: "lameduck", "every task finished and there are no services");
                self.triggered_at = Some(Instant::now());
                return Trigger::Completed;
            };
            if let Some(trigger) = self.ended(next) {
                self.triggered_at = Some(Instant::now());
                return trigger;
            }
        }
    }

    /// Records a serve step or task ending; returns a trigger if it ended early and badly.
    fn ended(&mut self, next: Result<(Id, Result<(), BoxError>), JoinError>) -> Option<Trigger> {
        let (id, result) = match next {
            Ok((id, res)) => (id, Ok(res)),
            Err(join) => (join.id(), Err(join)),
        };
        let i = *self.ids.get(&id)?;
        // Aborted and written off already (at a deadline): nothing more to record.
        if !self.units[i].live {
            return None;
        }
        let draining = self.first.draining.is_cancelled();
        // During the lame-duck delay a shutdown is under way, though the drain has not begun.
        let shutting_down = self.triggered_at.is_some();
        let unit = &mut self.units[i];
        let is_service = unit.drain.is_some();
        let failure = match Failure::from_join(result) {
            Ok(()) if is_service && !shutting_down => Some(Failure::Error(
                "stopped serving before any shutdown was requested".into(),
            )),
            Ok(()) if !is_service && !draining => {
                unit.set_outcome(Outcome::Finished);
                None
            }
            Ok(()) => {
                unit.set_outcome(Outcome::Stopped);
                None
            }
            Err(Some(failure)) => Some(failure),
            Err(None) => {
                unit.set_outcome(Outcome::Aborted);
                None
            }
        };
        if let Some(failure) = &failure {
            let kind = if is_service { "service" } else { "task" };
            tracing::error!(target: "lameduck", unit = %unit.name, kind, "{failure}");
            unit.set_outcome(match failure {
                Failure::Error(error) => Outcome::Failed {
                    error: error.clone(),
                },
                Failure::Panic(message) => Outcome::Panicked {
                    message: message.clone(),
                },
            });
        }
        match &unit.drain {
            // Its serve step is over; its in-flight work may not be.
            Some(drain) => {
                let drain = drain.clone();
                let idle = self.idle.spawn(async move {
                    drain.idle().await;
                    i
                });
                self.units[i].idle = Some(idle);
            }
            None => self.done(i),
        }
        let error = failure.filter(|_| !shutting_down)?.to_string();
        let name = self.units[i].name.to_string();
        Some(if is_service {
            Trigger::ServiceFailed {
                service: name,
                error,
            }
        } else {
            Trigger::TaskFailed { task: name, error }
        })
    }

    /// Waits for the next serve step, task, or service's in-flight work to end, and records it.
    /// `false` when nothing is left to wait for. Cancel-safe: an end is recorded as soon as it
    /// is taken from its `JoinSet`, with no await in between.
    async fn next_end(&mut self) -> bool {
        tokio::select! {
            biased;
            Some(next) = self.running.join_next_with_id() => {
                self.ended(next);
                true
            }
            Some(idle) = self.idle.join_next() => {
                if let Ok(i) = idle {
                    self.done(i);
                }
                true
            }
            else => false,
        }
    }

    /// Whether a unit of the stage (`last`: the services drained last) still runs.
    fn live_in(&self, last: bool) -> bool {
        self.units.iter().any(|u| u.live && u.last == last)
    }

    /// Records ends until nothing of the stage runs any more (`true`) or `limit` has passed
    /// (`false`). The other stage's ends are recorded too, as they come.
    async fn ends_within(&mut self, limit: Duration, last: bool) -> bool {
        let timer = tokio::time::sleep(limit);
        tokio::pin!(timer);
        loop {
            if !self.live_in(last) {
                return true;
            }
            tokio::select! {
                biased;
                more = self.next_end() => if !more { return true },
                () = &mut timer => return false,
            }
        }
    }

    /// A unit has nothing running any more.
    fn done(&mut self, i: usize) {
        let unit = &mut self.units[i];
        if !unit.live {
            // Written off at a deadline already.
            return;
        }
        unit.live = false;
        let drain_began = if unit.last {
            self.last_drain_began
        } else {
            self.drain_began
        };
        if let Some(began) = drain_began {
            unit.drained_in = Some(began.elapsed());
            tracing::info!(
                target: "lameduck", unit = %unit.name,
                since_drain_ms = ms(began.elapsed()),
                outcome = ?unit.outcome.as_ref().unwrap_or(&Outcome::NotStarted), "stopped"
            );
        }
        if let Some(drain) = &unit.drain {
            unit.at_end.get_or_insert(drain.counts());
        }
    }

    /// Lame duck, drain, hooks, and the services drained last, each a span. Dropped as a whole when the
    /// shutdown is forced.
    async fn shut_down(&mut self) {
        let began = self.triggered_at.unwrap_or_else(Instant::now);
        // A failed start never served: there is nothing to be a lame duck about, or to drain.
        if self.ready_after.is_none() {
            let hooks = info_span!(target: "lameduck", "hooks");
            self.hooks.run(began, &self.notify).instrument(hooks).await;
            return;
        }
        // After an upgrade the port serves on, from the new process: no balancer needs to
        // notice anything, so there is no lame duck to be.
        let handed_over = self.handed_over.is_cancelled();
        if serving(&self.units) && !handed_over && !self.config.lame_duck_delay.is_zero() {
            self.lame_duck()
                .instrument(info_span!(target: "lameduck", "lame_duck"))
                .await;
        }
        self.drain(began)
            .instrument(info_span!(target: "lameduck", "drain"))
            .await;
        self.hooks
            .run(began, &self.notify)
            .instrument(info_span!(target: "lameduck", "hooks"))
            .await;
        self.drain_last()
            .instrument(info_span!(target: "lameduck", "drain_last"))
            .await;
    }

    /// The lame-duck delay: not ready, still serving, while load balancers notice.
    async fn lame_duck(&mut self) {
        {
            tracing::info!(
                target: "lameduck",
                delay_ms = ms(self.config.lame_duck_delay),
                "lame duck: still serving while load balancers notice"
            );
            // Services still serve, and may still end: record that as it happens (it is not a
            // drain), and stop waiting once none serves any more.
            self.metrics.lame_duck(true);
            let delay = tokio::time::sleep(self.config.lame_duck_delay);
            tokio::pin!(delay);
            while serving(&self.units) {
                tokio::select! {
                    biased;
                    () = &mut delay => break,
                    more = self.next_end() => if !more { break },
                }
            }
            self.metrics.lame_duck(false);
        }
    }

    /// Tells every service and task to stop (but those drained last), and waits until they
    /// have, or the deadline.
    async fn drain(&mut self, began: Instant) {
        let drain_began = Instant::now();
        self.drain_began = Some(drain_began);
        self.snapshot_at_drain(false);
        self.first.draining.cancel();
        let live = self.units.iter().filter(|u| u.live && !u.last).count();
        self.notify.step(
            &format!("draining: listeners closed, {live} services and tasks finishing"),
            drain_bound(self.config.drain_deadline),
        );
        tracing::info!(
            target: "lameduck", live,
            deadline_ms = ms(self.config.drain_deadline),
            since_trigger_ms = ms(began.elapsed()),
            "draining: listeners closing, in-flight work finishing"
        );
        let drained = self.ends_within(self.config.drain_deadline, false).await;
        if !drained {
            self.deadline_exceeded = true;
            self.metrics.deadline_exceeded();
            self.abort_remaining(false).await;
        }
        let took = drain_began.elapsed();
        self.drain_took = Some(took);
        self.metrics.drained(took);
        tracing::info!(
            target: "lameduck", took_ms = ms(took), deadline_exceeded = !drained,
            "drain finished"
        );
    }

    /// The drain of the services drained last (admin endpoints), once the hooks are over:
    /// their listeners close now, and what they still serve gets the last drain's deadline.
    /// Cutting it short there is no failure of the shutdown: they serve its observers only.
    async fn drain_last(&mut self) {
        if !self.live_in(true) {
            return;
        }
        let delay = self.config.last_drain_delay;
        let deadline = self.config.last_drain_deadline;
        self.notify.step(
            "closing the services drained last",
            delay + drain_bound(deadline),
        );
        if !delay.is_zero() {
            tracing::info!(
                target: "lameduck", delay_ms = ms(delay),
                "the services drained last serve on a moment (a last scrape)"
            );
            // They may still end meanwhile: that is recorded as it happens.
            if self.ends_within(delay, true).await {
                return;
            }
        }
        let began = Instant::now();
        self.last_drain_began = Some(began);
        self.snapshot_at_drain(true);
        self.last.draining.cancel();
        tracing::info!(
            target: "lameduck", deadline_ms = ms(deadline),
            "draining the services drained last"
        );
        if !self.ends_within(deadline, true).await {
            self.abort_remaining(true).await;
        }
    }

    /// The longest the services drained last can take after the hooks (zero without any).
    fn last_bound(&self) -> Duration {
        if self.units.iter().any(|u| u.last) {
            self.config.last_drain_delay + drain_bound(self.config.last_drain_deadline)
        } else {
            Duration::ZERO
        }
    }

    /// The counters of the stage's live services, as the drain begins.
    fn snapshot_at_drain(&mut self, last: bool) {
        for unit in self.units.iter_mut().filter(|u| u.live && u.last == last) {
            if let Some(drain) = &unit.drain {
                unit.at_drain = Some(drain.counts());
            }
        }
    }

    /// A stage's deadline: abort what is left of it, and name it.
    async fn abort_remaining(&mut self, last: bool) {
        for unit in self.units.iter_mut().filter(|u| u.live && u.last == last) {
            tracing::warn!(
                target: "lameduck", unit = %unit.name,
                in_flight = unit.drain.as_ref().map(Drain::in_flight),
                "drain deadline reached: aborting"
            );
            unit.snapshot_end(true);
            unit.set_outcome(Outcome::Aborted);
        }
        let stage = if last { &self.last } else { &self.first }.clone();
        // Tell the work first: a response can still end with a status of its own.
        stage.pass_deadline();
        self.ends_within(ABORT_NOTICE, last).await;
        stage.hard_stop.cancel();
        for unit in self.units.iter().filter(|u| u.live && u.last == last) {
            if let Some(running) = &unit.running {
                running.abort();
            }
        }
        // Aborts land at each task's next poll. Wait for them, so that listeners and connections
        // are closed before the hooks run, but not forever: work held by a guard outside
        // `Drain::spawn`, or a task stuck in blocking code, cannot be aborted from here.
        if !self.ends_within(ABORT_GRACE, last).await {
            tracing::error!(target: "lameduck", "aborted work did not stop within {ABORT_GRACE:?}");
        }
        let now = Instant::now();
        let began = if last {
            self.last_drain_began
        } else {
            self.drain_began
        };
        for unit in self.units.iter_mut().filter(|u| u.live && u.last == last) {
            if let Some(idle) = &unit.idle {
                idle.abort();
            }
            unit.live = false;
            if let Some(began) = began {
                unit.drained_in = Some(now - began);
            }
        }
    }

    /// The report. With a forced exit, whatever still runs is abandoned (aborted, not waited for).
    fn finish(&mut self, trigger: Trigger) -> Report {
        let forced = self.forced;
        if forced {
            for unit in self.units.iter_mut().filter(|u| u.live) {
                unit.snapshot_end(true);
            }
            self.first.cut();
            self.last.cut();
            self.running.abort_all();
            self.idle.abort_all();
        }
        let (services, tasks): (Vec<_>, Vec<_>) = std::mem::take(&mut self.units)
            .into_iter()
            .partition(|u| u.drain.is_some());
        let mut report = Report {
            trigger,
            ready_after: self.ready_after,
            services: services.into_iter().map(|u| u.report(forced)).collect(),
            tasks: tasks.into_iter().map(|u| u.report(forced)).collect(),
            hooks: self.hooks.take_reports(),
            drain: self.drain_took,
            deadline_exceeded: self.deadline_exceeded,
            forced,
            shutdown: self.triggered_at.map_or(Duration::ZERO, |t| t.elapsed()),
            total: self.began.elapsed(),
            exit_code: ExitCode::Clean,
        };
        report.exit_code = report.exit_code_of();
        self.control.set(State::Stopped);
        tracing::info!(
            target: "lameduck", exit_code = report.exit_code.code(),
            shutdown_ms = ms(report.shutdown), total_ms = ms(report.total), forced,
            "stopped"
        );
        report
    }
}

impl Drop for Run {
    /// A run dropped before its end (its future dropped by a `select!` or a timeout) must not
    /// leave work running or the handle saying it is ready. The JoinSets abort their tasks.
    fn drop(&mut self) {
        self.first.cut();
        self.last.cut();
        self.control.set(State::Stopped);
    }
}

/// Whether a service still serves (one drained last aside).
fn serving(units: &[Unit]) -> bool {
    units.iter().any(|u| u.live && u.drain.is_some() && !u.last)
}

/// Waits for aborted work at most [`ABORT_GRACE`]; returns whether a force came first.
async fn within_grace(triggers: &mut Triggers, what: &str, work: impl Future<Output = ()>) -> bool {
    tokio::select! {
        biased;
        () = triggers.forced() => true,
        res = tokio::time::timeout(ABORT_GRACE, work) => {
            if res.is_err() {
                tracing::error!(target: "lameduck", "{what} did not stop within {ABORT_GRACE:?}");
            }
            false
        }
    }
}

/// The upgrade under way becoming ready or failing; never, with none.
async fn attempt_ready(attempt: &mut Option<Attempt>) -> Result<u32, crate::UpgradeError> {
    match attempt {
        Some(attempt) => attempt.ready().await,
        None => std::future::pending().await,
    }
}

/// The next request for an upgrade; never, without an upgrader.
async fn upgrade_requested(upgrader: &mut Option<Upgrader>) {
    match upgrader {
        Some(upgrader) => upgrader.requested().await,
        None => std::future::pending().await,
    }
}

async fn next_signal(signals: &mut Option<Signals>) -> Signal {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn join_message(join: JoinError) -> String {
    if join.is_panic() {
        panic_message(join.into_panic().as_ref())
    } else {
        "cancelled".into()
    }
}
