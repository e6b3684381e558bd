//! Where a listener comes from: bound by this process (socket2: `SO_REUSEADDR`, the backlog,
//! `only_v6`), inherited from whoever started it (systemd socket activation; later, the parent
//! of an upgrade), or adopted from the caller. One place decides, and says which, so that the
//! log line and the report can tell.

mod bind;
mod inherited;

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;

use crate::error::{BindError, ListenError};
use crate::report::{Listening, Origin};

pub(crate) use bind::{SocketOptions, bind_addr};
pub(crate) use inherited::Inherited;
pub use inherited::ListenFdsError;
#[cfg(target_os = "linux")]
pub(crate) use inherited::{UPGRADE_NOTIFY, UPGRADE_PARENT};

/// Where a server listens, as it was configured. (The core's own services only ever pass an
/// address; the servers of the features adopt listeners too.)
#[derive(Debug)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum Listen {
    /// An address to resolve and bind (`"127.0.0.1:8080"`, `"[::]:0"`, `"localhost:8080"`),
    /// unless the process was passed sockets under the service's name.
    Addr(String),
    /// A listener bound by the caller.
    Std(std::net::TcpListener),
    /// A listener bound by the caller on the runtime already.
    Tokio(TcpListener),
}

/// A service's listeners: the sockets the process was passed under the service's name, if any
/// (the next one with `one`, else all that are left: a socket unit may listen on several
/// addresses under one name); otherwise the configured address, bound, or the caller's
/// listener, adopted. Each comes with what the report says of it.
pub(crate) async fn listeners(
    service: &Arc<str>,
    inherited: &Inherited,
    one: bool,
    listen: Listen,
    options: SocketOptions,
) -> Result<Vec<(TcpListener, Listening)>, ListenError> {
    match listen {
        Listen::Addr(addr) => {
            let passed = inherited.claim(service, one, addr.parse().ok())?;
            if passed.is_empty() {
                let listener = bind_addr(addr.as_str(), options).await?;
                let listening = listening(&listener, &addr, Origin::Bound)?;
                return Ok(vec![(listener, listening)]);
            }
            let mut out = Vec::with_capacity(passed.len());
            for claimed in passed {
                let origin = Origin::Inherited {
                    fd: claimed.fd,
                    name: claimed.name.clone(),
                };
                let shown = format!("inherited fd {} (`{}`)", claimed.fd, claimed.name);
                let listener = TcpListener::from_std(claimed.listener)
                    .map_err(|e| BindError::new(shown.clone(), e))?;
                let listening = listening(&listener, &shown, origin)?;
                tracing::info!(
                    target: "lameduck", service = %service, fd = claimed.fd,
                    address = %listening.address, instead_of = %addr,
                    "listening on an inherited socket"
                );
                out.push((listener, listening));
            }
            Ok(out)
        }
        Listen::Std(listener) => {
            let shown = shown_addr(&listener);
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|e| BindError::new(shown.clone(), e))?;
            let listening = listening(&listener, &shown, Origin::Adopted)?;
            Ok(vec![(listener, listening)])
        }
        Listen::Tokio(listener) => {
            let listening = listening(&listener, "an adopted listener", Origin::Adopted)?;
            Ok(vec![(listener, listening)])
        }
    }
}

/// What the report says of a listener: its local address (with the port the OS chose, for
/// port 0) and where it came from.
fn listening(listener: &TcpListener, shown: &str, origin: Origin) -> Result<Listening, BindError> {
    let local = listener
        .local_addr()
        .map_err(|e| BindError::new(shown, e))?;
    Ok(Listening {
        address: local.to_string(),
        origin,
    })
}

fn shown_addr(listener: &std::net::TcpListener) -> String {
    match listener.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(_) => "an adopted listener".to_owned(),
    }
}

/// The run's listeners as an upgrade hands them to the new process: a duplicate of each, under
/// its service's name. Kept from the start until the shutdown begins, then dropped, so that a
/// listener still closes when its server drops it at the drain.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// `None` once closed.
    listeners: Mutex<Option<Vec<Handed>>>,
    /// Listeners the new process could not take (why, naming the service): no upgrade then.
    blocked: Mutex<Vec<String>>,
}

/// A listener to hand over: its service, and a duplicate of its descriptor.
#[cfg(unix)]
pub(crate) type Handed = (Arc<str>, std::os::fd::OwnedFd);
#[cfg(not(unix))]
pub(crate) type Handed = (Arc<str>, std::convert::Infallible);

impl Handover {
    /// Keeps a duplicate of `listener` for a later upgrade.
    pub(crate) fn record(&self, service: &Arc<str>, listener: &TcpListener) {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let mut listeners = self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match listener.as_fd().try_clone_to_owned() {
                Ok(dup) => listeners
                    .get_or_insert_with(Vec::new)
                    .push((Arc::clone(service), dup)),
                Err(error) => {
                    drop(listeners);
                    self.block(format!(
                        "service `{service}`: its listener cannot be duplicated: {error}"
                    ));
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (service, listener, &self.listeners);
    }

    /// A listener the new process of an upgrade could not take (one bound or adopted outside
    /// the `listen` path, which the new process would bind again, and fail): upgrades are
    /// refused, saying `why`.
    pub(crate) fn block(&self, why: String) {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(why);
    }

    /// Duplicates of every listener, for one upgrade attempt (a failed one leaves ours); an
    /// error says why there can be none.
    #[cfg(unix)]
    pub(crate) fn duplicates(&self) -> Result<Vec<Handed>, String> {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if !blocked.is_empty() {
            return Err(blocked.join("; "));
        }
        drop(blocked);
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners
            .iter()
            .flatten()
            .map(|(service, fd)| {
                let dup = fd
                    .try_clone()
                    .map_err(|e| format!("service `{service}`: {e}"))?;
                Ok((Arc::clone(service), dup))
            })
            .collect()
    }

    /// The shutdown began (or the start failed): no upgrade from here on.
    pub(crate) fn close(&self) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}
