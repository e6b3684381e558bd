//! The listener: address resolution, socket options and backlog, or a listener the caller
//! already has.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::error::BindError;
use crate::service::StartContext;

/// Where a server listens.
#[derive(Debug)]
pub(crate) enum Listen {
    /// An address to resolve and bind (`"127.0.0.1:8080"`, `"[::]:0"`, `"localhost:8080"`).
    Addr(String),
    /// A listener bound by the caller (inherited from systemd, say).
    Std(std::net::TcpListener),
    /// A listener bound by the caller on the runtime already.
    Tokio(TcpListener),
}

/// Options applied to a socket this crate binds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketOptions {
    pub(crate) backlog: u32,
    pub(crate) reuse_address: bool,
    pub(crate) only_v6: Option<bool>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            backlog: 1024,
            reuse_address: true,
            only_v6: None,
        }
    }
}

/// Binds (or adopts) the listener and records its address in the report.
pub(crate) async fn bind(
    ctx: &StartContext,
    listen: Listen,
    options: SocketOptions,
) -> Result<TcpListener, BindError> {
    let (listener, shown) = match listen {
        Listen::Addr(addr) => (bind_addr(&addr, options).await?, addr),
        Listen::Std(listener) => {
            let shown = shown_addr(&listener.local_addr());
            let adopted = listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|e| BindError::new(shown.clone(), e))?;
            (adopted, shown)
        }
        Listen::Tokio(listener) => {
            let shown = shown_addr(&listener.local_addr());
            (listener, shown)
        }
    };
    let local = listener
        .local_addr()
        .map_err(|e| BindError::new(shown, e))?;
    ctx.listening_on(local);
    Ok(listener)
}

fn shown_addr(addr: &io::Result<SocketAddr>) -> String {
    match addr {
        Ok(addr) => addr.to_string(),
        Err(_) => "an adopted listener".to_owned(),
    }
}

/// Resolves `addr` and binds the first address that works; the error is the last one's.
async fn bind_addr(addr: &str, options: SocketOptions) -> Result<TcpListener, BindError> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| BindError::new(addr, e))?;
    let mut last = None;
    for candidate in resolved {
        match bind_one(candidate, options) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    let error = last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolved to no address"));
    Err(BindError::new(addr, error))
}

fn bind_one(addr: SocketAddr, options: SocketOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // On Unix, SO_REUSEADDR lets a restarted process bind while the old one's closed
    // connections sit in TIME_WAIT. On Windows it would let another process take over a port
    // in use, and rebinding over TIME_WAIT works without it.
    #[cfg(not(windows))]
    socket.set_reuse_address(options.reuse_address)?;
    if let (SocketAddr::V6(_), Some(only_v6)) = (addr, options.only_v6) {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}
