//! Where a listener comes from: bound by this process (socket2: `SO_REUSEADDR`, the backlog,
//! `only_v6`), inherited from whoever started it (systemd socket activation; later, the parent
//! of an upgrade), or adopted from the caller. One place decides, and says which, so that the
//! log line and the report can tell.

mod bind;
mod inherited;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::error::{BindError, ListenError};
use crate::report::{Listening, Origin};

pub(crate) use bind::{SocketOptions, bind_addr};
pub(crate) use inherited::Inherited;
pub use inherited::ListenFdsError;

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
/// (all of them: a socket unit may listen on several addresses under one name); otherwise the
/// configured address, bound, or the caller's listener, adopted. Each comes with what the report
/// says of it.
pub(crate) async fn listeners(
    service: &Arc<str>,
    inherited: &Inherited,
    listen: Listen,
    options: SocketOptions,
) -> Result<Vec<(TcpListener, Listening)>, ListenError> {
    match listen {
        Listen::Addr(addr) => {
            let passed = inherited.claim(service)?;
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
