//! Inherited: listening sockets passed to this process by whoever started it, under the systemd
//! protocol (`sd_listen_fds_with_names(3)`): `LISTEN_PID` is this process's ID, `LISTEN_FDS`
//! counts the descriptors from 3, `LISTEN_FDNAMES` names them, colon-separated
//! (`FileDescriptorName=` in a socket unit, `--fdname` of `systemd-socket-activate`).
//!
//! The variables are read once per process, at its first run, and removed from the environment
//! so that a child does not take them for its own; every descriptor must be open, and is marked
//! close-on-exec at once. A service claims the descriptors of its name, all of them (a socket
//! unit may listen on several addresses under one name), each checked to be a listening TCP
//! socket before it is owned; whatever no service has claimed when the start ends is logged and
//! closed. Linux only: elsewhere nothing is ever inherited.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::InheritError;

/// The first descriptor of the protocol (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// More descriptors than any socket unit passes: a bigger count is a corrupt variable.
const MAX_FDS: u32 = 4096;

/// The socket-activation variables are unusable: the lifecycle does not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "{problem} (hint: LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are set by systemd or \
     systemd-socket-activate; check whatever else set them)"
)]
pub struct ListenFdsError {
    problem: String,
}

impl ListenFdsError {
    fn new(problem: impl Into<String>) -> Self {
        ListenFdsError {
            problem: problem.into(),
        }
    }
}

/// The descriptors passed to this process, and which service took each.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    slots: Mutex<Vec<Slot>>,
    /// When this process is a lameduck upgrade's new process: the old one's readiness socket.
    upgrade_notify: Option<String>,
}

/// A passed descriptor. It is owned (and so closed when dropped) only once it is known to be
/// what it should be: a descriptor number that the variables got wrong may belong to something
/// else in the process (the runtime's own epoll, say), which must not be closed.
#[derive(Debug)]
struct Slot {
    fd: i32,
    name: String,
    state: SlotState,
}

#[derive(Debug)]
enum SlotState {
    Unclaimed,
    Claimed(Arc<str>),
    Closed,
}

/// A descriptor a service took.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) fd: i32,
    pub(crate) name: String,
}

impl Inherited {
    /// The descriptors passed to this process, read (and removed) from the environment at the
    /// first call in the process; later calls find none. Each must be open; each is marked
    /// close-on-exec.
    pub(crate) fn from_env() -> Result<Inherited, ListenFdsError> {
        let Some(vars) = sys::take_env() else {
            return Ok(Inherited::default());
        };
        let passed = parse(&vars, std::process::id(), sys::parent_id())?;
        let upgrade_notify = match for_us(&vars, std::process::id(), sys::parent_id()) {
            Ok(true) if vars.pid.is_none() => vars.upgrade_notify.clone(),
            _ => None,
        };
        if passed.is_empty() && vars.pid.is_some() {
            tracing::debug!(
                target: "lameduck", listen_pid = ?vars.pid,
                "LISTEN_FDS is not for this process: ignored"
            );
        }
        // Every one is marked, even past one that is not open, so that none leaks into a child.
        let mut not_open = None;
        for (fd, name) in &passed {
            if let Err(e) = sys::open_cloexec(*fd) {
                not_open.get_or_insert_with(|| {
                    ListenFdsError::new(format!(
                        "LISTEN_FDS={} passes fd {fd} (`{name}`), but it is not open: {e}",
                        vars.fds.as_deref().unwrap_or_default()
                    ))
                });
            }
        }
        if let Some(error) = not_open {
            return Err(error);
        }
        if !passed.is_empty() {
            let names: Vec<String> = passed.iter().map(|(fd, n)| format!("{n}={fd}")).collect();
            tracing::info!(target: "lameduck", passed = %names.join(" "), "inherited sockets");
        }
        let slots = passed
            .into_iter()
            .map(|(fd, name)| Slot {
                fd,
                name,
                state: SlotState::Unclaimed,
            })
            .collect();
        Ok(Inherited {
            slots: Mutex::new(slots),
            upgrade_notify,
        })
    }

    /// When this process was started by a lameduck upgrade: where the old process waits for
    /// READY=1.
    pub(crate) fn upgrade_notify(&self) -> Option<&str> {
        self.upgrade_notify.as_deref()
    }

    /// Takes the descriptors named `service` that no one has taken yet: the next one (`one`),
    /// as `StartContext::listen_tcp` asks, or all of them. Each is checked to be a listening
    /// TCP socket first, and none is taken unless all pass; each is set non-blocking. Empty
    /// when none has that name; an error when there were some, and all are taken (the name
    /// asked for once more than it was passed).
    ///
    /// With `one` and several left, from a socket unit (whose order of sockets is not fixed):
    /// the one listening on `wanted`, or an error if none does. From an upgrade, the next one:
    /// the old process passes them in the order its service made them.
    pub(crate) fn claim(
        &self,
        service: &Arc<str>,
        one: bool,
        wanted: Option<std::net::SocketAddr>,
    ) -> Result<Vec<Claimed>, InheritError> {
        let from_upgrade = self.upgrade_notify.is_some();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mine: Vec<&mut Slot> = slots.iter_mut().filter(|s| *s.name == **service).collect();
        let Some(first_fd) = mine.first().map(|s| s.fd) else {
            return Ok(Vec::new());
        };
        let mut free: Vec<&mut Slot> = Vec::new();
        let mut taken_by = None;
        for slot in mine {
            match &slot.state {
                SlotState::Unclaimed => free.push(slot),
                SlotState::Claimed(owner) => {
                    taken_by.get_or_insert_with(|| Arc::clone(owner));
                }
                SlotState::Closed => {}
            }
        }
        if free.is_empty() {
            let problem = match taken_by {
                Some(owner) => format!(
                    "was already taken by service `{owner}` (hint: a passed socket serves one \
                     listener of one service; pass one per listener, or give each service its \
                     own FileDescriptorName=)"
                ),
                None => "was closed already".to_owned(),
            };
            return Err(InheritError::new(first_fd, service, problem));
        }
        if one && free.len() > 1 && !from_upgrade {
            let matching = free
                .iter()
                .position(|slot| wanted.is_some() && sys::local_addr(slot.fd) == wanted);
            let Some(at) = matching else {
                let fds: Vec<String> = free.iter().map(|s| s.fd.to_string()).collect();
                let asked =
                    wanted.map_or_else(|| "the address asked for".to_owned(), |a| a.to_string());
                return Err(InheritError::new(
                    free[0].fd,
                    service,
                    format!(
                        "is one of {} sockets passed under this name (fds {}), and none listens \
                         on {asked} (hint: `listen_tcp_all` takes them all; or give each its \
                         own FileDescriptorName=)",
                        free.len(),
                        fds.join(", ")
                    ),
                ));
            };
            free = vec![free.swap_remove(at)];
        } else if one {
            free.truncate(1);
        }
        for slot in &free {
            sys::check_listening_tcp(slot.fd)
                .map_err(|problem| InheritError::new(slot.fd, &slot.name, problem))?;
        }
        let mut claimed = Vec::with_capacity(free.len());
        for slot in free {
            // Owned from here: claimed even if the next step fails (it is then closed).
            slot.state = SlotState::Claimed(Arc::clone(service));
            let listener = sys::take_listener(slot.fd).map_err(|e| {
                InheritError::new(
                    slot.fd,
                    &slot.name,
                    format!("cannot be made non-blocking: {e}"),
                )
            })?;
            claimed.push(Claimed {
                listener,
                fd: slot.fd,
                name: slot.name.clone(),
            });
        }
        Ok(claimed)
    }

    /// Closes the sockets no service claimed, saying so: a socket unit passes one that nothing
    /// in this process serves, or a name does not match its service's. Only what a socket unit
    /// passes is closed (a listening socket, or an IP one); anything else is left alone: under a
    /// miscounted `LISTEN_FDS` it may be the process's own (the runtime's epoll, eventfd and
    /// signal socketpair, a log socket).
    pub(crate) fn close_unclaimed(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in slots.iter_mut() {
            if !matches!(slot.state, SlotState::Unclaimed) {
                continue;
            }
            slot.state = SlotState::Closed;
            if !sys::close_if_passed_socket(slot.fd) {
                tracing::warn!(
                    target: "lameduck", fd = slot.fd, name = %slot.name,
                    "inherited descriptor claimed by no service is neither a listening nor an IP \
                     socket: left open (is LISTEN_FDS right?)"
                );
            } else if slot.name == "connection" {
                tracing::warn!(
                    target: "lameduck", fd = slot.fd,
                    "inherited connection closed: a socket unit with Accept=yes passes one \
                     connection per process; lameduck serves listeners (hint: Accept=no)"
                );
            } else {
                tracing::warn!(
                    target: "lameduck", fd = slot.fd, name = %slot.name,
                    "inherited socket claimed by no service: closed (hint: a service takes the \
                     sockets passed under its own name; rename the service or the socket \
                     (FileDescriptorName=, --fdname), or stop passing it)"
                );
            }
        }
    }
}

/// The socket-activation variables as they were found.
#[derive(Debug, Default)]
struct Vars {
    pid: Option<String>,
    fds: Option<String>,
    names: Option<String>,
    /// Set by a lameduck process that starts its upgrade (this one): its PID, which stands in
    /// for `LISTEN_PID` (the child's PID is not known before it is started) when it is our
    /// parent's.
    parent: Option<String>,
    /// With `parent`: where to say READY=1 to that parent.
    upgrade_notify: Option<String>,
}

/// The variables an upgrading lameduck process sets for its new process, beside the systemd ones.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const UPGRADE_PARENT: &str = "LAMEDUCK_UPGRADE_PARENT";
/// See [`UPGRADE_PARENT`].
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const UPGRADE_NOTIFY: &str = "LAMEDUCK_UPGRADE_NOTIFY";

/// Whether the variables are for this process: `LISTEN_PID` is ours, or (an upgrade) there is
/// none and `LAMEDUCK_UPGRADE_PARENT` is our parent's.
fn for_us(vars: &Vars, our_pid: u32, our_parent: u32) -> Result<bool, ListenFdsError> {
    let pid = |name: &str, value: &str| {
        value
            .trim()
            .parse::<u32>()
            .map_err(|_| ListenFdsError::new(format!("{name}=`{value}` is not a process ID")))
    };
    match (vars.pid.as_deref(), vars.parent.as_deref()) {
        (Some(listen_pid), _) => Ok(pid("LISTEN_PID", listen_pid)? == our_pid),
        (None, Some(parent)) => Ok(pid(UPGRADE_PARENT, parent)? == our_parent),
        (None, None) => Ok(false),
    }
}

/// The descriptors and names the variables pass to the process `our_pid`: none when they are
/// for another process (or absent), an error when they do not parse.
fn parse(vars: &Vars, our_pid: u32, our_parent: u32) -> Result<Vec<(i32, String)>, ListenFdsError> {
    if !for_us(vars, our_pid, our_parent)? {
        return Ok(Vec::new());
    }
    let Some(fds) = vars.fds.as_deref() else {
        return Ok(Vec::new());
    };
    let count: u32 = fds.trim().parse().map_err(|_| {
        ListenFdsError::new(format!(
            "LISTEN_FDS=`{fds}` is not a number of file descriptors"
        ))
    })?;
    if count > MAX_FDS {
        return Err(ListenFdsError::new(format!(
            "LISTEN_FDS={count} is more descriptors than a process is passed (at most {MAX_FDS})"
        )));
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match vars.names.as_deref() {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        // As sd_listen_fds_with_names does when no names are passed.
        None => vec!["unknown".to_owned(); count as usize],
    };
    if names.len() != count as usize {
        return Err(ListenFdsError::new(format!(
            "LISTEN_FDNAMES=`{}` names {} descriptors, but LISTEN_FDS={count}",
            vars.names.as_deref().unwrap_or_default(),
            names.len()
        )));
    }
    // `count` is at most MAX_FDS, so the descriptor numbers fit.
    Ok((FIRST_FD..).zip(names).collect())
}

#[cfg(target_os = "linux")]
mod sys {
    //! What no safe API offers: looking at a descriptor by its number, taking ownership of it,
    //! and removing the variables from the environment.

    use std::io;
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

    use socket2::{Domain, Protocol, SockRef, Type};

    use super::{UPGRADE_NOTIFY, UPGRADE_PARENT, Vars};

    pub(super) fn parent_id() -> u32 {
        std::os::unix::process::parent_id()
    }

    /// The variables, removed from the environment; `None` when none is set, or when they were
    /// read already (the descriptors are taken once per process).
    pub(super) fn take_env() -> Option<Vars> {
        static READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let names = [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            UPGRADE_PARENT,
            UPGRADE_NOTIFY,
        ];
        let [pid, fds, fdnames, parent, upgrade_notify] = names.map(var);
        let vars = Vars {
            pid,
            fds,
            names: fdnames,
            parent,
            upgrade_notify,
        };
        if vars.pid.is_none() && vars.fds.is_none() && vars.names.is_none() && vars.parent.is_none()
        {
            return None;
        }
        if READ.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        for name in names {
            // SAFETY: `remove_var` is unsafe because another thread may read the environment
            // at the same time through libc (getaddrinfo, localtime), which Rust's lock does
            // not cover; Rust's own readers take std's environment lock. `unsetenv` shifts the
            // later entries of `environ` down within the same array, reallocating nothing, and
            // frees no string that came with the process's environment at exec (glibc frees
            // none at all; musl only strings its own `setenv` made), which these variables do:
            // a launcher sets them, and setting them in-process is not supported. A concurrent
            // `getenv` may then miss a variable for the moment of the shift, but never reads
            // freed memory. This runs once per process, at the first run's start.
            #[allow(unsafe_code)]
            unsafe {
                std::env::remove_var(name);
            }
        }
        Some(vars)
    }

    /// Checks that `fd` is open, and marks it close-on-exec.
    pub(super) fn open_cloexec(fd: i32) -> io::Result<()> {
        // SAFETY: `fcntl(F_GETFD)` and `fcntl(F_SETFD)` read and set the flags of any
        // descriptor number, failing with EBADF for one that is not open; they touch no memory
        // of ours.
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        #[allow(unsafe_code)]
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on `fd`, borrowed, if it is open.
    fn with_borrowed<T>(fd: i32, f: impl FnOnce(BorrowedFd<'_>) -> T) -> io::Result<T> {
        open_cloexec(fd)?;
        // SAFETY: the descriptor is open (just checked), and stays open while borrowed: the
        // borrow ends with this call, and the lifecycle closes inherited descriptors only
        // through the slot it holds locked meanwhile.
        #[allow(unsafe_code)]
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(f(borrowed))
    }

    /// `Ok` for a listening TCP socket (IPv4 or IPv6); otherwise what it is instead.
    pub(super) fn check_listening_tcp(fd: i32) -> Result<(), String> {
        let checked = with_borrowed(fd, |fd| {
            let socket = SockRef::from(&fd);
            let inspect = |e: io::Error| {
                if e.raw_os_error() == Some(libc::ENOTSOCK) {
                    "is not a socket (hint: pass sockets only: ListenStream= in a socket unit)"
                        .to_owned()
                } else {
                    format!("cannot be inspected: {e}")
                }
            };
            let domain = socket.domain().map_err(inspect)?;
            let kind = socket.r#type().map_err(inspect)?;
            if domain == Domain::UNIX {
                return Err("is a Unix-domain socket, not a TCP one".to_owned());
            }
            if domain != Domain::IPV4 && domain != Domain::IPV6 {
                return Err("is not an IP socket".to_owned());
            }
            if kind == Type::DGRAM {
                return Err(
                    "is a UDP socket, not a TCP one (hint: ListenStream=, not ListenDatagram=)"
                        .to_owned(),
                );
            }
            if kind != Type::STREAM {
                return Err("is not a stream socket".to_owned());
            }
            match socket.protocol().map_err(inspect)? {
                Some(p) if p == Protocol::TCP || p == Protocol::MPTCP => {}
                _ => {
                    return Err(
                        "is a stream socket of another protocol than TCP (SocketProtocol=?)"
                            .to_owned(),
                    );
                }
            }
            if !socket.is_listener().map_err(inspect)? {
                return Err(
                    "is a TCP socket that is not listening (hint: with Accept=yes a socket \
                     unit passes connections, not listeners; use Accept=no)"
                        .to_owned(),
                );
            }
            Ok(())
        });
        checked.unwrap_or_else(|e| Err(format!("is not open: {e}")))
    }

    /// The local address of socket `fd`, if it is an IP socket.
    pub(super) fn local_addr(fd: i32) -> Option<std::net::SocketAddr> {
        with_borrowed(fd, |fd| SockRef::from(&fd).local_addr().ok()?.as_socket())
            .ok()
            .flatten()
    }

    /// Takes ownership of `fd`, a listening TCP socket (checked), set non-blocking.
    pub(super) fn take_listener(fd: i32) -> io::Result<std::net::TcpListener> {
        open_cloexec(fd)?;
        // SAFETY: the descriptor is open (just checked), was passed to this process by the
        // socket-activation protocol (LISTEN_PID is ours), and was checked to be a listening
        // TCP socket, as passed sockets are. Nothing else in the process owns it: the
        // protocol has one consumer per process, the variables are read once per process
        // (`take_env`) and removed, and its slot is claimed once.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = std::net::TcpListener::from(owned);
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Closes `fd` if it is what a socket unit passes: a listening socket, or an IP socket (a
    /// datagram socket, an `Accept=yes` connection). `false`, and left open, otherwise.
    pub(super) fn close_if_passed_socket(fd: i32) -> bool {
        let passed = with_borrowed(fd, |fd| {
            let socket = SockRef::from(&fd);
            let listening = socket.is_listener().unwrap_or(false);
            let ip = matches!(socket.domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6);
            listening || ip
        });
        if !matches!(passed, Ok(true)) {
            return false;
        }
        // SAFETY: open (just checked), passed to this process (LISTEN_PID is ours), of a kind
        // the process makes for itself only through a listener or connection of its own,
        // which would sit above the passed numbers; its slot is closed once.
        #[allow(unsafe_code)]
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        true
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Nothing is inherited on this platform.

    use std::io;

    use super::Vars;

    pub(super) fn take_env() -> Option<Vars> {
        None
    }

    pub(super) fn parent_id() -> u32 {
        0
    }

    pub(super) fn open_cloexec(_fd: i32) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(super) fn check_listening_tcp(_fd: i32) -> Result<(), String> {
        Err("cannot be inherited on this platform".to_owned())
    }

    pub(super) fn take_listener(_fd: i32) -> io::Result<std::net::TcpListener> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(super) fn local_addr(_fd: i32) -> Option<std::net::SocketAddr> {
        None
    }

    pub(super) fn close_if_passed_socket(_fd: i32) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Vars {
        Vars {
            pid: pid.map(str::to_owned),
            fds: fds.map(str::to_owned),
            names: names.map(str::to_owned),
            parent: None,
            upgrade_notify: None,
        }
    }

    #[test]
    fn an_upgrade_passes_them_to_its_child_by_the_parent_pid() {
        let mut v = vars(None, Some("1"), Some("http"));
        v.parent = Some("7".to_owned());
        assert_eq!(parse(&v, 42, 7).unwrap(), [(3, "http".to_owned())]);
        assert!(
            parse(&v, 42, 8).unwrap().is_empty(),
            "another process's child"
        );
        v.pid = Some("41".to_owned());
        assert!(
            parse(&v, 42, 7).unwrap().is_empty(),
            "LISTEN_PID decides when set"
        );
    }

    #[test]
    fn names_and_numbers_from_three() {
        let passed = parse(
            &vars(Some("42"), Some("3"), Some("http:grpc-a:grpc-b")),
            42,
            1,
        )
        .unwrap();
        assert_eq!(
            passed,
            [
                (3, "http".to_owned()),
                (4, "grpc-a".to_owned()),
                (5, "grpc-b".to_owned())
            ]
        );
    }

    #[test]
    fn without_names_every_fd_is_unknown() {
        let passed = parse(&vars(Some("42"), Some("2"), None), 42, 1).unwrap();
        assert_eq!(
            passed,
            [(3, "unknown".to_owned()), (4, "unknown".to_owned())]
        );
    }

    #[test]
    fn for_another_process_or_absent_nothing_is_passed() {
        assert!(
            parse(&vars(Some("41"), Some("3"), Some("a:b:c")), 42, 1)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse(&vars(None, Some("3"), None), 42, 1)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse(&vars(Some("42"), None, None), 42, 1)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse(&vars(Some("42"), Some("0"), None), 42, 1)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_variables_are_errors_that_say_which() {
        let err = |v| parse(&v, 42, 1).unwrap_err().to_string();
        assert!(err(vars(Some("x"), Some("1"), None)).contains("LISTEN_PID=`x`"));
        assert!(err(vars(Some("42"), Some("abc"), None)).contains("LISTEN_FDS=`abc`"));
        assert!(err(vars(Some("42"), Some("-1"), None)).contains("LISTEN_FDS=`-1`"));
        assert!(err(vars(Some("42"), Some("99999"), None)).contains("at most"));
        let names = err(vars(Some("42"), Some("3"), Some("a:b")));
        assert!(
            names.contains("names 2 descriptors, but LISTEN_FDS=3"),
            "{names}"
        );
    }
}
