//! sd_notify: telling the service manager (systemd, `Type=notify`) what the run is doing.
//!
//! When `NOTIFY_SOCKET` is set (a path, or `@name` for the abstract namespace), the run sends:
//! `READY=1` with a `STATUS=` naming every address when the readiness barrier passes;
//! `STOPPING=1` at the first moment of the shutdown; `EXTEND_TIMEOUT_USEC=` with the bound of
//! each step of the shutdown as it begins (so `TimeoutStopSec=` need not cover the worst case);
//! `STATUS=` with the error and `ERRNO=` after a failed start; and, with `WATCHDOG_USEC=` set
//! (and `WATCHDOG_PID=` ours, or unset), `WATCHDOG=1` every half of it.
//!
//! A process started by a lameduck upgrade also says `READY=1` (or why its start failed) to the
//! old process, on the socket it was given (`LAMEDUCK_UPGRADE_NOTIFY`): the same code path as
//! under systemd. And once an upgrade has handed over, the old process tells systemd the new
//! main PID (`MAINPID=`) and says nothing more, so that its own shutdown is not taken for the
//! service's.
//!
//! The run only queues messages: one task on the runtime sends them, in order, on a
//! non-blocking socket, each bounded by a second, and pings the watchdog from a timer on
//! the same runtime, so a wedged runtime stops the pings and systemd restarts the service. A
//! missing or broken socket is a logged warning, never a failure. Linux only; elsewhere the
//! notifier does nothing.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the end of the run waits for the last messages to go out.
const FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// Added to each step's bound in `EXTEND_TIMEOUT_USEC=`: the step's bookkeeping, and the exit
/// after the last step.
const EXTEND_MARGIN: Duration = Duration::from_secs(2);

/// The run's side: queues messages for the sending task.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

/// A message, and who gets it.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
enum Message {
    /// The service manager.
    Manager(String),
    /// The service manager and the upgrading parent, if any.
    Everyone(String),
    /// The service manager, and after it nothing more to anyone (the watchdog stops too).
    Last(String),
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or one that does nothing when it is unset (or `enabled`
    /// is false, or the platform is not Linux).
    /// With `parent`, the socket of the lameduck process that started this one as its upgrade,
    /// which hears READY=1 (or the failed start) whether or not `enabled`.
    pub(crate) fn from_env(enabled: bool, parent: Option<&str>) -> Notifier {
        let manager = sys::socket_from_env().filter(|_| enabled);
        if manager.is_none() && parent.is_none() {
            return Notifier::default();
        }
        let watchdog = manager
            .as_ref()
            .and_then(|_| watchdog_from_env(std::process::id()));
        let (queue, messages) = mpsc::unbounded_channel();
        let parent = parent.map(str::to_owned);
        let task = tokio::spawn(sys::deliver(manager, parent, watchdog, messages));
        Notifier {
            inner: Some(Inner { queue, task }),
        }
    }

    fn send(&self, lines: &[(&str, &str)]) {
        self.queue(lines, Message::Manager);
    }

    fn queue(&self, lines: &[(&str, &str)], to: fn(String) -> Message) {
        let Some(inner) = &self.inner else { return };
        let mut message = String::new();
        for (key, value) in lines {
            message.push_str(key);
            message.push('=');
            // One line per assignment: a newline in a value would start another.
            message.extend(value.chars().map(|c| if c == '\n' { ' ' } else { c }));
            message.push('\n');
        }
        // The task ends only after the queue is closed, and the queue only by `flush`.
        let _ = inner.queue.send(to(message));
    }

    /// The readiness barrier passed.
    pub(crate) fn ready(&self, status: &str) {
        self.queue(&[("READY", "1"), ("STATUS", status)], Message::Everyone);
    }

    /// An upgrade handed over to the process `pid`: it is the service's main process from
    /// now on, and this one says nothing more.
    pub(crate) fn handed_over(&self, pid: u32) {
        let status = format!("upgraded: serving from PID {pid}");
        self.queue(
            &[("MAINPID", &pid.to_string()), ("STATUS", &status)],
            Message::Last,
        );
    }

    /// The shutdown's first moment: readiness is off; the first step may take `bound`.
    pub(crate) fn stopping(&self, status: &str, bound: Duration) {
        self.send(&[
            ("STOPPING", "1"),
            ("STATUS", status),
            ("EXTEND_TIMEOUT_USEC", &usec(bound + EXTEND_MARGIN)),
        ]);
    }

    /// A step of the shutdown begins that may take `bound`.
    pub(crate) fn step(&self, status: &str, bound: Duration) {
        self.send(&[
            ("STATUS", status),
            ("EXTEND_TIMEOUT_USEC", &usec(bound + EXTEND_MARGIN)),
        ]);
    }

    /// The start failed, with the OS error code where one was the cause.
    pub(crate) fn start_failed(&self, error: &str, errno: Option<i32>) {
        let status = format!("failed to start: {error}");
        match errno {
            Some(code) => self.queue(
                &[("STATUS", &status), ("ERRNO", &code.to_string())],
                Message::Everyone,
            ),
            None => self.queue(&[("STATUS", &status)], Message::Everyone),
        }
    }

    /// A last status.
    pub(crate) fn status(&self, status: &str) {
        self.send(&[("STATUS", status)]);
    }

    /// Waits (briefly) until every queued message is sent, then stops the task and its pings.
    pub(crate) async fn flush(&mut self) {
        let Some(Inner { queue, mut task }) = self.inner.take() else {
            return;
        };
        drop(queue);
        if tokio::time::timeout(FLUSH_LIMIT, &mut task).await.is_err() {
            tracing::warn!(target: "lameduck", "sd_notify: last messages not sent within {FLUSH_LIMIT:?}");
            task.abort();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.task.abort();
        }
    }
}

fn usec(d: Duration) -> String {
    d.as_micros().to_string()
}

/// The watchdog's ping period: half of `WATCHDOG_USEC`, when it is set for this process.
fn watchdog_from_env(our_pid: u32) -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_period(&usec, pid.as_deref(), our_pid)
}

fn watchdog_period(usec: &str, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(our_pid)
    {
        tracing::debug!(target: "lameduck", watchdog_pid = pid, "the watchdog is another process's");
        return None;
    }
    match usec.trim().parse::<u64>() {
        Ok(usec) if usec > 0 => Some(Duration::from_micros(usec) / 2),
        _ => {
            tracing::warn!(target: "lameduck", watchdog_usec = usec, "WATCHDOG_USEC is not a positive number of microseconds: no watchdog pings");
            None
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::UnixDatagram;
    use tokio::sync::mpsc;
    use tokio::time::MissedTickBehavior;

    use super::Message;

    /// How long one message may take to send before it is dropped (with a warning).
    const SEND_LIMIT: Duration = Duration::from_secs(1);

    /// `NOTIFY_SOCKET`, if set.
    pub(super) fn socket_from_env() -> Option<String> {
        std::env::var_os("NOTIFY_SOCKET").map(|v| v.to_string_lossy().into_owned())
    }

    fn connect(target: &str) -> io::Result<UnixDatagram> {
        let addr = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if target.starts_with('/') => SocketAddr::from_pathname(target)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor @abstract",
                ));
            }
        };
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect_addr(&addr)?;
        socket.set_nonblocking(true)?;
        UnixDatagram::from_std(socket)
    }

    /// One destination: its address for the log, its socket if it could be reached, and how
    /// many sends failed (the first few are logged, not a flood of pings).
    struct Target {
        address: String,
        socket: Option<UnixDatagram>,
        failures: u32,
    }

    impl Target {
        fn new(address: String) -> Target {
            let socket = match connect(&address) {
                Ok(socket) => Some(socket),
                Err(error) => {
                    tracing::warn!(target: "lameduck", notify_socket = %address, "sd_notify: cannot reach it, nothing will be sent there: {error}");
                    None
                }
            };
            Target {
                address,
                socket,
                failures: 0,
            }
        }

        async fn send(&mut self, message: &str) {
            let Some(socket) = &self.socket else { return };
            let sent = match tokio::time::timeout(SEND_LIMIT, socket.send(message.as_bytes())).await
            {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("not sent within {SEND_LIMIT:?}"),
            };
            self.failures += 1;
            if self.failures <= 3 {
                tracing::warn!(target: "lameduck", notify_socket = %self.address, message = message.trim_end(), "sd_notify: send failed: {sent}");
            }
        }
    }

    /// Sends the queued messages in order, and the watchdog's pings, until the queue closes.
    pub(super) async fn deliver(
        manager: Option<String>,
        parent: Option<String>,
        watchdog: Option<Duration>,
        mut messages: mpsc::UnboundedReceiver<Message>,
    ) {
        let mut manager = manager.map(Target::new);
        let mut parent = parent.map(Target::new);
        // Started by an upgrade, this process is not the service's main process until the old
        // one hands over at its READY=1: until then the manager hears nothing from it (not a
        // failed start's STOPPING=1, not watchdog pings that would hide a wedged old process).
        let mut manager_hears = parent.is_none();
        let mut pings = watchdog.map(|period| {
            tracing::info!(target: "lameduck", period_ms = period.as_millis() as u64, "sd_notify: watchdog pings");
            let mut pings = tokio::time::interval(period);
            // After a stall, one ping, not a burst: systemd should see the stall.
            pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
            pings
        });
        loop {
            let message = tokio::select! {
                biased;
                message = messages.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
                _ = tick(&mut pings), if manager_hears => Message::Manager("WATCHDOG=1\n".to_owned()),
            };
            match message {
                Message::Manager(text) => {
                    if let (true, Some(manager)) = (manager_hears, &mut manager) {
                        manager.send(&text).await;
                    }
                }
                Message::Everyone(text) => {
                    if let Some(parent) = &mut parent {
                        parent.send(&text).await;
                    }
                    let ready = text.lines().any(|l| l == "READY=1");
                    if let (true, Some(manager)) = (manager_hears, &mut manager) {
                        manager.send(&text).await;
                    } else if ready {
                        // Its parent hands over now: from here on it is the main process.
                        manager_hears = true;
                        parent = None;
                    }
                }
                Message::Last(text) => {
                    if let Some(manager) = &mut manager {
                        manager.send(&text).await;
                    }
                    (manager, parent, pings) = (None, None, None);
                }
            }
        }
    }

    async fn tick(pings: &mut Option<tokio::time::Interval>) {
        match pings {
            Some(pings) => {
                pings.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::time::Duration;

    use tokio::sync::mpsc;

    pub(super) fn socket_from_env() -> Option<String> {
        None
    }

    pub(super) async fn deliver(
        _manager: Option<String>,
        _parent: Option<String>,
        _watchdog: Option<Duration>,
        _messages: mpsc::UnboundedReceiver<super::Message>,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_for_its_own_process() {
        let half = Some(Duration::from_millis(150));
        assert_eq!(watchdog_period("300000", None, 7), half);
        assert_eq!(watchdog_period("300000", Some("7"), 7), half);
        assert_eq!(watchdog_period("300000", Some("8"), 7), None);
        assert_eq!(watchdog_period("0", None, 7), None);
        assert_eq!(watchdog_period("soon", None, 7), None);
    }
}
