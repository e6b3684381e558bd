//! HTTP serving with a connection-level drain (feature `http`): [`HttpServer`] serves any tower
//! `Service` over HTTP/1.1 and cleartext HTTP/2 (hyper 1, hyper-util's auto builder) as a
//! lifecycle service, with [`Health`] endpoints.
//!
//! The pieces, in the order a connection meets them: the listener (bound, or passed to the
//! process: the crate's `listen` module), `server` (the accept loop), `connection` (its task:
//! how it ends at the drain, and at its timeouts), `io` (the socket as hyper reads it,
//! tracked, and closed at the deadline), `tls` (the handshake, under TLS), `request` (health
//! answers, request counting, the deadline for requests that wait) and `extract`: with axum,
//! a handler takes `lameduck::Drain` to learn of the drain (a server-sent-event stream ends
//! itself, say). Beneath them: `shared` (what a server's connections share), `state` (one
//! connection's, as its requests and the drain see it), `limits` (how long a client may
//! take; `timeouts` judges them for a connection, `body` for a request body).
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{Router, routing::get};
//! use lameduck::Drain;
//!
//! // A long poll: answers when there is news, or at once when the drain begins, so that the
//! // client can reconnect elsewhere instead of holding the shutdown up.
//! async fn long_poll(drain: Drain) -> &'static str {
//!     tokio::select! {
//!         () = tokio::time::sleep(Duration::from_secs(30)) => "no news\n",
//!         () = drain.draining() => "shutting down, reconnect\n",
//!     }
//! }
//!
//! let app: Router = Router::new().route("/poll", get(long_poll));
//! # drop(app);
//! ```

mod accept;
mod age;
mod body;
mod clock;
mod connection;
mod extract;
mod health;
mod io;
mod limits;
mod panic;
mod request;
mod server;
mod shared;
mod state;
mod stream;
mod timeouts;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "ws")]
#[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
pub mod ws;

pub use body::{BodyTimedOut, RequestBody};
pub use health::Health;
pub use server::{HttpServer, NotFound};
pub use shared::ConnExecutor;
pub use stream::{EndAtDrain, end_at_drain};
#[cfg(feature = "tls")]
pub use tls::{PeerCertificates, Tls, TlsError};
/// The rustls this crate's TLS is built on, for a `ServerConfig` given as it is
/// ([`Tls::from_config`]).
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
