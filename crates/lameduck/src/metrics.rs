//! Live metrics of the lifecycle and its servers, recorded through the [`metrics`] facade
//! (feature `metrics`): the application installs the exporter it wants (Prometheus,
//! OpenTelemetry, StatsD) before [`Lifecycle::run`](crate::Lifecycle::run). The lifecycle's
//! series are there from the run's start, a server's from its start (at 0), a hook's once it
//! has ended, the reloads' at the first. Without the feature, every recording here is an
//! empty function and the facade is not a dependency.
//!
//! Handles are resolved once (per service, when the run begins), so that a request costs an
//! atomic update of each of its series (the in-flight gauge up and down, its outcome's
//! counter) and no registry lookup, no lock, no allocation. Label values come from the
//! application's names (services, hooks) and fixed lists, never from a peer or a request.
//!
//! | Series | Kind | What |
//! |---|---|---|
//! | `lameduck_ready` | gauge | 1 while ready ([`LifecycleHandle::is_ready`](crate::LifecycleHandle::is_ready)), else 0 |
//! | `lameduck_state{state}` | gauge | 1 for the current state (`starting`, `ready`, `draining`, `stopped`), 0 for the others |
//! | `lameduck_lame_duck` | gauge | 1 during the lame-duck delay |
//! | `lameduck_impairments` | gauge | impairments held now |
//! | `lameduck_in_flight{service}` | gauge | requests, streams and upgraded connections in flight (what the drain waits for) |
//! | `lameduck_connections{service}` | gauge | open connections (units of work of a service of one's own) |
//! | `lameduck_requests_total{service,outcome}` | counter | ended requests: `completed`, `failed`, `cancelled`, `aborted`, `panicked` |
//! | `lameduck_connections_closed_total{service,reason}` | counter | closed connections, by why (see below) |
//! | `lameduck_serving_events_total{service,event}` | counter | what the limits did (the report's `serving` counts) |
//! | `lameduck_tls_handshakes_total{service,outcome}` | counter | TLS handshakes: `ok`, `failed`, `timeout`, `drained` (cut by the drain) |
//! | `lameduck_tls_reloads_total{outcome}` | counter | certificate files reloaded: `ok`, `failed` (the old pair kept) |
//! | `lameduck_time_to_ready_seconds` | gauge | from the run's start to the readiness barrier |
//! | `lameduck_shutdown_start_time_seconds` | gauge | Unix time of the shutdown's trigger (0 before) |
//! | `lameduck_drain_duration_seconds` | gauge | how long the drain took, once over |
//! | `lameduck_deadline_exceeded` | gauge | 1 once the drain deadline cut work off |
//! | `lameduck_hook_duration_seconds{phase,hook,outcome}` | gauge | each hook's run, once ended (`completed`, `failed`, `timed_out`, `panicked`) |
//! | `lameduck_upgrades_total{outcome}` | counter | upgrades in place: `started`, `handed_over`, `failed` |
//!
//! Reasons a connection closed: `client` (the client closed it, or it broke), `idle_at_drain`
//! (nothing in flight when the listeners closed), `after_response` (HTTP/1: its last response
//! had `Connection: close`, at the drain), `goaway` (HTTP/2: GOAWAY at the drain, its streams
//! finished), `deadline` (cut at the drain deadline), `handshake_timeout`, `header_timeout`,
//! `idle_timeout`, `body_timeout` (HTTP/1: 408 and closed), `panic` (HTTP/1: a handler's panic
//! answered with `Connection: close`, or its body cut), `max_age` (its maximum connection age,
//! then its grace), `wrong_protocol`, `tls_failed`,
//! `protocol_error` (a head too large, an HTTP/2 flood or protocol error).

use std::time::Duration;

use crate::events::Event;
use crate::phase::Phase;
use crate::ready::LifecycleHandle;
use crate::report::HookOutcome;

/// How a request (or RPC, stream, `track_request` unit) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RequestEnd {
    /// Its response was sent to its end.
    Completed = 1,
    /// The app failed it (an error instead of a response, or from its body), or its body
    /// timed out.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Failed = 2,
    /// The client went away (or the connection broke) before its response ended.
    Cancelled = 3,
    /// Cut at the drain deadline.
    Aborted = 4,
    /// The handler or its body panicked.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Panicked = 5,
}

impl RequestEnd {
    #[cfg(feature = "metrics")]
    const ALL: [RequestEnd; 5] = [
        RequestEnd::Completed,
        RequestEnd::Failed,
        RequestEnd::Cancelled,
        RequestEnd::Aborted,
        RequestEnd::Panicked,
    ];

    /// The one stored as `n` (0: none).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => RequestEnd::Completed,
            2 => RequestEnd::Failed,
            3 => RequestEnd::Cancelled,
            4 => RequestEnd::Aborted,
            5 => RequestEnd::Panicked,
            _ => return None,
        })
    }

    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        match self {
            RequestEnd::Completed => "completed",
            RequestEnd::Failed => "failed",
            RequestEnd::Cancelled => "cancelled",
            RequestEnd::Aborted => "aborted",
            RequestEnd::Panicked => "panicked",
        }
    }
}

/// Why a connection of an HTTP or gRPC server closed (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum Closed {
    Client = 1,
    IdleAtDrain = 2,
    AfterResponse = 3,
    GoAway = 4,
    Deadline = 5,
    HandshakeTimeout = 6,
    HeaderTimeout = 7,
    IdleTimeout = 8,
    WrongProtocol = 9,
    TlsFailed = 10,
    ProtocolError = 11,
    BodyTimeout = 12,
    Panic = 13,
    MaxAge = 14,
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl Closed {
    #[cfg(feature = "metrics")]
    const ALL: [Closed; 14] = [
        Closed::Client,
        Closed::IdleAtDrain,
        Closed::AfterResponse,
        Closed::GoAway,
        Closed::Deadline,
        Closed::HandshakeTimeout,
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::WrongProtocol,
        Closed::TlsFailed,
        Closed::ProtocolError,
        Closed::BodyTimeout,
        Closed::Panic,
        Closed::MaxAge,
    ];

    /// The one stored as `n` (0: none).
    pub(crate) fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => Closed::Client,
            2 => Closed::IdleAtDrain,
            3 => Closed::AfterResponse,
            4 => Closed::GoAway,
            5 => Closed::Deadline,
            6 => Closed::HandshakeTimeout,
            7 => Closed::HeaderTimeout,
            8 => Closed::IdleTimeout,
            9 => Closed::WrongProtocol,
            10 => Closed::TlsFailed,
            11 => Closed::ProtocolError,
            12 => Closed::BodyTimeout,
            13 => Closed::Panic,
            14 => Closed::MaxAge,
            _ => return None,
        })
    }

    /// The reason a timeout's (or a client error's) event closes a connection for.
    pub(crate) fn of(event: Event) -> Self {
        match event {
            Event::HandshakeTimeout => Closed::HandshakeTimeout,
            Event::HeaderTimeout => Closed::HeaderTimeout,
            Event::IdleTimeout => Closed::IdleTimeout,
            Event::WrongProtocol => Closed::WrongProtocol,
            Event::TlsHandshakeFailed => Closed::TlsFailed,
            Event::BodyTimeout => Closed::BodyTimeout,
            Event::Panic => Closed::Panic,
            Event::MaxConnectionAge | Event::MaxConnectionAgeGrace => Closed::MaxAge,
            _ => Closed::ProtocolError,
        }
    }

    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::IdleAtDrain => "idle_at_drain",
            Closed::AfterResponse => "after_response",
            Closed::GoAway => "goaway",
            Closed::Deadline => "deadline",
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::WrongProtocol => "wrong_protocol",
            Closed::TlsFailed => "tls_failed",
            Closed::ProtocolError => "protocol_error",
            Closed::BodyTimeout => "body_timeout",
            Closed::Panic => "panic",
            Closed::MaxAge => "max_age",
        }
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) enum Handshake {
    Ok = 0,
    Failed = 1,
    Timeout = 2,
    /// Still going when the drain closed it.
    Drained = 3,
}

/// One service's series, resolved once.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    #[cfg(feature = "metrics")]
    on: on::Service,
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl ServiceMetrics {
    pub(crate) fn new(service: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = service;
        ServiceMetrics {
            #[cfg(feature = "metrics")]
            on: on::Service::new(service),
        }
    }

    /// A server of lameduck's starts: its series are there from now on (at 0).
    pub(crate) fn server_started(&self) {
        #[cfg(feature = "metrics")]
        self.on.server();
    }

    /// A request (or a unit of `track_request`, or an upgraded connection) began.
    #[inline]
    pub(crate) fn request_started(&self) {
        #[cfg(feature = "metrics")]
        self.on.in_flight.increment(1.0);
    }

    /// A request ended so.
    #[inline]
    pub(crate) fn request_finished(&self, end: RequestEnd) {
        #[cfg(feature = "metrics")]
        {
            self.on.in_flight.decrement(1.0);
            self.on.server().requests[end as usize - 1].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = end;
    }

    /// An upgraded connection (a WebSocket, a CONNECT tunnel) left hyper: in flight until
    /// it closes.
    #[inline]
    pub(crate) fn upgraded(&self, open: bool) {
        #[cfg(feature = "metrics")]
        if open {
            self.on.in_flight.increment(1.0);
        } else {
            self.on.in_flight.decrement(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = open;
    }

    /// A unit of work (a connection) began (`true`) or ended.
    #[inline]
    pub(crate) fn unit(&self, open: bool) {
        #[cfg(feature = "metrics")]
        if open {
            self.on.connections.increment(1.0);
        } else {
            self.on.connections.decrement(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = open;
    }

    /// A connection closed, for this reason.
    #[inline]
    pub(crate) fn closed(&self, reason: Closed) {
        #[cfg(feature = "metrics")]
        self.on.server().closed[reason as usize - 1].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    /// One event of normal serving.
    #[inline]
    pub(crate) fn event(&self, event: Event) {
        #[cfg(feature = "metrics")]
        self.on.server().events[event as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = event;
    }

    /// A TLS handshake ended so.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[inline]
    pub(crate) fn handshake(&self, end: Handshake) {
        #[cfg(feature = "metrics")]
        self.on.server().handshakes[end as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = end;
    }
}

/// A certificate reload ended so (`ok`: the new pair is served).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn tls_reloaded(ok: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!("lameduck_tls_reloads_total", "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = ok;
}

/// What an upgrade in place did.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum Upgrade {
    Started,
    HandedOver,
    Failed,
}

/// The lifecycle's own series, resolved once.
#[derive(Debug)]
pub(crate) struct LifecycleMetrics {
    #[cfg(feature = "metrics")]
    on: on::Lifecycle,
}

impl LifecycleMetrics {
    /// Describes every series, and sets the lifecycle's to where a run begins.
    pub(crate) fn new() -> Self {
        LifecycleMetrics {
            #[cfg(feature = "metrics")]
            on: on::Lifecycle::new(),
        }
    }

    /// Follows the handle's state and impairments into `lameduck_ready`, `lameduck_state` and
    /// `lameduck_impairments`, on a task of its own that wakes at each change (and ends when
    /// the run is over).
    pub(crate) fn follow(&self, handle: &LifecycleHandle) {
        #[cfg(feature = "metrics")]
        self.on.follow(handle.clone());
        #[cfg(not(feature = "metrics"))]
        let _ = handle;
    }

    pub(crate) fn ready_after(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.on.time_to_ready.set(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// The shutdown was triggered `ago` (`None`: now).
    pub(crate) fn shutdown_started(&self, ago: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let at = now.saturating_sub(ago.unwrap_or_default());
            self.on.shutdown_start.set(at.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = ago;
    }

    pub(crate) fn lame_duck(&self, on: bool) {
        #[cfg(feature = "metrics")]
        self.on.lame_duck.set(if on { 1.0 } else { 0.0 });
        #[cfg(not(feature = "metrics"))]
        let _ = on;
    }

    /// The drain is over, after `took` (the deadline's cut is said by `deadline_exceeded`).
    pub(crate) fn drained(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.on.drain_duration.set(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    pub(crate) fn deadline_exceeded(&self) {
        #[cfg(feature = "metrics")]
        self.on.deadline_exceeded.set(1.0);
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn upgrade(&self, what: Upgrade) {
        #[cfg(feature = "metrics")]
        self.on.upgrades[what as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = what;
    }
}

/// A hook ended so, after `took`.
pub(crate) fn hook_ended(phase: Phase, name: &str, outcome: &HookOutcome, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            HookOutcome::Completed => "completed",
            HookOutcome::Failed { .. } => "failed",
            HookOutcome::TimedOut { .. } => "timed_out",
            HookOutcome::Panicked { .. } => "panicked",
            HookOutcome::Abandoned => "abandoned",
        };
        metrics::gauge!(
            "lameduck_hook_duration_seconds",
            "phase" => phase.to_string(),
            "hook" => name.to_owned(),
            "outcome" => outcome,
        )
        .set(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (phase, name, outcome, took);
}

#[cfg(feature = "metrics")]
mod on {
    use std::sync::OnceLock;

    use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

    use super::{Closed, RequestEnd};
    use crate::events::Event;
    use crate::ready::{LifecycleHandle, State};

    /// What every service has.
    #[derive(Debug)]
    pub(super) struct Service {
        name: String,
        pub(super) in_flight: Gauge,
        pub(super) connections: Gauge,
        /// The series of a server's requests and connections: resolved when a server starts
        /// (or at the first use), so that a service of another kind has none of them.
        server: OnceLock<Server>,
    }

    impl Service {
        pub(super) fn new(service: &str) -> Self {
            let label = [("service", service.to_owned())];
            Service {
                name: service.to_owned(),
                in_flight: gauge!("lameduck_in_flight", &label),
                connections: gauge!("lameduck_connections", &label),
                server: OnceLock::new(),
            }
        }

        pub(super) fn server(&self) -> &Server {
            self.server.get_or_init(|| Server::new(&self.name))
        }
    }

    #[derive(Debug)]
    pub(super) struct Server {
        pub(super) requests: [Counter; 5],
        pub(super) closed: [Counter; 14],
        pub(super) events: [Counter; Event::ALL.len()],
        pub(super) handshakes: [Counter; 4],
    }

    impl Server {
        fn new(service: &str) -> Self {
            let name = service.to_owned();
            let label = || ("service", name.clone());
            Server {
                requests: RequestEnd::ALL.map(|end| {
                    counter!(
                        "lameduck_requests_total",
                        &[label(), ("outcome", end.label().into())]
                    )
                }),
                closed: Closed::ALL.map(|reason| {
                    counter!(
                        "lameduck_connections_closed_total",
                        &[label(), ("reason", reason.label().into())]
                    )
                }),
                events: Event::ALL.map(|event| {
                    counter!(
                        "lameduck_serving_events_total",
                        &[label(), ("event", event.label().into())]
                    )
                }),
                handshakes: ["ok", "failed", "timeout", "drained"].map(|outcome| {
                    counter!(
                        "lameduck_tls_handshakes_total",
                        &[label(), ("outcome", outcome.into())]
                    )
                }),
            }
        }
    }

    const STATES: [(State, &str); 4] = [
        (State::Starting, "starting"),
        (State::Ready, "ready"),
        (State::Draining, "draining"),
        (State::Stopped, "stopped"),
    ];

    #[derive(Debug, Clone)]
    pub(super) struct Lifecycle {
        ready: Gauge,
        states: [Gauge; 4],
        impairments: Gauge,
        pub(super) lame_duck: Gauge,
        pub(super) time_to_ready: Gauge,
        pub(super) shutdown_start: Gauge,
        pub(super) drain_duration: Gauge,
        pub(super) deadline_exceeded: Gauge,
        pub(super) upgrades: [Counter; 3],
    }

    impl Lifecycle {
        pub(super) fn new() -> Self {
            describe();
            let lifecycle = Lifecycle {
                ready: gauge!("lameduck_ready"),
                states: STATES.map(|(_, state)| gauge!("lameduck_state", "state" => state)),
                impairments: gauge!("lameduck_impairments"),
                lame_duck: gauge!("lameduck_lame_duck"),
                time_to_ready: gauge!("lameduck_time_to_ready_seconds"),
                shutdown_start: gauge!("lameduck_shutdown_start_time_seconds"),
                drain_duration: gauge!("lameduck_drain_duration_seconds"),
                deadline_exceeded: gauge!("lameduck_deadline_exceeded"),
                upgrades: ["started", "handed_over", "failed"]
                    .map(|outcome| counter!("lameduck_upgrades_total", "outcome" => outcome)),
            };
            lifecycle.show(State::Starting, false, 0);
            lifecycle.lame_duck.set(0.0);
            lifecycle.shutdown_start.set(0.0);
            lifecycle.deadline_exceeded.set(0.0);
            lifecycle
        }

        fn show(&self, now: State, ready: bool, impairments: usize) {
            for ((state, _), gauge) in STATES.iter().zip(&self.states) {
                gauge.set(if *state == now { 1.0 } else { 0.0 });
            }
            self.ready.set(if ready { 1.0 } else { 0.0 });
            self.impairments.set(impairments as f64);
        }

        pub(super) fn follow(&self, handle: LifecycleHandle) {
            let this = self.clone();
            let mut state = handle.subscribe();
            let mut impaired = handle.subscribe_impaired();
            tokio::spawn(async move {
                loop {
                    let now = *state.borrow_and_update();
                    let count = *impaired.borrow_and_update();
                    this.show(now, handle.is_ready(), count);
                    if now == State::Stopped {
                        return;
                    }
                    tokio::select! {
                        changed = state.changed() => if changed.is_err() { return },
                        changed = impaired.changed() => if changed.is_err() { return },
                    }
                }
            });
        }
    }

    /// The help text of every series (what a Prometheus exporter prints as `# HELP`).
    fn describe() {
        describe_gauge!(
            "lameduck_ready",
            "1 while the process is ready for traffic, else 0."
        );
        describe_gauge!(
            "lameduck_state",
            "1 for the lifecycle's current state (starting, ready, draining, stopped), 0 for the others."
        );
        describe_gauge!(
            "lameduck_lame_duck",
            "1 during the lame-duck delay, else 0."
        );
        describe_gauge!(
            "lameduck_impairments",
            "Impairments holding readiness down now."
        );
        describe_gauge!(
            "lameduck_in_flight",
            "Requests, streams and upgraded connections in flight: what the drain waits for."
        );
        describe_gauge!("lameduck_connections", "Open connections (units of work).");
        describe_counter!(
            "lameduck_requests_total",
            "Ended requests, by outcome (completed, failed, cancelled, aborted, panicked)."
        );
        describe_counter!(
            "lameduck_connections_closed_total",
            "Closed connections, by reason."
        );
        describe_counter!(
            "lameduck_serving_events_total",
            "What the server's limits closed or refused during normal serving, by event."
        );
        describe_counter!(
            "lameduck_tls_handshakes_total",
            "TLS handshakes, by outcome (ok, failed, timeout, drained)."
        );
        describe_counter!(
            "lameduck_tls_reloads_total",
            "Certificate files reloaded, by outcome (ok, failed: the old pair kept)."
        );
        describe_gauge!(
            "lameduck_time_to_ready_seconds",
            Unit::Seconds,
            "From the run's start to the readiness barrier."
        );
        describe_gauge!(
            "lameduck_shutdown_start_time_seconds",
            Unit::Seconds,
            "Unix time the shutdown was triggered at (0 before)."
        );
        describe_gauge!(
            "lameduck_drain_duration_seconds",
            Unit::Seconds,
            "How long the drain took, once over."
        );
        describe_gauge!(
            "lameduck_deadline_exceeded",
            "1 once the drain deadline cut work off, else 0."
        );
        describe_gauge!(
            "lameduck_hook_duration_seconds",
            Unit::Seconds,
            "How long each shutdown hook ran, by phase, hook and outcome."
        );
        describe_counter!(
            "lameduck_upgrades_total",
            "Upgrades in place, by outcome (started, handed_over, failed)."
        );
    }
}
