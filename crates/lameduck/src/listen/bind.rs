//! Bound here: address resolution, socket options and the backlog, through socket2.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::error::BindError;

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

/// Resolves `addr` and binds the first address that works; the error is the last one's.
pub(crate) async fn bind_addr<A>(addr: A, options: SocketOptions) -> Result<TcpListener, BindError>
where
    A: ToSocketAddrs + fmt::Display,
{
    let shown = addr.to_string();
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| BindError::new(shown.clone(), e))?;
    let mut last = None;
    for candidate in resolved {
        match bind_one(candidate, options) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    let error = last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolved to no address"));
    Err(BindError::new(shown, error))
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
