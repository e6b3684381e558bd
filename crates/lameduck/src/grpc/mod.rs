//! gRPC serving (feature `grpc`): [`GrpcServer`] serves tonic services as a lifecycle service,
//! on the HTTP server's connection machinery (one drain, not two), with `grpc.health.v1` and
//! server reflection.
//!
//! A process runs as many gRPC servers as it likes, each its own service of one
//! [`Lifecycle`](crate::Lifecycle), each on its own listener:
//!
//! ```no_run
//! use lameduck::Lifecycle;
//! use lameduck::grpc::GrpcServer;
//! # use tonic_health::pb::health_server::{Health, HealthServer};
//! # fn server_a() -> HealthServer<impl Health> { tonic_health::server::health_reporter().1 }
//! # fn server_b() -> HealthServer<impl Health> { tonic_health::server::health_reporter().1 }
//!
//! # #[tokio::main] async fn main() {
//! let report = Lifecycle::new()
//!     .service("grpc-a", GrpcServer::bind("0.0.0.0:50051").add_service(server_a()))
//!     .service("grpc-b", GrpcServer::bind("0.0.0.0:50052").add_service(server_b()))
//!     .run()
//!     .await;
//! report.exit();
//! # }
//! ```
//!
//! What each server does through the lifecycle:
//!
//! - **Health** (`grpc.health.v1.Health`): NOT_SERVING until the lifecycle is ready, SERVING
//!   once it is, NOT_SERVING again from the first moment of the shutdown (lame-duck delay
//!   included), for the server (`""`) and every service added. `Watch` streams say
//!   NOT_SERVING and end at the shutdown, so that a watching client (a load balancer) never
//!   holds the drain open.
//! - **Reflection** (`grpc.reflection.v1` and `v1alpha`), opt-in with
//!   [`reflection`](GrpcServer::reflection), as in tonic and grpc-go (it tells anyone who asks
//!   what the server can do): lists this server's own services (those added with
//!   [`add_service`](GrpcServer::add_service), health, reflection), described by the file
//!   descriptor sets registered with [`file_descriptor_set`](GrpcServer::file_descriptor_set);
//!   grpcurl-style clients can list and call them. Another server of the same process is not
//!   listed, even if its descriptors are in the same set.
//! - **Drain**: the listener closes first; a connection that never completed the HTTP/2
//!   preface (a port scanner, a stalled probe) is closed at once; the others get GOAWAY (new
//!   RPCs are refused the standard way, so clients retry elsewhere) and finish their RPCs in
//!   flight.
//!   Handlers learn of the drain from the [`Drain`](crate::Drain) in the request's extensions
//!   (`request.extensions().get::<lameduck::Drain>()`).
//! - **Deadline**: an RPC still running ends with status UNAVAILABLE ("server shutting down:
//!   drain deadline reached"), a stream after the messages it sent, rather than a connection
//!   reset; the report counts it as aborted.

mod health;

use std::convert::Infallible;
use std::fmt;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::pb::health_server::HealthServer;

use crate::error::BoxError;
use crate::http::{ConnExecutor, HttpServer};
use crate::service::{Service, StartContext};
use health::LifecycleHealth;

/// A gRPC server: tonic services on one listener, with health and reflection, under the
/// lifecycle's drain. See the [module documentation](self).
pub struct GrpcServer {
    server: HttpServer<()>,
    routes: RoutesBuilder,
    services: Vec<String>,
    descriptors: Vec<&'static [u8]>,
    health: bool,
    reflection: bool,
}

impl GrpcServer {
    /// A server on `addr` ("0.0.0.0:50051"), speaking HTTP/2 only.
    pub fn bind(addr: impl fmt::Display) -> Self {
        Self::new(HttpServer::bind(addr, ()))
    }

    /// A server on a listener bound elsewhere.
    pub fn from_listener(listener: std::net::TcpListener) -> Self {
        Self::new(HttpServer::from_listener(listener, ()))
    }

    fn new(mut server: HttpServer<()>) -> Self {
        server.grpc = true;
        GrpcServer {
            // Streaming calls may be quiet for long: no body timeout unless asked for.
            server: server
                .http2_only()
                .without_health()
                .body_timeout(std::time::Duration::ZERO),
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            descriptors: Vec::new(),
            health: true,
            reflection: false,
        }
    }

    /// Adds a tonic service (a generated `FooServer::new(impl)`); its name is reported by the
    /// health service.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum_core::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME.to_owned());
        self.routes.add_service(service);
        self
    }

    /// Registers an encoded `FileDescriptorSet` (what `tonic-prost-build`'s
    /// `file_descriptor_set_path` writes, included with `include_bytes!`) for
    /// [`reflection`](Self::reflection).
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptors.push(encoded);
        self
    }

    /// No `grpc.health.v1` service.
    pub fn without_health(mut self) -> Self {
        self.health = false;
        self
    }

    /// Serves reflection (`grpc.reflection.v1` and `v1alpha`): off by default. It lists this
    /// server's services only, from the sets registered with
    /// [`file_descriptor_set`](Self::file_descriptor_set).
    pub fn reflection(mut self, on: bool) -> Self {
        self.reflection = on;
        self
    }

    /// How long a new connection may take for the HTTP/2 preface and its first frame; see
    /// [`HttpServer::handshake_timeout`] (default 10 s).
    pub fn handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.server = self.server.handshake_timeout(timeout);
        self
    }

    /// How long a connection may stay with no call in flight before it is sent GOAWAY
    /// (clients reconnect at their next call), however often it pings; see
    /// [`HttpServer::idle_timeout`] (default 120 s).
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.server = self.server.idle_timeout(timeout);
        self
    }

    /// How long a call's request stream may go without a message while the handler waits for
    /// one; then the call ends with status CANCELLED. Off by default (`Duration::ZERO`): a
    /// client-streaming or bidirectional call may be quiet for long by design, and HTTP/2 flow
    /// control already bounds what a stalled stream holds. See [`HttpServer::body_timeout`].
    pub fn body_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.server = self.server.body_timeout(timeout);
        self
    }

    /// How long a connection may live before it is sent GOAWAY (jittered ±10 %), so that
    /// clients behind an L4 balancer spread again after a rolling restart; its calls get the
    /// [grace](Self::max_connection_age_grace), then end with UNAVAILABLE. Off by default. See
    /// [`HttpServer::max_connection_age`].
    pub fn max_connection_age(mut self, age: std::time::Duration) -> Self {
        self.server = self.server.max_connection_age(age);
        self
    }

    /// How long calls on a connection at its maximum age may take (default 30 s); see
    /// [`HttpServer::max_connection_age_grace`].
    pub fn max_connection_age_grace(mut self, grace: std::time::Duration) -> Self {
        self.server = self.server.max_connection_age_grace(grace);
        self
    }

    /// The maximum age's jitter, a fraction (default 0.1); see
    /// [`HttpServer::max_connection_age_jitter`].
    pub fn max_connection_age_jitter(mut self, fraction: f64) -> Self {
        self.server = self.server.max_connection_age_jitter(fraction);
        self
    }

    /// Serves over TLS (features `grpc` and `tls`), with ALPN `h2` only; see
    /// [`HttpServer::tls`]. Clients connect with `https://` (tonic: `ClientTlsConfig`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::http::Tls) -> Self {
        self.server = self.server.tls(tls);
        self
    }

    /// How many connections it holds open at once; see [`HttpServer::max_connections`]
    /// (default 16,384).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.server = self.server.max_connections(max);
        self
    }

    /// The listen backlog; see [`HttpServer::backlog`].
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.server = self.server.backlog(backlog);
        self
    }

    /// `SO_REUSEADDR`; see [`HttpServer::reuse_address`].
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.server = self.server.reuse_address(on);
        self
    }

    /// IPv6 only or dual-stack; see [`HttpServer::only_v6`].
    pub fn only_v6(mut self, only: bool) -> Self {
        self.server = self.server.only_v6(only);
        self
    }

    /// Tunes hyper's HTTP/2 options (stream limits, windows, keep-alive pings); see
    /// [`HttpServer::configure`].
    pub fn configure(
        mut self,
        configure: impl FnOnce(&mut hyper_util::server::conn::auto::Builder<ConnExecutor>)
        + Send
        + 'static,
    ) -> Self {
        self.server = self.server.configure(configure);
        self
    }

    /// Reflection of this server's services: its own, health's, and reflection's (`own`: its
    /// name in the protocol version being built).
    fn reflection_builder(&self, own: &str) -> tonic_reflection::server::Builder<'static> {
        let mut builder = tonic_reflection::server::Builder::configure().with_service_name(own);
        for name in &self.services {
            builder = builder.with_service_name(name.clone());
        }
        if self.health {
            builder = builder
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
        }
        for set in &self.descriptors {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        builder
    }
}

impl fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcServer")
            .field("server", &self.server)
            .field("services", &self.services)
            .field("health", &self.health)
            .field("reflection", &self.reflection)
            .finish_non_exhaustive()
    }
}

impl Service for GrpcServer {
    type Serve = <HttpServer<Routes> as Service>::Serve;

    async fn start(self, ctx: StartContext) -> Result<Self::Serve, BoxError> {
        let reflection = if self.reflection {
            let invalid = |e| format!("gRPC reflection: a registered file descriptor set: {e}");
            let v1 = self
                .reflection_builder("grpc.reflection.v1.ServerReflection")
                .build_v1()
                .map_err(invalid)?;
            let v1alpha = self
                .reflection_builder("grpc.reflection.v1alpha.ServerReflection")
                .build_v1alpha()
                .map_err(invalid)?;
            Some((v1, v1alpha))
        } else {
            None
        };
        let mut routes = self.routes;
        if self.health {
            let health = LifecycleHealth::new(ctx.handle(), self.services);
            routes.add_service(HealthServer::new(health));
        }
        if let Some((v1, v1alpha)) = reflection {
            routes.add_service(v1).add_service(v1alpha);
        }
        self.server.with_app(routes.routes()).start(ctx).await
    }
}
