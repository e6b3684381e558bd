//! The seed articles' service, made real under lameduck: an HTTP API (axum), two gRPC servers
//! (tonic), and a write-behind store whose cache is flushed to SQLite by a background task and,
//! at shutdown, by ordered hooks (flush, then close the database). A failing periodic flush is
//! retried with a backoff, and holds the process not ready until it works again
//! ([`flusher`]).
//!
//! The binary (`src/main.rs`) wires these into one [`lameduck::Lifecycle`]; the modules are
//! public so that the end-to-end tests can use the generated gRPC clients.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod flusher;
pub mod grpc_api;
pub mod http_api;
pub mod store;

/// The generated gRPC code of `proto/demo/v1/demo.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("demo.v1");

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/demo_descriptor.bin"));
}
